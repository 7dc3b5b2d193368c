"""bench/netdev_lab.py: reading `nft list ruleset` back and writing the per-tap `table netdev`
variant of vxnet's bridge-family tables (the hand experiment of issue 18; the lab run is in
docs/benchmarks.md)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bench import netdev_lab as nd

# What `nft list ruleset` printed on h1 of the lab (shortened: one port with port security,
# one without), counters as the kernel left them.
RULESET = """table bridge vxnet_ps {
\tmap pre_ports {
\t\ttype ifname : verdict
\t\telements = { "tapaaaa" : jump ps_aaaa }
\t}

\tmap out_ports {
\t\ttype ifname : verdict
\t\telements = { "tapaaaa" : jump mk_aaaa }
\t}

\tchain pre {
\t\ttype filter hook prerouting priority -200; policy accept;
\t\tiifname vmap @pre_ports comment "vxnet:dispatch#1"
\t}

\tchain out {
\t\ttype filter hook forward priority -100; policy accept;
\t\ticmpv6 type { nd-router-solicit } oifname "vxv-*" counter packets 3 bytes 9 drop comment "vxnet:nd-underlay#2"
\t\toifname vmap @out_ports comment "vxnet:dispatch#3"
\t}

\tchain ps_aaaa {
\t\tudp sport 67 counter packets 0 bytes 0 drop comment "vxnet:dhcp-server#4"
\t\tether saddr fa:16:3e:00:00:01 ip saddr 100.64.40.11 counter packets 7 bytes 700 meta mark set 0x0000cf86 accept comment "vxnet:mark#5"
\t\tether type ip counter packets 2 bytes 168 drop comment "vxnet:spoof-ip#6"
\t}

\tchain mk_aaaa {
\t\tmeta mark set meta mark & 0x0000ffff | 0xcf860000 comment "vxnet:mark#7"
\t}
}
table bridge vxnet_dhcp {
\tmap steer {
\t\ttype ifname : ether_addr
\t\telements = { "tapaaaa" : 0a:1b:e9:a3:85:56,
\t\t\t     "tapbbbb" : 0a:ac:43:bc:8b:b2 }
\t}
}
table bridge vxnet_meta {
\tmap steer {
\t\ttype ifname : ether_addr
\t\telements = { "tapaaaa" : 0e:da:0b:de:f6:f6,
\t\t\t     "tapbbbb" : 0e:a4:81:9c:bd:c3 }
\t}

\tmap src {
\t\ttype ifname : ipv4_addr
\t\telements = { "tapaaaa" : 169.254.1.1,
\t\t\t     "tapbbbb" : 169.254.1.2 }
\t}
}
table inet vxnet_sg {
\tmap in_ports {
\t\ttype mark : verdict
\t\telements = { 0xcf860000 : jump in_aaaa }
\t}

\tchain ingress {
\t\ttype filter hook forward priority 10; policy accept;
\t\tmeta mark & 0xffff0000 vmap @in_ports comment "vxnet:dispatch#8"
\t}

\tchain in_aaaa {
\t\tcounter packets 5 bytes 5 drop comment "vxnet:default-drop#9"
\t}
}
"""


def test_tables_are_split_by_family_and_name_with_counters_reset() -> None:
    t = nd.split_tables(RULESET)
    assert set(t) == {("bridge", "vxnet_ps"), ("bridge", "vxnet_dhcp"), ("bridge", "vxnet_meta"), ("inet", "vxnet_sg")}
    assert "packets" not in t[("bridge", "vxnet_ps")] and "counter meta mark set" in t[("bridge", "vxnet_ps")]


def test_map_elements_read_over_several_lines() -> None:
    t = nd.split_tables(RULESET)
    assert nd.map_elements(t[("bridge", "vxnet_dhcp")], "steer") == {"tapaaaa": "0a:1b:e9:a3:85:56",
                                                                     "tapbbbb": "0a:ac:43:bc:8b:b2"}
    assert nd.map_elements(t[("bridge", "vxnet_ps")], "pre_ports") == {"tapaaaa": "jump ps_aaaa"}
    assert nd.map_elements(t[("bridge", "vxnet_ps")], "absent") == {}


def test_netdev_table_does_per_tap_what_the_bridge_tables_did() -> None:
    netdev, sg = nd.netdev_script(nd.split_tables(RULESET), ["vxv-1"])
    # the port with port security: steering, then its anti-spoofing chain, then the metadata
    # source rewrite (after the source check)
    tap_a = nd.block(netdev, "chain", "in0")
    assert tap_a == ['type filter hook ingress device "tapaaaa" priority -300; policy accept;',
                     "udp sport 68 udp dport 67 ether daddr set 0a:1b:e9:a3:85:56",
                     "ip daddr 169.254.169.254 tcp dport 80 ether daddr set 0e:da:0b:de:f6:f6",
                     "jump ps_aaaa",
                     "ip daddr 169.254.169.254 tcp dport 80 ip saddr set 169.254.1.1 accept"]
    # the port without: steering only
    assert nd.block(netdev, "chain", "in1")[0] == 'type filter hook ingress device "tapbbbb" priority -300; policy accept;'
    assert not any("jump" in r for r in nd.block(netdev, "chain", "in1"))
    # the anti-spoofing chain copied, its marking rule returning to the tap's chain
    ps = nd.block(netdev, "chain", "ps_aaaa")
    assert "meta mark set 0x0000cf86 return" in ps[1] and "drop" in ps[2]
    # the underlay ND guard on the VXLAN device's egress, without the dispatch
    vx = nd.block(netdev, "chain", "vx0")
    assert vx[0].startswith('type filter hook egress device "vxv-1"') and len(vx) == 2 and "nd-underlay" in vx[1]
    # the ingress dispatch by destination MAC
    assert "ether daddr vmap @in_macs" in sg and "mark & 0xffff0000 vmap" not in sg
    assert nd.map_elements(sg, "in_macs") == {"fa:16:3e:00:00:01": "jump in_aaaa"}


def test_variant_scripts_replace_the_same_tables_whatever_came_before() -> None:
    t = nd.split_tables(RULESET)
    drops = ["table netdev vxnet_nd {}\ndelete table netdev vxnet_nd", "delete table inet vxnet_sg",
             "delete table bridge vxnet_ps", "delete table bridge vxnet_qos"]
    for v in nd.VARIANTS:
        s = nd.variant_script(v, t, ["vxv-1"])
        assert all(d in s for d in drops)
    assert "table bridge vxnet_ps {\n" in nd.variant_script("as is", t, [])
    nobr = nd.variant_script("no bridge table", t, [])
    assert "table bridge vxnet_ps {\n" not in nobr and "table inet vxnet_sg {\n" in nobr
    assert "table netdev vxnet_nd {\n" in nd.variant_script("netdev", t, [])
    nt = nd.variant_script(nd.NOTRACK, t, [])
    assert "table netdev vxnet_nd {\n" in nt and "udp dport 4789 notrack" in nt
    assert all("delete table inet vxnet_nt" in nd.variant_script(v, t, []) for v in (*nd.VARIANTS, nd.NOTRACK))
    assert "notrack" not in nd.variant_script("netdev", t, [])
    only = nd.variant_script(nd.NOTRACK_ONLY, t, [])
    assert "udp dport 4789 notrack" in only and "table bridge vxnet_ps {\n" in only and "table netdev vxnet_nd {\n" not in only
    nothing = nd.variant_script("no table at all", t, [])
    assert "delete table arp vxnet_host" in nothing and "{\n" not in nothing.replace("{}\n", "")
    with pytest.raises(ValueError):
        nd.variant_script("other", t, [])


SG = """table inet vxnet_sg {
\tset ct_macs {
\t\ttype ether_addr
\t}

\tchain host {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname "vxb-*" counter drop comment "vxnet:host-guard#1"
\t}

\tchain zone {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tether saddr != @ct_macs ether daddr != @ct_macs iifname "vxb-*" counter notrack accept comment "vxnet:untracked#2"
\t}

\tchain egress {
\t\ttype filter hook forward priority filter; policy accept;
\t}
}
"""


def test_inet_variants_put_the_skip_first_or_delete_one_base_chain() -> None:
    t = {("inet", "vxnet_sg"): SG, **nd.split_tables(RULESET)}
    t[("inet", "vxnet_sg")] = SG
    skip = nd.variant_script(nd.SKIP, t, [])
    assert nd.block(skip, "chain", "zone")[1] == nd.SKIP_RULE and "untracked" in nd.block(skip, "chain", "zone")[2]
    assert nd.SKIP_RULE not in nd.block(skip, "chain", "host")
    assert "table bridge vxnet_ps {\n" in skip
    both = nd.variant_script(nd.SKIP_BOTH, t, [])
    assert nd.block(both, "chain", "host")[1:] == [nd.SKIP_RULE, 'iifname "vxb-*" counter drop comment "vxnet:host-guard#1"']
    no_zone = nd.variant_script(nd.NO_ZONE, t, [])
    assert nd.block(no_zone, "chain", "zone") == [] and nd.block(no_zone, "chain", "host") and nd.block(no_zone, "chain", "egress")
    no_host = nd.variant_script(nd.NO_HOST, t, [])
    assert nd.block(no_host, "chain", "host") == [] and nd.block(no_host, "chain", "zone")
    no_sg = nd.variant_script(nd.NO_SG, t, [])
    assert "table inet vxnet_sg {\n" not in no_sg and "table bridge vxnet_ps {\n" in no_sg
    nds = nd.variant_script(nd.NETDEV_SKIP, t, [])
    assert "table netdev vxnet_nd {\n" in nds and nd.block(nds, "chain", "zone")[1] == nd.SKIP_RULE
    assert nd.with_chain(SG, "absent", None) == SG


def test_variants_start_from_the_ruleset_without_the_products_skip() -> None:
    # A lab of a tree whose agents write the skip: "as is" drops it, the skip variant has it once.
    product = SG.replace("\t\ttype filter hook prerouting priority raw; policy accept;\n",
                         "\t\ttype filter hook prerouting priority raw; policy accept;\n"
                         '\t\tudp dport 4789 iifname != "vxb-*" counter accept comment "vxnet:underlay-skip#0a1b2c3d"\n')
    t = {**nd.split_tables(RULESET), ("inet", "vxnet_sg"): product}
    assert "underlay-skip" not in nd.variant_script("as is", t, [])
    assert nd.variant_script(nd.SKIP, t, []).count("underlay-skip") == 1
    assert "underlay-skip" not in nd.variant_script("netdev", t, [])
    assert nd.variant_script(nd.NETDEV_SKIP, t, []).count("underlay-skip") == 1
    assert nd.without_skip(SG) == SG


def test_netdev_without_the_vxlan_egress_chains() -> None:
    t = nd.split_tables(RULESET)
    assert 'egress device "vxv-1"' in nd.variant_script("netdev", t, ["vxv-1"])
    bound = nd.variant_script(nd.NETDEV_NO_VX, t, ["vxv-1"])
    assert "egress device" not in bound and 'ingress device "tapaaaa"' in bound
