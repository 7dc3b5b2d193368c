"""The firewall's structured model: Neutron rules, a local port's filter, and their names (pure).

Contract: everything here is a pure function of model objects (`vxnet.model`), memoized where a
pass asks again for an unchanged object; nothing renders a table (`compute/firewall_ps.py`,
`compute/firewall_sg.py` do) or reads a view (`compute/firewall.py` does).
- `SgRule` / `GroupRules`: a Neutron rule as the data plane evaluates it (`sg_rule`: None for
  an unusable one), a group's rules of one direction (one shared chain).
- `PortFilter`: what a local port with port security may send (MACs, (MAC, address) pairs of
  both families, EUI-64 link-locals included), its groups and mark index (`port_filter`).
- Addresses: `collapse`/`collapse6` merge addresses and prefixes into non-overlapping prefixes
  (nft interval sets refuse overlaps); `group_members` is a remote group's member set.
- Names: `ident` (an id as an nft identifier), `sg_profile` (a port's security profile),
  `set_name`/`set_name6` (a remote group's member sets).

Conntrack zones (`zone_map`): zone = VNI when VNI <= 65535 (the server allocates the lowest free
VNI from 1001, so every network has this exact, stable, per-host-distinct zone until 64,535
networks exist). A larger VNI (admin-chosen) folds to `1 + vni % 65535`, probing upwards past
zones already taken on this host (taken first by the identity zones, then by lower VNIs):
distinct on the host, stable as long as no colliding network joins the host.

Mark indexes (`mark_indexes`, 1..65535): `1 + crc32(port id) % 65535`, probing past collisions
in port-id order: the same on every pass while ports come and go, except on a (rare)
collision. Profile numbers (the mark's high half) likewise from the profile names of the host's
ports.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import re
import socket
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from vxnet.compute import naming
from vxnet.compute.nd_packet import eui64_interface_id
from vxnet.model import Port, Rule

MAX_INDEX = 0xFFFF
# neutron_lib.constants.IP_PROTOCOL_MAP (copied: the pure layer imports nothing from the API)
IP_PROTOCOL_MAP: dict[str, int] = {
    "ah": 51, "dccp": 33, "egp": 8, "esp": 50, "gre": 47, "hopopt": 0, "icmp": 1, "igmp": 2,
    "ipip": 4, "ipv6-encap": 41, "ipv6-frag": 44, "ipv6-icmp": 58, "icmpv6": 58,
    "ipv6-nonxt": 59, "ipv6-opts": 60, "ipv6-route": 43, "ospf": 89, "pgm": 113, "rsvp": 46,
    "sctp": 132, "tcp": 6, "udp": 17, "udplite": 136, "vrrp": 112,
}
PORT_PROTOCOLS = frozenset({6, 17, 33, 132, 136})     # destination port at the same offset (th dport)
ICMP = 1
ICMPV6 = 58
ANY_V4 = "0.0.0.0/0"
ANY_V6 = "::/0"
# ICMPv6 a port always sends and receives, whatever its groups (Neutron's ICMPV6_ALLOWED_*_TYPES,
# plus router advertisements: only the host's responder can send one to a VM, see RA guard).
ND_EGRESS = "{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report, " \
            "mld2-listener-report, mld-listener-done }"
ND_INGRESS = "{ nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-query }"
ND_EGRESS_TYPES = frozenset({133, 135, 136, 131, 143, 132})
ND_INGRESS_TYPES = frozenset({134, 135, 136, 130})


@dataclasses.dataclass(frozen=True, order=True)
class SgRule:
    """One IPv4 Neutron rule as the data plane evaluates it."""

    rule_id: str
    direction: str                    # ingress | egress
    protocol: int | None = None       # None: any
    port_min: int | None = None       # destination ports (port protocols)
    port_max: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    remote_cidr: str | None = None    # None: any
    remote_group: str | None = None   # group id whose members' addresses match
    ethertype: str = "IPv4"           # IPv4 | IPv6

    @property
    def icmp_proto(self) -> int:
        """The ICMP protocol number of this rule's family."""
        return ICMPV6 if self.ethertype == "IPv6" else ICMP

    def match_text(self) -> str:
        """The nft match expression (without counter/verdict)."""
        side = "saddr" if self.direction == "ingress" else "daddr"
        v6 = self.ethertype == "IPv6"
        ip, icmp = ("ip6", "icmpv6") if v6 else ("ip", "icmp")
        parts = ["meta nfproto ipv6" if v6 else "meta nfproto ipv4"]
        if self.remote_cidr:
            parts.append(f"{ip} {side} {self.remote_cidr}")
        if self.remote_group:
            parts.append(f"{ip} {side} @{(set_name6 if v6 else set_name)(self.remote_group)}")
        if self.protocol == self.icmp_proto and self.icmp_type is not None:
            parts.append(f"{icmp} type {self.icmp_type}")
            if self.icmp_code is not None:
                parts.append(f"{icmp} code {self.icmp_code}")
        elif self.protocol is not None:
            parts.append(f"meta l4proto {self.protocol}")
            if self.protocol in PORT_PROTOCOLS and self.port_min is not None:
                hi = self.port_max if self.port_max is not None else self.port_min
                parts.append(f"th dport {self.port_min}" if hi == self.port_min else f"th dport {self.port_min}-{hi}")
        return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class GroupRules:
    """A security group's IPv4 rules in one direction (a shared chain)."""

    group_id: str
    direction: str
    rules: tuple[SgRule, ...]

    @property
    def chain(self) -> str:
        return ("gi_" if self.direction == "ingress" else "ge_") + ident(self.group_id)


