"""A port-up's element changes as one netlink batch of our own (dataplane/nft_netlink.py,
`NftDriver.apply` -> `element_batch`) against the same changes through libnftables: the
kernel state must be identical, for every kind of set and map the firewall's port-up touches
(concatenations, verdict and mark maps, concatenated interval sets, plain sets, deletes, a map
value changed), and a batch that fails applies nothing. Two lab host namespaces: the driver in
one, `nft -f` of `diff_table`'s text in the other; both read back with `nft -j list table`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.root.conftest import needs_root
from tests.root.helpers import nsexec
from vxnet.compute.nft_table import NftChain, NftSet, NftTable, dispatch, entries_map, nft_rule, table_text
from vxnet.dataplane.nft_driver import NftDriver, NftError, diff_table
from vxnet.dataplane.nft_netlink import element_batch
from vxnet.lab import topology

pytestmark = needs_root

KEY = "ifname . ether_addr . ipv4_addr"


def _tap(i: int) -> str:
    return f'"vxltap{i:04d}"'


def _mac(i: int) -> str:
    return f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}"


def _tables(ports: list[int], nets: list[int], mark_of: dict[int, int] | None = None) -> tuple[NftTable, NftTable]:
    """A bridge and an inet table with a set or map of each kind the firewall's port-up
    touches, holding the elements of `ports` (and the prefixes of `nets`)."""
    marks = {p: (mark_of or {}).get(p, 0x800 + p) for p in ports}
    bridge = NftTable("bridge", "vxnet_nltest", (
        NftChain("pre", dispatch("iifname", "pre_ports"), "type filter hook prerouting priority -200; policy accept;"),
        NftChain("ps", (nft_rule(f"meta mark set {KEY.replace('ifname', 'iifname').replace('ether_addr', 'ether saddr').replace('ipv4_addr', 'ip saddr')}"
                                 " map @ps_mark", "accept", "mark"),)),
    ), (
        entries_map("pre_ports", "ifname", [f"{_tap(p)} : jump ps" for p in ports]),
        NftSet("ps_mark", f"{KEY} : mark", frozenset(f"{_tap(p)} . {_mac(p)} . 192.0.2.{p} : 0x{marks[p]:08x}" for p in ports), "", "map"),
        NftSet("ps_mark_net", f"{KEY} : mark", frozenset(f"{_tap(n)} . {_mac(n)} . 100.64.{n}.0/24 : 0x{0x900 + n:08x}" for n in nets),
               "interval", "map"),
        NftSet("ps_arp", KEY, frozenset(e for p in ports for e in (f"{_tap(p)} . {_mac(p)} . 0.0.0.0",
                                                                   f"{_tap(p)} . {_mac(p)} . 192.0.2.{p}")), ""),
        NftSet("ps_arp_net", KEY, frozenset(f"{_tap(n)} . {_mac(n)} . 100.64.{n}.0/24" for n in nets), "interval"),
        NftSet("ps_macs", "ifname . ether_addr", frozenset(f"{_tap(p)} . {_mac(p)}" for p in ports), ""),
    ))
    inet = NftTable("inet", "vxnet_nltest", (
        NftChain("fw", dispatch("meta mark", "eg_ports"), "type filter hook forward priority 0; policy accept;"),
        NftChain("eg_a", (nft_rule("ip saddr @members", "accept", "members"),)),
    ), (
        entries_map("eg_ports", "mark", [f"0x{marks[p]:08x} : jump eg_a" for p in ports]),
        NftSet("members", "ipv4_addr", frozenset(f"192.0.2.{p}" for p in ports), ""),
        NftSet("members6", "ipv6_addr", frozenset(f"2001:db8::{p:x}" for p in ports), ""),
        NftSet("ct_macs", "ether_addr", frozenset(_mac(p) for p in ports), ""),
    ))
    return bridge, inet


def _listing(ns: str, family: str) -> list[tuple[str, str]]:
    """The table's objects as `nft -j` lists them, without handles, elements in one order."""
    data = json.loads(nsexec(ns, "nft", "-j", "list", "table", family, "vxnet_nltest").stdout)
    out = []
    for item in data["nftables"]:
        for kind, body in item.items():
            if kind == "metainfo":
                continue
            body = {k: v for k, v in body.items() if k != "handle"}
            if "elem" in body:
                body["elem"] = sorted(json.dumps(e, sort_keys=True) for e in body["elem"])
            out.append((kind, json.dumps(body, sort_keys=True)))
    return sorted(out)


