"""View of one host -> its desired L2 state (bridges, VXLAN devices, plugs, FDB, neighbours).

Contract: `compute_l2(view, host, underlay_ip)` is a pure function of its arguments. The view is
the agent's typed copy of the server's per-host view (`vxnet.model.View`; a raw view is parsed
at the call).

Rules (KERNEL-NOTES §2-3):
- Every VXLAN network in the view gets a bridge (explicit MAC) and a VXLAN device (its VNI,
  local = this host's underlay IP, no learning, neigh_suppress on the VXLAN port), MTU = network MTU.
- A port bound to this host gets a plug (its tap on the network's bridge, network MTU) and a
  `master static` FDB entry for its MAC on that tap.
- A port bound to another host with a known underlay IP gets, on the VXLAN device, a `self`
  entry (MAC -> that host's VTEP) and a `master static` entry (so the bridge sends it to the
  VXLAN port, whose neigh_suppress then answers ARP for it).
- Every bound port (local or remote) gets a permanent neighbour entry per IPv4 fixed IP on the
  bridge (the suppression table). Unbound ports get nothing.
- IPv6 the same way (ND suppression: the bridge answers a neighbour solicitation for an address
  behind the VXLAN port itself, and never floods it there): an entry per IPv6 fixed IP, plus
  the port's link-local fe80::EUI-64(MAC) when it has an IPv6 fixed IP. The bridge keeps IPv6
  enabled without addresses for that table (links driver). An IPv6 allowed-address-pair VIP
  gets an entry too when `pair_vips6` names it with the MAC of the (on-network) port that holds
  it: a single address in the pairs of exactly one bound, enabled port, and no fixed IP.
- A trunk subport bound to this host whose parent is a local, enabled port carrying it in its
  `trunk_details` gets a VLAN plug instead of a tap plug: its device (`naming.subport_device`)
  is an 802.1Q device with the subport's VLAN id on the parent's tap (the agent creates it),
  on the subport network's bridge, MTU min(its network's, the parent's). Frames the VM tags
  with that VLAN id reach the subport's network untagged; the bridge's frames leave tagged.
  Without such a parent the subport is known (reported DOWN) but gets no plug.
- A port with `admin_state_up: false` is on no network: no plug (its device is detached, so it
  is reported DOWN), and no FDB/neighbour entries anywhere.
- br_netfilter per bridge (`Bridge.nf_call`): on when a port bound to this host on the network
  is filtered (`port_filtered`: port security on, not an infrastructure port), i.e. when its
  security groups need the inet hooks (conntrack, the group chains: compute/firewall.py);
  off otherwise, so a network whose local ports all have port security off (or hold only
  routers, DHCP, metadata) bridges its frames without br_netfilter's inet pass.
- Ports whose MAC is claimed twice in one network (a misconfiguration) are programmed for the
  lowest port id only, so the output never depends on dict order.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import ipaddress
from collections import Counter
from collections.abc import Mapping
from typing import Any, TypeVar

from vxnet.compute import naming
from vxnet.compute.nd_packet import link_local
from vxnet.compute.state import Bridge, Fdb, HostState, LocalPort, Neigh, Plug, Vxlan, merge
from vxnet.model import Host, Network, Port, View, as_view
from vxnet.model.resources import DEFAULT_MTU

__all__ = ["DEFAULT_MTU", "L2Cache", "compute_l2", "merge", "network_l2", "ports_by_network"]


# subport id -> (its parent's tap, VLAN id, the parent network's MTU)
Trunked = Mapping[str, tuple[str, int, int]]
_NO_TRUNK = ("", 0, 0)


E = TypeVar("E")
PortEntries = tuple[LocalPort | None, tuple[Plug, ...], tuple[Fdb, ...], tuple[Neigh, ...] | None]


def _port_entries(port: Port, vtep: str, host: str, underlay_ip: str, br: str, vx: str,
                  mtu: int, trunk: tuple[str, int, int] = _NO_TRUNK) -> PortEntries:
    """One port's entries: (its LocalPort, plugs, FDB entries, its neighbour entries, one per
    address, or None when its IPs get none). `trunk`: for a subport, where its VLAN device goes.
    Memoized: `_port_l2` (on its hashable, frozen inputs: a pass builds entries only for the
    ports that changed; one cache for all of a port's entries: with 10,000 ports in view, a
    cache per kind of entry cost ~3 MB of keys), or an `L2Cache`'s `PortMemo` per network."""
    if port.host == host:
        local = LocalPort(port.id, naming.port_device(port.id, port.is_subport), port.network_id, br, port.mac)
        if not port.admin_up:
            return local, (), (), None     # known, reported DOWN, but not on the network
        if port.is_subport:
            parent, vid, parent_mtu = trunk
            if not parent:
                return local, (), (), None     # its parent is not here (yet): DOWN
            plug = Plug(local.tap, br, min(mtu, parent_mtu), parent=parent, vid=vid)
            return local, (plug,), (Fdb(local.tap, port.mac),), _neighs(port, br)
        return local, (Plug(local.tap, br, mtu),), (Fdb(local.tap, port.mac),), _neighs(port, br)
    if not port.host or not port.admin_up or not vtep or vtep == underlay_ip:
        return None, (), (), None
    return None, (), (Fdb(vx, port.mac, vtep), Fdb(vx, port.mac)), _neighs(port, br)


