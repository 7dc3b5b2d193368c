"""The view of one host: what it is shown (the contract), in which forms, and the reference scan.

What a host sees (the contract of `GET /v2.0/vxnet/hosts/{host}/view`), for host H:

- L: ports with `binding:host_id == H` (local ports); N0: their networks.
- R: routers with an interface port (device_owner in ROUTER_IFACE_OWNERS, device_id = router)
  on a network of N0; N1: the networks of every interface of those routers.
- Gateway hosts (agent registered with `gateway: true`) add every router with an external
  gateway to R (and so its interfaces' networks to N1), every `router:external` network and
  every router's external gateway network, and every floating IP.
- N = N0 | N1 | (gateway networks). The view holds the networks of N, their subnets, ALL their
  ports, the routers of R, the floating IPs of local ports, the security groups of local ports
  and their rules, the member ports of every remote group those rules name, and the `hosts`
  entries ({host, underlay_ip, alive, gateway}) of H and of every host a port of the view is
  bound to (registered hosts only), plus every gateway host's entry (any host may have to
  re-point its north-south traffic to a router's standby gateway, docs/gateway.md).
- Every host sees every QoS policy (`qos_policies`, rules embedded): few objects, made by
  admins, that ports and networks name by id; broadcasting them keeps them out of membership.

Membership is kept as ids: a network, router, group or host id is a member as soon as something
refers to it, and appears in the view once the object exists. So creating or deleting such an
object never changes membership, only what is shown.

`full_view` computes a view from scratch by scanning every object: it is the reference, and
services/view_index.py's `ViewIndex` keeps the same views incrementally.

A port bound to another host is shown in its peer form (`project`, `peer_copy`): the fields
an agent computes on (model/resources.py `_port`), without the port's own host's business
(`status`, `revision_number`, `updated_at`) and without what no agent reads (name,
description, tags, timestamps, the binding's profile, VIF and vNIC types). So a status report,
a rename or a new tag reaches the port's own host alone and wakes no peer's agent, and a
snapshot's peer ports are about a third smaller. The port's own host sees every field (its
agent compares the status it reports with the stored one).

Every other object is shown in its host form (`host_form`): the fields of `READ_FIELDS`, the
ones model/resources.py parses, and nothing else. Names, descriptions, tags, timestamps,
revisions (but a floating IP's, which its gateway host reports against), a network's subnet
list and RBAC entries reach no agent: a member's megabyte of tags or description on a network
is not sent to, nor parsed by, every host on the network (or on a shared network, every host
of every project using it), and a change to only those wakes no agent. `vxnet trace` and
doctor take names from the objects themselves, not from views. The index keeps one host form
per shown object (`_forms`, replaced with its object), so snapshots share them.

The module is pure: no I/O, no clock, no threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vxnet.model.resources import READ_FIELDS

Obj = dict[str, Any]
View = dict[str, dict[str, Any]]

COLLECTIONS = ("networks", "subnets", "ports", "routers", "floatingips", "security_groups",
               "security_group_rules", "qos_policies")
BROADCAST = ("qos_policies",)   # every tracked host holds every object of these
VIEW_KEYS = COLLECTIONS + ("hosts",)
# The same owners as services/ports.py ROUTER_INTERFACE_OWNERS (kept here so this module
# imports nothing from the API layer).
ROUTER_IFACE_OWNERS = frozenset({
    "network:router_interface",
    "network:router_interface_distributed",
    "network:ha_router_replicated_interface",
    "network:router_centralized_snat",
})


# Fields of a port that hosts it is not bound to are not shown (see `project`): its status
# (the port's own host's business), and everything no agent computes on. A field the typed
# model starts to read must leave this list (tests/unit/test_peer_form.py checks that the model
# parses a peer form as it parses the whole port).
PEER_HIDDEN = ("status", "revision_number", "updated_at", "created_at", "name", "description", "tags",
               "binding:profile", "binding:vif_type", "binding:vnic_type")
_STANDBY = "ha_standby_hosts"   # the one key of `binding:vif_details` an agent reads (gateway ports)
_projected: dict[int, tuple[Obj, Obj]] = {}   # id(port) -> (port, its peer projection): one copy per change
_formed: dict[int, tuple[Obj, Obj]] = {}   # id(object) -> (object, its host form): one copy per change


def project(host: str, coll: str, obj: Any) -> Any:
    """What `host` is shown of object `obj` of `coll`: a port bound elsewhere without its
    status fields (`PEER_HIDDEN`); any other kind in its `host_form`."""
    if coll != "ports":
        return obj if obj is None or coll not in READ_FIELDS else host_form(coll, obj)
    if obj is None or obj.get("binding:host_id") == host:
        return obj
    return peer_form(obj)


def host_form(coll: str, obj: Obj) -> Obj:
    """Object `obj` of `coll` (not a port) as every host is shown it: its `READ_FIELDS` only.
    One copy per changed object for all the holders of an update (as `peer_form`)."""
    hit = _formed.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    if len(_formed) > 256:
        _formed.clear()
    out = host_copy(coll, obj)
    _formed[id(obj)] = (obj, out)
    return out


def host_copy(coll: str, obj: Obj) -> Obj:
    """`obj`'s READ_FIELDS, less those that are null or an empty list (the model reads a missing
    field as such): a subnet's form is then a dict of ~7 fields, not 11 (the index keeps one
    per shown object: at 5,000 networks and subnets ~2.3 MB rather than ~3.7)."""
    return {k: v for k in READ_FIELDS[coll] if (v := obj.get(k)) is not None and v != []}


def peer_form(port: Obj) -> Obj:
    """A port as shown to the hosts it is not bound to (`peer_copy`), one copy per changed port
    for the holders of an update."""
    hit = _projected.get(id(port))
    if hit is not None and hit[0] is port:
        return hit[1]
    if len(_projected) > 256:
        _projected.clear()
    out = peer_copy(port)
    _projected[id(port)] = (port, out)
    return out


def peer_copy(port: Obj) -> Obj:
    """A new copy of `port` without `PEER_HIDDEN`, its `binding:vif_details` only when it names
    standby gateway hosts, and `tenant_id` only when its `project_id` is empty (a snapshot's peer
    ports: each is written once per snapshot, so `peer_form`'s memo would only cost).
    `port.copy()`, not `dict(port)`: the hub's ports are key-sharing dicts (services/compact.py),
    which `copy` clones as they are (their values at once) where `dict()` inserts key by key:
    2.5x faster a port (0.7 against 1.8 us), and the copy, then deletes, is several times
    faster than a filtering comprehension."""
    out = port.copy()
    for k in PEER_HIDDEN:
        out.pop(k, None)
    details = out.get("binding:vif_details")
    if details is not None and not (_STANDBY in details if type(details) is dict
                                    else isinstance(details, Mapping) and _STANDBY in details):
        del out["binding:vif_details"]
    if out.get("project_id"):
        out.pop("tenant_id", None)
    return out


def host_entry(agent: Obj | None) -> Obj | None:
    """The `hosts` entry a registered agent record gives (None for no record)."""
    if agent is None:
        return None
    conf = agent.get("configurations") or {}
    return {"host": agent["host"], "underlay_ip": conf.get("underlay_ip"), "alive": bool(agent.get("alive")),
            "gateway": bool(conf.get("gateway"))}


def gateway_network(router: Obj) -> str | None:
    info = router.get("external_gateway_info") or {}
    return info.get("network_id") or None


def is_router_iface(port: Obj) -> bool:
    return port.get("device_owner") in ROUTER_IFACE_OWNERS and bool(port.get("device_id"))


def empty_view() -> View:
    return {k: {} for k in VIEW_KEYS}


# --- the reference: a full scan -------------------------------------------------------------

def full_view(objects: Mapping[str, Mapping[str, Obj]], hosts: Mapping[str, Obj], host: str) -> View:
    """The view of `host` computed from scratch. `objects[collection][id]`; `hosts[name]` are
    `host_entry` values of registered hosts."""
    ports = objects.get("ports", {})
    routers = objects.get("routers", {})
    networks = objects.get("networks", {})
    me = hosts.get(host)
    gateway = bool(me and me["gateway"])
    local = {pid for pid, p in ports.items() if p.get("binding:host_id") == host}
    n0 = {ports[p]["network_id"] for p in local}
    r_ids = {p["device_id"] for p in ports.values() if is_router_iface(p) and p["network_id"] in n0}
    nets = set(n0)
    if gateway:
        r_ids |= {rid for rid, r in routers.items() if gateway_network(r)}
        nets |= {nid for nid, n in networks.items() if n.get("router:external")}
        nets |= {g for r in routers.values() if (g := gateway_network(r))}
    nets |= {p["network_id"] for p in ports.values() if is_router_iface(p) and p["device_id"] in r_ids}
    port_ids = local | {pid for pid, p in ports.items() if p["network_id"] in nets}
    sgs = {g for p in local for g in ports[p].get("security_groups") or ()}
    rules = {rid: r for rid, r in objects.get("security_group_rules", {}).items() if r["security_group_id"] in sgs}
    remote = {r["remote_group_id"] for r in rules.values() if r.get("remote_group_id")}
    port_ids |= {pid for pid, p in ports.items() if set(p.get("security_groups") or ()) & remote}
    fips = {fid: f for fid, f in objects.get("floatingips", {}).items() if gateway or f.get("port_id") in local}
    host_names = {ports[p].get("binding:host_id") for p in port_ids} | {host}
    if me is not None:   # a registered host: it also holds every gateway host's entry
        host_names |= {h for h, e in hosts.items() if e["gateway"]}
    view = empty_view()
    view["networks"] = {n: networks[n] for n in nets if n in networks}
    view["subnets"] = {sid: s for sid, s in objects.get("subnets", {}).items() if s["network_id"] in nets}
    view["ports"] = {p: project(host, "ports", ports[p]) for p in port_ids}
    view["routers"] = {r: routers[r] for r in r_ids if r in routers}
    view["floatingips"] = fips
    view["security_groups"] = {g: o for g, o in objects.get("security_groups", {}).items() if g in sgs}
    view["security_group_rules"] = rules
    for coll in BROADCAST:
        view[coll] = dict(objects.get(coll, {}))
    for coll in READ_FIELDS:   # every other kind in its host form
        view[coll] = {i: host_form(coll, o) for i, o in view[coll].items()}
    view["hosts"] = {h: hosts[h] for h in host_names if h and h in hosts}
    return view
