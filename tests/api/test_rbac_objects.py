"""RBAC for QoS policies, subnet pools and address scopes over HTTP (Neutron's `rbac-subnetpool`,
`rbac-address-scope`; QoS policies need no alias of their own): a policy targeting one project
lets it see and use the object, nobody else; `shared` is the "*" policy; removing access a project still uses is 409
RbacPolicyInUse (neutron/objects/rbac_db.py `_validate_rbac_policy_delete` with each object's
`get_bound_project_ids`).

Projects: alice (tenant-a) owns the objects, bob (tenant-b) is targeted, carol (tenant-c) is
targeted by nothing and must see and use nothing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.helpers import assert_error, network, port
from tests.api.test_rbac import CAROL, Clients, ok, policy_ids
from tests.conftest import UNLIMITED, USERS, start_server
from vxnet.config import Config, project_id_for

A, B, C = project_id_for("tenant-a"), project_id_for("tenant-b"), project_id_for("tenant-c")


@pytest.fixture(scope="module")
def cl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clients]:
    h = start_server(os.path.join(tmp_path_factory.mktemp("rbac-objects"), "vxnet.db"),
                     Config(users=(*USERS, CAROL), quotas=UNLIMITED))
    yield Clients(h)
    h.stop()


def grant(c: httpx.Client, object_type: str, object_id: str, target: str,
          action: str = "access_as_shared") -> httpx.Response:
    return c.post("/rbac-policies", json={"rbac_policy": {"object_type": object_type, "object_id": object_id,
                                                          "action": action, "target_tenant": target}})


def retarget(c: httpx.Client, policy_id: str, target: str) -> httpx.Response:
    return c.put(f"/rbac-policies/{policy_id}", json={"rbac_policy": {"target_tenant": target}})


def test_object_types_advertised(cl: Clients) -> None:
    aliases = {e["alias"] for e in cl.alice.get("/extensions").json()["extensions"]}
    # QoS policies are an object type of `rbac-policies` itself (with `qos`); the others have their own
    assert {"rbac-policies", "qos", "rbac-subnetpool", "rbac-address-scope"} <= aliases


def test_qos_policy_shared_with_one_project(cl: Clients) -> None:
    qos = ok(cl.admin.post("/qos/policies", json={"policy": {"name": "q", "project_id": A}}), "policy")
    bob_net = network(cl.bob)
    bob_port = port(cl.bob, bob_net)
    # before any policy: bob and carol neither see nor attach it
    for c in (cl.bob, cl.carol):
        assert_error(c.get(f"/qos/policies/{qos['id']}"), 404, "QosPolicyNotFound")
    assert_error(cl.bob.put(f"/ports/{bob_port['id']}", json={"port": {"qos_policy_id": qos["id"]}}), 404,
                 "QosPolicyNotFound")
    # only the owner (or an admin) may share it; an unseen one answers like a missing one
    assert_error(grant(cl.bob, "qos_policy", qos["id"], B), 400, "InvalidInput",
                 f"QoS policy {qos['id']} could not be found")
    assert_error(grant(cl.alice, "qos_policy", qos["id"], B, "access_as_external"), 400, "InvalidActionForType")
    assert_error(grant(cl.alice, "qos_policy", qos["id"], "*"), 403, "PolicyNotAuthorized")
    pol = ok(grant(cl.alice, "qos_policy", qos["id"], B), "rbac_policy")
    assert pol["object_type"] == "qos_policy" and pol["project_id"] == A and pol["target_tenant"] == B
    assert_error(grant(cl.alice, "qos_policy", qos["id"], B), 409, "DuplicateRbacPolicy")
    assert_error(grant(cl.bob, "qos_policy", qos["id"], C), 400, "InvalidInput",
                 "Only admins can manipulate policies on objects they do not own")
    # bob sees it (shared for him), carol does not; the owner sees it unshared
    shown = ok(cl.bob.get(f"/qos/policies/{qos['id']}"), "policy")
    assert shown["shared"] is True and "_rbac" not in shown
    assert qos["id"] in {p["id"] for p in cl.bob.get("/qos/policies").json()["policies"]}
    assert ok(cl.alice.get(f"/qos/policies/{qos['id']}"), "policy")["shared"] is False
    assert "_rbac" not in ok(cl.admin.get(f"/qos/policies/{qos['id']}"), "policy")
    assert_error(cl.carol.get(f"/qos/policies/{qos['id']}"), 404, "QosPolicyNotFound")
    assert qos["id"] not in {p["id"] for p in cl.carol.get("/qos/policies").json()["policies"]}
    carol_net = network(cl.carol)
    assert_error(cl.carol.put(f"/networks/{carol_net['id']}", json={"network": {"qos_policy_id": qos["id"]}}),
                 404, "QosPolicyNotFound")
    # bob attaches it to his port: alice can neither take it away nor move it to carol
    assert ok(cl.bob.put(f"/ports/{bob_port['id']}", json={"port": {"qos_policy_id": qos["id"]}}),
              "port")["qos_policy_id"] == qos["id"]
    assert_error(cl.alice.delete(f"/rbac-policies/{pol['id']}"), 409, "RbacPolicyInUse")
    assert_error(retarget(cl.alice, pol["id"], C), 409, "RbacPolicyInUse")
    # shared with everyone ("*", the `shared` flag) covers bob: the targeted policy may go, and
    # the "*" one is now what bob depends on
    ok(cl.admin.put(f"/qos/policies/{qos['id']}", json={"policy": {"shared": True}}), "policy")
    star = [p for p in cl.admin.get("/rbac-policies", params={"object_id": qos["id"]}).json()["rbac_policies"]
            if p["target_tenant"] == "*"]
    assert len(star) == 1 and star[0]["object_type"] == "qos_policy" and star[0]["project_id"] == A
    assert cl.alice.delete(f"/rbac-policies/{pol['id']}").status_code == 204
    assert_error(cl.admin.put(f"/qos/policies/{qos['id']}", json={"policy": {"shared": False}}), 409,
                 "RbacPolicyInUse")
    assert_error(cl.admin.delete(f"/rbac-policies/{star[0]['id']}"), 409, "RbacPolicyInUse")
    assert ok(cl.admin.get(f"/qos/policies/{qos['id']}"), "policy")["shared"] is True
    # bob detaches it: sharing may end, and bob loses sight of it
    ok(cl.bob.put(f"/ports/{bob_port['id']}", json={"port": {"qos_policy_id": None}}), "port")
    assert ok(cl.admin.put(f"/qos/policies/{qos['id']}", json={"policy": {"shared": False}}),
              "policy")["shared"] is False
    assert star[0]["id"] not in policy_ids(cl.admin)
    assert_error(cl.bob.get(f"/qos/policies/{qos['id']}"), 404, "QosPolicyNotFound")
    # a policy naming a network is bound too (Neutron counts networks and ports)
    pol = ok(grant(cl.alice, "qos_policy", qos["id"], B), "rbac_policy")
    ok(cl.bob.put(f"/networks/{bob_net['id']}", json={"network": {"qos_policy_id": qos["id"]}}), "network")
    assert_error(cl.alice.delete(f"/rbac-policies/{pol['id']}"), 409, "RbacPolicyInUse")
    ok(cl.bob.put(f"/networks/{bob_net['id']}", json={"network": {"qos_policy_id": None}}), "network")
    # deleting the QoS policy deletes its RBAC policies
    assert cl.admin.delete(f"/qos/policies/{qos['id']}").status_code == 204
    assert pol["id"] not in policy_ids(cl.admin)


def test_subnetpool_shared_with_one_project(cl: Clients) -> None:
    pool = ok(cl.alice.post("/subnetpools", json={"subnetpool": {
        "name": "p", "prefixes": ["100.64.0.0/16"], "default_prefixlen": 24}}), "subnetpool")
    bob_net, carol_net = network(cl.bob), network(cl.carol)

    def alloc(c: httpx.Client, net: dict[str, Any]) -> httpx.Response:
        return c.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                   "subnetpool_id": pool["id"]}})

    assert_error(alloc(cl.bob, bob_net), 404, "SubnetPoolNotFound")
    assert_error(grant(cl.bob, "subnetpool", pool["id"], B), 400, "InvalidInput",
                 f"Subnet pool {pool['id']} could not be found")
    pol = ok(grant(cl.alice, "subnetpool", pool["id"], B), "rbac_policy")
    assert pol["object_type"] == "subnetpool"
    shown = ok(cl.bob.get(f"/subnetpools/{pool['id']}"), "subnetpool")
    assert shown["shared"] is True and "_rbac" not in shown
    assert ok(cl.alice.get(f"/subnetpools/{pool['id']}"), "subnetpool")["shared"] is False
    assert_error(cl.carol.get(f"/subnetpools/{pool['id']}"), 404, "SubnetPoolNotFound")
    assert_error(alloc(cl.carol, carol_net), 404, "SubnetPoolNotFound")
    assert_error(grant(cl.bob, "subnetpool", pool["id"], C), 400, "InvalidInput", "Only admins")
    # bob allocates from it; while his subnet exists the policy stays
    sub = ok(alloc(cl.bob, bob_net), "subnet")
    assert sub["project_id"] == B and sub["cidr"].startswith("100.64.") and sub["cidr"].endswith("/24")
    assert_error(cl.alice.delete(f"/rbac-policies/{pol['id']}"), 409, "RbacPolicyInUse")
    assert_error(retarget(cl.alice, pol["id"], C), 409, "RbacPolicyInUse")
    # the owner's own subnets never hold a policy
    own_net = network(cl.alice)
    ok(alloc(cl.alice, own_net), "subnet")
    assert cl.bob.delete(f"/subnets/{sub['id']}").status_code == 204
    # retargeting now moves access to carol
    assert ok(retarget(cl.alice, pol["id"], C), "rbac_policy")["target_tenant"] == C
    assert_error(cl.bob.get(f"/subnetpools/{pool['id']}"), 404, "SubnetPoolNotFound")
    assert ok(alloc(cl.carol, carol_net), "subnet")["project_id"] == C


def test_address_scope_shared_with_one_project(cl: Clients) -> None:
    scope = ok(cl.alice.post("/address-scopes", json={"address_scope": {"name": "s", "ip_version": 4}}),
               "address_scope")

    def pool_in_scope(c: httpx.Client, prefix: str) -> httpx.Response:
        return c.post("/subnetpools", json={"subnetpool": {"name": "p", "prefixes": [prefix],
                                                           "address_scope_id": scope["id"]}})

    assert_error(pool_in_scope(cl.bob, "198.51.100.0/26"), 404, "AddressScopeNotFound")
    assert_error(grant(cl.alice, "address_scope", scope["id"], B, "access_as_external"), 400,
                 "InvalidActionForType")
    pol = ok(grant(cl.alice, "address_scope", scope["id"], B), "rbac_policy")
    assert pol["object_type"] == "address_scope"
    shown = ok(cl.bob.get(f"/address-scopes/{scope['id']}"), "address_scope")
    assert shown["shared"] is True and "_rbac" not in shown
    assert_error(cl.carol.get(f"/address-scopes/{scope['id']}"), 404, "AddressScopeNotFound")
    assert_error(pool_in_scope(cl.carol, "198.51.100.64/26"), 404, "AddressScopeNotFound")
    bob_pool = ok(pool_in_scope(cl.bob, "198.51.100.0/26"), "subnetpool")
    assert bob_pool["address_scope_id"] == scope["id"]
    assert_error(cl.alice.delete(f"/rbac-policies/{pol['id']}"), 409, "RbacPolicyInUse")
    assert_error(retarget(cl.alice, pol["id"], C), 409, "RbacPolicyInUse")
    assert cl.bob.delete(f"/subnetpools/{bob_pool['id']}").status_code == 204
    assert cl.alice.delete(f"/rbac-policies/{pol['id']}").status_code == 204
    assert_error(cl.bob.get(f"/address-scopes/{scope['id']}"), 404, "AddressScopeNotFound")
    # shared=True at creation is the "*" policy, removed with the scope
    shared = ok(cl.admin.post("/address-scopes", json={"address_scope": {
        "name": "all", "ip_version": 4, "shared": True, "project_id": A}}), "address_scope")
    star = cl.admin.get("/rbac-policies", params={"object_id": shared["id"]}).json()["rbac_policies"]
    assert [(p["object_type"], p["target_tenant"], p["project_id"]) for p in star] == [("address_scope", "*", A)]
    assert ok(cl.carol.get(f"/address-scopes/{shared['id']}"), "address_scope")["shared"] is True
    assert cl.admin.delete(f"/address-scopes/{shared['id']}").status_code == 204
    assert star[0]["id"] not in policy_ids(cl.admin)


def test_unknown_object_type_is_refused(cl: Clients) -> None:
    net = network(cl.alice)
    before = policy_ids(cl.admin)
    # address groups do not exist on this server (security groups are a type: test_rbac_security_groups.py)
    assert_error(grant(cl.alice, "address_group", net["id"], B), 400, "InvalidInput", "not a valid RBAC object type")
    assert_error(grant(cl.alice, "security_group", net["id"], B), 400, "InvalidInput", "could not be found")
    # an id of another type is not found as this type
    assert_error(grant(cl.alice, "subnetpool", net["id"], B), 400, "InvalidInput", "could not be found")
    assert policy_ids(cl.admin) == before


def test_tags_and_standard_attributes_of_rbac_shared_objects(cl: Clients) -> None:
    """Subnet pools and QoS policies carry Neutron's standard attributes (tags, timestamps,
    revision): a targeted project reads the tags but may not write them, an untargeted one gets
    the object's 404; address scopes and RBAC policies have none, so no tags route."""
    pool = ok(cl.alice.post("/subnetpools", json={"subnetpool": {"name": "t", "prefixes": ["100.66.0.0/16"],
                                                               "tags": ["blue"]}}), "subnetpool")
    qos = ok(cl.admin.post("/qos/policies", json={"policy": {"name": "t", "project_id": A}}), "policy")
    assert ok(cl.admin.put(f"/qos/policies/{qos['id']}/tags", json={"tags": ["red"]}), "tags") == ["red"]
    for obj, path, member in ((pool, "subnetpools", "subnetpool"), (qos, "qos/policies", "policy")):
        assert {"created_at", "updated_at", "revision_number", "tags"} <= set(obj)
        object_type = "subnetpool" if member == "subnetpool" else "qos_policy"
        rev = ok(cl.admin.get(f"/{path}/{obj['id']}"), member)["revision_number"]
        pol = ok(grant(cl.alice, object_type, obj["id"], B), "rbac_policy")
        shown = ok(cl.admin.get(f"/{path}/{obj['id']}"), member)
        assert shown["revision_number"] == rev  # a policy is not a change of the object
        tags = cl.bob.get(f"/{path}/{obj['id']}/tags")
        assert tags.status_code == 200 and tags.json()["tags"] == shown["tags"]
        assert cl.bob.get(f"/{path}/{obj['id']}/tags/{shown['tags'][0]}").status_code == 204
        assert_error(cl.bob.put(f"/{path}/{obj['id']}/tags/green"), 403, "PolicyNotAuthorized")
        assert_error(cl.carol.get(f"/{path}/{obj['id']}/tags"), 404)
        assert ok(cl.admin.get(f"/{path}/{obj['id']}"), member)["tags"] == shown["tags"]
        assert cl.alice.delete(f"/rbac-policies/{pol['id']}").status_code == 204
        assert_error(cl.bob.get(f"/{path}/{obj['id']}/tags"), 404)
    scope = ok(cl.alice.post("/address-scopes", json={"address_scope": {"name": "t", "ip_version": 4}}),
               "address_scope")
    assert "revision_number" not in scope and "tags" not in scope
    pol = ok(grant(cl.alice, "address_scope", scope["id"], B), "rbac_policy")
    assert "tags" not in pol and "revision_number" not in pol
    assert cl.alice.get(f"/address-scopes/{scope['id']}/tags").status_code == 404
    assert cl.alice.get(f"/rbac-policies/{pol['id']}/tags").status_code == 404


