"""View of one host -> its desired DHCP state; and what a responder answers (pure).

Contract: `compute_dhcp(view, host, lease_time)` is a pure function of its arguments; `answer`
is a pure function of one received request and the lease the responder holds for its MAC.

Desired state (docs/dhcp.md):
- A responder per VXLAN network on which this host has at least one *leased* port: a port bound
  here, `admin_state_up` not false, not an infrastructure port (device_owner `network:*`), with
  an IPv4 fixed IP on a subnet of the view with `enable_dhcp` true (its first such IP is leased);
  or at least one port served over IPv6 (router advertisements, DHCPv6: `compute.dhcp6`,
  `Responder.v6`, docs/ipv6-dataplane.md), which the same responder carries.
- The responder is a veth pair: bridge side `service_port_name("d", network id)` (a service
  port: the L2 part plugs it and gives the responder MAC a `master static` FDB entry), host
  side `vxdr<11 id chars>`: in the host namespace, up, no IP, NOARP, IPv6 off, with the
  kernel's random MAC, *not* the responder MAC: the host's IP stack classifies every frame sent
  to the responder as PACKET_OTHERHOST and drops it (never forwarded, never answered), and the
  device never answers ARP for the host's own addresses; the responder reads the frames with
  an AF_PACKET socket and sends with the responder MAC as source.
- Responder MAC (`responder_mac`): derived from the network id, locally administered, the same
  on every host, so a client's RENEW goes to the same MAC wherever its VM runs.
- Server id of a lease: its subnet's gateway_ip when set; otherwise the highest host address of
  the subnet that no port of the network holds (deterministic on every host: the view holds all
  ports of the network). When no port holds the server id, the L2 part adds a permanent
  neighbour entry server id -> responder MAC (so the ARP never floods to the VXLAN port) and the
  responder answers the ARP itself (a neighbour entry alone makes the bridge answer only for
  MACs behind neigh_suppress ports, and the service port is plugged like a tap). When a port
  holds it (a router interface on the gateway IP: the routing feature pins it to the router's
  MAC), nothing is added: the client's unicast RENEW goes to the router's MAC and is steered.
- Steering (table `bridge vxnet_dhcp`, `nft_script`): every `udp sport 68 dport 67` frame that
  enters the bridge from a leased port's tap gets its destination MAC rewritten to its network's
  responder MAC at bridge prerouting, so broadcast or unicast, every client->server frame goes
  only to the local responder: never to the VXLAN port (underlay), never to other local VMs.
  Which ports are leased is one predicate, `leased`: the firewall uses it too, to accept a
  leased port's client->server frames to the responder MAC whatever their source address (a
  RENEW from an address the port no longer holds), which steering confines to the responder.
- Lease content (`Lease`): fixed IP, mask, broadcast, router (option 3: the subnet's gateway, or
  the nexthop of a 0.0.0.0/0 host route), DNS servers (6), hostname (12: the port's dns_name,
  else `host-a-b-c-d` as Neutron), MTU (26: the network MTU), lease time (51) with T1 = 1/2 and
  T2 = 7/8 of it, server id (54), classless routes (121: host routes, the other IPv4 subnets of
  the network on-link, 169.254.169.254/32 via the server id when no router interface is on
  the subnet (the metadata service, `compute.metadata.needs_metadata_route`), and the default
  route as RFC 3442 requires, sent whenever there is a non-default route).

Answers (`answer`, RFC 2131): unknown MACs, relayed requests and requests whose Ethernet source
is not their chaddr get silence. DISCOVER -> OFFER. REQUEST: SELECTING (server id present: ours
-> ACK/NAK on the requested IP, another -> silence), INIT-REBOOT (requested IP, no server id) and
RENEWING/REBINDING (ciaddr) -> ACK when the address is the lease's, NAK otherwise (so an IP
change reaches a client at its next renewal: NAK, then a fresh DISCOVER). INFORM -> ACK without
lease time. RELEASE/DECLINE -> no answer (leases are static). Replies go to the client's MAC
always; the IP destination is ciaddr when set, 255.255.255.255 for NAKs and when the client
set the broadcast flag, else yiaddr.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from vxnet.compute import dhcp_packet as pkt
from vxnet.compute import naming
from vxnet.compute.dhcp6 import V6Service, network_v6
from vxnet.compute.memo import PartsMemo
from vxnet.compute.metadata import METADATA_IP, needs_metadata_route
from vxnet.compute.state import Fdb, HostState, Neigh, Plug
from vxnet.model import FixedIp, Network, Port, Subnet, View, as_view

SERVICE_KIND = naming.DHCP_KIND
DEVICE_PREFIX = naming.DHCP_DEVICE_PREFIX
NFT_TABLE = naming.DHCP_TABLE[1]


def service_port(network_id: str) -> str:
    """Bridge side of a network's responder veth."""
    return naming.service_port_name(SERVICE_KIND, network_id)


