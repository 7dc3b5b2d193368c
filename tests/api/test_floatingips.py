"""Floating IPs over real HTTP: shape, the hidden network:floatingip port, association rules
(router lookup, one floating IP per fixed IP, ownership), disassociation, what association
blocks on the router, release on delete, the policy matrix, and two projects with the same
CIDR behind their own routers sharing one external network."""

from __future__ import annotations

import itertools
import os
import threading
import time
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
    admin = shared_server.api("admin")
    net = ok(admin.post("/networks", json={"network": {"name": "public", "router:external": True}}), 201)["network"]
    sub = ok(admin.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                     "cidr": "203.0.113.0/24"}}), 201)["subnet"]
    return {"net": net, "subnet": sub}


def backend(c: httpx.Client, ext: dict[str, Any], cidr: str | None = None, gateway: bool = True,
            interface: bool = True) -> dict[str, Any]:
    """A tenant network + subnet, a VM-like port on it, and a router (optionally with its
    gateway on `ext` and an interface on the subnet)."""
    cidr = cidr or f"100.64.{next(_cidr)}.0/24"
    net = ok(c.post("/networks", json={"network": {"name": "n"}}), 201)["network"]
    sub = ok(c.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4, "cidr": cidr}}), 201)[
        "subnet"]
    port = ok(c.post("/ports", json={"port": {"network_id": net["id"], "name": "vm",
                                              "device_owner": "compute:nova"}}), 201)["port"]
    attrs: dict[str, Any] = {"name": "r"}
    if gateway:
        attrs["external_gateway_info"] = {"network_id": ext["net"]["id"]}
    router = ok(c.post("/routers", json={"router": attrs}), 201)["router"]
    if interface:
        ok(c.put(f"/routers/{router['id']}/add_router_interface", json={"subnet_id": sub["id"]}))
    return {"net": net, "subnet": sub, "port": port, "router": router}


def fip_body(ext: dict[str, Any], **attrs: Any) -> dict[str, Any]:
    return {"floatingip": {"floating_network_id": ext["net"]["id"], **attrs}}


def fip_ports(admin: httpx.Client, fip_id: str) -> list[dict[str, Any]]:
    return ok(admin.get("/ports", params={"device_id": fip_id}))["ports"]


def test_create_unassociated_shape_and_hidden_port(shared_server, ext):
    alice = shared_server.api("alice")
    admin = shared_server.api("admin")
    fip = ok(alice.post("/floatingips", json=fip_body(ext, description="d")), 201)["floatingip"]
    assert fip["floating_network_id"] == ext["net"]["id"] and fip["floating_ip_address"].startswith("203.0.113.")
    assert fip["status"] == "DOWN"
    assert fip["port_id"] is None and fip["fixed_ip_address"] is None and fip["router_id"] is None
    assert fip["port_details"] is None and fip["port_forwardings"] == [] and fip["qos_policy_id"] is None
    assert "dns_name" not in fip and "dns_domain" not in fip and "subnet_id" not in fip
    assert fip["project_id"] == fip["tenant_id"] and fip["revision_number"] == 0 and fip["description"] == "d"
    [port] = fip_ports(admin, fip["id"])
    assert port["device_owner"] == "network:floatingip" and port["project_id"] == ""
    assert port["fixed_ips"] == [{"subnet_id": ext["subnet"]["id"], "ip_address": fip["floating_ip_address"]}]
    assert fip_ports(alice, fip["id"]) == []
    assert ok(alice.get(f"/floatingips/{fip['id']}"))["floatingip"] == fip
    listed = ok(alice.get("/floatingips", params={"floating_ip_address": fip["floating_ip_address"]}))["floatingips"]
    assert [f["id"] for f in listed] == [fip["id"]]


