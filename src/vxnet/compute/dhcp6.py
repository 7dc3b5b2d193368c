"""View of one network on one host -> its IPv6 service (router advertisements, DHCPv6); and
what the host's responder answers to a router solicitation or a DHCPv6 message (pure).

Contract: `network_v6(net, subnets, ports, host, lease_time)` is a pure function of its
arguments (the network's subnets and ports, sorted by id); `answer_rs` and `answer_dhcp6` are
pure functions of one received frame and the service the responder holds. The DHCP responder
of the network (compute/dhcp.py: one veth pair, one thread, the same responder MAC) carries this
service next to its DHCPv4 leases, so IPv6 adds no process and no device (docs/ipv6-dataplane.md).

Router advertisements (`Advert`, Neutron's radvd semantics):
- For every router interface port (device_owner `network:router_interface*`) of the network
  holding a fixed IP on an IPv6 subnet with `ipv6_ra_mode` set: one advertisement with that
  router's link-local source (fe80:: + EUI-64 of the interface MAC: the address the distributed
  router's leg has on every host) and its MAC as source link-layer option; one prefix per such
  subnet (on-link; autonomous for `slaac` and `dhcpv6-stateless`); M set when a subnet is
  `dhcpv6-stateful`, O set for `dhcpv6-stateless` and `dhcpv6-stateful`; MTU = network MTU;
  RDNSS = the subnets' IPv6 DNS servers. A subnet with only `ipv6_address_mode` (an outside
  router advertises) gets none.
- Recipients: every port of the network bound here, enabled, not an infrastructure port (with
  or without port security: a VM always hears its router), by its MAC. RAs are sent unicast to
  those MACs (IPv6 destination ff02::1): they reach exactly the local VMs and nothing else
  (never the VXLAN port, never another host).
DHCPv6 (`Lease6`): a port of the above kind with an IPv6 fixed IP on a subnet with `enable_dhcp`
and `ipv6_address_mode` `dhcpv6-stateful` gets that address (IA_NA) and the DNS servers;
`dhcpv6-stateless` gets the DNS servers only (Information-request). Clients are known by the
frame's source MAC (port security has checked it; steering confines the frames to this host).
Served taps (`taps`): the ports with a lease or an RA; their RS and DHCPv6 frames are steered
to the responder (compute/dhcp.py).

Answers (RFC 8415 server, static bindings): SOLICIT -> ADVERTISE (REPLY with rapid commit when
the client asked for it), REQUEST/RENEW (our server id) and REBIND -> REPLY with the address;
an address the client holds that is not the port's is returned with zero lifetimes (an IP
change reaches the VM at its renewal); CONFIRM -> Success or NotOnLink;
INFORMATION-REQUEST -> REPLY with the DNS servers; RELEASE/DECLINE -> REPLY Success. A message
with another server's id, without a client id, or from an unknown MAC gets silence; a port of
a stateless subnet asking for addresses gets NoAddrsAvail.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable

from vxnet.compute import dhcp6_packet as d6
from vxnet.compute import naming
from vxnet.compute import nd_packet as nd
from vxnet.model import Network, Port, Subnet

SLAAC, STATELESS, STATEFUL = "slaac", "dhcpv6-stateless", "dhcpv6-stateful"
MODES = (SLAAC, STATELESS, STATEFUL)
ROUTER_OWNERS = frozenset({"network:router_interface", "network:router_interface_distributed",
                           "network:ha_router_replicated_interface"})
PREFIX_VALID, PREFIX_PREFERRED = 86400, 14400        # radvd's defaults, as Neutron's radvd
ROUTER_LIFETIME = 1800
RDNSS_LIFETIME = 300                                  # >= 3 x the longest advertisement interval


@dataclasses.dataclass(frozen=True)
class Advert:
    """One router's advertisement on a network."""

    router_port: str
    source_ip: str                   # the router leg's link-local address
    ra: nd.RouterAdvert


@dataclasses.dataclass(frozen=True, order=True)
class Lease6:
    """What a DHCPv6 client with `mac` gets."""

    mac: str
    port_id: str
    address: str | None              # stateful: the port's fixed IP; None: stateless (DNS only)
    dns: tuple[str, ...] = ()
    lease_time: int = 86400


@dataclasses.dataclass(frozen=True)
class V6Service:
    """The IPv6 part of a network's responder on this host."""

    adverts: tuple[Advert, ...] = ()
    leases: tuple[Lease6, ...] = ()            # sorted by MAC
    targets: tuple[str, ...] = ()              # MACs receiving the adverts (sorted)
    taps: tuple[str, ...] = ()                 # local taps steered to the responder (RS, DHCPv6)

    def lease_table(self) -> dict[str, Lease6]:
        return {lease.mac: lease for lease in self.leases}

    def __bool__(self) -> bool:
        return bool(self.adverts or self.leases)


