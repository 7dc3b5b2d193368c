"""compute/gateway.py: what a gateway host builds for the routers scheduled on it (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from vxnet.compute import naming
from vxnet.compute.gateway import compute_gateway, is_router_netns, nat_ruleset, router_netns

EXT, TEN, TEN2 = "e" * 8 + "-ext", "a" * 8 + "-ten", "b" * 8 + "-ten"
RID = "r0000000-1111"


def view(host: str = "gw1", enable_snat: bool = True, fip: bool = True) -> dict[str, Any]:
    ports = {
        "gwport-0001": {"network_id": EXT, "device_owner": "network:router_gateway", "device_id": RID,
                        "binding:host_id": host, "mac_address": "FA:16:3E:00:00:01",
                        "fixed_ips": [{"subnet_id": "s-ext", "ip_address": "203.0.113.10"}]},
        "intf-0001": {"network_id": TEN, "device_owner": "network:router_interface", "device_id": RID,
                      "binding:host_id": "", "mac_address": "fa:16:3e:00:00:02",
                      "fixed_ips": [{"subnet_id": "s-ten", "ip_address": "192.0.2.1"}]},
        "snat-0001": {"network_id": TEN, "device_owner": "network:router_centralized_snat", "device_id": RID,
                      "binding:host_id": host, "mac_address": "fa:16:3e:00:00:03",
                      "fixed_ips": [{"subnet_id": "s-ten", "ip_address": "192.0.2.3"}]},
        "vm-0001": {"network_id": TEN, "device_owner": "compute:nova", "device_id": "vm", "binding:host_id": "h1",
                    "mac_address": "fa:16:3e:00:00:04", "fixed_ips": [{"subnet_id": "s-ten", "ip_address": "192.0.2.11"}]},
    }
    return {
        "networks": {EXT: {"router:external": True, "provider:network_type": "flat",
                           "provider:physical_network": "external", "mtu": 1450},
                     TEN: {"provider:network_type": "vxlan", "provider:segmentation_id": 5, "mtu": 1450}},
        "subnets": {"s-ext": {"cidr": "203.0.113.0/24", "gateway_ip": "203.0.113.1", "network_id": EXT},
                    "s-ten": {"cidr": "192.0.2.0/24", "gateway_ip": "192.0.2.1", "network_id": TEN}},
        "ports": ports,
        "routers": {RID: {"external_gateway_info": {"network_id": EXT, "enable_snat": enable_snat},
                          "routes": [{"destination": "100.64.9.0/24", "nexthop": "192.0.2.50"},
                                     {"destination": "100.64.8.0/24", "nexthop": "100.64.7.1"}]}},
        "floatingips": ({"f1": {"router_id": RID, "port_id": "vm-0001", "fixed_ip_address": "192.0.2.11",
                                "floating_ip_address": "203.0.113.20"}} if fip else {}),
        "hosts": {},
    }


def test_router_namespace_legs_routes_and_l2() -> None:
    d = compute_gateway(view(), "gw1", "vxlext0")
    assert len(d.routers) == 1
    r = d.routers[0]
    assert r.netns == router_netns(RID, "gw1") and is_router_netns(r.netns, "gw1")
    assert not is_router_netns(r.netns, "gw2")
    assert (r.gw.tap, r.gw.inner, r.gw.mac, r.gw.cidr) == ("tapgwport-0001", "qg-" + RID[:11], "fa:16:3e:00:00:01",
                                                           "203.0.113.10/24")
    assert r.gateway_ip == "203.0.113.1"
    assert [(leg.tap, leg.inner, leg.cidr) for leg in r.snat_legs] == [("tapsnat-0001", "sg-snat-0001", "192.0.2.3/24")]
    assert r.snat_cidrs == ("192.0.2.0/24",)
    assert r.routes == (("100.64.9.0/24", "192.0.2.50"),)     # the other nexthop is not connected here
    assert [(f.floating_ip, f.fixed_ip) for f in r.fips] == [("203.0.113.20", "192.0.2.11")]
    br = naming.bridge_name(EXT)
    assert [(e.bridge, e.interface) for e in d.externals] == [(br, "vxlext0")]
    assert {b.name for b in d.l2.bridges} == {br}
    assert {(p.tap, p.bridge) for p in d.l2.plugs} == {("tapgwport-0001", br)}
    assert {(f.dev, f.mac, f.dst) for f in d.l2.fdb} == {("tapgwport-0001", "fa:16:3e:00:00:01", None)}
    assert {lp.port_id for lp in d.l2.local_ports} == {"gwport-0001"}
    assert r.port_ids == {"gwport-0001", "snat-0001"}


def test_other_hosts_routers_are_not_built_here() -> None:
    d = compute_gateway(view(host="gw2"), "gw1", "vxlext0")
    assert d.routers == () and not d.l2.plugs
    assert len(d.externals) == 1        # the external bridge is there anyway


def test_nat_rules_floating_ip_before_snat_and_mss() -> None:
    r = compute_gateway(view(), "gw1", None).routers[0]
    rules = nat_ruleset(r)
    qg = r.gw.inner
    assert '    ip daddr 203.0.113.20 dnat to 192.0.2.11' in rules      # from any leg (hairpin)
    hair = f'iifname != "{qg}" oifname != "{qg}" ct status dnat'
    assert rules.index(f"{hair} ip saddr 192.0.2.11 snat to 203.0.113.20") < rules.index(f"{hair} snat to 203.0.113.10")
    fip_snat = rules.index(f'oifname "{qg}" ip saddr 192.0.2.11 snat to 203.0.113.20')
    snat = rules.index(f'oifname "{qg}" ip saddr {{ 192.0.2.0/24 }} snat to 203.0.113.10')
    assert fip_snat < snat
    assert "tcp option maxseg size set rt mtu" in rules
    assert rules.startswith("table ip vxnet_nat {}\ndelete table ip vxnet_nat\n")
    off = nat_ruleset(compute_gateway(view(enable_snat=False, fip=False), "gw1", None).routers[0])
    assert "snat to" not in off and "dnat to" not in off


def test_pure_and_order_independent() -> None:
    v = view()
    a = compute_gateway(v, "gw1", "x")
    v2 = dict(v)
    v2["ports"] = dict(reversed(list(v["ports"].items())))
    assert compute_gateway(v2, "gw1", "x") == a == compute_gateway(view(), "gw1", "x")


def _two_externals(v: dict[str, Any]) -> dict[str, Any]:
    v = dict(v)
    v["networks"] = dict(v["networks"])
    v["networks"]["ext2"] = {"id": "ext2", "router:external": True, "provider:network_type": "flat",
                             "provider:physical_network": "physnet2", "mtu": 1500}
    v["networks"]["ext3"] = {"id": "ext3", "router:external": True, "provider:network_type": "vlan",
                             "provider:physical_network": "physnet2", "provider:segmentation_id": 101, "mtu": 1500}
    return v


def test_several_external_networks_by_physical_network() -> None:
    from vxnet.compute.gateway import parse_external_interfaces

    v = _two_externals(view())
    by_net = lambda d: {e.network_id: (e.interface, e.vlan, e.port) for e in d.externals}
    d = compute_gateway(v, "gw1", "external:eth1,physnet2:eth2")
    assert by_net(d) == {EXT: ("eth1", None, "eth1"), "ext2": ("eth2", None, "eth2"),
                         "ext3": ("eth2", 101, "vxv-ext3")}
    assert len(d.l2.bridges) == 3 and len(d.routers) == 1
    # the legacy single form: physical network "external" only
    assert by_net(compute_gateway(v, "gw1", "eth1")) == {EXT: ("eth1", None, "eth1"), "ext2": (None, None, None),
                                                        "ext3": (None, 101, None)}
    assert by_net(compute_gateway(v, "gw1", "physnet2:eth2")) == {EXT: (None, None, None), "ext2": ("eth2", None, "eth2"),
                                                                 "ext3": ("eth2", 101, "vxv-ext3")}
    assert parse_external_interfaces("a:x, b:y ,z") == ({"a": "x", "b": "y"}, "z")
    assert parse_external_interfaces(None) == ({}, None)
    for bad in ("a:x,a:y", "a:x,b:x", "x,y", ":x", "a:", "a:x,,b:y"):
        with pytest.raises(ValueError):
            parse_external_interfaces(bad)
