"""Pure firewall compute (view -> model -> nft tables), the driver's chain diff against a
stateful fake table, and `decide` ("which rule decides"). No kernel, no mocks."""

from __future__ import annotations

import copy
import random
import re

import pytest

from vxnet.agent.firewall import revoked_flows
from vxnet.compute import firewall as fwm
from vxnet.compute import firewall_model as fwmodel
from vxnet.compute import firewall_ps as fwps
from vxnet.compute import nft_table as nft
from vxnet.compute.firewall import Packet, compute_firewall, decide, mark_indexes, render_update, zone_map
from vxnet.dataplane.nft_driver import diff_table, fingerprint, normalise_listing, parse_handles, parse_listing
from vxnet.model import parse

NET = "aaaaaaaa-0000-4000-8000-000000000001"
NET2 = "bbbbbbbb-0000-4000-8000-000000000002"
G1 = "11111111-0000-4000-8000-000000000001"
G2 = "22222222-0000-4000-8000-000000000002"
GS = "33333333-0000-4000-8000-000000000003"   # stateless


def port(pid: str, ip: str, host: str = "h1", groups: tuple[str, ...] = (G1,), net: str = NET, **kw) -> dict:
    a, b = (int(x) for x in ip.split(".")[-2:])
    return {"id": pid, "network_id": net, "binding:host_id": host, "mac_address": f"02:00:00:00:{a:02x}:{b:02x}",
            "fixed_ips": [{"subnet_id": "s", "ip_address": ip}], "security_groups": list(groups),
            "port_security_enabled": True, "device_owner": "compute:nova", "allowed_address_pairs": [], **kw}


def rule(rid: str, group: str, direction: str, **kw) -> dict:
    return {"id": rid, "security_group_id": group, "direction": direction, "ethertype": "IPv4", "protocol": None,
            "port_range_min": None, "port_range_max": None, "remote_ip_prefix": None, "remote_group_id": None, **kw}


P1 = "p1000000-0000-4000-8000-000000000001"
P2 = "p2000000-0000-4000-8000-000000000002"
P3 = "p3000000-0000-4000-8000-000000000003"
P4 = "p4000000-0000-4000-8000-000000000004"
RULES = [
    rule("r-egress", G1, "egress"),
    rule("r-egress6", G1, "egress", ethertype="IPv6"),
    rule("r-group", G1, "ingress", remote_group_id=G2),
    rule("r-ssh", G1, "ingress", protocol="tcp", port_range_min=22, port_range_max=23,
         remote_ip_prefix="100.64.0.0/16", normalized_cidr="100.64.0.0/16"),
    rule("r-ping", G1, "ingress", protocol="icmp", port_range_min=8, port_range_max=0),
    rule("r-gre", G1, "ingress", protocol="47"),
    rule("r-dns", GS, "ingress", protocol="udp", port_range_min=53, port_range_max=53),
    rule("r-dns-out", GS, "egress", protocol="17", port_range_min=53, port_range_max=53,
         remote_ip_prefix="0.0.0.0/0"),
]


def view(ports: list[dict], rules: list[dict] = RULES) -> dict:
    return {
        "networks": {NET: {"id": NET, "provider:network_type": "vxlan", "provider:segmentation_id": 1001},
                     NET2: {"id": NET2, "provider:network_type": "vxlan", "provider:segmentation_id": 1002}},
        "ports": {p["id"]: p for p in ports},
        "security_groups": {G1: {"id": G1, "stateful": True}, G2: {"id": G2, "stateful": True},
                            GS: {"id": GS, "stateful": False}},
        "security_group_rules": {r["id"]: r for r in rules},
    }


def base_ports() -> list[dict]:
    return [port(P1, "192.0.2.11", groups=(G1,)),
            port(P2, "192.0.2.12", host="h2", groups=(G2,)),
            port(P3, "192.0.2.13", groups=(GS,), net=NET2),
            port(P4, "192.0.2.14", groups=(), port_security_enabled=False)]


def chain(fw: fwm.Firewall, family: str, name: str) -> list[str]:
    t = next(t for t in fw.tables if t.family == family)
    return [r.text for r in t.chain_map()[name].rules]


# --- model ------------------------------------------------------------------------------------

def test_which_ports_are_filtered() -> None:
    ports = [*base_ports(), port("p5000000-0000-4000-8000-000000000005", "192.0.2.1", groups=(),
                                 device_owner="network:router_interface_distributed", port_security_enabled=True)]
    fw = compute_firewall(view(ports), "h1")
    assert [p.port_id for p in fw.ports] == [P1, P3]          # P2 is remote; P4 and the router port are open
    assert fw.open_ports == {P4, "p5000000-0000-4000-8000-000000000005"}
    assert fw.ignored_rules == ()                              # IPv6 rules are in the data plane now
    assert any(r.rule_id == "r-egress6" and r.ethertype == "IPv6" for g in fw.groups for r in g.rules)
    assert fw.port(P1).stateful and not fw.port(P3).stateful


def test_anti_spoofing_allows_own_and_pair_addresses_only() -> None:
    p1 = port(P1, "192.0.2.11", allowed_address_pairs=[
        {"ip_address": "198.51.100.0/28", "mac_address": "02:00:00:00:07:10"},
        {"ip_address": "198.51.100.5", "mac_address": "02:00:00:00:07:10"},      # inside the /28: merged
        {"ip_address": "2001:db8::1", "mac_address": "02:00:00:00:07:10"}])      # IPv6: not in the v4 table
    fw = compute_firewall(view([p1]), "h1")
    p = fw.port(P1)
    assert p.macs == ("02:00:00:00:02:0b", "02:00:00:00:07:10")
    assert p.pairs == (("02:00:00:00:02:0b", "192.0.2.11"), ("02:00:00:00:07:10", "198.51.100.0/28"))
    assert fwps.ps_chain_name(p) == "ps6"          # IPv6 pairs: the shared chain with the IPv6 checks
    rules = chain(fw, "bridge", "ps6")
    tap, mark = f'"{p.tap}"', f"{p.index:#010x}"
    assert bridge_set(fw, "ps_macs") >= {f"{tap} . 02:00:00:00:02:0b", f"{tap} . 02:00:00:00:07:10"}
    assert {f"{tap} . 02:00:00:00:02:0b . 0.0.0.0", f"{tap} . 02:00:00:00:07:10 . 0.0.0.0"} <= bridge_set(fw, "ps_arp")
    assert bridge_set(fw, "ps_arp_net") == {f"{tap} . 02:00:00:00:07:10 . 198.51.100.0/28"}
    assert bridge_set(fw, "ps_mark") == {f"{tap} . 02:00:00:00:02:0b . 192.0.2.11 : {mark}"}
    kinds = [nft.comment_kind(re.search(r'comment "([^"]*)"', r).group(1)) for r in rules]
    assert kinds == ["dhcp-server", "mark", "mark", "dhcp6-server", "ra-guard", "spoof-na-target", "spoof-dad-target",
                     "spoof-nd-layout", "spoof-nd-lladdr", "spoof-rs-layout", "spoof-rs-lladdr", "mark6", "mark6",
                     "spoof-mac", "spoof-arp", "arp", "dhcp-client", "dhcp-renew", "v6-unspecified", "spoof-ip",
                     "spoof-ip6", "other"]
    # the IPv4 checks are `ps`'s, in its order, around the IPv6 ones
    assert [r for r in rules if r not in chain(fw, "bridge", "ps")] == rules[3:13] + [rules[-4]]
    # IPv6: the pair's address and both MACs' EUI-64 link-locals
    assert p.pairs6 == (("02:00:00:00:02:0b", "fe80::ff:fe00:20b"), ("02:00:00:00:07:10", "2001:db8::1"),
                        ("02:00:00:00:07:10", "fe80::ff:fe00:710"))
    assert rules[0].startswith("udp sport 67 counter drop")      # never a DHCP server, checked before IP
    assert all("counter " in r for r in rules)


def bridge_set(fw: fwm.Firewall, name: str) -> frozenset[str]:
    """The elements of a set or map of the bridge table."""
    return next(s.elements for s in fw.tables[0].sets if s.name == name)


