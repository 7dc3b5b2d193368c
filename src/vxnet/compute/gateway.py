"""View of a gateway host -> its desired gateway state (pure): external bridges, one SNAT
namespace per router scheduled here, and the NAT rules of each (KERNEL-NOTES §5).

Contract: `compute_gateway(view, host, external_interface)` is a pure function of its
arguments and returns a `GatewayDesired`:
- `external_interface` (`parse_external_interfaces`): comma-separated `PHYSNET:IF` items (the
  interface of each physical network) and at most one bare `IF` (the legacy single form: the
  interface of physical network "external", or else of the first flat external network by id).
- `externals`: every `router:external` flat or VLAN network of the view gets a bridge (named like
  any network's bridge, explicit MAC). A flat network's bridge enslaves the interface of its
  physical network; a VLAN network's bridge enslaves a VLAN device (`vlan_dev`, VLAN id =
  `provider:segmentation_id`) on that interface. One flat network per physical network (the API
  enforces it), any number of VLANs. A network whose physical network has no interface here
  gets its bridge without one. Provider networks are ignored by the L2 compute, so the bridge
  is part of this feature's `.l2`.
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
  * NAT (`nat_ruleset`): each floating IP DNAT fip -> fixed (from any leg: hairpin) and SNAT
    fixed -> fip, then hairpin SNAT (a DNATed flow from inside back inside: to the sender's
    floating IP, else the gateway address), then (if enable_snat) SNAT of the router's
    interface subnets to the gateway address; MSS clamping of forwarded SYNs to the route MTU;
    TCP/UDP addressed to the namespace itself from its legs is dropped (nothing listens there:
    no RST for a flow whose entry is not there yet).
- A standby router is built the same way (addresses, routes, NAT: a takeover is a local flip)
  but its gateway leg has no Plug/FDB/LocalPort in `.l2` and its snat ports are not bound here,
  so no tap of it is on a bridge: it answers no ARP and forwards nothing. The view given is
  `compute.ha.failover_view`'s, so a standby whose active is down is computed as active.
- Connection-state sync: a router with a peer copy (its active, or its first standby, on
  another host) gets `sync_ip`/`sync_peer`, addresses in 2001:db8:fffe::/48 derived from
  (router, host): the driver gives the namespace a leg on the underlay (`hs-<router 11>`) and
  the feature runs conntrackd (FTFW) between the two copies (dataplane/ctsync.py).
- `fip_ids`: the floating IPs a router serves (the feature reports them ACTIVE once the
  router's namespace converged, DOWN while it fails).
- `bgp_routes(routers)`: what the host's BGP speaker announces for the routers it serves: each
  floating IP /32 and the interface subnets of a router with SNAT disabled that are in the
  external network's address scope (`routable_cidrs`), with the router's gateway address as
  next hop.
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
from collections.abc import Iterable, Mapping, Sequence
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
VLAN_PREFIX = "vxv-"            # + network id[:11]: a VLAN external network's device (15 chars)
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
    fip_ids: tuple[str, ...] = ()           # the floating IPs of `fips` (their status is reported)
    network_id: str = ""                    # its external network
    routable_cidrs: tuple[str, ...] = ()    # interface subnets in the external network's address scope

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
    interface: str | None     # the host's interface of the network's physical network
    vlan: int | None = None   # a VLAN network: its VLAN id on `interface`
    physical_network: str = ""

    @property
    def vlan_dev(self) -> str | None:
        """The VLAN device enslaved to the bridge (VLAN networks only)."""
        return f"{VLAN_PREFIX}{self.network_id[:naming.ID_CHARS]}" if self.vlan is not None else None

    @property
    def port(self) -> str | None:
        """What the bridge enslaves: the interface itself, or its VLAN device."""
        return None if self.interface is None else (self.vlan_dev or self.interface)


def parse_external_interfaces(spec: str | None) -> tuple[dict[str, str], str | None]:
    """`PHYSNET:IF,...[,IF]` -> ({physnet: interface}, the bare interface or None). ValueError
    on an empty item, a physical network given twice, an interface given twice or two bare ones."""
    mapping: dict[str, str] = {}
    bare: str | None = None
    seen: set[str] = set()
    for item in (spec or "").split(","):
        item = item.strip()
        if not item and spec:
            raise ValueError(f"empty item in external interfaces '{spec}'")
        if not item:
            continue
        phys, sep, ifname = item.rpartition(":")
        if not ifname or (sep and not phys):
            raise ValueError(f"bad external interface '{item}': expected PHYSNET:IF or IF")
        if ifname in seen:
            raise ValueError(f"interface {ifname} given twice (one interface carries one physical network)")
        seen.add(ifname)
        if not sep:
            if bare is not None:
                raise ValueError("at most one external interface without a physical network")
            bare = ifname
        elif phys in mapping:
            raise ValueError(f"physical network {phys} given twice")
        else:
            mapping[phys] = ifname
    return mapping, bare


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
    routable: set[str] = set()
    cidrs6: set[str] = set()
    for pid in sorted(v.ports):
        p = v.ports[pid]
        if p.device_id != rid:
            continue
        if p.device_owner in INTF_OWNERS:
            net = v.networks.get(p.network_id)
            same_scope = (net is not None and ext.ipv4_address_scope is not None
                          and net.ipv4_address_scope == ext.ipv4_address_scope)
            for f in p.fixed_ips:
                sub = v.subnets.get(f.subnet_id)
                if sub is not None and ipaddress.ip_network(sub.cidr).version == 4:
                    cidrs.add(sub.cidr)
                    if same_scope:
                        routable.add(sub.cidr)
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
    served = [f for f in v.floatingips.values()
              if f.router_id == rid and f.port_id and f.fixed_ip_address and f.floating_ip_address]
    fips = {FloatingNat(f.floating_ip_address, f.fixed_ip_address) for f in served}
    gateway6 = next((s.gateway_ip for _, s in gw6 if s.gateway_ip), None)
    peer = next((h for h in (gw_port.host, *gw_port.standby) if h and h != host), "")
    return GatewayRouter(rid, router_netns(rid, host), gw, gateway4, tuple(sorted(legs)),
                         tuple(sorted(cidrs)), rtr.enable_snat, tuple(sorted(fips)), tuple(sorted(set(routes))),
                         gateway6, tuple(sorted(cidrs6)), _neighs6(legs, v),
                         gw_port.host == host, sync_ip(rid, host) if peer else "", sync_ip(rid, peer) if peer else "",
                         fip_ids=tuple(sorted(f.id for f in served)), network_id=gw_port.network_id,
                         routable_cidrs=tuple(sorted(routable)))


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
    mapping, bare = parse_external_interfaces(external_interface)
    provider = sorted((nid for nid, n in v.networks.items() if n.external and n.network_type in ("flat", "vlan")),
                      key=lambda nid: (v.networks[nid].physical_network != "external", nid))
    # The bare (legacy) interface: physical network "external", else the first flat one's.
    if bare is not None and "external" not in mapping:
        first = next((v.networks[n].physical_network for n in provider if v.networks[n].network_type == "flat"), None)
        mapping[first if first and first not in mapping else "external"] = bare
    ext_list, untagged = [], set()
    for nid in provider:
        n = v.networks[nid]
        phys = n.physical_network or ""
        vlan = n.segmentation_id if n.network_type == "vlan" else None
        ifname = mapping.get(phys)
        if vlan is None and ifname is not None:
            if ifname in untagged:      # one flat network per interface (never two bridges for one port)
                ifname = None
            untagged.add(ifname)
        ext_list.append(ExternalBridge(nid, naming.bridge_name(nid), ifname, vlan, phys))
    externals = tuple(ext_list)
    bridges = {Bridge(naming.bridge_name(nid), naming.bridge_mac(nid, host), v.networks[nid].mtu) for nid in provider}
    out: list[GatewayRouter] = []
    plugs, fdb, local = set(), set(), set()
    for pid in sorted(v.ports):
        p = v.ports[pid]
        rtr = v.routers.get(p.device_id)
        if p.device_owner != GW_OWNER or not _here(p, host) or rtr is None or p.network_id not in provider:
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
    # DNAT from any side: from the outside (qg) and, for hairpin, from the router's own
    # subnets (sg- legs: a VM reaching a floating IP of its router, its own included).
    pre = [f'ip daddr {f.floating_ip} dnat to {f.fixed_ip}' for f in r.fips]
    post = [f'oifname "{qg}" ip saddr {f.fixed_ip} snat to {f.floating_ip}' for f in r.fips]
    # Hairpin: a DNATed flow that came from inside and goes back inside is SNATed too, or the
    # answer would go straight back from the fixed address and the sender drop it. Its source
    # becomes the sender's floating IP if it has one (what the outside would see), else the
    # router's gateway address (as Neutron's `ctstate DNAT` SNAT rule).
    hair = f'iifname != "{qg}" oifname != "{qg}" ct status dnat'
    post += [f'{hair} ip saddr {f.fixed_ip} snat to {f.floating_ip}' for f in r.fips]
    if r.fips and r.gw_ip4:
        post.append(f'{hair} snat to {r.gw_ip4}')
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


def bgp_routes(routers: Iterable[GatewayRouter]) -> dict[str, str]:
    """What a gateway host announces for the routers it serves: prefix -> next hop (the
    router's gateway address): each floating IP /32 and, for a router without SNAT, its
    interface subnets in the external network's address scope (`routable_cidrs`: as Neutron
    dynamic routing, only addresses the operator made routable there; a tenant's own subnet
    range is never announced, or a tenant could attract anyone's traffic). Not the gateway address /32
    itself: a route whose next hop is its own address is refused by BGP (FRR keeps it invalid),
    and the upstream router on the external segment reaches it as a connected address."""
    out: dict[str, str] = {}
    for r in routers:
        hop = r.gw_ip
        for f in r.fips:
            out[f"{f.floating_ip}/32"] = hop
        if not r.enable_snat:
            for cidr in r.routable_cidrs:
                out[cidr] = hop
    return out