@dataclasses.dataclass(frozen=True)
class PortFilter:
    """A local port with port security: what it may send and which groups filter it."""

    port_id: str
    tap: str
    bridge: str
    index: int                                  # mark index 1..65535
    macs: tuple[str, ...]                       # allowed source MACs
    pairs: tuple[tuple[str, str], ...]          # allowed (MAC, IPv4 address or CIDR)
    groups: tuple[str, ...]                     # group ids (sorted)
    stateful: bool
    dhcp_mac: str = ""                          # its network's responder MAC when DHCP leases it, else ""
    pairs6: tuple[tuple[str, str], ...] = ()    # allowed (MAC, IPv6 address or CIDR), link-locals included

    @property
    def ident(self) -> str:
        return ident(self.port_id)

    @property
    def profile(self) -> str:
        """Its security profile's name (`sg_profile`): what its security-group chains depend on."""
        return sg_profile(self.stateful, bool(self.pairs6), self.groups)

    def __hash__(self) -> int:
        # Computed once per object (the render's per-port memos look filters up every pass; the
        # generated hash would walk every field's tuples each time).
        h: int | None = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.port_id, self.tap, self.bridge, self.index, self.macs, self.pairs, self.groups,
                      self.stateful, self.dhcp_mac, self.pairs6))
            object.__setattr__(self, "_hash", h)
        return h


@functools.lru_cache(maxsize=65536)
def ident(obj_id: str) -> str:
    """An id as an nft identifier (letters, digits, `_`)."""
    return re.sub(r"[^A-Za-z0-9_]", "", obj_id) or "x"


@functools.lru_cache(maxsize=4096)
def sg_profile(stateful: bool, v6: bool, groups: tuple[str, ...]) -> str:
    """The name of a security profile: 12 hex digits of a hash of everything a port's
    security-group chains depend on (stateful or not, IPv6 addresses or not, its sorted groups);
    its chains are `eg_<profile>` / `in_<profile>` (a port id's identifier is 32 characters, so
    no older per-port chain name is one of these)."""
    text = f"{int(stateful)}{int(v6)}:" + ",".join(groups)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def sg_chain(p: PortFilter, direction: str) -> str:
    """The name of the security-group chain a port's packets meet in `direction` (shared by the
    ports of its profile)."""
    return ("in_" if direction == "ingress" else "eg_") + p.profile


def set_name(group_id: str) -> str:
    return "rg_" + ident(group_id)


def set_name6(group_id: str) -> str:
    return "rg6_" + ident(group_id)


@functools.lru_cache(maxsize=65536)
def _norm(addr: str, version: int) -> str | None:
    """An address or prefix of IP `version` (4 or 6) in canonical form (a host prefix, /32 or
    /128, as a plain address); None otherwise."""
    try:
        n = ipaddress.ip_network(addr, strict=False)
    except ValueError:
        return None
    if n.version != version:
        return None
    return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)


def _merged(norm: set[str] | frozenset[str], host_bits: int) -> frozenset[str]:
    """Normalised addresses/prefixes merged into non-overlapping prefixes."""
    if not any("/" in n for n in norm):
        return norm if isinstance(norm, frozenset) else frozenset(norm)   # plain addresses never overlap
    nets = ipaddress.collapse_addresses(ipaddress.ip_network(n) for n in norm)
    return frozenset(str(n.network_address) if n.prefixlen == host_bits else str(n) for n in nets)