def test_port_without_addresses_sends_no_ip() -> None:
    fw = compute_firewall(view([port(P1, "192.0.2.11", fixed_ips=[])]), "h1")
    p = fw.port(P1)
    assert fwps.ps_chain_name(p) == "ps"
    assert bridge_set(fw, "ps_mark") == bridge_set(fw, "ps_mark_net") == frozenset()      # no address to mark
    assert bridge_set(fw, "ps_arp") == {f'"{p.tap}" . {p.macs[0]} . 0.0.0.0'}               # probes only
    rules = chain(fw, "bridge", "ps")
    assert rules[-3].startswith("ether type ip counter drop")
    # no IPv6 address of its own: no IPv6 rules, not even its link-local (Neutron would allow it)
    assert p.pairs6 == ()
    assert rules[-2].startswith("ether type ip6 counter drop") and not any("icmpv6" in r for r in rules)
    assert fwm.port_security(fw, P1, p.macs[0], Packet("192.0.2.11", "192.0.2.1")) == ("drop", "spoof-ip")


def test_rule_kinds_render_to_nft_matches() -> None:
    fw = compute_firewall(view(base_ports()), "h1")
    gi = chain(fw, "inet", "gi_" + G1.replace("-", ""))
    assert [r.split(" counter")[0] for r in gi] == [      # rule id order (all rules accept)
        "meta nfproto ipv4 meta l4proto 47",
        f"meta nfproto ipv4 ip saddr @rg_{G2.replace('-', '')}",
        "meta nfproto ipv4 icmp type 8 icmp code 0",
        "meta nfproto ipv4 ip saddr 100.64.0.0/16 meta l4proto 6 th dport 22-23"]
    assert [nft.comment_kind(re.search(r'comment "([^"]*)"', r).group(1)) for r in gi] == [
        "sg:r-gre", "sg:r-group", "sg:r-ping", "sg:r-ssh"]
    assert chain(fw, "inet", "ge_" + G1.replace("-", ""))[0].startswith("meta nfproto ipv4 counter accept")
    ge_s = chain(fw, "inet", "ge_" + GS.replace("-", ""))
    assert ge_s[0].startswith("meta nfproto ipv4 meta l4proto 17 th dport 53 counter accept")   # 0.0.0.0/0 = any


def test_port_chains_stateful_and_stateless() -> None:
    fw = compute_firewall(view(base_ports()), "h1")
    p1, p3 = fw.port(P1), fw.port(P3)
    in1 = chain(fw, "inet", fwmodel.sg_chain(p1, "ingress"))
    assert in1[0].startswith("ct state invalid counter drop")      # established: the base chain accepted it
    assert in1[1].startswith("udp sport 67 udp dport 68 counter accept")
    assert in1[2].startswith(f"counter jump gi_{G1.replace('-', '')}")       # IPv4-only port: no ND rules
    assert in1[-1].startswith("counter drop")
    in3 = chain(fw, "inet", fwmodel.sg_chain(p3, "ingress"))
    assert not any("ct state" in r for r in in3)
    # established/related first in both forward base chains; ingress leaves the stateless P3's mark to its chain
    assert chain(fw, "inet", "egress")[0].startswith("ct state established,related counter accept")
    assert chain(fw, "inet", "ingress")[0].startswith(
        f"ct state established,related meta mark and 0xffff0000 != {{ {fw.profile_numbers[p3.profile] << 16:#010x} }} "
        "counter accept")
    zone = "\n".join(chain(fw, "inet", "zone"))
    assert f"meta mark and 0x0000ffff {{ {p3.index:#x} }} counter notrack accept" in zone
    assert '"vxb-bbbbbbbb-00" . 192.0.2.13' in zone
    assert '"vxb-aaaaaaaa-00" : 1001, "vxb-bbbbbbbb-00" : 1002' in zone


def test_conntrack_only_for_frames_from_or_to_a_stateful_port() -> None:
    ports = base_ports()
    ports[0]["allowed_address_pairs"] = [{"ip_address": "192.0.2.99", "mac_address": "02:00:00:00:aa:bb"}]
    ports.append(port("p5000000-0000-4000-8000-000000000005", "192.0.2.15", groups=(G1, GS)))   # a mix: stateful
    fw = compute_firewall(view(ports), "h1")
    sg = next(t for t in fw.tables if t.family == "inet")
    ct_macs = next(s for s in sg.sets if s.name == "ct_macs")
    # local stateful ports' MACs and pair MACs only: not the stateless P3, not P4 (port security
    # off), not P2 (another host)
    assert ct_macs.elements == {"02:00:00:00:02:0b", "02:00:00:00:aa:bb", "02:00:00:00:02:0f"}
    zone = chain(fw, "inet", "zone")
    # stateless notrack first, then every bridged frame neither from nor to a tracked MAC, then zones
    assert zone[0].startswith("meta mark and 0x0000ffff")
    assert zone[-2].startswith('ether saddr != @ct_macs ether daddr != @ct_macs iifname "vxb-*" counter notrack accept')
    assert zone[-1].startswith("counter ct zone set iifname map")


def test_port_with_no_group_drops_everything_but_dhcp() -> None:
    fw = compute_firewall(view([port(P1, "192.0.2.11", groups=())]), "h1")
    p = fw.port(P1)
    assert p.groups == () and p.stateful
    for d in ("ingress", "egress"):
        assert decide(fw, P1, d, Packet("192.0.2.12", "192.0.2.11", 6, dport=22)) == ("drop", "default-drop")
    assert decide(fw, P1, "egress", Packet("0.0.0.0", "255.255.255.255", 17, 68, 67))[0] == "accept"


def test_remote_group_members_follow_ports() -> None:
    ports = base_ports()
    fw = compute_firewall(view(ports), "h1")
    assert fw.members == {G2: frozenset({"192.0.2.12"})}
    more = [*ports, port("p6000000-0000-4000-8000-000000000006", "192.0.2.16", host="h3", groups=(G2,),
                         allowed_address_pairs=[{"ip_address": "203.0.113.0/24", "mac_address": "02:00:00:00:01:16"}])]
    fw2 = compute_firewall(view(more), "h1")
    assert fw2.members[G2] == {"192.0.2.12", "192.0.2.16", "203.0.113.0/24"}
    sg1, sg2 = fw.tables[1], fw2.tables[1]
    # Only the set's elements differ: the chains are the same objects' equals.
    assert sg1.chains == sg2.chains and sg1.sets != sg2.sets
    rg = f"rg_{G2.replace('-', '')}"
    # Addresses only: a plain (hash) set; with a prefix member an interval set. The change of
    # kind re-makes the set in the same transaction: the chains naming it are flushed before
    # and refilled after; nothing else of the table is touched.
    assert {s.name: s.flags for s in sg1.sets}[rg] == "" and {s.name: s.flags for s in sg2.sets}[rg] == "interval"
    users = [c for c in sg2.chains if any(f"@{rg}" in r.text for r in c.rules)]
    assert len(users) == 1 and users[0].name.startswith("gi_")      # the group chain whose rule names G2
    refill = [f"add rule inet vxnet_sg {users[0].name} {r.text}" for r in users[0].rules]
    assert diff_table(sg1, sg2) == [f"flush chain inet vxnet_sg {users[0].name}", f"delete set inet vxnet_sg {rg}",
                                    f"add set inet vxnet_sg {rg} {{ type ipv4_addr; flags interval; }}",
                                    f"add element inet vxnet_sg {rg} {{ 192.0.2.12, 192.0.2.16, 203.0.113.0/24 }}",
                                    *refill]
    assert diff_table(sg2, sg1) == [f"flush chain inet vxnet_sg {users[0].name}", f"delete set inet vxnet_sg {rg}",
                                    f"add set inet vxnet_sg {rg} {{ type ipv4_addr; }}",
                                    f"add set inet vxnet_sg {rg} {{ type ipv4_addr; elements = {{ 192.0.2.12 }}; }}",
                                    *refill]
    # Within one kind, a member change is one element command (an addition to a plain set
    # written as the set's declaration with the elements: libnftables then needs no cache of
    # the table's chains and sets).
    fw3 = compute_firewall(view([*ports, port("p6000000-0000-4000-8000-000000000006", "192.0.2.16", host="h3",
                                                 groups=(G2,))]), "h1")
    assert diff_table(sg1, fw3.tables[1]) == [
        f"add set inet vxnet_sg {rg} {{ type ipv4_addr; elements = {{ 192.0.2.16 }}; }}"]
    assert diff_table(fw3.tables[1], sg1) == [f"delete element inet vxnet_sg {rg} {{ 192.0.2.16 }}"]


