"""View of a gateway host -> its desired gateway state (pure): external bridges, one SNAT
namespace per router scheduled here, and the NAT rules of each (KERNEL-NOTES §5).

Contract: `compute_gateway(view, host, external_interface)` is a pure function of its
arguments and returns a `GatewayDesired`:
- `externals`: every `router:external` flat network of the view gets a bridge (named like any
  network's bridge, explicit MAC); the host's external interface is enslaved to ONE of them
  (physical network "external" first, then the lowest id; one interface = one physical network).
  Flat networks are ignored by the L2 compute, so the bridge is part of this feature's `.l2`.
- `routers`: a router whose gateway port (`network:router_gateway`) is bound to this host
  (`active`) or names it as a standby (`Port.standby`; `active` False) gets namespace
  `router_netns(router id, host)` with
  * the gateway leg: host side `tap<gw port 11>` plugged into the external bridge (Plug + FDB
    in `.l2`, and a LocalPort so its status is reported), inside `qg-<router 11>` with the
    port's MAC, its address, every floating IP as /32 (so the namespace answers ARP for them)
    and the default route via the external subnet's gateway_ip;
  * one snat leg per snat port (`network:router_centralized_snat`) bound here: host side
    `tap<snat port 11>` (a bound port on a VXLAN network: the L2 compute plugs it and reports
    it like a VM port), inside `sg-<snat port 11>` with the port's MAC and address, so every
    router subnet is connected;
  * the router's extra routes whose nexthop is on a connected subnet;
  * NAT (`nat_ruleset`): each floating IP DNAT fip -> fixed and SNAT fixed -> fip, then (if
    enable_snat) SNAT of the router's interface subnets to the gateway address; MSS clamping
    of forwarded SYNs to the route MTU; TCP/UDP addressed to the namespace itself from its
    legs is dropped (nothing listens there: no RST for a flow whose entry is not there yet).
- A standby router is built the same way (addresses, routes, NAT: a takeover is a local flip)
  but its gateway leg has no Plug/FDB/LocalPort in `.l2` and its snat ports are not bound here,
  so no tap of it is on a bridge: it answers no ARP and forwards nothing. The view given is
  `compute.ha.failover_view`'s, so a standby whose active is down is computed as active.
- Connection-state sync: a router with a peer copy (its active, or its first standby, on
  another host) gets `sync_ip`/`sync_peer`, addresses in 2001:db8:fffe::/48 derived from
  (router, host): the driver gives the namespace a leg on the underlay (`hs-<router 11>`) and
  the feature runs conntrackd (FTFW) between the two copies (dataplane/ctsync.py).
- IPv6 (routed, never NAT; floating IPs stay IPv4, as Neutron): the gateway leg also gets the
  gateway port's IPv6 fixed IPs (`Leg.more`) and `gateway_ip6` = the gateway of the external
  IPv6 subnet (default route ::/0); a snat port's IPv6 fixed IPs go on its leg (a port with only
  IPv6 has its first IPv6 address as `cidr`); `cidrs6` = the router's IPv6 interface subnets;
  `neighs6` = permanent IPv6 neighbours on each snat leg for the bound, enabled ports of its
  IPv6 subnets (no neighbour discovery across the underlay). `filter6_ruleset` isolates the
  router: the gateway leg forwards inwards only to `cidrs6` and outwards only from them (a
  tenant's prefix is reachable only through its own router; nothing transits the namespace
  from the external network back to it), and clamps the MSS of IPv6 SYNs like IPv4's.
- A router whose gateway port has only IPv6 addresses (an external network with only an IPv6
  subnet) gets its namespace all the same: the gateway leg's first address is its first IPv6
  fixed IP, `gateway_ip` is None (no IPv4 default route), no SNAT (`gw_ip4` is ""), and its
  IPv6 is routed as above. A router whose gateway port has no address on a known external
  subnet is skipped (nothing to build yet).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from vxnet.compute import naming
from vxnet.compute.l2 import pair_vips6
from vxnet.compute.state import Bridge, Fdb, HostState, LocalPort, Plug
from vxnet.model import Port, Router, Subnet, View, as_view

GW_OWNER = "network:router_gateway"
SNAT_OWNER = "network:router_centralized_snat"
INTF_OWNERS = ("network:router_interface", "network:router_interface_distributed")
NETNS_PREFIX = naming.SNAT_NS_PREFIX
NAT_TABLE = naming.NAT_TABLE[1]
FILTER6_TABLE = "vxnet_v6"

SYNC_IFACE_PREFIX = "hs-"
SYNC_PREFIX = "2001:db8:fffe:"      # + 80 bits of sha256(router, host): conntrack sync addresses
SYNC_PLEN = 48


def sync_ip(router_id: str, host: str) -> str:
    """The conntrack-sync address of a router's copy on a host (unique per pair, stable)."""
    h = hashlib.sha256(f"{router_id}/{host}".encode()).digest()
    groups = [int.from_bytes(h[i:i + 2], "big") for i in range(0, 10, 2)]
    return str(ipaddress.ip_address(SYNC_PREFIX + ":".join(f"{g:x}" for g in groups)))


