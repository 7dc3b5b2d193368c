"""The fan-out index that keeps every tracked host's view (services/host_view.py) current.

`full_view` (services/host_view.py) computes a view from scratch by scanning every object: it
is the reference.
`ViewIndex` keeps the same views incrementally: it holds every object plus indexes (ports by
network, host and group, router interfaces, ...) and, per tracked host, the member ids; and the
reverse index `holders(collection, id)` = hosts whose view contains that id. A change costs:
- an attribute change that cannot move anything (fixed IPs, allowed address pairs, ...): one
  put per host holding the object (a port's status or name: its own host's alone, services/host_view.py);
- a port, subnet or floating IP appearing, moving or going: for every other host it can touch
  (found through the indexes: hosts holding its network, its remote groups, ...) an O(1)
  membership test ("leaf" path), plus a recompute of the port's own old and new host, unless
  the port just joins a host already on its network and groups (a VM booting);
- a change that reshapes views (a rule, a router interface, a gateway, a gateway host): the
  memberships of the hosts it can affect are recomputed from the indexes (not by a scan) and
  diffed.
Measured (one core, pure index, 1,000 hosts, 20,000 ports): a port status change p50 ~0.01 ms,
a new port ~0.4 ms, a VM port joining a host already on its network ~0.03 ms.

A host's port members are not kept as a set but derived from its roots (`_PortMembers`: its
local ports, the ports of its networks, the member ports of its remote groups), and a port's
holders from its network's holders, its binding host and its groups' remote watchers
(`ViewIndex.holders`): both duplicated what the index holds anyway (100,000 ports on 1,000
hosts: tracking every host kept 38.6 MiB, now 13.1; docs/benchmarks.md, session 16).

Invariant (tested against `full_view` on random histories): for every tracked host, applying
`ViewIndex.apply`'s messages in order to `ViewIndex.snapshot` gives `full_view` of the same
objects. The module is pure: no I/O, no clock, no threads.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any

from vxnet.model.resources import READ_FIELDS
from vxnet.services.host_view import (
    BROADCAST,
    COLLECTIONS,
    VIEW_KEYS,
    Obj,
    View,
    empty_view,
    gateway_network,
    host_copy,
    host_entry,
    is_router_iface,
    project,
)

# Attributes whose change can move objects in or out of some view (networks, routers and
# groups are members by id; only gateway hosts depend on their attributes).
_STRUCTURAL: dict[str, tuple[str, ...]] = {
    "ports": ("network_id", "binding:host_id", "device_owner", "device_id", "security_groups"),
    "subnets": ("network_id",),
    "floatingips": ("port_id",),
    "security_group_rules": ("security_group_id", "remote_group_id"),
}

_NONE: frozenset[str] = frozenset()


def _add(index: dict[str, set[str]], key: str | None, value: str) -> None:
    if key:
        index.setdefault(key, set()).add(value)


def _discard(index: dict[str, set[str]], key: str | None, value: str) -> None:
    if key:
        s = index.get(key)
        if s is not None:
            s.discard(value)
            if not s:
                del index[key]


@dataclasses.dataclass
class Message:
    """What one host must apply for one revision: puts and deletes per view key. Several steps
    of one revision compose: an entry that comes and goes, or leaves and comes back unchanged,
    leaves no trace."""

    put: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    delete: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    _before: dict[tuple[str, str], Any] = dataclasses.field(default_factory=dict)

    def _unset(self, coll: str, id_: str) -> None:
        for m in (self.put, self.delete):
            c = m.get(coll)
            if c is not None and id_ in c:
                c.pop(id_) if isinstance(c, dict) else c.discard(id_)
                if not c:
                    del m[coll]

    def set(self, coll: str, id_: str, obj: Any, old: Any) -> None:
        """Show `obj`; `old` is what the host had before this step (None: nothing)."""
        before = self._before.setdefault((coll, id_), old)
        self._unset(coll, id_)
        if before != obj:
            self.put.setdefault(coll, {})[id_] = obj

    def drop(self, coll: str, id_: str, old: Any) -> None:
        """Remove the entry the host had before this step (`old`)."""
        before = self._before.setdefault((coll, id_), old)
        self._unset(coll, id_)
        if before is not None:
            self.delete.setdefault(coll, set()).add(id_)

    def __bool__(self) -> bool:
        return bool(self.put or self.delete)

    def wire(self) -> dict[str, Any]:
        """The `put` / `delete` members of an update message (delete ids sorted)."""
        return {"put": self.put, "delete": {k: sorted(v) for k, v in self.delete.items()}}


class _Holders:
    """(view key, id) -> the tracked hosts whose view holds it. A few hosts (most objects: the
    hosts of one network) as a tuple, more as a set: ~230 bytes less per object than a set under
    a (key, id) tuple, and there is one entry per object any host holds. Not kept for ports
    (`DERIVED`): `ViewIndex.holders` derives a port's from its network's, its binding host and
    its groups' remote watchers (100,000 ports: ~13 MiB less); `add` and `discard` of a port
    do nothing."""

    SMALL = 8
    DERIVED = "ports"

    def __init__(self) -> None:
        self._by: dict[str, dict[str, tuple[str, ...] | set[str]]] = {k: {} for k in VIEW_KEYS if k != self.DERIVED}

    def get(self, key: str, id_: str) -> Collection[str]:
        return self._by[key].get(id_, ())

    def add(self, key: str, id_: str, host: str) -> None:
        d = self._by.get(key)
        if d is None:
            return
        cur = d.get(id_)
        if cur is None:
            d[id_] = (host,)
        elif isinstance(cur, tuple):
            if host not in cur:
                d[id_] = cur + (host,) if len(cur) < self.SMALL else {*cur, host}
        else:
            cur.add(host)

    def discard(self, key: str, id_: str, host: str) -> None:
        d = self._by.get(key)
        if d is None:
            return
        cur = d.get(id_)
        if cur is None:
            return
        if isinstance(cur, tuple):
            if host in cur:
                rest = tuple(h for h in cur if h != host)
                if rest:
                    d[id_] = rest
                else:
                    del d[id_]
        else:
            cur.discard(host)
            if not cur:
                del d[id_]


class _PortMembers(Collection[str]):
    """`ViewIndex.members[host]["ports"]`: the port ids of a tracked host's view, derived from
    its roots as `membership` finds them (its local ports, the ports of its networks, the
    member ports of its remote groups), not kept as a set (100,000 ports on 1,000 hosts: ~15
    MiB). `in` asks the index about the port's current value; iteration and `len` make the set."""

    __slots__ = ("_host", "_index")

    def __init__(self, index: ViewIndex, host: str) -> None:
        self._index = index
        self._host = host

    def __contains__(self, id_: object) -> bool:
        port = self._index.objects["ports"].get(id_)  # type: ignore[call-overload]
        return port is not None and self._index._in_view(self._host, "ports", port)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index._port_ids(self._host))

    def __len__(self) -> int:
        return len(self._index._port_ids(self._host))


