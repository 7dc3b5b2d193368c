"""Tenant isolation, as an attacker sees the API: every reference a member sends names an object
of some project; the ones below name another project's object that the caller can *see*
(shared with it by RBAC, or on the caller's own shared network), where visibility must not turn
into control. The plain cases (another project's private object: 404) are in
test_policy_matrix.py `test_references_to_other_projects_objects`; security groups in
test_rbac_security_groups.py.

Projects: alice (tenant-a) owns the shared objects and network, bob (tenant-b) is the one they
are shared with. Each denial also checks that nothing changed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.helpers import assert_error, network, port, subnet
from tests.api.test_rbac import CAROL, Clients, ok
from tests.api.test_rbac_objects import grant
from tests.conftest import UNLIMITED, USERS, start_server
from vxnet.config import Config, project_id_for

A, B = project_id_for("tenant-a"), project_id_for("tenant-b")


@pytest.fixture(scope="module")
def cl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clients]:
    h = start_server(os.path.join(tmp_path_factory.mktemp("isolation"), "vxnet.db"),
                     Config(users=(*USERS, CAROL), quotas=UNLIMITED))
    yield Clients(h)
    h.stop()


@pytest.fixture(scope="module")
def world(cl: Clients) -> dict[str, Any]:
    """An external network; alice's network S (shared with bob) with a subnet and her router on
    it; bob's router with a gateway and bob's port on S."""
    ext = ok(cl.admin.post("/networks", json={"network": {"name": "ext", "router:external": True}}), "network")
    subnet(cl.admin, ext, "203.0.113.0/24")
    s = network(cl.alice, name="S")
    ssub = subnet(cl.alice, s, "192.0.2.0/24")
    ok(grant(cl.alice, "network", s["id"], B), "rbac_policy")
    arouter = ok(cl.alice.post("/routers", json={"router": {"name": "ar", "external_gateway_info": {
        "network_id": ext["id"]}}}), "router")
    assert cl.alice.put(f"/routers/{arouter['id']}/add_router_interface",
                        json={"subnet_id": ssub["id"]}).status_code == 200
    brouter = ok(cl.bob.post("/routers", json={"router": {"name": "br", "external_gateway_info": {
        "network_id": ext["id"]}}}), "router")
    return {"ext": ext, "s": s, "ssub": ssub, "arouter": arouter, "brouter": brouter,
            "bport": port(cl.bob, s), "aport": port(cl.alice, s)}


def test_member_on_a_shared_network_gets_no_infrastructure_role(cl: Clients, world: dict[str, Any]) -> None:
    """Bob's port on alice's shared network: no gateway address, no router/DHCP/floating IP
    owner, no address pairs, MAC or port security change (network-owner attributes: 403); his
    router cannot take her subnet (the subnet's owner's, Neutron's 400)."""
    s, ssub, bport = world["s"], world["ssub"], world["bport"]
    before = cl.admin.get(f"/ports/{bport['id']}").json()["port"]
    r = cl.bob.post("/ports", json={"port": {"network_id": s["id"], "fixed_ips": [{"ip_address": ssub["gateway_ip"]}]}})
    assert_error(r, 403, "PolicyNotAuthorized", "create_port:fixed_ips:ip_address")
    for owner in ("network:router_interface", "network:router_gateway", "network:dhcp", "network:floatingip"):
        r = cl.bob.post("/ports", json={"port": {"network_id": s["id"], "device_owner": owner,
                                                  "device_id": world["brouter"]["id"]}})
        assert_error(r, 403, "PolicyNotAuthorized", "create_port:device_owner")
        assert_error(cl.bob.put(f"/ports/{bport['id']}", json={"port": {"device_owner": owner}}), 403,
                     "PolicyNotAuthorized", "update_port:device_owner")
    for body, rule in (({"allowed_address_pairs": [{"ip_address": ssub["gateway_ip"]}]}, "allowed_address_pairs"),
                       ({"mac_address": "fa:16:3e:00:00:01"}, "mac_address"),
                       ({"port_security_enabled": False, "security_groups": []}, "port_security_enabled"),
                       ({"fixed_ips": [{"ip_address": ssub["gateway_ip"]}]}, "fixed_ips")):
        assert_error(cl.bob.put(f"/ports/{bport['id']}", json={"port": body}), 403, "PolicyNotAuthorized", rule)
    r = cl.bob.put(f"/routers/{world['brouter']['id']}/add_router_interface", json={"subnet_id": ssub["id"]})
    assert_error(r, 400, "BadRequest", "not owned by project making the request")
    # his router may not take alice's port either (not even visible to him)
    r = cl.bob.put(f"/routers/{world['brouter']['id']}/add_router_interface", json={"port_id": world["aport"]["id"]})
    assert_error(r, 404, "PortNotFound")
    after = cl.admin.get(f"/ports/{bport['id']}").json()["port"]
    assert after["revision_number"] == before["revision_number"] and after["device_owner"] == ""
    gw_users = cl.admin.get("/ports", params={"network_id": s["id"], "device_owner": "network:router_interface"})
    assert [p["device_id"] for p in gw_users.json()["ports"]] == [world["arouter"]["id"]]


def test_network_owner_sees_but_does_not_take_other_projects_ports(cl: Clients, world: dict[str, Any]) -> None:
    """Alice sees bob's port on her network (Neutron), but cannot give it her floating IP
    (Neutron's 400: owned by a different tenant), plug it into her router (404) or make it her
    trunk's parent (403)."""
    bport = world["bport"]
    assert ok(cl.alice.get(f"/ports/{bport['id']}"), "port")["project_id"] == B
    fip = ok(cl.alice.post("/floatingips", json={"floatingip": {"floating_network_id": world["ext"]["id"]}}),
             "floatingip")
    r = cl.alice.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": bport["id"]}})
    assert_error(r, 400, "BadRequest", "owned by a different tenant")
    r = cl.alice.post("/floatingips", json={"floatingip": {"floating_network_id": world["ext"]["id"],
                                                            "port_id": bport["id"]}})
    assert_error(r, 400, "BadRequest", "owned by a different tenant")
    r = cl.alice.put(f"/routers/{world['arouter']['id']}/add_router_interface", json={"port_id": bport["id"]})
    assert_error(r, 404, "PortNotFound")
    assert_error(cl.alice.post("/trunks", json={"trunk": {"port_id": bport["id"]}}), 403, "PolicyNotAuthorized")
    assert ok(cl.admin.get(f"/ports/{bport['id']}"), "port")["device_owner"] == ""
    assert all(f["port_id"] is None for f in cl.admin.get("/floatingips", params={"project_id": A})
               .json()["floatingips"])


def test_floating_ip_references(cl: Clients, world: dict[str, Any]) -> None:
    """Bob's floating IP: only an external network (alice's shared but internal S: Neutron's
    400), no chosen address (admin only), no subnet of another network, no address his port does
    not have, and its network is read-only."""
    ext = world["ext"]
    r = cl.bob.post("/floatingips", json={"floatingip": {"floating_network_id": world["s"]["id"]}})
    assert_error(r, 400, "BadRequest", "is not a valid external network")
    assert_error(cl.bob.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"],
                                                                  "floating_ip_address": "203.0.113.77"}}),
                 403, "PolicyNotAuthorized", "create_floatingip:floating_ip_address")
    assert_error(cl.bob.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"],
                                                                  "subnet_id": world["ssub"]["id"]}}), 400)
    fip = ok(cl.bob.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"]}}), "floatingip")
    assert_error(cl.bob.put(f"/floatingips/{fip['id']}", json={"floatingip": {
        "port_id": world["bport"]["id"], "fixed_ip_address": world["ssub"]["gateway_ip"]}}), 400, "BadRequest")
    assert_error(cl.bob.put(f"/floatingips/{fip['id']}", json={"floatingip": {
        "floating_network_id": world["s"]["id"]}}), 400, message="read-only")
    assert ok(cl.bob.get(f"/floatingips/{fip['id']}"), "floatingip")["port_id"] is None


def test_reference_fields_are_read_only_after_create(cl: Clients, world: dict[str, Any]) -> None:
    """The fields that tie an object to another one cannot be re-pointed by an update."""
    bport = world["bport"]
    bnet = network(cl.bob)
    bsub = subnet(cl.bob, bnet, "198.51.100.0/24")
    bsg = ok(cl.bob.post("/security-groups", json={"security_group": {"name": "b"}}), "security_group")
    for path, member, body in ((f"/ports/{bport['id']}", "port", {"network_id": bnet["id"]}),
                               (f"/ports/{bport['id']}", "port", {"project_id": A}),
                               (f"/subnets/{bsub['id']}", "subnet", {"network_id": world["s"]["id"]}),
                               (f"/subnets/{bsub['id']}", "subnet", {"subnetpool_id": None}),
                               (f"/networks/{bnet['id']}", "network", {"project_id": A}),
                               (f"/security-groups/{bsg['id']}", "security_group", {"project_id": A}),
                               (f"/security-groups/{bsg['id']}", "security_group", {"shared": True})):
        assert_error(cl.bob.put(path, json={member: body}), 400)
    assert ok(cl.bob.get(f"/ports/{bport['id']}"), "port")["network_id"] == world["s"]["id"]


def test_shared_objects_stay_their_owners(cl: Clients) -> None:
    """A QoS policy and a subnet pool shared with bob: he uses them but changes neither them nor
    (for QoS) their rules, nor their tags (403: he sees them)."""
    qos = ok(cl.admin.post("/qos/policies", json={"policy": {"name": "q", "project_id": A}}), "policy")
    bw = ok(cl.admin.post(f"/qos/policies/{qos['id']}/bandwidth_limit_rules",
                          json={"bandwidth_limit_rule": {"max_kbps": 1000}}), "bandwidth_limit_rule")
    ok(grant(cl.admin, "qos_policy", qos["id"], B), "rbac_policy")
    base = f"/qos/policies/{qos['id']}"
    assert ok(cl.bob.get(f"{base}/bandwidth_limit_rules/{bw['id']}"), "bandwidth_limit_rule")["max_kbps"] == 1000
    for r, rule in ((cl.bob.post(f"{base}/bandwidth_limit_rules", json={"bandwidth_limit_rule": {"max_kbps": 1}}),
                     "create_policy_bandwidth_limit_rule"),
                    (cl.bob.put(f"{base}/bandwidth_limit_rules/{bw['id']}",
                                json={"bandwidth_limit_rule": {"max_kbps": 1}}), "update_policy_bandwidth_limit_rule"),
                    (cl.bob.delete(f"{base}/bandwidth_limit_rules/{bw['id']}"), "delete_policy_bandwidth_limit_rule"),
                    (cl.bob.put(base, json={"policy": {"name": "x"}}), "update_policy"),
                    (cl.bob.delete(base), "delete_policy"),
                    (cl.bob.put(f"{base}/tags/x"), "update_qos_policy_tags")):
        assert_error(r, 403, "PolicyNotAuthorized", rule)
    assert ok(cl.admin.get(f"{base}/bandwidth_limit_rules/{bw['id']}"), "bandwidth_limit_rule")["max_kbps"] == 1000
    pool = ok(cl.alice.post("/subnetpools", json={"subnetpool": {"name": "p", "prefixes": ["100.64.0.0/16"],
                                                                 "default_prefixlen": 24}}), "subnetpool")
    ok(grant(cl.alice, "subnetpool", pool["id"], B), "rbac_policy")
    sp = f"/subnetpools/{pool['id']}"
    for r, rule in ((cl.bob.put(sp, json={"subnetpool": {"name": "x"}}), "update_subnetpool"),
                    (cl.bob.put(f"{sp}/add_prefixes", json={"prefixes": ["100.66.0.0/16"]}), "add_prefixes"),
                    (cl.bob.put(f"{sp}/remove_prefixes", json={"prefixes": ["100.64.0.0/16"]}), "remove_prefixes"),
                    (cl.bob.delete(sp), "delete_subnetpool"),
                    (cl.bob.put(f"{sp}/tags/x"), "update_subnetpool_tags")):
        assert_error(r, 403, "PolicyNotAuthorized", rule)
    shown = ok(cl.alice.get(sp), "subnetpool")
    assert shown["prefixes"] == ["100.64.0.0/16"] and shown["name"] == "p" and shown["tags"] == []