def _v6_subnets(subnets: Iterable[Subnet]) -> dict[str, Subnet]:
    out = {}
    for s in subnets:
        if s.ip_version != 6 or not s.cidr:
            continue
        try:
            ipaddress.IPv6Network(s.cidr, strict=False)
        except ValueError:
            continue
        out[s.id] = s
    return out


def _served(p: Port, host: str) -> bool:
    return p.host == host and p.admin_up and not p.is_infra and bool(p.mac)


def advert(router: Port, subs: list[Subnet], mtu: int) -> Advert:
    """The advertisement of `router`'s interface carrying `subs` (IPv6, with an RA mode)."""
    modes = {s.ipv6_ra_mode for s in subs}
    prefixes = tuple(nd.Prefix(str(ipaddress.IPv6Network(s.cidr, strict=False)), True,
                               s.ipv6_ra_mode in (SLAAC, STATELESS), PREFIX_VALID, PREFIX_PREFERRED) for s in subs)
    dns = nd.addresses(d for s in subs for d in s.dns_nameservers)
    ra = nd.RouterAdvert(managed=STATEFUL in modes, other=bool(modes & {STATEFUL, STATELESS}),
                         router_lifetime=ROUTER_LIFETIME, prefixes=prefixes, mtu=mtu, rdnss=dns,
                         rdnss_lifetime=RDNSS_LIFETIME, source_lladdr=router.mac)
    return Advert(router.id, nd.link_local(router.mac), ra)


def network_v6(net: Network, subnets: list[Subnet], ports: list[Port], host: str, lease_time: int) -> V6Service:
    """The IPv6 service of one network on `host` (see module contract); empty (falsy) when
    no local port gets an RA or a lease."""
    subs = _v6_subnets(subnets)
    if not subs or not net.is_vxlan:
        return V6Service()
    local = [p for p in ports if _served(p, host)]
    if not local:
        return V6Service()
    adverts = []
    for p in ports:
        if p.device_owner not in ROUTER_OWNERS or not p.admin_up or not p.mac:
            continue
        on = sorted({f.subnet_id for f in p.ipv6 if f.subnet_id in subs and subs[f.subnet_id].ipv6_ra_mode in MODES})
        if on:
            adverts.append(advert(p, [subs[s] for s in on], net.mtu))
    leases: dict[str, Lease6] = {}
    for p in local:
        if p.mac in leases:
            continue
        dhcp = [(f, subs[f.subnet_id]) for f in p.ipv6 if f.subnet_id in subs and subs[f.subnet_id].enable_dhcp
                and subs[f.subnet_id].ipv6_address_mode in (STATELESS, STATEFUL)]
        if not dhcp:
            continue
        stateful = next((f.ip_address for f, s in dhcp if s.ipv6_address_mode == STATEFUL), None)
        dns = nd.addresses(d for _, s in dhcp for d in s.dns_nameservers)
        leases[p.mac] = Lease6(p.mac, p.id, str(ipaddress.IPv6Address(stateful)) if stateful else None, dns, lease_time)
    targets = tuple(sorted({p.mac for p in local})) if adverts else ()
    served = {p.id for p in local if adverts or p.mac in leases}
    taps = tuple(sorted({naming.port_device(p.id, p.is_subport) for p in local if p.id in served}))
    return V6Service(tuple(sorted(adverts, key=lambda a: a.router_port)), tuple(sorted(leases.values())), targets, taps)


# ---------------------------------------------------------------------------------- answers
@dataclasses.dataclass(frozen=True)
class Answer6:
    """What the responder does with one IPv6 frame: `kind` is the counter it bumps."""

    kind: str                       # "ra" | "advertise" | "reply" | "ignored" | ...
    frames: tuple[bytes, ...] = ()
    reason: str = ""


def ra_frames(service: V6Service, responder_mac: str, dst_mac: str) -> tuple[bytes, ...]:
    """The router advertisements for the VM with `dst_mac` (unicast frame, to ff02::1)."""
    return tuple(nd.ra_frame(responder_mac, dst_mac, a.source_ip, nd.ALL_NODES, a.ra) for a in service.adverts)


def answer_rs(f: nd.Ip6Frame, responder_mac: str, service: V6Service) -> Answer6:
    """A router solicitation from a served VM -> its advertisements, unicast to it."""
    if not nd.is_valid_rs(f):
        return Answer6("ignored", reason="invalid RS")
    if f.src_mac not in service.targets:
        return Answer6("ignored", reason="RS from a MAC without an advertisement")
    return Answer6("ra", ra_frames(service, responder_mac, f.src_mac))


