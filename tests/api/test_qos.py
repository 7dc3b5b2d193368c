"""QoS policies and rules over real HTTP: Neutron's shapes, checks and wording, its policy
defaults (only admins write policies and rules), visibility (own project or shared; another
project's policy is a 404, also when named on a port or network), `qos_policy_id` on ports and
networks, qos-default, and the in-use conflicts."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.api.helpers import assert_error, network, port, subnet


def make_policy(c: httpx.Client, **kw: Any) -> dict[str, Any]:
    r = c.post("/qos/policies", json={"policy": {"name": "qp-" + uuid.uuid4().hex[:6], **kw}})
    assert r.status_code == 201, r.text
    return r.json()["policy"]


def rule(c: httpx.Client, pid: str, kind: str, **kw: Any) -> httpx.Response:
    return c.post(f"/qos/policies/{pid}/{kind}_rules", json={f"{kind}_rule": kw})


@pytest.fixture(scope="module")
def h(shared_server):
    return shared_server


@pytest.fixture(scope="module")
def projects(h) -> dict[str, str]:
    """Project name -> id (the ids are not the names)."""
    out = {}
    for user, name in (("alice", "tenant-a"), ("bob", "tenant-b")):
        with h.api(user) as c:
            out[name] = c.get("/security-groups").json()["security_groups"][0]["project_id"]
    return out


def test_extensions_advertised(h) -> None:
    with h.api("alice") as c:
        aliases = {e["alias"] for e in c.get("/extensions").json()["extensions"]}
    assert {"qos", "qos-bw-limit-direction", "qos-default", "qos-rule-type-details"} <= aliases


def test_policy_crud_and_rules(h, projects) -> None:
    with h.api() as c:
        p = make_policy(c, description="gold", project_id=projects["tenant-a"])
        assert p["project_id"] == projects["tenant-a"] and p["shared"] is False and p["is_default"] is False
        assert p["rules"] == [] and p["revision_number"] == 0
        r = rule(c, p["id"], "bandwidth_limit", max_kbps=10000, max_burst_kbps=800)
        assert r.status_code == 201, r.text
        bw = r.json()["bandwidth_limit_rule"]
        assert bw["direction"] == "egress" and bw["max_kbps"] == 10000 and bw["max_burst_kbps"] == 800
        r = rule(c, p["id"], "bandwidth_limit", max_kbps=5000, direction="ingress")
        assert r.status_code == 201, r.text
        # one rule per type and direction
        assert_error(rule(c, p["id"], "bandwidth_limit", max_kbps=1), 409, "QoSRulesConflict")
        assert rule(c, p["id"], "dscp_marking", dscp_mark=26).status_code == 201
        assert_error(rule(c, p["id"], "dscp_marking", dscp_mark=10), 409, "QoSRulesConflict")
        assert rule(c, p["id"], "minimum_bandwidth", min_kbps=1000).status_code == 201
        shown = c.get(f"/qos/policies/{p['id']}").json()["policy"]
        assert sorted(x["type"] for x in shown["rules"]) == ["bandwidth_limit", "bandwidth_limit", "dscp_marking",
                                                            "minimum_bandwidth"]
        assert all(x["qos_policy_id"] == p["id"] for x in shown["rules"])
        assert shown["revision_number"] == 4
        listed = c.get(f"/qos/policies/{p['id']}/bandwidth_limit_rules").json()["bandwidth_limit_rules"]
        assert {x["direction"] for x in listed} == {"egress", "ingress"}
        r = c.put(f"/qos/policies/{p['id']}/bandwidth_limit_rules/{bw['id']}",
                  json={"bandwidth_limit_rule": {"max_kbps": 20000}})
        assert r.status_code == 200 and r.json()["bandwidth_limit_rule"]["max_kbps"] == 20000
        # changing its direction onto the other rule's is a conflict
        r = c.put(f"/qos/policies/{p['id']}/bandwidth_limit_rules/{bw['id']}",
                  json={"bandwidth_limit_rule": {"direction": "ingress"}})
        assert_error(r, 409, "QoSRulesConflict")
        assert c.get(f"/qos/policies/{p['id']}/bandwidth_limit_rules/{bw['id']}").json()[
            "bandwidth_limit_rule"]["max_kbps"] == 20000
        assert c.delete(f"/qos/policies/{p['id']}/bandwidth_limit_rules/{bw['id']}").status_code == 204
        assert_error(c.get(f"/qos/policies/{p['id']}/bandwidth_limit_rules/{bw['id']}"), 404, "QosRuleNotFound")
        # a rule id under the wrong type is not found
        dscp = next(x for x in shown["rules"] if x["type"] == "dscp_marking")
        assert_error(c.get(f"/qos/policies/{p['id']}/bandwidth_limit_rules/{dscp['id']}"), 404, "QosRuleNotFound")
        r = c.put(f"/qos/policies/{p['id']}", json={"policy": {"name": "renamed", "shared": True}})
        assert r.status_code == 200 and r.json()["policy"]["shared"] is True
        assert c.delete(f"/qos/policies/{p['id']}").status_code == 204
        assert_error(c.get(f"/qos/policies/{p['id']}"), 404, "QosPolicyNotFound")


@pytest.mark.parametrize("kind,body", [
    ("bandwidth_limit", {"max_kbps": -1}),
    ("bandwidth_limit", {"max_kbps": 2**31}),
    ("bandwidth_limit", {"max_kbps": 100, "direction": "sideways"}),
    ("bandwidth_limit", {"max_kbps": "lots"}),
    ("bandwidth_limit", {}),
    ("bandwidth_limit", {"max_kbps": 100, "bogus": 1}),
    ("dscp_marking", {"dscp_mark": 7}),
    ("dscp_marking", {"dscp_mark": 64}),
    ("minimum_bandwidth", {"min_kbps": -5}),
])
def test_invalid_rules_are_400(h, kind: str, body: dict) -> None:
    with h.api() as c:
        p = make_policy(c)
        assert_error(rule(c, p["id"], kind, **body), 400)
        assert c.get(f"/qos/policies/{p['id']}").json()["policy"]["rules"] == []


def test_valid_dscp_marks_accepted(h) -> None:
    with h.api() as c:
        for mark in (0, 10, 26, 46, 56):
            p = make_policy(c)
            assert rule(c, p["id"], "dscp_marking", dscp_mark=mark).status_code == 201


def test_only_admin_writes_policies_and_rules(h, projects) -> None:
    with h.api() as admin:
        p = make_policy(admin, project_id=projects["tenant-a"])
        r_id = rule(admin, p["id"], "bandwidth_limit", max_kbps=100).json()["bandwidth_limit_rule"]["id"]
    with h.api("alice") as c:   # a member of the policy's own project
        r = c.post("/qos/policies", json={"policy": {"name": "mine"}})
        assert_error(r, 403, "PolicyNotAuthorized", "create_policy")
        assert_error(c.put(f"/qos/policies/{p['id']}", json={"policy": {"name": "x"}}), 403, "PolicyNotAuthorized")
        assert_error(c.delete(f"/qos/policies/{p['id']}"), 403, "PolicyNotAuthorized")
        assert_error(rule(c, p["id"], "dscp_marking", dscp_mark=10), 403, "PolicyNotAuthorized")
        assert_error(c.put(f"/qos/policies/{p['id']}/bandwidth_limit_rules/{r_id}",
                           json={"bandwidth_limit_rule": {"max_kbps": 1}}), 403, "PolicyNotAuthorized")
        assert_error(c.delete(f"/qos/policies/{p['id']}/bandwidth_limit_rules/{r_id}"), 403)
        assert_error(c.get("/qos/rule-types"), 403, "PolicyNotAuthorized")
        # but she reads her project's policy and its rules
        assert c.get(f"/qos/policies/{p['id']}").status_code == 200
        assert len(c.get(f"/qos/policies/{p['id']}/bandwidth_limit_rules").json()["bandwidth_limit_rules"]) == 1
    with h.api() as admin:
        assert admin.get(f"/qos/policies/{p['id']}").json()["policy"]["rules"][0]["max_kbps"] == 100


def test_other_projects_policy_is_invisible_unless_shared(h, projects) -> None:
    with h.api() as admin:
        private = make_policy(admin, project_id=projects["tenant-a"])
        shared = make_policy(admin, project_id=projects["tenant-a"], shared=True)
        rule(admin, private["id"], "bandwidth_limit", max_kbps=100)
    with h.api("bob") as c:
        ids = {p["id"] for p in c.get("/qos/policies").json()["policies"]}
        assert shared["id"] in ids and private["id"] not in ids
        assert_error(c.get(f"/qos/policies/{private['id']}"), 404, "QosPolicyNotFound")
        assert_error(c.get(f"/qos/policies/{private['id']}/bandwidth_limit_rules"), 404, "QosPolicyNotFound")
        assert_error(c.delete(f"/qos/policies/{private['id']}"), 404, "QosPolicyNotFound")   # 404 before 403
        net = network(c)
        subnet(c, net, "198.51.100.0/28")
        # naming another project's non-shared policy on a port or network: 404, nothing written
        r = c.post("/ports", json={"port": {"network_id": net["id"], "qos_policy_id": private["id"]}})
        assert_error(r, 404, "QosPolicyNotFound")
        assert c.get("/ports", params={"network_id": net["id"]}).json()["ports"] == []
        p = port(c, net)
        assert p["qos_policy_id"] is None
        assert_error(c.put(f"/ports/{p['id']}", json={"port": {"qos_policy_id": private["id"]}}), 404,
                     "QosPolicyNotFound")
        assert_error(c.put(f"/networks/{net['id']}", json={"network": {"qos_policy_id": private["id"]}}), 404,
                     "QosPolicyNotFound")
        assert_error(c.post("/networks", json={"network": {"name": "x", "qos_policy_id": private["id"]}}), 404,
                     "QosPolicyNotFound")
        # a shared policy may be attached, and detached with null
        r = c.put(f"/ports/{p['id']}", json={"port": {"qos_policy_id": shared["id"]}})
        assert r.status_code == 200 and r.json()["port"]["qos_policy_id"] == shared["id"]
        r = c.put(f"/networks/{net['id']}", json={"network": {"qos_policy_id": shared["id"]}})
        assert r.status_code == 200 and r.json()["network"]["qos_policy_id"] == shared["id"]
    with h.api() as admin:
        # in use by bob's port and network: cannot be deleted nor stop being shared (Neutron's
        # update_shared refuses removing the "*" RBAC policy with RbacPolicyInUse)
        assert_error(admin.delete(f"/qos/policies/{shared['id']}"), 409, "QosPolicyInUse")
        assert_error(admin.put(f"/qos/policies/{shared['id']}", json={"policy": {"shared": False}}), 409,
                     "RbacPolicyInUse")
    with h.api("bob") as c:
        assert c.put(f"/ports/{p['id']}", json={"port": {"qos_policy_id": None}}).json()["port"]["qos_policy_id"] is None
        assert c.put(f"/networks/{net['id']}", json={"network": {"qos_policy_id": None}}).status_code == 200
    with h.api() as admin:
        assert admin.delete(f"/qos/policies/{shared['id']}").status_code == 204


def test_own_policy_attachable_by_member(h, projects) -> None:
    with h.api() as admin:
        mine = make_policy(admin, project_id=projects["tenant-a"])
    with h.api("alice") as c:
        net = network(c)
        subnet(c, net, "203.0.113.0/28")
        p = port(c, net, qos_policy_id=mine["id"])
        assert p["qos_policy_id"] == mine["id"]
    with h.api("alice_reader") as c:   # a reader writes nothing
        assert_error(c.put(f"/ports/{p['id']}", json={"port": {"qos_policy_id": None}}), 403)


def test_default_policy(h, projects) -> None:
    with h.api() as admin:
        d = make_policy(admin, project_id=projects["tenant-b"], is_default=True)
        assert_error(admin.post("/qos/policies", json={"policy": {"name": "d2", "project_id": projects["tenant-b"],
                                                                  "is_default": True}}),
                     409, "QoSPolicyDefaultAlreadyExists")
        other = make_policy(admin, project_id=projects["tenant-b"])
        assert_error(admin.put(f"/qos/policies/{other['id']}", json={"policy": {"is_default": True}}), 409,
                     "QoSPolicyDefaultAlreadyExists")
    with h.api("bob") as c:
        net = network(c)
        assert net["qos_policy_id"] == d["id"]       # qos-default
        explicit = c.post("/networks", json={"network": {"name": "n", "qos_policy_id": None}}).json()["network"]
        assert explicit["qos_policy_id"] is None
        c.delete(f"/networks/{net['id']}")
        c.delete(f"/networks/{explicit['id']}")
    with h.api() as admin:
        assert admin.put(f"/qos/policies/{d['id']}", json={"policy": {"is_default": False}}).status_code == 200


def test_rule_types(h) -> None:
    with h.api() as c:
        types = {t["type"] for t in c.get("/qos/rule-types").json()["rule_types"]}
        assert types == {"bandwidth_limit", "dscp_marking", "minimum_bandwidth"}
        d = c.get("/qos/rule-types/dscp_marking").json()["rule_type"]
        params = d["drivers"][0]["supported_parameters"]
        assert params[0]["parameter_name"] == "dscp_mark" and 46 in params[0]["parameter_values"]
        assert_error(c.get("/qos/rule-types/nonsense"), 404)


def test_policy_tags(h, projects) -> None:
    with h.api() as admin:
        p = make_policy(admin, project_id=projects["tenant-a"], tags=["a"])
        assert p["tags"] == ["a"]
        assert admin.put(f"/qos/policies/{p['id']}/tags/b").status_code == 201
        assert admin.get(f"/qos/policies/{p['id']}/tags").json()["tags"] == ["a", "b"]
        assert admin.get(f"/qos/policies/{p['id']}").json()["policy"]["revision_number"] == 1
    with h.api("alice") as c:   # her project's policy: she reads its tags, only admins change them
        assert c.get(f"/qos/policies/{p['id']}/tags/a").status_code == 204
        assert_error(c.put(f"/qos/policies/{p['id']}/tags/c"), 403, "PolicyNotAuthorized")
    with h.api("bob") as c:
        assert_error(c.get(f"/qos/policies/{p['id']}/tags"), 404, "QosPolicyNotFound")
