"""Routers over real HTTP: shape and defaults, external gateway (ext-gw-mode), interfaces by
subnet and by port, extra routes, deletion rules, the policy matrix, and two projects with the
same CIDR behind their own routers on one external network."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.conftest import ServerHandle, start_server
from vxnet.store.sqlite_store import SqliteStore

_cidr = itertools.count(1)


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def err(r: httpx.Response, status: int, type_: str, message: str | None = None) -> str:
    assert r.status_code == status, r.text
    body = r.json()["NeutronError"]
    assert body["type"] == type_, body
    if message is not None:
        assert body["message"] == message, body["message"]
    return str(body["message"])


@pytest.fixture(scope="module")
def ext(shared_server) -> dict[str, Any]:
    """An admin-owned external network with one subnet (203.0.113.0/24)."""
    admin = shared_server.api("admin")
    net = ok(admin.post("/networks", json={"network": {"name": "public", "router:external": True}}), 201)["network"]
    sub = ok(admin.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                     "cidr": "203.0.113.0/24"}}), 201)["subnet"]
    return {"net": net, "subnet": sub}


def tenant_net(c: httpx.Client, cidr: str | None = None, **subnet_extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    cidr = cidr or f"100.64.{next(_cidr)}.0/24"
    net = ok(c.post("/networks", json={"network": {"name": "n"}}), 201)["network"]
    sub = ok(c.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4, "cidr": cidr,
                                                 **subnet_extra}}), 201)["subnet"]
    return net, sub


def make_router(c: httpx.Client, **attrs: Any) -> dict[str, Any]:
    return ok(c.post("/routers", json={"router": {"name": "r", **attrs}}), 201)["router"]


def ports_of(admin: httpx.Client, **filters: str) -> list[dict[str, Any]]:
    return ok(admin.get("/ports", params=filters))["ports"]


# -- shape and defaults ------------------------------------------------------------------------

def test_create_router_defaults_and_admin_only_attributes(shared_server):
    alice = shared_server.api("alice")
    r = make_router(alice, description="d")
    assert r["status"] == "ACTIVE" and r["admin_state_up"] is True
    assert r["external_gateway_info"] is None and r["routes"] == []
    assert r["project_id"] == r["tenant_id"] and r["revision_number"] == 0
    assert r["availability_zone_hints"] == [] and r["flavor_id"] is None and r["tags"] == []
    assert "distributed" not in r and "ha" not in r  # admin-only to see (Neutron's policy)
    assert "created_at" in r and "updated_at" in r and r["description"] == "d"
    shown = ok(shared_server.api("admin").get(f"/routers/{r['id']}"))["router"]
    assert shown["distributed"] is True and shown["ha"] is False
    assert ok(alice.get(f"/routers/{r['id']}", params={"fields": ["id", "name"]}))["router"] == \
        {"id": r["id"], "name": "r"}


def test_create_rejects_bad_input(shared_server):
    alice = shared_server.api("alice")
    admin = shared_server.api("admin")
    err(alice.post("/routers", json={"router": {"routes": []}}), 400, "HTTPBadRequest",
        "Attribute 'routes' not allowed in POST")
    err(alice.post("/routers", json={"router": {"foo": 1}}), 400, "BadRequest", "Unrecognized attribute(s) 'foo'")
    err(alice.post("/routers", json={"router": {"admin_state_up": "maybe"}}), 400, "BadRequest")
    err(alice.post("/routers", json={"router": {"distributed": True}}), 403, "PolicyNotAuthorized")
    err(alice.post("/routers", json={"router": {"ha": False}}), 403, "PolicyNotAuthorized")
    err(admin.post("/routers", json={"router": {"distributed": False}}), 400, "BadRequest")
    err(admin.post("/routers", json={"router": {"ha": True}}), 400, "BadRequest")
    assert ok(admin.post("/routers", json={"router": {"distributed": True, "ha": False}}), 201)["router"]["distributed"]
    err(alice.post("/routers", json={"router": {"availability_zone_hints": ["mars"]}}), 404,
        "AvailabilityZoneNotFound", "AvailabilityZone mars could not be found.")
    err(alice.post("/routers", json={"router": {"external_gateway_info": {"enable_snat": True}}}), 400, "BadRequest")
    err(alice.post("/routers", data=b"{nope"), 400, "MalformedRequestBody")


def test_bulk_create_and_list_filters(shared_server):
    alice = shared_server.api("alice")
    body = {"routers": [{"router": {"name": "bulk-a"}}, {"router": {"name": "bulk-b"}}]}
    made = ok(alice.post("/routers", json=body), 201)["routers"]
    assert [r["name"] for r in made] == ["bulk-a", "bulk-b"]
    got = ok(alice.get("/routers", params={"name": "bulk-b"}))["routers"]
    assert [r["id"] for r in got] == [made[1]["id"]]


def test_update_and_if_match(shared_server):
    alice = shared_server.api("alice")
    r = make_router(alice)
    up = ok(alice.put(f"/routers/{r['id']}", json={"router": {"name": "new", "admin_state_up": False}}))["router"]
    assert up["name"] == "new" and up["admin_state_up"] is False and up["revision_number"] == 1
    err(alice.put(f"/routers/{r['id']}", json={"router": {"name": "x"}}, headers={"If-Match": "revision_number=0"}),
        412, "PreconditionFailed")
    ok(alice.put(f"/routers/{r['id']}", json={"router": {"name": "x"}}, headers={"If-Match": "revision_number=1"}))
    err(alice.put(f"/routers/{r['id']}", json={"router": {"status": "DOWN"}}), 400, "HTTPBadRequest",
        "Cannot update read-only attribute status")
    err(alice.put("/routers/5e0d3a5e-0000-4000-8000-000000000000", json={"router": {"name": "x"}}), 404,
        "RouterNotFound", "Router 5e0d3a5e-0000-4000-8000-000000000000 could not be found")


# -- external gateway --------------------------------------------------------------------------

def test_gateway_set_by_member_with_default_snat(shared_server, ext):
    alice = shared_server.api("alice")
    admin = shared_server.api("admin")
    r = make_router(alice, external_gateway_info={"network_id": ext["net"]["id"]})
    gw = r["external_gateway_info"]
    assert gw["network_id"] == ext["net"]["id"] and gw["enable_snat"] is True
    [fixed] = gw["external_fixed_ips"]
    assert fixed["subnet_id"] == ext["subnet"]["id"] and fixed["ip_address"].startswith("203.0.113.")
    [port] = ports_of(admin, device_id=r["id"])
    assert port["device_owner"] == "network:router_gateway" and port["project_id"] == ""
    assert port["network_id"] == ext["net"]["id"] and port["fixed_ips"] == [fixed]
    assert ports_of(alice, device_id=r["id"]) == []  # the gateway port is hidden from the tenant


def test_gateway_admin_only_sub_attributes(shared_server, ext):
    alice = shared_server.api("alice")
    admin = shared_server.api("admin")
    net_id = ext["net"]["id"]
    err(alice.post("/routers", json={"router": {"external_gateway_info": {"network_id": net_id, "enable_snat": False}}}),
        403, "PolicyNotAuthorized")
    r = make_router(alice)
    err(alice.put(f"/routers/{r['id']}", json={"router": {"external_gateway_info": {
        "network_id": net_id, "external_fixed_ips": [{"ip_address": "203.0.113.200"}]}}}), 403, "PolicyNotAuthorized")
    assert ports_of(admin, device_id=r["id"]) == []
    up = ok(admin.put(f"/routers/{r['id']}", json={"router": {"external_gateway_info": {
        "network_id": net_id, "enable_snat": False, "external_fixed_ips": [{"ip_address": "203.0.113.200"}]}}}))
    gw = up["router"]["external_gateway_info"]
    assert gw["enable_snat"] is False
    assert gw["external_fixed_ips"] == [{"subnet_id": ext["subnet"]["id"], "ip_address": "203.0.113.200"}]
    # the same network again without enable_snat: ext-gw-mode resets it to the default (true)
    gw = ok(alice.put(f"/routers/{r['id']}", json={"router": {"external_gateway_info": {"network_id": net_id}}}))[
        "router"]["external_gateway_info"]
    assert gw["enable_snat"] is True and gw["external_fixed_ips"][0]["ip_address"] == "203.0.113.200"
    # change the address in place: same port, new IP, the old one released
    [port_before] = ports_of(admin, device_id=r["id"])
    gw = ok(admin.put(f"/routers/{r['id']}", json={"router": {"external_gateway_info": {
        "network_id": net_id, "external_fixed_ips": [{"ip_address": "203.0.113.201"}]}}}))["router"][
        "external_gateway_info"]
    assert gw["external_fixed_ips"][0]["ip_address"] == "203.0.113.201"
    [port_after] = ports_of(admin, device_id=r["id"])
    assert port_after["id"] == port_before["id"]
    other = make_router(admin, external_gateway_info={"network_id": net_id,
                                                      "external_fixed_ips": [{"ip_address": "203.0.113.200"}]})
    assert other["external_gateway_info"]["external_fixed_ips"][0]["ip_address"] == "203.0.113.200"
    err(admin.post("/routers", json={"router": {"external_gateway_info": {
        "network_id": net_id, "external_fixed_ips": [{"ip_address": "203.0.113.1"}]}}}), 400, "BadRequest",
        "Bad router request: External IP 203.0.113.1 is the same as the gateway IP.")


def test_gateway_must_be_external_and_failures_leave_nothing(shared_server, ext):
    alice = shared_server.api("alice")
    admin = shared_server.api("admin")
    net, _ = tenant_net(alice)
    routers_before = len(ok(admin.get("/routers"))["routers"])
    ports_before = len(ports_of(admin))
    err(alice.post("/routers", json={"router": {"external_gateway_info": {"network_id": net["id"]}}}), 400,
        "BadRequest", f"Bad router request: Network {net['id']} is not an external network.")
    missing = "0b9c1a1e-1111-4111-8111-111111111111"
    err(alice.post("/routers", json={"router": {"external_gateway_info": {"network_id": missing}}}), 404,
        "NetworkNotFound", f"Network {missing} could not be found.")
    err(admin.post("/routers", json={"router": {"external_gateway_info": {
        "network_id": ext["net"]["id"], "external_fixed_ips": [{"ip_address": "198.51.100.7"}]}}}), 400,
        "InvalidIpForNetwork")
    assert len(ok(admin.get("/routers"))["routers"]) == routers_before
    assert len(ports_of(admin)) == ports_before


def test_gateway_clear_deletes_port_and_releases_ip(shared_server, ext):
    admin = shared_server.api("admin")
    alice = shared_server.api("alice")
    fixed = [{"ip_address": "203.0.113.210"}]
    r = make_router(admin, external_gateway_info={"network_id": ext["net"]["id"], "external_fixed_ips": fixed})
    assert len(ports_of(admin, device_id=r["id"])) == 1
    assert ok(admin.put(f"/routers/{r['id']}", json={"router": {"external_gateway_info": None}}))["router"][
        "external_gateway_info"] is None
    assert ports_of(admin, device_id=r["id"]) == []
    r2 = make_router(admin, external_gateway_info={"network_id": ext["net"]["id"], "external_fixed_ips": fixed})
    assert r2["external_gateway_info"]["external_fixed_ips"][0]["ip_address"] == "203.0.113.210"
    ok(admin.put(f"/routers/{r2['id']}", json={"router": {"external_gateway_info": {}}}))
    assert ports_of(admin, device_id=r2["id"]) == []
    # delete removes the gateway port too
    r3 = make_router(alice, external_gateway_info={"network_id": ext["net"]["id"]})
    assert len(ports_of(admin, device_id=r3["id"])) == 1
    ok(alice.delete(f"/routers/{r3['id']}"), 204)
    assert ports_of(admin, device_id=r3["id"]) == []
    err(alice.get(f"/routers/{r3['id']}"), 404, "RouterNotFound")


# -- interfaces --------------------------------------------------------------------------------

def test_add_remove_interface_by_subnet(shared_server):
    alice = shared_server.api("alice")
    net, sub = tenant_net(alice)
    r = make_router(alice)
    info = ok(alice.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": sub["id"]}))
    assert set(info) == {"id", "subnet_id", "subnet_ids", "port_id", "network_id", "project_id", "tenant_id"}
    assert info["id"] == r["id"] and info["subnet_id"] == sub["id"] and info["subnet_ids"] == [sub["id"]]
    assert info["network_id"] == net["id"] and info["project_id"] == r["project_id"] == info["tenant_id"]
    port = ok(alice.get(f"/ports/{info['port_id']}"))["port"]
    assert port["device_owner"] == "network:router_interface" and port["device_id"] == r["id"]
    assert port["fixed_ips"] == [{"subnet_id": sub["id"], "ip_address": sub["gateway_ip"]}]
    assert port["status"] == "ACTIVE"  # tempest waits for it (distributed: no host reports it)
    assert [p["id"] for p in ports_of(alice, device_id=r["id"])] == [info["port_id"]]  # CLI's interfaces_info
    assert ok(alice.get(f"/routers/{r['id']}"))["router"]["revision_number"] == 1
    err(alice.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": sub["id"]}), 400, "BadRequest",
        f"Bad router request: Router already has a port on subnet {sub['id']}.")
    out = ok(alice.put(f"/routers/{r['id']}/remove_router_interface", json={"subnet_id": sub["id"]}))
    assert out["port_id"] == info["port_id"] and out["subnet_ids"] == [sub["id"]]
    err(alice.get(f"/ports/{info['port_id']}"), 404, "PortNotFound")
    err(alice.put(f"/routers/{r['id']}/remove_router_interface", json={"subnet_id": sub["id"]}), 404,
        "RouterInterfaceNotFoundForSubnet", f"Router {r['id']} has no interface on subnet {sub['id']}")
    # the gateway IP is free again: a second router can take it
    r2 = make_router(alice)
    ok(alice.put(f"/routers/{r2['id']}/add_router_interface", json={"subnet_id": sub["id"]}))


def test_interface_request_errors(shared_server):
    alice = shared_server.api("alice")
    bob = shared_server.api("bob")
    r = make_router(alice)
    url = f"/routers/{r['id']}/add_router_interface"
    err(alice.put(url, json={}), 400, "BadRequest", "Bad router request: Either subnet_id or port_id must be specified.")
    err(alice.put(url, json={"subnet_id": "nope"}), 400, "BadRequest", "Bad router request: 'nope' is not a valid UUID.")
    _, sub = tenant_net(alice)
    err(alice.put(url, json={"subnet_id": sub["id"], "port_id": sub["id"]}), 400, "BadRequest",
        "Bad router request: Cannot specify both subnet-id and port-id.")
    _, nogw = tenant_net(alice, gateway_ip=None)
    err(alice.put(url, json={"subnet_id": nogw["id"]}), 400, "BadRequest",
        "Bad router request: Subnet for router interface must have a gateway IP.")
    _, bobs = tenant_net(bob)
    err(alice.put(url, json={"subnet_id": bobs["id"]}), 404, "SubnetNotFound")
    missing = "7d1f0c2a-2222-4222-8222-222222222222"
    err(alice.put(url, json={"port_id": missing}), 404, "PortNotFound")
    err(alice.put(f"/routers/{missing}/add_router_interface", json={"subnet_id": sub["id"]}), 404, "RouterNotFound")
    err(alice.put(f"/routers/{r['id']}/remove_router_interface", json={"port_id": missing}), 404,
        "RouterInterfaceNotFound", f"Router {r['id']} does not have an interface with id {missing}")
    assert ports_of(alice, device_id=r["id"]) == []


def test_overlapping_subnets_on_one_router_is_400(shared_server):
    alice = shared_server.api("alice")
    admin = shared_server.api("admin")
    _, s1 = tenant_net(alice, "100.64.200.0/24")
    _, s2 = tenant_net(alice, "100.64.200.0/25")
    r = make_router(alice)
    ok(alice.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": s1["id"]}))
    ports_before = len(ports_of(admin))
    err(alice.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": s2["id"]}), 400, "BadRequest",
        f"Bad router request: Cidr 100.64.200.0/25 of subnet {s2['id']} overlaps with cidr 100.64.200.0/24 "
        f"of subnet {s1['id']}.")
    assert len(ports_of(admin)) == ports_before  # nothing half-made
    # the same CIDR on another router is fine
    r2 = make_router(alice)
    ok(alice.put(f"/routers/{r2['id']}/add_router_interface", json={"subnet_id": s2["id"]}))


def test_add_remove_interface_by_port(shared_server):
    alice = shared_server.api("alice")
    net, sub = tenant_net(alice)
    r = make_router(alice)
    port = ok(alice.post("/ports", json={"port": {"network_id": net["id"],
                                                  "fixed_ips": [{"subnet_id": sub["id"]}]}}), 201)["port"]
    info = ok(alice.put(f"/routers/{r['id']}/add_router_interface", json={"port_id": port["id"]}))
    assert info["port_id"] == port["id"] and info["subnet_ids"] == [sub["id"]]
    got = ok(alice.get(f"/ports/{port['id']}"))["port"]
    assert got["device_owner"] == "network:router_interface" and got["device_id"] == r["id"]
    assert got["status"] == "ACTIVE" and got["revision_number"] == port["revision_number"] + 1
    r2 = make_router(alice)
    err(alice.put(f"/routers/{r2['id']}/add_router_interface", json={"port_id": port["id"]}), 409, "PortInUse",
        f"Unable to complete operation on port {port['id']} for network {net['id']}. "
        f"Port already has an attached device {r['id']}.")
    # a subnet-mismatch removal is refused; removal by port deletes the port
    _, other = tenant_net(alice)
    err(alice.put(f"/routers/{r['id']}/remove_router_interface", json={"port_id": port["id"], "subnet_id": other["id"]}),
        400, "SubnetMismatchForPort")
    ok(alice.put(f"/routers/{r['id']}/remove_router_interface", json={"port_id": port["id"]}))
    err(alice.get(f"/ports/{port['id']}"), 404, "PortNotFound")


def test_add_interface_by_port_needs_one_fixed_ip(shared_server):
    alice = shared_server.api("alice")
    net, sub = tenant_net(alice)
    r = make_router(alice)
    two = ok(alice.post("/ports", json={"port": {"network_id": net["id"], "fixed_ips": [
        {"subnet_id": sub["id"]}, {"subnet_id": sub["id"]}]}}), 201)["port"]
    err(alice.put(f"/routers/{r['id']}/add_router_interface", json={"port_id": two["id"]}), 400, "BadRequest",
        "Bad router request: Cannot have multiple IPv4 subnets on router port.")
    none = ok(alice.post("/ports", json={"port": {"network_id": net["id"], "fixed_ips": []}}), 201)["port"]
    err(alice.put(f"/routers/{r['id']}/add_router_interface", json={"port_id": none["id"]}), 400, "BadRequest",
        "Bad router request: Router port must have at least one fixed IP.")
    for p in (two, none):
        assert ok(alice.get(f"/ports/{p['id']}"))["port"]["device_id"] == ""  # untouched


def test_delete_router_with_interfaces_is_409(shared_server):
    alice = shared_server.api("alice")
    _, sub = tenant_net(alice)
    r = make_router(alice)
    info = ok(alice.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": sub["id"]}))
    err(alice.delete(f"/routers/{r['id']}"), 409, "RouterInUse",
        f"Router {r['id']} has ports still attached: {info['port_id']}")
    ok(alice.put(f"/routers/{r['id']}/remove_router_interface", json={"port_id": info["port_id"]}))
    ok(alice.delete(f"/routers/{r['id']}"), 204)


# -- extra routes ------------------------------------------------------------------------------

def test_extra_routes(shared_server):
    alice = shared_server.api("alice")
    _, sub = tenant_net(alice, "100.64.210.0/24")
    r = make_router(alice)
    url = f"/routers/{r['id']}"
    route = {"destination": "198.51.100.0/24", "nexthop": "100.64.210.5"}
    msg = err(alice.put(url, json={"router": {"routes": [route]}}), 400, "InvalidRoutes")
    assert msg == f"Invalid format for routes: [{route}], the nexthop is not connected with router"
    ok(alice.put(f"{url}/add_router_interface", json={"subnet_id": sub["id"]}))
    got = ok(alice.put(url, json={"router": {"routes": [route]}}))["router"]
    assert got["routes"] == [route]
    err(alice.put(url, json={"router": {"routes": [{"destination": "198.51.100.0/24", "nexthop": "100.64.210.1"}]}}),
        400, "InvalidRoutes")  # the router's own address
    err(alice.put(url, json={"router": {"routes": [route, route]}}), 400, "BadRequest")
    err(alice.put(url, json={"router": {"routes": [{"destination": "nope", "nexthop": "100.64.210.5"}]}}), 400,
        "BadRequest")
    err(alice.put(f"{url}/remove_router_interface", json={"subnet_id": sub["id"]}), 409,
        "RouterInterfaceInUseByRoute",
        f"Router interface for subnet {sub['id']} on router {r['id']} cannot be deleted, as it is required by one "
        "or more routes.")
    # extraroute-atomic
    extra = {"destination": "192.0.2.0/24", "nexthop": "100.64.210.6"}
    got = ok(alice.put(f"{url}/add_extraroutes", json={"router": {"routes": [extra, route]}}))["router"]
    assert got["routes"] == [route, extra]
    got = ok(alice.put(f"{url}/remove_extraroutes", json={"router": {"routes": [route]}}))["router"]
    assert got["routes"] == [extra]
    ok(alice.put(url, json={"router": {"routes": None}}))
    ok(alice.put(f"{url}/remove_router_interface", json={"subnet_id": sub["id"]}))
    too_many = [{"destination": f"192.0.2.{i}/32", "nexthop": "100.64.210.5"} for i in range(31)]
    ok(alice.put(f"{url}/add_router_interface", json={"subnet_id": sub["id"]}))
    err(alice.put(url, json={"router": {"routes": too_many}}), 400, "RoutesExhausted")


def test_route_via_gateway_network_and_gateway_removal(shared_server, ext):
    alice = shared_server.api("alice")
    r = make_router(alice, external_gateway_info={"network_id": ext["net"]["id"]})
    route = {"destination": "192.0.2.0/24", "nexthop": "203.0.113.250"}
    assert ok(alice.put(f"/routers/{r['id']}", json={"router": {"routes": [route]}}))["router"]["routes"] == [route]
    err(alice.put(f"/routers/{r['id']}", json={"router": {"external_gateway_info": None}}), 400, "InvalidRoutes",
        f"Invalid format for routes: [{route}], the nexthop is not connected with router")
    assert len(ports_of(shared_server.api("admin"), device_id=r["id"])) == 1  # the refused change left it alone
    up = ok(alice.put(f"/routers/{r['id']}", json={"router": {"external_gateway_info": None, "routes": []}}))
    assert up["router"]["external_gateway_info"] is None and up["router"]["routes"] == []


# -- policy matrix -----------------------------------------------------------------------------

def test_policy_matrix(shared_server, ext):
    alice = shared_server.api("alice")
    reader = shared_server.api("alice_reader")
    bob = shared_server.api("bob")
    admin = shared_server.api("admin")
    _, sub = tenant_net(alice)
    r = make_router(alice)
    rid = r["id"]
    # reader: reads, but every write is 403
    assert ok(reader.get(f"/routers/{rid}"))["router"]["id"] == rid
    assert rid in [x["id"] for x in ok(reader.get("/routers"))["routers"]]
    err(reader.post("/routers", json={"router": {}}), 403, "PolicyNotAuthorized")
    err(reader.put(f"/routers/{rid}", json={"router": {"name": "x"}}), 403, "PolicyNotAuthorized")
    err(reader.put(f"/routers/{rid}/add_router_interface", json={"subnet_id": sub["id"]}), 403, "PolicyNotAuthorized")
    err(reader.put(f"/routers/{rid}/remove_router_interface", json={"subnet_id": sub["id"]}), 403,
        "PolicyNotAuthorized")
    err(reader.delete(f"/routers/{rid}"), 403, "PolicyNotAuthorized")
    # another project: the router does not exist for it
    err(bob.get(f"/routers/{rid}"), 404, "RouterNotFound")
    assert rid not in [x["id"] for x in ok(bob.get("/routers"))["routers"]]
    err(bob.put(f"/routers/{rid}", json={"router": {"name": "x"}}), 404, "RouterNotFound")
    err(bob.put(f"/routers/{rid}/add_router_interface", json={"subnet_id": sub["id"]}), 404, "RouterNotFound")
    err(bob.delete(f"/routers/{rid}"), 404, "RouterNotFound")
    # a member may not create a router for another project; an admin may
    err(alice.post("/routers", json={"router": {"project_id": "someone-else"}}), 400, "HTTPBadRequest")
    theirs = make_router(admin, project_id=r["project_id"])
    assert theirs["project_id"] == r["project_id"]
    assert theirs["id"] in [x["id"] for x in ok(alice.get("/routers"))["routers"]]
    # admin: sees and changes everything
    ok(admin.put(f"/routers/{rid}/add_router_interface", json={"subnet_id": sub["id"]}))
    assert ok(admin.put(f"/routers/{rid}", json={"router": {"name": "by-admin"}}))["router"]["name"] == "by-admin"
    assert {rid, theirs["id"]} <= {x["id"] for x in ok(admin.get("/routers"))["routers"]}
    # the interface made by an admin belongs to the router's project
    [port] = ports_of(alice, device_id=rid)
    assert port["project_id"] == r["project_id"]


def test_cannot_attach_subnet_of_shared_network_owned_by_other_project(shared_server):
    admin = shared_server.api("admin")
    alice = shared_server.api("alice")
    net = ok(admin.post("/networks", json={"network": {"name": "shared", "shared": True}}), 201)["network"]
    sub = ok(admin.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                     "cidr": "100.64.220.0/24"}}), 201)["subnet"]
    r = make_router(alice)
    err(alice.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": sub["id"]}), 400, "BadRequest",
        f"Bad router request: Cannot add interface to router because subnet {sub['id']} is not owned by project "
        "making the request.")


def test_interface_overlapping_gateway_network_is_400(shared_server, ext):
    alice = shared_server.api("alice")
    _, sub = tenant_net(alice, "203.0.113.0/25")
    r = make_router(alice, external_gateway_info={"network_id": ext["net"]["id"]})
    err(alice.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": sub["id"]}), 400, "BadRequest",
        f"Bad router request: Cidr 203.0.113.0/25 of subnet {sub['id']} overlaps with cidr 203.0.113.0/24 "
        f"of subnet {ext['subnet']['id']}.")


# -- two projects, same CIDR -------------------------------------------------------------------

def test_two_projects_same_cidr_each_with_own_router(shared_server, ext):
    alice = shared_server.api("alice")
    bob = shared_server.api("bob")
    made = {}
    for name, c in (("alice", alice), ("bob", bob)):
        _net, sub = tenant_net(c, "100.64.230.0/24")
        r = make_router(c, external_gateway_info={"network_id": ext["net"]["id"]})
        info = ok(c.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": sub["id"]}))
        made[name] = (r, sub, info)
    (ra, sa, ia), (rb, sb, ib) = made["alice"], made["bob"]
    assert sa["cidr"] == sb["cidr"] and sa["gateway_ip"] == sb["gateway_ip"] == "100.64.230.1"
    ga = ra["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
    gb = rb["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]
    assert ga != gb
    assert [r["id"] for r in ok(alice.get("/routers", params={"id": [ra["id"], rb["id"]]}))["routers"]] == [ra["id"]]
    assert [r["id"] for r in ok(bob.get("/routers", params={"id": [ra["id"], rb["id"]]}))["routers"]] == [rb["id"]]
    pa = ok(alice.get(f"/ports/{ia['port_id']}"))["port"]
    pb = ok(bob.get(f"/ports/{ib['port_id']}"))["port"]
    assert pa["fixed_ips"][0]["ip_address"] == pb["fixed_ips"][0]["ip_address"] == "100.64.230.1"
    err(bob.get(f"/ports/{ia['port_id']}"), 404, "PortNotFound")


# -- concurrency: several API servers over one store -------------------------------------------

@pytest.fixture
def servers(tmp_path) -> Iterator[list[ServerHandle]]:
    """Four API servers (each its own event loop thread) over one store, as several vxnet servers
    over one etcd would be: requests on different servers really run their transactions at once."""
    store = SqliteStore(os.path.join(tmp_path, "vxnet.db"))
    handles = [start_server("", store=store) for _ in range(4)]
    yield handles
    for h in handles:
        h.stop(close_store=False)
    store.close()


def test_concurrent_overlapping_interfaces_exactly_one_wins(servers):
    """Eight overlapping subnets added to one router at once through four servers: one 200,
    seven 400 overlaps, and the router ends up with exactly one interface."""
    alice = servers[0].api("alice")
    subs = [tenant_net(alice, "100.64.201.0/24")[1] for _ in range(8)]
    r = make_router(alice)
    clients = [servers[i % 4].api("alice") for i in range(8)]
    for c in clients[:4]:  # FastAPI builds a route's state on first use; not thread-safe across apps
        err(c.put(f"/routers/{r['id']}/add_router_interface", json={}), 400, "BadRequest")
    barrier = threading.Barrier(8)

    def add(i: int) -> int:
        barrier.wait()
        return clients[i].put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": subs[i]["id"]}).status_code

    for _ in range(3):
        with ThreadPoolExecutor(8) as pool:
            codes = sorted(pool.map(add, range(8)))
        assert codes == [200] + [400] * 7
        [port] = ports_of(alice, device_id=r["id"])
        ok(alice.put(f"/routers/{r['id']}/remove_router_interface", json={"port_id": port["id"]}))
