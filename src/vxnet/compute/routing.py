"""View of one host -> the distributed routers it must run (pure; issue #5, east-west part).

Contract: `compute_routing(view, ctx_host)` is a pure function of the view and the host name.
It returns the router namespaces the host needs (`RouterNs`, frozen, diffable) and the L2
entries those namespaces need on the host's bridges (`HostState`, merged into the L2 state so
the L2 reconciler owns every bridge-level entry).

Rules (KERNEL-NOTES §4, asymmetric IRB with an anycast gateway):
- A host runs router R when R is in its view, `admin_state_up` is not false, and R has an
  interface on a network where the host has a local port that is not an infrastructure port
  (device_owner `network:*`: router interfaces, SNAT ports, DHCP...): i.e. a VM.
- Every interface port of R (device_owner `network:router_interface`, device_id R) on a VXLAN
  network of the view becomes a veth: bridge side `vxpr<port id[:11]>` (a service port), router
  side `qr-<port id[:11]>` with the port's MAC and its IPv4 and IPv6 fixed IPs (prefix of their
  subnet), MTU = the network MTU. The same MAC and IPs on every host (anycast gateway; the
  IPv6 link-local address, derived from the MAC, is the same everywhere too).
- L2 part per interface: Plug(service port on the network's bridge), `master static` FDB entry
  for the gateway MAC on the service port, a permanent neighbour entry G -> gateway MAC on the
  bridge for each IPv4 gateway address (pitfall C: a VM's ARP for its gateway never floods; a
  VM's neighbour solicitation for an IPv6 gateway is answered by the local leg and never
  crosses the underlay: VXLAN devices have no flood entries by default). Pitfall A (gateway MAC learned
  from VXLAN frames of other hosts' routers) cannot happen: VXLAN devices have `nolearning` and
  their bridge port `learning off` (compute/l2.py, links_driver.py), checked by a root test.
- Routes inside the namespace: connected subnets come from the addresses (kernel); extra routes
  (`routes`: destination via nexthop, IPv4 or IPv6) go in the main table, on the interface whose
  subnet holds the nexthop (a route whose nexthop no interface reaches is left out).
- IPv6 neighbours (no neighbour discovery across the underlay): for every leg and every port of
  its network that is bound to a host and enabled (VMs, the SNAT port, other routers' ports;
  not the leg itself), a permanent neighbour entry per IPv6 fixed IP on one of the leg's IPv6
  subnets -> the port's MAC, on the leg (`NsNeigh`). So the router never solicits a VM's
  address, local or remote. Likewise an allowed-address-pair VIP that is a single IPv6 address
  held in the pairs of exactly one such port (`pair_vips6`: the pair's MAC, else the port's;
  as Neutron DVR's ARP entries for single-address pairs); a VIP two ports list is resolved by
  neighbour discovery (same host only).
- SNAT fallback (contract with the north-south part): for each interface subnet S on which R has
  a port with device_owner `network:router_centralized_snat` (device_id R) holding an IP on S:
  rule `from S lookup main suppress_prefixlength 0` (priority 1000), rule `from S lookup T_i`
  (priority 2000), and in table T_i `default via <snat IP> dev qr-...` (0.0.0.0/0 for an IPv4
  subnet, ::/0 for an IPv6 one: IPv6 north-south is routed through the same centralized port,
  without NAT, as Neutron DVR does). T_i is the interface's
  table: TABLE_BASE + the first 4 hex digits of its port id, probing upwards in port-id order on
  a collision, so it is stable while other interfaces come and go.
- No NAT, no stateful filtering here: each host's router sees only one direction of a flow.
- Address scopes (Neutron: a router does not route between subnets of different address
  scopes; only NAT crosses them): a leg's scope is its network's `ipv4_address_scope` (all
  IPv4 subnets of a network share one scope), no scope being a scope of its own. When a
  router's legs span more than one scope, `scope_groups` lists the leg names of each scope,
  and the namespace drops (stateless, per packet) what a leg of one group would forward out of
  a leg of another. IPv6 likewise, by the network's `ipv6_address_scope`, over the legs
  with an IPv6 address (`scope_groups6`). Packets leaving by the leg they came in on (the SNAT fallback) are never
  affected.
- Namespace name: `vxr-<router id[:11]>-<host>` (docs/routing.md): netns names are global to a
  mount namespace, and in the lab every host shares /run/netns, so the name carries the host;
  an agent only ever touches namespaces ending in its own host's suffix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from vxnet.compute import naming
from vxnet.compute.l2 import pair_vips6
from vxnet.compute.state import Fdb, HostState, Neigh, Plug, merge
from vxnet.model import Port, Router, View, as_view

NS_PREFIX = naming.ROUTER_NS_PREFIX
IFACE_PREFIX = naming.ROUTER_IFACE_PREFIX
SERVICE_KIND = naming.ROUTER_KIND
INTF_OWNERS = frozenset({"network:router_interface", "network:router_interface_distributed"})
SNAT_OWNER = "network:router_centralized_snat"
MAIN_TABLE = 254
TABLE_BASE = 1000
SUPPRESS_PRIORITY = 1000
SNAT_PRIORITY = 2000
_HOST_SAFE = re.compile(r"[A-Za-z0-9._-]{1,200}")


def netns_name(router_id: str, host: str) -> str:
    """The namespace of router `router_id` on `host`."""
    return f"{NS_PREFIX}{router_id[:naming.ID_CHARS]}-{host_suffix(host)}"


def host_suffix(host: str) -> str:
    """The host part of namespace names (the host name, or a digest if it is not file-name safe)."""
    if _HOST_SAFE.fullmatch(host):
        return host
    return "x" + hashlib.sha256(host.encode()).hexdigest()[:16]


def is_host_netns(name: str, host: str) -> bool:
    """True for a router namespace of `host` (and only of `host`)."""
    n = len(NS_PREFIX) + naming.ID_CHARS
    return name.startswith(NS_PREFIX) and len(name) > n + 1 and name[n] == "-" and name[n + 1:] == host_suffix(host)


def iface_name(port_id: str) -> str:
    """Router-side device of an interface port (inside the router namespace)."""
    return IFACE_PREFIX + port_id[:naming.ID_CHARS]


def service_port(port_id: str) -> str:
    """Bridge-side device of an interface port (in the host namespace)."""
    return naming.service_port_name(SERVICE_KIND, port_id)


def is_service_port(ifname: str) -> bool:
    return ifname.startswith(naming.SERVICE_PREFIX + SERVICE_KIND)


@dataclasses.dataclass(frozen=True, order=True)
class RouterIface:
    """One leg of a router namespace: a veth from the network's bridge into the namespace."""

    port_id: str
    name: str                       # qr-... inside the namespace
    service_port: str               # vxpr... on the bridge
    network_id: str
    bridge: str
    mac: str
    addresses: tuple[str, ...]      # "ip/prefixlen", sorted
    mtu: int


