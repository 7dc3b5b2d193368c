"""Network RBAC (Neutron's `rbac-policies` for object type `network`): which projects a network
is shared with (`access_as_shared`) and which may use it as an external network
(`access_as_external`), each to one project or to every project (`target_tenant` "*").

Records and invariants:
- A policy is stored at `res/rbac_policies/<id>` as the API shows it: `id`, `project_id`
  (= `tenant_id`), `object_type`, `object_id`, `action`, `target_tenant`.
- The network it names carries the same entries as `_rbac` = [{id, action, target_tenant}]
  (internal: the API never shows it). Both are written in one transaction, so whoever reads the
  network (every transaction that uses a network reads it, guarded) sees exactly the policies
  that exist, and a policy created or deleted concurrently makes that transaction rerun.
- A network's stored `shared` is true exactly when a "*" `access_as_shared` entry exists, and
  `router:external` exactly when any `access_as_external` entry exists (Neutron: `shared=True`
  is the wildcard policy; `router:external=True` adds a wildcard external policy, a policy to
  one project makes the network external without it, and removing the last external policy
  makes it internal again). (object, action, target) is unique.
- A network stored before RBAC existed has no `_rbac`: its `shared` / `router:external` flags
  stand for wildcard entries, and the first RBAC change of that network writes them as real
  policies (`materialize`).

Access, for a project P that does not own the network (admins see everything):
- P sees the network if an `access_as_shared` entry targets P or "*", an `access_as_external`
  entry targets P, or any entry targets "*" (Neutron's model_query and external-network hooks);
- the network is `shared` for P (its `shared` attribute as P is shown it, `rule:shared`,
  ports on it) if an `access_as_shared` entry targets P or "*";
- P may use it as a router gateway or for floating IPs if P sees it and it is external.

Removing access (delete, or update of `target_tenant`) is refused with 409 RbacPolicyInUse
while the project losing it still depends on it (Neutron's callbacks): ports of that project
on the network for `access_as_shared` (for "*": ports of any project without its own entry,
other than the owner's and the cloud's own project-less ports), routers of that project with a
gateway on the network for `access_as_external`.
"""

from __future__ import annotations

from typing import Any

from vxnet.services.errors import BadRequest, InUse, conflict
from vxnet.services.repo import UnitOfWork, new_id

SHARED = "access_as_shared"
EXTERNAL = "access_as_external"
ACTIONS = (SHARED, EXTERNAL)
WILDCARD = "*"
ENTRIES = "_rbac"  # the network attribute holding its entries (never shown by the API)
COLLECTION = "rbac_policies"
GW_OWNER = "network:router_gateway"

Obj = dict[str, Any]


def entries(net: Obj) -> list[Obj]:
    """The network's entries ({id, action, target_tenant}); for a record stored before RBAC,
    wildcard entries (id None) standing for its `shared` / `router:external` flags."""
    stored = net.get(ENTRIES)
    if stored is not None:
        return list(stored)
    out = []
    if net.get("shared"):
        out.append({"id": None, "action": SHARED, "target_tenant": WILDCARD})
    if net.get("router:external"):
        out.append({"id": None, "action": EXTERNAL, "target_tenant": WILDCARD})
    return out


def _targets(net: Obj, action: str) -> set[str]:
    return {e["target_tenant"] for e in entries(net) if e["action"] == action}


def shared_with(net: Obj, project: str | None) -> bool:
    """Whether `net` is shared with `project` (an `access_as_shared` entry for it or "*")."""
    t = _targets(net, SHARED)
    return WILDCARD in t or (bool(project) and project in t)


def visible_to(net: Obj, project: str | None) -> bool:
    """Whether a non-admin of `project` sees `net` (see the module docstring)."""
    if project and net.get("project_id") == project:
        return True
    for e in entries(net):
        target = e["target_tenant"]
        if target == WILDCARD or (project and target == project):
            return True
    return False


def projects_with_own_entry(net: Obj, action: str) -> set[str]:
    """Projects named (not "*") by an entry of `action`."""
    return _targets(net, action) - {WILDCARD}


