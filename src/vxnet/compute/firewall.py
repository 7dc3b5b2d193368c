"""View of one host -> its desired port security and security-group rulesets (pure).

Contract: `compute_firewall(view, host)` is a pure function; it returns a `Firewall`: a
structured model (ports, groups and their rules, remote-group member sets, conntrack zones)
and its rendering as two nftables tables the agent owns (`Firewall.tables`). `decide()`
evaluates the model for one packet ("which rule decides"), the same way the kernel does.

Data path (KERNEL-NOTES §0, §6: bridge-family `ct` does not exist here, so conntrack is done
by br_netfilter in `table inet`, where a bridged packet's iifname/oifname is the *bridge*;
ports are therefore tagged with skb marks in bridge-family chains):

- `table bridge vxnet_ps`
  - `pre` (prerouting -200): `iifname vmap @pre_ports` -> the anti-spoofing chain of each local
    port with port security: the shared `ps` for a port without IPv6 pairs, its own
    `ps_<port>` for a port with them (`ps_chain_name`). The checks, in this order (`_ps_chain`;
    `ps` the same with the port's facts looked up by its tap in named sets, `_ps_elements`):
    any `udp sport 67` dropped (a VM is never a DHCP server); IPv4 whose (MAC . source IP) is
    in the allowed pairs: mark low 16 bits = the port's index, accept (`ps`: `meta mark set
    iifname . ether saddr . ip saddr map @ps_mark`, the pairs' CIDRs in the interval twin
    `ps_mark_net`); source MAC not in {port MAC, pair MACs}: drop (`ps_macs`); ARP whose
    sender (MAC . IP) is not an allowed pair (or 0.0.0.0, address probes): drop (`ps_arp`,
    `ps_arp_net`); ARP accepted; DHCP client frames (0.0.0.0:68 -> :67) accepted;
    on a *leased* port (`dhcp.leased`: its tap is steered), client->server DHCP (68 -> 67) to
    its network's responder MAC accepted whatever the source IP (a RENEW/REBIND from an address
    the port no longer holds: it can only reach the local responder; `ps_dhcp`); other IPv4
    (spoofed source) dropped. IPv6 (docs/ipv6-dataplane.md; own chains only): DHCPv6 server
    frames and router advertisements/redirects dropped (guards); neighbour advertisements, DAD
    probes and ND link-layer options checked against the port's pairs and MACs (`_nd_rules`:
    raw payload matches, which nft 1.0.6 cannot key a named set by); (MAC . IPv6 source) in the
    IPv6 pairs (fixed IPs, pairs, EUI-64 link-locals of the allowed MACs): marked, accepted;
    DAD/MLD from `::` accepted; other IPv6 dropped. Anything else (VLAN...) dropped.
    So the port-up of a port without IPv6 pairs adds no rule to this table, only elements
    (a new rule makes the kernel validate the whole table, whose cost grows with its chains:
    issue 18, docs/benchmarks.md); a port with IPv6 pairs still adds its chain.
  - `out` (forward -100, before br_netfilter): ND/RA/MLD multicast and any RS/RA/redirect
    towards a VXLAN port dropped (never on the underlay); `oifname vmap @out_ports` ->
    `mk_<profile>`: set mark high 16 bits = the number of the destination port's security
    profile (`Firewall.profile_numbers`), the low half kept. One such chain per profile used
    on the host (nft 1.0.6 refuses `or` with a map lookup as its operand, so the constant is in
    a chain): what the inet `ingress` dispatch needs is the profile's chain, not the port.
  - The dispatch tables are named verdict maps, not inline vmaps: a port coming or going is one
    element per map (plus its own chain if it has IPv6 pairs, and its profile's chains if it is
    the profile's first or last port), so the transaction of a port-up does not grow with the
    number of ports on the host (the inline form rewrote every port's entry).
- `table inet vxnet_sg`
  - `zone` (prerouting, raw): `notrack accept` for traffic from/to ports whose groups are all
    `stateful=false`; `notrack accept` for a bridged frame whose source and destination MACs
    are both outside the set `ct_macs` (the MACs, pair MACs included, of local ports with a
    stateful group; looked up before the bridge-name match): conntrack only where a rule needs
    state, so ports without port security, routers, DHCP and VXLAN-to-VXLAN frames are not
    tracked; then
    `ct zone set iifname map {bridge: zone}` for every network bridge.
  - `egress` (forward 0) accepts established/related packets first (`_established`), then
    dispatches `mark & 0xffff` to its port's profile chain `eg_<profile>` (map `eg_ports`);
    `ingress` (forward 10) the same, then `mark & 0xffff0000` (the profile's number) to
    `in_<profile>` (map `in_ports`, one element per profile). Two base chains, because
    `accept` only ends its own base chain: a packet between two local ports passes both. A
    packet of an established flow thus costs one conntrack-state comparison per chain, no
    lookup (issue 18: the per-packet cost of the ruleset).
  - per security profile (`sg_profile`: stateful or not, IPv6 addresses or not, the sorted
    groups; the same for every port of that profile, `eg_`/`in_` + a hash of it): [stateful:
    ct invalid drop], DHCP, ND (always, as Neutron), DHCPv6, then a jump to each group's chain
    of that direction (`gi_<group>` / `ge_<group>`: one rule per Neutron rule, `accept`), then
    drop. One chain pair per profile used by a local port, shared by its ports (its counters
    count them all): a port-up whose profile is on the host already adds no rule to this
    table, only its two map elements (a new rule makes the kernel validate the whole table:
    issue 18, docs/benchmarks.md `nft_jump_lab`); the pair goes with its last port. Group
    chains are shared by profiles, so a rule change rewrites one chain whatever the number of
    ports using the group.
  - remote groups: named set `rg_<group>` of member IPv4 addresses (fixed IPs and allowed
    address pairs of every port of the group in the view), updated as elements; `rg6_<group>`
    for IPv6 rules (IPv6 fixed IPs and pairs).
- Every rule has a counter and a comment `vxnet:<kind>[:<Neutron rule id>]#<hash>`; the hash
  (of the rule text) lets the driver recognise its own rules when it reads the kernel back.
- Per-packet cost: in every rule a frame of the data path does not match, the first
  comparison that fails it is a cheap one (ether type, protocol, a set lookup), not a copy of
  a device name (`iifname`/`oifname` copy and pad the name for every frame they see).

Semantics (Neutron): ports with `port_security_enabled: false` and `network:*` ports (routers,
DHCP: trusted, as in Neutron) are not filtered; a port with port security and no group drops
all IP both ways (DHCP, DHCPv6, ARP and ND aside); IPv4 and IPv6 rules are both in the data
plane (`ethertype`; `icmp` in an IPv6 rule is ICMPv6); a port whose groups are all
stateless gets no conntrack (its replies need rules); a mix counts as stateful.
Service ports (`vxp*`) and VXLAN ports are never filtered: traffic routed to a VM is filtered
at the VM's own port, with its real source address.

Conntrack zones: zone = VNI when VNI <= 65535 (the server allocates the lowest free VNI from
1001, so every network has this exact, stable, per-host-distinct zone until 64,535 networks
exist). A larger VNI (admin-chosen) folds to `1 + vni % 65535`, probing upwards past zones
already taken on this host (taken first by the identity zones, then by lower VNIs): distinct on
the host, stable as long as no colliding network joins the host.

Mark indexes (1..65535): `1 + crc32(port id) % 65535`, probing past collisions in port-id
order: the same on every pass while ports come and go, except on a (rare) collision. Profile
numbers (the mark's high half) likewise from the profile names of the host's ports;
`render_update` renders the whole when a profile coming or going would renumber another.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import hashlib
import ipaddress
import itertools
import operator
import re
import socket
import weakref
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

from vxnet.compute import dhcp, naming
from vxnet.compute.l2 import port_filtered
from vxnet.compute.nd_packet import eui64_interface_id
from vxnet.model import Port, Rule, Subnet, View, as_view

PS_TABLE = naming.PS_TABLE
SG_TABLE = naming.SG_TABLE
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
# ND/RA/MLD that must never reach the underlay: multicast ND, and router solicitations,
# advertisements and redirects in any form (answers come from each host's own responder).
# The ICMPv6 type is matched before the output port: every other frame leaves the rule at its
# first comparison (ether type), without copying the port's name.
_TO_VXLAN = f'oifname "{naming.VXLAN_PREFIX}*"'
ND_UNDERLAY = (f"icmpv6 type {{ nd-router-solicit, nd-router-advert, nd-redirect }} {_TO_VXLAN}",
               ("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, mld-listener-query, mld-listener-report, "
                f"mld2-listener-report, mld-listener-done }} ether daddr & ff:ff:00:00:00:00 == 33:33:00:00:00:00 "
                f"{_TO_VXLAN}"))


# --- the structured model ---------------------------------------------------------------------

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
        return ("gi_" if self.direction == "ingress" else "ge_") + _ident(self.group_id)


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
        return _ident(self.port_id)

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


@dataclasses.dataclass(frozen=True)
class NftRule:
    """One rule line of a chain (`text` includes its counter, verdict and comment)."""

    text: str


@dataclasses.dataclass(frozen=True)
class NftChain:
    name: str
    rules: tuple[NftRule, ...]
    hook: str | None = None           # base chain spec, e.g. "type filter hook forward priority 0; policy accept;"
    ordered: bool = True              # False: every rule ends in the same verdict, order is irrelevant


@dataclasses.dataclass(frozen=True)
class NftSet:
    """A named set, or (`kind="map"`) a verdict map whose elements are `key : verdict` texts."""

    name: str
    type: str
    elements: frozenset[str]
    flags: str = "interval"
    kind: str = "set"           # set | map

    def declaration(self, elements: Collection[str] = ()) -> str:
        """The `{ ... }` body of its `add set` / `add map` command; with `elements`, the command
        also adds those (to the set as the kernel holds it when it exists already: an `add` of a
        set with the same declaration changes nothing else)."""
        return (f"{{ type {self.type};" + (f" flags {self.flags};" if self.flags else "")
                + (f" elements = {_set_text(elements)};" if elements else "") + " }")


@dataclasses.dataclass(frozen=True)
class NftTable:
    family: str
    name: str
    chains: tuple[NftChain, ...]
    sets: tuple[NftSet, ...] = ()

    @functools.cached_property
    def _chains(self) -> dict[str, NftChain]:
        return {c.name: c for c in self.chains}

    def chain_map(self) -> dict[str, NftChain]:
        """Chain name -> chain (built once per table object; do not mutate)."""
        return self._chains

    @functools.cached_property
    def base_chains(self) -> tuple[NftChain, ...]:
        """The chains with a hook."""
        return tuple(c for c in self.chains if c.hook)


@dataclasses.dataclass(frozen=True)
class Firewall:
    """The desired firewall of one host: the model and its two tables."""

    ports: tuple[PortFilter, ...] = ()
    open_ports: frozenset[str] = frozenset()             # local ports not filtered (port security off)
    groups: tuple[GroupRules, ...] = ()
    members: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)  # group -> v4 addrs
    zones: tuple[tuple[str, int], ...] = ()              # (bridge, conntrack zone)
    ignored_rules: tuple[str, ...] = ()                  # unusable rules (unknown protocol, bad CIDR...)
    unfiltered: tuple[str, ...] = ()                     # ports over the index capacity (reported down)
    members6: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)  # group -> v6 addrs

    @functools.cached_property
    def tables(self) -> tuple[NftTable, NftTable, NftTable]:
        """The rendering (computed once per object)."""
        return render(self)

    @functools.cached_property
    def profile_numbers(self) -> dict[str, int]:
        """Security profile -> its number 1..65535 (`mark_indexes` of the profiles of the local
        ports): the mark's high half of a frame to a port of that profile."""
        return mark_indexes({p.profile for p in self.ports})

    def port(self, port_id: str) -> PortFilter | None:
        return next((p for p in self.ports if p.port_id == port_id), None)