@dataclasses.dataclass(frozen=True, order=True)
class Route:
    """A route the agent owns in a router namespace (`dst` a CIDR, 0.0.0.0/0 for default)."""

    dst: str
    gateway: str
    dev: str
    table: int = MAIN_TABLE

    @property
    def key(self) -> tuple[str, int]:
        return (self.dst, self.table)


@dataclasses.dataclass(frozen=True, order=True)
class Rule:
    """A policy rule the agent owns: `from src lookup table [suppress_prefixlength N]`."""

    priority: int
    src: str
    table: int
    suppress_prefixlength: int | None = None

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.priority, self.src, self.table)


@dataclasses.dataclass(frozen=True, order=True)
class NsNeigh:
    """A permanent IPv6 neighbour entry the agent owns on a leg inside a router namespace."""

    dev: str
    ip: str
    mac: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.dev, self.ip)


@dataclasses.dataclass(frozen=True, order=True)
class RouterNs:
    """Everything one router namespace on this host must hold."""

    router_id: str
    netns: str
    ifaces: tuple[RouterIface, ...]     # sorted by port id
    routes: tuple[Route, ...]           # sorted
    rules: tuple[Rule, ...]             # sorted
    scope_groups: tuple[tuple[str, ...], ...] = ()  # leg names per address scope; () if one scope
    neighs: tuple[NsNeigh, ...] = ()    # IPv6 neighbours of the legs, sorted
    scope_groups6: tuple[tuple[str, ...], ...] = ()  # the same for IPv6 address scopes