_port_l2 = functools.lru_cache(maxsize=32768)(_port_entries)


class PortMemo:
    """One network's port entries by port id, for an `L2Cache` (instead of `_port_l2`'s cache):
    an entry is reused while its port is the same (or an equal) object and its VTEP, MTU and
    trunk are the same; a recompute keeps only the ports it was asked for (`done`). Per port a
    flat tuple and a dict slot, where the global cache held a key tuple of 8, a link and a
    result tuple: ~1.3 MB less with 10,000 ports in view."""

    def __init__(self) -> None:
        self._old: dict[str, tuple] = {}     # type: ignore[type-arg]
        self._new: dict[str, tuple] = {}     # type: ignore[type-arg]

    def entries(self, port: Port, vtep: str, host: str, underlay_ip: str, br: str, vx: str, mtu: int,
                trunk: tuple[str, int, int] = _NO_TRUNK) -> PortEntries:
        """`_port_entries` (same arguments; `host`, `underlay_ip` are the cache's, and `br`,
        `vx` follow from the port's network)."""
        hit = self._old.get(port.id)
        if hit is not None and (hit[0] is port or hit[0] == port) and hit[1] == vtep and hit[2] == mtu \
                and hit[3] == trunk:
            self._new[port.id] = hit
            return hit[4], hit[5], hit[6], hit[7]
        out = _port_entries(port, vtep, host, underlay_ip, br, vx, mtu, trunk)
        self._new[port.id] = (port, vtep, mtu, trunk, *out)
        return out

    def done(self) -> None:
        """The network's part is computed: forget the ports it did not ask for."""
        self._old, self._new = self._new, {}

    # Between two recomputes (after `done`), an `L2Cache` splice edits the held entries directly.
    def held(self, pid: str) -> PortEntries | None:
        """The entries held for port `pid`."""
        hit = self._old.get(pid)
        return None if hit is None else (hit[4], hit[5], hit[6], hit[7])

    def forget(self, pid: str) -> PortEntries:
        """The entries held for port `pid` (there must be some), no longer held."""
        hit = self._old.pop(pid)
        return hit[4], hit[5], hit[6], hit[7]

    def put(self, port: Port, hosts: Mapping[str, Host], host: str, underlay_ip: str, br: str, vx: str,
            mtu: int) -> PortEntries:
        """The entries of `port` (not a subport), computed and held."""
        remote = hosts.get(port.host) if port.host != host else None
        vtep = remote.underlay_ip if remote is not None else ""
        out = _port_entries(port, vtep, host, underlay_ip, br, vx, mtu)
        self._old[port.id] = (port, vtep, mtu, _NO_TRUNK, *out)
        return out


def port_filtered(p: Port) -> bool:
    """Port security applies to `p` (the firewall filters it): not a trusted infrastructure
    port (`network:*`), not switched off."""
    return not p.is_infra and p.port_security


def _neighs(port: Port, br: str) -> tuple[Neigh, ...]:
    """A bound port's suppression entries on bridge `br`, one per address (`_neigh_ips`)."""
    return tuple(Neigh(br, ip, port.mac) for ip in _neigh_ips(port))


