"""The bridge table's anti-spoofing chains are shared (compute/firewall_ps.py): dual-stack ports
coming up one by one through the agent's driver (dataplane/nft_driver.py, incremental) add
elements to `ps_mark6` & co., never a chain, so `bridge vxnet_ps` holds as many chains with 20
IPv6 ports as with 1; the kernel takes the raw-keyed (`typeof`) sets and lists their elements
so that a restarted driver finds nothing to send. Real nftables in a lab host namespace."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.root.conftest import needs_root
from tests.root.helpers import nsexec
from vxnet.compute.firewall import compute_firewall, render_update
from vxnet.dataplane.nft_driver import NftDriver
from vxnet.lab import topology

pytestmark = needs_root

NET = "aaaaaaaa-0000-4000-8000-000000000001"
G1 = "11111111-0000-4000-8000-000000000001"


def _port(i: int) -> dict:
    return {"id": f"p{i:07x}-0000-4000-8000-000000000001", "network_id": NET, "binding:host_id": "h1",
            "mac_address": f"02:00:00:00:01:{i:02x}", "security_groups": [G1], "port_security_enabled": True,
            "fixed_ips": [{"subnet_id": "s", "ip_address": f"192.0.2.{10 + i}"},
                          {"subnet_id": "s6", "ip_address": f"2001:db8::{10 + i:x}"}],
            "device_owner": "compute:nova",
            "allowed_address_pairs": [{"ip_address": "2001:db8:5::/120"}] if i == 3 else []}


def _view(n: int) -> dict:
    rule = {"id": "r-egress", "security_group_id": G1, "direction": "egress", "ethertype": "IPv6", "protocol": None,
            "port_range_min": None, "port_range_max": None, "remote_ip_prefix": None, "remote_group_id": None}
    return {"networks": {NET: {"id": NET, "provider:network_type": "vxlan", "provider:segmentation_id": 1001}},
            "ports": {p["id"]: p for p in map(_port, range(n))},
            "security_groups": {G1: {"id": G1, "stateful": True}}, "security_group_rules": {"r-egress": rule}}


@pytest.fixture
def ns(underlay3: list[str]) -> Iterator[str]:
    yield topology.host_ns(1)


def _chains(ns: str) -> list[str]:
    out = json.loads(nsexec(ns, "nft", "-j", "list", "table", "bridge", "vxnet_ps").stdout)
    return sorted(x["chain"]["name"] for x in out["nftables"] if "chain" in x)


def test_ipv6_port_ups_add_no_chain_to_the_bridge_table(ns: str) -> None:
    d = NftDriver(ns)
    try:
        fw = compute_firewall(_view(1), "h1")
        d.apply([(t, None) for t in fw.tables])
        one = _chains(ns)
        assert "ps6" in one and not any(c.startswith("ps_") for c in one), one
        for n in range(2, 21):           # port-ups one at a time, as the agent's passes
            new = compute_firewall(_view(n), "h1")
            tables = render_update(fw, new) or new.tables
            d.apply(list(zip(tables, fw.tables, strict=True)))
            assert d.last.mode == "incremental", d.last
            fw = new
            fw.__dict__["tables"] = tables
        assert _chains(ns) == one
        listed = nsexec(ns, "nft", "list", "map", "bridge", "vxnet_ps", "ps_mark6").stdout
        assert listed.count(" : 0x") == 2 * 20       # each port's address and link-local
        assert "0x20010db8000500000000000000000000-0x20010db80005000000000000000000ff" in nsexec(
            ns, "nft", "list", "map", "bridge", "vxnet_ps", "ps_mark6_net").stdout
        # a restarted agent's driver reads the kernel back and finds exactly its tables
        again = NftDriver(ns)
        try:
            assert again.apply([(t, None) for t in fw.tables]).mode == "verified", again.last
        finally:
            again.close()
    finally:
        d.close()