def _race_alloc(cl: Clients, net: dict[str, Any], pool: dict[str, Any], policy_id: str) -> dict[str, Any]:
    """Bob's allocation from `pool` and alice's delete of `policy_id`, released together."""
    barrier = threading.Barrier(2)
    res: dict[str, Any] = {}

    def alloc() -> None:
        barrier.wait()
        r = cl.bob.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                     "subnetpool_id": pool["id"]}})
        res["alloc"] = r.status_code
        if r.status_code == 201:
            res["subnet"] = r.json()["subnet"]["id"]

    def revoke() -> None:
        barrier.wait()
        res["delete"] = cl.alice.delete(f"/rbac-policies/{policy_id}").status_code

    threads = [threading.Thread(target=alloc), threading.Thread(target=revoke)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return res


def test_allocation_racing_the_pool_policy_delete_never_both_win(cl: Clients) -> None:
    """Bob allocating a subnet from alice's pool while alice deletes the policy that lets him:
    one wins, never both (the delete's guarded read of the pool's subnets and the allocation's
    read of the pool conflict in the store), so no subnet of bob's is left from a pool he has no
    access to."""
    pool = ok(cl.alice.post("/subnetpools", json={"subnetpool": {
        "name": "race", "prefixes": ["100.67.0.0/16"], "default_prefixlen": 28}}), "subnetpool")
    net = network(cl.bob)
    for _ in range(10):
        pol = ok(grant(cl.alice, "subnetpool", pool["id"], B), "rbac_policy")
        res = _race_alloc(cl, net, pool, pol["id"])
        assert (res["alloc"], res["delete"]) in ((201, 409), (404, 204)), res
        if res["alloc"] == 201:
            assert cl.bob.delete(f"/subnets/{res['subnet']}").status_code == 204
            assert cl.alice.delete(f"/rbac-policies/{pol['id']}").status_code == 204
        assert_error(cl.bob.get(f"/subnetpools/{pool['id']}"), 404, "SubnetPoolNotFound")
    assert cl.admin.get("/subnets", params={"subnetpool_id": pool["id"]}).json()["subnets"] == []
