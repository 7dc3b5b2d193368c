"""Neutron's RBAC (`rbac-policies`) for object types `network`, `qos_policy`, `subnetpool`,
`address_scope` and `security_group`: which projects an object is shared with (`access_as_shared`, every type) and
which may use a network as an external network (`access_as_external`, networks only), each to one
project or to every project (`target_tenant` "*").

The other types (`TYPES`) follow the network rules below for `access_as_shared`: the same
records, the stored `shared` flag is the "*" entry, and P sees and uses an object that is
shared with it (a targeted QoS policy can be attached to P's ports and networks, a targeted
subnet pool allocates P's subnets, a targeted address scope takes P's pools, a targeted security
group goes on P's ports and is a remote group of P's rules). Taking sharing away is refused with
409 RbacPolicyInUse while the project losing it has objects bound to it (Neutron's
`get_bound_project_ids`): ports and networks naming the QoS policy, subnets allocated from the
pool, pools in the address scope, ports in the security group; the object's owner never
depends on it.

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

from vxnet.services import quotas
from vxnet.services.errors import BadRequest, InUse, conflict
from vxnet.services.repo import UnitOfWork, new_id

SHARED = "access_as_shared"
EXTERNAL = "access_as_external"
ACTIONS = (SHARED, EXTERNAL)
WILDCARD = "*"
ENTRIES = "_rbac"  # the network attribute holding its entries (never shown by the API)
COLLECTION = "rbac_policies"
GW_OWNER = "network:router_gateway"
# object type -> (collection, its actions)
TYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "network": ("networks", ACTIONS),
    "qos_policy": ("qos_policies", (SHARED,)),
    "subnetpool": ("subnetpools", (SHARED,)),
    "address_scope": ("address_scopes", (SHARED,)),
    "security_group": ("security_groups", (SHARED,)),
}
TYPE_OF: dict[str, str] = {coll: t for t, (coll, _) in TYPES.items()}

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


def policy_record(id_: str, project_id: str, object_id: str, action: str, target: str,
                  object_type: str = "network") -> Obj:
    return {"id": id_, "project_id": project_id, "tenant_id": project_id, "object_type": object_type,
            "object_id": object_id, "action": action, "target_tenant": target}


def visible(is_admin: bool, project: str | None, obj: Obj) -> bool:
    """Admins see everything; others what `visible_to` grants them."""
    return is_admin or visible_to(obj, project)


def _sync_flags(obj: Obj) -> None:
    """`shared` (and a network's `router:external`) from the entries (see the invariants)."""
    obj["shared"] = WILDCARD in _targets(obj, SHARED)
    if "router:external" in obj:  # networks only
        obj["router:external"] = bool(_targets(obj, EXTERNAL))


def materialize(uow: UnitOfWork, net: Obj, object_type: str = "network") -> None:
    """Give a network stored before RBAC real policies for its flags (staged in `uow`; `net`
    is changed in place and must be put by the caller). Every change of entries starts here."""
    if net.get(ENTRIES) is not None:
        net[ENTRIES] = list(net[ENTRIES])   # its own list, which `_attach` appends to
        return
    legacy = entries(net)
    net[ENTRIES] = []
    for e in legacy:
        _attach(uow, net, e["action"], e["target_tenant"], net["project_id"], object_type)


def initial_entries(uow: UnitOfWork, net: Obj, object_type: str = "network") -> None:
    """A new object's policies: "*" `access_as_shared` if `shared`, and for a network "*"
    `access_as_external` if `router:external` (owned by the object's project). Changes `net`;
    the caller puts it."""
    net[ENTRIES] = []
    if net.get("shared"):
        _attach(uow, net, SHARED, WILDCARD, net["project_id"], object_type)
    if net.get("router:external"):
        _attach(uow, net, EXTERNAL, WILDCARD, net["project_id"], object_type)
    _sync_flags(net)


def _attach(uow: UnitOfWork, net: Obj, action: str, target: str, project: str, object_type: str,
            *, implicit: bool = True) -> Obj:
    """Stage a policy on `net` (any type). An implicit one (the `shared` / `router:external`
    flag's) counts in the `rbac_policy` quota but is never refused, as in Neutron."""
    pol = policy_record(new_id(COLLECTION), project, net["id"], action, target, object_type)
    if implicit:
        with quotas.exempt(uow):
            uow.put(COLLECTION, pol)
    else:
        uow.put(COLLECTION, pol)
    net[ENTRIES].append({"id": pol["id"], "action": action, "target_tenant": target})   # `net`'s own list
    return pol


def find(net: Obj, action: str, target: str) -> Obj | None:
    return next((e for e in entries(net) if e["action"] == action and e["target_tenant"] == target), None)


class Adding:
    """The policies one create (or bulk create) stages, in one unit of work: each object they
    name is read by the caller once, checked against the (action, target) pairs it holds in a
    set, and written once (`finish`). A bulk of n policies on one object is O(n); one at a
    time, each re-read, scanned and re-wrote the object with all its entries: O(n^2) (a 1 MiB
    body holds ~7,000 policies)."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow
        self._objects: dict[tuple[str, str], tuple[Obj, set[tuple[str, str]]]] = {}

    def staged(self, object_type: str, object_id: str) -> Obj | None:
        """The object if a policy of this create names it already (use it, do not read it again)."""
        hit = self._objects.get((object_type, object_id))
        return hit[0] if hit is not None else None

    def add(self, object_type: str, obj: Obj, action: str, target: str, project: str) -> Obj:
        """Stage a policy on `obj` (already checked: caller may, action valid); 409
        DuplicateRbacPolicy if the same (action, target) exists. Changes `obj` (entries, and
        flags at `finish`), which `finish` puts."""
        key = (object_type, obj["id"])
        if key not in self._objects:
            materialize(self.uow, obj, object_type)
            self._objects[key] = (obj, {(e["action"], e["target_tenant"]) for e in obj[ENTRIES]})
        obj, pairs = self._objects[key]
        if (action, target) in pairs:
            raise conflict("DuplicateRbacPolicy", "An RBAC policy already exists with those values.")
        pairs.add((action, target))
        return _attach(self.uow, obj, action, target, project, object_type, implicit=False)

    def finish(self) -> None:
        """Put every object a policy was added to, its flags in line with its entries."""
        for (object_type, _), (obj, _) in self._objects.items():
            _sync_flags(obj)
            self.uow.put(TYPES[object_type][0], obj)


def remove(uow: UnitOfWork, net: Obj, *policy_ids: str) -> None:
    """Drop policies `policy_ids` from `net` and the store (checks already made), the entry
    list rewritten once. Changes `net`."""
    gone = set(policy_ids)
    for policy_id in gone:
        uow.delete(COLLECTION, policy_id)
    net[ENTRIES] = [e for e in net.get(ENTRIES) or [] if e["id"] not in gone]
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


def set_shared(uow: UnitOfWork, net: Obj, value: bool, object_type: str = "network") -> None:
    """`PUT <object> shared=value`: add or remove the "*" `access_as_shared` policy (owned by
    the object's project). The caller checked that nobody loses access it still uses."""
    materialize(uow, net, object_type)
    wildcard = find(net, SHARED, WILDCARD)
    if value and wildcard is None:
        _attach(uow, net, SHARED, WILDCARD, net["project_id"], object_type)
    elif not value and wildcard is not None:
        remove(uow, net, wildcard["id"])
    _sync_flags(net)


def set_external(uow: UnitOfWork, net: Obj, value: bool) -> None:
    """`PUT network router:external=value`: true adds the "*" `access_as_external` policy (if
    the network was not external); false removes every external policy."""
    materialize(uow, net)
    external = [e for e in entries(net) if e["action"] == EXTERNAL]
    if value and not external:
        _attach(uow, net, EXTERNAL, WILDCARD, net["project_id"], "network")
    elif not value and external:
        remove(uow, net, *(e["id"] for e in external))   # all at once (one per entry was quadratic)
    _sync_flags(net)


def delete_all(uow: UnitOfWork, net: Obj) -> None:
    """Delete every policy of an object (any type) that is being deleted."""
    for e in entries(net):
        if e["id"] is not None:
            uow.delete(COLLECTION, e["id"])


def strip(net: Obj) -> Obj:
    """A copy of the object without its internal entries (what API clients are shown)."""
    return {k: v for k, v in net.items() if k != ENTRIES}


def present(obj: Obj, project: str | None) -> Obj:
    """What `project` is shown: no entries, and `shared` as it is for that project (Neutron's
    `is_shared_with_tenant`)."""
    out = strip(obj)
    out["shared"] = shared_with(obj, project)
    return out


def valid_action(action: str, object_type: str = "network") -> BadRequest | None:
    """Neutron's InvalidActionForType for an action the object type does not have, else None."""
    actions = TYPES[object_type][1]
    if action in actions:
        return None
    return BadRequest("InvalidActionForType", f"Invalid action '{action}' for object type '{object_type}'. "
                                              f"Valid actions: {list(actions)}")


# Neutron's get_bound_project_ids: object type -> (collection, the field naming the object)
BOUND_BY: dict[str, tuple[tuple[str, str], ...]] = {
    "qos_policy": (("ports", "qos_policy_id"), ("networks", "qos_policy_id")),
    "subnetpool": (("subnets", "subnetpool_id"),),
    "address_scope": (("subnetpools", "address_scope_id"),),
    "security_group": (("ports", "security_groups"),),  # a list of group ids
}


def _names(value: Any, object_id: str) -> bool:
    """Whether a reference field (one id, or a list of ids) names `object_id`."""
    return object_id in value if isinstance(value, list) else value == object_id


def bound_projects(uow: UnitOfWork, object_type: str, obj: Obj) -> set[str]:
    """Projects (other than the owner) with objects bound to `obj` (guarded reads, so one
    binding meanwhile reruns the transaction)."""
    out: set[str] = set()
    for coll, field in BOUND_BY[object_type]:
        out |= {o.get("project_id") or "" for o in uow.list(coll, lambda o, f=field: _names(o.get(f), obj["id"]),
                                                             guard_new=True)}
    return out - {"", obj["project_id"]}


def check_shared_release(uow: UnitOfWork, object_type: str, obj: Obj, target: str, entry_id: str | None,
                         new_target: str | None = None) -> None:
    """Neutron's validate_rbac_policy_delete / _update for the non-network types: refuse (409
    RbacPolicyInUse) taking `target`'s access away (entry `entry_id`; None: the "*" entry of
    `shared`) while a project it covers, and no other entry does, has objects bound to `obj`.
    An update to "*" takes nothing away."""
    if target == obj["project_id"] or (new_target is not None and new_target in (target, WILDCARD)):
        return
    others = {e["target_tenant"] for e in entries(obj) if e["action"] == SHARED and e["id"] != entry_id}
    bound = bound_projects(uow, object_type, obj)
    if target != WILDCARD:
        users = set() if WILDCARD in others else bound & {target}
    else:
        users = bound - others
    if users:
        raise in_use(obj["id"], f"project_id={target}")

