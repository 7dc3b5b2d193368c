"""The bridge table `vxnet_ps`: each local port's anti-spoofing checks and the destination
port's profile mark (pure; the model in `compute/firewall_model.py`, the whole firewall in
`compute/firewall.py`).

Contract: `ps_table(elements, numbers)` is the table of the ports whose elements (`ps_elements`)
are given; a port's elements depend on its `PortFilter` alone, so a port-up makes only its own
(`firewall._port_parts`, memoized). The table's chains do not depend on its ports (the mark
chains aside: one per security profile).

- `pre` (prerouting -200): `iifname vmap @pre_ports` -> the anti-spoofing chain of each local
  port with port security: `ps` for a port without IPv6 pairs, `ps6` for a port with them
  (`ps_chain_name`); both shared, each check a lookup of the port's facts keyed by its tap in
  named sets (`ps_elements`). The checks, in this order:
  any `udp sport 67` dropped (a VM is never a DHCP server); IPv4 whose (MAC . source IP) is
  in the allowed pairs: mark low 16 bits = the port's index, accept (`meta mark set iifname .
  ether saddr . ip saddr map @ps_mark`, the pairs' CIDRs in the interval twin `ps_mark_net`);
  `ps6` only (docs/ipv6-dataplane.md): DHCPv6 server frames and router
  advertisements/redirects dropped (guards); neighbour advertisements, DAD probes and ND
  link-layer options checked against the port's IPv6 pairs (`ps_mark6`, `ps_mark6_net`) and
  MACs (`ps_lladdr`), raw payload keys; (MAC . IPv6 source) in the IPv6 pairs (fixed IPs,
  pairs, EUI-64 link-locals of the allowed MACs): marked, accepted. Then: source MAC not in
  {port MAC, pair MACs}: drop (`ps_macs`); ARP whose sender (MAC . IP) is not an allowed pair
  (or 0.0.0.0, address probes): drop (`ps_arp`, `ps_arp_net`); ARP accepted; DHCP client
  frames (0.0.0.0:68 -> :67) accepted; on a *leased* port (`dhcp.leased`: its tap is
  steered), client->server DHCP (68 -> 67) to its network's responder MAC accepted whatever
  the source IP (a RENEW/REBIND from an address the port no longer holds: it can only reach
  the local responder; `ps_dhcp`); `ps6` only: DAD/MLD from `::` accepted; other IPv4
  (spoofed source) dropped, other IPv6 dropped. Anything else (VLAN...) dropped.
  So the port-up of any port adds no rule and no chain to this table, only elements (a new
  rule makes the kernel validate the whole table, whose cost grows with its chains: issue 18,
  docs/benchmarks.md).
- `out` (forward -100, before br_netfilter): ND/RA/MLD multicast and any RS/RA/redirect
  towards a VXLAN port dropped (never on the underlay); `oifname vmap @out_ports` ->
  `mk_<profile>`: set mark high 16 bits = the number of the destination port's security
  profile (`Firewall.profile_numbers`), the low half kept. One such chain per profile used
  on the host (nft 1.0.6 refuses `or` with a map lookup as its operand, so the constant is in
  a chain): what the inet `ingress` dispatch needs is the profile's chain, not the port.
- The dispatch tables are named verdict maps, not inline vmaps: a port coming or going is one
  element per map (plus its profile's chain if it is the profile's first or last port), so
  the transaction of a port-up does not grow with the number of ports on the host (the inline
  form rewrote every port's entry).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping

from vxnet.compute import naming
from vxnet.compute.firewall_model import PortFilter
from vxnet.compute.nft_table import NftChain, NftSet, NftTable, dispatch, entries_map, nft_rule

PS_TABLE = naming.PS_TABLE

# ND/RA/MLD that must never reach the underlay: multicast ND, and router solicitations,
# advertisements and redirects in any form (answers come from each host's own responder).
# The ICMPv6 type is matched before the output port: every other frame leaves the rule at its
# first comparison (ether type), without copying the port's name.
_TO_VXLAN = f'oifname "{naming.VXLAN_PREFIX}*"'
ND_UNDERLAY = (f"icmpv6 type {{ nd-router-solicit, nd-router-advert, nd-redirect }} {_TO_VXLAN}",
               ("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, mld-listener-query, mld-listener-report, "
                f"mld2-listener-report, mld-listener-done }} ether daddr & ff:ff:00:00:00:00 == 33:33:00:00:00:00 "
                f"{_TO_VXLAN}"))


def _raw6(addr: str) -> str:
    """An IPv6 address or prefix as the 128-bit integer (range) of a raw payload key, written as
    nft lists it (no leading zeros), so a listing compares equal (`nft_image.norm_element`)."""
    n = ipaddress.IPv6Network(addr, strict=False)
    lo, hi = int(n.network_address), int(n.broadcast_address)
    return f"{lo:#x}" if lo == hi else f"{lo:#x}-{hi:#x}"


def _raw_mac(mac: str) -> str:
    return f"{int(mac.replace(':', ''), 16):#x}"


# The checks of the shared chains, in order; `ps6` (the ports with IPv6 pairs) is `ps` with the
# IPv6 checks inserted. Each looks the port's facts up by its tap in the sets `ps_elements`
# fills, so a port-up adds elements and no rule or chain to the bridge table (a new chain makes
# the kernel validate the whole table, whose cost grows with its chains: issue 18,
# docs/benchmarks.md). Exact (MAC . address) pairs are hash-set elements; an allowed-address
# pair's CIDR goes to an interval twin, looked up only when the exact one misses (libnftables
# reads an interval set's elements back on every change: a port-up of exact addresses never
# touches one). `meta mark set ... map` ends the rule when the key is missing (the lookup
# breaks): nothing is set, the next rule decides.
_PS_ARP = "iifname . arp saddr ether . arp saddr ip"
_V4_HEAD = (nft_rule("udp sport 67", "drop", "dhcp-server"),
            nft_rule("meta mark set iifname . ether saddr . ip saddr map @ps_mark", "accept", "mark"),
            nft_rule("meta mark set iifname . ether saddr . ip saddr map @ps_mark_net", "accept", "mark"))
_V4_TAIL = (nft_rule("iifname . ether saddr != @ps_macs", "drop", "spoof-mac"),
            nft_rule(f"{_PS_ARP} != @ps_arp {_PS_ARP} != @ps_arp_net", "drop", "spoof-arp"),
            nft_rule("ether type arp", "accept", "arp"),
            nft_rule("ip saddr 0.0.0.0 udp sport 68 udp dport 67", "accept", "dhcp-client"),
            # a leased port's RENEW to its responder: the ports in `ps_dhcp` only. A leased tap
            # is steered (table vxnet_dhcp, before this chain): every 68 -> 67 frame from it has
            # the responder MAC as destination, which only the local responder holds, so a
            # RENEW from an address the port no longer holds reaches nothing else.
            nft_rule("udp sport 68 udp dport 67 iifname . ether daddr @ps_dhcp", "accept", "dhcp-renew"))
_END = (nft_rule("ether type ip", "drop", "spoof-ip"),
        nft_rule("ether type ip6", "drop", "spoof-ip6"),
        nft_rule("", "drop", "other"))
# Neighbour discovery (nft 1.0.6 has no `icmpv6 taddr`): the target is bits 64-191 of the ICMPv6
# header, the first option's type bit 192 and MAC bit 208 (64 and 80 in a router solicitation),
# raw payload matches, so their sets are declared `typeof` with the same raw fields (nft refuses
# a lookup whose key types differ: an `ipv6_addr` set for a raw 128-bit key, or `ps_macs`'s
# `ether_addr` for a raw MAC). The (MAC . IPv6 address) pairs are one map, `ps_mark6`, keyed by
# the raw source (`@nh,64,128` is `ip6 saddr`, and nft lists it so): the target checks look
# their key up in it as a set, the source check maps it to the port's mark.
_TARGET = "iifname . ether saddr . @th,64,128"
_OWN_TARGET = f"{_TARGET} != @ps_mark6 {_TARGET} != @ps_mark6_net"
_NS_NA = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }"
_SOURCE6 = "ether type ip6 meta mark set iifname . ether saddr . @nh,64,128 map"
_V6 = (nft_rule("udp sport 547", "drop", "dhcp6-server"),       # never a DHCPv6 server
       nft_rule("icmpv6 type { nd-router-advert, nd-redirect }", "drop", "ra-guard"),   # never a router
       # a neighbour advertisement's target, and a duplicate address detection probe's (source
       # ::), must be one of its own (MAC . address) pairs: a VM cannot claim, or probe for,
       # another's address
       nft_rule(f"icmpv6 type nd-neighbor-advert {_OWN_TARGET}", "drop", "spoof-na-target"),
       nft_rule(f"ip6 saddr :: icmpv6 type nd-neighbor-solicit {_OWN_TARGET}", "drop", "spoof-dad-target"),
       # an NS/NA is 24 bytes, or 32 with one option; a link-layer address option (source or
       # target) must carry one of its MACs, and so must a router solicitation's: a VM cannot
       # point its neighbours' caches at another MAC
       nft_rule(f"{_NS_NA} ip6 length != {{ 24, 32 }}", "drop", "spoof-nd-layout"),
       nft_rule(f"{_NS_NA} ip6 length 32 @th,192,8 {{ 1, 2 }} iifname . @th,208,48 != @ps_lladdr", "drop",
                "spoof-nd-lladdr"),
       nft_rule("icmpv6 type nd-router-solicit ip6 length != { 8, 16 }", "drop", "spoof-rs-layout"),
       nft_rule("icmpv6 type nd-router-solicit ip6 length 16 @th,64,8 1 iifname . @th,80,48 != @ps_lladdr", "drop",
                "spoof-rs-lladdr"),
       # (MAC . IPv6 source) in its pairs, link-locals included: marked, accepted
       nft_rule(f"{_SOURCE6} @ps_mark6", "accept", "mark6"),
       nft_rule(f"{_SOURCE6} @ps_mark6_net", "accept", "mark6"))
# Duplicate address detection and MLD reports before the host has an address (source ::; a
# probe's target was checked above). Not marked: ND is always allowed anyway.
_V6_UNSPECIFIED = nft_rule("ip6 saddr :: icmpv6 type { nd-neighbor-solicit, mld-listener-report, "
                           "mld2-listener-report, mld-listener-done }", "accept", "v6-unspecified")
PS_SHARED, PS_SHARED6 = "ps", "ps6"
PS_SHARED_CHAINS = (NftChain(PS_SHARED, (*_V4_HEAD, *_V4_TAIL, *_END)),
                    NftChain(PS_SHARED6, (*_V4_HEAD, *_V6, *_V4_TAIL, _V6_UNSPECIFIED, *_END)))
_IP4_KEY = "ifname . ether_addr . ipv4_addr"
_IP6_KEY = "typeof iifname . ether saddr . @nh,64,128 : meta mark"
# the shared chains' sets: (name, type, flags, kind), in the table's order
_PS_SETS = (("ps_mark", f"{_IP4_KEY} : mark", "", "map"), ("ps_mark_net", f"{_IP4_KEY} : mark", "interval", "map"),
            ("ps_macs", "ifname . ether_addr", "", "set"), ("ps_arp", _IP4_KEY, "", "set"),
            ("ps_arp_net", _IP4_KEY, "interval", "set"), ("ps_dhcp", "ifname . ether_addr", "", "set"),
            ("ps_mark6", _IP6_KEY, "", "map"), ("ps_mark6_net", _IP6_KEY, "interval", "map"),
            ("ps_lladdr", "typeof iifname . @th,208,48", "", "set"))


def ps_chain_name(p: PortFilter) -> str:
    """The anti-spoofing chain a port's frames meet: `ps6` when it has IPv6 pairs, else `ps`."""
    return PS_SHARED6 if p.pairs6 else PS_SHARED