def collapse6(addrs: Iterable[str]) -> frozenset[str]:
    """`collapse` for IPv6."""
    return _merged({n for a in addrs if (n := _norm(a, 6)) is not None}, 128)


def collapse(addrs: Iterable[str]) -> frozenset[str]:
    """IPv4 addresses/CIDRs merged into non-overlapping prefixes (nft interval sets refuse
    overlaps); a /32 is written as a plain address."""
    return _merged({n for a in addrs if (n := _norm(a, 4)) is not None}, 32)


def _canonical(addr: str, family: int) -> str | None:
    """`_norm(addr, 4)` (AF_INET) or `_norm(addr, 6)` (AF_INET6) without its cache in the common
    case: an address already in canonical form is returned itself (the same string object), so
    a remote group's 10,000 members cost no cache entries and no second copy of each string; a
    prefix, another notation or a non-address goes through the cached normaliser."""
    if (":" in addr) != (family == socket.AF_INET6):
        return None                        # the other family (or no address of this one)
    try:
        if socket.inet_ntop(family, socket.inet_pton(family, addr)) == addr:
            return addr
    except (OSError, ValueError):
        pass
    return _norm(addr, 6 if family == socket.AF_INET6 else 4)


def group_members(ports: Iterable[Port], group: str, family: int) -> frozenset[str]:
    """The addresses of a remote group of one family (`socket.AF_INET` or `AF_INET6`): the
    fixed IPs and allowed address pairs of its ports (not link-locals: Neutron's remote-group
    sets hold fixed IPs and pairs), merged as `collapse`/`collapse6` do."""
    def addresses() -> Iterator[str]:
        for p in ports:
            if group not in p.security_groups:
                continue
            for f in p.fixed_ips:
                if (n := _canonical(f.ip_address, family)) is not None:
                    yield n
            for pair in p.allowed_address_pairs:
                if (n := _canonical(pair.ip_address, family)) is not None:
                    yield n

    # Straight into the frozenset (not a set, then its copy): with 10,000 members the set was
    # ~0.5 MB more at the peak of every pass that changed a port.
    return _merged(frozenset(addresses()), 128 if family == socket.AF_INET6 else 32)


def _protocol(value: Any) -> int | None:
    if value is None or value == "" or value == "any":
        return None
    if isinstance(value, int):
        return value
    text = str(value).strip().lower()
    if text.isdigit():
        return int(text)
    return IP_PROTOCOL_MAP.get(text, -1)


def sg_rule(r: Rule) -> SgRule | None:
    """A Neutron rule as an `SgRule`; None for an unusable rule (unknown ethertype or
    protocol, a remote prefix of the other family)."""
    if r.ethertype not in ("IPv4", "IPv6") or r.direction not in ("ingress", "egress"):
        return None
    v6 = r.ethertype == "IPv6"
    proto = _protocol(r.protocol)
    if proto is not None and proto < 0:
        return None
    if v6 and proto == ICMP:
        proto = ICMPV6              # Neutron: "icmp" in an IPv6 rule is ICMPv6
    cidr = r.remote_ip_prefix
    if cidr:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            return None
        if net.version != (6 if v6 else 4):
            return None
        cidr = None if str(net) in (ANY_V4, ANY_V6) else str(net)
    pmin, pmax = r.port_range_min, r.port_range_max
    icmp_t = icmp_c = None
    if proto == (ICMPV6 if v6 else ICMP):
        icmp_t, icmp_c, pmin, pmax = pmin, pmax, None, None
    elif proto not in PORT_PROTOCOLS:
        pmin = pmax = None
    return SgRule(r.id, r.direction, proto, pmin, pmax, icmp_t, icmp_c, cidr, r.remote_group_id, r.ethertype)


def _v4(addr: str) -> bool:
    return _norm(addr, 4) is not None


@functools.lru_cache(maxsize=65536)
def port_addresses(port: Port) -> tuple[tuple[str, str], ...]:
    """(MAC, IPv4 address or CIDR) a port may use: fixed IPs and allowed address pairs."""
    out = [(port.mac, f.ip_address) for f in port.fixed_ips if _v4(f.ip_address)]
    out += [(pair.mac_address or port.mac, pair.ip_address) for pair in port.allowed_address_pairs
            if _v4(pair.ip_address)]
    return tuple(out)


