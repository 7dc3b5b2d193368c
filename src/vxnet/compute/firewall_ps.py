"""The bridge table `vxnet_ps`: each local port's anti-spoofing checks and the destination
port's profile mark (pure; the model in `compute/firewall_model.py`, the whole firewall in
`compute/firewall.py`).

Contract: `ps_table(elements, numbers, own)` is the table of the ports whose parts
(`ps_elements`, `ps_chain`) are given; a port's parts depend on its `PortFilter` alone, so a
port-up makes only its own (`firewall._port_parts`, memoized).

- `pre` (prerouting -200): `iifname vmap @pre_ports` -> the anti-spoofing chain of each local
  port with port security: the shared `ps` for a port without IPv6 pairs, its own
  `ps_<port>` for a port with them (`ps_chain_name`). The checks, in this order (`ps_chain`;
  `ps` the same with the port's facts looked up by its tap in named sets, `ps_elements`):
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
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping

from vxnet.compute import naming
from vxnet.compute.firewall_model import PortFilter
from vxnet.compute.nft_table import NftChain, NftRule, NftSet, NftTable, dispatch, entries_map, nft_rule, set_text

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
    pairs = set_text(f"{m} . {_raw6(a)}" for m, a in p.pairs6)
    macs = set_text(_raw_mac(m) for m in p.macs)
    both = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }"
    return [nft_rule(f"icmpv6 type nd-neighbor-advert ether saddr . @th,64,128 != {pairs}", "drop", "spoof-na-target"),
            nft_rule(f"ip6 saddr :: icmpv6 type nd-neighbor-solicit ether saddr . @th,64,128 != {pairs}", "drop",
                  "spoof-dad-target"),
            nft_rule(f"{both} ip6 length != {{ 24, 32 }}", "drop", "spoof-nd-layout"),
            nft_rule(f"{both} ip6 length 32 @th,192,8 {{ 1, 2 }} @th,208,48 != {macs}", "drop", "spoof-nd-lladdr"),
            nft_rule("icmpv6 type nd-router-solicit ip6 length != { 8, 16 }", "drop", "spoof-rs-layout"),
            nft_rule(f"icmpv6 type nd-router-solicit ip6 length 16 @th,64,8 1 @th,80,48 != {macs}", "drop",
                  "spoof-rs-lladdr")]


@functools.lru_cache(maxsize=8192)
def ps_chain(p: PortFilter) -> NftChain:
    # A port with one MAC (and one IPv4 address) gets its checks as plain comparisons, not
    # anonymous sets: the kernel names each new anonymous set of a transaction after scanning
    # the table's sets, so a port-up's three sets cost more with every port on the host
    # (issue 18; bench/nft_portup_bench.py). Several MACs or addresses keep their sets.
    one_mac = len(p.macs) == 1
    macs = p.macs[0] if one_mac else set_text(p.macs)
    pairs = [f"{m} . {a}" for m, a in p.pairs]
    if one_mac:
        # (MAC . address) pairs of one MAC: the MAC, then the address (or 0.0.0.0, a probe)
        addrs = [a for _, a in p.pairs] + ["0.0.0.0"]
        arp = [nft_rule(f"arp saddr ether != {macs}", "drop", "spoof-arp"),
               nft_rule(" ".join(f"arp saddr ip != {a}" for a in addrs) if len(addrs) <= 2
                     else f"arp saddr ip != {set_text(addrs)}", "drop", "spoof-arp")]
    else:
        arp = [nft_rule(f"arp saddr ether . arp saddr ip != {set_text(pairs + [f'{m} . 0.0.0.0' for m in p.macs])}",
                     "drop", "spoof-arp")]
    # The accepted IPv4 case first (one lookup per frame of the data path), then the drop
    # reasons in an order that names the first forged field; a VM is never a DHCP server.
    rules = [nft_rule("udp sport 67", "drop", "dhcp-server")]
    if len(p.pairs) == 1:
        rules.append(nft_rule(f"ether saddr {p.pairs[0][0]} ip saddr {p.pairs[0][1]}", f"meta mark set {p.index:#x} accept",
                           "mark"))
    elif pairs:
        rules.append(nft_rule(f"ether saddr . ip saddr {set_text(pairs)}", f"meta mark set {p.index:#x} accept", "mark"))
    # IPv6: never a DHCPv6 server, never a router (RA guard: advertisements and redirects);
    # neighbour discovery checked; then the (MAC . source) pairs, link-locals included.
    if p.pairs6:
        rules += [nft_rule("udp sport 547", "drop", "dhcp6-server"),
                  nft_rule("icmpv6 type { nd-router-advert, nd-redirect }", "drop", "ra-guard")]
        rules += _nd_rules(p)
        rules.append(nft_rule(f"ether saddr . ip6 saddr {set_text(f'{m} . {a}' for m, a in p.pairs6)}",
                           f"meta mark set {p.index:#x} accept", "mark6"))
    rules += [nft_rule(f"ether saddr != {macs}", "drop", "spoof-mac"),
              *arp,
              nft_rule("ether type arp", "accept", "arp"),
              nft_rule("ip saddr 0.0.0.0 udp sport 68 udp dport 67", "accept", "dhcp-client")]
    if p.dhcp_mac:
        # A leased port's tap is steered (table vxnet_dhcp, before this chain): every 68 -> 67
        # frame from it has the responder MAC as destination, which only the local responder
        # holds (a static FDB entry), so a RENEW from an address the port no longer holds
        # reaches nothing else. Never on an unsteered port: its frame would go anywhere.
        rules.append(nft_rule(f"ether daddr {p.dhcp_mac} udp sport 68 udp dport 67", "accept", "dhcp-renew"))
    if p.pairs6:
        # Duplicate address detection and MLD reports before the host has an address (source
        # ::; a probe's target was checked above). Not marked: ND is always allowed anyway.
        rules.append(nft_rule("ip6 saddr :: icmpv6 type { nd-neighbor-solicit, mld-listener-report, "
                           "mld2-listener-report, mld-listener-done }", "accept", "v6-unspecified"))
    rules.append(nft_rule("ether type ip", "drop", "spoof-ip"))
    rules.append(nft_rule("ether type ip6", "drop", "spoof-ip6"))
    rules.append(nft_rule("", "drop", "other"))
    return NftChain(f"ps_{p.ident}", tuple(rules))


# The anti-spoofing chain of the ports without IPv6 pairs, shared by them: `ps_chain`'s checks
# in its order, each a lookup of the port's facts (keyed by its tap) in the sets `ps_elements`
# fills, so a port-up adds elements and no rule to the bridge table (a new rule makes the
# kernel validate the whole table: issue 18, docs/benchmarks.md). Exact (MAC . address) pairs
# are hash-set elements; an allowed-address pair's CIDR goes to an interval twin, looked up
# only when the exact one misses (libnftables reads an interval set's elements back on every
# change: a port-up of exact addresses never touches one). `meta mark set ... map` ends the
# rule when the key is missing (the lookup breaks): nothing is set, the next rule decides.
PS_SHARED = "ps"
_PS_ARP = "iifname . arp saddr ether . arp saddr ip"
PS_SHARED_CHAIN = NftChain(PS_SHARED, (
    nft_rule("udp sport 67", "drop", "dhcp-server"),
    nft_rule("meta mark set iifname . ether saddr . ip saddr map @ps_mark", "accept", "mark"),
    nft_rule("meta mark set iifname . ether saddr . ip saddr map @ps_mark_net", "accept", "mark"),
    nft_rule("iifname . ether saddr != @ps_macs", "drop", "spoof-mac"),
    nft_rule(f"{_PS_ARP} != @ps_arp {_PS_ARP} != @ps_arp_net", "drop", "spoof-arp"),
    nft_rule("ether type arp", "accept", "arp"),
    nft_rule("ip saddr 0.0.0.0 udp sport 68 udp dport 67", "accept", "dhcp-client"),
    # a leased port's RENEW to its responder (`ps_chain`): the ports in `ps_dhcp` only
    nft_rule("udp sport 68 udp dport 67 iifname . ether daddr @ps_dhcp", "accept", "dhcp-renew"),
    nft_rule("ether type ip", "drop", "spoof-ip"),
    nft_rule("ether type ip6", "drop", "spoof-ip6"),
    nft_rule("", "drop", "other")))
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


def ps_elements(p: PortFilter) -> dict[str, frozenset[str]]:
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


def ps_table(elements: Iterable[Mapping[str, frozenset[str]]], numbers: Mapping[str, int],
             own: Iterable[NftChain]) -> NftTable:
    """The bridge table: the base chains, the shared chain, the mark chains of the profiles
    (`numbers`: profile -> number), the ports' `own` chains (in port order); its sets and maps
    hold the ports' `elements` (one mapping of set name -> elements per port)."""
    elements = list(elements)
    maps = _ps_sets({k: frozenset().union(*(e.get(k, ()) for e in elements)) for k in _PS_SET_NAMES})
    return NftTable(*PS_TABLE, (*PS_BASE, PS_SHARED_CHAIN, *mark_chains(numbers), *own), maps)