def policy_record(id_: str, project_id: str, network_id: str, action: str, target: str) -> Obj:
    return {"id": id_, "project_id": project_id, "tenant_id": project_id, "object_type": "network",
            "object_id": network_id, "action": action, "target_tenant": target}


def _sync_flags(net: Obj) -> None:
    """`shared` / `router:external` from the entries (see the invariants)."""
    net["shared"] = WILDCARD in _targets(net, SHARED)
    net["router:external"] = bool(_targets(net, EXTERNAL))


def materialize(uow: UnitOfWork, net: Obj) -> None:
    """Give a network stored before RBAC real policies for its flags (staged in `uow`; `net`
    is changed in place and must be put by the caller)."""
    if net.get(ENTRIES) is not None:
        return
    legacy = entries(net)
    net[ENTRIES] = []
    for e in legacy:
        _attach(uow, net, e["action"], e["target_tenant"], net["project_id"])


def initial_entries(uow: UnitOfWork, net: Obj) -> None:
    """A new network's policies: "*" `access_as_shared` if `shared`, "*" `access_as_external`
    if `router:external` (owned by the network's project). Changes `net`; the caller puts it."""
    net[ENTRIES] = []
    if net.get("shared"):
        _attach(uow, net, SHARED, WILDCARD, net["project_id"])
    if net.get("router:external"):
        _attach(uow, net, EXTERNAL, WILDCARD, net["project_id"])
    _sync_flags(net)


def _attach(uow: UnitOfWork, net: Obj, action: str, target: str, project: str) -> Obj:
    pol = policy_record(new_id(COLLECTION), project, net["id"], action, target)
    uow.put(COLLECTION, pol)
    net[ENTRIES] = [*(net.get(ENTRIES) or []), {"id": pol["id"], "action": action, "target_tenant": target}]
    return pol


def find(net: Obj, action: str, target: str) -> Obj | None:
    return next((e for e in entries(net) if e["action"] == action and e["target_tenant"] == target), None)


def add(uow: UnitOfWork, net: Obj, action: str, target: str, project: str) -> Obj:
    """Create a policy on `net` (already checked: caller may, action valid). 409
    DuplicateRbacPolicy if the same (action, target) exists. Stages the policy; changes `net`
    (entries and flags) without putting it."""
    materialize(uow, net)
    if find(net, action, target) is not None:
        raise conflict("DuplicateRbacPolicy", "An RBAC policy already exists with those values.")
    pol = _attach(uow, net, action, target, project)
    _sync_flags(net)
    return pol


def remove(uow: UnitOfWork, net: Obj, policy_id: str) -> None:
    """Drop policy `policy_id` from `net` and the store (checks already made). Changes `net`."""
    uow.delete(COLLECTION, policy_id)
    net[ENTRIES] = [e for e in net.get(ENTRIES) or [] if e["id"] != policy_id]
    _sync_flags(net)


def retarget(net: Obj, policy_id: str, target: str) -> None:
    """Point entry `policy_id` of `net` at `target` (409 if that duplicates another entry)."""
    mine = next(e for e in net[ENTRIES] if e["id"] == policy_id)
    if target != mine["target_tenant"] and find(net, mine["action"], target) is not None:
        raise conflict("DuplicateRbacPolicy", "An RBAC policy already exists with those values.")
    net[ENTRIES] = [{**e, "target_tenant": target} if e["id"] == policy_id else e for e in net[ENTRIES]]
    _sync_flags(net)


def in_use(object_id: str, details: str) -> InUse:
    return InUse("RbacPolicyInUse", f"RBAC policy on object {object_id} cannot be removed because other objects "
                                    f"depend on it.\nDetails: {details}")


def check_release(uow: UnitOfWork, net: Obj, entry: Obj, new_target: str | None = None) -> None:
    """Refuse (409 RbacPolicyInUse) taking entry `entry` away from its target, by a delete or
    (with `new_target`) an update, while that project still depends on it. Reads are guarded
    (`guard_new`), so a port or gateway appearing meanwhile makes the transaction rerun."""
    target = entry["target_tenant"]
    if new_target is not None and new_target == target:
        return
    if entry["action"] == SHARED:
        _check_shared_release(uow, net, entry, target)
    else:
        _check_external_release(uow, net, entry, target, new_target)