def _state(ns: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    return _listing(ns, "bridge"), _listing(ns, "inet")


@pytest.fixture
def two(underlay3: list[str]) -> Iterator[tuple[str, str]]:
    yield topology.host_ns(1), topology.host_ns(2)


def _nft(ns: str, text: str) -> None:
    """`text` as one transaction of the `nft` program (libnftables) in `ns`."""
    r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, capture_output=True, text=True,
                       timeout=30, check=False)
    assert r.returncode == 0, r.stderr


def test_element_changes_as_a_netlink_batch_leave_what_libnftables_leaves(two: tuple[str, str]) -> None:
    ours, ref = two
    d = NftDriver(ours)
    try:
        steps = [
            ([1, 2], []),                           # the start (a full load, text in both)
            ([1, 2, 3], []),                        # a port-up: one element in every set and map
            ([1, 2, 3, 4, 5], [7]),                 # two ports and a prefix in each interval set
            ([2, 4, 5], [7, 8]),                    # ports gone (deletes), another prefix
            ([2, 4, 5], [8]),                       # a prefix gone from the interval sets
        ]
        prev: tuple[NftTable, NftTable] | None = None
        for i, (ports, nets) in enumerate(steps):
            tables = _tables(ports, nets)
            if prev is None:
                d.apply([(t, None) for t in tables])
                _nft(ref, "".join(table_text(t) for t in tables))
            else:
                r = d.apply(list(zip(tables, prev, strict=True)))
                assert (r.mode, r.netlink) == ("incremental", True), f"step {i}"
                _nft(ref, "\n".join(c for t, o in zip(tables, prev, strict=True) for c in diff_table(o, t)) + "\n")
            assert _state(ours) == _state(ref), f"step {i}"
            prev = tables
        # a map value changed (port 4's mark): its key deleted and added again, in one batch
        tables = _tables([2, 4, 5], [8], {4: 0x1234})
        r = d.apply(list(zip(tables, prev, strict=True)))
        assert (r.mode, r.netlink) == ("incremental", True)
        _nft(ref, "\n".join(c for t, o in zip(tables, prev, strict=True) for c in diff_table(o, t)) + "\n")
        assert _state(ours) == _state(ref)
        assert '"0x00001234"' not in json.dumps(_state(ours)) and "4660" in json.dumps(_state(ours))  # 0x1234
    finally:
        d.close()


def test_a_failing_batch_applies_nothing_and_the_ledger_knows_our_batches(two: tuple[str, str]) -> None:
    ours = two[0]
    d = NftDriver(ours)
    try:
        base, more = _tables([1, 2], [7]), _tables([1, 2, 3], [7, 8])
        d.apply([(t, None) for t in base])
        # our batches are our own commits: after one, an invalidated driver trusts its tables unread
        r = d.apply(list(zip(more, base, strict=True)))
        assert (r.mode, r.netlink) == ("incremental", True)
        d.invalidate()
        assert d.apply([(t, None) for t in more]).mode == "unchanged"
        before = _state(ours)
        # the driver believes port 9 is there (it is not): its delete fails, the adds with it do not land
        claimed, most = _tables([1, 2, 3, 9], [7, 8]), _tables([1, 2, 3, 4, 5], [7, 8, 10])
        batch = element_batch(list(zip(most, claimed, strict=True)))
        assert batch is not None and len(batch) > 2      # the adds and the failing delete in one batch
        with pytest.raises(NftError, match="delete element bridge vxnet_nltest ps_mark"):
            d.apply(list(zip(most, claimed, strict=True)))
        assert _state(ours) == before
        # ... and a foreign commit is seen: the tables are read back (and found as they were)
        nsexec(ours, "nft", "add", "table", "inet", "someone_else")
        assert d.apply([(t, None) for t in more]).mode == "verified"
    finally:
        d.close()