# --- helpers ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=65536)
def _ident(obj_id: str) -> str:
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
    return "rg_" + _ident(group_id)


def set_name6(group_id: str) -> str:
    return "rg6_" + _ident(group_id)


def _comment(kind: str, text: str) -> str:
    h = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f'comment "vxnet:{kind}#{h}"'


@functools.lru_cache(maxsize=65536)
def _rule(match: str, verdict: str, kind: str) -> NftRule:
    body = f"{match} counter {verdict}".strip()
    return NftRule(f"{body} {_comment(kind, body)}")


def comment_kind(comment: str) -> str:
    """`vxnet:sg:<rule id>#1a2b3c4d` -> `sg:<rule id>` (the identity a counter belongs to)."""
    return comment.removeprefix("vxnet:").split("#", 1)[0]


@functools.lru_cache(maxsize=65536)
def _norm4(addr: str) -> str | None:
    """An IPv4 address or prefix in canonical form (a /32 as a plain address); None otherwise."""
    try:
        n = ipaddress.ip_network(addr, strict=False)
    except ValueError:
        return None
    if n.version != 4:
        return None
    return str(n.network_address) if n.prefixlen == 32 else str(n)


@functools.lru_cache(maxsize=65536)
def _norm6(addr: str) -> str | None:
    """An IPv6 address or prefix in canonical form (a /128 as a plain address); None otherwise."""
    try:
        n = ipaddress.ip_network(addr, strict=False)
    except ValueError:
        return None
    if n.version != 6:
        return None
    return str(n.network_address) if n.prefixlen == 128 else str(n)


def _merged(norm: set[str] | frozenset[str], host_bits: int) -> frozenset[str]:
    """Normalised addresses/prefixes merged into non-overlapping prefixes."""
    if not any("/" in n for n in norm):
        return norm if isinstance(norm, frozenset) else frozenset(norm)   # plain addresses never overlap
    nets = ipaddress.collapse_addresses(ipaddress.ip_network(n) for n in norm)
    return frozenset(str(n.network_address) if n.prefixlen == host_bits else str(n) for n in nets)


def collapse6(addrs: Iterable[str]) -> frozenset[str]:
    """`collapse` for IPv6."""
    return _merged({n for a in addrs if (n := _norm6(a)) is not None}, 128)


def collapse(addrs: Iterable[str]) -> frozenset[str]:
    """IPv4 addresses/CIDRs merged into non-overlapping prefixes (nft interval sets refuse
    overlaps); a /32 is written as a plain address."""
    return _merged({n for a in addrs if (n := _norm4(a)) is not None}, 32)