@dataclasses.dataclass(frozen=True)
class RoutingState:
    routers: tuple[RouterNs, ...] = ()  # sorted by netns name
    l2: HostState = dataclasses.field(default_factory=HostState)


def _tables(port_ids: list[str]) -> dict[str, int]:
    """Deterministic, collision-free table numbers for a router's interfaces."""
    used: set[int] = set()
    out = {}
    for pid in sorted(port_ids):
        hexpart = re.sub(r"[^0-9a-f]", "", pid.lower())[:4] or "0"
        t = TABLE_BASE + int(hexpart, 16)
        while t in used or t in (253, 254, 255):
            t += 1
        used.add(t)
        out[pid] = t
    return out


def default_route(cidr: str) -> str:
    """The default destination of `cidr`'s address family."""
    return "::/0" if ":" in cidr else "0.0.0.0/0"


def _v6_neighs(legs: list[RouterIface], view: View) -> set[NsNeigh]:
    """Permanent IPv6 neighbours of every leg: the bound, enabled ports of its network, and the
    unambiguous single-address VIPs of their allowed address pairs (`pair_vips6`)."""
    out: set[NsNeigh] = set()
    own = {lg.port_id for lg in legs}
    for leg in legs:
        nets6 = [ipaddress.ip_interface(a).network for a in leg.addresses if ":" in a]
        if not nets6:
            continue
        on_net = [p for p in view.ports.values() if p.network_id == leg.network_id and p.id not in own]
        for p in on_net:
            if not p.host or not p.admin_up or not p.mac:
                continue
            for f in p.fixed_ips:
                if ":" not in f.ip_address:
                    continue
                try:
                    ip = ipaddress.ip_address(f.ip_address)
                except ValueError:
                    continue
                if any(ip in n for n in nets6):
                    out.add(NsNeigh(leg.name, str(ip), p.mac))
        for vip, mac in pair_vips6(on_net).items():
            if any(ipaddress.ip_address(vip) in n for n in nets6):
                out.add(NsNeigh(leg.name, vip, mac))
    return out


def _scope_groups(scope_of_leg: dict[str, str]) -> tuple[tuple[str, ...], ...]:
    """Leg names per address scope, sorted; () when the legs share one scope."""
    groups: dict[str, list[str]] = {}
    for name, scope in scope_of_leg.items():
        groups.setdefault(scope, []).append(name)
    return tuple(sorted(tuple(sorted(g)) for g in groups.values())) if len(groups) > 1 else ()


def _routers_needed(view: View, host: str) -> set[str]:
    """Routers with an interface on a network where this host has a VM."""
    vm_nets = {p.network_id for p in view.ports.values() if p.host == host and not p.is_infra}
    return {p.device_id for p in view.ports.values()
            if p.device_owner in INTF_OWNERS and p.device_id and p.network_id in vm_nets}


