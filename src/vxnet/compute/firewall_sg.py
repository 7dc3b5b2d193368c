"""The inet table `vxnet_sg`: conntrack zones and the security groups, per security profile,
and the host guard `vxnet_host` (pure; the model in `compute/firewall_model.py`, the whole
firewall in `compute/firewall.py`).

Contract: `sg_table(...)` is the table of the given ports, groups and member sets; a port adds
only map elements and, as its profile's first port, its profile's chain pair
(`port_sg_chain`, memoized per profile).

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

Host guard (`HOST`, and the `host` chain here): the bridges live in the host's own namespace,
and with the kernel defaults the host answers ARP for ANY of its addresses on any interface,
and accepts IP for them: a VM could ARP for the host's underlay address (a tenant may use that
range) and reach the host's services. Nothing for the host arrives through a tenant bridge, so
ARP (table arp) and IP (the `host` input chain) entering the host from a `vxb-` bridge are
dropped. Bridged traffic and the bridge's own ARP suppression never pass these input hooks. The
same holds for a VM's tap that is on no bridge: Nova creates it before the agent plugs it (a
port not bound here yet, or held until its filters are loaded), and until then the VM's frames
enter the host's own stack through it; so ARP and IP entering the host from a `tap` device are
dropped too (a plugged tap's frames reach these hooks with the bridge as their device).
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Iterable, Mapping

from vxnet.compute import naming
from vxnet.compute.firewall_model import (
    ND_EGRESS,
    ND_INGRESS,
    GroupRules,
    PortFilter,
    ident,
    set_name,
    set_name6,
    sg_profile,
)
from vxnet.compute.nft_table import NftChain, NftRule, NftSet, NftTable, dispatch, entries_map, nft_rule, set_text

SG_TABLE = naming.SG_TABLE

HOST_TABLE = naming.HOST_TABLE
HOST_GUARD = 'iifname "vxb-*"'   # naming.BRIDGE_PREFIX: traffic a tenant bridge hands to the host itself
TAP_GUARD = f'iifname "{naming.TAP_PREFIX}*"'   # a VM's tap on no bridge (held, or not bound here yet)
CT_MACS = "ct_macs"               # MACs of local stateful ports: only frames from/to them are tracked


def member_set(name: str, key_type: str, members: frozenset[str]) -> NftSet:
    """A remote group's member set: an interval set only when a member is a prefix (an allowed
    address pair's CIDR), else a plain (hash) set. libnftables keeps an interval set's elements
    in its context to check overlaps: with 10,000 members ~7 MB held by the agent, ~17 MB of
    peak to load them, and every element added or deleted reads them all again (tens of ms). A
    plain set needs none of that. A set whose kind changes (its first prefix member comes or
    its last goes) is re-created with the table in one transaction (`nft_driver.diff_table`)."""
    prefixed = any(map(operator.contains, members, itertools.repeat("/")))     # a C loop: 10,000 members each pass
    return NftSet(name, key_type, members, "interval" if prefixed else "")


def in_entries(numbers: Mapping[str, int]) -> frozenset[str]:
    """The `in_ports` map's entries: a profile's number in the mark's high half -> its chain."""
    return frozenset(f"{n << 16:#010x} : jump in_{k}" for k, n in numbers.items())


def port_sg_chain(p: PortFilter, direction: str) -> NftChain:
    """The security-group chain of `p`'s profile in `direction` (the same object for every port of it)."""
    return _profile_chain(direction, p.stateful, bool(p.pairs6), p.groups)


@functools.lru_cache(maxsize=4096)
def _profile_chain(direction: str, stateful: bool, v6: bool, groups: tuple[str, ...]) -> NftChain:
    prefix, gprefix = ("in_", "gi_") if direction == "ingress" else ("eg_", "ge_")
    # Established and related packets were accepted by the base chain before the dispatch
    # (`established`): a port chain sees only new, invalid and untracked packets.
    rules = []
    if stateful:
        rules.append(nft_rule("ct state invalid", "drop", "ct-invalid"))
    if direction == "ingress":
        rules.append(nft_rule("udp sport 67 udp dport 68", "accept", "dhcp-reply"))
        if v6:
            rules += [nft_rule(f"icmpv6 type {ND_INGRESS}", "accept", "nd"),
                      nft_rule("meta nfproto ipv6 udp sport 547 udp dport 546", "accept", "dhcp6-reply")]
    else:
        rules.append(nft_rule("udp sport 68 udp dport 67", "accept", "dhcp-request"))
        if v6:
            rules += [nft_rule(f"icmpv6 type {ND_EGRESS}", "accept", "nd"),
                      nft_rule("meta nfproto ipv6 udp sport 546 udp dport 547", "accept", "dhcp6-request")]
    rules += [nft_rule("", f"jump {gprefix}{ident(g)}", "group:" + g) for g in groups]
    rules.append(nft_rule("", "drop", "default-drop"))
    return NftChain(prefix + sg_profile(stateful, v6, groups), tuple(rules))


@functools.lru_cache(maxsize=4096)
def group_chain(g: GroupRules) -> NftChain:
    return NftChain(g.chain, tuple(nft_rule(r.match_text(), "accept", "sg:" + r.rule_id) for r in g.rules), ordered=False)


def established(stateless_marks: Iterable[int]) -> NftRule:
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
        match += f" meta mark and 0xffff0000 != {set_text(f'{m:#010x}' for m in marks)}"
    return nft_rule(match, "accept", "ct-established")