def router_netns(router_id: str, host: str) -> str:
    """The SNAT namespace of a router on a host (host in the name: lab hosts share /run/netns)."""
    return f"{NETNS_PREFIX}{router_id[:naming.ID_CHARS]}-{host}"


def is_router_netns(name: str, host: str) -> bool:
    """A namespace this host's gateway feature made (and so may delete)."""
    return (name.startswith(NETNS_PREFIX) and name.endswith("-" + host)
            and len(name) == len(NETNS_PREFIX) + naming.ID_CHARS + 1 + len(host))


@dataclasses.dataclass(frozen=True, order=True)
class Leg:
    """A veth between the host (`tap`, a bridge port) and a gateway namespace (`inner`)."""

    port_id: str
    tap: str
    inner: str
    mac: str
    cidr: str          # address/prefix inside the namespace
    mtu: int
    more: tuple[str, ...] = ()   # further addresses/prefix (IPv6) inside the namespace

    @property
    def cidrs(self) -> tuple[str, ...]:
        return (self.cidr, *self.more)


@dataclasses.dataclass(frozen=True, order=True)
class FloatingNat:
    floating_ip: str
    fixed_ip: str


@dataclasses.dataclass(frozen=True, order=True)
class GatewayRouter:
    """Everything one router's SNAT namespace holds."""

    router_id: str
    netns: str
    gw: Leg
    gateway_ip: str | None
    snat_legs: tuple[Leg, ...]
    snat_cidrs: tuple[str, ...]
    enable_snat: bool
    fips: tuple[FloatingNat, ...]
    routes: tuple[tuple[str, str], ...]     # (destination, nexthop)
    gateway_ip6: str | None = None          # the external IPv6 subnet's gateway (default ::/0)
    cidrs6: tuple[str, ...] = ()            # the router's IPv6 interface subnets
    neighs6: tuple[tuple[str, str, str], ...] = ()   # (leg inside, IPv6 address, MAC)
    active: bool = True                     # False: a prepared standby (host-side taps down, unplugged)
    sync_ip: str = ""                       # conntrack sync leg: this copy's address ("" = no peer)
    sync_peer: str = ""                     # ... and the peer copy's (the active's or first standby's)

    @property
    def sync_dev(self) -> str:
        return SYNC_IFACE_PREFIX + self.router_id[:naming.ID_CHARS]

    @property
    def legs(self) -> tuple[Leg, ...]:
        return (self.gw, *self.snat_legs)

    @property
    def gw_ip(self) -> str:
        """The gateway leg's first address (IPv4, or IPv6 on an IPv6-only external network)."""
        return self.gw.cidr.split("/")[0]

    @property
    def gw_ip4(self) -> str:
        """The gateway leg's IPv4 address, "" on an IPv6-only external network."""
        return "" if ":" in self.gw_ip else self.gw_ip

    @property
    def port_ids(self) -> frozenset[str]:
        return frozenset(leg.port_id for leg in self.legs)