def network_l2(net: Network, ports: list[Port], hosts: Mapping[str, Host], host: str,
               underlay_ip: str, trunked: Trunked | None = None, memo: PortMemo | None = None) -> HostState:
    """The part of the host state that belongs to one network (`ports` sorted by id); its ports'
    entries from `memo` (else from `_port_l2`'s cache)."""
    nid, mtu = net.id, net.mtu
    br, vx = naming.bridge_name(nid), naming.vxlan_name(nid)
    plugs: list[Plug] = []
    fdb: list[Fdb] = []
    neighs: list[Neigh] = []
    local: list[LocalPort] = []
    seen_mac: set[str] = set()
    seen_ip: set[str] = set()
    own_macs: set[str] = set()
    nf_call = False
    entries = _port_l2 if memo is None else memo.entries
    for port in ports:
        if port.host == host and not nf_call and port_filtered(port):
            nf_call = True
        mac = port.mac
        if not mac or mac in seen_mac:
            continue
        seen_mac.add(mac)
        remote = hosts.get(port.host) if port.host != host else None
        trunk = (trunked or {}).get(port.id, _NO_TRUNK) if port.is_subport else _NO_TRUNK
        lp, pl, fd, nbs = entries(port, remote.underlay_ip if remote is not None else "", host, underlay_ip,
                                   br, vx, mtu, trunk)
        if lp is not None:
            local.append(lp)
        plugs += pl
        fdb += fd
        if nbs is not None:
            for nb in nbs:
                if nb.ip not in seen_ip:
                    seen_ip.add(nb.ip)
                    neighs.append(nb)
            if port.allowed_address_pairs:
                own_macs.add(mac)
    if own_macs:
        # IPv6 pair VIPs with the port's own MAC (a pair MAC has no FDB entry: not across hosts)
        for ip, vmac in sorted(pair_vips6(ports).items()):
            if vmac in own_macs and ip not in seen_ip:
                seen_ip.add(ip)
                neighs.append(Neigh(br, ip, vmac))
    assert net.segmentation_id is not None
    return HostState(frozenset({Bridge(br, naming.bridge_mac(nid, host), mtu, nf_call=nf_call)}),
                     frozenset({Vxlan(vx, net.segmentation_id, underlay_ip, br, mtu, naming.VXLAN_PORT)}),
                     frozenset(plugs), frozenset(fdb), frozenset(neighs), frozenset(local))


def pair_vips6(ports: list[Port]) -> dict[str, str]:
    """IPv6 address -> MAC of the allowed-address-pair VIPs of these (one network's) ports that a
    static neighbour entry may name: a single address (no prefix, or /128) in the pairs of
    exactly one bound, enabled port (with the pair's MAC, else the port's), and no port's fixed
    IP. A VIP that two ports list (a VRRP pair moving it with unsolicited NAs) is left to
    neighbour discovery: a static entry would pin it to one of them (docs/ipv6-dataplane.md)."""
    fixed = {str(ipaddress.ip_address(f.ip_address)) for p in ports for f in p.fixed_ips if ":" in f.ip_address}
    claims: dict[str, set[str]] = {}
    for p in ports:
        if not p.host or not p.admin_up or not p.mac:
            continue
        for pair in p.allowed_address_pairs:
            try:
                net = ipaddress.ip_network(pair.ip_address, strict=True)
            except ValueError:
                continue
            if net.version == 6 and net.prefixlen == 128:
                claims.setdefault(str(net.network_address), set()).add((pair.mac_address or p.mac).lower())
    return {ip: next(iter(macs)) for ip, macs in claims.items() if len(macs) == 1 and ip not in fixed}


def _neigh_ips(port: Port) -> tuple[str, ...]:
    """The addresses a bound port gets suppression entries for (IPv6 canonical)."""
    out = [f.ip_address for f in port.ipv4]
    if port.ipv6:
        out += [str(ipaddress.IPv6Address(f.ip_address)) for f in port.ipv6]
        try:
            out.append(link_local(port.mac))
        except ValueError:        # not an Ethernet MAC: no EUI-64 link-local
            pass
    return tuple(out)


def ports_by_network(view: View) -> dict[str, list[Port]]:
    """The view's ports on networks of the view, by network, sorted by port id."""
    out: dict[str, list[Port]] = {}
    for pid in sorted(view.ports):
        port = view.ports[pid]
        if port.network_id in view.networks:
            out.setdefault(port.network_id, []).append(port)
    return out


def trunked_subports(view: View, host: str) -> dict[str, tuple[str, int, int]]:
    """Subports carried by this host's enabled trunk parents: subport id -> (the parent's tap,
    VLAN id, the parent network's MTU). A subport named by two parents (never made by the API)
    goes with the lowest parent id."""
    out: dict[str, tuple[str, int, int]] = {}
    for pid in sorted(view.ports):
        p = view.ports[pid]
        if not p.subports or p.host != host or not p.admin_up or p.is_subport:
            continue
        net = view.networks.get(p.network_id)
        if net is None or not net.is_vxlan:
            continue
        for sid, vid in p.subports:
            out.setdefault(sid, (naming.tap_name(pid), vid, net.mtu))
    return out