def test_what_the_encoder_does_not_know_goes_through_libnftables(two: tuple[str, str]) -> None:
    """A single-field interval set (its elements are start/end pairs libnftables computes) and
    a table change beyond elements (a new chain) go as text; the result is the same."""
    ours, ref = two
    d = NftDriver(ours)
    try:
        bridge, inet = _tables([1], [])
        ranges = NftSet("ranges", "ipv4_addr", frozenset({"198.51.100.0/24"}), "interval")
        inet = NftTable(inet.family, inet.name, inet.chains, (*inet.sets, ranges))
        d.apply([(bridge, None), (inet, None)])
        _nft(ref, table_text(bridge) + table_text(inet))
        b2, i2 = _tables([1, 2], [])
        i2 = NftTable(i2.family, i2.name, i2.chains, (*i2.sets, NftSet("ranges", "ipv4_addr",
                                                                          frozenset({"198.51.100.0/24", "203.0.113.7"}), "interval")))
        r = d.apply([(b2, bridge), (i2, inet)])
        assert (r.mode, r.netlink) == ("incremental", False)
        _nft(ref, "\n".join([*diff_table(bridge, b2), *diff_table(inet, i2)]) + "\n")
        assert _state(ours) == _state(ref)
        i3 = NftTable(i2.family, i2.name, (*i2.chains, NftChain("eg_b", (nft_rule("ip saddr 192.0.2.1", "accept", "x"),))), i2.sets)
        b3, _ = _tables([1, 2, 3], [])
        r = d.apply([(b3, b2), (i3, i2)])
        assert (r.mode, r.netlink) == ("incremental", False)
        _nft(ref, "\n".join([*diff_table(b2, b3), *diff_table(i2, i3)]) + "\n")
        assert _state(ours) == _state(ref)
    finally:
        d.close()


def test_typeof_raw_payload_keys_through_the_executor(two: tuple[str, str]) -> None:
    """A set keyed `typeof iifname . ether saddr . @th,64,128` (a 16-byte raw field, network
    order), as the IPv6 anti-spoofing sets are: the batch and `nft add element` agree."""
    from vxnet.dataplane.metadata_driver import NsWorker
    from vxnet.dataplane.nft_exec import NftExecutor
    from vxnet.dataplane.nft_netlink import element_message

    ours, ref = two
    decl = "add table bridge vxnet_nltest\nadd set bridge vxnet_nltest nd { typeof iifname . ether saddr . @th,64,128; }\n"
    elements = [f"{_tap(1)} . {_mac(1)} . 0x20010db8000000000000000000000001",
                f"{_tap(2)} . {_mac(2)} . 0xfe800000000000000000000000000002"]
    _nft(ours, decl)
    _nft(ref, decl + f"add element bridge vxnet_nltest nd {{ {', '.join(elements)} }}\n")
    msg = element_message("bridge", "vxnet_nltest", "nd", "typeof iifname . ether saddr . @th,64,128", "", "set",
                          elements, False)

    def batch() -> str | None:
        ex = NftExecutor()          # in the worker's thread, inside `ours`
        try:
            return ex.run_batch([msg])
        finally:
            ex.close()
    worker = NsWorker(ours, "test-nl")
    try:
        assert worker.call(batch) is None
    finally:
        worker.close()
    assert _listing(ours, "bridge") == _listing(ref, "bridge")
