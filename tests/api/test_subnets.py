"""/v2.0/subnets over real HTTP: defaults (gateway, pools), validation with Neutron's error
types, overlap rules, updates, delete-in-use, network bookkeeping (subnets list and revision),
visibility (shared/external networks) and the isolation/policy matrix.

Tests on `shared_server` make their own networks, so they never depend on one another.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.api.helpers import assert_error, network, port, subnet
from vxnet.config import project_id_for

TENANT_A = project_id_for("tenant-a")






# --- defaults ------------------------------------------------------------------------------------


def test_create_defaults_and_network_bookkeeping(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    r = alice.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4, "cidr": "192.0.2.77/24",
                                                "name": "s1"}})
    assert r.status_code == 201, r.text
    s = r.json()["subnet"]
    uuid.UUID(s["id"])
    assert s["cidr"] == "192.0.2.0/24"  # normalised
    assert s["gateway_ip"] == "192.0.2.1"
    assert s["allocation_pools"] == [{"start": "192.0.2.2", "end": "192.0.2.254"}]
    assert s["enable_dhcp"] is True
    assert s["dns_nameservers"] == [] and s["host_routes"] == []
    assert s["ipv6_ra_mode"] is None and s["ipv6_address_mode"] is None
    assert s["subnetpool_id"] is None and s["ip_version"] == 4 and s["name"] == "s1"
    assert s["project_id"] == s["tenant_id"] == TENANT_A
    assert s["revision_number"] == 0 and s["tags"] == [] and s["description"] == ""
    after = alice.get(f"/networks/{net['id']}").json()["network"]
    assert after["subnets"] == [s["id"]]
    assert after["revision_number"] == net["revision_number"] + 1
    assert alice.get(f"/subnets/{s['id']}").json()["subnet"] == s


def test_gateway_null_and_custom_gateway_pools(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    s = subnet(alice, net, "192.0.2.0/24", gateway_ip=None, subnetpool_id=None)
    assert s["gateway_ip"] is None and s["subnetpool_id"] is None
    assert s["allocation_pools"] == [{"start": "192.0.2.1", "end": "192.0.2.254"}]
    net2 = network(alice)
    s2 = subnet(alice, net2, "192.0.2.0/24", gateway_ip="192.0.2.100")
    assert s2["allocation_pools"] == [{"start": "192.0.2.1", "end": "192.0.2.99"},
                                      {"start": "192.0.2.101", "end": "192.0.2.254"}]
    net3 = network(alice)
    s3 = subnet(alice, net3, "192.0.2.0/24", gateway_ip="192.0.2.254",
                allocation_pools=[{"start": "192.0.2.20", "end": "192.0.2.29"}, {"start": "192.0.2.10", "end": "192.0.2.12"}],
                dns_nameservers=["198.51.100.53", "198.51.100.54"],
                host_routes=[{"destination": "203.0.113.0/24", "nexthop": "192.0.2.5"}], enable_dhcp=False)
    assert s3["allocation_pools"] == [{"start": "192.0.2.10", "end": "192.0.2.12"},
                                      {"start": "192.0.2.20", "end": "192.0.2.29"}]
    assert s3["dns_nameservers"] == ["198.51.100.53", "198.51.100.54"]
    assert s3["host_routes"] == [{"destination": "203.0.113.0/24", "nexthop": "192.0.2.5"}]
    assert s3["enable_dhcp"] is False
    # ports take addresses from the pools only
    assert port(alice, net3)["fixed_ips"][0]["ip_address"] == "192.0.2.10"


def test_overlapping_cidrs_allowed_across_networks_and_projects(shared_server) -> None:
    alice, bob = shared_server.api("alice"), shared_server.api("bob")
    a1, a2, b1 = network(alice), network(alice), network(bob)
    subnet(alice, a1, "198.51.100.0/24")
    subnet(alice, a2, "198.51.100.0/24")
    subnet(bob, b1, "198.51.100.0/24")


# --- validation ----------------------------------------------------------------------------------

BAD_CREATES = [
    ({"cidr": "192.0.2.0/33"}, 400, None, "Invalid input for cidr"),
    ({"cidr": "not-a-cidr"}, 400, None, "Invalid input for cidr"),
    ({"cidr": "192.0.2.0"}, 400, None, "Invalid input for cidr"),
    ({"cidr": 42}, 400, None, "Invalid input for cidr"),
    ({"cidr": "0.0.0.0/0", "enable_dhcp": False}, 400, "InvalidInput", "0 is not allowed"),
    ({"cidr": "192.0.2.0/31"}, 400, "InvalidInput", "incompatible with DHCP"),
    ({"ip_version": 5}, 400, None, "Invalid input for ip_version. Reason: 5 is not in valid values [4, 6]."),
    ({"ip_version": "four"}, 400, None, "Invalid input for ip_version. Reason: 'four' is not an integer."),
    ({"ip_version": True}, 400, None, "ip_version"),
    # IPv6 subnets are accepted now (tests/api/test_ipv6.py); what stays refused here:
    ({"ip_version": 6}, 400, "InvalidInput", "does not match the ip_version '6'"),  # an IPv4 CIDR as v6
    ({"ipv6_ra_mode": "slaac"}, 400, "InvalidInput", "ipv6_ra_mode is not valid when ip_version is 4"),
    ({"ipv6_address_mode": "slaac"}, 400, "InvalidInput", "ipv6_address_mode is not valid when ip_version is 4"),
    ({"gateway_ip": "198.51.100.1"}, 400, "InvalidInput", "Gateway is not valid"),
    ({"gateway_ip": "192.0.2.0"}, 400, "InvalidInput", "Gateway is not valid"),
    ({"gateway_ip": "not-an-ip"}, 400, None, "Invalid input for gateway_ip"),
    ({"gateway_ip": "192.0.2.5", "allocation_pools": [{"start": "192.0.2.2", "end": "192.0.2.9"}]},
     409, "GatewayConflictWithAllocationPools", "Gateway ip 192.0.2.5 conflicts with allocation pool"),
    ({"allocation_pools": [{"start": "192.0.2.2", "end": "198.51.100.9"}]}, 400, "OutOfBoundsAllocationPool", None),
    ({"allocation_pools": [{"start": "192.0.2.0", "end": "192.0.2.9"}]}, 400, "OutOfBoundsAllocationPool", None),
    ({"allocation_pools": [{"start": "192.0.2.9", "end": "192.0.2.2"}]}, 400, "InvalidAllocationPool", None),
    ({"allocation_pools": [{"start": "192.0.2.2", "end": "192.0.2.20"}, {"start": "192.0.2.10", "end": "192.0.2.30"}]},
     409, "OverlappingAllocationPools", None),
    ({"allocation_pools": [{"start": "192.0.2.2"}]}, 400, None, None),
    ({"allocation_pools": "192.0.2.2-192.0.2.9"}, 400, None, None),
    ({"dns_nameservers": ["198.51.100.53", "198.51.100.53"]}, 400, None, "Duplicate nameserver"),
    ({"dns_nameservers": ["bogus"]}, 400, None, None),
    ({"dns_nameservers": [f"198.51.100.{i}" for i in range(1, 8)]}, 400, None, "exceeds the limit"),
    ({"host_routes": [{"destination": "bogus", "nexthop": "192.0.2.5"}]}, 400, None, None),
    ({"host_routes": [{"destination": "203.0.113.0/24"}]}, 400, None, None),
    ({"enable_dhcp": "maybe"}, 400, None, "enable_dhcp"),
    ({"name": 7}, 400, None, "Invalid input for name"),
    ({"subnetpool_id": str(uuid.uuid4())}, 404, "SubnetPoolNotFound", None),
    ({"subnetpool_id": "not-a-uuid"}, 400, None, "subnetpool_id"),
    ({"use_default_subnetpool": True}, 400, "BadRequest", "No default subnetpool found for IPv4"),
    ({"frobnicate": 1}, 400, None, "Unrecognized attribute(s) 'frobnicate'"),
    ({"network_id": "not-a-uuid"}, 400, None, "network_id"),
    ({"network_id": str(uuid.uuid4())}, 404, "NetworkNotFound", None),
]


@pytest.mark.parametrize("attrs,status,type_,message", BAD_CREATES)
def test_invalid_creates(shared_server, attrs: dict[str, Any], status: int, type_: str | None, message: str | None) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    body = {"network_id": net["id"], "ip_version": 4, "cidr": "192.0.2.0/24", **attrs}
    assert_error(alice.post("/subnets", json={"subnet": body}), status, type_, message)
    after = alice.get(f"/networks/{net['id']}").json()["network"]
    assert after["subnets"] == [] and after["revision_number"] == net["revision_number"]


def test_missing_required_attributes(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    assert_error(alice.post("/subnets", json={"subnet": {"ip_version": 4, "cidr": "192.0.2.0/24"}}), 400,
                 message="'network_id' not specified")
    assert_error(alice.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "192.0.2.0/24"}}), 400,
                 message="'ip_version' not specified")
    assert_error(alice.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4}}), 400,
                 message="a subnetpool must be specified in the absence of a cidr")


@pytest.mark.parametrize("raw", [b"{", b"[]", b'{"subnet": 3}', b'{"subnet": {}, "x": 1}', b"", b'{"subnets": []}'])
def test_malformed_bodies(shared_server, raw: bytes) -> None:
    alice = shared_server.api("alice")
    r = alice.post("/subnets", content=raw, headers={"Content-Type": "application/json"})
    assert_error(r, 400)


def test_overlap_in_same_network_is_400(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    subnet(alice, net, "192.0.2.0/24")
    for cidr in ("192.0.2.128/25", "192.0.0.0/16", "192.0.2.0/24"):
        r = alice.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4, "cidr": cidr}})
        assert_error(r, 400, "InvalidInput",
                     f"Invalid input for operation: Requested subnet with cidr: {cidr} for network: "
                     f"{net['id']} overlaps with another subnet.")
    subnet(alice, net, "192.0.3.0/24")  # adjacent is fine
    assert len(alice.get(f"/networks/{net['id']}").json()["network"]["subnets"]) == 2


def test_bulk_create_and_overlap_inside_bulk_is_all_or_nothing(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    r = alice.post("/subnets", json={"subnets": [
        {"network_id": net["id"], "ip_version": 4, "cidr": "203.0.113.0/26"},
        {"network_id": net["id"], "ip_version": 4, "cidr": "203.0.113.64/26"}]})
    assert r.status_code == 201, r.text
    made = r.json()["subnets"]
    assert [s["cidr"] for s in made] == ["203.0.113.0/26", "203.0.113.64/26"]
    shown = alice.get(f"/networks/{net['id']}").json()["network"]
    assert shown["subnets"] == [s["id"] for s in made]
    net2 = network(alice)
    r = alice.post("/subnets", json={"subnets": [
        {"network_id": net2["id"], "ip_version": 4, "cidr": "203.0.113.0/26"},
        {"network_id": net2["id"], "ip_version": 4, "cidr": "203.0.113.0/27"}]})
    assert_error(r, 400, "InvalidInput", "overlaps with another subnet")
    assert alice.get("/subnets", params={"network_id": net2["id"]}).json()["subnets"] == []


def test_concurrent_overlapping_creates_one_wins(server) -> None:
    alice = server.api("alice")
    net = network(alice)

    def make(i: int) -> int:
        with server.api("alice") as c:
            body = {"network_id": net["id"], "ip_version": 4, "cidr": "100.64.0.0/24", "name": f"s{i}"}
            return c.post("/subnets", json={"subnet": body}).status_code

    with ThreadPoolExecutor(10) as ex:
        codes = list(ex.map(make, range(20)))
    assert sorted(codes) == [201] + [400] * 19
    assert len(alice.get(f"/networks/{net['id']}").json()["network"]["subnets"]) == 1


# --- update --------------------------------------------------------------------------------------


def test_update_attributes_and_revision(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    s = subnet(alice, net, "192.0.2.0/24")
    r = alice.put(f"/subnets/{s['id']}", json={"subnet": {
        "name": "renamed", "dns_nameservers": ["198.51.100.53"], "enable_dhcp": False,
        "host_routes": [{"destination": "203.0.113.0/24", "nexthop": "192.0.2.9"}],
        "gateway_ip": "192.0.2.254", "allocation_pools": [{"start": "192.0.2.100", "end": "192.0.2.199"}]}})
    assert r.status_code == 200, r.text
    u = r.json()["subnet"]
    assert u["name"] == "renamed" and u["enable_dhcp"] is False and u["gateway_ip"] == "192.0.2.254"
    assert u["allocation_pools"] == [{"start": "192.0.2.100", "end": "192.0.2.199"}]
    assert u["dns_nameservers"] == ["198.51.100.53"]
    assert u["revision_number"] == s["revision_number"] + 1 and u["cidr"] == s["cidr"]
    assert port(alice, net)["fixed_ips"][0]["ip_address"] == "192.0.2.100"
    r = alice.put(f"/subnets/{s['id']}", json={"subnet": {"gateway_ip": None, "dns_nameservers": None,
                                                          "host_routes": None}})
    assert r.status_code == 200, r.text
    assert r.json()["subnet"]["gateway_ip"] is None
    assert r.json()["subnet"]["dns_nameservers"] == [] and r.json()["subnet"]["host_routes"] == []


def test_update_errors(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    s = subnet(alice, net, "192.0.2.0/24")
    url = f"/subnets/{s['id']}"
    assert_error(alice.put(url, json={"subnet": {"cidr": "192.0.3.0/24"}}), 400, message="read-only attribute cidr")
    assert_error(alice.put(url, json={"subnet": {"network_id": net["id"]}}), 400, message="read-only")
    assert_error(alice.put(url, json={"subnet": {"gateway_ip": "192.0.2.50"}}), 409, "GatewayConflictWithAllocationPools")
    assert_error(alice.put(url, json={"subnet": {"allocation_pools": [{"start": "192.0.2.1", "end": "192.0.2.9"}]}}),
                 409, "GatewayConflictWithAllocationPools")
    assert_error(alice.put(url, json={"subnet": {"gateway_ip": "198.51.100.1"}}), 400, "InvalidInput")
    assert_error(alice.put(url, json={"subnet": {"bogus": 1}}), 400, message="Unrecognized attribute")
    assert_error(alice.put(url, json={"subnet": {}}), 400)
    assert_error(alice.put(url, content=b"{nope", headers={"Content-Type": "application/json"}), 400)
    # a port holding the wanted gateway address: 409
    p = port(alice, net, fixed_ips=[{"ip_address": "192.0.2.254"}])
    assert p["fixed_ips"][0]["ip_address"] == "192.0.2.254"
    assert_error(alice.put(url, json={"subnet": {"gateway_ip": "192.0.2.254",
                                                 "allocation_pools": [{"start": "192.0.2.2", "end": "192.0.2.200"}]}}),
                 409, "IpAddressInUse")
    after = alice.get(url).json()["subnet"]
    assert after == s  # nothing changed by the failures
    r = alice.put(url, json={"subnet": {"name": "x"}}, headers={"If-Match": "revision_number=99"})
    assert_error(r, 412)
    r = alice.put(url, json={"subnet": {"name": "x"}}, headers={"If-Match": f"revision_number={s['revision_number']}"})
    assert r.status_code == 200, r.text


# --- delete --------------------------------------------------------------------------------------


def test_delete_in_use_then_free(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    s = subnet(alice, net, "192.0.2.0/24")
    p = port(alice, net)
    assert_error(alice.delete(f"/subnets/{s['id']}"), 409, "SubnetInUse",
                 f"Unable to complete operation on subnet {s['id']}: One or more ports have an IP allocation "
                 "from this subnet.")
    assert_error(alice.delete(f"/networks/{net['id']}"), 409, "NetworkInUse",
                 "There are one or more ports still in use on the network")
    assert alice.delete(f"/ports/{p['id']}").status_code == 204
    before = alice.get(f"/networks/{net['id']}").json()["network"]
    assert alice.delete(f"/subnets/{s['id']}").status_code == 204
    assert_error(alice.get(f"/subnets/{s['id']}"), 404, "SubnetNotFound", f"Subnet {s['id']} could not be found.")
    after = alice.get(f"/networks/{net['id']}").json()["network"]
    assert after["subnets"] == [] and after["revision_number"] == before["revision_number"] + 1
    assert_error(alice.delete(f"/subnets/{s['id']}"), 404, "SubnetNotFound")


def test_port_without_ip_does_not_block_subnet_delete(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    s = subnet(alice, net, "192.0.2.0/24")
    port(alice, net, fixed_ips=[])
    assert alice.delete(f"/subnets/{s['id']}").status_code == 204


def test_deleting_network_deletes_its_subnets(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    s = subnet(alice, net, "192.0.2.0/24")
    assert alice.delete(f"/networks/{net['id']}").status_code == 204
    assert_error(alice.get(f"/subnets/{s['id']}"), 404, "SubnetNotFound")


# --- query ---------------------------------------------------------------------------------------


def test_filters_and_fields(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    s1 = subnet(alice, net, "100.64.10.0/24", name="f1")
    s2 = subnet(alice, net, "100.64.11.0/24", name="f2", enable_dhcp=False)
    got = alice.get("/subnets", params={"network_id": net["id"]}).json()["subnets"]
    assert sorted(s["id"] for s in got) == sorted([s1["id"], s2["id"]])
    got = alice.get("/subnets", params={"network_id": net["id"], "enable_dhcp": "False"}).json()["subnets"]
    assert [s["id"] for s in got] == [s2["id"]]
    got = alice.get("/subnets", params={"network_id": net["id"], "cidr": "100.64.10.0/24"}).json()["subnets"]
    assert [s["id"] for s in got] == [s1["id"]]
    got = alice.get("/subnets", params=[("network_id", net["id"]), ("name", "f1"), ("name", "f2")]).json()["subnets"]
    assert len(got) == 2
    got = alice.get("/subnets", params={"network_id": net["id"], "ip_version": "4", "shared": "False",
                                        "fields": ["id", "cidr"], "sort_key": "cidr", "sort_dir": "desc"}).json()
    assert got["subnets"] == [{"id": s2["id"], "cidr": "100.64.11.0/24"}, {"id": s1["id"], "cidr": "100.64.10.0/24"}]
    assert alice.get("/subnets", params={"network_id": net["id"], "shared": "True"}).json()["subnets"] == []
    assert alice.get(f"/subnets/{s1['id']}", params={"fields": "gateway_ip"}).json() == \
        {"subnet": {"gateway_ip": "100.64.10.1"}}


# --- visibility and policy -----------------------------------------------------------------------


def test_isolation_matrix(shared_server) -> None:
    alice, reader, bob, admin = (shared_server.api(u) for u in ("alice", "alice_reader", "bob", "admin"))
    net = network(alice)
    s = subnet(alice, net, "192.0.2.0/24")
    url = f"/subnets/{s['id']}"
    # reader: sees, cannot change
    assert reader.get(url).status_code == 200
    assert s["id"] in [x["id"] for x in reader.get("/subnets").json()["subnets"]]
    assert_error(reader.put(url, json={"subnet": {"name": "r"}}), 403, "PolicyNotAuthorized")
    assert_error(reader.delete(url), 403, "PolicyNotAuthorized")
    assert_error(reader.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                           "cidr": "198.51.100.0/24"}}), 403)
    # other project: nothing exists
    assert_error(bob.get(url), 404, "SubnetNotFound")
    assert s["id"] not in [x["id"] for x in bob.get("/subnets").json()["subnets"]]
    assert_error(bob.put(url, json={"subnet": {"name": "b"}}), 404, "SubnetNotFound")
    assert_error(bob.delete(url), 404, "SubnetNotFound")
    assert_error(bob.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                        "cidr": "198.51.100.0/24"}}), 404, "NetworkNotFound")
    # admin: everything, and may create for another project
    assert admin.get(url).status_code == 200
    assert admin.put(url, json={"subnet": {"name": "by-admin"}}).json()["subnet"]["name"] == "by-admin"
    r = admin.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                "cidr": "198.51.100.0/24", "project_id": TENANT_A}})
    assert r.status_code == 201 and r.json()["subnet"]["project_id"] == TENANT_A
    # member naming another project: 400 (neutron-lib's populate_project_id)
    assert_error(alice.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                          "cidr": "203.0.113.0/24", "project_id": "other"}}), 400,
                 "HTTPBadRequest")
    assert alice.delete(url).status_code == 204


def test_shared_network_subnets_visible_not_writable(shared_server) -> None:
    admin, alice = shared_server.api("admin"), shared_server.api("alice")
    net = network(admin, shared=True)
    s = subnet(admin, net, "100.64.20.0/24")
    assert alice.get(f"/subnets/{s['id']}").status_code == 200
    got = alice.get("/subnets", params={"shared": "True"}).json()["subnets"]
    assert s["id"] in [x["id"] for x in got]
    assert_error(alice.put(f"/subnets/{s['id']}", json={"subnet": {"name": "x"}}), 403)
    assert_error(alice.delete(f"/subnets/{s['id']}"), 403)
    assert_error(alice.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                          "cidr": "100.64.21.0/24"}}), 403, "PolicyNotAuthorized")


def test_external_network_subnets_hidden_from_other_projects(shared_server) -> None:
    admin, alice = shared_server.api("admin"), shared_server.api("alice")
    net = network(admin, **{"router:external": True})
    s = subnet(admin, net, "203.0.113.0/24")
    assert alice.get(f"/networks/{net['id']}").status_code == 200  # the network is visible
    assert_error(alice.get(f"/subnets/{s['id']}"), 404, "SubnetNotFound")
    assert s["id"] not in [x["id"] for x in alice.get("/subnets").json()["subnets"]]
    assert s["id"] in [x["id"] for x in admin.get("/subnets").json()["subnets"]]


# --- gateway held by a router (Neutron's GatewayIpInUse) -----------------------------------------


def test_gateway_held_by_router_interface_cannot_move(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    s = subnet(alice, net, "192.0.2.0/24")
    rtr = alice.post("/routers", json={"router": {"name": "gw-holder"}}).json()["router"]
    r = alice.put(f"/routers/{rtr['id']}/add_router_interface", json={"subnet_id": s["id"]})
    assert r.status_code == 200, r.text
    intf = r.json()["port_id"]
    url = f"/subnets/{s['id']}"
    before = alice.get(url).json()["subnet"]
    for gw in ("192.0.2.254", None):
        err = assert_error(alice.put(url, json={"subnet": {"gateway_ip": gw}}), 409, "GatewayIpInUse")
        assert err["message"] == f"Current gateway ip 192.0.2.1 already in use by port {intf}. Unable to update."
    # also with other attributes in the same request: nothing of it is applied
    assert_error(alice.put(url, json={"subnet": {"gateway_ip": None, "name": "renamed"}}), 409, "GatewayIpInUse")
    assert alice.get(url).json()["subnet"] == before
    assert alice.get(f"/ports/{intf}").json()["port"]["fixed_ips"] == [{"subnet_id": s["id"], "ip_address": "192.0.2.1"}]
    # the same gateway again, or other attributes, are fine
    r = alice.put(url, json={"subnet": {"gateway_ip": "192.0.2.1", "name": "kept"}})
    assert r.status_code == 200 and r.json()["subnet"]["gateway_ip"] == "192.0.2.1", r.text
    # once the interface is gone the gateway may move
    r = alice.put(f"/routers/{rtr['id']}/remove_router_interface", json={"subnet_id": s["id"]})
    assert r.status_code == 200, r.text
    r = alice.put(url, json={"subnet": {"gateway_ip": None}})
    assert r.status_code == 200 and r.json()["subnet"]["gateway_ip"] is None, r.text