def _check_shared_release(uow: UnitOfWork, net: Obj, entry: Obj, target: str) -> None:
    owner = net["project_id"]
    if target == owner:  # self-sharing: the owner never depends on it
        return
    others = [e for e in entries(net) if e["action"] == SHARED and e["id"] != entry["id"]]
    ports = uow.list("ports", lambda p: p["network_id"] == net["id"], guard_new=True)
    if target == WILDCARD:
        allowed = {e["target_tenant"] for e in others} | {owner}
        users = [p for p in ports if p.get("project_id") and p["project_id"] not in allowed]
    else:
        if any(e["target_tenant"] == WILDCARD for e in others):
            return
        users = [p for p in ports if p.get("project_id") == target]
    if users:
        raise in_use(net["id"], f"Unable to reconfigure sharing settings for network {net['id']}. "
                                "Multiple tenants are using it.")


def _gateway_routers(uow: UnitOfWork, net_id: str) -> list[Obj]:
    return uow.list("routers", lambda r: ((r.get("external_gateway_info") or {}).get("network_id") == net_id),
                    guard_new=True)


def _check_external_release(uow: UnitOfWork, net: Obj, entry: Obj, target: str, new_target: str | None) -> None:
    others = [e for e in entries(net) if e["action"] == EXTERNAL and e["id"] != entry["id"]]
    if new_target is None and not others and uow.list(
            "ports", lambda p: p["network_id"] == net["id"] and p["device_owner"] == GW_OWNER, guard_new=True):
        # deleting the last external policy makes the network internal (Neutron's
        # _process_ext_policy_delete), which no gateway may still need
        raise in_use(net["id"], "There are routers attached to this network that depend on this policy for access.")
    routers = _gateway_routers(uow, net["id"])
    if target != WILDCARD:
        if any(e["target_tenant"] == WILDCARD for e in others):
            return
        users = [r for r in routers if r.get("project_id") == target]
    else:
        if net.get("is_default"):
            raise in_use(net["id"], "Default external networks must be shared to everyone.")
        allowed = {e["target_tenant"] for e in others}
        if new_target is not None:
            allowed.add(new_target)
        users = [r for r in routers if r.get("project_id") not in allowed]
    if users:
        raise in_use(net["id"], "There are routers attached to this network that depend on this policy for access.")


def set_shared(uow: UnitOfWork, net: Obj, value: bool) -> None:
    """`PUT network shared=value`: add or remove the "*" `access_as_shared` policy (owned by
    the network's project). The caller checked that nobody loses access it still uses."""
    materialize(uow, net)
    wildcard = find(net, SHARED, WILDCARD)
    if value and wildcard is None:
        _attach(uow, net, SHARED, WILDCARD, net["project_id"])
    elif not value and wildcard is not None:
        remove(uow, net, wildcard["id"])
    _sync_flags(net)


def set_external(uow: UnitOfWork, net: Obj, value: bool) -> None:
    """`PUT network router:external=value`: true adds the "*" `access_as_external` policy (if
    the network was not external); false removes every external policy."""
    materialize(uow, net)
    external = [e for e in entries(net) if e["action"] == EXTERNAL]
    if value and not external:
        _attach(uow, net, EXTERNAL, WILDCARD, net["project_id"])
    elif not value:
        for e in external:
            remove(uow, net, e["id"])
    _sync_flags(net)


def delete_all(uow: UnitOfWork, net: Obj) -> None:
    """Delete every policy of a network that is being deleted."""
    for e in entries(net):
        if e["id"] is not None:
            uow.delete(COLLECTION, e["id"])


def strip(net: Obj) -> Obj:
    """A copy of the network without its internal entries (what API clients are shown)."""
    return {k: v for k, v in net.items() if k != ENTRIES}


def valid_action(action: str) -> BadRequest | None:
    """Neutron's InvalidActionForType for an action networks do not have, else None."""
    if action in ACTIONS:
        return None
    return BadRequest("InvalidActionForType", f"Invalid action '{action}' for object type 'network'. "
                                              f"Valid actions: {list(ACTIONS)}")

