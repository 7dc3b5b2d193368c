"""IPv6 over real HTTP: subnets in each Neutron mode (and their validation), EUI-64 addresses of
ports on auto-address subnets, dual-stack ports, the filters, and that no error path leaks an
address claim. Addresses only from 2001:db8::/32.

Expected EUI-64 addresses are computed by vxnet.services.ipv6, whose own test
(tests/unit/test_ipv6_eui64.py) checks it against oslo.utils' implementation.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import httpx
import pytest

from tests.api.helpers import assert_error, network, port, subnet
from vxnet.services.ipv6 import eui64_address

MODES = ("slaac", "dhcpv6-stateless", "dhcpv6-stateful")


def v6(c: httpx.Client, net: dict[str, Any], cidr: str, **attrs: Any) -> dict[str, Any]:
    return subnet(c, net, cidr, ip_version=6, **attrs)


def claims(server: Any, subnet_id: str) -> set[str]:
    """The addresses the store holds claimed on a subnet."""
    kvs, _ = server.store.range(f"/vxnet/ipam/{subnet_id}/")
    return {kv.key.rsplit("/", 1)[1] for kv in kvs}


def ips(p: dict[str, Any]) -> dict[str, str]:
    return {ip["subnet_id"]: ip["ip_address"] for ip in p["fixed_ips"]}


# --- subnets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [*MODES, None])
def test_create_in_each_mode_with_neutron_defaults(shared_server, mode: str | None) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    attrs = {"ipv6_ra_mode": mode, "ipv6_address_mode": mode} if mode else {}
    s = v6(alice, net, "2001:db8:1::/64", dns_nameservers=["2001:db8::53"],
           host_routes=[{"destination": "2001:db8:ff::/48", "nexthop": "2001:db8:1::fe"}], **attrs)
    assert s["ip_version"] == 6 and s["cidr"] == "2001:db8:1::/64"
    assert s["ipv6_ra_mode"] == mode and s["ipv6_address_mode"] == mode
    assert s["gateway_ip"] == "2001:db8:1::1"
    assert s["allocation_pools"] == [{"start": "2001:db8:1::2", "end": "2001:db8:1:0:ffff:ffff:ffff:ffff"}]
    assert s["dns_nameservers"] == ["2001:db8::53"]
    assert s["host_routes"] == [{"destination": "2001:db8:ff::/48", "nexthop": "2001:db8:1::fe"}]
    assert alice.get(f"/subnets/{s['id']}").json()["subnet"] == s
    assert alice.get(f"/networks/{net['id']}").json()["network"]["subnets"] == [s["id"]]


def test_address_mode_only_and_ra_mode_only(shared_server) -> None:
    """Neutron accepts either mode alone (an outside router sends RAs for address-mode-only)."""
    alice = shared_server.api("alice")
    net = network(alice)
    a = v6(alice, net, "2001:db8:2::/64", ipv6_address_mode="slaac")
    assert (a["ipv6_ra_mode"], a["ipv6_address_mode"]) == (None, "slaac")
    b = v6(alice, net, "2001:db8:3::/64", ipv6_ra_mode="dhcpv6-stateful")
    assert (b["ipv6_ra_mode"], b["ipv6_address_mode"]) == ("dhcpv6-stateful", None)


def test_gateway_pools_and_link_local_gateway(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    s = v6(alice, net, "2001:db8:4::/120", gateway_ip="2001:db8:4::ff")
    assert s["allocation_pools"] == [{"start": "2001:db8:4::1", "end": "2001:db8:4::fe"}]
    ll = v6(alice, net, "2001:db8:5::/64", gateway_ip="fe80::1")
    assert ll["gateway_ip"] == "fe80::1"
    assert ll["allocation_pools"] == [{"start": "2001:db8:5::1", "end": "2001:db8:5:0:ffff:ffff:ffff:ffff"}]
    nogw = v6(alice, net, "2001:db8:6::/64", gateway_ip=None)
    assert nogw["gateway_ip"] is None
    pools = v6(alice, net, "2001:db8:7::/64", allocation_pools=[{"start": "2001:db8:7::10", "end": "2001:db8:7::20"}])
    assert pools["allocation_pools"] == [{"start": "2001:db8:7::10", "end": "2001:db8:7::20"}]
    r = alice.put(f"/subnets/{s['id']}", json={"subnet": {"gateway_ip": "2001:db8:4::fe",
                                                            "allocation_pools": [{"start": "2001:db8:4::1",
                                                                                  "end": "2001:db8:4::f0"}]}})
    assert r.status_code == 200, r.text
    assert r.json()["subnet"]["gateway_ip"] == "2001:db8:4::fe"


BAD_V6 = [
    ({"ipv6_ra_mode": "slaac", "ipv6_address_mode": "dhcpv6-stateful"}, 400, "InvalidInput",
     "ipv6_ra_mode set to 'slaac' with ipv6_address_mode set to 'dhcpv6-stateful' is not valid"),
    ({"ipv6_ra_mode": "dhcpv6-stateless", "ipv6_address_mode": "slaac"}, 400, "InvalidInput", "must be the same"),
    ({"ipv6_ra_mode": "dhcpv6-stateful", "ipv6_address_mode": "dhcpv6-stateless"}, 400, "InvalidInput", None),
    ({"ipv6_ra_mode": "bogus"}, 400, None, "Invalid input for ipv6_ra_mode"),
    ({"ipv6_address_mode": "SLAAC"}, 400, None, "Invalid input for ipv6_address_mode"),
    ({"ipv6_address_mode": 6}, 400, None, "ipv6_address_mode"),
    ({"ipv6_ra_mode": "slaac", "enable_dhcp": False}, 400, "InvalidInput",
     "ipv6_ra_mode or ipv6_address_mode cannot be set when enable_dhcp is set to False."),
    ({"ipv6_address_mode": "slaac", "cidr": "2001:db8::/80"}, 400, "InvalidInput",
     "Invalid CIDR 2001:db8::/80 for IPv6 address mode"),
    ({"ipv6_ra_mode": "dhcpv6-stateless", "cidr": "2001:db8::/56"}, 400, "InvalidInput", "requires the prefix to be /64"),
    ({"cidr": "192.0.2.0/24"}, 400, "InvalidInput", "does not match the ip_version '6'"),
    ({"cidr": "2001:db8::/127"}, 400, "InvalidInput", "incompatible with DHCP"),
    ({"cidr": "fe80::/64"}, 400, "InvalidInput", "link-local"),
    ({"cidr": "ff02::/64", "enable_dhcp": False}, 400, "InvalidInput", "multicast"),
    ({"gateway_ip": "2001:db8::"}, 400, "InvalidInput", "Gateway is not valid"),
    ({"gateway_ip": "2001:db9::1"}, 400, "InvalidInput", "Gateway is not valid"),
    ({"gateway_ip": "192.0.2.1"}, 400, "InvalidInput", "does not match the ip_version"),
    ({"allocation_pools": [{"start": "2001:db8::", "end": "2001:db8::9"}]}, 400, "OutOfBoundsAllocationPool", None),
    ({"allocation_pools": [{"start": "192.0.2.2", "end": "192.0.2.9"}]}, 400, "InvalidAllocationPool", None),
    ({"host_routes": [{"destination": "192.0.2.0/24", "nexthop": "2001:db8::5"}]}, 400, "InvalidInput",
     "does not match the ip_version '6'"),
]


@pytest.mark.parametrize("attrs,status,type_,message", BAD_V6)
def test_invalid_v6_creates(shared_server, attrs: dict[str, Any], status: int, type_: str | None,
                            message: str | None) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    body = {"network_id": net["id"], "ip_version": 6, "cidr": "2001:db8::/64", **attrs}
    assert_error(alice.post("/subnets", json={"subnet": body}), status, type_, message)
    after = alice.get(f"/networks/{net['id']}").json()["network"]
    assert after["subnets"] == [] and after["revision_number"] == net["revision_number"]


def test_modes_are_read_only_and_dhcp_stays_on(shared_server) -> None:
    alice = shared_server.api("alice")
    s = v6(alice, network(alice), "2001:db8:8::/64", ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    assert_error(alice.put(f"/subnets/{s['id']}", json={"subnet": {"ipv6_ra_mode": "dhcpv6-stateful"}}), 400)
    assert_error(alice.put(f"/subnets/{s['id']}", json={"subnet": {"enable_dhcp": False}}), 400, "InvalidInput",
                 "Cannot disable enable_dhcp with ipv6 attributes set")
    assert alice.get(f"/subnets/{s['id']}").json()["subnet"]["enable_dhcp"] is True


def test_mode_filters(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    made = {m: v6(alice, net, f"2001:db8:{10 + i}::/64", ipv6_ra_mode=m, ipv6_address_mode=m)["id"]
            for i, m in enumerate(MODES)}
    plain = v6(alice, net, "2001:db8:20::/64")["id"]
    v4 = subnet(alice, net, "192.0.2.0/24")["id"]
    for m, sid in made.items():
        for key in ("ipv6_ra_mode", "ipv6_address_mode"):
            got = alice.get("/subnets", params={key: m, "network_id": net["id"]}).json()["subnets"]
            assert [s["id"] for s in got] == [sid], (key, m)
    got = alice.get("/subnets", params={"ip_version": 6, "network_id": net["id"]}).json()["subnets"]
    assert {s["id"] for s in got} == {*made.values(), plain}
    got = alice.get("/subnets", params={"ip_version": 4, "network_id": net["id"]}).json()["subnets"]
    assert [s["id"] for s in got] == [v4]


def test_network_mtu_below_1280_refuses_v6(shared_server) -> None:
    admin = shared_server.api("admin")
    net = network(admin, mtu=1200)
    assert_error(admin.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 6,
                                                         "cidr": "2001:db8:30::/64"}}), 409, None, "1280")
    subnet(admin, net, "192.0.2.0/24")  # IPv4 is fine at 1200
    net2 = network(admin)
    v6(admin, net2, "2001:db8:31::/64")
    assert_error(admin.put(f"/networks/{net2['id']}", json={"network": {"mtu": 1279}}), 409, None, "IPv6")


def test_v6_subnet_pool_and_address_scope(shared_server) -> None:
    alice = shared_server.api("alice")
    scope = alice.post("/address-scopes", json={"address_scope": {"name": "s6", "ip_version": 6}})
    assert scope.status_code == 201, scope.text
    pool = alice.post("/subnetpools", json={"subnetpool": {
        "name": "p6", "prefixes": ["2001:db8:100::/48"], "default_prefixlen": 64,
        "address_scope_id": scope.json()["address_scope"]["id"]}})
    assert pool.status_code == 201, pool.text
    pool = pool.json()["subnetpool"]
    assert pool["ip_version"] == 6
    net = network(alice)
    a = alice.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 6, "subnetpool_id": pool["id"],
                                                "ipv6_address_mode": "slaac", "ipv6_ra_mode": "slaac"}})
    assert a.status_code == 201, a.text
    a = a.json()["subnet"]
    assert ipaddress.ip_network(a["cidr"]).subnet_of(ipaddress.ip_network("2001:db8:100::/48"))
    assert a["cidr"].endswith("/64") and a["subnetpool_id"] == pool["id"]
    got = alice.get(f"/networks/{net['id']}").json()["network"]
    assert got["ipv6_address_scope"] == scope.json()["address_scope"]["id"] and got["ipv4_address_scope"] is None
    subnet(alice, net, "192.0.2.0/24")  # a plain IPv4 CIDR next to the IPv6 pool subnet is fine
    assert_error(alice.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 6,
                                                         "cidr": "2001:db8:101::/64"}}),
                 400, "NetworkSubnetPoolAffinityError")
    assert_error(alice.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 6,
                                                         "subnetpool_id": pool["id"], "prefixlen": 80,
                                                         "ipv6_address_mode": "slaac"}}),
                 400, "InvalidInput", "/64")
    b = alice.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 6, "subnetpool_id": pool["id"],
                                                "prefixlen": 80}})
    assert b.status_code == 201 and b.json()["subnet"]["cidr"].endswith("/80"), b.text


# --- ports -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["slaac", "dhcpv6-stateless"])
def test_auto_address_port_gets_eui64(shared_server, mode: str) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    s = v6(alice, net, "2001:db8:40::/64", ipv6_ra_mode=mode, ipv6_address_mode=mode)
    p = port(alice, net, mac_address="fa:16:3e:12:34:56")
    assert p["fixed_ips"] == [{"subnet_id": s["id"], "ip_address": "2001:db8:40:0:f816:3eff:fe12:3456"}]
    assert claims(shared_server, s["id"]) == {"2001:db8:40:0:f816:3eff:fe12:3456"}
    q = port(alice, net)
    assert ips(q)[s["id"]] == eui64_address(s["cidr"], q["mac_address"])


def test_stateful_and_no_mode_allocate_from_the_pool(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    s = v6(alice, net, "2001:db8:41::/64", ipv6_ra_mode="dhcpv6-stateful", ipv6_address_mode="dhcpv6-stateful",
           allocation_pools=[{"start": "2001:db8:41::100", "end": "2001:db8:41::101"}])
    a, b = port(alice, net), port(alice, net)
    assert [ips(a)[s["id"]], ips(b)[s["id"]]] == ["2001:db8:41::100", "2001:db8:41::101"]
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"]}}), 409, "IpAddressGenerationFailure")
    fixed = port(alice, net, fixed_ips=[{"subnet_id": s["id"], "ip_address": "2001:db8:41::abcd"}])
    assert ips(fixed)[s["id"]] == "2001:db8:41::abcd"
    # the same address in another spelling is the same address
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "fixed_ips": [
        {"ip_address": "2001:DB8:41:0::ABCD"}]}}), 409, "IpAddressAlreadyAllocated")
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "fixed_ips": [
        {"subnet_id": s["id"], "ip_address": "2001:db8:42::1"}]}}), 400, "InvalidIpForSubnet")
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "device_owner": "compute:nova",
                                                     "fixed_ips": [{"subnet_id": s["id"],
                                                                    "ip_address": "2001:db8:41::"}]}}),
                 400, "InvalidIpForSubnet")
    assert claims(shared_server, s["id"]) == {"2001:db8:41::100", "2001:db8:41::101", "2001:db8:41::abcd"}


def test_dual_stack_port(shared_server) -> None:
    """One IPv4, one stateful IPv6 and the EUI-64 of each auto-address subnet; creation order
    does not matter."""
    alice = shared_server.api("alice")
    net = network(alice)
    slaac = v6(alice, net, "2001:db8:43::/64", ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    four = subnet(alice, net, "192.0.2.0/24")
    stateful = v6(alice, net, "2001:db8:44::/64", ipv6_address_mode="dhcpv6-stateful")
    stateless = v6(alice, net, "2001:db8:45::/64", ipv6_address_mode="dhcpv6-stateless")
    p = port(alice, net, mac_address="fa:16:3e:00:00:01")
    assert ips(p) == {four["id"]: "192.0.2.2", stateful["id"]: "2001:db8:44::2",
                      slaac["id"]: "2001:db8:43:0:f816:3eff:fe00:1", stateless["id"]: "2001:db8:45:0:f816:3eff:fe00:1"}
    # explicit fixed_ips: the auto-address subnets are added anyway (Neutron)
    q = port(alice, net, fixed_ips=[{"subnet_id": four["id"]}])
    assert set(ips(q)) == {four["id"], slaac["id"], stateless["id"]}
    # several v6 addresses on one port
    r = port(alice, net, fixed_ips=[{"subnet_id": stateful["id"]}, {"subnet_id": stateful["id"]},
                                    {"subnet_id": four["id"], "ip_address": "192.0.2.200"}])
    assert len(r["fixed_ips"]) == 5
    assert [ip["ip_address"] for ip in r["fixed_ips"] if ip["subnet_id"] == stateful["id"]] == [
        "2001:db8:44::3", "2001:db8:44::4"]


def test_explicit_address_on_auto_subnet_is_refused_without_leak(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    four = subnet(alice, net, "192.0.2.0/24")
    s = v6(alice, net, "2001:db8:46::/64", ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    for fixed in ([{"subnet_id": s["id"], "ip_address": "2001:db8:46::5"}],
                  [{"subnet_id": four["id"], "ip_address": "192.0.2.9"}, {"ip_address": "2001:db8:46::5"}]):
        assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "fixed_ips": fixed}}), 400,
                     "InvalidInput", "cannot be directly assigned to a port on subnet")
    assert claims(shared_server, s["id"]) == set() and claims(shared_server, four["id"]) == set()
    kvs, _ = shared_server.store.range(f"/vxnet/mac/{net['id']}/")
    assert kvs == []
    # a router interface port may take any address there (Neutron's ROUTER_INTERFACE_OWNERS)
    admin = shared_server.api("admin")
    rp = admin.post("/ports", json={"port": {"network_id": net["id"], "project_id": alice.get("/networks").json()[
        "networks"][0]["project_id"], "device_owner": "network:router_interface",
        "fixed_ips": [{"subnet_id": s["id"], "ip_address": "2001:db8:46::5"}]}})
    assert rp.status_code == 201, rp.text
    assert ips(rp.json()["port"]) == {s["id"]: "2001:db8:46::5"}


def test_eui64_collision_is_a_conflict_and_leaks_nothing(shared_server) -> None:
    """Another network may reuse a MAC; the same network may not (MacAddressInUse), and an
    EUI-64 address a router port holds is taken (409) with nothing left claimed."""
    alice = shared_server.api("alice")
    net, other = network(alice), network(alice)
    s = v6(alice, net, "2001:db8:47::/64", ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    s2 = v6(alice, other, "2001:db8:47::/64", ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    port(alice, net, mac_address="fa:16:3e:aa:bb:cc")
    twin = port(alice, other, mac_address="fa:16:3e:aa:bb:cc")
    assert ips(twin)[s2["id"]] == "2001:db8:47:0:f816:3eff:feaa:bbcc"
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "mac_address": "fa:16:3e:aa:bb:cc"}}),
                 409, "MacAddressInUse")
    admin = shared_server.api("admin")
    r = admin.post("/ports", json={"port": {"network_id": net["id"], "device_owner": "network:router_interface",
                                            "fixed_ips": [{"subnet_id": s["id"],
                                                           "ip_address": eui64_address(s["cidr"], "fa:16:3e:00:00:77")}]}})
    assert r.status_code == 201, r.text
    before = claims(shared_server, s["id"])
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "mac_address": "fa:16:3e:00:00:77"}}),
                 409, "IpAddressAlreadyAllocated")
    assert claims(shared_server, s["id"]) == before
    assert shared_server.store.get(f"/vxnet/mac/{net['id']}/fa:16:3e:00:00:77") is None


def test_mac_change_moves_the_eui64_address(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    four = subnet(alice, net, "192.0.2.0/24")
    s = v6(alice, net, "2001:db8:48::/64", ipv6_ra_mode="dhcpv6-stateless", ipv6_address_mode="dhcpv6-stateless")
    p = port(alice, net, mac_address="fa:16:3e:00:01:01")
    r = shared_server.api("admin").put(f"/ports/{p['id']}", json={"port": {"mac_address": "fa:16:3e:00:01:02"}})
    assert r.status_code == 200, r.text
    assert ips(r.json()["port"]) == {four["id"]: ips(p)[four["id"]], s["id"]: "2001:db8:48:0:f816:3eff:fe00:102"}
    assert claims(shared_server, s["id"]) == {"2001:db8:48:0:f816:3eff:fe00:102"}


def test_fixed_ips_update_keeps_auto_addresses(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    four = subnet(alice, net, "192.0.2.0/24")
    s = v6(alice, net, "2001:db8:49::/64", ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    p = port(alice, net)
    r = alice.put(f"/ports/{p['id']}", json={"port": {"fixed_ips": [{"subnet_id": four["id"],
                                                                      "ip_address": "192.0.2.50"}]}})
    assert r.status_code == 200, r.text
    assert ips(r.json()["port"]) == {four["id"]: "192.0.2.50", s["id"]: ips(p)[s["id"]]}
    assert_error(alice.put(f"/ports/{p['id']}", json={"port": {"fixed_ips": [
        {"subnet_id": s["id"], "ip_address": "2001:db8:49::9"}]}}), 400, "InvalidInput")
    assert claims(shared_server, s["id"]) == {ips(p)[s["id"]]}
    assert claims(shared_server, four["id"]) == {"192.0.2.50"}


def test_new_auto_subnet_addresses_existing_ports_and_delete_takes_them_back(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    subnet(alice, net, "192.0.2.0/24")
    a, b = port(alice, net), port(alice, net)
    s = v6(alice, net, "2001:db8:4a::/64", ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    for p in (a, b):
        got = alice.get(f"/ports/{p['id']}").json()["port"]
        assert ips(got)[s["id"]] == eui64_address(s["cidr"], p["mac_address"])
        assert got["revision_number"] > p["revision_number"]
    stateful = v6(alice, net, "2001:db8:4b::/64", ipv6_address_mode="dhcpv6-stateful")
    assert stateful["id"] not in ips(alice.get(f"/ports/{a['id']}").json()["port"])  # not added to old ports
    r = alice.delete(f"/subnets/{s['id']}")
    assert r.status_code == 204, r.text
    for p in (a, b):
        assert s["id"] not in ips(alice.get(f"/ports/{p['id']}").json()["port"])
    assert claims(shared_server, s["id"]) == set()


def test_bulk_create_of_two_auto_subnets_addresses_existing_ports_on_both(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    p = port(alice, net)
    r = alice.post("/subnets", json={"subnets": [
        {"network_id": net["id"], "ip_version": 6, "cidr": "2001:db8:4e:1::/64", "ipv6_address_mode": "slaac"},
        {"network_id": net["id"], "ip_version": 6, "cidr": "2001:db8:4e:2::/64", "ipv6_address_mode": "dhcpv6-stateless",
         "ipv6_ra_mode": "dhcpv6-stateless"}]})
    assert r.status_code == 201, r.text
    made = r.json()["subnets"]
    got = ips(alice.get(f"/ports/{p['id']}").json()["port"])
    assert got == {s["id"]: eui64_address(s["cidr"], p["mac_address"]) for s in made}
    assert all(claims(shared_server, s["id"]) == {got[s["id"]]} for s in made)


def test_other_project_cannot_use_v6_subnet(shared_server) -> None:
    alice, bob = shared_server.api("alice"), shared_server.api("bob")
    net = network(alice)
    s = v6(alice, net, "2001:db8:4c::/64", ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    assert_error(bob.get(f"/subnets/{s['id']}"), 404, "SubnetNotFound")
    assert_error(bob.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 6,
                                                       "cidr": "2001:db8:4d::/64"}}), 404, "NetworkNotFound")
    assert_error(bob.post("/ports", json={"port": {"network_id": net["id"]}}), 404, "NetworkNotFound")
    assert bob.get("/subnets", params={"ipv6_ra_mode": "slaac"}).json()["subnets"] == []


# --- routers and floating IPs ----------------------------------------------------------------------


def add_intf(c: httpx.Client, router_id: str, **body: str) -> httpx.Response:
    return c.put(f"/routers/{router_id}/add_router_interface", json=body)


def remove_intf(c: httpx.Client, router_id: str, **body: str) -> httpx.Response:
    return c.put(f"/routers/{router_id}/remove_router_interface", json=body)


def router(c: httpx.Client, **attrs: Any) -> dict[str, Any]:
    r = c.post("/routers", json={"router": {"name": "r", **attrs}})
    assert r.status_code == 201, r.text
    return r.json()["router"]


def test_router_interfaces_on_v6_subnets_share_one_port(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    four = subnet(alice, net, "192.0.2.0/24")
    slaac = v6(alice, net, "2001:db8:50::/64", ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    stateful = v6(alice, net, "2001:db8:51::/64", ipv6_ra_mode="dhcpv6-stateful", ipv6_address_mode="dhcpv6-stateful")
    rtr = router(alice)
    a = add_intf(alice, rtr["id"], subnet_id=slaac["id"])
    assert a.status_code == 200, a.text
    b = add_intf(alice, rtr["id"], subnet_id=stateful["id"])
    assert b.status_code == 200, b.text
    assert b.json()["port_id"] == a.json()["port_id"] and b.json()["subnet_ids"] == [stateful["id"]]
    c = add_intf(alice, rtr["id"], subnet_id=four["id"])
    assert c.status_code == 200 and c.json()["port_id"] != a.json()["port_id"], c.text
    p = alice.get(f"/ports/{a.json()['port_id']}").json()["port"]
    assert p["device_owner"] == "network:router_interface"
    assert ips(p) == {slaac["id"]: "2001:db8:50::1", stateful["id"]: "2001:db8:51::1"}  # gateways, no EUI-64
    assert_error(add_intf(alice, rtr["id"], subnet_id=slaac["id"]), 400, None, "already has a port on subnet")
    # a port with an IPv6 address on a network where the router has an IPv6 port cannot join
    net2 = network(alice)
    x, y = v6(alice, net2, "2001:db8:54::/64"), v6(alice, net2, "2001:db8:55::/64")
    assert add_intf(alice, rtr["id"], subnet_id=x["id"]).status_code == 200
    spare = port(alice, net2, fixed_ips=[{"subnet_id": y["id"]}])
    assert_error(add_intf(alice, rtr["id"], port_id=spare["id"]), 400, None, "Only one IPv6 port")
    assert alice.get(f"/ports/{spare['id']}").json()["port"]["device_id"] == ""
    # an overlapping IPv6 subnet of another network is refused
    other = network(alice)
    ov = v6(alice, other, "2001:db8:50::/64")
    assert_error(add_intf(alice, rtr["id"], subnet_id=ov["id"]), 400, None, "overlaps")
    assert claims(shared_server, ov["id"]) == set()
    # removing one prefix keeps the port; removing the last removes it
    r = remove_intf(alice, rtr["id"], subnet_id=slaac["id"])
    assert r.status_code == 200, r.text
    p = alice.get(f"/ports/{a.json()['port_id']}").json()["port"]
    assert ips(p) == {stateful["id"]: "2001:db8:51::1"}
    assert "2001:db8:50::1" not in claims(shared_server, slaac["id"])
    assert remove_intf(alice, rtr["id"], subnet_id=stateful["id"]).status_code == 200
    assert alice.get(f"/ports/{a.json()['port_id']}").status_code == 404
    assert claims(shared_server, stateful["id"]) == set()


def test_address_mode_only_subnet_is_not_for_a_vxnet_router(shared_server) -> None:
    """Neutron: its RAs come from an outside router, so a Neutron router may not serve it."""
    alice = shared_server.api("alice")
    net = network(alice)
    s = v6(alice, net, "2001:db8:57::/64", ipv6_address_mode="slaac")
    rtr = router(alice)
    assert_error(add_intf(alice, rtr["id"], subnet_id=s["id"]), 400, None,
                 "configured to receive RAs from an external router cannot be added to Neutron Router")
    assert claims(shared_server, s["id"]) == set()


def test_router_port_keeps_out_of_new_auto_subnet_and_blocks_its_delete(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    s1 = v6(alice, net, "2001:db8:52::/64", ipv6_address_mode="dhcpv6-stateful", ipv6_ra_mode="dhcpv6-stateful")
    rtr = router(alice)
    pid = add_intf(alice, rtr["id"], subnet_id=s1["id"]).json()["port_id"]
    s2 = v6(alice, net, "2001:db8:53::/64", ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    assert set(ips(alice.get(f"/ports/{pid}").json()["port"])) == {s1["id"]}
    assert add_intf(alice, rtr["id"], subnet_id=s2["id"]).json()["port_id"] == pid
    assert_error(alice.delete(f"/subnets/{s2['id']}"), 409, "SubnetInUse")


def external_dual_stack(admin: httpx.Client) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    ext = network(admin, **{"router:external": True})
    s4 = subnet(admin, ext, "203.0.113.0/24", enable_dhcp=False)
    s6 = v6(admin, ext, "2001:db8:ee::/64", ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    return ext, s4, s6


def test_gateway_on_dual_stack_external_network_gets_both_addresses(shared_server) -> None:
    admin, alice = shared_server.api("admin"), shared_server.api("alice")
    ext, s4, s6 = external_dual_stack(admin)
    rtr = router(alice, external_gateway_info={"network_id": ext["id"]})
    fixed = rtr["external_gateway_info"]["external_fixed_ips"]
    assert {ip["subnet_id"] for ip in fixed} == {s4["id"], s6["id"]}
    gw = admin.get("/ports", params={"device_id": rtr["id"], "device_owner": "network:router_gateway"}).json()["ports"][0]
    assert ips(gw)[s6["id"]] == eui64_address(s6["cidr"], gw["mac_address"])
    # a v6-only stateful external subnet: the gateway takes a pool address
    ext2 = network(admin, **{"router:external": True})
    s6b = v6(admin, ext2, "2001:db8:ef::/64", ipv6_address_mode="dhcpv6-stateful")
    r2 = router(alice, external_gateway_info={"network_id": ext2["id"]})
    assert r2["external_gateway_info"]["external_fixed_ips"] == [{"subnet_id": s6b["id"], "ip_address": "2001:db8:ef::2"}]


def test_gateway_fixed_ips_change_keeps_the_eui64_address(shared_server) -> None:
    admin = shared_server.api("admin")
    ext, s4, s6 = external_dual_stack(admin)
    rtr = router(admin, external_gateway_info={"network_id": ext["id"]})
    before = {ip["subnet_id"]: ip["ip_address"] for ip in rtr["external_gateway_info"]["external_fixed_ips"]}
    r = admin.put(f"/routers/{rtr['id']}", json={"router": {"external_gateway_info": {
        "network_id": ext["id"], "external_fixed_ips": [{"subnet_id": s4["id"], "ip_address": "203.0.113.77"}]}}})
    assert r.status_code == 200, r.text
    after = {ip["subnet_id"]: ip["ip_address"] for ip in r.json()["router"]["external_gateway_info"]["external_fixed_ips"]}
    assert after == {s4["id"]: "203.0.113.77", s6["id"]: before[s6["id"]]}
    assert_error(admin.put(f"/routers/{rtr['id']}", json={"router": {"external_gateway_info": {
        "network_id": ext["id"], "external_fixed_ips": [{"subnet_id": s6["id"], "ip_address": "2001:db8:ee::5"}]}}}),
        400, "InvalidInput", "automatic addresses")
    assert claims(shared_server, s4["id"]) == {"203.0.113.77"} and claims(shared_server, s6["id"]) == {before[s6["id"]]}


def test_floating_ips_stay_ipv4(shared_server) -> None:
    admin, alice = shared_server.api("admin"), shared_server.api("alice")
    ext, s4, s6 = external_dual_stack(admin)
    assert_error(admin.post("/floatingips", json={"floatingip": {
        "floating_network_id": ext["id"], "floating_ip_address": "2001:db8:ee::99"}}), 400)
    assert_error(alice.post("/floatingips", json={"floatingip": {
        "floating_network_id": ext["id"], "subnet_id": s6["id"]}}), 400)
    v6only = network(admin, **{"router:external": True})
    v6(admin, v6only, "2001:db8:ed::/64", ipv6_address_mode="dhcpv6-stateful")
    assert_error(alice.post("/floatingips", json={"floatingip": {"floating_network_id": v6only["id"]}}), 400)
    assert claims(shared_server, s6["id"]) == set() and claims(shared_server, s4["id"]) == set()
    # a port with IPv6 addresses only cannot take a floating IP; a dual-stack one maps its IPv4 address
    net = network(alice)
    inner6 = v6(alice, net, "2001:db8:56::/64", ipv6_address_mode="dhcpv6-stateful", ipv6_ra_mode="dhcpv6-stateful")
    rtr = router(alice, external_gateway_info={"network_id": ext["id"]})
    assert add_intf(alice, rtr["id"], subnet_id=inner6["id"]).status_code == 200
    p6 = port(alice, net)
    fip = alice.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"]}})
    assert fip.status_code == 201, fip.text
    fip = fip.json()["floatingip"]
    assert ipaddress.ip_address(fip["floating_ip_address"]).version == 4
    assert_error(alice.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": p6["id"]}}), 400, None,
                 "no fixed IPv4 addresses")
    assert_error(alice.put(f"/floatingips/{fip['id']}", json={"floatingip": {
        "port_id": p6["id"], "fixed_ip_address": p6["fixed_ips"][0]["ip_address"]}}), 400, None, "IPv4")


# --- security groups ---------------------------------------------------------------------------------


def test_security_group_rules_for_ipv6(shared_server) -> None:
    alice = shared_server.api("alice")
    g = alice.post("/security-groups", json={"security_group": {"name": "v6"}}).json()["security_group"]

    def rule(**attrs: Any) -> httpx.Response:
        return alice.post("/security-group-rules", json={"security_group_rule": {
            "security_group_id": g["id"], "direction": "ingress", **attrs}})

    r = rule(ethertype="IPv6", protocol="icmpv6", remote_ip_prefix="2001:db8:60::/64")
    assert r.status_code == 201, r.text
    assert (r.json()["security_group_rule"]["protocol"], r.json()["security_group_rule"]["ethertype"]) == (
        "ipv6-icmp", "IPv6")
    assert rule(ethertype="IPv6", protocol="58", port_range_min=128, port_range_max=0).status_code == 201
    assert rule(ethertype="IPv6", protocol="tcp", port_range_min=22, port_range_max=22,
                remote_ip_prefix="2001:db8:60::5/64").json()["security_group_rule"]["normalized_cidr"] == \
        "2001:db8:60::/64"
    assert_error(rule(ethertype="IPv4", remote_ip_prefix="2001:db8::/64"), 400, "SecurityGroupRuleParameterConflict",
                 "Conflicting value ethertype IPv4 for CIDR 2001:db8::/64")
    assert_error(rule(ethertype="IPv6", remote_ip_prefix="192.0.2.0/24"), 400, "SecurityGroupRuleParameterConflict")
    assert_error(rule(ethertype="IPv4", protocol="ipv6-icmp"), 400, "SecurityGroupEthertypeConflictWithProtocol")
    assert_error(rule(ethertype="IPv6", protocol="icmpv6", remote_ip_prefix="2001:db8:60::/64"), 409,
                 "SecurityGroupRuleExists")
    default = next(x for x in alice.get("/security-groups", params={"name": "default"}).json()["security_groups"])
    v6_rules = sorted((r["direction"], r["remote_group_id"] is not None, r["remote_ip_prefix"])
                      for r in default["security_group_rules"] if r["ethertype"] == "IPv6")
    assert v6_rules == [("egress", False, None), ("ingress", True, None)]
    # allowed address pairs with IPv6 prefixes
    net = network(alice)
    v6(alice, net, "2001:db8:61::/64", ipv6_address_mode="slaac")
    p = port(alice, net, allowed_address_pairs=[{"ip_address": "2001:db8:61::/120"},
                                                {"ip_address": "2001:db8:61::99"}])
    assert [a["ip_address"] for a in p["allowed_address_pairs"]] == ["2001:db8:61::/120", "2001:db8:61::99"]


# --- the host view ----------------------------------------------------------------------------------


def test_host_view_carries_ipv6_to_the_agent(tmp_path) -> None:
    from tests.api.test_host_view import StreamReader, _held, agent_client, start_agent_server
    from vxnet.model.view import parse_view

    srv = start_agent_server(str(tmp_path / "vxnet.db"))
    try:
        assert agent_client(srv).post("/hosts/hv1/register", json={"underlay_ip": "198.51.100.1"}).status_code == 200
        reader = StreamReader(srv, "hv1")
        admin, alice = srv.api("admin"), srv.api("alice")
        net = network(alice)
        four = subnet(alice, net, "192.0.2.0/24")
        s = v6(alice, net, "2001:db8:70::/64", ipv6_ra_mode="slaac", ipv6_address_mode="slaac",
               dns_nameservers=["2001:db8::53"])
        st = v6(alice, net, "2001:db8:71::/64", ipv6_ra_mode="dhcpv6-stateful", ipv6_address_mode="dhcpv6-stateful")
        p = admin.post("/ports", json={"port": {"network_id": net["id"], "binding:host_id": "hv1",
                                                "project_id": net["project_id"]}})
        assert p.status_code == 201, p.text
        p = p.json()["port"]
        reader.wait(lambda m: p["id"] in (m.get("put", {}).get("ports") or m.get("view", {}).get("ports") or {}))
        deadline = time.time() + 5
        while st["id"] not in _held(reader).get("subnets", {}) and time.time() < deadline:
            time.sleep(0.05)
        raw = _held(reader)
        reader.close()
        assert raw["subnets"][s["id"]]["ipv6_ra_mode"] == "slaac"
        assert raw["subnets"][st["id"]]["ipv6_address_mode"] == "dhcpv6-stateful"
        view = parse_view(raw)
        sub, sub_st, sub4 = view.subnets[s["id"]], view.subnets[st["id"]], view.subnets[four["id"]]
        assert (sub.ip_version, sub.ipv6_ra_mode, sub.ipv6_address_mode, sub.is_auto_address) == (6, "slaac", "slaac", True)
        assert sub.gateway_ip == "2001:db8:70::1" and sub.dns_nameservers == ("2001:db8::53",)
        assert (sub_st.is_auto_address, sub_st.allocation_pools) == (False, (("2001:db8:71::2",
                                                                              "2001:db8:71:0:ffff:ffff:ffff:ffff"),))
        assert (sub4.ip_version, sub4.ipv6_ra_mode, sub4.is_auto_address) == (4, None, False)
        port_t = view.ports[p["id"]]
        assert {f.ip_address for f in port_t.ipv6} == {eui64_address(s["cidr"], p["mac_address"]), "2001:db8:71::2"}
        assert [f.ip_address for f in port_t.ipv4] == ["192.0.2.2"]
        ethertypes = {(r.direction, r.ethertype) for r in view.security_group_rules.values()}
        assert {("egress", "IPv6"), ("ingress", "IPv6"), ("egress", "IPv4"), ("ingress", "IPv4")} <= ethertypes
    finally:
        srv.stop()


def test_full_stateful_v6_subnet_fails_a_dual_stack_port_without_leaking(shared_server) -> None:
    """Neutron: every address family the network offers must yield an address."""
    alice = shared_server.api("alice")
    net = network(alice)
    four = subnet(alice, net, "192.0.2.0/24")
    s = v6(alice, net, "2001:db8:4e::/64", ipv6_address_mode="dhcpv6-stateful",
           allocation_pools=[{"start": "2001:db8:4e::10", "end": "2001:db8:4e::10"}])
    port(alice, net)
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"]}}), 409, "IpAddressGenerationFailure")
    assert claims(shared_server, four["id"]) == {"192.0.2.2"} and claims(shared_server, s["id"]) == {"2001:db8:4e::10"}


def test_slaac_subnet_added_to_external_network_updates_router_gateways(shared_server) -> None:
    admin, alice = shared_server.api("admin"), shared_server.api("alice")
    ext = network(admin, **{"router:external": True})
    s4 = subnet(admin, ext, "198.51.100.0/24", enable_dhcp=False)
    rtr = router(alice, external_gateway_info={"network_id": ext["id"]})
    s6 = v6(admin, ext, "2001:db8:ec::/64", ipv6_address_mode="slaac")
    gw = admin.get("/ports", params={"device_id": rtr["id"], "device_owner": "network:router_gateway"}).json()["ports"][0]
    shown = alice.get(f"/routers/{rtr['id']}").json()["router"]["external_gateway_info"]["external_fixed_ips"]
    assert shown == gw["fixed_ips"] and {ip["subnet_id"] for ip in shown} == {s4["id"], s6["id"]}
    assert ips(gw)[s6["id"]] == eui64_address(s6["cidr"], gw["mac_address"])
    assert admin.delete(f"/subnets/{s6['id']}").status_code == 204
    shown = alice.get(f"/routers/{rtr['id']}").json()["router"]["external_gateway_info"]["external_fixed_ips"]
    assert [ip["subnet_id"] for ip in shown] == [s4["id"]]


def test_only_the_network_owner_may_make_router_owned_ports_on_an_auto_subnet(shared_server) -> None:
    """The exemption for router interface ports cannot be borrowed: on a network shared with
    him, another project may not create a port with a `network:*` owner (Neutron's policy)."""
    admin, alice, bob = shared_server.api("admin"), shared_server.api("alice"), shared_server.api("bob")
    net = network(alice)
    s = v6(alice, net, "2001:db8:4f::/64", ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    r = admin.post("/rbac-policies", json={"rbac_policy": {"object_type": "network", "object_id": net["id"],
                                                           "action": "access_as_shared", "target_tenant": "*"}})
    assert r.status_code == 201, r.text
    assert_error(bob.post("/ports", json={"port": {"network_id": net["id"], "device_owner": "network:router_interface",
                                                   "fixed_ips": [{"subnet_id": s["id"], "ip_address": "2001:db8:4f::9"}]}}),
                 403)
    assert_error(bob.post("/ports", json={"port": {"network_id": net["id"], "fixed_ips": [
        {"subnet_id": s["id"], "ip_address": "2001:db8:4f::9"}]}}), 403)  # explicit addresses: network owner only
    mine = port(bob, net)
    assert ips(mine) == {s["id"]: eui64_address(s["cidr"], mine["mac_address"])}
    assert claims(shared_server, s["id"]) == {ips(mine)[s["id"]]}


def test_fixed_ips_update_adds_a_missing_auto_address(shared_server) -> None:
    """Neutron's _update_ips_for_port: a non-router port lacking its EUI-64 address on an
    auto-address subnet gets it at its next fixed_ips update (here: a former router port)."""
    admin = shared_server.api("admin")
    net = network(admin)
    four = subnet(admin, net, "192.0.2.0/24")
    s = v6(admin, net, "2001:db8:4d::/64", ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    p = port(admin, net, device_owner="network:router_interface")
    assert set(ips(p)) == {four["id"]}  # router ports take no automatic address
    r = admin.put(f"/ports/{p['id']}", json={"port": {"device_owner": "", "fixed_ips": [{"subnet_id": four["id"]}]}})
    assert r.status_code == 200, r.text
    assert ips(r.json()["port"]) == {four["id"]: ips(p)[four["id"]], s["id"]: eui64_address(s["cidr"], p["mac_address"])}
    # and a port created with fixed_ips [] still gets its automatic address (Neutron)
    q = port(admin, net, fixed_ips=[])
    assert ips(q) == {s["id"]: eui64_address(s["cidr"], q["mac_address"])}


def test_ip_availability_counts_v6(shared_server) -> None:
    admin = shared_server.api("admin")
    net = network(admin)
    s = v6(admin, net, "2001:db8:4f:1::/64", ipv6_address_mode="dhcpv6-stateful", ipv6_ra_mode="dhcpv6-stateful")
    port(admin, net)
    got = admin.get(f"/network-ip-availabilities/{net['id']}").json()["network_ip_availability"]
    assert got["subnet_ip_availability"] == [{"subnet_id": s["id"], "subnet_name": "", "cidr": s["cidr"], "ip_version": 6,
                                              "total_ips": 2**64 - 2, "used_ips": 1}]
    listed = admin.get("/network-ip-availabilities", params={"ip_version": 6}).json()["network_ip_availabilities"]
    assert net["id"] in {n["network_id"] for n in listed}


def test_zz_every_claim_is_a_fixed_ip_and_back(shared_server) -> None:
    """Runs last on the module's server, after every success and error path above: the store's
    address and MAC claims are exactly the ports' fixed IPs and MACs (nothing leaked, nothing
    unclaimed)."""
    admin = shared_server.api("admin")
    ports = admin.get("/ports").json()["ports"]
    held = {(ip["subnet_id"], ip["ip_address"], p["id"]) for p in ports for ip in p["fixed_ips"]}
    kvs, _ = shared_server.store.range("/vxnet/ipam/")
    claimed = {(*kv.key.split("/")[3:5], kv.value) for kv in kvs}
    assert claimed == held
    kvs, _ = shared_server.store.range("/vxnet/mac/")
    assert {(*kv.key.split("/")[3:5], kv.value) for kv in kvs} == {(p["network_id"], p["mac_address"], p["id"])
                                                                 for p in ports}


def test_ports_created_while_an_auto_subnet_is_created_all_get_their_address(server) -> None:
    """Whatever the interleaving, every port of the network ends with its EUI-64 address on a
    SLAAC subnet created concurrently (a port made meanwhile makes the subnet's unit rerun),
    and the claims are exactly the ports' addresses."""
    from concurrent.futures import ThreadPoolExecutor

    alice = server.api("alice")
    net = network(alice)
    subnet(alice, net, "192.0.2.0/24")

    def make_port(i: int) -> int:
        with server.api("alice") as c:
            return c.post("/ports", json={"port": {"network_id": net["id"], "name": f"p{i}"}}).status_code

    def make_subnet() -> dict[str, Any]:
        with server.api("alice") as c:
            r = c.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 6,
                                                    "cidr": "2001:db8:90::/64", "ipv6_address_mode": "slaac"}})
            assert r.status_code == 201, r.text
            return r.json()["subnet"]  # type: ignore[no-any-return]

    with ThreadPoolExecutor(6) as pool:
        first = [pool.submit(make_port, i) for i in range(12)]
        s = pool.submit(make_subnet)
        rest = [pool.submit(make_port, i) for i in range(12, 24)]
        codes = [f.result() for f in first + rest]
        s6 = s.result()
    assert codes == [201] * 24
    ports = alice.get("/ports", params={"network_id": net["id"]}).json()["ports"]
    assert len(ports) == 24
    for p in ports:
        assert ips(p).get(s6["id"]) == eui64_address(s6["cidr"], p["mac_address"]), p
    assert claims(server, s6["id"]) == {ips(p)[s6["id"]] for p in ports}