def _canonical(addr: str, family: int) -> str | None:
    """`_norm4(addr)` (AF_INET) or `_norm6(addr)` (AF_INET6) without their caches in the common
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
    return _norm6(addr) if family == socket.AF_INET6 else _norm4(addr)


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


def _sg_rule(r: Rule) -> SgRule | None:
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
    return _norm4(addr) is not None


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
    out = [(port.mac, f.ip_address) for f in port.fixed_ips if _norm6(f.ip_address) is not None]
    out += [(pair.mac_address or port.mac, pair.ip_address) for pair in port.allowed_address_pairs
            if _norm6(pair.ip_address) is not None]
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


# --- compute ----------------------------------------------------------------------------------

_filtered = port_filtered     # the predicate the L2 part switches a bridge's br_netfilter by

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


def subnets_by_network(v: View, network_ids: Collection[str]) -> dict[str, list[Subnet]]:
    """The view's subnets of these networks, by network (in the view's order)."""
    out: dict[str, list[Subnet]] = {}
    for s in v.subnets.values():
        if s.network_id in network_ids:
            out.setdefault(s.network_id, []).append(s)
    return out


def leased_in(v: View, host: str, nid: str, subnets: Iterable[Subnet], ports: Iterable[Port]) -> dict[str, str]:
    """Port id -> the responder MAC of network `nid`, for the ports DHCP leases on `host` there
    (`ports`: the network's ports on `host`, by id; `dhcp.leased`, the predicate the DHCP part
    steers by)."""
    mac = dhcp.responder_mac(nid)
    return {p.id: mac for p, _ in dhcp.leased(v.networks[nid], subnets, ports, host)}


def _leased_ports(v: View, host: str, network_ids: Iterable[str]) -> dict[str, str]:
    """Port id -> its network's responder MAC, for the ports DHCP leases on `host` on these
    networks (`leased_in`)."""
    nets = set(network_ids)
    ports: dict[str, list[Port]] = {}
    for pid in sorted(v.ports):
        p = v.ports[pid]
        if p.network_id in nets and p.host == host:
            ports.setdefault(p.network_id, []).append(p)
    subnets = subnets_by_network(v, nets)
    out: dict[str, str] = {}
    for nid, nports in ports.items():
        out.update(leased_in(v, host, nid, subnets.get(nid, ()), nports))
    return out


def local_ports(host: str, vnis: Mapping[str, int], ports: Iterable[tuple[str, Port]]
                ) -> tuple[dict[str, Port], set[str]]:
    """Of `ports` (id, port), the local ports of `host` on its overlay networks (`vnis`): the filtered ones
    (id -> port) and the ids of the others (port security off, infrastructure)."""
    local: dict[str, Port] = {}
    open_ports: set[str] = set()
    for pid, p in ports:
        if p.host != host or p.network_id not in vnis:
            continue
        if _filtered(p):
            local[pid] = p
        else:
            open_ports.add(pid)
    return local, open_ports


def overlay_vnis(v: View) -> dict[str, int]:
    """Network id -> VNI of the view's overlay networks (the ones with a conntrack zone)."""
    return {nid: n.segmentation_id for nid, n in v.networks.items() if n.is_vxlan and n.segmentation_id is not None}


def zones_of(vnis: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """(bridge, conntrack zone) of the overlay networks, sorted (`Firewall.zones`)."""
    return tuple(sorted((naming.bridge_name(n), z) for n, z in zone_map(vnis).items()))


def tap_indexes(local: Mapping[str, Port]) -> dict[str, int]:
    """Port id -> mark index of the filtered local ports that get one (`mark_indexes`); two
    ports sharing a tap name (11 id chars): the lowest id wins, the other gets none."""
    taps: dict[str, str] = {}
    for pid in sorted(local):
        taps.setdefault(naming.port_device(pid, local[pid].is_subport), pid)
    return mark_indexes(taps.values())


def rules_of(v: View) -> tuple[dict[str, list[SgRule]], tuple[str, ...]]:
    """The view's usable rules by group (in rule id order) and the ids of the unusable ones."""
    rules_by_group: dict[str, list[SgRule]] = {}
    ignored: list[str] = []
    for rid, r in sorted(v.security_group_rules.items()):
        rule = _sg_rule(r)
        if rule is None:
            ignored.append(rid)
            continue
        rules_by_group.setdefault(r.security_group_id, []).append(rule)
    return rules_by_group, tuple(ignored)


def group_rules_of(used: Iterable[str], rules_by_group: Mapping[str, list[SgRule]]) -> tuple[GroupRules, ...]:
    """The shared chains' rules of the groups `used` by local ports, both directions."""
    return tuple(GroupRules(g, d, tuple(r for r in rules_by_group.get(g, ()) if r.direction == d))
                 for g in sorted(set(used)) for d in ("ingress", "egress"))


def remote_groups(groups: Iterable[GroupRules], ethertype: str) -> set[str]:
    """The groups the rules of `groups` of one ethertype name as remote groups."""
    return {r.remote_group for gr in groups for r in gr.rules if r.remote_group and r.ethertype == ethertype}


def compute_firewall(view: View | Mapping[str, Mapping[str, Any]], host: str) -> Firewall:
    """The desired firewall of `host` from its view (pure; `compute.firewall_cache.FirewallCache`
    is its incremental form)."""
    v = as_view(view)
    vnis = overlay_vnis(v)
    local, open_ports = local_ports(host, vnis, v.ports.items())
    index = tap_indexes(local)
    rules_by_group, ignored = rules_of(v)
    dhcp_macs = _leased_ports(v, host, {p.network_id for p in local.values()})
    filters = [port_filter(local[pid], index[pid], v.security_groups, dhcp_macs.get(pid, "")) for pid in sorted(index)]
    group_rules = group_rules_of({g for f in filters for g in f.groups}, rules_by_group)
    members = {g: group_members(v.ports.values(), g, socket.AF_INET) for g in sorted(remote_groups(group_rules, "IPv4"))}
    members6 = {g: group_members(v.ports.values(), g, socket.AF_INET6)
                for g in sorted(remote_groups(group_rules, "IPv6"))}
    return Firewall(tuple(filters), frozenset(open_ports), group_rules, members, zones_of(vnis), ignored,
                    tuple(sorted(set(local) - set(index))), members6)


# --- render -----------------------------------------------------------------------------------

def _member_set(name: str, key_type: str, members: frozenset[str]) -> NftSet:
    """A remote group's member set: an interval set only when a member is a prefix (an allowed
    address pair's CIDR), else a plain (hash) set. libnftables keeps an interval set's elements
    in its context to check overlaps: with 10,000 members ~7 MB held by the agent, ~17 MB of
    peak to load them, and every element added or deleted reads them all again (tens of ms). A
    plain set needs none of that. A set whose kind changes (its first prefix member comes or
    its last goes) is re-created with the table in one transaction (`nft_driver.diff_table`)."""
    prefixed = any(map(operator.contains, members, itertools.repeat("/")))     # a C loop: 10,000 members each pass
    return NftSet(name, key_type, members, "interval" if prefixed else "")


def _set_text(elements: Iterable[str]) -> str:
    return "{ " + ", ".join(sorted(elements)) + " }"


def _raw6(addr: str) -> str:
    """An IPv6 address or prefix as a 128-bit integer (range) for a raw payload match."""
    n = ipaddress.IPv6Network(addr, strict=False)
    lo, hi = int(n.network_address), int(n.broadcast_address)
    return f"{lo:#034x}" if lo == hi else f"{lo:#034x}-{hi:#034x}"


def _raw_mac(mac: str) -> str:
    return "0x" + mac.replace(":", "")


def _nd_rules(p: PortFilter) -> list[NftRule]:
    """Neighbour discovery a port may send (before its IPv6 source check; nft 1.0.6 has no
    `icmpv6 taddr`, so the target (bits 64-191) and the first option (type at bit 192, MAC at
    208; at 64/80 in a router solicitation) are raw payload matches):
    - a neighbour advertisement's target, and a duplicate address detection probe's target
      (source ::), must be one of its own (MAC . address) pairs: a VM cannot claim, or probe
      for, another's address;
    - an NS/NA is 24 bytes, or 32 with one option; a link-layer address option (source or
      target) must carry one of its MACs, and so must a router solicitation's: a VM cannot
      point its neighbours' caches at another MAC."""
    pairs = _set_text(f"{m} . {_raw6(a)}" for m, a in p.pairs6)
    macs = _set_text(_raw_mac(m) for m in p.macs)
    both = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }"
    return [_rule(f"icmpv6 type nd-neighbor-advert ether saddr . @th,64,128 != {pairs}", "drop", "spoof-na-target"),
            _rule(f"ip6 saddr :: icmpv6 type nd-neighbor-solicit ether saddr . @th,64,128 != {pairs}", "drop",
                  "spoof-dad-target"),
            _rule(f"{both} ip6 length != {{ 24, 32 }}", "drop", "spoof-nd-layout"),
            _rule(f"{both} ip6 length 32 @th,192,8 {{ 1, 2 }} @th,208,48 != {macs}", "drop", "spoof-nd-lladdr"),
            _rule("icmpv6 type nd-router-solicit ip6 length != { 8, 16 }", "drop", "spoof-rs-layout"),
            _rule(f"icmpv6 type nd-router-solicit ip6 length 16 @th,64,8 1 @th,80,48 != {macs}", "drop",
                  "spoof-rs-lladdr")]