def test_create_errors(shared_server, ext):
    alice = shared_server.api("alice")
    admin = shared_server.api("admin")
    net = ok(alice.post("/networks", json={"network": {"name": "private"}}), 201)["network"]
    ok(alice.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                               "cidr": "100.64.250.0/24"}}), 201)
    ports_before = len(ok(admin.get("/ports"))["ports"])
    err(alice.post("/floatingips", json={"floatingip": {"floating_network_id": net["id"]}}), 400, "BadRequest",
        f"Bad floatingip request: Network {net['id']} is not a valid external network.")
    missing = "3c0f0e0e-3333-4333-8333-333333333333"
    err(alice.post("/floatingips", json={"floatingip": {"floating_network_id": missing}}), 404, "NetworkNotFound")
    err(alice.post("/floatingips", json={"floatingip": {}}), 400, "BadRequest",
        "Failed to parse request. Required attribute 'floating_network_id' not specified")
    err(alice.post("/floatingips", json=fip_body(ext, fixed_ip_address="100.64.250.5")), 400, "BadRequest",
        "Bad floatingip request: fixed_ip_address cannot be specified without a port_id.")
    err(alice.post("/floatingips", json=fip_body(ext, floating_ip_address="203.0.113.77")), 403, "PolicyNotAuthorized")
    err(alice.post("/floatingips", json=fip_body(ext, port_id=missing)), 404, "PortNotFound")
    err(alice.post("/floatingips", json=fip_body(ext, status="ACTIVE")), 400, "HTTPBadRequest")
    err(alice.post("/floatingips", json=fip_body(ext, dns_name="x")), 400, "BadRequest")
    bare = ok(admin.post("/networks", json={"network": {"name": "bare-ext", "router:external": True}}), 201)["network"]
    err(alice.post("/floatingips", json={"floatingip": {"floating_network_id": bare["id"]}}), 400, "BadRequest",
        f"Bad floatingip request: Network {bare['id']} does not contain any IPv4 subnet.")
    assert len(ok(admin.get("/ports"))["ports"]) == ports_before  # nothing left behind


def test_admin_chooses_address_and_delete_releases_it(shared_server, ext):
    admin = shared_server.api("admin")
    alice = shared_server.api("alice")
    fip = ok(admin.post("/floatingips", json=fip_body(ext, floating_ip_address="203.0.113.77")), 201)["floatingip"]
    assert fip["floating_ip_address"] == "203.0.113.77"
    r = admin.post("/floatingips", json=fip_body(ext, floating_ip_address="203.0.113.77"))
    assert r.status_code == 409, r.text
    ok(admin.delete(f"/floatingips/{fip['id']}"), 204)
    assert fip_ports(admin, fip["id"]) == []
    err(admin.get(f"/floatingips/{fip['id']}"), 404, "FloatingIPNotFound", f"Floating IP {fip['id']} could not be found")
    again = ok(admin.post("/floatingips", json=fip_body(ext, floating_ip_address="203.0.113.77",
                                                        tenant_id=fip["project_id"])), 201)["floatingip"]
    assert again["floating_ip_address"] == "203.0.113.77"
    by_subnet = ok(alice.post("/floatingips", json=fip_body(ext, subnet_id=ext["subnet"]["id"])), 201)["floatingip"]
    assert by_subnet["floating_ip_address"].startswith("203.0.113.")


def test_associate_at_create_and_port_details(shared_server, ext):
    alice = shared_server.api("alice")
    b = backend(alice, ext)
    port = b["port"]
    fip = ok(alice.post("/floatingips", json=fip_body(ext, port_id=port["id"])), 201)["floatingip"]
    assert fip["port_id"] == port["id"] and fip["router_id"] == b["router"]["id"]
    assert fip["fixed_ip_address"] == port["fixed_ips"][0]["ip_address"]
    # DOWN until the gateway host serving it reports it programmed (test_status_reported_by_gateway)
    assert fip["status"] == "DOWN"
    details = fip["port_details"]
    assert details == {"name": "vm", "network_id": b["net"]["id"], "mac_address": port["mac_address"],
                       "admin_state_up": True, "status": details["status"], "device_id": port["device_id"],
                       "device_owner": "compute:nova"}
    assert ok(alice.get(f"/floatingips/{fip['id']}"))["floatingip"]["port_details"] == details
    listed = ok(alice.get("/floatingips", params={"port_id": port["id"]}))["floatingips"]
    assert [f["id"] for f in listed] == [fip["id"]] and listed[0]["port_details"] == details