def test_decide_names_the_deciding_rule() -> None:
    fw = compute_firewall(view(base_ports()), "h1")
    cases = [
        (P1, "ingress", Packet("192.0.2.12", "192.0.2.11", 6, dport=5000), ("accept", "sg:r-group")),
        (P1, "ingress", Packet("192.0.2.99", "192.0.2.11", 6, dport=5000), ("drop", "default-drop")),
        (P1, "ingress", Packet("100.64.3.4", "192.0.2.11", 6, dport=23), ("accept", "sg:r-ssh")),
        (P1, "ingress", Packet("100.64.3.4", "192.0.2.11", 6, dport=24), ("drop", "default-drop")),
        (P1, "ingress", Packet("100.65.3.4", "192.0.2.11", 6, dport=22), ("drop", "default-drop")),
        (P1, "ingress", Packet("203.0.113.9", "192.0.2.11", 1, icmp_type=8, icmp_code=0), ("accept", "sg:r-ping")),
        (P1, "ingress", Packet("203.0.113.9", "192.0.2.11", 1, icmp_type=13, icmp_code=0), ("drop", "default-drop")),
        (P1, "ingress", Packet("203.0.113.9", "192.0.2.11", 47), ("accept", "sg:r-gre")),
        (P1, "ingress", Packet("203.0.113.9", "192.0.2.11", 6, dport=80, ct_state="established"),
         ("accept", "ct-established")),
        (P1, "egress", Packet("192.0.2.11", "203.0.113.9", 6, dport=80), ("accept", "sg:r-egress")),
        (P3, "egress", Packet("192.0.2.13", "203.0.113.9", 6, dport=80, ct_state="untracked"), ("drop", "default-drop")),
        (P3, "egress", Packet("192.0.2.13", "203.0.113.9", 17, dport=53), ("accept", "sg:r-dns-out")),
        (P3, "ingress", Packet("203.0.113.9", "192.0.2.13", 6, dport=80, ct_state="established"),
         ("drop", "default-drop")),                                     # stateless: no conntrack shortcut
        (P4, "ingress", Packet("203.0.113.9", "192.0.2.14", 6, dport=80), ("accept", "unfiltered")),
    ]
    for pid, direction, pkt, want in cases:
        assert decide(fw, pid, direction, pkt) == want, (pid, direction, pkt)


def test_zones_exact_for_low_vnis_distinct_for_high() -> None:
    assert zone_map({"a": 1001, "b": 65535}) == {"a": 1001, "b": 65535}
    z = zone_map({"a": 1001, "b": 1001 + 65535, "c": 1001 + 2 * 65535, "d": 16_000_000})
    assert z["a"] == 1001 and len(set(z.values())) == 4 and all(1 <= v <= 65535 for v in z.values())
    # Adding a network never moves an existing low-VNI zone.
    assert zone_map({"a": 1001, "x": 1002})["a"] == 1001


def test_mark_indexes_distinct_and_stable() -> None:
    ids = [f"port-{i}" for i in range(3000)]
    idx = mark_indexes(ids)
    assert len(set(idx.values())) == 3000 and all(1 <= v <= 0xFFFF for v in idx.values())
    fewer = mark_indexes(ids[:2000])
    moved = [p for p in fewer if fewer[p] != idx[p]]
    assert len(moved) < 40       # only collision losers can move
    assert mark_indexes(reversed(ids)) == idx


def test_same_result_whatever_the_order() -> None:
    v = view(base_ports())
    shuffled = copy.deepcopy(v)
    for k in ("ports", "security_group_rules"):
        items = list(shuffled[k].items())
        random.Random(4).shuffle(items)
        shuffled[k] = dict(items)
    assert compute_firewall(v, "h1").tables == compute_firewall(shuffled, "h1").tables


# --- driver diff against a stateful fake table --------------------------------------------------------