@functools.lru_cache(maxsize=8192)
def _ps_chain(p: PortFilter) -> NftChain:
    # A port with one MAC (and one IPv4 address) gets its checks as plain comparisons, not
    # anonymous sets: the kernel names each new anonymous set of a transaction after scanning
    # the table's sets, so a port-up's three sets cost more with every port on the host
    # (issue 18; bench/nft_portup_bench.py). Several MACs or addresses keep their sets.
    one_mac = len(p.macs) == 1
    macs = p.macs[0] if one_mac else _set_text(p.macs)
    pairs = [f"{m} . {a}" for m, a in p.pairs]
    if one_mac:
        # (MAC . address) pairs of one MAC: the MAC, then the address (or 0.0.0.0, a probe)
        addrs = [a for _, a in p.pairs] + ["0.0.0.0"]
        arp = [_rule(f"arp saddr ether != {macs}", "drop", "spoof-arp"),
               _rule(" ".join(f"arp saddr ip != {a}" for a in addrs) if len(addrs) <= 2
                     else f"arp saddr ip != {_set_text(addrs)}", "drop", "spoof-arp")]
    else:
        arp = [_rule(f"arp saddr ether . arp saddr ip != {_set_text(pairs + [f'{m} . 0.0.0.0' for m in p.macs])}",
                     "drop", "spoof-arp")]
    # The accepted IPv4 case first (one lookup per frame of the data path), then the drop
    # reasons in an order that names the first forged field; a VM is never a DHCP server.
    rules = [_rule("udp sport 67", "drop", "dhcp-server")]
    if len(p.pairs) == 1:
        rules.append(_rule(f"ether saddr {p.pairs[0][0]} ip saddr {p.pairs[0][1]}", f"meta mark set {p.index:#x} accept",
                           "mark"))
    elif pairs:
        rules.append(_rule(f"ether saddr . ip saddr {_set_text(pairs)}", f"meta mark set {p.index:#x} accept", "mark"))
    # IPv6: never a DHCPv6 server, never a router (RA guard: advertisements and redirects);
    # neighbour discovery checked; then the (MAC . source) pairs, link-locals included.
    if p.pairs6:
        rules += [_rule("udp sport 547", "drop", "dhcp6-server"),
                  _rule("icmpv6 type { nd-router-advert, nd-redirect }", "drop", "ra-guard")]
        rules += _nd_rules(p)
        rules.append(_rule(f"ether saddr . ip6 saddr {_set_text(f'{m} . {a}' for m, a in p.pairs6)}",
                           f"meta mark set {p.index:#x} accept", "mark6"))
    rules += [_rule(f"ether saddr != {macs}", "drop", "spoof-mac"),
              *arp,
              _rule("ether type arp", "accept", "arp"),
              _rule("ip saddr 0.0.0.0 udp sport 68 udp dport 67", "accept", "dhcp-client")]
    if p.dhcp_mac:
        # A leased port's tap is steered (table vxnet_dhcp, before this chain): every 68 -> 67
        # frame from it has the responder MAC as destination, which only the local responder
        # holds (a static FDB entry), so a RENEW from an address the port no longer holds
        # reaches nothing else. Never on an unsteered port: its frame would go anywhere.
        rules.append(_rule(f"ether daddr {p.dhcp_mac} udp sport 68 udp dport 67", "accept", "dhcp-renew"))
    if p.pairs6:
        # Duplicate address detection and MLD reports before the host has an address (source
        # ::; a probe's target was checked above). Not marked: ND is always allowed anyway.
        rules.append(_rule("ip6 saddr :: icmpv6 type { nd-neighbor-solicit, mld-listener-report, "
                           "mld2-listener-report, mld-listener-done }", "accept", "v6-unspecified"))
    rules.append(_rule("ether type ip", "drop", "spoof-ip"))
    rules.append(_rule("ether type ip6", "drop", "spoof-ip6"))
    rules.append(_rule("", "drop", "other"))
    return NftChain(f"ps_{p.ident}", tuple(rules))


# The anti-spoofing chain of the ports without IPv6 pairs, shared by them: `_ps_chain`'s checks
# in its order, each a lookup of the port's facts (keyed by its tap) in the sets `_ps_elements`
# fills, so a port-up adds elements and no rule to the bridge table (a new rule makes the
# kernel validate the whole table: issue 18, docs/benchmarks.md). Exact (MAC . address) pairs
# are hash-set elements; an allowed-address pair's CIDR goes to an interval twin, looked up
# only when the exact one misses (libnftables reads an interval set's elements back on every
# change: a port-up of exact addresses never touches one). `meta mark set ... map` ends the
# rule when the key is missing (the lookup breaks): nothing is set, the next rule decides.
PS_SHARED = "ps"
_PS_ARP = "iifname . arp saddr ether . arp saddr ip"
_PS_SHARED_CHAIN = NftChain(PS_SHARED, (
    _rule("udp sport 67", "drop", "dhcp-server"),
    _rule("meta mark set iifname . ether saddr . ip saddr map @ps_mark", "accept", "mark"),
    _rule("meta mark set iifname . ether saddr . ip saddr map @ps_mark_net", "accept", "mark"),
    _rule("iifname . ether saddr != @ps_macs", "drop", "spoof-mac"),
    _rule(f"{_PS_ARP} != @ps_arp {_PS_ARP} != @ps_arp_net", "drop", "spoof-arp"),
    _rule("ether type arp", "accept", "arp"),
    _rule("ip saddr 0.0.0.0 udp sport 68 udp dport 67", "accept", "dhcp-client"),
    # a leased port's RENEW to its responder (`_ps_chain`): the ports in `ps_dhcp` only
    _rule("udp sport 68 udp dport 67 iifname . ether daddr @ps_dhcp", "accept", "dhcp-renew"),
    _rule("ether type ip", "drop", "spoof-ip"),
    _rule("ether type ip6", "drop", "spoof-ip6"),
    _rule("", "drop", "other")))