def test_no_router_to_external_network_is_404(shared_server, ext):
    alice = shared_server.api("alice")
    for kwargs in ({"interface": False}, {"gateway": False}):
        b = backend(alice, ext, **kwargs)
        port, sub = b["port"], b["subnet"]
        err(alice.post("/floatingips", json=fip_body(ext, port_id=port["id"])), 404,
            "ExternalGatewayForFloatingIPNotFound",
            f"External network {ext['net']['id']} is not reachable from subnet {sub['id']}.  Therefore, cannot "
            f"associate Port {port['id']} with a Floating IP.")
        fip = ok(alice.post("/floatingips", json=fip_body(ext)), 201)["floatingip"]
        err(alice.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": port["id"]}}), 404,
            "ExternalGatewayForFloatingIPNotFound")
        assert ok(alice.get(f"/floatingips/{fip['id']}"))["floatingip"]["port_id"] is None


def test_associate_disassociate_reassociate(shared_server, ext):
    alice = shared_server.api("alice")
    b = backend(alice, ext)
    port = b["port"]
    fip = ok(alice.post("/floatingips", json=fip_body(ext)), 201)["floatingip"]
    url = f"/floatingips/{fip['id']}"
    up = ok(alice.put(url, json={"floatingip": {"port_id": port["id"]}}))["floatingip"]
    assert up["port_id"] == port["id"] and up["status"] == "DOWN" and up["router_id"] == b["router"]["id"]
    assert up["revision_number"] == 1 and up["port_details"]["mac_address"] == port["mac_address"]
    # a description-only update keeps the association
    up = ok(alice.put(url, json={"floatingip": {"description": "web"}}))["floatingip"]
    assert up["port_id"] == port["id"] and up["description"] == "web"
    err(alice.put(url, json={"floatingip": {"fixed_ip_address": up["fixed_ip_address"]}}), 400, "BadRequest",
        "Bad floatingip request: fixed_ip_address cannot be specified without a port_id.")
    err(alice.put(url, json={"floatingip": {"floating_ip_address": "203.0.113.9"}}), 400, "HTTPBadRequest",
        "Cannot update read-only attribute floating_ip_address")
    down = ok(alice.put(url, json={"floatingip": {"port_id": None}}))["floatingip"]
    assert down["port_id"] is None and down["fixed_ip_address"] is None and down["router_id"] is None
    assert down["status"] == "DOWN" and down["port_details"] is None
    # once free, another floating IP may take the fixed IP
    other = ok(alice.post("/floatingips", json=fip_body(ext, port_id=port["id"])), 201)["floatingip"]
    assert other["port_id"] == port["id"]


def test_fixed_ip_already_associated_is_409(shared_server, ext):
    alice = shared_server.api("alice")
    b = backend(alice, ext)
    port = b["port"]
    first = ok(alice.post("/floatingips", json=fip_body(ext, port_id=port["id"])), 201)["floatingip"]
    fixed = first["fixed_ip_address"]
    second = ok(alice.post("/floatingips", json=fip_body(ext)), 201)["floatingip"]
    err(alice.put(f"/floatingips/{second['id']}", json={"floatingip": {"port_id": port["id"]}}), 409,
        "FloatingIPPortAlreadyAssociated",
        f"Cannot associate floating IP {second['floating_ip_address']} ({second['id']}) with port {port['id']} "
        f"using fixed IP {fixed}, as that fixed IP already has a floating IP on external network {ext['net']['id']}.")
    err(alice.post("/floatingips", json=fip_body(ext, port_id=port["id"])), 409, "FloatingIPPortAlreadyAssociated")
    # re-associating the same floating IP with the same port is not a conflict
    ok(alice.put(f"/floatingips/{first['id']}", json={"floatingip": {"port_id": port["id"]}}))


