"""Security group RBAC over HTTP (Neutron's `rbac-security-groups`, object type
`security_group`, action `access_as_shared`): a project a group is shared with sees the group
and its rules (`shared` true for it), puts its own ports in it and names it as the remote group
of its own rules, but may not change or delete the group or its rules; taking the sharing away
while that project's ports use the group is 409 RbacPolicyInUse (Neutron's SecurityGroup
`get_bound_project_ids`: the projects of the ports in the group).

Projects: alice (tenant-a) owns the group, bob (tenant-b) is targeted, carol (tenant-c) is
targeted by nothing and must see and use nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.helpers import assert_error, network, port, subnet
from tests.api.test_rbac import CAROL, Clients, ok, policy_ids
from tests.api.test_rbac_objects import grant, retarget
from tests.conftest import UNLIMITED, USERS, start_server
from vxnet.config import Config, project_id_for

A, B, C = project_id_for("tenant-a"), project_id_for("tenant-b"), project_id_for("tenant-c")


@pytest.fixture(scope="module")
def cl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clients]:
    h = start_server(os.path.join(tmp_path_factory.mktemp("rbac-sg"), "vxnet.db"),
                     Config(users=(*USERS, CAROL), quotas=UNLIMITED))
    yield Clients(h)
    h.stop()


def group(c: httpx.Client, name: str = "g") -> dict[str, Any]:
    return ok(c.post("/security-groups", json={"security_group": {"name": name}}), "security_group")


def rule(c: httpx.Client, group_id: str, **attrs: Any) -> httpx.Response:
    body = {"security_group_id": group_id, "direction": "ingress", "ethertype": "IPv4", **attrs}
    return c.post("/security-group-rules", json={"security_group_rule": body})


def group_ids(c: httpx.Client) -> set[str]:
    return {g["id"] for g in c.get("/security-groups").json()["security_groups"]}


def rule_ids(c: httpx.Client) -> set[str]:
    return {r["id"] for r in c.get("/security-group-rules").json()["security_group_rules"]}


def own_port(c: httpx.Client, cidr: str, **attrs: Any) -> dict[str, Any]:
    net = network(c)
    subnet(c, net, cidr)
    return port(c, net, **attrs)


def test_extension_advertised(cl: Clients) -> None:
    aliases = {e["alias"] for e in cl.alice.get("/extensions").json()["extensions"]}
    assert "rbac-security-groups" in aliases


def test_group_shared_with_one_project(cl: Clients) -> None:
    sg = group(cl.alice, "web")
    ssh = ok(rule(cl.alice, sg["id"], protocol="tcp", port_range_min=22, port_range_max=22), "security_group_rule")
    bob_port = own_port(cl.bob, "198.51.100.0/28")
    bob_sg = group(cl.bob, "bobs")
    # before any policy: bob and carol neither see nor use it
    for c in (cl.bob, cl.carol):
        assert_error(c.get(f"/security-groups/{sg['id']}"), 404, "SecurityGroupNotFound")
        assert sg["id"] not in group_ids(c)
        assert ssh["id"] not in rule_ids(c)
        assert_error(c.get(f"/security-group-rules/{ssh['id']}"), 404, "SecurityGroupRuleNotFound")
    assert_error(cl.bob.put(f"/ports/{bob_port['id']}", json={"port": {"security_groups": [sg["id"]]}}), 404,
                 "SecurityGroupNotFound")
    assert_error(rule(cl.bob, bob_sg["id"], remote_group_id=sg["id"]), 404, "SecurityGroupNotFound")
    # only the owner (or an admin) shares it; an unseen one answers like a missing one
    assert_error(grant(cl.bob, "security_group", sg["id"], B), 400, "InvalidInput",
                 f"Security group {sg['id']} could not be found")
    assert_error(grant(cl.alice, "security_group", sg["id"], B, "access_as_external"), 400, "InvalidActionForType")
    assert_error(grant(cl.alice, "security_group", sg["id"], "*"), 403, "PolicyNotAuthorized")
    pol = ok(grant(cl.alice, "security_group", sg["id"], B), "rbac_policy")
    assert pol["object_type"] == "security_group" and pol["project_id"] == A and pol["target_tenant"] == B
    assert_error(grant(cl.alice, "security_group", sg["id"], B), 409, "DuplicateRbacPolicy")
    assert_error(grant(cl.bob, "security_group", sg["id"], C), 400, "InvalidInput",
                 "Only admins can manipulate policies on objects they do not own")
    assert pol["id"] not in policy_ids(cl.bob)
    # bob sees it, shared for him, with its rules; the owner sees it unshared; carol sees nothing
    shown = ok(cl.bob.get(f"/security-groups/{sg['id']}"), "security_group")
    assert shown["shared"] is True and "_rbac" not in shown
    assert ssh["id"] in {r["id"] for r in shown["security_group_rules"]}
    assert sg["id"] in group_ids(cl.bob) and ssh["id"] in rule_ids(cl.bob)
    assert ok(cl.bob.get(f"/security-group-rules/{ssh['id']}"), "security_group_rule")["port_range_min"] == 22
    listed = {g["id"]: g for g in cl.bob.get("/security-groups").json()["security_groups"]}
    assert listed[sg["id"]]["shared"] is True and "_rbac" not in listed[sg["id"]]
    # filtering on `shared` reads it as the caller is shown it (security-groups-shared-filtering)
    assert {g["id"] for g in cl.bob.get("/security-groups", params={"shared": "true"}).json()["security_groups"]} \
        == {sg["id"]}
    assert sg["id"] not in {g["id"] for g in cl.alice.get("/security-groups", params={"shared": "true"})
                            .json()["security_groups"]}
    owner_view = ok(cl.alice.get(f"/security-groups/{sg['id']}"), "security_group")
    assert owner_view["shared"] is False and "_rbac" not in owner_view
    assert "_rbac" not in ok(cl.admin.get(f"/security-groups/{sg['id']}"), "security_group")
    assert_error(cl.carol.get(f"/security-groups/{sg['id']}"), 404, "SecurityGroupNotFound")
    assert sg["id"] not in group_ids(cl.carol) and ssh["id"] not in rule_ids(cl.carol)
    # bob uses it: on his ports (update and create), as a remote group of his own rules
    used = ok(cl.bob.put(f"/ports/{bob_port['id']}", json={"port": {"security_groups": [sg["id"]]}}), "port")
    assert used["security_groups"] == [sg["id"]]
    second = port(cl.bob, network(cl.bob), security_groups=[sg["id"], bob_sg["id"]])
    assert set(second["security_groups"]) == {sg["id"], bob_sg["id"]}
    remote = ok(rule(cl.bob, bob_sg["id"], protocol="tcp", port_range_min=80, port_range_max=80,
                     remote_group_id=sg["id"]), "security_group_rule")
    assert remote["remote_group_id"] == sg["id"] and remote["project_id"] == B
    # carol still may not (a port of hers, a rule of hers)
    carol_port = own_port(cl.carol, "198.51.100.16/28")
    assert_error(cl.carol.put(f"/ports/{carol_port['id']}", json={"port": {"security_groups": [sg["id"]]}}), 404,
                 "SecurityGroupNotFound")
    assert_error(rule(cl.carol, group(cl.carol)["id"], remote_group_id=sg["id"]), 404, "SecurityGroupNotFound")
    # bob may not change or delete the group or its rules, nor add rules to it
    assert_error(cl.bob.put(f"/security-groups/{sg['id']}", json={"security_group": {"name": "mine"}}), 403,
                 "PolicyNotAuthorized")
    assert_error(cl.bob.delete(f"/security-groups/{sg['id']}"), 403, "PolicyNotAuthorized")
    assert_error(rule(cl.bob, sg["id"], protocol="tcp", port_range_min=1, port_range_max=65535), 403,
                 "PolicyNotAuthorized")
    assert_error(rule(cl.bob, sg["id"], protocol="tcp", port_range_min=1, port_range_max=65535, project_id=A), 400,
                 message="other than the authenticated project")
    assert_error(cl.bob.put(f"/security-group-rules/{ssh['id']}",
                            json={"security_group_rule": {"description": "x"}}), 403, "PolicyNotAuthorized")
    assert_error(cl.bob.delete(f"/security-group-rules/{ssh['id']}"), 403, "PolicyNotAuthorized")
    # nor its tags (it sees them; Neutron's update_security_group_tags is the owner's)
    assert cl.bob.get(f"/security-groups/{sg['id']}/tags").json() == {"tags": []}
    assert_error(cl.bob.put(f"/security-groups/{sg['id']}/tags/x"), 403, "PolicyNotAuthorized")
    assert_error(cl.bob.put(f"/security-groups/{sg['id']}/tags", json={"tags": ["y"]}), 403, "PolicyNotAuthorized")
    assert_error(cl.carol.put(f"/security-groups/{sg['id']}/tags/x"), 404, "SecurityGroupNotFound")
    assert ok(cl.alice.get(f"/security-groups/{sg['id']}"), "security_group")["name"] == "web"
    assert ok(cl.alice.get(f"/security-groups/{sg['id']}"), "security_group")["tags"] == []
    assert {r["id"] for r in ok(cl.alice.get(f"/security-groups/{sg['id']}"), "security_group")
            ["security_group_rules"]} >= {ssh["id"]}
    # nor may bob share it further (shown above); rbac `shared` is not writable on a group
    assert_error(cl.alice.put(f"/security-groups/{sg['id']}", json={"security_group": {"shared": True}}), 400,
                 message="Cannot update read-only attribute shared")
    # taking it away while bob's ports are in it: 409, by delete or by retargeting
    assert_error(cl.alice.delete(f"/rbac-policies/{pol['id']}"), 409, "RbacPolicyInUse")
    assert_error(retarget(cl.alice, pol["id"], C), 409, "RbacPolicyInUse")
    # nor can the owner delete a group other projects' ports are in
    assert_error(cl.alice.delete(f"/security-groups/{sg['id']}"), 409, "SecurityGroupInUse")
    ok(cl.bob.put(f"/ports/{bob_port['id']}", json={"port": {"security_groups": []}}), "port")
    assert_error(cl.alice.delete(f"/rbac-policies/{pol['id']}"), 409, "RbacPolicyInUse")  # the second port
    ok(cl.bob.put(f"/ports/{second['id']}", json={"port": {"security_groups": [bob_sg["id"]]}}), "port")
    # no port of bob's left in it: the remote-group rule does not bind (as in Neutron)
    assert cl.alice.delete(f"/rbac-policies/{pol['id']}").status_code == 204
    assert_error(cl.bob.get(f"/security-groups/{sg['id']}"), 404, "SecurityGroupNotFound")
    assert ssh["id"] not in rule_ids(cl.bob)
    assert_error(cl.bob.put(f"/ports/{bob_port['id']}", json={"port": {"security_groups": [sg["id"]]}}), 404,
                 "SecurityGroupNotFound")


def test_wildcard_and_project_without_own_policy(cl: Clients) -> None:
    """The admin shares a group with everyone: bob and carol use it; the "*" policy cannot go
    while carol (no policy of her own) has a port in it, but can once bob's own policy covers
    the only user."""
    sg = group(cl.alice, "everyone")
    wild = ok(grant(cl.admin, "security_group", sg["id"], "*"), "rbac_policy")
    for c in (cl.bob, cl.carol, cl.alice):
        assert ok(c.get(f"/security-groups/{sg['id']}"), "security_group")["shared"] is True
    carol_port = own_port(cl.carol, "198.51.100.32/28", security_groups=[sg["id"]])
    assert_error(cl.admin.delete(f"/rbac-policies/{wild['id']}"), 409, "RbacPolicyInUse")
    ok(cl.carol.put(f"/ports/{carol_port['id']}", json={"port": {"security_groups": []}}), "port")
    bob_port = own_port(cl.bob, "198.51.100.48/28", security_groups=[sg["id"]])
    own = ok(grant(cl.alice, "security_group", sg["id"], B), "rbac_policy")
    assert cl.admin.delete(f"/rbac-policies/{wild['id']}").status_code == 204
    assert ok(cl.bob.get(f"/security-groups/{sg['id']}"), "security_group")["shared"] is True
    assert_error(cl.carol.get(f"/security-groups/{sg['id']}"), 404, "SecurityGroupNotFound")
    assert_error(cl.alice.delete(f"/rbac-policies/{own['id']}"), 409, "RbacPolicyInUse")
    # deleting the group (once unused) deletes its policies
    ok(cl.bob.put(f"/ports/{bob_port['id']}", json={"port": {"security_groups": []}}), "port")
    assert cl.alice.delete(f"/security-groups/{sg['id']}").status_code == 204
    assert own["id"] not in policy_ids(cl.alice)
    assert_error(cl.alice.get(f"/rbac-policies/{own['id']}"), 404, "RbacPolicyNotFound")


def test_other_projects_private_groups_are_never_usable(cl: Clients) -> None:
    """Without any policy, another project's group id is a 404 wherever a member names it: on
    a port (create, update), as a remote group, as the group of a new rule; an admin may."""
    sg = group(cl.alice, "private")
    net = network(cl.bob)
    assert_error(cl.bob.post("/ports", json={"port": {"network_id": net["id"], "security_groups": [sg["id"]]}}),
                 404, "SecurityGroupNotFound")
    assert_error(rule(cl.bob, sg["id"]), 404, "SecurityGroupNotFound")
    assert_error(rule(cl.bob, group(cl.bob)["id"], remote_group_id=sg["id"]), 404, "SecurityGroupNotFound")
    # an admin creating bob's port may name any group
    p = ok(cl.admin.post("/ports", json={"port": {"network_id": net["id"], "project_id": B,
                                                   "security_groups": [sg["id"]]}}), "port")
    assert p["security_groups"] == [sg["id"]]