def _trunk_key(ports: list[Port], trunked: Trunked) -> tuple[tuple[str, tuple[str, int, int]], ...]:
    """The part of `trunked` a network's ports read (its memo key)."""
    return tuple((p.id, trunked[p.id]) for p in ports if p.is_subport and p.id in trunked)


def compute_l2(view: View | Mapping[str, Mapping[str, object]], host: str, underlay_ip: str) -> HostState:
    """Desired L2 state of `host` given its view; pure (the reference `L2Cache` must equal)."""
    v = as_view(view)
    grouped = ports_by_network(v)
    trunked = trunked_subports(v, host)
    return merge([network_l2(net, grouped.get(nid, []), v.hosts, host, underlay_ip, trunked)
                  for nid, net in v.networks.items() if net.is_vxlan])


def _same(a: Mapping[str, object], b: Mapping[str, object]) -> bool:
    """Two buckets holding the very same objects under the same keys."""
    return len(a) == len(b) and all(b.get(k) is x for k, x in a.items())


def _swap(s: frozenset[E], out: list[PortEntries], into: list[PortEntries], i: int) -> frozenset[E]:
    """`s` without the `i`-th entries of `out` and with those of `into` (the same set when equal)."""
    gone = frozenset(x for e in out for x in _kind(e, i))
    new = frozenset(x for e in into for x in _kind(e, i))
    return s if gone == new else s.difference(gone).union(new)


def _kind(e: PortEntries, i: int) -> tuple[Any, ...]:
    """The `i`-th part of a port's entries (0: its LocalPort) as a tuple."""
    x = e[i]
    if x is None:
        return ()
    return (x,) if i == 0 else x      # type: ignore[return-value]


def _add(c: Counter[str], key: str, n: int) -> None:
    """`c[key] += n`, the key gone at 0 (a deleted port's claims are not kept)."""
    if (x := c[key] + n) > 0:
        c[key] = x
    else:
        del c[key]


@dataclasses.dataclass(eq=False)
class _Claims:
    """What one network's ports claim, for `L2Cache`'s splice: a changed port's entries are its
    own (and only its own entries change) when its MAC, addresses and plug device are claimed
    by no other port of the network and no port there has allowed-address pairs."""

    macs: Counter[str]        # MAC -> ports with it
    ips: Counter[str]         # address -> neighbour entries of the MACs' ports (first by id) naming it
    taps: Counter[str]        # plug device -> plugs
    filtered: int             # ports bound here that the firewall filters (br_netfilter on)
    pairs: int                # ports with allowed-address pairs

    @classmethod
    def of(cls, ports: list[Port], memo: PortMemo, host: str) -> _Claims | None:
        """The claims of a network's ports (sorted by id) whose entries `memo` holds; None when
        it does not hold a port's."""
        c = cls(Counter(), Counter(), Counter(), 0, 0)
        for p in ports:
            c.count(p, 1, host)
            if p.mac and c.macs[p.mac] == 1:          # the port programmed for this MAC
                hit = memo.held(p.id)
                if hit is None:
                    return None
                c.count_entries(hit, 1)
        return c

    def count(self, p: Port, n: int, host: str) -> None:
        """Port `p` claims (n = 1) or no longer claims (n = -1) its MAC."""
        if p.mac:
            _add(self.macs, p.mac, n)
        self.filtered += n * (p.host == host and port_filtered(p))
        self.pairs += n * bool(p.allowed_address_pairs)

    def count_entries(self, e: PortEntries, n: int) -> None:
        """A port's entries `e` are (n = 1) or are no longer (n = -1) programmed."""
        for pl in e[1]:
            _add(self.taps, pl.tap, n)
        for nb in e[3] or ():
            _add(self.ips, nb.ip, n)

    def own(self, p: Port, e: PortEntries) -> bool:
        """Whether `p` (its entries `e`) alone claims its MAC, addresses and device."""
        return self.macs[p.mac] == 1 and all(self.taps[pl.tap] == 1 for pl in e[1]) \
            and all(self.ips[nb.ip] == 1 for nb in e[3] or ())


