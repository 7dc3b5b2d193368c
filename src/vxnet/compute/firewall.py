"""View of one host -> its desired port security and security-group rulesets (pure).

Contract: `compute_firewall(view, host)` is a pure function; it returns a `Firewall`: a
structured model (ports, groups and their rules, remote-group member sets, conntrack zones)
and its rendering as two nftables tables the agent owns (`Firewall.tables`). `decide()`
evaluates the model for one packet ("which rule decides"), the same way the kernel does.

Data path (KERNEL-NOTES §0, §6: bridge-family `ct` does not exist here, so conntrack is done
by br_netfilter in `table inet`, where a bridged packet's iifname/oifname is the *bridge*;
ports are therefore tagged with skb marks in bridge-family chains):

- `table bridge vxnet_ps` (`compute/firewall_ps.py`): per local port with port security, its
  anti-spoofing checks (a shared chain, `ps` or `ps6` with IPv6 pairs, whose sets hold the
  port's facts), marking its frames with its index; the destination port's profile
  number in the mark's high half.
- `table inet vxnet_sg` (`compute/firewall_sg.py`): conntrack zones and notrack, established
  flows accepted first, then the marks dispatched to the chains of the ports' security profiles
  and the groups' shared chains; remote groups' member sets.
- `table arp vxnet_host` (`firewall_sg.HOST`) and the `host` chain of `vxnet_sg`: the host guard.
The model (`PortFilter`, `SgRule`...) is in `compute/firewall_model.py`, the tables' types and
text in `compute/nft_table.py`. `render` joins the two tables' parts of every port;
`render_update` splices the changed ports' parts into the last rendering.

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

`render_update` renders the whole when a profile coming or going would renumber another
(profile numbers: `firewall_model.mark_indexes` of the profile names of the host's ports).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import socket
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from vxnet.compute import dhcp, naming
from vxnet.compute.firewall_model import (
    ICMPV6,
    ND_EGRESS_TYPES,
    ND_INGRESS_TYPES,
    PORT_PROTOCOLS,
    GroupRules,
    PortFilter,
    SgRule,
    group_members,
    mark_indexes,
    port_filter,
    set_name,
    set_name6,
    sg_rule,
    zone_map,
)
from vxnet.compute.firewall_ps import (
    PS_BASE,
    PS_SHARED_CHAINS,
    mark_chain,
    mark_chains,
    ps_chain_name,
    ps_elements,
    ps_table,
)
from vxnet.compute.firewall_sg import (
    BASE_CHAINS,
    CT_MACS,
    HOST,
    in_entries,
    member_set,
    port_sg_chain,
    profile_chains,
    sg_table,
)
from vxnet.compute.l2 import port_filtered
from vxnet.compute.nft_table import NftChain, NftSet, NftTable
from vxnet.model import Port, Subnet, View, as_view


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


# --- compute ----------------------------------------------------------------------------------

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
        if port_filtered(p):
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
        rule = sg_rule(r)
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

@dataclasses.dataclass(frozen=True)
class _PortParts:
    """What one port adds to the tables: its profile's two chains (shared with the other ports
    of the profile), and its elements in the bridge table's sets and maps (`pre_ports`,
    `out_ports`, the shared chains') and in `eg_ports`."""

    eg: NftChain
    in_: NftChain
    bridge: Mapping[str, frozenset[str]]
    eg_entry: str


@functools.lru_cache(maxsize=16384)
def _port_parts(p: PortFilter) -> _PortParts:
    # Memoized per filter (hashed once, `PortFilter.__hash__`): a render after a port-up makes
    # only the new port's chains and entries; the others' are these same objects.
    bridge = {"pre_ports": frozenset([f'"{p.tap}" : jump {ps_chain_name(p)}']),
              "out_ports": frozenset([f'"{p.tap}" : jump mk_{p.profile}']), **ps_elements(p)}
    return _PortParts(port_sg_chain(p, "egress"), port_sg_chain(p, "ingress"), bridge, f"{p.index:#010x} : jump eg_{p.profile}")


def render(fw: Firewall) -> tuple[NftTable, NftTable, NftTable]:
    """The tables of `fw`: bridge anti-spoofing (`firewall_ps`), inet security groups
    (`firewall_sg`), and the host guard."""
    # No mark reset on entry: frames reach a bridge with mark 0 (crossing a namespace scrubs
    # the mark; VXLAN decapsulation starts from the NIC's 0), and only ours set these bits.
    parts = [_port_parts(p) for p in fw.ports]
    numbers = fw.profile_numbers
    ps = ps_table((x.bridge for x in parts), numbers)
    sg = sg_table(fw.ports, fw.groups, fw.members, fw.members6, fw.zones, numbers, (x.eg_entry for x in parts),
                  {x.eg.name[3:]: (x.eg, x.in_) for x in parts})
    return ps, sg, HOST


_SPLICE_MAX = 8       # changed ports up to which `render_update` splices (beyond: `render`)


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
    start = BASE_CHAINS + len(fw.groups)
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
        sg_chains = (*sg.chains[:start], *profile_chains(profiles))
    fw.__dict__["profile_numbers"] = numbers

    # The bridge table: the shared chains, then the profiles' mark chains.
    mk_start = len(PS_BASE) + len(PS_SHARED_CHAINS)
    ps_chains = (*ps.chains[:mk_start], *mark_chains(numbers))

    def elements(s: NftSet, of: Callable[[_PortParts], Collection[str]]) -> NftSet:
        went, new = [x for p in gone if (x := of(parts[p]))], [x for p in came if (x := of(parts[p]))]
        if not went and not new:
            return s        # none of the ports has an element here: the same set (`diff_table` skips it)
        kept = s.elements.difference(*went) if went else s.elements
        return dataclasses.replace(s, elements=kept.union(*new))

    ps_sets = tuple(elements(s, lambda x, k=s.name: x.bridge.get(k, ())) for s in ps.sets)
    sg_sets = tuple(elements(s, lambda x: (x.eg_entry,)) if s.name == "eg_ports" else
                    dataclasses.replace(s, elements=in_entries(numbers)) if s.name == "in_ports" and numbers is not before_numbers else
                    dataclasses.replace(s, elements=s.elements | came_macs) if s.name == CT_MACS and came_macs else
                    member_set(s.name, members[s.name][2], members[s.name][0]) if s.name in changed else s
                    for s in sg.sets)
    out = (NftTable(ps.family, ps.name, ps_chains, ps_sets), NftTable(sg.family, sg.name, sg_chains, sg_sets))
    mk_gone = [f"mk_{k}" for k in sorted(removed)]
    mk_came = [mark_chain(k, numbers[k]) for k in sorted(added)]
    sg_gone = [c.name for k in sorted(removed) for c in held[k]]
    sg_came = [c for k in sorted(added) for c in added[k]]
    for before, after, went, new in ((ps, out[0], mk_gone, mk_came), (sg, out[1], sg_gone, sg_came)):
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