@dataclasses.dataclass(frozen=True, order=True)
class ExternalBridge:
    network_id: str
    bridge: str
    interface: str | None     # the host's external interface, enslaved to this bridge


@dataclasses.dataclass(frozen=True)
class GatewayDesired:
    """A gateway host's desired state (its `l2` part is merged into `HostDesired.l2`)."""

    l2: HostState = dataclasses.field(default_factory=HostState)
    host: str = ""
    externals: tuple[ExternalBridge, ...] = ()
    routers: tuple[GatewayRouter, ...] = ()


def _ipv4(port: Port, subnets: Mapping[str, Subnet]) -> tuple[str, Subnet] | None:
    """The port's first IPv4 address with its (known) subnet."""
    for f in port.ipv4:
        sub = subnets.get(f.subnet_id)
        if sub is not None:
            return str(ipaddress.ip_address(f.ip_address)), sub
    return None


def _ipv6(port: Port, subnets: Mapping[str, Subnet]) -> list[tuple[str, Subnet]]:
    """The port's IPv6 addresses (compressed) with their (known) subnets."""
    out = []
    for f in port.fixed_ips:
        sub = subnets.get(f.subnet_id)
        try:
            ip = ipaddress.ip_address(f.ip_address)
        except ValueError:
            continue
        if sub is not None and ip.version == 6 and ":" in sub.cidr:
            out.append((str(ip), sub))
    return out


def _leg(port: Port, inner: str, ip: str, sub: Subnet, mtu: int,
         v6: Sequence[tuple[str, Subnet]] = ()) -> Leg:
    prefix = ipaddress.ip_network(sub.cidr).prefixlen
    more = tuple(f"{a}/{ipaddress.ip_network(s.cidr).prefixlen}" for a, s in v6 if a != ip)
    return Leg(port.id, naming.tap_name(port.id), inner, port.mac, f"{ip}/{prefix}", mtu, more)


def _here(p: Port, host: str) -> bool:
    """The port is served (active) or prepared (standby) on `host`."""
    return p.host == host or host in p.standby