_IP4_KEY = "ifname . ether_addr . ipv4_addr"
# the shared chain's sets: (name, type, flags, kind), in the table's order
_PS_SETS = (("ps_mark", f"{_IP4_KEY} : mark", "", "map"), ("ps_mark_net", f"{_IP4_KEY} : mark", "interval", "map"),
            ("ps_macs", "ifname . ether_addr", "", "set"), ("ps_arp", _IP4_KEY, "", "set"),
            ("ps_arp_net", _IP4_KEY, "interval", "set"), ("ps_dhcp", "ifname . ether_addr", "", "set"))


def ps_chain_name(p: PortFilter) -> str:
    """The anti-spoofing chain a port's frames meet: its own `ps_<port>` when it has IPv6 pairs
    (the neighbour-discovery checks are raw payload matches, not set lookups, in nft 1.0.6),
    else the shared `ps`."""
    return f"ps_{p.ident}" if p.pairs6 else PS_SHARED


def _ps_elements(p: PortFilter) -> dict[str, frozenset[str]]:
    """A port's elements in the shared chain's sets (none for a port with its own chain)."""
    if p.pairs6:
        return {}
    tap, mark = f'"{p.tap}"', f"{p.index:#010x}"
    exact = [f"{tap} . {m} . {a}" for m, a in p.pairs if "/" not in a]
    nets = [f"{tap} . {m} . {a}" for m, a in p.pairs if "/" in a]
    return {"ps_mark": frozenset(f"{e} : {mark}" for e in exact), "ps_mark_net": frozenset(f"{e} : {mark}" for e in nets),
            "ps_macs": frozenset(f"{tap} . {m}" for m in p.macs),
            "ps_arp": frozenset([*exact, *(f"{tap} . {m} . 0.0.0.0" for m in p.macs)]),   # 0.0.0.0: address probes
            "ps_arp_net": frozenset(nets),
            "ps_dhcp": frozenset([f"{tap} . {p.dhcp_mac}"] if p.dhcp_mac else [])}


@functools.lru_cache(maxsize=8192)
def _mark_chain(profile: str, number: int) -> NftChain:
    """The out-mark chain of a security profile: mark high half = the profile's number (the
    low half, the sending port's index, kept). nft 1.0.6 refuses a map lookup as the operand of
    `or`, so the high half is a constant per chain; per profile (not per port), a port-up whose
    profile is on the host already adds no chain, only its `out_ports` element."""
    return NftChain(f"mk_{profile}", (
        _rule("", f"meta mark set meta mark and 0x0000ffff or {number << 16:#010x}", "mark"),))


def _mark_chains(numbers: Mapping[str, int]) -> list[NftChain]:
    return [_mark_chain(k, numbers[k]) for k in sorted(numbers)]


def _in_entries(numbers: Mapping[str, int]) -> frozenset[str]:
    """The `in_ports` map's entries: a profile's number in the mark's high half -> its chain."""
    return frozenset(f"{n << 16:#010x} : jump in_{k}" for k, n in numbers.items())


def _port_sg_chain(p: PortFilter, direction: str) -> NftChain:
    """The security-group chain of `p`'s profile in `direction` (the same object for every port of it)."""
    return _profile_chain(direction, p.stateful, bool(p.pairs6), p.groups)


@functools.lru_cache(maxsize=4096)
def _profile_chain(direction: str, stateful: bool, v6: bool, groups: tuple[str, ...]) -> NftChain:
    prefix, gprefix = ("in_", "gi_") if direction == "ingress" else ("eg_", "ge_")
    # Established and related packets were accepted by the base chain before the dispatch
    # (`_established`): a port chain sees only new, invalid and untracked packets.
    rules = []
    if stateful:
        rules.append(_rule("ct state invalid", "drop", "ct-invalid"))
    if direction == "ingress":
        rules.append(_rule("udp sport 67 udp dport 68", "accept", "dhcp-reply"))
        if v6:
            rules += [_rule(f"icmpv6 type {ND_INGRESS}", "accept", "nd"),
                      _rule("meta nfproto ipv6 udp sport 547 udp dport 546", "accept", "dhcp6-reply")]
    else:
        rules.append(_rule("udp sport 68 udp dport 67", "accept", "dhcp-request"))
        if v6:
            rules += [_rule(f"icmpv6 type {ND_EGRESS}", "accept", "nd"),
                      _rule("meta nfproto ipv6 udp sport 546 udp dport 547", "accept", "dhcp6-request")]
    rules += [_rule("", f"jump {gprefix}{_ident(g)}", "group:" + g) for g in groups]
    rules.append(_rule("", "drop", "default-drop"))
    return NftChain(prefix + sg_profile(stateful, v6, groups), tuple(rules))


@functools.lru_cache(maxsize=4096)
def _group_chain(g: GroupRules) -> NftChain:
    return NftChain(g.chain, tuple(_rule(r.match_text(), "accept", "sg:" + r.rule_id) for r in g.rules), ordered=False)


def _dispatch(key: str, name: str) -> tuple[NftRule, ...]:
    """The one rule of a dispatch base chain: a lookup in its verdict map."""
    return (_rule("", f"{key} vmap @{name}", "dispatch"),)


def _established(stateless_marks: Iterable[int]) -> NftRule:
    """The first rule of a forward base chain: established and related packets accepted
    before any per-port dispatch (one conntrack-state comparison per packet of a flow).

    Identical to the per-port rule it replaces: only packets from or to a stateful port are
    tracked (table `zone`), so a tracked packet whose mark names a port names a stateful one,
    whose chain would accept it first; a packet naming no port is accepted by the policy
    anyway. One exception, on the receiving side: a frame to a stateless port's MAC with a
    destination address that is not the port's is tracked when it comes from a stateful
    port; the ingress rule excludes the stateless ports' marks (`stateless_marks`), so their
    chains decide as before. Egress needs no exclusion: a stateless port's frames are never
    tracked (`stateless-egress`)."""
    marks = sorted(set(stateless_marks))
    match = "ct state established,related"
    if marks:
        match += f" meta mark and 0xffff0000 != {_set_text(f'{m:#010x}' for m in marks)}"
    return _rule(match, "accept", "ct-established")


@dataclasses.dataclass(frozen=True)
class _PortParts:
    """What one port adds to the tables: its own anti-spoofing chain (None: the shared one), its
    profile's two chains (shared with the other ports of the profile), and its elements in the
    bridge table's sets and maps (`pre_ports`, `out_ports`, the shared chain's) and in
    `eg_ports`."""

    ps: NftChain | None
    eg: NftChain
    in_: NftChain
    bridge: Mapping[str, frozenset[str]]
    eg_entry: str


@functools.lru_cache(maxsize=16384)
def _port_parts(p: PortFilter) -> _PortParts:
    # Memoized per filter (hashed once, `PortFilter.__hash__`): a render after a port-up makes
    # only the new port's chains and entries; the others' are these same objects.
    bridge = {"pre_ports": frozenset([f'"{p.tap}" : jump {ps_chain_name(p)}']),
              "out_ports": frozenset([f'"{p.tap}" : jump mk_{p.profile}']), **_ps_elements(p)}
    return _PortParts(_ps_chain(p) if p.pairs6 else None, _port_sg_chain(p, "egress"), _port_sg_chain(p, "ingress"),
                      bridge, f"{p.index:#010x} : jump eg_{p.profile}")


