"""dataplane/bgp.py without a daemon: the start-up configuration, peer parsing, and `apply`
sending only the difference (vtysh replaced by a recorder; the real bgpd is in
tests/root/test_bgp.py). compute/gateway.py `bgp_routes`: what is announced."""

from __future__ import annotations

import dataclasses

import pytest

from tests.unit.test_gateway_compute import TEN, view
from vxnet.compute.gateway import bgp_routes, compute_gateway
from vxnet.dataplane.bgp import BgpConfig, BgpSpeaker, base_config, parse_peer


class Recorder(BgpSpeaker):
    def __init__(self, cfg: BgpConfig, running: str = "") -> None:
        super().__init__(cfg)
        self.sent: list[tuple[str, ...]] = []
        self.running = running

    def ensure_running(self) -> bool:
        return False

    def _vtysh(self, *commands: str) -> str:
        if commands == ("show running-config",):
            return self.running
        self.sent.append(commands)
        return ""


CFG = BgpConfig(64512, "198.51.100.3", (("100.127.255.253", 64500),), "/nonexistent")


def test_config_and_peers() -> None:
    text = base_config(CFG)
    assert "router bgp 64512" in text and "neighbor 100.127.255.253 remote-as 64500" in text
    assert "no bgp network import-check" in text and "neighbor 100.127.255.253 attribute-unchanged next-hop" in text
    assert parse_peer("192.0.2.1:65000") == ("192.0.2.1", 65000)
    for bad in ("192.0.2.1", "x:1", "192.0.2.1:as"):
        with pytest.raises(ValueError):
            parse_peer(bad)
    with pytest.raises(ValueError):
        dataclasses.replace(CFG, asn=0)


def test_apply_sends_only_the_difference() -> None:
    # adopted bgpd: what it announces is read back from its running configuration
    sp = Recorder(CFG, "router bgp 64512\n address-family ipv4 unicast\n"
                       "  network 203.0.113.20/32 route-map vxnet-nh-203.0.113.10\n")
    assert sp.apply({"203.0.113.20/32": "203.0.113.10"}) == 0 and sp.sent == []
    assert sp.apply({"203.0.113.20/32": "203.0.113.10", "203.0.113.21": "203.0.113.11"}) == 1
    cmds = sp.sent[-1]
    assert "network 203.0.113.21/32 route-map vxnet-nh-203.0.113.11" in cmds
    assert "set ip next-hop 203.0.113.11" in cmds and not any("203.0.113.20" in c for c in cmds)
    assert sp.apply({"203.0.113.21/32": "203.0.113.11"}) == 1
    assert sp.sent[-1][-1] == "no network 203.0.113.20/32"
    n = len(sp.sent)
    assert sp.apply({"203.0.113.21/32": "203.0.113.11"}) == 0 and len(sp.sent) == n


def test_routes_of_served_routers() -> None:
    r = compute_gateway(view(), "gw1", None).routers[0]
    assert bgp_routes([r]) == {"203.0.113.20/32": "203.0.113.10"}     # the floating IP, via the gateway address
    # SNAT disabled: the tenant subnet only if it is in the external network's address scope
    nosnat = compute_gateway(view(enable_snat=False), "gw1", None).routers[0]
    assert bgp_routes([nosnat]) == {"203.0.113.20/32": "203.0.113.10"}
    v = view(enable_snat=False)
    v["networks"] = {k: {**n, "ipv4_address_scope": "scope-1"} for k, n in v["networks"].items()}
    scoped = compute_gateway(v, "gw1", None).routers[0]
    assert bgp_routes([scoped]) == {"203.0.113.20/32": "203.0.113.10", "192.0.2.0/24": "203.0.113.10"}
    assert bgp_routes([dataclasses.replace(scoped, enable_snat=True)]) == {"203.0.113.20/32": "203.0.113.10"}
    other = dict(v, networks={**v["networks"], TEN: {**v["networks"][TEN], "ipv4_address_scope": "scope-2"}})
    assert bgp_routes(compute_gateway(other, "gw1", None).routers) == {"203.0.113.20/32": "203.0.113.10"}
    assert bgp_routes([]) == {}
