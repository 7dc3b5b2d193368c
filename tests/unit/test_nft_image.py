"""nft listings read back in one normal form (dataplane/nft_image.py): elements as sets, whatever
nft's order, line wrapping and notation; rules kept as listed."""

from __future__ import annotations

from vxnet.dataplane import nft_image

LISTING = """table bridge t {
\tmap steer {
\t\ttype ifname : ether_addr
\t\telements = { "tapbbbbbbbbbbb" : 0a:00:00:00:0b:01,
\t\t\t     "tapaaaaaaaaaaa" : 02:00:00:00:00:01 }
\t}

\tmap m {
\t\ttype mark : verdict
\t\telements = { 0x00000001 : jump c1 }
\t}

\tset s {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 192.0.2.31, 192.0.2.64/26 }
\t}

\tset e {
\t\ttype ipv6_addr
\t\tflags interval
\t}

\tchain c1 {
\t}

\tchain prerouting {
\t\ttype filter hook prerouting priority dstnat; policy accept;
\t\tiifname "tapx" ip dscp set af31
\t}
}
"""


def test_elements_are_compared_as_normalised_sets() -> None:
    image = nft_image.parse(LISTING)
    assert image is not None
    assert image.elements == {
        "steer": nft_image.norm_elements(['"tapaaaaaaaaaaa" : 02:00:00:00:00:01', '"tapbbbbbbbbbbb" : 0A:00:00:00:0B:01']),
        "m": nft_image.norm_elements(["0x00000001 : jump c1"]),
        "s": nft_image.norm_elements(["192.0.2.64/26", "192.0.2.31/32"]),
        "e": frozenset(),
    }
    assert nft_image.norm_elements(["2001:db8:0::1"]) == nft_image.norm_elements(["2001:db8::1/128"])
    # a different element is a difference
    assert image.elements["s"] != nft_image.norm_elements(["192.0.2.64/26", "192.0.2.32"])
    assert image.elements["m"] != nft_image.norm_elements(["0x00000002 : jump c1"])
    assert image.elements["m"] != nft_image.norm_elements(["0x00000001 : jump c2"])


def test_skeleton_keeps_rules_and_drops_elements() -> None:
    image = nft_image.parse(LISTING)
    assert image is not None
    assert 'iifname "tapx" ip dscp set af31' in image.skeleton
    assert not any("elements" in line or "tapaaaa" in line for line in image.skeleton)
    other = nft_image.parse(LISTING.replace("af31", "af41"))
    assert other is not None and other.skeleton != image.skeleton and other.elements == image.elements
    reordered = nft_image.parse(LISTING.replace('"tapbbbbbbbbbbb" : 0a:00:00:00:0b:01,\n\t\t\t     '
                                                '"tapaaaaaaaaaaa" : 02:00:00:00:00:01',
                                                '"tapaaaaaaaaaaa" : 02:00:00:00:00:01, "tapbbbbbbbbbbb" : 0a:00:00:00:0b:01'))
    assert reordered == image
    assert nft_image.parse("") is None
    counted = nft_image.parse(LISTING.replace("ip dscp set af31", "ip dscp set af31 counter packets 7 bytes 420"))
    zero = nft_image.parse(LISTING.replace("ip dscp set af31", "ip dscp set af31 counter packets 0 bytes 0"))
    assert counted == zero and counted != image               # a counter's value is no difference


def test_set_flags_of_a_listing() -> None:
    # what the driver's adoption compares besides elements: a set of another kind is rewritten
    from vxnet.dataplane.nft_driver import set_flags

    assert set_flags(LISTING) == {"steer": "", "m": "", "s": "interval", "e": "interval"}
    assert set_flags(LISTING.replace("\t\tflags interval\n\t\telements = { 192.0.2.31", "\t\telements = { 192.0.2.31"))["s"] == ""


def test_base_chain_specs_compare_as_nft_prints_them() -> None:
    """The hook line the agent writes and the one nft prints back are equal in normal form: named
    priorities (per family: bridge's `filter` is -200), `name + n`, the default policy."""
    b = nft_image.base_spec
    assert b("inet", "type filter hook forward priority 10; policy accept;") == \
        b("inet", "type filter hook forward priority filter + 10; policy accept;")
    assert b("inet", "type nat hook postrouting priority srcnat;") == \
        b("inet", "type nat hook postrouting priority 100; policy accept;")
    assert b("bridge", "type filter hook prerouting priority -200; policy accept;") == \
        b("bridge", "type filter hook prerouting priority filter; policy accept;")
    assert b("inet", "type filter hook prerouting priority raw; policy accept;") == \
        b("inet", "type filter hook prerouting priority -300; policy accept;")
    # what differs is seen: policy, priority, hook, family's names, a regular chain
    assert b("inet", "type filter hook forward priority 10; policy drop;") != \
        b("inet", "type filter hook forward priority 10; policy accept;")
    assert b("inet", "type filter hook forward priority 0;") != b("inet", "type filter hook forward priority 10;")
    assert b("inet", "type filter hook input priority 0;") != b("inet", "type filter hook forward priority 0;")
    assert b("bridge", "type filter hook forward priority filter;") != \
        b("inet", "type filter hook forward priority filter;")
    assert b("inet", None) is None and b("inet", "") is None


def test_base_chains_of_a_listing() -> None:
    assert nft_image.base_chains("bridge", LISTING) == {
        "c1": None, "prerouting": nft_image.base_spec("bridge", "type filter hook prerouting priority -300;")}
    # a chain whose hook line is not its first line is not a base chain (nft prints it first)
    text = "table inet t {\n\tchain c {\n\t\tip saddr 192.0.2.1 drop comment \"type x hook y\"\n\t}\n}\n"
    assert nft_image.base_chains("inet", text) == {"c": None}