@dataclasses.dataclass(eq=False)
class _NetPart:
    """One network's part of an `L2Cache` and what it was made of."""

    net: Network
    hosts: Mapping[str, Host]
    trunk: tuple[tuple[str, tuple[str, int, int]], ...]     # `_trunk_key`
    ports: list[Port]             # the network's ports, sorted by id
    ids: list[str]                # their ids
    part: HostState
    memo: PortMemo
    claims: _Claims | None = None     # made at the first splice after a recompute


SPLICE_MAX = 16      # changed ports above which a pass regroups the whole view


class L2Cache:
    """`compute_l2` recomputing only what changed.

    A network's part is reused when its network object, its ports (same objects, same order)
    and the hosts table are the very same objects as last time. When only a few ports changed
    (found by identity against the last call's ports bucket; the networks and hosts the same,
    no trunk parent or subport among them), the part of each network they were or are on is
    the last one with those ports' entries taken out and put in (`_splice`: no walk over the
    network's other ports), unless a changed port shares its MAC, an address or its device with
    another port of the network, a port there has allowed-address pairs, or it is the first
    splice since the network was recomputed and its ports' entries are not all held: then that
    network is recomputed from its ports. Reusing the same entry objects also makes the
    reconciler's set comparisons cheap (identity first).
    Result always equals `compute_l2(view, host, underlay_ip)` (tested on random histories).
    """

    def __init__(self, host: str, underlay_ip: str) -> None:
        self.host = host
        self.underlay_ip = underlay_ip
        self._nets: dict[str, _NetPart] = {}       # the vxlan networks of the last call, in view order
        self._buckets: tuple[Mapping[str, Network], Mapping[str, Host], Mapping[str, Port]] | None = None
        self._parts: tuple[HostState, ...] = ()
        self._whole: tuple[int, HostState] | None = None     # `compute`'s merge, at `version`
        self.recomputed = 0       # networks recomputed (or spliced) by the last call
        self.spliced = 0          # of which spliced
        self.version = 0          # moves whenever `parts` returns other part objects than the call before

    @property
    def _ports(self) -> dict[str, PortMemo]:
        """Network id -> its ports' entries (tests)."""
        return {nid: r.memo for nid, r in self._nets.items()}

    def _recompute(self, net: Network, hosts: Mapping[str, Host], tk: tuple[tuple[str, tuple[str, int, int]], ...],
                   ports: list[Port], last: _NetPart | None) -> _NetPart:
        memo = last.memo if last is not None else PortMemo()
        part = network_l2(net, ports, hosts, self.host, self.underlay_ip, dict(tk), memo)
        memo.done()
        self.recomputed += 1
        if last is not None and last.part == part:
            part = last.part          # equal: the same object, so "unchanged" stays cheap downstream
        return _NetPart(net, hosts, tk, ports, [p.id for p in ports], part, memo)

    def _regroup(self, v: View) -> dict[str, _NetPart]:
        grouped = ports_by_network(v)
        trunked = trunked_subports(v, self.host)
        out: dict[str, _NetPart] = {}
        for nid, net in v.networks.items():
            if not net.is_vxlan:
                continue
            ports = grouped.get(nid, [])
            tk = _trunk_key(ports, trunked)
            r = self._nets.get(nid)
            if r is None or r.net is not net or r.hosts is not v.hosts or r.trunk != tk or len(r.ports) != len(ports) \
                    or not all(a is b for a, b in zip(r.ports, ports, strict=True)):
                r = self._recompute(net, v.hosts, tk, ports, r)
            out[nid] = r
        return out

    def _changes(self, v: View) -> dict[str, tuple[list[Port], list[Port]]] | None:
        """Network id -> (its ports that changed or went, their new versions) since the last
        call; None when that call's grouping does not carry over (see the class docstring)."""
        if self._buckets is None:
            return None
        nets, hosts, last = self._buckets
        if (v.networks is not nets and not _same(v.networks, nets)) or (v.hosts is not hosts and not _same(v.hosts, hosts)):
            return None
        ports = v.ports
        changed = [pid for pid, p in ports.items() if last.get(pid) is not p]
        if len(last) + sum(1 for pid in changed if pid not in last) > len(ports):     # some port went
            changed += [pid for pid in last if pid not in ports]
        if len(changed) > SPLICE_MAX:
            return None
        out: dict[str, tuple[list[Port], list[Port]]] = {}
        for pid in changed:
            for i, p in enumerate((last.get(pid), ports.get(pid))):
                if p is None:
                    continue
                if p.is_subport or p.subports:
                    return None       # the trunk table may change
                if p.network_id in self._nets:
                    out.setdefault(p.network_id, ([], []))[i].append(p)
        return out

    def _splice(self, r: _NetPart, olds: list[Port], news: list[Port]) -> bool:
        """`r` with ports `olds` taken out and `news` put in (see the class docstring); False
        (nothing changed) when `r` does not hold `olds` (never expected: the caller recomputes)."""
        at = [bisect.bisect_left(r.ids, o.id) for o in olds]
        if not all(i < len(r.ports) and r.ports[i] is o for i, o in zip(at, olds, strict=True)):
            return False
        c = r.claims if r.claims is not None else _Claims.of(r.ports, r.memo, self.host)   # before the change
        for o in olds:
            i = bisect.bisect_left(r.ids, o.id)
            del r.ids[i], r.ports[i]
        for n in news:
            i = bisect.bisect_left(r.ids, n.id)
            r.ids.insert(i, n.id)
            r.ports.insert(i, n)
        part = self._spliced(r, c, olds, news) if c is not None else None
        if part is None:
            r.claims = None
            r.part = self._recompute(r.net, r.hosts, r.trunk, r.ports, r).part
            return True
        self.recomputed += 1
        self.spliced += 1
        r.part, r.claims = part, c
        return True

    def _spliced(self, r: _NetPart, c: _Claims, olds: list[Port], news: list[Port]) -> HostState | None:
        """`r.part` with the entries of `olds` replaced by those of `news`, and `c` updated;
        None when a claim is shared (`c` is then left half-updated)."""
        if c.pairs or any(p.allowed_address_pairs for p in news):
            return None
        host, memo = self.host, r.memo
        out: list[PortEntries] = []
        for o in olds:
            if o.mac:
                e = memo.held(o.id)
                if e is None or not c.own(o, e):
                    return None
                out.append(e)
        for o in olds:
            c.count(o, -1, host)
            if o.mac:
                c.count_entries(memo.forget(o.id), -1)
        net = r.net
        br, vx = naming.bridge_name(net.id), naming.vxlan_name(net.id)
        into: list[tuple[Port, PortEntries]] = []
        for n in news:
            c.count(n, 1, host)
            if n.mac:
                e = memo.put(n, r.hosts, host, self.underlay_ip, br, vx, net.mtu)
                c.count_entries(e, 1)
                into.append((n, e))
        if not all(c.own(n, e) for n, e in into):
            return None
        ins = [e for _, e in into]
        last = r.part
        (bridge,) = last.bridges
        if bridge.nf_call != (c.filtered > 0):
            bridges = frozenset({dataclasses.replace(bridge, nf_call=c.filtered > 0)})
        else:
            bridges = last.bridges
        part = HostState(bridges, last.vxlans, _swap(last.plugs, out, ins, 1), _swap(last.fdb, out, ins, 2),
                         _swap(last.neighs, out, ins, 3), _swap(last.local_ports, out, ins, 0))
        same = all(getattr(part, k) is getattr(last, k) for k in ("bridges", "plugs", "fdb", "neighs", "local_ports"))
        return last if same else part

    def parts(self, view: View | Mapping[str, Mapping[str, object]]) -> tuple[HostState, ...]:
        """The per-network parts of `compute(view)`, not merged (`merge(parts) == compute(view)`):
        the host computer merges them once with the features' L2 parts, instead of keeping a
        merged copy here and a second one there (each ~1.5 MB of set tables at 10,000 ports)."""
        v = as_view(view)
        self.recomputed = self.spliced = 0
        changes = self._changes(v)
        if changes is not None and not all(self._splice(self._nets[nid], olds, news)
                                           for nid, (olds, news) in changes.items()):
            self._nets, changes = {}, None      # records not to be trusted: recompute every network
        if changes is None:
            self._nets = self._regroup(v)
        self._buckets = (v.networks, v.hosts, v.ports)
        found = tuple(r.part for r in self._nets.values())
        if len(found) != len(self._parts) or not all(a is b for a, b in zip(found, self._parts, strict=True)):
            self.version += 1
        self._parts = found
        return found

    def compute(self, view: View | Mapping[str, Mapping[str, object]]) -> HostState:
        found = self.parts(view)
        if self._whole is None or self._whole[0] != self.version:
            self._whole = (self.version, merge(found))
        return self._whole[1]