def _router(router: Router, ifaces: list[Port], snat: list[Port], view: View,
            host: str) -> tuple[RouterNs, HostState]:
    legs: list[RouterIface] = []
    scope_of_leg: dict[str, str] = {}   # leg name -> its network's IPv4 address scope ("" for none)
    scope6_of_leg: dict[str, str] = {}  # the same for IPv6
    cidr_of_leg: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, RouterIface, str]] = []
    for port in ifaces:
        net = view.networks.get(port.network_id)
        if net is None or not net.is_vxlan or not port.mac:
            continue
        addrs = []
        nets_here = []
        for f in port.fixed_ips:
            sub = view.subnets.get(f.subnet_id)
            if sub is None:
                continue
            try:
                cidr = ipaddress.ip_network(sub.cidr, strict=False)
                ip = ipaddress.ip_address(f.ip_address)
            except ValueError:
                continue
            if ip.version != cidr.version or ip not in cidr:
                continue
            addrs.append(f"{ip}/{cidr.prefixlen}")
            nets_here.append((cidr, f.subnet_id))
        if not addrs:
            continue
        leg = RouterIface(port.id, iface_name(port.id), service_port(port.id), port.network_id,
                          naming.bridge_name(port.network_id), port.mac, tuple(sorted(addrs)), net.mtu)
        legs.append(leg)
        if any(":" not in a for a in addrs):     # IPv4 address scopes: legs with an IPv4 address
            scope_of_leg[leg.name] = net.ipv4_address_scope or ""
        if any(":" in a for a in addrs):
            scope6_of_leg[leg.name] = net.ipv6_address_scope or ""
        cidr_of_leg.extend((c, leg, sid) for c, sid in nets_here)

    routes: set[Route] = set()
    for r in router.routes:
        try:
            dst = ipaddress.ip_network(r.destination, strict=False)
            hop = ipaddress.ip_address(r.nexthop)
        except ValueError:
            continue
        if dst.version != hop.version:
            continue
        leg = next((lg for c, lg, _ in cidr_of_leg if hop in c), None)
        if leg is not None:
            routes.add(Route(str(dst), str(hop), leg.name))

    rules: set[Rule] = set()
    tables = _tables([lg.port_id for lg in legs])
    snat_ip: dict[str, str] = {}
    for p in sorted(snat, key=lambda p: p.id):
        for f in p.fixed_ips:
            snat_ip.setdefault(f.subnet_id, f.ip_address)
    for cidr, leg, sid in cidr_of_leg:
        hop = snat_ip.get(sid)
        try:
            if hop is None or ipaddress.ip_address(hop) not in cidr:
                continue
        except ValueError:
            continue
        table = tables[leg.port_id]
        rules.add(Rule(SUPPRESS_PRIORITY, str(cidr), MAIN_TABLE, 0))
        rules.add(Rule(SNAT_PRIORITY, str(cidr), table))
        routes.add(Route(default_route(str(cidr)), str(ipaddress.ip_address(hop)), leg.name, table))

    ns = RouterNs(router.id, netns_name(router.id, host), tuple(sorted(legs)), tuple(sorted(routes)),
                  tuple(sorted(rules)), _scope_groups(scope_of_leg), tuple(sorted(_v6_neighs(legs, view))),
                  _scope_groups(scope6_of_leg))
    l2 = HostState(
        plugs=frozenset(Plug(lg.service_port, lg.bridge, lg.mtu) for lg in legs),
        fdb=frozenset(Fdb(lg.service_port, lg.mac) for lg in legs),
        neighs=frozenset(Neigh(lg.bridge, a.split("/")[0], lg.mac) for lg in legs for a in lg.addresses
                         if ":" not in a),
    )
    return ns, l2


def reads_port(port: Port, host: str) -> bool:
    """Whether `compute_routing(view, host)` may read `port`: this host's ports (which routers
    it runs), infrastructure ports (router interfaces, SNAT ports), and ports with an IPv6
    fixed IP or an allowed address pair (`_v6_neighs`, `pair_vips6`). Any other port (a VM of
    another host with IPv4 addresses only) joining, leaving or changing leaves the result as it was."""
    return (port.host == host or port.is_infra or bool(port.allowed_address_pairs)
            or any(":" in f.ip_address for f in port.fixed_ips))


def compute_routing(view: View | Mapping[str, Mapping[str, Any]], host: str) -> RoutingState:
    """The router namespaces `host` needs and their L2 entries (pure)."""
    v = as_view(view)
    needed = _routers_needed(v, host)
    ifaces: dict[str, list[Port]] = {}
    snat: dict[str, list[Port]] = {}
    for pid in sorted(v.ports):
        p = v.ports[pid]
        if p.device_id not in needed:
            continue
        if p.device_owner in INTF_OWNERS:
            ifaces.setdefault(p.device_id, []).append(p)
        elif p.device_owner == SNAT_OWNER:
            snat.setdefault(p.device_id, []).append(p)
    out: list[RouterNs] = []
    l2: list[HostState] = []
    for rid in sorted(needed):
        router = v.routers.get(rid)
        if router is None or not router.admin_up:
            continue
        ns, part = _router(router, ifaces.get(rid, []), snat.get(rid, []), v, host)
        if ns.ifaces:
            out.append(ns)
            l2.append(part)
    return RoutingState(tuple(sorted(out, key=lambda r: r.netns)), merge(l2))