_LL_PREFIX = bytes.fromhex("fe80000000000000")


def _ll(mac: str) -> str | None:
    """`nd_packet.link_local(mac)` (None for a bad MAC) without the `ipaddress` objects: it
    is most of the compute of a new port's filter (~0.15 ms of ~0.3 on this machine)."""
    try:
        return socket.inet_ntop(socket.AF_INET6, _LL_PREFIX + eui64_interface_id(mac))
    except ValueError:
        return None


@functools.lru_cache(maxsize=65536)
def port_addresses6(port: Port, link_locals: bool = True) -> tuple[tuple[str, str], ...]:
    """(MAC, IPv6 address or CIDR) a port may use: fixed IPs, allowed address pairs and (as
    Neutron) the EUI-64 link-local of the port's MAC and of every pair's MAC."""
    out = [(port.mac, f.ip_address) for f in port.fixed_ips if _norm(f.ip_address, 6) is not None]
    out += [(pair.mac_address or port.mac, pair.ip_address) for pair in port.allowed_address_pairs
            if _norm(pair.ip_address, 6) is not None]
    if link_locals:
        for mac in sorted({port.mac, *(pair.mac_address or port.mac for pair in port.allowed_address_pairs)} - {""}):
            ll = _ll(mac)
            if ll is not None:
                out.append((mac, ll))
    return tuple(out)


def zone_map(vnis: Mapping[str, int]) -> dict[str, int]:
    """Network id -> conntrack zone (see the module docstring); distinct values."""
    out: dict[str, int] = {}
    used: set[int] = set()
    for nid, vni in vnis.items():
        if 1 <= vni <= MAX_INDEX:
            out[nid] = vni
            used.add(vni)
    for nid, vni in sorted(((n, v) for n, v in vnis.items() if n not in out), key=lambda x: (x[1], x[0])):
        z = 1 + vni % MAX_INDEX
        while z in used:
            z = z % MAX_INDEX + 1
        out[nid] = z
        used.add(z)
    return out


def mark_indexes(port_ids: Iterable[str]) -> dict[str, int]:
    """Port id -> mark index in 1..65535 (stable hash, collisions probed in id order); ports
    beyond the capacity are left out."""
    out: dict[str, int] = {}
    used: set[int] = set()
    for pid in sorted(port_ids):
        if len(used) >= MAX_INDEX:
            break
        i = 1 + zlib.crc32(pid.encode()) % MAX_INDEX
        while i in used:
            i = i % MAX_INDEX + 1
        out[pid] = i
        used.add(i)
    return out


def port_filter(p: Port, index: int, sgs: Mapping[str, Any], dhcp_mac: str = "") -> PortFilter:
    """The filter of one local port with port security (mark index `index`; `dhcp_mac`: its
    network's responder MAC when DHCP leases the port, see `dhcp.leased`)."""
    groups = tuple(sorted(g for g in p.security_groups if g in sgs))
    return _port_filter(p, index, groups, not groups or any(sgs[g].stateful for g in groups), dhcp_mac)


@functools.lru_cache(maxsize=16384)
def _port_filter(p: Port, index: int, groups: tuple[str, ...], stateful: bool, dhcp_mac: str) -> PortFilter:
    # Memoized on the (hashable, frozen) port: a pass recomputes only the ports that changed.
    addrs = port_addresses(p)
    addrs6 = port_addresses6(p)
    macs = tuple(sorted({p.mac, *(m for m, _ in addrs), *(m for m, _ in addrs6)} - {""}))
    pairs = tuple(sorted((m, a) for m in macs for a in collapse(x for mm, x in addrs if mm == m)))
    # A port without any IPv6 address of its own (fixed IP or pair) gets no IPv6 rules at all,
    # not even its link-local (which Neutron allows): its IPv6 is dropped (`spoof-ip6`), and an
    # IPv4-only host keeps its ruleset's size (1,000 ports: 24,045 commands, against 38,047 with
    # every port's IPv6 checks).
    has_v6 = any(not a.startswith("fe80:") for _, a in port_addresses6(p, False))
    pairs6 = tuple(sorted((m, a) for m in macs for a in collapse6(x for mm, x in addrs6 if mm == m))) if has_v6 else ()
    return PortFilter(p.id, naming.port_device(p.id, p.is_subport), naming.bridge_name(p.network_id), index, macs, pairs, groups,
                      stateful, dhcp_mac, pairs6)