def test_fixed_ip_address_rules(shared_server, ext):
    alice = shared_server.api("alice")
    b = backend(alice, ext)
    sub = b["subnet"]
    two = ok(alice.post("/ports", json={"port": {"network_id": b["net"]["id"], "fixed_ips": [
        {"subnet_id": sub["id"]}, {"subnet_id": sub["id"]}]}}), 201)["port"]
    err(alice.post("/floatingips", json=fip_body(ext, port_id=two["id"])), 400, "BadRequest",
        f"Bad floatingip request: Port {two['id']} has multiple fixed IPv4 addresses.  Must provide a specific IPv4 "
        "address when assigning a floating IP.")
    err(alice.post("/floatingips", json=fip_body(ext, port_id=two["id"], fixed_ip_address="100.64.99.99")), 400,
        "BadRequest", f"Bad floatingip request: Port {two['id']} does not have fixed ip 100.64.99.99.")
    ips = [ip["ip_address"] for ip in two["fixed_ips"]]
    a = ok(alice.post("/floatingips", json=fip_body(ext, port_id=two["id"], fixed_ip_address=ips[0])), 201)["floatingip"]
    c = ok(alice.post("/floatingips", json=fip_body(ext, port_id=two["id"], fixed_ip_address=ips[1])), 201)["floatingip"]
    assert (a["fixed_ip_address"], c["fixed_ip_address"]) == (ips[0], ips[1])
    none = ok(alice.post("/ports", json={"port": {"network_id": b["net"]["id"], "fixed_ips": []}}), 201)["port"]
    err(alice.post("/floatingips", json=fip_body(ext, port_id=none["id"])), 400, "BadRequest",
        f"Bad floatingip request: Cannot add floating IP to port {none['id']} that has no fixed IPv4 addresses.")
    rport = ok(alice.get("/ports", params={"device_id": b["router"]["id"],
                                           "device_owner": "network:router_interface"}))["ports"][0]
    err(alice.post("/floatingips", json=fip_body(ext, port_id=rport["id"])), 400, "BadRequest",
        f"Bad floatingip request: Port {rport['id']} is unable to be assigned a floating IP.")


