"""`vxnet trace`'s walk on hand-made objects (pure): L2 across hosts names the VXLAN entry,
security groups name the deciding rule or the default drop, unknown destinations are
unreachable, bad sources are a clear error."""

from __future__ import annotations

import pytest

from vxnet.trace.snapshot import Snapshot
from vxnet.trace.walk import walk

NET = {"id": "net-1", "name": "web", "provider:network_type": "vxlan", "provider:segmentation_id": 1001,
       "mtu": 1450, "router:external": False}
SUB = {"id": "sub-1", "network_id": "net-1", "cidr": "192.0.2.0/24", "ip_version": 4, "gateway_ip": "192.0.2.1"}
SG = {"id": "sg-1", "name": "default", "stateful": True}
RULES = {
    "r-in": {"id": "r-in", "security_group_id": "sg-1", "direction": "ingress", "ethertype": "IPv4",
             "protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "192.0.2.0/24",
             "remote_group_id": None},
    "r-out": {"id": "r-out", "security_group_id": "sg-1", "direction": "egress", "ethertype": "IPv4",
              "protocol": None, "port_range_min": None, "port_range_max": None, "remote_ip_prefix": None,
              "remote_group_id": None},
}


def _port(pid: str, ip: str, mac: str, host: str) -> dict:
    return {"id": pid, "name": pid, "network_id": "net-1", "mac_address": mac, "binding:host_id": host,
            "device_owner": "compute:nova", "fixed_ips": [{"subnet_id": "sub-1", "ip_address": ip}],
            "security_groups": ["sg-1"], "port_security_enabled": True, "allowed_address_pairs": [],
            "admin_state_up": True, "status": "ACTIVE"}


def snapshot() -> Snapshot:
    ports = {"a": _port("a", "192.0.2.11", "fa:16:3e:00:00:0a", "h1"),
             "b": _port("b", "192.0.2.12", "fa:16:3e:00:00:0b", "h2")}
    hosts = {h: {"host": h, "underlay_ip": f"198.51.100.{i}", "alive": True, "gateway": False}
             for i, h in ((1, "h1"), (2, "h2"))}
    return Snapshot({"networks": {"net-1": NET}, "subnets": {"sub-1": SUB}, "ports": ports,
                     "security_groups": {"sg-1": SG}, "security_group_rules": RULES}, hosts)


def test_allowed_tcp_crosses_vxlan_and_names_the_rule() -> None:
    t = walk(snapshot(), "a", "192.0.2.12", "tcp", 22)
    assert t.verdict == "delivered"
    assert "rule r-in of group default" in t.deciding
    text = " ".join(h.decision for h in t.hops)
    assert "VXLAN VNI 1001 to host h2" in text and "dst 198.51.100.2" in text


def test_other_port_is_dropped_by_default() -> None:
    t = walk(snapshot(), "a", "192.0.2.12", "tcp", 80)
    assert t.verdict == "dropped"
    assert "default drop" in t.deciding
    assert t.hops[-1].host == "h2"          # decided at the destination's host


def test_unknown_destination_and_bad_source() -> None:
    assert walk(snapshot(), "a", "192.0.2.99", "icmp").verdict == "dropped"
    with pytest.raises(ValueError, match="neither a port id"):
        walk(snapshot(), "no-such-vm", "192.0.2.12")


def test_port_security_names_its_rule_for_a_dhcp_request_from_a_former_address() -> None:
    # a's subnet has DHCP (the default): a's tap is steered, its RENEW from an address it no
    # longer holds is accepted by rule dhcp-renew and ends at the responder on its host.
    t = walk(snapshot(), "a", "192.0.2.1", "udp", 67, src_ip="192.0.2.99", sport=68)
    assert (t.verdict, t.deciding) == ("delivered", "dhcp-renew")
    assert "rule dhcp-renew" in t.hops[0].decision and t.hops[0].check is not None
    # an IPv4 port: the shared anti-spoofing chain (its facts are elements of that chain's sets)
    assert dict(t.hops[0].check.args) == {"table": "ps", "chain": "ps", "rule": "dhcp-renew"}
    assert t.hops[-1].host == "h1" and "responder" in t.summary
    # The same address in any other frame is spoofing.
    t = walk(snapshot(), "a", "192.0.2.12", "udp", 53, src_ip="192.0.2.99")
    assert (t.verdict, t.deciding) == ("dropped", "spoof-ip")
    # Its own address: the mark rule, then the egress groups, as for any packet.
    t = walk(snapshot(), "a", "192.0.2.12", "tcp", 22)
    assert "rule mark" in t.hops[0].decision and any("egress security groups" in h.what for h in t.hops)


def test_no_dhcp_no_steering_so_a_dhcp_request_from_a_former_address_is_dropped() -> None:
    snap = snapshot()
    snap.objects["subnets"]["sub-1"] = dict(SUB, enable_dhcp=False)
    t = walk(snap, "a", "192.0.2.1", "udp", 67, src_ip="192.0.2.99", sport=68)
    assert (t.verdict, t.deciding) == ("dropped", "spoof-ip")


