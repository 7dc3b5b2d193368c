"""The firewall, incremental per changed port: `FirewallCache(host).compute(view)` (pure).

Contract:
- `compute(view)` returns exactly `compute_firewall(view, host)` (compute/firewall.py; checked on
  random histories by tests/unit/test_firewall_cache.py), doing per call the work of the ports
  that changed, not of every port in view (issue 18: a port-up's firewall stopped growing with
  the ports on the host).
- The first call, and a call in which a view bucket the firewall reads other than `ports`
  (networks, subnets, security groups, rules) is another object than the last call's,
  recompute everything (`compute_firewall`'s steps, keeping their per-port state).
- Otherwise the changed ports are those whose object is not the last call's (view updates replace
  only the objects they change: identity means unchanged). Per changed port: whether it is a
  filtered or an open local port; the remote-group member sets it was or is in; the DHCP lease
  predicate of its network on this host (`firewall.leased_in` over that network's ports here);
  its mark index; its `PortFilter` (and those of the ports whose index or lease changed).
- Exact fallbacks where one port's change can move others: a port coming whose own hash slot
  is taken (a collision), a port going while some index is not its port's own slot, or a tap
  name shared by two ports recompute every index (`tap_indexes`), and the filters of the ports
  whose index changed (a port coming at its free own slot moves no other: `_index_change`);
  an address leaving a remote group, or a prefix in one, recomputes that
  group's members over the view (`group_members`: another port may hold the same address).
- The result's rendering (`Firewall.tables`) is made from the last result's when that one was
  rendered and only a few stateful ports changed (`firewall.render_update`: their chains and
  map entries taken out and put in); a result equal to the last is the last object itself.
- Per-pass cost left over the whole view: finding the changed ports (one identity comparison
  per port of the bucket), sorting the local ports' ids and building the result's tuples and
  sets (C loops).
- Holds the previous `ports` bucket (the host computer's memo holds it anyway), per local port
  its filter, and per network the ports on this host: nothing per remote port.
"""

from __future__ import annotations

import socket
import zlib
from collections import Counter
from collections.abc import Mapping

from vxnet.compute import naming
from vxnet.compute.firewall import (
    Firewall,
    group_rules_of,
    leased_in,
    local_ports,
    overlay_vnis,
    remote_groups,
    render_update,
    rules_of,
    subnets_by_network,
    tap_indexes,
    zones_of,
)
from vxnet.compute.firewall_model import MAX_INDEX, GroupRules, PortFilter, SgRule, group_members, port_filter
from vxnet.model import Port, Subnet, View

INPUTS = ("networks", "subnets", "security_groups", "security_group_rules")   # beside `ports`: a change = full
_FAMILIES = (("IPv4", socket.AF_INET), ("IPv6", socket.AF_INET6))


def _slot(pid: str) -> int:
    """A port's own mark index slot (`firewall.mark_indexes` before any probing)."""
    return 1 + zlib.crc32(pid.encode()) % MAX_INDEX


def _tap(pid: str, p: Port) -> str:
    return naming.port_device(pid, p.is_subport)