def ps_elements(p: PortFilter) -> dict[str, frozenset[str]]:
    """A port's elements in the shared chains' sets (its IPv6 sets' only with IPv6 pairs)."""
    tap, mark = f'"{p.tap}"', f"{p.index:#010x}"
    exact = [f"{tap} . {m} . {a}" for m, a in p.pairs if "/" not in a]
    nets = [f"{tap} . {m} . {a}" for m, a in p.pairs if "/" in a]
    out = {"ps_mark": frozenset(f"{e} : {mark}" for e in exact), "ps_mark_net": frozenset(f"{e} : {mark}" for e in nets),
           "ps_macs": frozenset(f"{tap} . {m}" for m in p.macs),
           "ps_arp": frozenset([*exact, *(f"{tap} . {m} . 0.0.0.0" for m in p.macs)]),   # 0.0.0.0: address probes
           "ps_arp_net": frozenset(nets),
           "ps_dhcp": frozenset([f"{tap} . {p.dhcp_mac}"] if p.dhcp_mac else [])}
    if p.pairs6:
        out["ps_mark6"] = frozenset(f"{tap} . {m} . {_raw6(a)} : {mark}" for m, a in p.pairs6 if "/" not in a)
        out["ps_mark6_net"] = frozenset(f"{tap} . {m} . {_raw6(a)} : {mark}" for m, a in p.pairs6 if "/" in a)
        out["ps_lladdr"] = frozenset(f"{tap} . {_raw_mac(m)}" for m in p.macs)
    return out