def _entries_map(name: str, key_type: str, entries: Iterable[str]) -> NftSet:
    """A dispatch map (key -> `jump chain`) from its `key : jump chain` entries."""
    return NftSet(name, f"{key_type} : verdict", frozenset(entries), "", "map")


_PS_SET_NAMES = ("pre_ports", "out_ports", *(x[0] for x in _PS_SETS))


def _ps_sets(elements: Mapping[str, frozenset[str]]) -> tuple[NftSet, ...]:
    """The bridge table's sets and maps with these elements (name -> elements), in its order."""
    return (_entries_map("pre_ports", "ifname", elements["pre_ports"]),
            _entries_map("out_ports", "ifname", elements["out_ports"]),
            *(NftSet(name, kind_type, elements[name], flags, kind) for name, kind_type, flags, kind in _PS_SETS))


HOST_TABLE = naming.HOST_TABLE
HOST_GUARD = 'iifname "vxb-*"'   # naming.BRIDGE_PREFIX: traffic a tenant bridge hands to the host itself
TAP_GUARD = f'iifname "{naming.TAP_PREFIX}*"'   # a VM's tap on no bridge (held, or not bound here yet)
CT_MACS = "ct_macs"               # MACs of local stateful ports: only frames from/to them are tracked
_PS_BASE = (NftChain("pre", _dispatch("iifname", "pre_ports"), "type filter hook prerouting priority -200; policy accept;"),
            NftChain("out", (*(_rule(m, "drop", "nd-underlay") for m in ND_UNDERLAY), *_dispatch("oifname", "out_ports")),
                     "type filter hook forward priority -100; policy accept;"))


def render(fw: Firewall) -> tuple[NftTable, NftTable, NftTable]:
    """The tables of `fw`: bridge anti-spoofing, inet security groups, and the host guard.

    Host guard: the bridges live in the host's own namespace, and with the kernel defaults the
    host answers ARP for ANY of its addresses on any interface, and accepts IP for them: a VM
    could ARP for the host's underlay address (a tenant may use that range) and reach the
    host's services. Nothing for the host arrives through a tenant bridge, so ARP (table arp)
    and IP (the `host` input chain) entering the host from a `vxb-` bridge are dropped. Bridged
    traffic and the bridge's own ARP suppression never pass these input hooks. The same holds
    for a VM's tap that is on no bridge: Nova creates it before the agent plugs it (a port not
    bound here yet, or held until its filters are loaded), and until then the VM's frames enter
    the host's own stack through it; so ARP and IP entering the host from a `tap` device are
    dropped too (a plugged tap's frames reach these hooks with the bridge as their device)."""
    # No mark reset on entry: frames reach a bridge with mark 0 (crossing a namespace scrubs
    # the mark; VXLAN decapsulation starts from the NIC's 0), and only ours set these bits.
    parts = [_port_parts(p) for p in fw.ports]
    numbers = fw.profile_numbers
    ps_maps = _ps_sets({k: frozenset().union(*(x.bridge.get(k, ()) for x in parts)) for k in _PS_SET_NAMES})
    ps_chains = [*_PS_BASE, _PS_SHARED_CHAIN, *_mark_chains(numbers), *(x.ps for x in parts if x.ps is not None)]
    # notrack first, and `accept` (ends this chain): a `ct zone set` before it would attach a
    # conntrack template, and `notrack` ignores packets that already have one.
    zone_rules = []
    stateless = [p for p in fw.ports if not p.stateful]
    if stateless:
        zone_rules.append(_rule(f"meta mark and 0x0000ffff {_set_text(f'{p.index:#x}' for p in stateless)}",
                                "notrack accept", "stateless-egress"))
        dst = [f'"{p.bridge}" . {a}' for p in stateless for _, a in p.pairs]
        if dst:
            zone_rules.append(_rule(f"iifname . ip daddr {_set_text(sorted(set(dst)))}", "notrack accept",
                                    "stateless-ingress"))
        dst6 = [f'"{p.bridge}" . {a}' for p in stateless for _, a in p.pairs6]
        if dst6:
            zone_rules.append(_rule(f"iifname . ip6 daddr {_set_text(sorted(set(dst6)))}", "notrack accept",
                                    "stateless-ingress6"))
    # Conntrack only where a rule needs state: a bridged frame neither from nor to a MAC of a
    # local stateful port (port security off, routers, DHCP, VXLAN to VXLAN, stateless ports)
    # is not tracked (issue 18: conntrack costs throughput). Tracking is decided by MAC, the
    # only thing known here for the receiving side (the bridge has not chosen the port yet):
    # a frame to a stateful port carries its MAC (or a pair MAC, in the set too); broadcast and
    # multicast to it are untracked, and its ingress rules decide them as they would a new flow.
    # The MAC lookups come before the bridge-name match: a frame of a tracked flow leaves the
    # rule at its first lookup without copying the device name.
    zone_rules.append(_rule(f"ether saddr != @{CT_MACS} ether daddr != @{CT_MACS} {HOST_GUARD}", "notrack accept",
                            "untracked"))
    if fw.zones:
        body = ", ".join(f'"{b}" : {z}' for b, z in fw.zones)
        zone_rules.append(_rule("", f"ct zone set iifname map {{ {body} }}", "zones"))
    guard = (_rule(HOST_GUARD, "drop", "host-guard"), _rule(TAP_GUARD, "drop", "tap-guard"))
    sg_chains = [NftChain("host", guard,
                          "type filter hook input priority 0; policy accept;"),
                 NftChain("zone", tuple(zone_rules), "type filter hook prerouting priority raw; policy accept;"),
                 NftChain("egress", (_established(()), *_dispatch("meta mark and 0x0000ffff", "eg_ports")),
                          "type filter hook forward priority 0; policy accept;"),
                 NftChain("ingress", (_established([numbers[p.profile] << 16 for p in stateless]),
                                      *_dispatch("meta mark and 0xffff0000", "in_ports")),
                          "type filter hook forward priority 10; policy accept;")]
    sg_maps = (_entries_map("eg_ports", "mark", (x.eg_entry for x in parts)),
               _entries_map("in_ports", "mark", _in_entries(numbers)))
    sg_chains += [_group_chain(g) for g in fw.groups]
    sg_chains += _profile_chains({x.eg.name[3:]: (x.eg, x.in_) for x in parts})
    sets = tuple(_member_set(set_name(g), "ipv4_addr", fw.members.get(g, frozenset()))
                 for g in sorted({r.remote_group for g in fw.groups for r in g.rules
                                  if r.remote_group and r.ethertype == "IPv4"}))
    sets += tuple(_member_set(set_name6(g), "ipv6_addr", fw.members6.get(g, frozenset()))
                  for g in sorted({r.remote_group for g in fw.groups for r in g.rules
                                   if r.remote_group and r.ethertype == "IPv6"}))
    sets += (NftSet(CT_MACS, "ether_addr", frozenset(m for p in fw.ports if p.stateful for m in p.macs), ""),)
    sets += sg_maps
    host = NftTable(*HOST_TABLE, (NftChain("in", guard,
                                           "type filter hook input priority 0; policy accept;"),))
    return (NftTable(*PS_TABLE, tuple(ps_chains), ps_maps), NftTable(*SG_TABLE, tuple(sg_chains), sets), host)


def _profile_chains(profiles: Mapping[str, tuple[NftChain, NftChain]]) -> list[NftChain]:
    """The profiles' chain pairs (profile -> (egress, ingress)) in the tables' order: by profile."""
    return [c for k in sorted(profiles) for c in profiles[k]]