class FirewallCache:
    """`compute_firewall(view, host)`, incremental per changed port (see the module contract)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.full = 0                 # full recomputes (tests, observability)
        self.changed = 0              # ports the last call found changed
        self.refiltered = 0           # filters the last call computed (`port_filter`)
        self._key: tuple[object, ...] | None = None
        self._last: Firewall | None = None           # the last result (its rendering: `render_update`)
        self._ports: Mapping[str, Port] = {}
        self._vnis: dict[str, int] = {}
        self._zones: tuple[tuple[str, int], ...] = ()
        self._rules: dict[str, list[SgRule]] = {}
        self._ignored: tuple[str, ...] = ()
        self._subnets: dict[str, list[Subnet]] = {}
        self._local: dict[str, Port] = {}            # filtered local ports
        self._open: set[str] = set()                 # other local ports
        self._here: dict[str, dict[str, Port]] = {}  # network -> its ports on this host (the lease predicate's input)
        self._leased: dict[str, dict[str, str]] = {}  # network -> leased port id -> responder MAC
        self._index: dict[str, int] = {}
        self._taps: dict[str, str] = {}              # tap -> port id, of the indexed ports
        self._used: set[int] = set()
        self._natural = True                         # every index is its port's own slot
        self._complete = True                        # every filtered local port has an index
        self._filters: dict[str, PortFilter] = {}
        self._group_use: Counter[str] = Counter()
        self._group_rules: tuple[GroupRules, ...] = ()
        self._members: dict[str, dict[str, frozenset[str]]] = {"IPv4": {}, "IPv6": {}}
        self._prefixed: set[tuple[str, str]] = set()  # (ethertype, group) whose members hold a prefix

    # ------------------------------------------------------------------ full
    def _recompute(self, v: View) -> None:
        self.full += 1
        self._vnis = overlay_vnis(v)
        self._zones = zones_of(self._vnis)
        self._rules, self._ignored = rules_of(v)
        self._local, self._open = local_ports(self.host, self._vnis, v.ports.items())
        self._here = {}
        for pid in sorted(v.ports):
            p = v.ports[pid]
            if p.host == self.host:
                self._here.setdefault(p.network_id, {})[pid] = p
        nets = {p.network_id for p in self._local.values()}
        self._subnets = subnets_by_network(v, set(self._vnis))
        self._leased = {nid: leased_in(v, self.host, nid, self._subnets.get(nid, ()), self._here[nid].values())
                        for nid in nets}
        self._reindex()
        previous, self._filters = self._filters, {}
        self._group_use = Counter()
        for pid in self._index:
            self._refilter(v, pid, previous.get(pid))     # an equal filter stays the same object
        self._group_rules = group_rules_of(self._used_groups(), self._rules)
        self._members = {"IPv4": {}, "IPv6": {}}
        self._prefixed = set()
        for eth, fam in _FAMILIES:
            for g in remote_groups(self._group_rules, eth):
                self._set_members(eth, g, group_members(v.ports.values(), g, fam))

    def _reindex(self) -> None:
        self._index = tap_indexes(self._local)
        self._taps = {_tap(pid, self._local[pid]): pid for pid in self._index}
        self._used = set(self._index.values())
        self._natural = all(i == _slot(pid) for pid, i in self._index.items())
        self._complete = len(self._index) == len(self._local)

    def _refilter(self, v: View, pid: str, previous: PortFilter | None = None) -> None:
        """The filter of indexed port `pid` from its current port, index and lease (`previous`,
        or the one it has, kept when equal)."""
        old = self._filters.get(pid)
        p = self._local[pid]
        self.refiltered += 1
        f = port_filter(p, self._index[pid], v.security_groups, self._leased.get(p.network_id, {}).get(pid, ""))
        if previous is not None and previous == f:
            f = previous
        if old is not None and old == f:
            return
        if old is not None:
            self._group_use.subtract(old.groups)
        self._group_use.update(f.groups)
        self._filters[pid] = f

    def _used_groups(self) -> set[str]:
        return {g for g, n in self._group_use.items() if n > 0}

    def _drop_filter(self, pid: str) -> None:
        old = self._filters.pop(pid, None)
        if old is not None:
            self._group_use.subtract(old.groups)

    def _set_members(self, eth: str, g: str, members: frozenset[str]) -> None:
        self._members[eth][g] = members
        if any("/" in m for m in members):
            self._prefixed.add((eth, g))
        else:
            self._prefixed.discard((eth, g))

    # ------------------------------------------------------------------ per port
    def _members_change(self, v: View, old: Port | None, new: Port | None) -> None:
        """The remote-group member sets after one port changed from `old` to `new`."""
        for eth, fam in _FAMILIES:
            for g, cur in list(self._members[eth].items()):
                before = group_members((old,), g, fam) if old is not None else frozenset()
                after = group_members((new,), g, fam) if new is not None else frozenset()
                if before == after:
                    continue
                if before <= after and (eth, g) not in self._prefixed and not any("/" in a for a in after):
                    self._members[eth][g] = cur | after      # only plain addresses came: exact
                else:       # an address left (another port may hold it too) or a prefix: the whole group
                    self._set_members(eth, g, group_members(v.ports.values(), g, fam))

    def _port_change(self, v: View, pid: str, old: Port | None, new: Port | None,
                     touched: set[str], moved: dict[str, tuple[Port | None, Port | None]]) -> None:
        self._members_change(v, old, new)
        for p in (old, new):
            if p is not None and p.host == self.host:
                touched.add(p.network_id)
        if old is not None and old.host == self.host:
            here = self._here.get(old.network_id, {})
            here.pop(pid, None)
            if not here:
                self._here.pop(old.network_id, None)
        if new is not None and new.host == self.host:
            self._here.setdefault(new.network_id, {})[pid] = new
        was = self._local.pop(pid, None)
        self._open.discard(pid)
        local, open_ = local_ports(self.host, self._vnis, ((pid, new),) if new is not None else ())
        self._local.update(local)
        self._open |= open_
        if was is not None or local:
            moved[pid] = (was, local.get(pid))

    def _index_change(self, moved: Mapping[str, tuple[Port | None, Port | None]]) -> set[str]:
        """The mark indexes after the filtered local ports `moved` (id -> (before, after));
        returns the ids whose index is new or changed.

        A port that comes whose own slot is free takes it and moves no other port's index, even
        when some ports probed past collisions: a probe passes only slots taken at its turn, so
        none passed a slot that is free (`mark_indexes` with the port gives the same indexes).
        A port that goes frees its slot, which a probe may have passed: only while every index
        is its port's own slot (`_natural`) is that known to move nothing."""
        added: set[str] = set()
        fast = self._complete
        before = dict(self._index)
        for pid, (was, now) in sorted(moved.items()):
            if not fast:
                break
            if was is not None and pid in self._index and (now is None or _tap(pid, was) != _tap(pid, now)):
                if not self._natural:
                    fast = False
                    break
                self._taps.pop(_tap(pid, was), None)
                self._used.discard(self._index.pop(pid))
            if now is not None and pid not in self._index:
                tap, slot = _tap(pid, now), _slot(pid)
                if tap in self._taps or slot in self._used or len(self._used) >= MAX_INDEX - 1:
                    fast = False
                    break
                self._index[pid], self._taps[tap] = slot, pid
                self._used.add(slot)
                added.add(pid)
        if fast:
            return added
        # A collision, a shared tap name, the capacity, or a slot freed past which a port may
        # have probed: every index again; the filters of the ports whose index is the same as
        # before stay (a pass after the first collision on a host would otherwise recompute
        # every local port's filter).
        self._reindex()
        return {pid for pid, i in self._index.items() if before.get(pid) != i}

    # ------------------------------------------------------------------ the pass
    def compute(self, v: View) -> Firewall:
        """`compute_firewall(v, self.host)`."""
        try:
            return self._compute(v)
        except BaseException:
            self._key = None        # half-updated state: the next call recomputes everything
            raise

    def _compute(self, v: View) -> Firewall:
        key = tuple(v.bucket(k) for k in INPUTS)
        ports = v.ports
        self.refiltered = 0
        if self._key is None or any(a is not b for a, b in zip(self._key, key, strict=True)):
            self._recompute(v)
            self.changed = len(ports)
        elif ports is not self._ports:
            old = self._ports
            changed = [pid for pid, p in ports.items() if old.get(pid) is not p]
            if len(old) + sum(1 for pid in changed if pid not in old) > len(ports):     # some port went
                changed += [pid for pid in old if pid not in ports]
            self.changed = len(changed)
            touched: set[str] = set()
            moved: dict[str, tuple[Port | None, Port | None]] = {}
            for pid in changed:
                self._port_change(v, pid, old.get(pid), ports.get(pid), touched, moved)
            refresh = self._index_change(moved)
            refresh |= {pid for pid in moved if pid in self._index}
            for nid in touched:
                before = self._leased.pop(nid, {})
                if nid in self._vnis and nid in self._here:
                    after = self._leased[nid] = leased_in(v, self.host, nid, self._subnets.get(nid, ()),
                                                          (self._here[nid][k] for k in sorted(self._here[nid])))
                    if not after:
                        del self._leased[nid]
                else:
                    after = {}
                refresh |= {pid for pid in before.keys() | after.keys() if before.get(pid) != after.get(pid)}
            for pid in self._filters.keys() - self._index.keys():      # ports that lost their index
                self._drop_filter(pid)
            for pid in refresh:
                if pid in self._index:
                    self._refilter(v, pid)
            used = self._used_groups()
            if used != {g.group_id for g in self._group_rules}:
                self._group_rules = group_rules_of(used, self._rules)
                for eth, fam in _FAMILIES:
                    want = remote_groups(self._group_rules, eth)
                    for g in set(self._members[eth]) - want:
                        del self._members[eth][g]
                        self._prefixed.discard((eth, g))
                    for g in want - set(self._members[eth]):
                        self._set_members(eth, g, group_members(ports.values(), g, fam))
        self._key, self._ports = key, ports
        return self._firewall()

    def _firewall(self) -> Firewall:
        filters = tuple(self._filters[pid] for pid in sorted(self._index))
        m4, m6 = self._members["IPv4"], self._members["IPv6"]
        fw = Firewall(filters, frozenset(self._open), self._group_rules, {g: m4[g] for g in sorted(m4)},
                      self._zones, self._ignored, tuple(sorted(set(self._local) - set(self._index))),
                      {g: m6[g] for g in sorted(m6)})
        last = self._last
        if last is not None and fw == last:
            return last           # the same object: its rendering is kept, "unchanged" is cheap downstream
        if last is not None and (tables := render_update(last, fw)) is not None:
            fw.__dict__["tables"] = tables     # `Firewall.tables` (a cached property), from the last one's
        self._last = fw
        return fw