def _router(rtr: Router, gw_port: Port, v: View, host: str) -> GatewayRouter | None:
    rid = rtr.id
    found = _ipv4(gw_port, v.subnets)
    gw6 = _ipv6(gw_port, v.subnets)
    ext = v.networks.get(gw_port.network_id)
    if found is None and gw6:
        found = gw6[0]           # an IPv6-only external network: routed IPv6, no NAT
    if found is None or ext is None:
        return None
    gw_ip, ext_sub = found
    gateway4 = ext_sub.gateway_ip if ":" not in gw_ip else None
    gw = _leg(gw_port, naming.GATEWAY_IFACE_PREFIX + rid[:naming.ID_CHARS], gw_ip, ext_sub, ext.mtu, gw6)
    legs: list[Leg] = []
    cidrs: set[str] = set()
    cidrs6: set[str] = set()
    for pid in sorted(v.ports):
        p = v.ports[pid]
        if p.device_id != rid:
            continue
        if p.device_owner in INTF_OWNERS:
            for f in p.fixed_ips:
                sub = v.subnets.get(f.subnet_id)
                if sub is not None and ipaddress.ip_network(sub.cidr).version == 4:
                    cidrs.add(sub.cidr)
                elif sub is not None:
                    cidrs6.add(str(ipaddress.ip_network(sub.cidr)))
        elif p.device_owner == SNAT_OWNER and _here(p, host) and p.admin_up:
            got = _ipv4(p, v.subnets)
            v6 = _ipv6(p, v.subnets)
            got = got if got is not None else (v6[0] if v6 else None)
            net = v.networks.get(p.network_id)
            if got is not None and net is not None:
                legs.append(_leg(p, naming.SNAT_IFACE_PREFIX + pid[:naming.ID_CHARS], got[0], got[1], net.mtu, v6))
    connected = [ipaddress.ip_interface(c).network for leg in (gw, *legs) for c in leg.cidrs]
    routes = []
    for r in rtr.routes:
        try:
            hop = ipaddress.ip_address(r.nexthop)
            dest = ipaddress.ip_network(r.destination, strict=False)
        except ValueError:
            continue
        if hop.version == dest.version and any(hop in n for n in connected):
            routes.append((str(dest), str(hop)))
    fips = {FloatingNat(f.floating_ip_address, f.fixed_ip_address) for f in v.floatingips.values()
            if f.router_id == rid and f.port_id and f.fixed_ip_address and f.floating_ip_address}
    gateway6 = next((s.gateway_ip for _, s in gw6 if s.gateway_ip), None)
    peer = next((h for h in (gw_port.host, *gw_port.standby) if h and h != host), "")
    return GatewayRouter(rid, router_netns(rid, host), gw, gateway4, tuple(sorted(legs)),
                         tuple(sorted(cidrs)), rtr.enable_snat, tuple(sorted(fips)), tuple(sorted(set(routes))),
                         gateway6, tuple(sorted(cidrs6)), _neighs6(legs, v),
                         gw_port.host == host, sync_ip(rid, host) if peer else "", sync_ip(rid, peer) if peer else "")


def _neighs6(legs: list[Leg], v: View) -> tuple[tuple[str, str, str], ...]:
    """Permanent IPv6 neighbours of the snat legs: the bound, enabled ports of their subnets and
    their unambiguous single-address pair VIPs (`l2.pair_vips6`)."""
    out: set[tuple[str, str, str]] = set()
    own = {leg.port_id for leg in legs}
    for leg in legs:
        nets6 = [ipaddress.ip_interface(c).network for c in leg.cidrs if ":" in c]
        net_id = v.ports[leg.port_id].network_id if leg.port_id in v.ports else ""
        if not nets6 or not net_id:
            continue
        for p in v.ports.values():
            if p.network_id != net_id or p.id in own or not p.host or not p.admin_up or not p.mac:
                continue
            for ip, _ in _ipv6(p, v.subnets):
                if any(ipaddress.ip_address(ip) in n for n in nets6):
                    out.add((leg.inner, ip, p.mac))
        for vip, mac in pair_vips6([p for p in v.ports.values() if p.network_id == net_id and p.id not in own]).items():
            if any(ipaddress.ip_address(vip) in n for n in nets6):
                out.add((leg.inner, vip, mac))
    return tuple(sorted(out))


def compute_gateway(view: View | Mapping[str, Mapping[str, Any]], host: str,
                    external_interface: str | None) -> GatewayDesired:
    """Desired gateway state of `host` (see the module contract)."""
    v = as_view(view)
    flat = sorted((nid for nid, n in v.networks.items() if n.is_flat_external),
                  key=lambda nid: (v.networks[nid].physical_network != "external", nid))
    externals = tuple(ExternalBridge(nid, naming.bridge_name(nid), external_interface if i == 0 else None)
                      for i, nid in enumerate(flat))
    bridges = {Bridge(naming.bridge_name(nid), naming.bridge_mac(nid, host), v.networks[nid].mtu) for nid in flat}
    out: list[GatewayRouter] = []
    plugs, fdb, local = set(), set(), set()
    for pid in sorted(v.ports):
        p = v.ports[pid]
        rtr = v.routers.get(p.device_id)
        if p.device_owner != GW_OWNER or not _here(p, host) or rtr is None or p.network_id not in flat:
            continue
        r = _router(rtr, p, v, host)
        if r is None:
            continue
        out.append(r)
        if not r.active:
            continue                     # standby: its taps stay off the bridges
        br = naming.bridge_name(p.network_id)
        plugs.add(Plug(r.gw.tap, br, r.gw.mtu))
        fdb.add(Fdb(r.gw.tap, r.gw.mac))
        local.add(LocalPort(pid, r.gw.tap, p.network_id, br, r.gw.mac))
    l2 = HostState(bridges=frozenset(bridges), plugs=frozenset(plugs), fdb=frozenset(fdb), local_ports=frozenset(local))
    return GatewayDesired(l2=l2, host=host, externals=externals, routers=tuple(sorted(out)))