_SPLICE_MAX = 8       # changed ports up to which `render_update` splices (beyond: `render`)


def _splice(chains: tuple[NftChain, ...], start: int, width: int, old: tuple[PortFilter, ...],
            gone: Iterable[PortFilter], new: tuple[PortFilter, ...], came: Iterable[tuple[PortFilter, tuple[NftChain, ...]]]
            ) -> tuple[NftChain, ...]:
    """`chains` (`width` chains per port from `start`, in `old`'s order) without the ports
    `gone`, with the ports `came` (and their chains) at their places in `new`."""
    out = list(chains)
    for i in sorted((_place(old, p) for p in gone), reverse=True):
        del out[start + width * i:start + width * (i + 1)]
    for j, part in sorted(((_place(new, p), c) for p, c in came), key=lambda x: x[0]):
        out[start + width * j:start + width * j] = part
    return tuple(out)


def _place(ports: tuple[PortFilter, ...], p: PortFilter) -> int:
    """The index of `p` in `ports` (sorted by port id, as `Firewall.ports`)."""
    i = bisect.bisect_left(ports, p.port_id, key=_port_id)
    if i == len(ports) or ports[i] is not p:
        raise ValueError(f"{p.port_id} not in the ports")
    return i


_port_id = operator.attrgetter("port_id")


def render_update(prev: Firewall, fw: Firewall) -> tuple[NftTable, NftTable, NftTable] | None:
    """`render(fw)` from `prev`'s rendering (if it has one) when the two differ only in a few
    stateful ports' filters and in member sets (the same groups and zones): the changed ports'
    chains and set elements are taken out and put in, the changed member sets made again, the
    rest copied as it is (a port-up renders only its own port; issue 18). None when anything
    else changed (or a profile's number would change): `render` the whole."""
    tables: tuple[NftTable, NftTable, NftTable] | None = prev.__dict__.get("tables")
    if tables is None or prev.groups != fw.groups or prev.zones != fw.zones:
        return None
    old_ids, new_ids = set(map(id, prev.ports)), set(map(id, fw.ports))     # filters kept are the same objects
    gone = [p for p in prev.ports if id(p) not in new_ids] if len(old_ids - new_ids) else []
    came = [p for p in fw.ports if id(p) not in old_ids] if len(new_ids - old_ids) else []
    members = {**{set_name(g): (m, prev.members.get(g), "ipv4_addr") for g, m in fw.members.items()},
               **{set_name6(g): (m, prev.members6.get(g), "ipv6_addr") for g, m in fw.members6.items()}}
    changed = {k for k, (m, before, _) in members.items() if m is not before}    # a member set, elements
    if not gone and not came and not changed:
        if "profile_numbers" in prev.__dict__:
            fw.__dict__["profile_numbers"] = prev.profile_numbers      # the same ports: not counted again
        return tables
    if len(gone) + len(came) > _SPLICE_MAX or not all(p.stateful for p in (*gone, *came)):
        return None           # the zone and dispatch base chains name the stateless ports
    gone_macs = {m for p in gone for m in p.macs}
    came_macs = {m for p in came for m in p.macs}
    if not gone_macs <= came_macs:
        return None           # a MAC left `ct_macs` unless another port has it too: render the whole
    ps, sg, host = tables
    parts = {p: _port_parts(p) for p in (*gone, *came)}
    # The security-group chains are per profile: a profile goes with its last port, comes with
    # its first; a port of a profile already there changes no chain (its map elements only).
    start = 4 + len(fw.groups)
    held = {sg.chains[i].name[3:]: (sg.chains[i], sg.chains[i + 1]) for i in range(start, len(sg.chains), 2)}
    came_profiles = {p.profile: (parts[p].eg, parts[p].in_) for p in came}
    added = {k: v for k, v in came_profiles.items() if k not in held}
    left = {p.profile for p in gone} - came_profiles.keys()
    removed = left - {q.profile for q in fw.ports} if left else set()
    before_numbers = prev.profile_numbers
    numbers = before_numbers
    sg_chains = sg.chains
    if added or removed:
        profiles = {k: v for k, v in held.items() if k not in removed} | added
        numbers = mark_indexes(profiles)
        if any(before_numbers.get(k, n) != n for k, n in numbers.items()):
            return None       # a collision probed differently: the marks of kept profiles change
        sg_chains = (*sg.chains[:start], *_profile_chains(profiles))
    fw.__dict__["profile_numbers"] = numbers

    # The bridge table: the shared chain, the profiles' mark chains, then the own chains of the
    # ports with IPv6 pairs (in port order).
    mk_start = len(_PS_BASE) + 1
    ps_chains = (*ps.chains[:mk_start], *_mark_chains(numbers), *ps.chains[mk_start + len(before_numbers):])
    own_gone, own_came = [p for p in gone if p.pairs6], [p for p in came if p.pairs6]
    if own_gone or own_came:
        ps_chains = _splice(ps_chains, mk_start + len(numbers), 1, tuple(p for p in prev.ports if p.pairs6), own_gone,
                            tuple(p for p in fw.ports if p.pairs6), ((p, (parts[p].ps,)) for p in own_came))

    def elements(s: NftSet, of: Callable[[_PortParts], Collection[str]]) -> NftSet:
        kept = s.elements.difference(*(of(parts[p]) for p in gone)) if gone else s.elements
        return dataclasses.replace(s, elements=kept.union(*(of(parts[p]) for p in came)))

    ps_sets = tuple(elements(s, lambda x, k=s.name: x.bridge.get(k, ())) for s in ps.sets)
    sg_sets = tuple(elements(s, lambda x: (x.eg_entry,)) if s.name == "eg_ports" else
                    dataclasses.replace(s, elements=_in_entries(numbers)) if s.name == "in_ports" and numbers is not before_numbers else
                    dataclasses.replace(s, elements=s.elements | came_macs) if s.name == CT_MACS and came_macs else
                    _member_set(s.name, members[s.name][2], members[s.name][0]) if s.name in changed else s
                    for s in sg.sets)
    out = (NftTable(ps.family, ps.name, ps_chains, ps_sets), NftTable(sg.family, sg.name, sg_chains, sg_sets))
    mk_gone = [f"mk_{k}" for k in sorted(removed)]
    mk_came = [_mark_chain(k, numbers[k]) for k in sorted(added)]
    ps_gone = [*mk_gone, *(ps_chain_name(p) for p in own_gone)]
    ps_came = [*mk_came, *(parts[p].ps for p in own_came)]
    sg_gone = [c.name for k in sorted(removed) for c in held[k]]
    sg_came = [c for k in sorted(added) for c in added[k]]
    for before, after, went, new in ((ps, out[0], ps_gone, ps_came), (sg, out[1], sg_gone, sg_came)):
        # the only chains that differ from `before`'s (`nft_driver.diff_table` walks these alone);
        # a weak reference: a strong one would keep every rendering since the start alive
        after.__dict__["changed_from"] = (weakref.ref(before), tuple(dict.fromkeys([*went, *(c.name for c in new)])))
        if "_chains" in before.__dict__:
            # its chain map from the last one's (a C copy, then the changed chains; a chain that
            # changed keeps its place, a new one goes last): for `diff_table`
            chains = dict(before.chain_map())
            for name in went:
                chains.pop(name, None)
            for c in new:
                chains[c.name] = c
            after.__dict__["_chains"] = chains
        if "base_chains" in before.__dict__:
            after.__dict__["base_chains"] = before.base_chains      # never a port's chain
    return (*out, host)