def test_port_committed_between_an_auto_subnets_read_and_commit_reruns_it(server, monkeypatch) -> None:
    """The interleaving made deterministic: a port commits after the subnet's unit listed the
    network's ports but before it commits; the unit must rerun and address that port too."""
    from vxnet.api.routers import subnets as subnets_api
    from vxnet.services.ports import new_port_record

    alice = server.api("alice")
    net = network(alice)
    subnet(alice, net, "192.0.2.0/24")
    made: list[dict[str, Any]] = []
    original = subnets_api.add_auto_addresses

    def interleaved(uow: Any, sub: dict[str, Any]) -> None:
        original(uow, sub)
        if not made:  # first attempt only: another request's port lands now
            def other(uow2: Any) -> dict[str, Any]:
                return new_port_record(uow2, network=uow2.get("networks", net["id"]), project_id=net["project_id"])
            made.append(uow.repo.transact(other))

    monkeypatch.setattr(subnets_api, "add_auto_addresses", interleaved)
    s6 = v6(alice, net, "2001:db8:91::/64", ipv6_address_mode="slaac")
    assert len(made) == 1 and len(made[0]["fixed_ips"]) == 1  # it saw only the IPv4 subnet
    p = alice.get(f"/ports/{made[0]['id']}").json()["port"]
    assert ips(p).get(s6["id"]) == eui64_address(s6["cidr"], p["mac_address"])
    assert claims(server, s6["id"]) == {ips(p)[s6["id"]]}