def _ia_reply(ia: d6.IaNa, lease: Lease6, offered: bool) -> bytes:
    t = lease.lease_time
    addrs = [d6.IaAddress(lease.address, t, t)] if offered and lease.address else []
    # An address the client holds that is not the port's (any more): zero lifetimes, so the
    # client drops it at this renewal.
    addrs += [d6.IaAddress(a.address, 0, 0) for a in ia.addresses if a.address != lease.address]
    opts: tuple[tuple[int, bytes], ...] = ()
    if not lease.address:
        opts = (d6.status(d6.STATUS_NO_ADDRS_AVAIL, "stateless subnet: no address"),)
    return d6.encode_ia_na(d6.IaNa(ia.iaid, t // 2 if lease.address else 0, t * 4 // 5 if lease.address else 0,
                                   tuple(addrs), opts))


def answer_dhcp6(f: nd.Ip6Frame, responder_mac: str, service: V6Service) -> Answer6:
    """The responder's answer to one DHCPv6 client message (see module contract)."""
    m = d6.decode_message(f.data)
    if m is None or f.dport != d6.SERVER_PORT:
        return Answer6("ignored", reason="not a client message")
    lease = service.lease_table().get(f.src_mac)
    if lease is None:
        return Answer6("ignored", reason="unknown MAC")
    client = m.opt(d6.OPT_CLIENTID)
    if client is None and m.msg_type != d6.INFORMATION_REQUEST:
        return Answer6("ignored", reason="no client id")
    sid = d6.duid_ll(responder_mac)
    server = m.opt(d6.OPT_SERVERID)
    t = m.msg_type
    if server is not None and (server != sid or t in (d6.SOLICIT, d6.REBIND, d6.CONFIRM)):
        return Answer6("ignored", reason="another server's id")
    if server is None and t in (d6.REQUEST, d6.RENEW, d6.RELEASE, d6.DECLINE):
        return Answer6("ignored", reason="no server id")
    opts: list[tuple[int, bytes]] = [*([(d6.OPT_CLIENTID, client)] if client is not None else []),
                                     (d6.OPT_SERVERID, sid)]
    kind, reply_type = "replies", d6.REPLY
    ias = [ia for v in m.all(d6.OPT_IA_NA) if (ia := d6.decode_ia_na(v)) is not None]
    if t == d6.SOLICIT:
        if m.opt(d6.OPT_RAPID_COMMIT) is not None:
            opts.append((d6.OPT_RAPID_COMMIT, b""))
        else:
            kind, reply_type = "advertises", d6.ADVERTISE
        if not lease.address:
            opts.append(d6.status(d6.STATUS_NO_ADDRS_AVAIL, "stateless subnet: no address"))
        opts += [(d6.OPT_IA_NA, _ia_reply(ia, lease, True)) for ia in ias]
    elif t in (d6.REQUEST, d6.RENEW, d6.REBIND):
        opts += [(d6.OPT_IA_NA, _ia_reply(ia, lease, True)) for ia in ias]
    elif t == d6.CONFIRM:
        held = [a.address for ia in ias for a in ia.addresses]
        ok = bool(held) and all(a == lease.address for a in held)
        opts.append(d6.status(d6.STATUS_SUCCESS if ok else d6.STATUS_NOT_ON_LINK, "" if ok else "not on link"))
    elif t == d6.INFORMATION_REQUEST:
        if ias:
            return Answer6("ignored", reason="information-request with an IA")
        opts.append((d6.OPT_INFORMATION_REFRESH_TIME, d6.u32(lease.lease_time)))
        kind = "informs"
    elif t in (d6.RELEASE, d6.DECLINE):
        opts.append(d6.status(d6.STATUS_SUCCESS, "released" if t == d6.RELEASE else "declined"))
        kind = "releases" if t == d6.RELEASE else "declines"
    else:
        return Answer6("ignored", reason=f"message type {t}")
    if lease.dns and t not in (d6.RELEASE, d6.DECLINE):
        opts.append((d6.OPT_DNS_SERVERS, d6.dns_servers(lease.dns)))
    msg = d6.Dhcp6Message(reply_type, m.xid, tuple(opts))
    frame = nd.udp6_frame(responder_mac, f.src_mac, nd.link_local(responder_mac), f.src_ip, d6.SERVER_PORT,
                          d6.CLIENT_PORT, d6.encode_message(msg))
    return Answer6(kind, (frame,))
