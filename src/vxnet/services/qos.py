"""QoS policies and their rules (Neutron's `qos` extension): records and their checks (pure).

Records: `qos_policies/<id>` holds one policy with its rules embedded (`rules`: a list of
rule dicts, each with `id`, `type`, `qos_policy_id` and the type's fields), so the policy is
one object in the store, in the host views and in the agent (a rule change is one put).

Invariants:
- At most one rule of a type per direction in a policy (`bandwidth_limit`, `minimum_bandwidth`:
  one per direction; `dscp_marking`: one); a second is 409 QoSRulesConflict.
- `dscp_mark` is one of Neutron's `VALID_DSCP_MARKS`; `max_kbps`, `max_burst_kbps` and
  `min_kbps` are 0..2**31-1; `direction` is `egress` or `ingress` (from the VM's side: egress
  leaves the VM).
- At most one `is_default` policy per project (409 QoSPolicyDefaultAlreadyExists).
- A policy is visible to admins, to its project and, when `shared`, to everyone; another
  project's non-shared policy is a 404 (QosPolicyNotFound), also when named as a port's or a
  network's `qos_policy_id`.
- A policy named by a port or a network cannot be deleted (409 QosPolicyInUse).
- The effective policy of a port is its own `qos_policy_id`, else its network's, and the
  network's only for ports that are not network devices (`device_owner` `network:*`), as in
  Neutron.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vxnet.services import errors, rbac
from vxnet.services.repo import UnitOfWork, new_id, now_iso

MAX_INT = 2**31 - 1
VALID_DSCP_MARKS = (0, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 44, 46, 48, 56)
DIRECTIONS = ("egress", "ingress")

# rule type -> (URL collection, member name, fields with their defaults; None: required)
RULE_TYPES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bandwidth_limit": ("bandwidth_limit_rules", "bandwidth_limit_rule",
                        {"max_kbps": None, "max_burst_kbps": 0, "direction": "egress"}),
    "dscp_marking": ("dscp_marking_rules", "dscp_marking_rule", {"dscp_mark": None}),
    "minimum_bandwidth": ("minimum_bandwidth_rules", "minimum_bandwidth_rule",
                          {"min_kbps": None, "direction": "egress"}),
}
COLLECTION_TYPES = {coll: t for t, (coll, _, _) in RULE_TYPES.items()}

# What `GET /v2.0/qos/rule-types/<type>` reports (qos-rule-type-details): vxnet's one driver.
SUPPORTED_PARAMETERS: dict[str, list[dict[str, Any]]] = {
    "bandwidth_limit": [
        {"parameter_name": "max_kbps", "parameter_type": "range", "parameter_values": {"start": 0, "end": MAX_INT}},
        {"parameter_name": "max_burst_kbps", "parameter_type": "range",
         "parameter_values": {"start": 0, "end": MAX_INT}},
        {"parameter_name": "direction", "parameter_type": "choices", "parameter_values": list(DIRECTIONS)},
    ],
    "dscp_marking": [
        {"parameter_name": "dscp_mark", "parameter_type": "choices", "parameter_values": list(VALID_DSCP_MARKS)},
    ],
    "minimum_bandwidth": [
        {"parameter_name": "min_kbps", "parameter_type": "range", "parameter_values": {"start": 0, "end": MAX_INT}},
        {"parameter_name": "direction", "parameter_type": "choices", "parameter_values": list(DIRECTIONS)},
    ],
}


def policy_not_found(policy_id: str) -> errors.NotFound:
    return errors.NotFound("QosPolicyNotFound", f"QoS policy {policy_id} could not be found.")


def rule_not_found(rule_id: str, policy_id: str) -> errors.NotFound:
    return errors.NotFound("QosRuleNotFound", f"QoS rule {rule_id} for policy {policy_id} could not be found.")


def policy_visible(is_admin: bool, project_id: str, pol: Mapping[str, Any]) -> bool:
    """Admins, the owner, and projects it is shared with (its `shared` flag, or an RBAC policy)."""
    return rbac.visible(is_admin, project_id, dict(pol))


def new_policy(project_id: str, name: str, description: str, shared: bool, is_default: bool,
               tags: list[str]) -> dict[str, Any]:
    now = now_iso()
    return {"id": new_id("qos_policies"), "name": name, "description": description, "shared": shared,
            "is_default": is_default, "project_id": project_id, "tenant_id": project_id, "rules": [],
            "tags": list(tags), "created_at": now, "updated_at": now, "revision_number": 0}


def check_default(uow: UnitOfWork, pol: Mapping[str, Any]) -> None:
    """409 when another policy of the project is its default already."""
    if not pol.get("is_default"):
        return
    others = uow.list("qos_policies", lambda p: p["project_id"] == pol["project_id"] and p.get("is_default")
                      and p["id"] != pol["id"], guard_new=True)
    if others:
        raise errors.Conflict("QoSPolicyDefaultAlreadyExists",
                       f"A default QoS policy exists for project {pol['project_id']}.")


def check_rule_values(rule_type: str, values: Mapping[str, Any]) -> None:
    """Ranges and choices of a rule's fields (400 InvalidInput)."""
    for f in ("max_kbps", "max_burst_kbps", "min_kbps"):
        if f in values and not (isinstance(values[f], int) and 0 <= values[f] <= MAX_INT):
            raise errors.BadRequest("InvalidInput", f"Invalid input for {f}. Reason: '{values[f]}' is not in range "
                           f"0 through {MAX_INT}.")
    if "direction" in values and values["direction"] not in DIRECTIONS:
        raise errors.BadRequest("InvalidInput", f"Invalid input for direction. Reason: '{values['direction']}' is not "
                       f"in {list(DIRECTIONS)}.")
    if "dscp_mark" in values and values["dscp_mark"] not in VALID_DSCP_MARKS:
        raise errors.BadRequest("InvalidInput", f"Invalid input for dscp_mark. Reason: '{values['dscp_mark']}' is not "
                       f"in {list(VALID_DSCP_MARKS)}.")