def table_text(t: NftTable) -> str:
    """The whole table as `nft -f` input that (re)creates it in one transaction."""
    lines = [f"add table {t.family} {t.name}", f"delete table {t.family} {t.name}", f"add table {t.family} {t.name}"]
    lines += table_body(t)
    return "\n".join(lines) + "\n"


def table_body(t: NftTable) -> list[str]:
    """Commands creating the sets, chains and rules of `t` in an existing empty table (chains
    before set and map elements: a map element jumps to a chain, which must exist)."""
    lines = [f"add {s.kind} {t.family} {t.name} {s.name} {s.declaration()}" for s in t.sets]
    for c in t.chains:
        lines.append(f"add chain {t.family} {t.name} {c.name}" + (f" {{ {c.hook} }}" if c.hook else ""))
    lines += [f"add element {t.family} {t.name} {s.name} {_set_text(s.elements)}" for s in t.sets if s.elements]
    for c in t.chains:
        lines += [f"add rule {t.family} {t.name} {c.name} {r.text}" for r in c.rules]
    return lines


# --- evaluation ("which rule decides") ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Packet:
    """An IPv4 or IPv6 packet as seen at a port (for `decide`)."""

    src: str
    dst: str
    protocol: int = 6
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    ct_state: str = "new"             # new | established | related | invalid | untracked


def _rule_matches(r: SgRule, pkt: Packet, members: Mapping[str, frozenset[str]]) -> bool:
    remote = ipaddress.ip_address(pkt.src if r.direction == "ingress" else pkt.dst)
    if remote.version != (6 if r.ethertype == "IPv6" else 4):
        return False
    if r.remote_cidr and remote not in ipaddress.ip_network(r.remote_cidr):
        return False
    if r.remote_group and not any(remote in ipaddress.ip_network(a) for a in members.get(r.remote_group, ())):
        return False
    if r.protocol == r.icmp_proto and r.icmp_type is not None:
        return (pkt.protocol == r.icmp_proto and pkt.icmp_type == r.icmp_type
                and (r.icmp_code is None or pkt.icmp_code == r.icmp_code))
    if r.protocol is not None:
        if pkt.protocol != r.protocol:
            return False
        if r.protocol in PORT_PROTOCOLS and r.port_min is not None:
            hi = r.port_max if r.port_max is not None else r.port_min
            return pkt.dport is not None and r.port_min <= pkt.dport <= hi
    return True


def decide(fw: Firewall, port_id: str, direction: str, pkt: Packet) -> tuple[str, str]:
    """(verdict, deciding rule identity) of the security groups of local port `port_id` for
    `pkt` leaving (`egress`) or reaching (`ingress`) it; identities are the counter comments'
    (`ct-established`, `sg:<rule id>`, `default-drop`, `unfiltered`...)."""
    p = fw.port(port_id)
    if p is None:
        return "accept", "unfiltered"
    if p.stateful and pkt.ct_state in ("established", "related"):
        return "accept", "ct-established"
    if p.stateful and pkt.ct_state == "invalid":
        return "drop", "ct-invalid"
    if pkt.protocol == 17 and (pkt.sport, pkt.dport) == ((67, 68) if direction == "ingress" else (68, 67)):
        return "accept", "dhcp-reply" if direction == "ingress" else "dhcp-request"
    v6 = ipaddress.ip_address(pkt.src).version == 6 and bool(p.pairs6)    # ND/DHCPv6: ports with IPv6 only
    if v6 and pkt.protocol == ICMPV6 and pkt.icmp_type in (ND_INGRESS_TYPES if direction == "ingress" else ND_EGRESS_TYPES):
        return "accept", "nd"
    if v6 and pkt.protocol == 17 and (pkt.sport, pkt.dport) == ((547, 546) if direction == "ingress" else (546, 547)):
        return "accept", "dhcp6-reply" if direction == "ingress" else "dhcp6-request"
    by_group = {(g.group_id, g.direction): g for g in fw.groups}
    members = {**fw.members, **{g: fw.members.get(g, frozenset()) | m for g, m in fw.members6.items()}}
    for gid in p.groups:
        for r in by_group[(gid, direction)].rules:
            if _rule_matches(r, pkt, members):
                return "accept", "sg:" + r.rule_id
    return "drop", "default-drop"


def _in_pairs(p: PortFilter, mac: str, src: str) -> bool:
    addr = ipaddress.ip_address(src)
    pairs = p.pairs6 if addr.version == 6 else p.pairs
    return any(m == mac and addr in ipaddress.ip_network(a, strict=False) for m, a in pairs)


RA_GUARD_TYPES = frozenset({134, 137})                  # router advertisement, redirect
V6_UNSPECIFIED_TYPES = frozenset({135, 131, 143, 132})  # DAD probe, MLD reports and done


def port_security(fw: Firewall, port_id: str, src_mac: str, pkt: Packet, dst_mac: str = "") -> tuple[str, str]:
    """(verdict, deciding rule identity) of the port-security chain of local port `port_id` for
    the IPv4 or IPv6 frame `pkt` it sends from `src_mac` to `dst_mac`, after DHCP steering (a
    leased port's 68 -> 67 frames go to its network's responder MAC), in the chain's order:
    `dhcp-server`, `mark` (its own MAC . IPv4 address); for a port with IPv6 pairs
    `dhcp6-server`, `ra-guard` (advertisements and redirects) and `mark6` (its own MAC . IPv6
    address or prefix, link-locals included); then `spoof-mac`, `dhcp-client` (from 0.0.0.0),
    `dhcp-renew`, `v6-unspecified` (DAD and MLD from ::), `spoof-ip` / `spoof-ip6`;
    `unfiltered` for a port without the chain. The neighbour-discovery payload checks
    (`spoof-na-target`...) look at a target and options a `Packet` does not carry: an NS/NA
    from its own pair is `mark6` here."""
    p = fw.port(port_id)
    if p is None:
        return "accept", "unfiltered"
    v6 = ipaddress.ip_address(pkt.src).version == 6
    udp = (pkt.sport, pkt.dport) if pkt.protocol == 17 else (None, None)
    client = udp == (68, 67)
    if client and p.dhcp_mac:
        dst_mac = p.dhcp_mac                   # steered before the chain (table vxnet_dhcp)
    if udp[0] == 67:
        return "drop", "dhcp-server"
    if not v6 and _in_pairs(p, src_mac, pkt.src):
        return "accept", "mark"
    if p.pairs6:
        if udp[0] == 547:
            return "drop", "dhcp6-server"
        if v6 and pkt.protocol == ICMPV6 and pkt.icmp_type in RA_GUARD_TYPES:
            return "drop", "ra-guard"
        if v6 and _in_pairs(p, src_mac, pkt.src):
            return "accept", "mark6"
    if src_mac not in p.macs:
        return "drop", "spoof-mac"
    if client and pkt.src == "0.0.0.0":
        return "accept", "dhcp-client"
    if client and p.dhcp_mac and dst_mac == p.dhcp_mac:
        return "accept", "dhcp-renew"
    if (v6 and p.pairs6 and ipaddress.ip_address(pkt.src) == ipaddress.IPv6Address("::")
            and pkt.protocol == ICMPV6 and pkt.icmp_type in V6_UNSPECIFIED_TYPES):
        return "accept", "v6-unspecified"
    return "drop", "spoof-ip6" if v6 else "spoof-ip"