def routed_snapshot(scope_a: str | None, scope_b: str | None) -> Snapshot:
    """a (192.0.2.11, h1) on net-1 and c (100.64.1.11, h1) on net-2 behind router r."""
    snap = snapshot()
    snap.objects["networks"]["net-1"] = dict(NET, ipv4_address_scope=scope_a)
    snap.objects["networks"]["net-2"] = dict(NET, id="net-2", name="db", **{"provider:segmentation_id": 1002},
                                             ipv4_address_scope=scope_b)
    snap.objects["subnets"]["sub-2"] = dict(SUB, id="sub-2", network_id="net-2", cidr="100.64.1.0/24",
                                            gateway_ip="100.64.1.1")
    snap.objects["routers"] = {"r": {"id": "r", "name": "r", "admin_state_up": True, "routes": []}}
    c = _port("c", "100.64.1.11", "fa:16:3e:00:00:0c", "h1")
    c.update(network_id="net-2", fixed_ips=[{"subnet_id": "sub-2", "ip_address": "100.64.1.11"}])
    snap.objects["ports"]["c"] = c
    for pid, net, sub, ip, mac in (("ia", "net-1", "sub-1", "192.0.2.1", "fa:16:3e:00:01:0a"),
                                   ("ic", "net-2", "sub-2", "100.64.1.1", "fa:16:3e:00:01:0c")):
        snap.objects["ports"][pid] = {**_port(pid, ip, mac, ""), "network_id": net, "device_owner":
                                      "network:router_interface", "device_id": "r",
                                      "fixed_ips": [{"subnet_id": sub, "ip_address": ip}], "security_groups": []}
    return snap


def test_a_router_does_not_route_between_address_scopes() -> None:
    assert walk(routed_snapshot("s1", "s1"), "a", "100.64.1.11", "tcp", 22).verdict == "delivered"
    t = walk(routed_snapshot("s1", "s2"), "a", "100.64.1.11", "tcp", 22)
    assert (t.verdict, t.deciding) == ("dropped", "address scope")
    assert "different address scopes" in t.hops[-1].decision
    assert walk(routed_snapshot(None, "s2"), "a", "100.64.1.11", "tcp", 22).verdict == "dropped"


def test_metadata_request_ends_at_the_hosts_proxy_after_the_egress_groups() -> None:
    snap = snapshot()
    snap.objects["ports"]["a"]["device_id"] = "inst-a"
    t = walk(snap, "a", "169.254.169.254", "tcp", 80)
    assert t.verdict == "delivered" and t.hops[-1].host == "h1"
    assert "metadata proxy on h1 (instance inst-a)" in t.summary
    assert "proxy address 169.254." in t.hops[-1].decision
    assert any("egress security groups" in h.what for h in t.hops)
    assert walk(snap, "a", "169.254.169.254", "tcp", 22).summary != t.summary     # not steered


def dual_stack_snapshot() -> Snapshot:
    """a and b with an IPv6 fixed IP too (2001:db8:1::/64); a has a pair 2001:db8:1:0:99::/80,
    both groups allow all IPv6 egress and ICMPv6 in."""
    snap = snapshot()
    snap.objects["subnets"]["sub-6"] = {"id": "sub-6", "network_id": "net-1", "cidr": "2001:db8:1::/64",
                                        "ip_version": 6, "gateway_ip": "2001:db8:1::1",
                                        "ipv6_address_mode": "dhcpv6-stateful", "ipv6_ra_mode": "dhcpv6-stateful"}
    for pid, ip in (("a", "2001:db8:1::a"), ("b", "2001:db8:1::b")):
        snap.objects["ports"][pid]["fixed_ips"].append({"subnet_id": "sub-6", "ip_address": ip})
    snap.objects["ports"]["a"]["allowed_address_pairs"] = [{"ip_address": "2001:db8:1:0:99::/80"}]
    rules = snap.objects["security_group_rules"]
    rules["r6-out"] = dict(RULES["r-out"], id="r6-out", ethertype="IPv6")
    rules["r6-in"] = dict(RULES["r-out"], id="r6-in", ethertype="IPv6", direction="ingress", protocol="ipv6-icmp")
    return snap


def test_port_security_checks_ipv6_sources_with_the_chains_rules() -> None:
    snap = dual_stack_snapshot()
    t = walk(snap, "a", "2001:db8:1::b")
    assert (t.verdict, t.hops[0].check.arg("rule")) == ("delivered", "mark6")
    assert "rule mark6" in t.hops[0].decision
    for allowed in ("2001:db8:1:0:99::5", "fe80::f816:3eff:fe00:a"):         # the pair's prefix, link-local
        t = walk(snap, "a", "2001:db8:1::b" if allowed[0] == "2" else "fe80::1", src_ip=allowed)
        assert t.hops[0].check.arg("rule") == "mark6", (allowed, t.hops[0].decision)
    for spoofed in ("2001:db8:1::b", "2001:db8:1:0:98::5", "fe80::1234"):
        t = walk(snap, "a", "2001:db8:1::b", src_ip=spoofed)
        assert (t.verdict, t.deciding) == ("dropped", "spoof-ip6"), spoofed
        assert dict(t.hops[0].check.args) == {"table": "ps", "chain": "ps6", "rule": "spoof-ip6"}
    # A DHCPv6 server frame from its own address: the DHCPv6-server guard, not mark6.
    t = walk(snap, "a", "2001:db8:1::b", "udp", 546, sport=547)
    assert (t.verdict, t.deciding) == ("dropped", "dhcp6-server")
    # A port without IPv6 of its own has no IPv6 rules: its link-local is spoofing.
    t = walk(snapshot(), "a", "fe80::1", src_ip="fe80::f816:3eff:fe00:a")
    assert (t.verdict, t.deciding) == ("dropped", "spoof-ip6")