def test_association_blocks_router_changes(shared_server, ext):
    alice = shared_server.api("alice")
    b = backend(alice, ext)
    rid, sub = b["router"]["id"], b["subnet"]
    fip = ok(alice.post("/floatingips", json=fip_body(ext, port_id=b["port"]["id"])), 201)["floatingip"]
    err(alice.put(f"/routers/{rid}/remove_router_interface", json={"subnet_id": sub["id"]}), 409,
        "RouterInterfaceInUseByFloatingIP",
        f"Router interface for subnet {sub['id']} on router {rid} cannot be deleted, as it is required by one or "
        "more floating IPs.")
    err(alice.put(f"/routers/{rid}", json={"router": {"external_gateway_info": None}}), 409,
        "RouterExternalGatewayInUseByFloatingIp",
        f"Gateway cannot be updated for router {rid}, since a gateway to external network {ext['net']['id']} is "
        "required by one or more floating IPs.")
    assert ok(alice.get(f"/routers/{rid}"))["router"]["external_gateway_info"] is not None
    ok(alice.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": None}}))
    ok(alice.put(f"/routers/{rid}/remove_router_interface", json={"subnet_id": sub["id"]}))
    ok(alice.put(f"/routers/{rid}", json={"router": {"external_gateway_info": None}}))


def test_deleting_the_port_disassociates(shared_server, ext):
    alice = shared_server.api("alice")
    b = backend(alice, ext)
    fip = ok(alice.post("/floatingips", json=fip_body(ext, port_id=b["port"]["id"])), 201)["floatingip"]
    ok(alice.delete(f"/ports/{b['port']['id']}"), 204)
    got = ok(alice.get(f"/floatingips/{fip['id']}"))["floatingip"]
    assert got["port_id"] is None and got["fixed_ip_address"] is None and got["router_id"] is None
    assert got["status"] == "DOWN" and got["port_details"] is None
    # a new port can now be associated with it
    port2 = ok(alice.post("/ports", json={"port": {"network_id": b["net"]["id"]}}), 201)["port"]
    assert ok(alice.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": port2["id"]}}))[
        "floatingip"]["port_id"] == port2["id"]


def test_policy_matrix(shared_server, ext):
    alice = shared_server.api("alice")
    reader = shared_server.api("alice_reader")
    bob = shared_server.api("bob")
    admin = shared_server.api("admin")
    b = backend(alice, ext)
    fip = ok(alice.post("/floatingips", json=fip_body(ext)), 201)["floatingip"]
    url = f"/floatingips/{fip['id']}"
    assert ok(reader.get(url))["floatingip"]["id"] == fip["id"]
    err(reader.post("/floatingips", json=fip_body(ext)), 403, "PolicyNotAuthorized")
    err(reader.put(url, json={"floatingip": {"port_id": b["port"]["id"]}}), 403, "PolicyNotAuthorized")
    err(reader.delete(url), 403, "PolicyNotAuthorized")
    err(bob.get(url), 404, "FloatingIPNotFound")
    err(bob.put(url, json={"floatingip": {"port_id": None}}), 404, "FloatingIPNotFound")
    err(bob.delete(url), 404, "FloatingIPNotFound")
    assert fip["id"] not in [f["id"] for f in ok(bob.get("/floatingips"))["floatingips"]]
    # bob cannot point his floating IP at alice's port: it does not exist for him
    bobs = ok(bob.post("/floatingips", json=fip_body(ext)), 201)["floatingip"]
    err(bob.put(f"/floatingips/{bobs['id']}", json={"floatingip": {"port_id": b["port"]["id"]}}), 404, "PortNotFound")
    # an admin's floating IP for alice's project may use alice's port; the admin sees everything
    theirs = ok(admin.post("/floatingips", json=fip_body(ext, port_id=b["port"]["id"],
                                                         project_id=fip["project_id"])), 201)["floatingip"]
    assert theirs["project_id"] == fip["project_id"] and theirs["router_id"] == b["router"]["id"]
    assert {fip["id"], bobs["id"], theirs["id"]} <= {f["id"] for f in ok(admin.get("/floatingips"))["floatingips"]}
    # an admin's own floating IP is invisible to a member
    own = ok(admin.post("/floatingips", json=fip_body(ext)), 201)["floatingip"]
    err(alice.put(f"/floatingips/{own['id']}", json={"floatingip": {"port_id": None}}), 404, "FloatingIPNotFound")
    ok(alice.delete(url), 204)


def test_port_of_another_project_is_400_when_seen_404_when_not(shared_server, ext):
    """Neutron's _internal_fip_assoc_data looks the port up with the caller's rights: a port the
    caller sees (here: bob's port on alice's shared network) but does not own is a 400; one it
    cannot see is a 404, exactly as a port that does not exist (no more is told than Neutron tells)."""
    alice, bob, admin = (shared_server.api(u) for u in ("alice", "bob", "admin"))
    b = backend(alice, ext)
    a_project = b["net"]["project_id"]
    shared = ok(admin.post("/networks", json={"network": {"name": "sh", "shared": True, "project_id": a_project}}),
                201)["network"]
    sub = ok(admin.post("/subnets", json={"subnet": {"network_id": shared["id"], "ip_version": 4, "project_id": a_project,
                                                     "cidr": f"100.64.{next(_cidr)}.0/24"}}), 201)["subnet"]
    ok(alice.put(f"/routers/{b['router']['id']}/add_router_interface", json={"subnet_id": sub["id"]}))
    bobs_port = ok(bob.post("/ports", json={"port": {"network_id": shared["id"], "device_owner": "compute:nova"}}),
                   201)["port"]
    assert ok(alice.get(f"/ports/{bobs_port['id']}"))["port"]["project_id"] != a_project  # alice sees it
    before = ok(admin.get("/floatingips"))["floatingips"]
    msg = (f"Bad floatingip request: Cannot process floating IP association with Port {bobs_port['id']}, since "
           "that port is owned by a different tenant.")
    err(alice.post("/floatingips", json=fip_body(ext, port_id=bobs_port["id"])), 400, "BadRequest", msg)
    assert ok(admin.get("/floatingips"))["floatingips"] == before  # nothing created, no address taken
    fip = ok(alice.post("/floatingips", json=fip_body(ext)), 201)["floatingip"]
    err(alice.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": bobs_port["id"]}}), 400, "BadRequest",
        msg)
    assert ok(alice.get(f"/floatingips/{fip['id']}"))["floatingip"] == fip  # unchanged
    # bob's port on bob's own network, and a port that does not exist: both 404 for alice
    bb = backend(bob, ext)
    for pid in (bb["port"]["id"], "9c1f3a34-9a51-4b43-8a53-0d3f2a6f5e11"):
        err(alice.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": pid}}), 404, "PortNotFound")
        err(alice.post("/floatingips", json=fip_body(ext, port_id=pid)), 404, "PortNotFound")
    # an admin may associate any project's port (Neutron: `and not context.is_admin`)
    theirs = ok(admin.post("/floatingips", json=fip_body(ext, port_id=bobs_port["id"], project_id=a_project)),
                201)["floatingip"]
    assert theirs["port_id"] == bobs_port["id"]


def test_two_projects_same_cidr_share_external_network(shared_server, ext):
    alice = shared_server.api("alice")
    bob = shared_server.api("bob")
    ba = backend(alice, ext, "100.64.240.0/24")
    bb = backend(bob, ext, "100.64.240.0/24")
    assert ba["port"]["fixed_ips"][0]["ip_address"] == bb["port"]["fixed_ips"][0]["ip_address"]
    fa = ok(alice.post("/floatingips", json=fip_body(ext, port_id=ba["port"]["id"])), 201)["floatingip"]
    fb = ok(bob.post("/floatingips", json=fip_body(ext, port_id=bb["port"]["id"])), 201)["floatingip"]
    assert fa["fixed_ip_address"] == fb["fixed_ip_address"]
    assert fa["floating_ip_address"] != fb["floating_ip_address"]
    assert (fa["router_id"], fb["router_id"]) == (ba["router"]["id"], bb["router"]["id"])
    assert [f["id"] for f in ok(alice.get("/floatingips", params={"id": [fa["id"], fb["id"]]}))["floatingips"]] == \
        [fa["id"]]
    assert [f["id"] for f in ok(bob.get("/floatingips", params={"id": [fa["id"], fb["id"]]}))["floatingips"]] == \
        [fb["id"]]
    # each project's second floating IP on its own fixed IP still conflicts only within itself
    err(bob.post("/floatingips", json=fip_body(ext, port_id=bb["port"]["id"])), 409, "FloatingIPPortAlreadyAssociated")


def test_bulk_create_is_all_or_nothing(shared_server, ext):
    alice = shared_server.api("alice")
    admin = shared_server.api("admin")
    made = ok(alice.post("/floatingips", json={"floatingips": [fip_body(ext), fip_body(ext)]}), 201)["floatingips"]
    assert len({f["floating_ip_address"] for f in made}) == 2
    ports_before = len(ok(admin.get("/ports"))["ports"])
    fips_before = len(ok(admin.get("/floatingips"))["floatingips"])
    missing = "4d0f0e0e-4444-4444-8444-444444444444"
    err(alice.post("/floatingips", json={"floatingips": [fip_body(ext), fip_body(ext, port_id=missing)]}), 404,
        "PortNotFound")
    assert len(ok(admin.get("/ports"))["ports"]) == ports_before
    assert len(ok(admin.get("/floatingips"))["floatingips"]) == fips_before
    # two floating IPs for one fixed IP in one bulk request: the second conflicts with the first
    b = backend(alice, ext)
    err(alice.post("/floatingips", json={"floatingips": [fip_body(ext, port_id=b["port"]["id"])] * 2}), 409,
        "FloatingIPPortAlreadyAssociated")
    assert ok(alice.get("/floatingips", params={"port_id": b["port"]["id"]}))["floatingips"] == []


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


def test_concurrent_associations_of_one_fixed_ip_exactly_one_wins(servers):
    """Eight floating IPs created at once for the same port through four servers: one 201,
    seven 409, and no leaked floating IP or port."""
    alice = servers[0].api("alice")
    admin = servers[0].api("admin")
    net = ok(admin.post("/networks", json={"network": {"name": "public", "router:external": True}}), 201)["network"]
    sub = ok(admin.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                     "cidr": "203.0.113.0/24"}}), 201)["subnet"]
    ext = {"net": net, "subnet": sub}
    clients = [servers[i % 4].api("alice") for i in range(8)]
    for c in clients[:4]:  # FastAPI builds a route's state on first use; not thread-safe across apps
        err(c.post("/floatingips", json={"floatingip": {}}), 400, "BadRequest")
    barrier = threading.Barrier(8)
    for _ in range(3):
        b = backend(alice, ext)
        before = len(ok(admin.get("/ports"))["ports"])

        def create(i: int, port_id: str = b["port"]["id"]) -> int:
            barrier.wait()
            return clients[i].post("/floatingips", json=fip_body(ext, port_id=port_id)).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = sorted(pool.map(create, range(8)))
        assert codes == [201] + [409] * 7
        assert len(ok(alice.get("/floatingips", params={"port_id": b["port"]["id"]}))["floatingips"]) == 1
        assert len(ok(admin.get("/ports"))["ports"]) == before + 1