@functools.lru_cache(maxsize=8192)
def mark_chain(profile: str, number: int) -> NftChain:
    """The out-mark chain of a security profile: mark high half = the profile's number (the
    low half, the sending port's index, kept). nft 1.0.6 refuses a map lookup as the operand of
    `or`, so the high half is a constant per chain; per profile (not per port), a port-up whose
    profile is on the host already adds no chain, only its `out_ports` element."""
    return NftChain(f"mk_{profile}", (
        nft_rule("", f"meta mark set meta mark and 0x0000ffff or {number << 16:#010x}", "mark"),))


def mark_chains(numbers: Mapping[str, int]) -> list[NftChain]:
    return [mark_chain(k, numbers[k]) for k in sorted(numbers)]


_PS_SET_NAMES = ("pre_ports", "out_ports", *(x[0] for x in _PS_SETS))


def _ps_sets(elements: Mapping[str, frozenset[str]]) -> tuple[NftSet, ...]:
    """The bridge table's sets and maps with these elements (name -> elements), in its order."""
    return (entries_map("pre_ports", "ifname", elements["pre_ports"]),
            entries_map("out_ports", "ifname", elements["out_ports"]),
            *(NftSet(name, kind_type, elements[name], flags, kind) for name, kind_type, flags, kind in _PS_SETS))


PS_BASE = (NftChain("pre", dispatch("iifname", "pre_ports"), "type filter hook prerouting priority -200; policy accept;"),
           NftChain("out", (*(nft_rule(m, "drop", "nd-underlay") for m in ND_UNDERLAY), *dispatch("oifname", "out_ports")),
                    "type filter hook forward priority -100; policy accept;"))


def ps_table(elements: Iterable[Mapping[str, frozenset[str]]], numbers: Mapping[str, int]) -> NftTable:
    """The bridge table: the base chains, the shared chains, the mark chains of the profiles
    (`numbers`: profile -> number); its sets and maps hold the ports' `elements` (one mapping
    of set name -> elements per port)."""
    elements = list(elements)
    maps = _ps_sets({k: frozenset().union(*(e.get(k, ()) for e in elements)) for k in _PS_SET_NAMES})
    return NftTable(*PS_TABLE, (*PS_BASE, *PS_SHARED_CHAINS, *mark_chains(numbers)), maps)