def nat_ruleset(r: GatewayRouter) -> str:
    """The router namespace's whole `table ip vxnet_nat`, for one `nft -f` transaction (the
    table is declared, deleted and rebuilt in the same transaction: atomic, nothing stale)."""
    qg = r.gw.inner
    legs = ", ".join(f'"{leg.inner}"' for leg in r.legs)
    pre = [f'iifname "{qg}" ip daddr {f.floating_ip} dnat to {f.fixed_ip}' for f in r.fips]
    post = [f'oifname "{qg}" ip saddr {f.fixed_ip} snat to {f.floating_ip}' for f in r.fips]
    if r.enable_snat and r.snat_cidrs and r.gw_ip4:
        post.append(f'oifname "{qg}" ip saddr {{ {", ".join(r.snat_cidrs)} }} snat to {r.gw_ip}')

    def chain(name: str, hook: str, rules: list[str]) -> str:
        body = "".join(f"\n    {x}" for x in rules)
        return f"  chain {name} {{\n    {hook}{body}\n  }}\n"

    return (f"table ip {NAT_TABLE} {{}}\ndelete table ip {NAT_TABLE}\ntable ip {NAT_TABLE} {{\n"
            + chain("pre", "type nat hook prerouting priority dstnat; policy accept;", pre)
            + chain("post", "type nat hook postrouting priority srcnat; policy accept;", post)
            # Why: the external MTU is larger than the tenant one (1500 vs 1450, KERNEL-NOTES §5).
            + chain("mss", "type filter hook forward priority mangle; policy accept;",
                    ["tcp flags syn tcp option maxseg size set rt mtu"])
            # Why: nothing listens in a gateway namespace. A packet of an established flow that
            # reaches a gateway without its conntrack entry (a takeover before the state synced,
            # a reply to the SNAT address) would be delivered locally and answered with a RST,
            # killing the flow; dropped, it is retransmitted once the entry exists.
            + chain("local", "type filter hook input priority filter; policy accept;",
                    [f"iifname {{ {legs} }} meta l4proto {{ tcp, udp }} drop"])
            + "}\n")


def filter6_ruleset(r: GatewayRouter) -> str:
    """The namespace's whole `table ip6 vxnet_v6` (one transaction, see the module contract):
    IPv6 crosses the gateway leg only to or from the router's own IPv6 subnets."""
    qg = r.gw.inner
    if r.cidrs6:
        own = ", ".join(r.cidrs6)
        rules = [f'iifname "{qg}" ip6 daddr != {{ {own} }} counter drop',
                 f'oifname "{qg}" ip6 saddr != {{ {own} }} counter drop']
    else:
        rules = [f'iifname "{qg}" counter drop', f'oifname "{qg}" counter drop']
    rules.append("tcp flags syn tcp option maxseg size set rt mtu")
    body = "".join(f"\n    {x}" for x in rules)
    return (f"table ip6 {FILTER6_TABLE} {{}}\ndelete table ip6 {FILTER6_TABLE}\ntable ip6 {FILTER6_TABLE} {{\n"
            f"  chain forward {{\n    type filter hook forward priority 0; policy accept;{body}\n  }}\n}}\n")