def profile_chains(profiles: Mapping[str, tuple[NftChain, NftChain]]) -> list[NftChain]:
    """The profiles' chain pairs (profile -> (egress, ingress)) in the tables' order: by profile."""
    return [c for k in sorted(profiles) for c in profiles[k]]


_GUARD = (nft_rule(HOST_GUARD, "drop", "host-guard"), nft_rule(TAP_GUARD, "drop", "tap-guard"))
_INPUT = "type filter hook input priority 0; policy accept;"
HOST = NftTable(*HOST_TABLE, (NftChain("in", _GUARD, _INPUT),))
BASE_CHAINS = 4         # `host`, `zone`, `egress`, `ingress`: the table's first chains


def _zone_chain(ports: Iterable[PortFilter], zones: tuple[tuple[str, int], ...]) -> NftChain:
    # notrack first, and `accept` (ends this chain): a `ct zone set` before it would attach a
    # conntrack template, and `notrack` ignores packets that already have one.
    zone_rules = []
    stateless = [p for p in ports if not p.stateful]
    if stateless:
        zone_rules.append(nft_rule(f"meta mark and 0x0000ffff {set_text(f'{p.index:#x}' for p in stateless)}",
                                   "notrack accept", "stateless-egress"))
        dst = [f'"{p.bridge}" . {a}' for p in stateless for _, a in p.pairs]
        if dst:
            zone_rules.append(nft_rule(f"iifname . ip daddr {set_text(sorted(set(dst)))}", "notrack accept",
                                       "stateless-ingress"))
        dst6 = [f'"{p.bridge}" . {a}' for p in stateless for _, a in p.pairs6]
        if dst6:
            zone_rules.append(nft_rule(f"iifname . ip6 daddr {set_text(sorted(set(dst6)))}", "notrack accept",
                                       "stateless-ingress6"))
    # Conntrack only where a rule needs state: a bridged frame neither from nor to a MAC of a
    # local stateful port (port security off, routers, DHCP, VXLAN to VXLAN, stateless ports)
    # is not tracked (issue 18: conntrack costs throughput). Tracking is decided by MAC, the
    # only thing known here for the receiving side (the bridge has not chosen the port yet):
    # a frame to a stateful port carries its MAC (or a pair MAC, in the set too); broadcast and
    # multicast to it are untracked, and its ingress rules decide them as they would a new flow.
    # The MAC lookups come before the bridge-name match: a frame of a tracked flow leaves the
    # rule at its first lookup without copying the device name.
    zone_rules.append(nft_rule(f"ether saddr != @{CT_MACS} ether daddr != @{CT_MACS} {HOST_GUARD}", "notrack accept",
                               "untracked"))
    if zones:
        body = ", ".join(f'"{b}" : {z}' for b, z in zones)
        zone_rules.append(nft_rule("", f"ct zone set iifname map {{ {body} }}", "zones"))
    return NftChain("zone", tuple(zone_rules), "type filter hook prerouting priority raw; policy accept;")


def _member_sets(groups: Iterable[GroupRules], members: Mapping[str, frozenset[str]],
                 members6: Mapping[str, frozenset[str]]) -> tuple[NftSet, ...]:
    """The member sets of the remote groups the rules of `groups` name, IPv4 then IPv6."""
    groups = tuple(groups)
    out = []
    for ethertype, name, key, by_group in (("IPv4", set_name, "ipv4_addr", members),
                                           ("IPv6", set_name6, "ipv6_addr", members6)):
        remote = {r.remote_group for g in groups for r in g.rules if r.remote_group and r.ethertype == ethertype}
        out += [member_set(name(g), key, by_group.get(g, frozenset())) for g in sorted(remote)]
    return tuple(out)


def sg_table(ports: tuple[PortFilter, ...], groups: tuple[GroupRules, ...], members: Mapping[str, frozenset[str]],
             members6: Mapping[str, frozenset[str]], zones: tuple[tuple[str, int], ...], numbers: Mapping[str, int],
             eg_entries: Iterable[str], profiles: Mapping[str, tuple[NftChain, NftChain]]) -> NftTable:
    """The inet table of `ports` (in port order): the base chains, the group chains of `groups`,
    the profiles' chain pairs (`profiles`: profile -> (egress, ingress)); the remote groups'
    member sets, `ct_macs`, the dispatch maps (`eg_entries`: the ports' `eg_ports` elements;
    `numbers`: profile -> number)."""
    stateless = [numbers[p.profile] << 16 for p in ports if not p.stateful]
    chains = (NftChain("host", _GUARD, _INPUT),
              _zone_chain(ports, zones),
              NftChain("egress", (established(()), *dispatch("meta mark and 0x0000ffff", "eg_ports")),
                       "type filter hook forward priority 0; policy accept;"),
              NftChain("ingress", (established(stateless), *dispatch("meta mark and 0xffff0000", "in_ports")),
                       "type filter hook forward priority 10; policy accept;"),
              *(group_chain(g) for g in groups),
              *profile_chains(profiles))
    sets = (*_member_sets(groups, members, members6),
            NftSet(CT_MACS, "ether_addr", frozenset(m for p in ports if p.stateful for m in p.macs), ""),
            entries_map("eg_ports", "mark", eg_entries),
            entries_map("in_ports", "mark", in_entries(numbers)))
    return NftTable(*SG_TABLE, chains, sets)