def _conflicts(pol: Mapping[str, Any], rule: Mapping[str, Any]) -> bool:
    for r in pol.get("rules") or ():
        if r["id"] == rule["id"] or r["type"] != rule["type"]:
            continue
        if rule["type"] == "dscp_marking" or r.get("direction") == rule.get("direction"):
            return True
    return False


def add_rule(pol: dict[str, Any], rule_type: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """A new rule of `rule_type` in `pol` (mutated; the caller stores it); 409 on a duplicate."""
    _, _, fields = RULE_TYPES[rule_type]
    rule = {"id": new_id("qos_rules"), "type": rule_type, "qos_policy_id": pol["id"]}
    for f, default in fields.items():
        rule[f] = values.get(f, default)
    check_rule_values(rule_type, rule)
    if _conflicts(pol, rule):
        raise _duplicate(rule)
    pol["rules"] = [*pol.get("rules", []), rule]
    return rule


def update_rule(pol: dict[str, Any], rule_type: str, rule_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """Rule `rule_id` of `pol` with `values` changed (pol mutated); 404/409/400 as for add."""
    rules = list(pol.get("rules") or ())
    for i, r in enumerate(rules):
        if r["id"] == rule_id and r["type"] == rule_type:
            new = {**r, **values}
            check_rule_values(rule_type, new)
            if _conflicts(pol, new):
                raise _duplicate(new)
            rules[i] = new
            pol["rules"] = rules
            return new
    raise rule_not_found(rule_id, pol["id"])


def delete_rule(pol: dict[str, Any], rule_type: str, rule_id: str) -> None:
    rules = [r for r in pol.get("rules") or () if not (r["id"] == rule_id and r["type"] == rule_type)]
    if len(rules) == len(pol.get("rules") or ()):
        raise rule_not_found(rule_id, pol["id"])
    pol["rules"] = rules


def find_rule(pol: Mapping[str, Any], rule_type: str, rule_id: str) -> dict[str, Any]:
    for r in pol.get("rules") or ():
        if r["id"] == rule_id and r["type"] == rule_type:
            return dict(r)
    raise rule_not_found(rule_id, pol["id"])


def _duplicate(rule: Mapping[str, Any]) -> errors.Conflict:
    what = rule["type"] + (f" with direction {rule['direction']}" if "direction" in rule else "")
    return errors.Conflict("QoSRulesConflict", f"Rule {what} already exists in QoS policy {rule['qos_policy_id']}.")


def bump(pol: dict[str, Any]) -> None:
    pol["revision_number"] = pol.get("revision_number", 0) + 1
    pol["updated_at"] = now_iso()


def resolve_policy_id(uow: UnitOfWork, is_admin: bool, project_id: str, policy_id: str | None) -> str | None:
    """A `qos_policy_id` a caller names for a port or network: None clears it; a policy the caller
    cannot see (another project's, not shared with the caller's) is 404 QosPolicyNotFound. Read in the caller's unit
    of work, so a policy deleted meanwhile makes the write rerun."""
    if policy_id is None:
        return None
    pol = uow.get("qos_policies", policy_id)
    if pol is None or not policy_visible(is_admin, project_id, pol):
        raise policy_not_found(policy_id)
    return policy_id


def default_policy_id(uow: UnitOfWork, project_id: str) -> str | None:
    """The project's default policy (qos-default: a new network without `qos_policy_id` gets it)."""
    pols = uow.list("qos_policies", lambda p: p["project_id"] == project_id and p.get("is_default"))
    return pols[0]["id"] if pols else None


def policy_in_use(uow: UnitOfWork, policy_id: str) -> bool:
    """A port or network names the policy (guarded: one naming it meanwhile reruns the delete)."""
    return bool(uow.list("ports", lambda p: p.get("qos_policy_id") == policy_id, guard_new=True)
                or uow.list("networks", lambda n: n.get("qos_policy_id") == policy_id, guard_new=True))