class FakeNft:
    """The subset of nft commands the driver sends, applied to a dict model (rules carry
    handles, as in the kernel)."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], dict] = {}
        self.next_handle = 1
        self.handles: dict[tuple[str, str], int] = {}     # (chain, rule text) -> handle

    def run(self, lines: list[str]) -> None:
        for line in lines:
            w = line.split()
            op, obj, key = w[0], w[1], (w[2], w[3])
            if obj == "table":
                if op == "add":
                    self.tables.setdefault(key, {"chains": {}, "sets": {}})
                else:
                    del self.tables[key]
                continue
            t = self.tables[key]
            name = w[4]
            rest = line.split(None, 5)[5].strip() if len(w) > 5 else ""    # after the object's name
            if obj == "chain" and op == "add" and rest.startswith("{") and not rest.startswith("{ type "):
                # an existing chain filled with rules (`add chain NAME { rule; ... }`)
                assert name in t["chains"], f"no chain {name} to fill"
                for text in (r.strip() for r in rest[1:-1].split(";")):
                    if text:
                        self.run([f"add rule {key[0]} {key[1]} {name} {text}"])
            elif obj == "chain" and op == "add":
                assert name not in t["chains"]
                t["chains"][name] = []
            elif obj == "chain" and op == "flush":
                t["chains"][name] = []
            elif obj == "chain" and op == "delete":
                assert not t["chains"].pop(name), "deleting a non-empty chain"
                assert not any(f" {name} " in r + " " for rs in t["chains"].values() for r in rs), "still referenced"
                assert not any(e.endswith(f"jump {name}") for es in t["sets"].values() for e in es), "in a map"
            elif obj == "rule" and op == "delete":
                h = int(rest.split("handle", 1)[1])
                text = next(r for r in t["chains"][name] if self.handles[(name, r)] == h)
                t["chains"][name].remove(text)
            elif obj == "rule":
                t["chains"][name].append(rest)
                self.handles[(name, rest)] = self.next_handle
                self.next_handle += 1
            elif obj in ("set", "map") and op == "add":
                # as the kernel: an existing set keeps its elements; `elements = { ... }` adds
                t["sets"].setdefault(name, set())
                if "elements = " in rest:
                    self.run([f"add element {key[0]} {key[1]} {name} " + rest.split("elements = ", 1)[1].rsplit(";", 1)[0]])
            elif obj in ("set", "map") and op == "flush":
                t["sets"][name] = set()
            elif obj in ("set", "map") and op == "delete":
                del t["sets"][name]
            elif obj == "element":
                elems = {e.strip() for e in rest.strip("{} ").split(",")}
                if op == "add":
                    keys = {e.split(" : ", 1)[0]: e for e in t["sets"][name] if " : " in e}
                    for e in elems:       # a map element jumps to a chain that must exist already
                        assert " : jump " not in e or e.split("jump ", 1)[1] in t["chains"], f"no chain for {e}"
                        # as the kernel: a key held with another verdict is refused (EBUSY)
                        assert keys.get(e.split(" : ", 1)[0], e) == e, f"{e}: key held as {keys[e.split(' : ', 1)[0]]}"
                    t["sets"][name] |= elems
                else:                     # map elements are deleted by key
                    held = {e.split(" : ", 1)[0]: e for e in t["sets"][name]}
                    assert elems <= set(held), "deleting absent elements"
                    t["sets"][name] -= {held[k] for k in elems}

    def state(self, t: nft.NftTable) -> dict:
        """What the fake must hold for `t` (unordered chains in the fake's order)."""
        held = self.tables.get((t.family, t.name), {"chains": {}})["chains"]
        chains = {}
        for c in t.chains:
            want = [r.text for r in c.rules]
            chains[c.name] = want if c.ordered or sorted(want) != sorted(held.get(c.name, [])) else held[c.name]
        return {"chains": chains, "sets": {s.name: set(s.elements) for s in t.sets}}

    def comment_handles(self, t: nft.NftTable) -> dict[str, dict[str, int]]:
        """What `nft -a list chain` gives the driver: comment -> handle, per chain."""
        out: dict[str, dict[str, int]] = {}
        for name, rules in self.tables[(t.family, t.name)]["chains"].items():
            h = parse_handles("\n".join(f'{r} # handle {self.handles[(name, r)]}' for r in rules))
            if h is not None:
                out[name] = h
        return out


def test_diff_converges_and_reverts() -> None:
    """Random views: applying diff(a, b) to a fake holding a gives b; then diff(b, a) gives a back."""
    rng = random.Random(7)
    pool = [port(f"p{i:02x}000000-0000-4000-8000-0000000000{i:02x}", f"192.0.2.{i + 10}",
                 host=rng.choice(("h1", "h1", "h2")), groups=tuple(rng.sample([G1, G2, GS], rng.randint(0, 2))),
                 net=rng.choice((NET, NET2))) for i in range(1, 30)]

    def random_view() -> dict:
        ports = [p for p in pool if rng.random() < 0.6]
        rules = [r for r in RULES if rng.random() < 0.7]
        return view(ports, rules)

    for _ in range(30):
        a, b = compute_firewall(random_view(), "h1"), compute_firewall(random_view(), "h1")
        fake = FakeNft()
        for ta in a.tables:
            fake.run(nft.table_text(ta).splitlines())
        with_handles = rng.random() < 0.5      # rule-by-rule edits of group chains, or flush + refill
        for ta, tb in zip(a.tables, b.tables, strict=True):
            fake.run(diff_table(ta, tb, fake.comment_handles(ta) if with_handles else None))
            assert fake.tables[(tb.family, tb.name)] == fake.state(tb)
        for ta, tb in zip(a.tables, b.tables, strict=True):
            fake.run(diff_table(tb, ta, fake.comment_handles(tb) if with_handles else None))
            assert fake.tables[(ta.family, ta.name)] == fake.state(ta)


def test_port_up_needs_no_cache_of_chains_and_sets() -> None:
    """A port-up's commands are only `add chain` (new chains, then their rules in one command
    each), `add set` / `add map` (with the new elements): libnftables 1.0.6 dumps every chain
    and set of the ruleset before a transaction with an `add rule` or `add element`, so the
    transaction grew with the local ports. A set that a new chain's rule names is declared first
    (nft resolves `@set` in its cache). Applied to the stateful fake, the table is the new one."""
    rules = [*RULES, rule("r-gs-group", GS, "ingress", remote_group_id=G2)]
    before = [port(P2, "192.0.2.12", host="h2", groups=(G2,)), port(P3, "192.0.2.13", groups=(GS,), net=NET2)]
    a = compute_firewall(view(before, rules), "h1")
    # P1 is the first local port of G1: its own chains, and G1's chains whose rule names G2's
    # member set (which exists: GS's rule names it too)
    b = compute_firewall(view([*before, port(P1, "192.0.2.11", groups=(G1,))], rules), "h1")
    rg = f"rg_{G2.replace('-', '')}"
    for ta, tb in zip(a.tables, b.tables, strict=True):
        cmds = diff_table(ta, tb)
        if ta == tb:                          # a table the port does not change (the host's ARP table)
            assert cmds == []
            continue
        assert cmds and all(c.split()[:2] in (["add", "chain"], ["add", "set"], ["add", "map"]) for c in cmds), cmds
        if tb.family == "inet":
            users = [i for i, c in enumerate(cmds) if f"@{rg} " in c]
            assert users and cmds.index(f"add set inet vxnet_sg {rg} {{ type ipv4_addr; }}") < users[0]
        fake = FakeNft()
        fake.run(nft.table_text(ta).splitlines())
        fake.run(cmds)
        assert fake.tables[(tb.family, tb.name)] == fake.state(tb)
    # another local port of G1: its chains and one element per map and set, nothing else
    c = compute_firewall(view([*before, port(P1, "192.0.2.11", groups=(G1,)),
                               port(P4, "192.0.2.14", groups=(G1,))], rules), "h1")
    cmds = diff_table(b.tables[1], c.tables[1])
    assert not any(rg in x for x in cmds) and not any(x.startswith(("add rule", "add element")) for x in cmds)


def test_ports_of_one_profile_share_one_chain_pair() -> None:
    """The security-group chains are per profile (stateful, IPv6 or not, groups), not per port:
    two ports of one profile, one chain pair; each port's map elements jump to its profile's."""
    v6 = [{"subnet_id": "s", "ip_address": "192.0.2.14"}, {"subnet_id": "s6", "ip_address": "2001:db8::14"}]
    ports = [port(P1, "192.0.2.11"), port(P2, "192.0.2.12"), port(P3, "192.0.2.13", groups=(G1, G2)),
             port(P4, "192.0.2.14", fixed_ips=v6)]
    fw = compute_firewall(view(ports), "h1")
    p1, p2, p3, p4 = (fw.port(p) for p in (P1, P2, P3, P4))
    assert p1.profile == p2.profile and len({p1.profile, p3.profile, p4.profile}) == 3
    sg = fw.tables[1]
    names = [c.name for c in sg.chains if c.name.startswith(("eg_", "in_"))]
    assert sorted(names) == sorted(f"{d}_{p.profile}" for p in (p1, p3, p4) for d in ("eg", "in"))
    maps = {s.name: s.elements for s in sg.sets if s.kind == "map"}
    for p in (p1, p2, p3, p4):
        assert f"{p.index:#010x} : jump {fwmodel.sg_chain(p, 'egress')}" in maps["eg_ports"]
        # the mark's high half names the profile (its out-mark chain is shared too)
        assert f"{fw.profile_numbers[p.profile] << 16:#010x} : jump {fwmodel.sg_chain(p, 'ingress')}" in maps["in_ports"]
        assert f'"{p.tap}" : jump mk_{p.profile}' in bridge_set(fw, "out_ports")
    assert len(maps["eg_ports"]) == 4 and len(maps["in_ports"]) == 3
    assert sorted(c.name for c in fw.tables[0].chains if c.name.startswith("mk_")) == sorted(
        f"mk_{p.profile}" for p in (p1, p3, p4))
    assert any("icmpv6" in r for r in chain(fw, "inet", fwmodel.sg_chain(p4, "ingress")))      # ND: ports with IPv6
    assert not any("icmpv6" in r for r in chain(fw, "inet", fwmodel.sg_chain(p1, "ingress")))
    assert [r for r in chain(fw, "inet", fwmodel.sg_chain(p3, "egress")) if "jump" in r][1].startswith(
        f"counter jump ge_{G2.replace('-', '')}")
    # the same verdicts for both ports of the profile
    pkt = Packet("100.64.1.1", "192.0.2.11", 6, dport=22)
    assert decide(fw, P1, "ingress", pkt) == decide(fw, P2, "ingress", pkt) == ("accept", "sg:r-ssh")


def test_a_profile_chain_goes_with_its_last_port() -> None:
    """A port leaving a profile that other ports keep: elements only; the last one: its chains
    go too (after the elements that jump to them). Applied to the stateful fake, both exact."""
    ports = [port(P1, "192.0.2.11"), port(P2, "192.0.2.12"), port(P3, "192.0.2.13", groups=(G1, G2))]
    a = compute_firewall(view(ports), "h1")
    b = compute_firewall(view(ports[1:]), "h1")            # P1 gone, P2 keeps the profile
    cmds = diff_table(a.tables[1], b.tables[1])
    assert cmds and not any(" chain " in c or " rule " in c for c in cmds), cmds
    c = compute_firewall(view(ports[:2]), "h1")            # P3 gone: its profile's last port
    cmds = diff_table(a.tables[1], c.tables[1])
    gone = fwmodel.sg_profile(True, False, (G1, G2))
    assert f"delete chain inet vxnet_sg eg_{gone}" in cmds and f"delete chain inet vxnet_sg in_{gone}" in cmds
    assert not any(c.startswith(("add chain", "add rule")) for c in cmds)
    for target in (b, c):
        fake = FakeNft()
        fake.run(nft.table_text(a.tables[1]).splitlines())
        fake.run(diff_table(a.tables[1], target.tables[1]))
        assert fake.tables[("inet", "vxnet_sg")] == fake.state(target.tables[1])


def test_rule_change_rewrites_one_chain_whatever_the_ports() -> None:
    ports = [port(f"p{i:03x}00000-0000-4000-8000-000000000{i:03x}", f"100.64.{i // 200}.{i % 200 + 1}")
             for i in range(300)]
    a = compute_firewall(view(ports), "h1")
    b = compute_firewall(view(ports, [*RULES, rule("r-web", G1, "ingress", protocol="tcp",
                                                   port_range_min=80, port_range_max=80)]), "h1")
    assert diff_table(a.tables[0], b.tables[0]) == []
    cmds = diff_table(a.tables[1], b.tables[1])
    assert cmds[0] == f"flush chain inet vxnet_sg gi_{G1.replace('-', '')}" and len(cmds) == 6
    # With the kernel's rule handles: one added rule, the others (and their counters) untouched.
    fake = FakeNft()
    fake.run(nft.table_text(a.tables[1]).splitlines())
    cmds = diff_table(a.tables[1], b.tables[1], fake.comment_handles(a.tables[1]))
    assert len(cmds) == 1 and cmds[0].startswith(f"add rule inet vxnet_sg gi_{G1.replace('-', '')} ")
    assert "sg:r-web#" in cmds[0]
    cmds = diff_table(b.tables[1], a.tables[1], {"gi_" + G1.replace("-", ""): {"vxnet:x#1": 7}})
    assert cmds[0].startswith("flush chain")                # handles that do not fit: flush + refill


def test_fingerprint_matches_a_kernel_listing() -> None:
    fw = compute_firewall(view(base_ports()), "h1")
    sg = fw.tables[1]
    # What `nft -t list table` prints: normalised rules, but our comments verbatim.
    listing = ["table inet vxnet_sg {"]
    for s in sg.sets:
        listing += [f"\tset {s.name} {{", "\t\ttype ipv4_addr", "\t}"]
    for c in sg.chains:
        listing.append(f"\tchain {c.name} {{")
        listing += ["\t\tsomething normalised " + re.search(r'comment "[^"]*"', r.text).group(0) for r in c.rules]
        listing.append("\t}")
    listing.append("}")
    chains, sets = parse_listing("\n".join(listing))
    assert normalise_listing(sg, chains) == fingerprint(sg) and sets == {s.name for s in sg.sets}
    # A group chain whose rules were added in another order is still recognised.
    gi = "gi_" + G1.replace("-", "")
    shuffled = dict(chains, **{gi: tuple(reversed(chains[gi]))})
    assert normalise_listing(sg, shuffled) == fingerprint(sg)
    other = compute_firewall(view(base_ports(), RULES[:-1]), "h1").tables[1]
    assert fingerprint(other) != chains


@pytest.mark.parametrize("proto,expected", [("tcp", 6), ("UDP", 17), ("132", 132), (None, None), ("any", None)])
def test_protocol_names_and_numbers(proto: str | None, expected: int | None) -> None:
    r = fwmodel.sg_rule(parse("security_group_rules", "x", rule("x", G1, "ingress", protocol=proto)))
    assert r is not None and r.protocol == expected


def test_revoked_flows_are_the_leavers_in_the_zones_of_the_ports_that_name_the_group() -> None:
    ports = base_ports()
    more = [*ports, port("p6000000-0000-4000-8000-000000000006", "192.0.2.16", host="h3", groups=(G2,))]
    before, after = compute_firewall(view(more), "h1"), compute_firewall(view(ports), "h1")
    assert revoked_flows(before, after) == [(1001, "192.0.2.16")]      # P1 (zone 1001) names G2
    assert revoked_flows(after, before) == []                          # joining revokes nothing
    no_rule = compute_firewall(view(ports, [r for r in RULES if r["id"] != "r-group"]), "h1")
    assert revoked_flows(before, no_rule) == []                        # nobody names G2 any more


# --- DHCP renewal from an address the port no longer holds ------------------------------------

def dhcp_view(ports: list[dict], enable_dhcp: bool = True) -> dict:
    """`view` with an IPv4 subnet `s` on NET (DHCP on or off); NET2 has no subnet."""
    v = view(ports)
    v["subnets"] = {"s": {"id": "s", "network_id": NET, "cidr": "192.0.2.0/24", "ip_version": 4,
                          "gateway_ip": "192.0.2.1", "enable_dhcp": enable_dhcp}}
    return v


def kinds_of(fw: fwm.Firewall, pid: str) -> list[str]:
    return [nft.comment_kind(re.search(r'comment "([^"]*)"', r).group(1))
            for r in chain(fw, "bridge", fwps.ps_chain_name(fw.port(pid)))]


def test_a_leased_port_may_renew_from_any_address_but_only_to_its_responder() -> None:
    from vxnet.compute import dhcp

    fw = compute_firewall(dhcp_view([port(P1, "192.0.2.11"), port(P3, "192.0.2.13", net=NET2)]), "h1")
    rmac = dhcp.responder_mac(NET)
    assert fw.port(P1).dhcp_mac == rmac
    assert kinds_of(fw, P1) == ["dhcp-server", "mark", "mark", "spoof-mac", "spoof-arp", "arp",
                                "dhcp-client", "dhcp-renew", "spoof-ip", "spoof-ip6", "other"]
    rules = chain(fw, "bridge", "ps")
    assert next(r for r in rules if "dhcp-renew" in r).startswith(
        "udp sport 68 udp dport 67 iifname . ether daddr @ps_dhcp counter accept")
    # NET2 has no DHCP subnet: its tap is not steered, so no exemption (the frame would go anywhere).
    assert fw.port(P3).dhcp_mac == ""
    assert bridge_set(fw, "ps_dhcp") == {f'"{fw.port(P1).tap}" . {rmac}'}


def test_the_renew_exemption_follows_the_dhcp_predicate() -> None:
    from vxnet.compute import dhcp

    # enable_dhcp false, the port bound elsewhere, admin down: not leased, not steered, no rule.
    for v, host in ((dhcp_view([port(P1, "192.0.2.11")], enable_dhcp=False), "h1"),
                    (dhcp_view([port(P1, "192.0.2.11", admin_state_up=False)]), "h1")):
        fw = compute_firewall(v, host)
        assert fw.port(P1).dhcp_mac == "" and bridge_set(fw, "ps_dhcp") == frozenset()
        assert dhcp.compute_dhcp(v, host, 60).responders == ()
    # The firewall's "leased" is exactly the taps DHCP steers, port by port.
    ports = [port(P1, "192.0.2.11"), port(P2, "192.0.2.12", groups=(G2,)), port(P3, "192.0.2.13", net=NET2),
             port(P4, "192.0.2.14", fixed_ips=[{"subnet_id": "other", "ip_address": "192.0.2.14"}])]
    v = dhcp_view([dict(p, **{"binding:host_id": "h1"}) for p in ports])
    fw = compute_firewall(v, "h1")
    steered = {t for r in dhcp.compute_dhcp(v, "h1", 60).responders for t in r.taps}
    assert {p.tap for p in fw.ports if p.dhcp_mac} == steered == {fw.port(P1).tap, fw.port(P2).tap}


def test_port_security_off_gets_no_chain_at_all() -> None:
    fw = compute_firewall(dhcp_view([port(P1, "192.0.2.11", port_security_enabled=False)]), "h1")
    assert fw.port(P1) is None and fw.open_ports == {P1}
    ps = next(t for t in fw.tables if t.family == "bridge")
    assert [c.name for c in ps.chains] == ["pre", "out", "ps", "ps6"] and not any(s.elements for s in ps.sets)
    assert fwm.port_security(fw, P1, "02:00:00:00:02:0b", Packet("192.0.2.99", "192.0.2.1", 17, 68, 67)) == \
        ("accept", "unfiltered")


def test_port_security_evaluation_names_the_rule() -> None:
    fw = compute_firewall(dhcp_view([port(P1, "192.0.2.11"), port(P3, "192.0.2.13", net=NET2)]), "h1")
    own1, own3 = "02:00:00:00:02:0b", "02:00:00:00:02:0d"
    renew = Packet("192.0.2.99", "192.0.2.1", 17, 68, 67)           # from a former address
    assert fwm.port_security(fw, P1, own1, renew, "02:00:00:00:00:01") == ("accept", "dhcp-renew")   # steered
    assert fwm.port_security(fw, P1, "02:00:00:00:99:99", renew) == ("drop", "spoof-mac")
    assert fwm.port_security(fw, P1, own1, Packet("192.0.2.99", "192.0.2.1", 17, 40000, 67)) == ("drop", "spoof-ip")
    assert fwm.port_security(fw, P1, own1, Packet("192.0.2.11", "192.0.2.1", 17, 67, 68)) == ("drop", "dhcp-server")
    assert fwm.port_security(fw, P1, own1, Packet("0.0.0.0", "255.255.255.255", 17, 68, 67)) == \
        ("accept", "dhcp-client")
    assert fwm.port_security(fw, P1, own1, Packet("192.0.2.11", "192.0.2.1", 6, 40000, 22)) == ("accept", "mark")
    # Not leased (no DHCP on NET2): the same frame, even addressed to a responder MAC, is spoofing.
    assert fwm.port_security(fw, P3, own3, renew, fwm.dhcp.responder_mac(NET)) == ("drop", "spoof-ip")


# --- IPv6 --------------------------------------------------------------------------------------

RULES6 = [
    rule("r6-group", G1, "ingress", ethertype="IPv6", remote_group_id=G2),
    rule("r6-ping", G1, "ingress", ethertype="IPv6", protocol="icmp", port_range_min=128, port_range_max=0),
    rule("r6-ssh", G1, "ingress", ethertype="IPv6", protocol="tcp", port_range_min=22, port_range_max=22,
         remote_ip_prefix="2001:db8:7::/48"),
    rule("r6-any", G1, "egress", ethertype="IPv6", remote_ip_prefix="::/0"),
    rule("r6-bad", G1, "ingress", ethertype="IPv6", remote_ip_prefix="192.0.2.0/24"),    # other family
]


def test_ipv6_rules_render_with_remote_group_sets_and_icmpv6() -> None:
    p2 = port(P2, "192.0.2.12", host="h2", groups=(G2,), fixed_ips=[
        {"subnet_id": "s", "ip_address": "192.0.2.12"}, {"subnet_id": "s6", "ip_address": "2001:db8::12"}],
        allowed_address_pairs=[{"ip_address": "2001:db8:1::/64"}])
    fw = compute_firewall(view([port(P1, "192.0.2.11"), p2], RULES6), "h1")
    gi = chain(fw, "inet", "gi_" + G1.replace("-", ""))
    assert [r.split(" counter")[0] for r in gi] == [
        f"meta nfproto ipv6 ip6 saddr @rg6_{G2.replace('-', '')}",
        "meta nfproto ipv6 icmpv6 type 128 icmpv6 code 0",
        "meta nfproto ipv6 ip6 saddr 2001:db8:7::/48 meta l4proto 6 th dport 22"]
    assert chain(fw, "inet", "ge_" + G1.replace("-", ""))[0].startswith("meta nfproto ipv6 counter accept")
    assert fw.ignored_rules == ("r6-bad",)
    # members: IPv6 fixed IPs and pairs, no link-locals; no IPv4 set (no IPv4 rule names G2)
    assert fw.members6 == {G2: frozenset({"2001:db8::12", "2001:db8:1::/64"})} and fw.members == {}
    in1 = chain(fw, "inet", fwmodel.sg_chain(fw.port(P1), "ingress"))
    assert not any("icmpv6" in r for r in in1)                  # P1 has no IPv6 address
    sg = next(t for t in fw.tables if t.family == "inet")
    assert {s.name: s.type for s in sg.sets if s.kind == "set"} == {f"rg6_{G2.replace('-', '')}": "ipv6_addr",
                                                                     "ct_macs": "ether_addr"}
    # decide() evaluates them; an IPv4 packet never matches an IPv6 rule
    assert fwm.decide(fw, P1, "ingress", fwm.Packet("2001:db8:1::5", "2001:db8::11", 6, dport=80)) == \
        ("accept", "sg:r6-group")
    assert fwm.decide(fw, P1, "ingress", fwm.Packet("2001:db8:9::5", "2001:db8::11", 58, icmp_type=128,
                                                    icmp_code=0)) == ("accept", "sg:r6-ping")
    assert fwm.decide(fw, P1, "ingress", fwm.Packet("2001:db8:9::5", "2001:db8::11", 6, dport=22)) == \
        ("drop", "default-drop")
    # ND is always allowed to a port with IPv6 addresses; P1 has none
    assert fwm.decide(fw, P1, "ingress", fwm.Packet("fe80::1", "fe80::2", 58, icmp_type=135)) == ("drop", "default-drop")
    fw2 = compute_firewall(view([port(P1, "192.0.2.11", fixed_ips=[{"subnet_id": "s6", "ip_address": "2001:db8::11"}]),
                                 p2], RULES6), "h1")
    assert fwm.decide(fw2, P1, "ingress", fwm.Packet("fe80::1", "fe80::2", 58, icmp_type=135)) == ("accept", "nd")
    assert fwm.decide(fw2, P1, "egress", fwm.Packet("fe80::2", "ff02::1:2", 17, sport=546, dport=547)) == \
        ("accept", "dhcp6-request")
    assert fwm.decide(fw, P1, "ingress", fwm.Packet("203.0.113.9", "192.0.2.11", 6, dport=22)) == \
        ("drop", "default-drop")
    # a member leaving revokes its IPv6 flows too
    gone = compute_firewall(view([port(P1, "192.0.2.11")], RULES6), "h1")
    assert revoked_flows(fw, gone) == [(1001, "2001:db8:1::/64"), (1001, "2001:db8::12")]


def test_nd_checks_use_the_ports_pairs_and_macs() -> None:
    p1 = port(P1, "192.0.2.11", fixed_ips=[{"subnet_id": "s6", "ip_address": "2001:db8::11"}],
              allowed_address_pairs=[{"ip_address": "2001:db8:5::/120", "mac_address": "02:00:00:00:07:10"}])
    fw = compute_firewall(view([p1]), "h1")
    rules = {nft.comment_kind(re.search(r'comment "([^"]*)"', r).group(1)): r for r in chain(fw, "bridge", "ps6")}
    tap, mark = f'"{fw.port(P1).tap}"', f"{fw.port(P1).index:#010x}"
    # the (MAC . address) pairs as raw 128-bit keys: exact ones in `ps_mark6`, a prefix as a range
    assert bridge_set(fw, "ps_mark6") == {f"{tap} . 02:00:00:00:02:0b . 0x20010db8000000000000000000000011 : {mark}",
                                          f"{tap} . 02:00:00:00:02:0b . 0xfe80000000000000000000fffe00020b : {mark}",
                                          f"{tap} . 02:00:00:00:07:10 . 0xfe80000000000000000000fffe000710 : {mark}"}
    assert bridge_set(fw, "ps_mark6_net") == {
        f"{tap} . 02:00:00:00:07:10 . 0x20010db8000500000000000000000000-0x20010db80005000000000000000000ff : {mark}"}
    assert bridge_set(fw, "ps_lladdr") == {f"{tap} . 0x2000000020b", f"{tap} . 0x20000000710"}
    own = "iifname . ether saddr . @th,64,128 != @ps_mark6 iifname . ether saddr . @th,64,128 != @ps_mark6_net"
    assert rules["spoof-na-target"].startswith(f"icmpv6 type nd-neighbor-advert {own} counter drop")
    assert rules["spoof-dad-target"].startswith(f"ip6 saddr :: icmpv6 type nd-neighbor-solicit {own} counter drop")
    assert "@th,192,8 { 1, 2 } iifname . @th,208,48 != @ps_lladdr counter drop" in rules["spoof-nd-lladdr"]
    assert "@th,64,8 1 iifname . @th,80,48 != @ps_lladdr counter drop" in rules["spoof-rs-lladdr"]
    assert [r.split(" counter")[0] for r in chain(fw, "bridge", "ps6") if "mark6#" in r] == [
        f"ether type ip6 meta mark set iifname . ether saddr . @nh,64,128 map @ps_mark6{x}" for x in ("", "_net")]
    decl = {x.name: x.declaration() for x in fw.tables[0].sets}
    assert decl["ps_mark6"] == "{ typeof iifname . ether saddr . @nh,64,128 : meta mark; }"
    assert decl["ps_lladdr"] == "{ typeof iifname . @th,208,48; }"
    in1 = chain(fw, "inet", fwmodel.sg_chain(fw.port(P1), "ingress"))
    assert in1[2].startswith("icmpv6 type { nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, "
                             "mld-listener-query } counter accept")
    assert in1[3].startswith("meta nfproto ipv6 udp sport 547 udp dport 546 counter accept")
    eg1 = chain(fw, "inet", fwmodel.sg_chain(fw.port(P1), "egress"))
    assert any(r.startswith("meta nfproto ipv6 udp sport 546 udp dport 547 counter accept") for r in eg1)
    out = chain(fw, "bridge", "out")
    assert out[0].startswith('icmpv6 type { nd-router-solicit, nd-router-advert, nd-redirect } oifname "vxv-*"')
    assert "ether daddr & ff:ff:00:00:00:00 == 33:33:00:00:00:00" in out[1] and "mld2-listener-report" in out[1]
    assert out[1].startswith("icmpv6 type") and 'oifname "vxv-*" counter drop' in out[1]
    assert "oifname vmap @out_ports" in out[2] and len(out) == 3


def test_port_security_evaluation_covers_ipv6_sources() -> None:
    # The model follows the chain's IPv6 rules: own fixed IP, a pair's prefix (its own MAC),
    # the link-locals of both MACs; a VM is never a router or a DHCPv6 server.
    p1 = port(P1, "192.0.2.11", fixed_ips=[{"subnet_id": "s", "ip_address": "192.0.2.11"},
                                          {"subnet_id": "s6", "ip_address": "2001:db8::11"}],
              allowed_address_pairs=[{"ip_address": "2001:db8:5::/120", "mac_address": "02:00:00:00:07:10"}])
    fw = compute_firewall(view([p1, port(P2, "192.0.2.12")]), "h1")
    own, pair_mac = "02:00:00:00:02:0b", "02:00:00:00:07:10"
    ps = fwm.port_security
    ping = {"protocol": 58, "icmp_type": 128, "icmp_code": 0}
    assert ps(fw, P1, own, Packet("2001:db8::11", "2001:db8::12", **ping)) == ("accept", "mark6")
    assert ps(fw, P1, own, Packet("fe80::ff:fe00:20b", "fe80::1", **ping)) == ("accept", "mark6")
    assert ps(fw, P1, pair_mac, Packet("2001:db8:5::7f", "2001:db8::12", **ping)) == ("accept", "mark6")
    assert ps(fw, P1, pair_mac, Packet("fe80::ff:fe00:710", "fe80::1", **ping)) == ("accept", "mark6")
    # the pair's prefix from the port's own MAC, a prefix's neighbour, another link-local
    assert ps(fw, P1, own, Packet("2001:db8:5::7f", "2001:db8::12", **ping)) == ("drop", "spoof-ip6")
    assert ps(fw, P1, pair_mac, Packet("2001:db8:5::100", "2001:db8::12", **ping)) == ("drop", "spoof-ip6")
    assert ps(fw, P1, own, Packet("fe80::1234", "fe80::1", **ping)) == ("drop", "spoof-ip6")
    assert ps(fw, P1, "02:00:00:00:99:99", Packet("2001:db8::11", "2001:db8::12", **ping)) == ("drop", "spoof-mac")
    # RA guard and the DHCPv6-server guard decide before the source check, even from its own address
    assert ps(fw, P1, own, Packet("fe80::ff:fe00:20b", "ff02::1", 58, icmp_type=134, icmp_code=0)) == \
        ("drop", "ra-guard")
    assert ps(fw, P1, own, Packet("fe80::ff:fe00:20b", "2001:db8::12", 58, icmp_type=137, icmp_code=0)) == \
        ("drop", "ra-guard")
    assert ps(fw, P1, own, Packet("fe80::ff:fe00:20b", "fe80::1", 17, 547, 546)) == ("drop", "dhcp6-server")
    assert ps(fw, P1, own, Packet("::", "ff02::1:ff00:11", 58, icmp_type=135, icmp_code=0)) == \
        ("accept", "v6-unspecified")
    assert ps(fw, P1, own, Packet("::", "ff02::1", **ping)) == ("drop", "spoof-ip6")
    # a port without any IPv6 address of its own has no IPv6 rules: all its IPv6 is spoof-ip6
    assert ps(fw, P2, "02:00:00:00:02:0c", Packet("fe80::ff:fe00:20c", "fe80::1", **ping)) == ("drop", "spoof-ip6")
    assert ps(fw, P2, "02:00:00:00:02:0c", Packet("fe80::ff:fe00:20c", "ff02::1", 58, icmp_type=134)) == \
        ("drop", "spoof-ip6")
    # IPv4 unchanged
    assert ps(fw, P1, own, Packet("192.0.2.11", "192.0.2.12", 6, 40000, 22)) == ("accept", "mark")
    assert ps(fw, P1, own, Packet("192.0.2.99", "192.0.2.12", 6, 40000, 22)) == ("drop", "spoof-ip")


def test_group_members_equal_the_collapsed_port_addresses() -> None:
    # group_members (no per-port caches, canonical addresses shared) == what the sets held before:
    # collapse/collapse6 of every member port's fixed IPs and pairs, whatever the notation.
    import socket

    from vxnet.compute.firewall_model import collapse, collapse6, group_members, port_addresses, port_addresses6
    from vxnet.model import parse_view

    addrs = ["192.0.2.21", "192.0.2.22/32", "198.51.100.0/25", "198.51.100.7", "2001:db8::1", "2001:DB8:0::2",
             "2001:db8::3/128", "2001:db8:1::/64", "2001:db8:1::9", "not-an-address", "", "::ffff:192.0.2.9",
             "100.64.0.1/10", "100.64.3.4"]
    ports = [port(f"p{i:07d}-0000-4000-8000-00000000000{i % 10}", "192.0.2.100", host="h2", groups=(G2,),
                  fixed_ips=[{"subnet_id": "s", "ip_address": a}],
                  allowed_address_pairs=[{"ip_address": addrs[(i + 3) % len(addrs)]}])
             for i, a in enumerate(addrs)]
    ports.append(port("p9999999-0000-4000-8000-000000000009", "192.0.2.200", host="h2", groups=(G1,)))
    v = parse_view(view(ports))
    members = list(v.ports.values())
    want4 = collapse(a for p in members if G2 in p.security_groups for _, a in port_addresses(p))
    want6 = collapse6(a for p in members if G2 in p.security_groups for _, a in port_addresses6(p, False))
    assert group_members(members, G2, socket.AF_INET) == want4
    assert group_members(members, G2, socket.AF_INET6) == want6
    assert "192.0.2.200" not in want4 and "100.64.0.0/10" in want4 and "2001:db8:1::/64" in want6
    # a canonical address is the port's own string, not a copy
    plain = next(p for p in members if p.fixed_ips and p.fixed_ips[0].ip_address == "198.51.100.7")
    got = group_members([plain], G2, socket.AF_INET)
    assert any(m is plain.fixed_ips[0].ip_address for m in got)


def test_an_ipv4_ports_checks_are_elements_of_the_shared_chains_sets() -> None:
    """A port without IPv6 pairs has no chain of its own: its tap, MACs and (MAC . address)
    pairs are elements of the shared chain's sets (a pair's CIDR in the interval twins), with
    the same verdicts as its own chain had."""
    one = port(P1, "192.0.2.11")
    two = port(P2, "192.0.2.12", allowed_address_pairs=[{"ip_address": "192.0.2.200"}])
    more = port(P3, "192.0.2.13", allowed_address_pairs=[{"ip_address": "192.0.2.201", "mac_address": "02:00:00:00:07:10"},
                                                         {"ip_address": "198.51.100.0/28", "mac_address": "02:00:00:00:07:10"}])
    fw = compute_firewall(view([one, two, more]), "h1")
    t1, t2, t3 = (f'"{fw.port(p).tap}"' for p in (P1, P2, P3))
    i1, i2, i3 = (f"{fw.port(p).index:#010x}" for p in (P1, P2, P3))
    assert [c.name for c in fw.tables[0].chains if c.name.startswith("ps")] == ["ps", "ps6"]   # ps6 unused here
    assert bridge_set(fw, "pre_ports") == {f"{t} : jump ps" for t in (t1, t2, t3)}
    assert bridge_set(fw, "ps_mark") == {f"{t1} . 02:00:00:00:02:0b . 192.0.2.11 : {i1}",
                                         f"{t2} . 02:00:00:00:02:0c . 192.0.2.12 : {i2}",
                                         f"{t2} . 02:00:00:00:02:0c . 192.0.2.200 : {i2}",
                                         f"{t3} . 02:00:00:00:02:0d . 192.0.2.13 : {i3}",
                                         f"{t3} . 02:00:00:00:07:10 . 192.0.2.201 : {i3}"}
    assert bridge_set(fw, "ps_mark_net") == {f"{t3} . 02:00:00:00:07:10 . 198.51.100.0/28 : {i3}"}
    assert bridge_set(fw, "ps_arp_net") == {f"{t3} . 02:00:00:00:07:10 . 198.51.100.0/28"}
    assert bridge_set(fw, "ps_macs") == {f"{t1} . 02:00:00:00:02:0b", f"{t2} . 02:00:00:00:02:0c",
                                         f"{t3} . 02:00:00:00:02:0d", f"{t3} . 02:00:00:00:07:10"}
    assert {f"{t3} . 02:00:00:00:07:10 . 0.0.0.0", f"{t3} . 02:00:00:00:07:10 . 192.0.2.201",
            f"{t1} . 02:00:00:00:02:0b . 0.0.0.0"} <= bridge_set(fw, "ps_arp")
    assert f"{t1} . 02:00:00:00:07:10 . 192.0.2.201" not in bridge_set(fw, "ps_arp")
    rules = chain(fw, "bridge", "ps")
    assert rules[1].startswith("meta mark set iifname . ether saddr . ip saddr map @ps_mark counter accept")
    assert rules[2].startswith("meta mark set iifname . ether saddr . ip saddr map @ps_mark_net counter accept")
    for pid, mac, src in ((P1, "02:00:00:00:02:0b", "192.0.2.11"), (P2, "02:00:00:00:02:0c", "192.0.2.200"),
                          (P3, "02:00:00:00:07:10", "198.51.100.9")):
        assert fwm.port_security(fw, pid, mac, Packet(src, "192.0.2.1")) == ("accept", "mark")
        assert fwm.port_security(fw, pid, mac, Packet("192.0.2.99", "192.0.2.1")) == ("drop", "spoof-ip")


def elements_only(a: fwm.Firewall, b: fwm.Firewall, spliced: tuple[nft.NftTable, ...]) -> list[list[str]]:
    """The bridge table's port-up commands from `a` to `b`, by `render` and by `render_update`
    (`spliced`): elements only, no chain or rule; applied to the stateful fake they give `b`'s
    table, and the port-down commands (element deletions only) give `a`'s back."""
    ups = []
    for new in (b.tables[0], spliced[0]):
        up = diff_table(a.tables[0], new)
        assert up and not any(" chain " in c or " rule " in c for c in up), up
        fake = FakeNft()
        fake.run(nft.table_text(a.tables[0]).splitlines())
        fake.run(up)
        assert fake.tables[("bridge", "vxnet_ps")] == fake.state(b.tables[0])
        down = diff_table(new, a.tables[0])
        assert down and all(c.startswith("delete element") for c in down), down
        fake.run(down)
        assert fake.tables[("bridge", "vxnet_ps")] == fake.state(a.tables[0])
        ups.append(up)
    return ups


def test_a_port_up_adds_only_elements_to_the_bridge_table() -> None:
    """An IPv4 port of a profile on the host already: its port-up adds no chain and no rule to
    the bridge table (elements of its sets and maps only), by `render` and by `render_update`;
    its port-down deletes exactly its elements. Applied to the stateful fake, both exact."""
    ports = [port(P1, "192.0.2.11"), port(P3, "192.0.2.13", groups=(G1, G2))]
    a = compute_firewall(view(ports), "h1")
    assert a.tables                           # rendered: `render_update` splices from it
    pair = [{"ip_address": "198.51.100.0/28", "mac_address": "02:00:00:00:07:10"}]
    b = compute_firewall(view([*ports, port(P2, "192.0.2.12", allowed_address_pairs=pair)]), "h1")
    assert b.port(P2).profile == a.port(P1).profile
    spliced = render_update(a, b)
    assert spliced is not None and spliced[0] == b.tables[0] and spliced[1] == b.tables[1]
    for up in elements_only(a, b, spliced):
        # the exact addresses as plain set elements, the CIDR pair in the interval sets
        assert {c.split()[1] for c in up} <= {"map", "set", "element"}
        assert sorted(c.split()[4] for c in up if c.startswith("add element")) == ["ps_arp_net", "ps_mark_net"]
    tap = f'"{b.port(P2).tap}"'
    assert all(not e.startswith(tap) for s in a.tables[0].sets for e in s.elements)
    # pre, out, 1 mark, 1 mark (CIDR), 2 MACs, 3 ARP (its address, each MAC with 0.0.0.0), 1 ARP (CIDR)
    assert sum(e.startswith(tap) for s in b.tables[0].sets for e in s.elements) == 10
    # a port of a new profile adds that profile's out-mark chain, nothing per port
    c = compute_firewall(view([*ports, port(P4, "192.0.2.14", groups=(G2,))]), "h1")
    new_chains = [x.split()[4] for x in diff_table(a.tables[0], c.tables[0]) if x.startswith("add chain")]
    assert set(new_chains) == {f"mk_{c.port(P4).profile}"}


def test_a_port_with_ipv6_pairs_adds_only_elements_too() -> None:
    """A port with IPv6 pairs: dispatched to the shared `ps6`, its facts elements of the shared
    sets (the IPv4 ones and `ps_mark6`, `ps_lladdr`), so its port-up adds no chain and no rule,
    by `render` and by `render_update`; the sets it has no element in are the same objects; the
    table's chains are the same with 1 and with 20 such ports."""
    v6 = [{"subnet_id": "s", "ip_address": "192.0.2.14"}, {"subnet_id": "s6", "ip_address": "2001:db8::14"}]
    ports = [port(P1, "192.0.2.11"), port(P3, "192.0.2.13", fixed_ips=[{"subnet_id": "s6", "ip_address": "2001:db8::13"}])]
    a = compute_firewall(view(ports), "h1")
    assert a.tables
    b = compute_firewall(view([*ports, port(P2, "192.0.2.12", fixed_ips=v6)]), "h1")
    spliced = render_update(a, b)
    assert spliced is not None and spliced == b.tables
    p2 = b.port(P2)
    assert fwps.ps_chain_name(p2) == "ps6" and f'"{p2.tap}" : jump ps6' in bridge_set(b, "pre_ports")
    assert [c.name for c in spliced[0].chains] == [c.name for c in a.tables[0].chains]
    kept = {s.name for s, t in zip(a.tables[0].sets, spliced[0].sets, strict=True) if s is t}
    assert kept == {"ps_mark_net", "ps_arp_net", "ps_dhcp", "ps_mark6_net"}
    tap = f'"{p2.tap}"'
    # pre, out, 1 mark, 1 MAC, 2 ARP, 2 IPv6 pairs (its address, its link-local), 1 ND MAC
    assert sum(e.startswith(tap) for s in b.tables[0].sets for e in s.elements) == 9
    elements_only(a, b, spliced)
    many = [port(f"p{i:07x}-0000-4000-8000-000000000000", f"192.0.2.{100 + i}",
                 fixed_ips=[{"subnet_id": "s", "ip_address": f"192.0.2.{100 + i}"},
                            {"subnet_id": "s6", "ip_address": f"2001:db8::{100 + i:x}"}]) for i in range(20)]
    one, twenty = (compute_firewall(view(x), "h1") for x in (many[:1], many))
    assert [c.name for c in one.tables[0].chains] == [c.name for c in twenty.tables[0].chains]
    assert len(bridge_set(twenty, "ps_mark6")) == 40        # each port's address and link-local


def test_a_port_gaining_an_ipv6_address_moves_to_ps6_by_elements() -> None:
    """A port that gets (or loses) an IPv6 address: its `pre_ports` element jumps to `ps6`
    (back to `ps`) and its IPv6 elements come (go), no anti-spoofing chain or rule (its security
    profile changes, so its profile's `mk_` chain may come and go); applied to the stateful
    fake (which refuses a map key held with another verdict) both ways, by `render_update`."""
    v4 = [port(P1, "192.0.2.11"), port(P3, "192.0.2.13")]
    v6 = [v4[0], port(P3, "192.0.2.13", fixed_ips=[{"subnet_id": "s", "ip_address": "192.0.2.13"},
                                                   {"subnet_id": "s6", "ip_address": "2001:db8::13"}])]
    a, b = compute_firewall(view(v4), "h1"), compute_firewall(view(v6), "h1")
    tap = f'"{b.port(P3).tap}"'
    assert f"{tap} : jump ps" in bridge_set(a, "pre_ports") and f"{tap} : jump ps6" in bridge_set(b, "pre_ports")
    for x, y in ((a, b), (b, a)):
        x.tables                                                # noqa: B018 - rendered: `render_update` splices from it
        spliced = render_update(x, compute_firewall(view(v6 if y is b else v4), "h1"))
        assert spliced is not None and spliced[0] == y.tables[0]
        cmds = diff_table(x.tables[0], spliced[0])
        # elements only, and the out-mark chain of its profile (with IPv6 addresses: another one)
        assert cmds and all(" element " in c or "elements = " in c or " mk_" in c for c in cmds), cmds
        assert not any(" rule " in c or " chain bridge vxnet_ps ps" in c for c in cmds), cmds
        fake = FakeNft()
        fake.run(nft.table_text(x.tables[0]).splitlines())
        fake.run(cmds)
        assert fake.tables[("bridge", "vxnet_ps")] == fake.state(y.tables[0])


def test_link_locals_as_nd_packet_forms_them() -> None:
    """The firewall's fast EUI-64 link-local equals `nd_packet.link_local` (zero runs included)."""
    from vxnet.compute.nd_packet import link_local

    rnd = random.Random(7)
    macs = ["02:00:00:00:00:00", "00:00:00:00:00:00", "fa:16:3e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:ff:00:00"]
    macs += [":".join(f"{rnd.choice([0, 0, rnd.randrange(256)]):02x}" for _ in range(6)) for _ in range(2000)]
    for mac in macs:
        assert fwmodel._ll(mac) == link_local(mac)
    assert fwmodel._ll("not a mac") is None and fwmodel._ll("02:00:00:00:00") is None