def test_empty_update_disassociates_and_agents_see_it(tmp_path):
    """Neutron: `PUT {"floatingip": {}}` answers 200 with the association cleared; the hosts'
    views (the agents' only source) follow: the gateway host's view holds it unassociated and
    the VM's host no longer holds it."""
    from tests.api.test_host_view import StreamReader, _held, _reference, agent_client, start_agent_server
    h = start_agent_server(os.path.join(tmp_path, "vxnet.db"))
    readers: list[StreamReader] = []
    try:
        c = agent_client(h)
        for host, ip, gw in (("hv1", "198.51.100.1", False), ("gw1", "198.51.100.9", True)):
            assert c.post(f"/hosts/{host}/register", json={"underlay_ip": ip, "gateway": gw}).status_code == 200
        admin, alice = h.api("admin"), h.api("alice")
        ext_net = ok(admin.post("/networks", json={"network": {"name": "pub", "router:external": True}}), 201)["network"]
        ok(admin.post("/subnets", json={"subnet": {"network_id": ext_net["id"], "ip_version": 4,
                                                   "cidr": "203.0.113.0/24"}}), 201)
        b = backend(alice, {"net": ext_net})
        ok(admin.put(f"/ports/{b['port']['id']}", json={"port": {"binding:host_id": "hv1"}}))
        fip = ok(alice.post("/floatingips", json={"floatingip": {"floating_network_id": ext_net["id"],
                                                                 "port_id": b["port"]["id"]}}), 201)["floatingip"]
        readers = [StreamReader(h, "hv1"), StreamReader(h, "gw1")]
        hv1, gw1 = readers

        def settled(r: StreamReader, host: str, pred: Any) -> None:
            deadline = time.time() + 10
            while not (pred(_held(r)) and _held(r) == _reference(h.store, host)) and time.time() < deadline:
                time.sleep(0.05)
            assert pred(_held(r)) and _held(r) == _reference(h.store, host)

        settled(hv1, "hv1", lambda v: v.get("floatingips", {}).get(fip["id"], {}).get("port_id") == b["port"]["id"])
        settled(gw1, "gw1", lambda v: v.get("floatingips", {}).get(fip["id"], {}).get("port_id") == b["port"]["id"])
        down = ok(alice.put(f"/floatingips/{fip['id']}", json={"floatingip": {}}))["floatingip"]
        assert down["port_id"] is None and down["fixed_ip_address"] is None and down["router_id"] is None
        assert down["status"] == "DOWN" and down["revision_number"] == fip["revision_number"] + 1
        assert ok(alice.get(f"/floatingips/{fip['id']}"))["floatingip"]["port_id"] is None
        settled(hv1, "hv1", lambda v: fip["id"] not in v.get("floatingips", {}))
        settled(gw1, "gw1", lambda v: all(f.get("port_id") is None for f in v.get("floatingips", {}).values()))
        # the fixed IP is free again: another floating IP may take it
        other = ok(alice.post("/floatingips", json={"floatingip": {"floating_network_id": ext_net["id"],
                                                                   "port_id": b["port"]["id"]}}), 201)["floatingip"]
        assert other["port_id"] == b["port"]["id"]
    finally:
        for r in readers:
            r.close()
        h.stop()