class ViewIndex:
    """All objects, their indexes, and the member ids of every tracked host's view."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Obj]] = {c: {} for c in COLLECTIONS}
        self.hosts: dict[str, Obj] = {}  # host name -> host_entry of a registered agent
        self._agent_host: dict[str, str] = {}  # agent record id -> host name
        # indexes over objects
        self._ports_by_net: dict[str, set[str]] = {}
        self._ports_by_host: dict[str, set[str]] = {}
        self._ports_by_sg: dict[str, set[str]] = {}
        self._ifaces_by_net: dict[str, set[str]] = {}
        self._ifaces_by_router: dict[str, set[str]] = {}
        self._subnets_by_net: dict[str, set[str]] = {}
        self._rules_by_sg: dict[str, set[str]] = {}
        self._fips_by_port: dict[str, set[str]] = {}
        self._gw_routers: dict[str, str] = {}  # router id -> external network id
        self._ext_nets: set[str] = set()
        # per tracked host: member ids per view key, and remote groups; reverse indexes
        self.members: dict[str, dict[str, Any]] = {}   # host -> view key -> member ids (ports: `_PortMembers`)
        self._remote: dict[str, set[str]] = {}
        self._host_refs: dict[str, collections.Counter[str]] = {}  # host -> binding host -> view ports
        self._n0: dict[str, set[str]] = {}  # host -> networks of its local ports
        self._holders = _Holders()
        self._remote_watch: dict[str, set[str]] = {}
        self._forms: dict[str, dict[str, Obj]] = {c: {} for c in READ_FIELDS}   # id -> host form (shown ones)

    # --- object indexes -------------------------------------------------------------------

    def _index(self, coll: str, id_: str, obj: Obj, add: bool) -> None:
        f = _add if add else _discard
        if coll == "ports":
            f(self._ports_by_net, obj["network_id"], id_)
            f(self._ports_by_host, obj.get("binding:host_id"), id_)
            for g in obj.get("security_groups") or ():
                f(self._ports_by_sg, g, id_)
            if is_router_iface(obj):
                f(self._ifaces_by_net, obj["network_id"], id_)
                f(self._ifaces_by_router, obj["device_id"], id_)
        elif coll == "subnets":
            f(self._subnets_by_net, obj["network_id"], id_)
        elif coll == "security_group_rules":
            f(self._rules_by_sg, obj["security_group_id"], id_)
        elif coll == "floatingips":
            f(self._fips_by_port, obj.get("port_id"), id_)
        elif coll == "routers":
            gw = gateway_network(obj)
            if add and gw:
                self._gw_routers[id_] = gw
            elif not add:
                self._gw_routers.pop(id_, None)
        elif coll == "networks":
            if add and obj.get("router:external"):
                self._ext_nets.add(id_)
            elif not add:
                self._ext_nets.discard(id_)

    def _store(self, coll: str, id_: str, obj: Obj | None) -> Obj | None:
        old = self.objects[coll].pop(id_, None)
        if coll in self._forms:
            self._forms[coll].pop(id_, None)
        if old is not None:
            self._index(coll, id_, old, False)
        if obj is not None:
            self.objects[coll][id_] = obj
            self._index(coll, id_, obj, True)
        return old

    # --- membership -----------------------------------------------------------------------

    def _gateway(self, host: str) -> bool:
        e = self.hosts.get(host)
        return bool(e and e["gateway"])

    def membership(self, host: str) -> tuple[dict[str, set[str]], set[str]]:
        """Member ids per view key of `host`, and its remote groups, from the indexes."""
        ports = self.objects["ports"]
        local = set(self._ports_by_host.get(host, ()))
        n0 = {ports[p]["network_id"] for p in local}
        r_ids: set[str] = set()
        for n in n0:
            r_ids |= {ports[q]["device_id"] for q in self._ifaces_by_net.get(n, ())}
        nets = set(n0)
        gateway = self._gateway(host)
        if gateway:
            r_ids |= set(self._gw_routers)
            nets |= self._ext_nets
            nets |= set(self._gw_routers.values())
        for r in r_ids:
            nets |= {ports[q]["network_id"] for q in self._ifaces_by_router.get(r, ())}
        subnets: set[str] = set()
        for n in nets:
            subnets |= self._subnets_by_net.get(n, set())
        sgs: set[str] = set()
        for p in local:
            sgs.update(ports[p].get("security_groups") or ())
        rules: set[str] = set()
        for g in sgs:
            rules |= self._rules_by_sg.get(g, set())
        all_rules = self.objects["security_group_rules"]
        remote = {rg for r in rules if (rg := all_rules[r].get("remote_group_id"))}
        port_ids = self._ports_of(local, nets, remote)
        if gateway:
            fips = set(self.objects["floatingips"])
        else:
            fips = set()
            for p in local:
                fips |= self._fips_by_port.get(p, set())
        host_names = {h for p in port_ids if (h := ports[p].get("binding:host_id"))}
        host_names.add(host)
        if host in self.hosts:   # registered: it also holds every gateway host's entry
            host_names |= {h for h, e in self.hosts.items() if e["gateway"]}
        return ({"networks": nets, "subnets": subnets, "ports": port_ids, "routers": r_ids,
                 "floatingips": fips, "security_groups": sgs, "security_group_rules": rules,
                 **{c: set(self.objects[c]) for c in BROADCAST}, "hosts": host_names}, remote)

    def _ports_of(self, local: Collection[str], nets: Collection[str], remote: Collection[str]) -> set[str]:
        """The port ids of a view with these local ports, networks and remote groups (its roots)."""
        port_ids = set(local)
        for n in nets:
            if (on := self._ports_by_net.get(n)) is not None:
                port_ids |= on
        for g in remote:
            if (in_group := self._ports_by_sg.get(g)) is not None:
                port_ids |= in_group
        return port_ids

    def _port_ids(self, host: str) -> set[str]:
        """The port ids of tracked `host`'s view, from its roots as held and the indexes now."""
        return self._ports_of(self._ports_by_host.get(host, ()), self.members[host]["networks"], self._remote[host])

    def _port_list(self, host: str) -> tuple[list[str], int]:
        """`_port_ids(host)` as a list, the ports bound to `host` first, and how many those are:
        the index's sets joined as they are, with no set of the view's ports made (the
        networks' port sets are disjoint; a bound port's network is in `_n0`, a group's port
        on one of the view's networks or bound here is listed already)."""
        local = self._ports_by_host.get(host, _NONE)
        nets, n0 = self.members[host]["networks"], self._n0[host]
        ids = list(local)
        for n in nets:
            if (on := self._ports_by_net.get(n)) is not None:
                ids += on - local if n in n0 else on   # (a set difference: C speed)
        if remote := self._remote[host]:
            ports, seen = self.objects["ports"], set()
            for g in remote:
                for i in self._ports_by_sg.get(g, ()):
                    if i not in seen and i not in local and ports[i]["network_id"] not in nets:
                        seen.add(i)
                        ids.append(i)
        return ids, len(local)

    def _ports_before(self, host: str, changed: tuple[str, str, Obj | None] | None) -> set[str]:
        """The port ids `host`'s view held before `changed` (its roots are not replaced yet; the
        indexes already hold the changed object, so a changed port is placed by its old value)."""
        ids = self._port_ids(host)
        if changed is not None and changed[0] == "ports":
            _, i, old = changed
            ids.discard(i)
            if old is not None and self._in_view(host, "ports", old):
                ids.add(i)
        return ids

    def _value(self, key: str, id_: str) -> Any:
        if key == "hosts":
            return self.hosts.get(id_)
        return self.objects[key].get(id_)

    def track(self, host: str) -> bool:
        """Start keeping `host`'s view current; False if it was tracked already."""
        if host in self.members:
            return False
        mem, remote = self.membership(host)
        self.members[host] = {k: set() for k in VIEW_KEYS}
        self._remote[host] = set()
        self._set_membership(host, mem, remote)
        return True

    def untrack(self, host: str) -> None:
        if host not in self.members:
            return
        self._set_membership(host, {k: set() for k in VIEW_KEYS}, set())
        del self.members[host]
        del self._remote[host]
        del self._host_refs[host]
        del self._n0[host]

    def _set_membership(self, host: str, mem: dict[str, set[str]], remote: set[str]) -> None:
        old = self.members[host]
        for k in VIEW_KEYS:
            if k == _Holders.DERIVED:
                continue
            for i in old[k] - mem[k]:
                self._holders.discard(k, i, host)
            for i in mem[k] - old[k]:
                self._holders.add(k, i, host)
        for g in self._remote[host] - remote:
            _discard(self._remote_watch, g, host)
        for g in remote - self._remote[host]:
            _add(self._remote_watch, g, host)
        ports = self.objects["ports"]
        self._host_refs[host] = collections.Counter(
            b for p in mem["ports"] if (b := ports[p].get("binding:host_id")))
        # The sets kept are copies: a set grown one id at a time (a comprehension, `add`) holds
        # up to twice the table a copy of it does (a host's 80 `hosts`: 8 KiB, copied 4 KiB).
        members = self.members[host] = {k: _PortMembers(self, host) if k == "ports" else set(ids)   # ports: derived
                                        for k, ids in mem.items()}
        # Most hosts' networks are those of their local ports (no router): one set for both
        # (neither is changed in place, only replaced here; 1,000 hosts of 20 networks: ~1.2 MiB).
        n0 = {ports[p]["network_id"] for p in self._ports_by_host.get(host, ())}
        self._n0[host] = members["networks"] if n0 == members["networks"] else set(n0)
        self._remote[host] = set(remote)

    def snapshot(self, host: str) -> View:
        """The current view of a tracked host."""
        view = empty_view()
        for k, ids in self.members[host].items():
            for i in ids:
                v = self._value(k, i)
                if v is not None:
                    view[k][i] = project(host, k, v)
        return view

    def snapshot_items(self, host: str) -> list[tuple[str, list[str], list[Any], int]]:
        """The current view of a tracked host as (view key, ids, objects, own) in VIEW_KEYS
        order, ports as held (not yet `project`ed: the projection is the caller's, for `host`),
        other kinds in their host form (one per object, shared by every snapshot);
        the ports bound to `host` come first, `own` of them (0 for other keys). Flat lists per
        key, not a pair per object: a cold start makes 1,000 of these at once, and 400,000
        small tuples kept until sent cost the garbage collector more than the rest."""
        out = []
        for k in VIEW_KEYS:
            objs: Mapping[str, Any] = self.hosts if k == "hosts" else self.objects[k]
            if k == "ports":
                ids, own = self._port_list(host)
            else:
                ids, own = list(self.members[host][k]), 0
            values = list(map(objs.get, ids))
            if None in values:   # a member id whose object does not exist (yet): not shown
                kept = [(n < own, i, v) for n, (i, v) in enumerate(zip(ids, values, strict=True)) if v is not None]
                own = sum(1 for m, _, _ in kept if m)
                ids, values = [i for _, i, _ in kept], [v for _, _, v in kept]
            if (forms := self._forms.get(k)) is not None:   # host forms, made once (C-speed lookups after)
                shown = list(map(forms.get, ids))
                if None in shown:
                    shown = [f if f is not None else self._form(k, i, v) for f, i, v in zip(shown, ids, values, strict=True)]
                values = shown
            out.append((k, ids, values, own))
        return out

    def _form(self, coll: str, id_: str, obj: Obj) -> Obj:
        """The host form of stored object `obj` (`host_form`), made once while it is stored."""
        forms = self._forms[coll]
        out = forms.get(id_)
        if out is None:
            out = forms[id_] = host_copy(coll, obj)
        return out

    def holders(self, key: str, id_: str) -> Collection[str]:
        """Tracked hosts whose view contains (or would show) `key`/`id_` (read-only)."""
        if key == _Holders.DERIVED:
            return self._port_holders(id_)
        return self._holders.get(key, id_)

    def _port_holders(self, id_: str) -> Collection[str]:
        """The hosts holding stored port `id_`, derived as `membership` adds ports: the hosts
        holding its network, its binding host, and the hosts watching one of its groups as a
        remote group. Exact whenever the memberships are (between changes, and for a change's
        object before it is stored or after a change that moves nothing)."""
        port = self.objects["ports"].get(id_)
        if port is None:
            return ()
        out = set(self._holders.get("networks", port["network_id"]))
        host = port.get("binding:host_id")
        if host and host in self.members:
            out.add(host)
        for g in port.get("security_groups") or ():
            watch = self._remote_watch.get(g)
            if watch:
                out |= watch
        return out

    # --- changes --------------------------------------------------------------------------

    def load(self, objects: Mapping[str, Mapping[str, Obj]], agents: Mapping[str, Obj]) -> None:
        """Replace every object (tracked hosts are recomputed with no messages)."""
        tracked = list(self.members)
        self.__init__()  # type: ignore[misc]
        for coll, objs in objects.items():
            for i, o in objs.items():
                self._store(coll, i, o)
        for index in self._object_indexes():
            for key, ids in index.items():
                index[key] = set(ids)   # sized to its ids (see `_set_membership`)
        for aid, rec in agents.items():
            self._agent_host[aid] = rec["host"]
            self.hosts[rec["host"]] = host_entry(rec)  # type: ignore[assignment]
        for h in tracked:
            self.track(h)

    def _object_indexes(self) -> tuple[dict[str, set[str]], ...]:
        return (self._ports_by_net, self._ports_by_host, self._ports_by_sg, self._ifaces_by_net,
                self._ifaces_by_router, self._subnets_by_net, self._rules_by_sg, self._fips_by_port)

    def apply(self, changes: Iterable[tuple[str, str, Obj | None]]) -> dict[str, Message]:
        """Apply changes (collection, id, new object or None for a delete) in order; the
        messages for each tracked host whose view changed. Collection "agents" takes agent
        records (id = agent id) and changes the `hosts` entries."""
        out: dict[str, Message] = {}
        for coll, id_, obj in changes:
            if coll == "agents":
                self._apply_agent(id_, obj, out)
            elif coll in self.objects:
                self._apply_object(coll, id_, obj, out)
        return {h: m for h, m in out.items() if m}

    def _apply_agent(self, agent_id: str, rec: Obj | None, out: dict[str, Message]) -> None:
        name = rec["host"] if rec is not None else self._agent_host.get(agent_id)
        if name is None:
            return
        old = self.hosts.get(name)
        new = host_entry(rec)
        if rec is None:
            self._agent_host.pop(agent_id, None)
            self.hosts.pop(name, None)
        else:
            self._agent_host[agent_id] = name
            self.hosts[name] = new  # type: ignore[assignment]
        if old == new:
            return
        if rec is not None and name not in self.members:
            self.track(name)  # a registered host is always tracked
        for h in self.holders("hosts", name):
            if new is not None:
                out.setdefault(h, Message()).set("hosts", name, new, old)
            else:
                out.setdefault(h, Message()).drop("hosts", name, old)
        if (old is not None and old["gateway"]) != (new is not None and new["gateway"]):
            # every host holds the gateway hosts' entries (and the host's own view changes)
            self._recompute(list(self.members), None, out)
        elif (old is None) != (new is None) and name in self.members:
            self._recompute([name], None, out)   # (un)registered: gateway entries come or go

    def _apply_object(self, coll: str, id_: str, obj: Obj | None, out: dict[str, Message]) -> None:
        old = self.objects[coll].get(id_)
        if old is None and obj is None:
            return
        if coll in BROADCAST:
            self._store(coll, id_, obj)
            for h, mem in self.members.items():
                self._show(h, out.setdefault(h, Message()), coll, id_, old, obj, id_ in mem[coll])
            return
        if coll in ("networks", "routers", "security_groups"):
            # Membership is by id: only a gateway host's membership depends on these objects
            # (external networks, routers with a gateway); every other holder sees a put/delete.
            recompute = set()
            if _touches_gateway(coll, old) or _touches_gateway(coll, obj):
                recompute = self._gateway_hosts()
            self._store(coll, id_, obj)
            self._recompute(recompute, (coll, id_, old), out)
            self._content(coll, id_, old, obj, [h for h in self.holders(coll, id_) if h not in recompute], out)
            return
        structural = old is None or obj is None or any(old.get(a) != obj.get(a) for a in _STRUCTURAL[coll])
        if not structural:
            self._store(coll, id_, obj)
            self._content(coll, id_, old, obj, self.holders(coll, id_), out)
            return
        if coll == "security_group_rules" or (coll == "ports" and any(o is not None and is_router_iface(o)
                                                                      for o in (old, obj))):
            # Rules and router interfaces shape other hosts' views (remote groups, routers and
            # the networks behind them): recompute every host they can affect.
            affected = set(self.holders(coll, id_))
            if old is not None:
                affected |= self._affected_by(coll, old)
            self._store(coll, id_, obj)
            if obj is not None:
                affected |= self._affected_by(coll, obj)
            self._recompute(affected, (coll, id_, old), out)
            return
        # Ports, subnets and floating IPs are leaves of every view except that a port is a
        # root of its own host's view (its network, groups and floating IPs come with it).
        roots: set[str] = set()
        leaves = set(self.holders(coll, id_))
        for o in (old, obj):
            if o is None:
                continue
            if coll == "ports":
                if o.get("binding:host_id") in self.members:
                    roots.add(o["binding:host_id"])
                    if o is obj and self._joins_cheaply(o["binding:host_id"], old, obj):
                        roots.discard(o["binding:host_id"])
                        leaves.add(o["binding:host_id"])
                leaves.update(self.holders("networks", o["network_id"]))
                for g in o.get("security_groups") or ():
                    leaves |= self._remote_watch.get(g, set())
            elif coll == "subnets":
                leaves.update(self.holders("networks", o["network_id"]))
        self._store(coll, id_, obj)
        if coll == "floatingips":
            leaves |= self._gateway_hosts()
            port = self.objects["ports"].get((obj or {}).get("port_id") or "")
            if port is not None and port.get("binding:host_id") in self.members:
                leaves.add(port["binding:host_id"])
        self._recompute(roots, (coll, id_, old), out)
        for h in leaves - roots:
            self._leaf(h, coll, id_, old, obj, out)

    def _joins_cheaply(self, h: str, old: Obj | None, new: Obj) -> bool:
        """Whether port `new` (bound to `h`) leaves `h`'s roots as they are: a VM port on a
        network `h` has local ports on already, in groups `h` uses already, with no floating
        IP, that was not bound to `h` before or was with the same network and groups. Then the
        port is just one more member, like a leaf (the common case of a VM booting)."""
        sgs = set(new.get("security_groups") or ())
        if old is not None and old.get("binding:host_id") == h:
            return old["network_id"] == new["network_id"] and set(old.get("security_groups") or ()) == sgs
        return (new["network_id"] in self._n0[h] and sgs <= self.members[h]["security_groups"]
                and not self._fips_by_port.get(new["id"]))

    def _leaf(self, h: str, coll: str, id_: str, old: Obj | None, obj: Obj | None, out: dict[str, Message]) -> None:
        """Move one port, subnet or floating IP in or out of `h`'s view (whose roots this change
        leaves alone), keeping the `hosts` entries of the view's ports."""
        mem = self.members[h]
        if coll == "ports":   # derived membership (`_PortMembers`): the index holds `obj` already
            was = old is not None and self._in_view(h, coll, old)
        else:
            was = id_ in mem[coll]
        now = obj is not None and self._in_view(h, coll, obj)
        if not was and not now:
            return
        msg = out.setdefault(h, Message())
        self._show(h, msg, coll, id_, old, obj if now else None, was)
        if coll != "ports":
            return
        before = old.get("binding:host_id") if was and old is not None else None
        after = obj.get("binding:host_id") if now and obj is not None else None
        if before == after:
            return
        refs = self._host_refs[h]
        if before:
            refs[before] -= 1
            if refs[before] <= 0:
                del refs[before]
                if before != h and not (self._gateway(before) and h in self.hosts):   # gateway: kept
                    mem["hosts"].discard(before)
                    self._holders.discard("hosts", before, h)
                    if (entry := self.hosts.get(before)) is not None:
                        msg.drop("hosts", before, entry)
        if after:
            refs[after] += 1
            if after not in mem["hosts"]:
                mem["hosts"].add(after)
                self._holders.add("hosts", after, h)
                if (entry := self.hosts.get(after)) is not None:
                    msg.set("hosts", after, entry, None)

    def _show(self, h: str, msg: Message, coll: str, id_: str, old: Obj | None, obj: Obj | None, was: bool) -> None:
        """Put `obj` in `h`'s view, or (None) take out `old`; `was`: the view held the id."""
        mem = self.members[h]
        if obj is not None:
            msg.set(coll, id_, project(h, coll, obj), project(h, coll, old) if was else None)
            if not was and coll != "ports":   # a port's membership and holders are derived
                mem[coll].add(id_)
                self._holders.add(coll, id_, h)
        else:
            msg.drop(coll, id_, project(h, coll, old))
            if coll != "ports":
                mem[coll].discard(id_)
                self._holders.discard(coll, id_, h)

    def _in_view(self, h: str, coll: str, o: Obj) -> bool:
        """Whether a leaf object belongs to `h`'s view, given `h`'s current roots."""
        if coll == "subnets":
            return o["network_id"] in self.members[h]["networks"]
        if coll == "floatingips":
            return self._gateway(h) or (o.get("port_id") or "") in self._ports_by_host.get(h, ())
        return (o.get("binding:host_id") == h or o["network_id"] in self.members[h]["networks"]
                or not self._remote[h].isdisjoint(o.get("security_groups") or ()))

    def _content(self, coll: str, id_: str, old: Obj | None, obj: Obj | None, hosts: Iterable[str],
                 out: dict[str, Message]) -> None:
        """A change that moves nothing: show the new value (or the deletion) to `hosts`."""
        for h in hosts:
            if obj is not None:
                out.setdefault(h, Message()).set(coll, id_, project(h, coll, obj), project(h, coll, old))
            elif old is not None:
                out.setdefault(h, Message()).drop(coll, id_, project(h, coll, old))

    def _gateway_hosts(self) -> set[str]:
        return {h for h, e in self.hosts.items() if e["gateway"] and h in self.members}

    def _affected_by(self, coll: str, o: Obj) -> set[str]:
        """Tracked hosts whose membership may depend on object `o` of `coll`."""
        hs: set[str] = set()
        if coll == "ports":
            if o.get("binding:host_id"):
                hs.add(o["binding:host_id"])
            hs.update(self.holders("networks", o["network_id"]))
            for g in o.get("security_groups") or ():
                hs |= self._remote_watch.get(g, set())
            if is_router_iface(o):  # gateway hosts hold every router with a gateway already
                hs.update(self.holders("routers", o["device_id"]))
        elif coll == "subnets":
            hs.update(self.holders("networks", o["network_id"]))
        elif coll == "security_group_rules":
            hs.update(self.holders("security_groups", o["security_group_id"]))
        elif coll == "floatingips":
            port = self.objects["ports"].get(o.get("port_id") or "")
            if port is not None and port.get("binding:host_id"):
                hs.add(port["binding:host_id"])
            hs |= self._gateway_hosts()
        return {h for h in hs if h in self.members}

    def _recompute(self, hosts: Iterable[str], changed: tuple[str, str, Obj | None] | None,
                   out: dict[str, Message]) -> None:
        """Recompute the membership of `hosts` and emit the difference. `changed` names the
        object this change touched and its value before (the world holds the value after)."""
        for h in hosts:
            if h not in self.members:
                continue
            before = {**self.members[h], "ports": self._ports_before(h, changed)}
            after, remote = self.membership(h)
            msg = out.setdefault(h, Message())
            for k in VIEW_KEYS:
                b, a = before[k], after[k]
                for i in a - b:
                    v = self._value(k, i)
                    if v is not None:
                        msg.set(k, i, project(h, k, v), None)
                for i in b - a:
                    prev = changed[2] if changed and changed[:2] == (k, i) else self._value(k, i)
                    if prev is not None:
                        msg.drop(k, i, project(h, k, prev))
            if changed is not None:
                k, i, old = changed
                if i in before[k] and i in after[k]:
                    v = self._value(k, i)
                    if v is not None:
                        msg.set(k, i, project(h, k, v), project(h, k, old))
                    elif old is not None:
                        msg.drop(k, i, project(h, k, old))
            self._set_membership(h, after, remote)


def _touches_gateway(coll: str, o: Obj | None) -> bool:
    if o is None:
        return False
    if coll == "routers":
        return gateway_network(o) is not None
    if coll == "networks":
        return bool(o.get("router:external"))
    return False