def device_name(network_id: str) -> str:
    """Host side of a network's responder veth (where the AF_PACKET socket listens)."""
    return DEVICE_PREFIX + network_id[:naming.ID_CHARS]


def is_service_port(ifname: str) -> bool:
    return ifname.startswith(naming.SERVICE_PREFIX + SERVICE_KIND)


def is_device(ifname: str) -> bool:
    return ifname.startswith(DEVICE_PREFIX)


def responder_mac(network_id: str) -> str:
    """The responder's MAC on a network: the same on every host, locally administered unicast
    (first octet 0x0a: never a bridge MAC, `naming.bridge_mac` uses 0x02)."""
    digest = hashlib.sha256(f"dhcp/{network_id}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0A, *digest[:5]))


@dataclasses.dataclass(frozen=True, order=True)
class Lease:
    """What a client with `mac` gets."""

    mac: str
    port_id: str
    ip: str
    prefixlen: int
    server_id: str
    lease_time: int
    mtu: int
    hostname: str
    router: str | None = None
    dns: tuple[str, ...] = ()
    routes: tuple[tuple[str, str], ...] = ()     # option 121 (destination CIDR, nexthop)

    @property
    def netmask(self) -> str:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{self.prefixlen}").netmask)

    @property
    def broadcast(self) -> str:
        return str(ipaddress.IPv4Network(f"{self.ip}/{self.prefixlen}", strict=False).broadcast_address)


@dataclasses.dataclass(frozen=True, order=True)
class Responder:
    """The DHCP responder of one network on this host."""

    network_id: str
    port: str                  # bridge side (service port)
    device: str                # host side (AF_PACKET socket)
    mac: str                   # responder MAC: frames' source, FDB entry, ARP answers
    bridge: str
    mtu: int
    leases: tuple[Lease, ...] = ()        # sorted by MAC
    arp_ips: tuple[str, ...] = ()         # server ids whose ARP the responder answers
    taps: tuple[str, ...] = ()            # local taps steered to this responder
    v6: V6Service = dataclasses.field(default_factory=V6Service)   # RAs and DHCPv6 (compute/dhcp6.py)

    def lease_table(self) -> dict[str, Lease]:
        return {lease.mac: lease for lease in self.leases}


@dataclasses.dataclass(frozen=True)
class DhcpState:
    """Desired DHCP state of a host: the responders and their L2 part."""

    responders: tuple[Responder, ...] = ()       # sorted by network id
    l2: HostState = dataclasses.field(default_factory=HostState)


# ---------------------------------------------------------------------------------- compute
def hostname(port: Port, ip: str) -> str:
    """Neutron's DHCP hostname: the port's dns_name, else `host-` + the IP with dashes."""
    return port.dns_name or "host-" + ip.replace(".", "-")


def server_id(subnet: Subnet, held: set[str]) -> str:
    """The gateway IP, else the highest host address of the subnet no port holds (see module)."""
    if subnet.gateway_ip:
        return subnet.gateway_ip
    net = ipaddress.IPv4Network(subnet.cidr, strict=False)
    last = int(net.broadcast_address) - 1 if net.prefixlen < 31 else int(net.broadcast_address)
    first = int(net.network_address) + 1 if net.prefixlen < 31 else int(net.network_address)
    for n in range(last, first - 1, -1):
        ip = str(ipaddress.IPv4Address(n))
        if ip not in held:
            return ip
    return str(ipaddress.IPv4Address(last))


def _routes(subnet: Subnet, others: Iterable[str], metadata_via: str | None = None
            ) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """(router, option 121 routes) of a subnet: host routes, other subnets on-link, the metadata
    route (`metadata_via`: the server id, on a subnet without a router), default last."""
    default = subnet.gateway_ip
    routes: list[tuple[str, str]] = []
    for r in subnet.host_routes:
        try:
            dest = ipaddress.IPv4Network(r.destination, strict=False)
            nexthop = str(ipaddress.IPv4Address(r.nexthop))
        except ValueError:
            continue
        if dest.prefixlen == 0:
            default = nexthop
        else:
            routes.append((str(dest), nexthop))
    routes += [(cidr, "0.0.0.0") for cidr in others]
    if metadata_via and not any(d == f"{METADATA_IP}/32" for d, _ in routes):
        routes.append((f"{METADATA_IP}/32", metadata_via))
    if routes and default:
        routes.append(("0.0.0.0/0", default))      # RFC 3442: with 121 the client ignores option 3
    return default, tuple(routes)


@functools.lru_cache(maxsize=16384)
def _lease(p: Port, ip: str, s: Subnet, others: tuple[str, ...], server: str, lease_time: int, mtu: int,
           metadata_route: bool = False) -> Lease:
    # Memoized on its (hashable, frozen) inputs: a pass rebuilds only the leases that changed.
    router, routes = _routes(s, others, server if metadata_route else None)
    return Lease(p.mac, p.id, ip, ipaddress.IPv4Network(s.cidr, strict=False).prefixlen, server, lease_time, mtu,
                 hostname(p, ip), router, s.dns_nameservers, routes)


def _is_leasable(port: Port, host: str) -> bool:
    return port.host == host and port.admin_up and not port.is_infra and bool(port.mac)


def dhcp_subnets(net: Network, subnets: Iterable[Subnet]) -> dict[str, Subnet]:
    """The subnets a network's responder leases on (by id): IPv4 with a CIDR and `enable_dhcp`,
    on a VXLAN network (none otherwise)."""
    if not net.is_vxlan:
        return {}
    return {s.id: s for s in subnets if s.ip_version == 4 and s.cidr and s.enable_dhcp}


def leased(net: Network, subnets: Iterable[Subnet], ports: Iterable[Port], host: str) -> list[tuple[Port, FixedIp]]:
    """The ports of `net` that get a lease on `host`, each with the fixed IP leased (`ports`: the
    network's, sorted by id; `subnets`: the network's). The one definition of "leased": the
    responder answers exactly these ports' MACs and steering confines exactly their taps'
    client->server frames to it, so the firewall relies on it too (`compute.firewall`: their
    DHCP requests are accepted whatever their source address)."""
    dhcp_subs = dhcp_subnets(net, subnets)
    if not dhcp_subs:
        return []
    out: list[tuple[Port, FixedIp]] = []
    macs: set[str] = set()
    for p in ports:
        if not _is_leasable(p, host) or p.mac in macs:
            continue
        choice = next((f for f in p.ipv4 if f.subnet_id in dhcp_subs), None)
        if choice is not None:
            out.append((p, choice))
            macs.add(p.mac)
    return out


def reads_port(port: Port, host: str, view: View) -> bool:
    """Whether `compute_dhcp(view, host)` may read `port`: this host's ports (leases, DHCPv6),
    infrastructure ports (router advertisements, the metadata route), and a port of another host
    only through the addresses ports hold (`held`), which matter when a DHCP subnet of its
    network has no gateway IP (the server id is then the highest address no port holds) or when
    the port holds a DHCP subnet's gateway IP (the server id, answered by ARP unless held).
    Any other port (a VM of another host) joining, leaving or changing leaves the result as it was."""
    if port.host == host or port.is_infra:
        return True
    net = view.networks.get(port.network_id)
    if net is None:
        return False            # a network not in the view serves nothing (`compute_dhcp`)
    subs = dhcp_subnets(net, (s for s in view.subnets.values() if s.network_id == net.id))
    if any(not s.gateway_ip for s in subs.values()):
        return True
    gateways = {s.gateway_ip for s in subs.values()}
    return any(f.ip_address in gateways for f in port.ipv4)


def network_dhcp(net: Network, subnets: list[Subnet], ports: list[Port], host: str,
                 lease_time: int) -> Responder | None:
    """The responder of one network on `host` (`subnets` and `ports`: the network's, sorted by
    id), None when no local port gets a lease, a DHCPv6 answer or a router advertisement there."""
    chosen = leased(net, subnets, ports, host)
    v6 = network_v6(net, subnets, ports, host, lease_time)
    if not chosen and not v6:
        return None
    subs = {s.id: s for s in subnets if s.ip_version == 4 and s.cidr}
    held = {f.ip_address for p in ports for f in p.ipv4}
    sid_of: dict[str, str] = {}
    isolated: dict[str, bool] = {}
    leases: dict[str, Lease] = {}
    taps = []
    for p, choice in chosen:
        s = subs[choice.subnet_id]
        if s.id not in sid_of:
            sid_of[s.id] = server_id(s, held)
            isolated[s.id] = needs_metadata_route(s, ports)
        others = tuple(o.cidr for osid, o in subs.items() if osid != s.id)
        leases[p.mac] = _lease(p, choice.ip_address, s, others, sid_of[s.id], lease_time, net.mtu, isolated[s.id])
        taps.append(naming.port_device(p.id, p.is_subport))
    arp_ips = tuple(sorted({lease.server_id for lease in leases.values()} - held))
    return Responder(net.id, service_port(net.id), device_name(net.id), responder_mac(net.id),
                     naming.bridge_name(net.id), net.mtu, tuple(sorted(leases.values())), arp_ips, tuple(sorted(taps)),
                     v6)


def _by_network(view: View) -> tuple[dict[str, list[Port]], dict[str, list[Subnet]]]:
    """Ports and subnets of the networks where this view has ports, by network, sorted by id."""
    ports: dict[str, list[Port]] = {}
    for pid in sorted(view.ports):
        p = view.ports[pid]
        ports.setdefault(p.network_id, []).append(p)
    subnets: dict[str, list[Subnet]] = {}
    for sid in sorted(view.subnets):
        s = view.subnets[sid]
        if s.network_id in ports:
            subnets.setdefault(s.network_id, []).append(s)
    return ports, subnets


def _state(responders: Iterable[Responder | None]) -> DhcpState:
    found = tuple(r for r in responders if r is not None)
    return DhcpState(found, l2_part(found)) if found else DhcpState()


def compute_dhcp(view: View | Mapping[str, Mapping[str, Any]], host: str, lease_time: int) -> DhcpState:
    """Desired DHCP state of `host` (see module contract)."""
    v = as_view(view)
    ports, subnets = _by_network(v)
    return _state(network_dhcp(v.networks[nid], subnets.get(nid, []), ports[nid], host, lease_time)
                  for nid in sorted(ports) if nid in v.networks)


class DhcpCache:
    """`compute_dhcp` recomputing only the networks whose network, subnets or ports changed
    (identity, `compute.memo`); always equal to `compute_dhcp` of the same view (tested)."""

    def __init__(self, host: str, lease_time: int) -> None:
        self.host, self.lease_time = host, lease_time
        self._memo: PartsMemo[Responder | None, DhcpState] = PartsMemo(_state)

    @property
    def recomputed(self) -> int:
        return self._memo.recomputed

    def compute(self, view: View | Mapping[str, Mapping[str, Any]]) -> DhcpState:
        v = as_view(view)
        ports, subnets = _by_network(v)
        return self._memo.compute(
            (nid, (v.networks[nid], *subnets.get(nid, ()), *ports[nid]),
             lambda nid=nid: network_dhcp(v.networks[nid], subnets.get(nid, []), ports[nid], self.host,  # type: ignore[misc]
                                          self.lease_time))
            for nid in sorted(ports) if nid in v.networks)


def l2_part(responders: Iterable[Responder]) -> HostState:
    """Plugs of the service ports, their `master static` FDB entries, server-id neighbours."""
    plugs, fdb, neighs = set(), set(), set()
    for r in responders:
        plugs.add(Plug(r.port, r.bridge, r.mtu))
        fdb.add(Fdb(r.port, r.mac))
        neighs.update(Neigh(r.bridge, ip, r.mac) for ip in r.arp_ips)
    return HostState(plugs=frozenset(plugs), fdb=frozenset(fdb), neighs=frozenset(neighs))


V6_MAP = "steer6"
_V6_TAG = V6_MAP + ":"


def steer_elements(responders: Iterable[Responder]) -> frozenset[str]:
    """The steering maps' elements: `"<tap>" : <responder MAC>` per leased local tap (map
    `steer`, DHCPv4), and `steer6:"<tap>" : <responder MAC>` per tap served IPv6 (map `steer6`:
    router solicitations and DHCPv6)."""
    return frozenset(f'"{tap}" : {r.mac}' for r in responders for tap in r.taps) | frozenset(
        f'{_V6_TAG}"{tap}" : {r.mac}' for r in responders for tap in r.v6.taps)


def nft_script(responders: Iterable[Responder]) -> str:
    """The steering table, replaced atomically (add, delete, define in one transaction); only
    the deletion when no responder is wanted."""
    return steer_script(None, steer_elements(responders))


def split_steer(elements: Iterable[str]) -> dict[str, list[str]]:
    """Map name (`steer`, `steer6`) -> its elements as nft writes them (`"<tap>" : <MAC>`)."""
    return _split(elements)


def _split(elements: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"steer": [], V6_MAP: []}
    for e in sorted(elements):
        if e.startswith(_V6_TAG):
            out[V6_MAP].append(e[len(_V6_TAG):])
        else:
            out["steer"].append(e)
    return out


def steer_script(applied: frozenset[str] | None, wanted: frozenset[str]) -> str:
    """The transaction that turns the steering table holding `applied` (None: unknown, or
    absent) into one holding `wanted`: a whole-table replace when the state is unknown or the
    table comes or goes, else only the map elements that changed (a port-up adds one element,
    whatever the number of ports); "" when nothing changes.

    IPv6 (map `steer6`): a served tap's router solicitations and DHCPv6 client messages (to
    ff02::2 and ff02::1:2) get the responder MAC as destination, so they reach the local
    responder only (never the VXLAN port, never another VM)."""
    head = f"table bridge {NFT_TABLE}\ndelete table bridge {NFT_TABLE}\n"
    if applied is None or not applied or not wanted:
        if applied is not None and not applied and not wanted:
            return ""
        if not wanted:
            return head
        maps = _split(wanted)
        body = "".join(
            f"  map {name} {{\n    type ifname : ether_addr\n"
            + (f"    elements = {{ {', '.join(els)} }}\n" if els else "") + "  }\n"
            for name, els in maps.items())
        return head + (
            f"table bridge {NFT_TABLE} {{\n" + body +
            "  chain prerouting {\n"
            "    type filter hook prerouting priority -300; policy accept;\n"
            "    udp sport 68 udp dport 67 ether daddr set iifname map @steer\n"
            f"    udp sport 546 udp dport 547 ether daddr set iifname map @{V6_MAP}\n"
            f"    icmpv6 type nd-router-solicit ether daddr set iifname map @{V6_MAP}\n"
            "  }\n}\n")
    lines = []
    for name in ("steer", V6_MAP):
        old, new = set(_split(applied)[name]), set(_split(wanted)[name])
        gone, added = old - new, new - old
        if gone:
            lines.append(f"delete element bridge {NFT_TABLE} {name} {{ {', '.join(sorted(e.split(' : ')[0] for e in gone))} }}")
        if added:     # as the map's declaration: libnftables then needs no cache of the ruleset's chains and sets
            lines.append(f"add map bridge {NFT_TABLE} {name} {{ type ifname : ether_addr; "
                         f"elements = {{ {', '.join(sorted(added))} }}; }}")
    return "".join(line + "\n" for line in lines)


# ---------------------------------------------------------------------------------- answers
@dataclasses.dataclass(frozen=True)
class Answer:
    """What the responder does with one request: `kind` is the counter it bumps."""

    kind: str                      # "offers" | "acks" | "naks" | "ignored" | "releases" | "declines"
    frame: bytes | None = None     # the Ethernet frame to send, if any
    reason: str = ""


def _reply(req: pkt.DhcpFrame, responder_mac: str, lease: Lease, msg_type: int, yiaddr: str,
           options: list[tuple[int, bytes]]) -> bytes:
    m = req.msg
    msg = pkt.Bootp(pkt.BOOTREPLY, m.xid, m.chaddr, flags=m.flags, ciaddr=m.ciaddr, yiaddr=yiaddr,
                    siaddr="0.0.0.0", giaddr=m.giaddr,
                    options=((pkt.OPT_MSG_TYPE, bytes((msg_type,))), (pkt.OPT_SERVER_ID, pkt.ip_bytes(lease.server_id)),
                             *options))
    if msg_type == pkt.NAK:
        dst_ip = "255.255.255.255"
    elif m.ciaddr != "0.0.0.0":
        dst_ip = m.ciaddr
    elif m.broadcast:
        dst_ip = "255.255.255.255"
    else:
        dst_ip = yiaddr
    return pkt.udp_frame(responder_mac, m.chaddr, lease.server_id, dst_ip, pkt.SERVER_PORT, pkt.CLIENT_PORT,
                         pkt.encode_bootp(msg))


def lease_options(lease: Lease, with_lease_time: bool = True) -> list[tuple[int, bytes]]:
    """The options of an OFFER/ACK for `lease`."""
    opts: list[tuple[int, bytes]] = []
    if with_lease_time:
        opts += [(pkt.OPT_LEASE_TIME, pkt.opt_u32(lease.lease_time)),
                 (pkt.OPT_T1, pkt.opt_u32(lease.lease_time // 2)),
                 (pkt.OPT_T2, pkt.opt_u32(lease.lease_time * 7 // 8))]
    opts += [(pkt.OPT_SUBNET_MASK, pkt.ip_bytes(lease.netmask)), (pkt.OPT_BROADCAST, pkt.ip_bytes(lease.broadcast))]
    if lease.router:
        opts.append((pkt.OPT_ROUTER, pkt.ip_bytes(lease.router)))
    if lease.dns:
        opts.append((pkt.OPT_DNS, pkt.opt_ips(lease.dns)))
    opts += [(pkt.OPT_HOSTNAME, lease.hostname.encode()), (pkt.OPT_MTU, pkt.opt_u16(lease.mtu))]
    if lease.routes:
        opts.append((pkt.OPT_CLASSLESS_ROUTES, pkt.classless_routes(lease.routes)))
    return opts


def answer(req: pkt.DhcpFrame, responder_mac: str, leases: Mapping[str, Lease]) -> Answer:
    """The responder's answer to one client request (see module contract)."""
    m = req.msg
    if m.giaddr != "0.0.0.0":
        return Answer("ignored", reason="relayed")
    if req.src_mac != m.chaddr:
        return Answer("ignored", reason="chaddr is not the frame's source")
    lease = leases.get(m.chaddr)
    if lease is None:
        return Answer("ignored", reason="unknown MAC")
    t = m.msg_type
    if t == pkt.DISCOVER:
        return Answer("offers", _reply(req, responder_mac, lease, pkt.OFFER, lease.ip, lease_options(lease)))
    if t == pkt.REQUEST:
        sid, requested = m.opt_ip(pkt.OPT_SERVER_ID), m.opt_ip(pkt.OPT_REQUESTED_IP)
        if sid is not None and sid != lease.server_id:
            return Answer("ignored", reason=f"client selected server {sid}")
        if sid is not None or requested is not None:
            wanted = requested if requested is not None else m.ciaddr
        elif m.ciaddr != "0.0.0.0":
            wanted = m.ciaddr
        else:
            return Answer("ignored", reason="REQUEST without address")
        if wanted == lease.ip:
            return Answer("acks", _reply(req, responder_mac, lease, pkt.ACK, lease.ip, lease_options(lease)))
        nak = dataclasses.replace(req, msg=dataclasses.replace(m, ciaddr="0.0.0.0"))
        return Answer("naks", _reply(nak, responder_mac, lease, pkt.NAK, "0.0.0.0",
                                     [(pkt.OPT_MESSAGE, b"address not available")]))
    if t == pkt.INFORM:
        return Answer("acks", _reply(req, responder_mac, lease, pkt.ACK, "0.0.0.0", lease_options(lease, False)))
    if t == pkt.RELEASE:
        return Answer("releases")
    if t == pkt.DECLINE:
        return Answer("declines")
    return Answer("ignored", reason=f"message type {t}")