def test_status_reported_by_the_gateway_that_serves_it(tmp_path):
    """Floating IP status belongs to the gateway host serving its router: DOWN when created or
    (re)associated, ACTIVE only when that host reports it; a report by any other host, by a
    non-service user, or for an unassociated floating IP changes nothing; DOWN again when the
    router moves to another gateway host (here: its host's lease expires)."""
    from tests.api.test_host_view import agent_client, start_agent_server
    from tests.support.heartbeats import Heartbeats
    h = start_agent_server(os.path.join(tmp_path, "vxnet.db"), agent_down_time=2)
    beats = Heartbeats(lambda: agent_client(h))
    try:
        c = agent_client(h)
        for host, ip in (("gw1", "198.51.100.9"), ("gw2", "198.51.100.10")):
            assert c.post(f"/hosts/{host}/register", json={"underlay_ip": ip, "gateway": True}).status_code == 200
        # Both hosts heartbeat as agents do until the serving one "dies" below: the steps in
        # between must not race the 2 s down time, however loaded the machine.
        beats.add("gw1", "gw2")
        admin, alice = h.api("admin"), h.api("alice")
        ext_net = ok(admin.post("/networks", json={"network": {"name": "pub", "router:external": True}}), 201)["network"]
        ok(admin.post("/subnets", json={"subnet": {"network_id": ext_net["id"], "ip_version": 4,
                                                   "cidr": "203.0.113.0/24"}}), 201)
        b = backend(alice, {"net": ext_net})
        gw_port = ok(admin.get("/ports", params={"device_id": b["router"]["id"],
                                                 "device_owner": "network:router_gateway"}))["ports"][0]
        serving = gw_port["binding:host_id"]
        other = ({"gw1", "gw2"} - {serving}).pop()
        fip = ok(alice.post("/floatingips", json={"floatingip": {"floating_network_id": ext_net["id"],
                                                                 "port_id": b["port"]["id"]}}), 201)["floatingip"]
        url = f"/floatingips/{fip['id']}"
        assert fip["status"] == "DOWN"
        status = lambda: ok(alice.get(url))["floatingip"]["status"]
        # another gateway host (a stale report): ignored
        assert ok(c.post(f"/hosts/{other}/floatingips-status", json={"ACTIVE": [fip["id"]]}))["updated"] == []
        assert status() == "DOWN"
        # a tenant cannot report (the agents' service role or an admin only, as for port status)
        err(alice.post(f"{h.url}/v2.0/vxnet/hosts/{serving}/floatingips-status", json={"ACTIVE": [fip["id"]]}),
            403, "PolicyNotAuthorized")
        err(c.post(f"/hosts/{serving}/floatingips-status", json={"ACTIVE": "x"}), 400, "BadRequest")
        err(c.post(f"/hosts/{serving}/floatingips-status", json={"UP": []}), 400, "BadRequest")
        assert status() == "DOWN"
        # the serving host: ACTIVE, once
        assert ok(c.post(f"/hosts/{serving}/floatingips-status", json={"ACTIVE": [fip["id"]]}))["updated"] == [fip["id"]]
        assert ok(c.post(f"/hosts/{serving}/floatingips-status", json={"ACTIVE": [fip["id"]]}))["updated"] == []
        assert status() == "ACTIVE"
        # a description change keeps it; a disassociation is DOWN and cannot be reported ACTIVE
        ok(alice.put(url, json={"floatingip": {"description": "web"}}))
        assert status() == "ACTIVE"
        ok(alice.put(url, json={"floatingip": {"port_id": None}}))
        assert status() == "DOWN"
        assert ok(c.post(f"/hosts/{serving}/floatingips-status", json={"ACTIVE": [fip["id"]]}))["updated"] == []
        assert status() == "DOWN"
        # re-associated: DOWN until reported
        ok(alice.put(url, json={"floatingip": {"port_id": b["port"]["id"]}}))
        assert status() == "DOWN"
        ok(c.post(f"/hosts/{serving}/floatingips-status", json={"ACTIVE": [fip["id"]]}))
        assert status() == "ACTIVE"
        # the serving host dies (the other one keeps heartbeating): the router moves, DOWN
        beats.discard(serving)
        deadline = time.time() + 30
        while time.time() < deadline:
            port = ok(admin.get(f"/ports/{gw_port['id']}"))["port"]
            if port["binding:host_id"] == other:
                break
            time.sleep(0.2)
        assert port["binding:host_id"] == other
        assert status() == "DOWN"
        assert ok(c.post(f"/hosts/{serving}/floatingips-status", json={"ACTIVE": [fip["id"]]}))["updated"] == []
        assert ok(c.post(f"/hosts/{other}/floatingips-status", json={"ACTIVE": [fip["id"]]}))["updated"] == [fip["id"]]
    finally:
        beats.close()
        h.stop()
