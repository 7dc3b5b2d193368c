"""Security groups and rules over real HTTP: Neutron's shapes, defaults, checks and wording,
the per-project `default` group, revision bumps, bulk create, concurrency and the policy matrix
(member, reader, admin, other project)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.support import http, uvserver
from vxnet.api.app import create_app
from vxnet.store.contract import delete as store_delete
from vxnet.store.contract import put as store_put


def err(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"NeutronError"}, body
    return body["NeutronError"]


def make_group(c: httpx.Client, name: str | None = None, **kw: Any) -> dict[str, Any]:
    r = c.post("/security-groups", json={"security_group": {"name": name or f"sg-{uuid.uuid4().hex[:8]}", **kw}})
    assert r.status_code == 201, r.text
    return r.json()["security_group"]


def make_rule(c: httpx.Client, group_id: str, **kw: Any) -> httpx.Response:
    body = {"security_group_id": group_id, "direction": "ingress", **kw}
    return c.post("/security-group-rules", json={"security_group_rule": body})


def groups_named(c: httpx.Client, name: str) -> list[dict[str, Any]]:
    r = c.get("/security-groups", params={"name": name})
    assert r.status_code == 200, r.text
    return r.json()["security_groups"]


def show_group(c: httpx.Client, gid: str) -> dict[str, Any]:
    r = c.get(f"/security-groups/{gid}")
    assert r.status_code == 200, r.text
    return r.json()["security_group"]


def fake_port(h: Any, project_id: str, groups: list[str]) -> str:
    """A port record put straight into the store (the ports API is another module)."""
    pid = str(uuid.uuid4())
    port = {"id": pid, "name": "", "network_id": str(uuid.uuid4()), "project_id": project_id,
            "tenant_id": project_id, "security_groups": groups, "fixed_ips": [], "device_owner": "",
            "device_id": "", "mac_address": "fa:16:3e:00:00:01", "tags": []}
    store_put(h.store, f"/vxnet/res/ports/{pid}", json.dumps(port))
    return pid


@contextmanager
def twin_server(h: Any) -> Iterator[str]:
    """A second API server in this process over the same store, as a second vxnet server over
    one etcd would be: requests to the two really run at the same time."""
    port = free_port()
    srv, thread = uvserver.run_in_thread(create_app(h.config, h.store), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.stop()
        thread.join(10)


# Side-effect-free requests (404s) that make each app build its routes for the routers used
# here before the parallel part: FastAPI builds an app's routes lazily on first match, and two
# apps in one process building the same module-level routes at the same moment can fail there.
# That only happens with two apps in one process (never in a real server), so warm up first.
WARMUP_PATHS = ("/security-group-rules/00000000-0000-0000-0000-000000000000",
                "/networks/00000000-0000-0000-0000-000000000000/tags")


def run_on_both(h: Any, user: str, fn: Any, n: int) -> list[Any]:
    """`fn(client, i)` for i in range(n), all at once, spread over the server and a twin."""
    token = h.token(user)
    with twin_server(h) as other:
        urls = [h.url, other]
        for url in urls:
            for path in WARMUP_PATHS:
                assert http.get(url + "/v2.0" + path, headers={"X-Auth-Token": token}).status_code == 404

        def one(i: int) -> Any:
            with http.client(base_url=urls[i % 2] + "/v2.0", headers={"X-Auth-Token": token}, timeout=30) as c:
                return fn(c, i)

        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(one, range(n)))


# ---------------------------------------------------------------------------------------------
# the default group

def test_listing_creates_the_default_group_once_with_neutrons_four_rules(server: Any) -> None:
    alice = server.api("alice")
    groups = alice.get("/security-groups").json()["security_groups"]
    assert [g["name"] for g in groups] == ["default"]
    default = groups[0]
    assert default["description"] == "Default security group"
    assert default["stateful"] is True and default["shared"] is False
    rules = default["security_group_rules"]
    got = sorted((r["direction"], r["ethertype"], r["remote_group_id"], r["protocol"], r["remote_ip_prefix"])
                 for r in rules)
    assert got == [("egress", "IPv4", None, None, None), ("egress", "IPv6", None, None, None),
                   ("ingress", "IPv4", default["id"], None, None), ("ingress", "IPv6", default["id"], None, None)]
    assert all(r["belongs_to_default_sg"] is True for r in rules)
    assert all(r["project_id"] == default["project_id"] == r["tenant_id"] for r in rules)
    # listing again, and listing as the project's reader, finds the same group
    assert [g["id"] for g in alice.get("/security-groups").json()["security_groups"]] == [default["id"]]
    reader = server.api("alice_reader").get("/security-groups").json()["security_groups"]
    assert [g["id"] for g in reader] == [default["id"]]
    # the rules are listed too, and the rule list of another project creates its own default
    rule_ids = {r["id"] for r in alice.get("/security-group-rules").json()["security_group_rules"]}
    assert rule_ids == {r["id"] for r in rules}
    bob_rules = server.api("bob").get("/security-group-rules").json()["security_group_rules"]
    assert len(bob_rules) == 4 and not rule_ids & {r["id"] for r in bob_rules}
    bob_groups = server.api("bob").get("/security-groups").json()["security_groups"]
    assert [g["name"] for g in bob_groups] == ["default"] and bob_groups[0]["id"] != default["id"]


def test_concurrent_first_listings_create_exactly_one_default_group(server: Any) -> None:
    def listing(c: httpx.Client, _: int) -> list[str]:
        r = c.get("/security-groups")
        assert r.status_code == 200, r.text
        return [g["id"] for g in r.json()["security_groups"]]

    results = run_on_both(server, "bob", listing, 12)
    assert all(len(ids) == 1 for ids in results)
    assert len({ids[0] for ids in results}) == 1
    all_groups = server.api("admin").get("/security-groups", params={"name": "default"}).json()["security_groups"]
    bob_project = server.api("bob").get("/security-groups").json()["security_groups"][0]["project_id"]
    assert sum(1 for g in all_groups if g["project_id"] == bob_project) == 1


def test_creating_a_group_creates_the_default_group_first(server: Any) -> None:
    alice = server.api("alice")
    web = make_group(alice, "web")
    admin_view = server.api("admin").get("/security-groups", params={"project_id": web["project_id"]})
    names = sorted(g["name"] for g in admin_view.json()["security_groups"])
    assert names == ["default", "web"]


def test_no_second_default_group_and_default_cannot_be_renamed(shared_server: Any) -> None:
    alice = shared_server.api("alice")
    for name in ("default", "Default", "DEFAULT"):
        r = alice.post("/security-groups", json={"security_group": {"name": name}})
        assert r.status_code == 409, r.text
        assert err(r) == {"type": "SecurityGroupDefaultAlreadyExists",
                          "message": "Default security group already exists.", "detail": ""}
    g = make_group(alice)
    r = alice.put(f"/security-groups/{g['id']}", json={"security_group": {"name": "default"}})
    assert r.status_code == 409 and err(r)["type"] == "SecurityGroupDefaultAlreadyExists"
    default = groups_named(alice, "default")[0]
    r = alice.put(f"/security-groups/{default['id']}", json={"security_group": {"name": "other"}})
    assert r.status_code == 409
    assert err(r)["type"] == "SecurityGroupCannotUpdateDefault"
    assert err(r)["message"] == "Updating default security group not allowed."
    r = alice.put(f"/security-groups/{default['id']}", json={"security_group": {"description": "ours"}})
    assert r.status_code == 200 and r.json()["security_group"]["description"] == "ours"
    assert [x["name"] for x in groups_named(alice, "default")] == ["default"]


def test_default_group_delete_needs_admin_and_is_recreated_on_next_need(server: Any) -> None:
    alice = server.api("alice")
    default = groups_named(alice, "default")[0]
    r = alice.delete(f"/security-groups/{default['id']}")
    assert r.status_code == 409
    assert err(r) == {"type": "SecurityGroupCannotRemoveDefault",
                      "message": "Insufficient rights for removing default security group.", "detail": ""}
    assert server.api("admin").delete(f"/security-groups/{default['id']}").status_code == 204
    rules = server.api("admin").get("/security-group-rules", params={"security_group_id": default["id"]})
    assert rules.json()["security_group_rules"] == []
    again = groups_named(alice, "default")
    assert len(again) == 1 and again[0]["id"] != default["id"]
    assert len(again[0]["security_group_rules"]) == 4


# ---------------------------------------------------------------------------------------------
# groups

def test_create_group_shape_and_two_egress_rules(shared_server: Any) -> None:
    alice = shared_server.api("alice")
    g = make_group(alice, "web", description="web servers")
    assert g["name"] == "web" and g["description"] == "web servers"
    assert g["stateful"] is True and g["shared"] is False
    assert g["revision_number"] == 0 and g["tags"] == []
    assert g["project_id"] == g["tenant_id"] and g["created_at"].endswith("Z") and g["updated_at"].endswith("Z")
    uuid.UUID(g["id"])
    rules = g["security_group_rules"]
    assert sorted((r["direction"], r["ethertype"]) for r in rules) == [("egress", "IPv4"), ("egress", "IPv6")]
    for r in rules:
        assert r["protocol"] is None and r["remote_ip_prefix"] is None and r["remote_group_id"] is None
        assert r["port_range_min"] is None and r["port_range_max"] is None
        assert r["belongs_to_default_sg"] is False and r["security_group_id"] == g["id"]
    assert show_group(alice, g["id"]) == g
    stateless = make_group(alice, stateful=False)
    assert stateless["stateful"] is False


def test_create_group_bad_bodies_are_400(shared_server: Any) -> None:
    alice = shared_server.api("alice")
    cases = [
        ({"security_group": {"name": 7}}, "Invalid input for name"),
        ({"security_group": {"name": "x", "shared": True}}, "Unrecognized attribute(s) 'shared'"),
        ({"security_group": {"name": "x" * 256}}, "exceeds maximum length of 255"),
        ({"security_group": {"stateful": "maybe"}}, "cannot be converted to boolean"),
        ({"sg": {}}, "Resource body required"),
    ]
    for body, text in cases:
        r = alice.post("/security-groups", json=body)
        assert r.status_code == 400, (body, r.text)
        assert text in err(r)["message"]
    r = alice.post("/security-groups", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and err(r)["type"] == "MalformedRequestBody"


def test_bulk_create_groups_is_all_or_nothing(shared_server: Any) -> None:
    alice = shared_server.api("alice")
    names = [f"bulk-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    r = alice.post("/security-groups", json={"security_groups": [{"name": n} for n in names]})
    assert r.status_code == 201, r.text
    made = r.json()["security_groups"]
    assert [g["name"] for g in made] == names
    assert all(len(g["security_group_rules"]) == 2 for g in made)
    bad = f"bulk-{uuid.uuid4().hex[:6]}"
    r = alice.post("/security-groups", json={"security_groups": [{"name": bad}, {"name": "default"}]})
    assert r.status_code == 409
    assert groups_named(alice, bad) == []


def test_update_group_bumps_revision_and_honours_if_match(shared_server: Any) -> None:
    alice = shared_server.api("alice")
    g = make_group(alice)
    r = alice.put(f"/security-groups/{g['id']}", json={"security_group": {"name": "renamed", "description": "d"}})
    assert r.status_code == 200
    up = r.json()["security_group"]
    assert (up["name"], up["description"], up["revision_number"]) == ("renamed", "d", 1)
    assert len(up["security_group_rules"]) == 2
    r = alice.put(f"/security-groups/{g['id']}", json={"security_group": {"name": "x"}},
                  headers={"If-Match": "revision_number=0"})
    assert r.status_code == 412 and err(r)["type"] == "PreconditionFailed"
    r = alice.put(f"/security-groups/{g['id']}", json={"security_group": {"name": "x"}},
                  headers={"If-Match": "revision_number=1"})
    assert r.status_code == 200 and r.json()["security_group"]["revision_number"] == 2
    r = alice.put(f"/security-groups/{g['id']}", json={"security_group": {"project_id": "other"}})
    assert r.status_code == 400
    r = alice.put(f"/security-groups/{g['id']}", json={"security_group": {}})
    assert r.status_code == 400


def test_delete_group_deletes_its_rules_and_rules_naming_it_as_remote(shared_server: Any) -> None:
    alice = shared_server.api("alice")
    g = make_group(alice)
    other = make_group(alice)
    own = make_rule(alice, g["id"], protocol="tcp", port_range_min=22, port_range_max=22)
    remote = make_rule(alice, other["id"], protocol="udp", remote_group_id=g["id"])
    assert own.status_code == remote.status_code == 201
    rev = show_group(alice, other["id"])["revision_number"]
    assert alice.delete(f"/security-groups/{g['id']}").status_code == 204
    assert alice.get(f"/security-groups/{g['id']}").status_code == 404
    listed = {r["id"] for r in alice.get("/security-group-rules").json()["security_group_rules"]}
    for rule_id in [own.json()["security_group_rule"]["id"], remote.json()["security_group_rule"]["id"],
                    *(r["id"] for r in g["security_group_rules"])]:
        assert rule_id not in listed
        assert alice.get(f"/security-group-rules/{rule_id}").status_code == 404
    after = show_group(alice, other["id"])
    assert after["revision_number"] > rev and len(after["security_group_rules"]) == 2
    r = alice.delete(f"/security-groups/{g['id']}")
    assert r.status_code == 404
    assert err(r) == {"type": "SecurityGroupNotFound", "message": f"Security group {g['id']} does not exist",
                      "detail": ""}


def test_group_used_by_a_port_cannot_be_deleted_or_made_stateless(server: Any) -> None:
    alice = server.api("alice")
    g = make_group(alice)
    port_id = fake_port(server, g["project_id"], [g["id"]])
    r = alice.delete(f"/security-groups/{g['id']}")
    assert r.status_code == 409
    assert err(r) == {"type": "SecurityGroupInUse", "message": f"Security Group {g['id']} in use.", "detail": ""}
    r = alice.put(f"/security-groups/{g['id']}", json={"security_group": {"stateful": False}})
    assert r.status_code == 409 and err(r)["type"] == "SecurityGroupInUse"
    assert alice.put(f"/security-groups/{g['id']}", json={"security_group": {"name": "n"}}).status_code == 200
    # nothing was removed by the failed delete
    assert len(show_group(alice, g["id"])["security_group_rules"]) == 2
    store_delete(server.store, f"/vxnet/res/ports/{port_id}")
    assert alice.delete(f"/security-groups/{g['id']}").status_code == 204


def test_group_used_by_a_port_created_through_the_api(server: Any) -> None:
    alice = server.api("alice")
    net = alice.post("/networks", json={"network": {"name": "n"}}).json()["network"]
    g = make_group(alice)
    r = alice.post("/ports", json={"port": {"network_id": net["id"], "security_groups": [g["id"]]}})
    assert r.status_code == 201, r.text
    port = r.json()["port"]
    assert port["security_groups"] == [g["id"]]
    assert alice.delete(f"/security-groups/{g['id']}").status_code == 409
    # a port created without groups gets the project's default group, which is then in use too
    plain = alice.post("/ports", json={"port": {"network_id": net["id"]}}).json()["port"]
    default = groups_named(alice, "default")
    assert plain["security_groups"] == [default[0]["id"]]
    assert server.api("admin").delete(f"/security-groups/{default[0]['id']}").status_code == 409
    assert alice.delete(f"/ports/{port['id']}").status_code == 204
    assert alice.delete(f"/security-groups/{g['id']}").status_code == 204


def test_list_groups_filters_fields_sorting_and_pagination(shared_server: Any) -> None:
    alice = shared_server.api("alice")
    tag = uuid.uuid4().hex[:6]
    made = [make_group(alice, f"page-{tag}-{i}") for i in range(3)]
    r = alice.get("/security-groups", params=[("name", made[0]["name"]), ("name", made[2]["name"]),
                                              ("fields", "id"), ("fields", "name")])
    body = r.json()["security_groups"]
    assert sorted(g["name"] for g in body) == sorted([made[0]["name"], made[2]["name"]])
    assert all(set(g) == {"id", "name"} for g in body)
    r = alice.get("/security-groups", params={"fields": "security_group_rules", "id": made[1]["id"]})
    assert [len(g["security_group_rules"]) for g in r.json()["security_groups"]] == [2]
    names = [f"page-{tag}-{i}" for i in range(3)]
    r = alice.get("/security-groups", params=[*[("name", n) for n in names], ("sort_key", "name"),
                                              ("sort_dir", "desc"), ("limit", "2")])
    page = r.json()
    assert [g["name"] for g in page["security_groups"]] == names[::-1][:2]
    assert any(link["rel"] == "next" for link in page["security_groups_links"])


# ---------------------------------------------------------------------------------------------
# rules: accepted forms

@pytest.mark.parametrize(("given", "expected"), [
    ({"protocol": "tcp", "port_range_min": 22, "port_range_max": 22},
     {"protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "ethertype": "IPv4"}),
    ({"protocol": "TCP", "port_range_min": "80", "port_range_max": "8080"},
     {"protocol": "tcp", "port_range_min": 80, "port_range_max": 8080}),
    ({"protocol": 17}, {"protocol": "17"}),
    ({"protocol": "132", "port_range_min": 1, "port_range_max": 65535}, {"protocol": "132"}),
    ({"protocol": "any"}, {"protocol": None}),
    ({"protocol": None}, {"protocol": None}),
    ({"protocol": "icmp", "port_range_min": 8, "port_range_max": 0}, {"protocol": "icmp", "port_range_min": 8}),
    ({"protocol": "icmp", "port_range_min": 11}, {"port_range_min": 11, "port_range_max": None}),
    ({"protocol": "icmp", "ethertype": "IPv6"}, {"protocol": "ipv6-icmp", "ethertype": "IPv6"}),
    ({"protocol": "icmpv6", "ethertype": "ipv6"}, {"protocol": "ipv6-icmp", "ethertype": "IPv6"}),
    ({"protocol": "1", "ethertype": "IPv6"}, {"protocol": "58"}),
    ({"protocol": "ipv6-icmp", "ethertype": "IPv6", "port_range_min": 135, "port_range_max": 0},
     {"protocol": "ipv6-icmp", "port_range_min": 135}),
    ({"protocol": "gre"}, {"protocol": "gre"}),
    ({"protocol": "vrrp", "direction": "egress"}, {"protocol": "vrrp", "direction": "egress"}),
    ({"remote_ip_prefix": "192.0.2.7"}, {"remote_ip_prefix": "192.0.2.7/32", "normalized_cidr": "192.0.2.7/32"}),
    ({"remote_ip_prefix": "192.0.2.7/24"}, {"remote_ip_prefix": "192.0.2.7/24", "normalized_cidr": "192.0.2.0/24"}),
    ({"ethertype": "IPv6", "remote_ip_prefix": "2001:db8::/64"}, {"remote_ip_prefix": "2001:db8::/64"}),
    ({"description": "ssh from anywhere", "protocol": "tcp", "port_range_min": 2222, "port_range_max": 2222},
     {"description": "ssh from anywhere"}),
])
def test_create_rule_accepts_neutrons_forms(shared_server: Any, given: dict[str, Any],
                                            expected: dict[str, Any]) -> None:
    alice = shared_server.api("alice")
    g = make_group(alice)
    r = make_rule(alice, g["id"], **given)
    assert r.status_code == 201, r.text
    rule = r.json()["security_group_rule"]
    for k, v in expected.items():
        assert rule[k] == v, (k, rule)
    assert set(rule) >= {"id", "security_group_id", "direction", "ethertype", "protocol", "port_range_min",
                         "port_range_max", "remote_ip_prefix", "remote_group_id", "normalized_cidr",
                         "remote_address_group_id", "belongs_to_default_sg", "description", "project_id",
                         "tenant_id", "created_at", "updated_at", "revision_number"}
    shown = alice.get(f"/security-group-rules/{rule['id']}").json()["security_group_rule"]
    assert shown == rule
    assert rule in show_group(alice, g["id"])["security_group_rules"]


def test_rule_with_remote_group(shared_server: Any) -> None:
    alice = shared_server.api("alice")
    g, peer = make_group(alice), make_group(alice)
    r = make_rule(alice, g["id"], protocol="udp", port_range_min=50, port_range_max=55, remote_group_id=peer["id"])
    assert r.status_code == 201
    assert r.json()["security_group_rule"]["remote_group_id"] == peer["id"]
    assert make_rule(alice, g["id"], remote_group_id=g["id"]).status_code == 201


# ---------------------------------------------------------------------------------------------
# rules: refused forms (tempest's cases and Neutron's wording)

@pytest.mark.parametrize(("given", "type_", "text"), [
    ({"protocol": "tcp", "port_range_min": -16, "port_range_max": 80},
     "SecurityGroupInvalidPortValue", "Invalid value for port -16"),
    ({"protocol": "tcp", "port_range_min": 80, "port_range_max": 79},
     "SecurityGroupInvalidPortRange", "For TCP/UDP protocols, port_range_min must be <= port_range_max"),
    ({"protocol": "tcp", "port_range_min": 80, "port_range_max": 65536},
     "SecurityGroupInvalidPortValue", "Invalid value for port 65536"),
    ({"protocol": "tcp", "port_range_max": 6}, "SecurityGroupInvalidPortRange", "port_range_min must be <= port_range_max"),
    ({"protocol": "udp", "port_range_min": 6}, "SecurityGroupInvalidPortRange", "port_range_min must be <= port_range_max"),
    ({"protocol": "tcp", "port_range_min": 0, "port_range_max": 10}, "SecurityGroupInvalidPortValue", "Invalid value for port 0"),
    ({"protocol": "tcp", "port_range_min": "eighty", "port_range_max": 80},
     "SecurityGroupInvalidPortValue", "Invalid value for port eighty"),
    ({"protocol": "icmp", "port_range_min": 1, "port_range_max": 256}, "SecurityGroupInvalidIcmpValue",
     "Invalid value for ICMP code (port_range_max) 256. It must be 0 to 255."),
    ({"protocol": "icmp", "port_range_min": -1, "port_range_max": 25}, "SecurityGroupInvalidPortValue", "Invalid value"),
    ({"protocol": "icmp", "port_range_max": 6}, "SecurityGroupMissingIcmpType",
     "ICMP code (port-range-max) 6 is provided but ICMP type (port-range-min) is missing."),
    ({"protocol": "icmp", "port_range_min": 300, "port_range_max": 1}, "SecurityGroupInvalidIcmpValue",
     "Invalid value for ICMP type (port_range_min) 300"),
    ({"protocol": "gre", "port_range_min": 1, "port_range_max": 2}, "SecurityGroupInvalidProtocolForPort",
     "Ports cannot be specified for protocol 47"),
    ({"port_range_min": 1, "port_range_max": 2}, "SecurityGroupProtocolRequiredWithPorts",
     "Must also specify protocol if port range is given."),
    ({"protocol": "bad_protocol_name"}, "SecurityGroupRuleInvalidProtocol",
     "Security group rule protocol bad_protocol_name not supported."),
    ({"protocol": 256}, "SecurityGroupRuleInvalidProtocol", "integer representations [0 to 255]"),
    ({"protocol": "-1"}, "SecurityGroupRuleInvalidProtocol", "protocol -1 not supported"),
    ({"protocol": ["tcp"]}, "SecurityGroupRuleInvalidProtocol", "not supported"),
    ({"ethertype": "bad_ethertype", "protocol": "udp"}, "SecurityGroupRuleInvalidEtherType",
     "Security group rule for ethertype 'bad_ethertype' not supported. Allowed values are ['IPv4', 'IPv6']."),
    ({"remote_ip_prefix": "192.168.1./24"}, "InvalidCIDR", "Invalid CIDR 192.168.1./24 given as IP prefix."),
    ({"remote_ip_prefix": "192.168.1.1/33"}, "InvalidCIDR", "Invalid CIDR"),
    ({"remote_ip_prefix": "bad_prefix"}, "InvalidCIDR", "Invalid CIDR"),
    ({"remote_ip_prefix": "256"}, "InvalidCIDR", "Invalid CIDR"),
    ({"remote_ip_prefix": 10}, "InvalidCIDR", "Invalid CIDR"),
    ({"ethertype": "IPv6", "remote_ip_prefix": "192.0.2.0/24"}, "SecurityGroupRuleParameterConflict",
     "Conflicting value ethertype IPv6 for CIDR 192.0.2.0/24"),
    ({"ethertype": "IPv4", "remote_ip_prefix": "::/0"}, "SecurityGroupRuleParameterConflict",
     "Conflicting value ethertype IPv4 for CIDR ::/0"),
    ({"ethertype": "IPv4", "protocol": "ipv6-icmp"}, "SecurityGroupEthertypeConflictWithProtocol",
     "Invalid ethertype IPv4 for protocol ipv6-icmp."),
    ({"direction": "sideways"}, "BadRequest", "Invalid input for direction. Reason: 'sideways' is not in"),
    ({"remote_ip_prefix": "192.0.2.0/24", "remote_group_id": "SELF"}, "SecurityGroupRemoteGroupAndRemoteIpPrefix",
     "Only remote_ip_prefix or remote_group_id may be provided."),
    ({"color": "blue"}, "BadRequest", "Unrecognized attribute(s) 'color'"),
    ({"remote_address_group_id": str(uuid.UUID(int=1))}, "BadRequest", "not supported"),
])
def test_create_rule_refusals_are_neutrons_400s(shared_server: Any, given: dict[str, Any], type_: str,
                                                text: str) -> None:
    alice = shared_server.api("alice")
    g = make_group(alice)
    if given.get("remote_group_id") == "SELF":
        given = {**given, "remote_group_id": g["id"]}
    r = make_rule(alice, g["id"], **given)
    assert r.status_code == 400, r.text
    e = err(r)
    assert e["type"] == type_ and text in e["message"], e
    assert len(show_group(alice, g["id"])["security_group_rules"]) == 2
    assert show_group(alice, g["id"])["revision_number"] == 0


def test_rule_requires_direction_and_group(shared_server: Any) -> None:
    alice = shared_server.api("alice")
    g = make_group(alice)
    r = alice.post("/security-group-rules", json={"security_group_rule": {"security_group_id": g["id"]}})
    assert r.status_code == 400 and "Required attribute 'direction'" in err(r)["message"]
    r = alice.post("/security-group-rules", json={"security_group_rule": {"direction": "ingress"}})
    assert r.status_code == 400 and "Required attribute 'security_group_id'" in err(r)["message"]


def test_rule_on_missing_group_or_with_missing_remote_group_is_404(shared_server: Any) -> None:
    alice = shared_server.api("alice")
    missing = str(uuid.uuid4())
    r = make_rule(alice, missing)
    assert r.status_code == 404
    assert err(r) == {"type": "SecurityGroupNotFound", "message": f"Security group {missing} does not exist",
                      "detail": ""}
    g = make_group(alice)
    for remote in ("bad_group_id", missing):
        r = make_rule(alice, g["id"], protocol="tcp", remote_group_id=remote)
        assert r.status_code == 404 and err(r)["type"] == "SecurityGroupNotFound", r.text


def test_duplicate_rules_are_409(shared_server: Any) -> None:
    alice = shared_server.api("alice")
    g = make_group(alice)
    first = make_rule(alice, g["id"], protocol="tcp", port_range_min=66, port_range_max=67)
    assert first.status_code == 201
    rid = first.json()["security_group_rule"]["id"]
    # same rule, written differently: protocol by number, case, a description
    for again in ({"protocol": "tcp"}, {"protocol": "6"}, {"protocol": "TCP", "description": "x"}):
        r = make_rule(alice, g["id"], port_range_min=66, port_range_max=67, **again)
        assert r.status_code == 409, r.text
        assert err(r) == {"type": "SecurityGroupRuleExists",
                          "message": f"Security group rule already exists. Rule id is {rid}.", "detail": ""}
    # an explicit 0.0.0.0/0 is the same as no remote: the automatic egress rule exists already
    egress_v4 = next(r for r in g["security_group_rules"] if r["ethertype"] == "IPv4")
    r = make_rule(alice, g["id"], direction="egress", remote_ip_prefix="0.0.0.0/0")
    assert r.status_code == 409 and egress_v4["id"] in err(r)["message"]
    r = make_rule(alice, g["id"], direction="egress", ethertype="IPv6", remote_ip_prefix="::/0")
    assert r.status_code == 409
    # a different port range or direction is not a duplicate
    assert make_rule(alice, g["id"], protocol="tcp", port_range_min=66, port_range_max=68).status_code == 201
    assert make_rule(alice, g["id"], protocol="tcp", port_range_min=66, port_range_max=67,
                     direction="egress").status_code == 201


def test_concurrent_identical_rules_create_exactly_one(server: Any) -> None:
    alice = server.api("alice")
    g = make_group(alice)

    def create(c: httpx.Client, _: int) -> int:
        return make_rule(c, g["id"], protocol="tcp", port_range_min=443, port_range_max=443).status_code

    codes = run_on_both(server, "alice", create, 10)
    assert sorted(codes) == [201] + [409] * 9
    rules = show_group(alice, g["id"])["security_group_rules"]
    assert sum(1 for r in rules if r["port_range_min"] == 443) == 1


def test_bulk_rules(shared_server: Any) -> None:
    alice = shared_server.api("alice")
    g, other = make_group(alice), make_group(alice)
    body = {"security_group_rules": [
        {"security_group_id": g["id"], "direction": "ingress", "protocol": "tcp", "port_range_min": 80,
         "port_range_max": 80},
        {"security_group_id": g["id"], "direction": "ingress", "protocol": "tcp", "port_range_min": 443,
         "port_range_max": 443},
    ]}
    r = alice.post("/security-group-rules", json=body)
    assert r.status_code == 201, r.text
    made = r.json()["security_group_rules"]
    assert [x["port_range_min"] for x in made] == [80, 443]
    after = show_group(alice, g["id"])
    assert after["revision_number"] == 1 and len(after["security_group_rules"]) == 4
    # the same rule twice in one request
    dup = {"security_group_rules": [body["security_group_rules"][0] | {"port_range_min": 81, "port_range_max": 81}] * 2}
    r = alice.post("/security-group-rules", json=dup)
    assert r.status_code == 409
    assert err(r) == {"type": "DuplicateSecurityGroupRuleInPost", "message": "Duplicate Security Group Rule in POST.",
                      "detail": ""}
    # one request, one group
    mixed = {"security_group_rules": [
        {"security_group_id": g["id"], "direction": "ingress", "protocol": "udp"},
        {"security_group_id": other["id"], "direction": "ingress", "protocol": "udp"},
    ]}
    r = alice.post("/security-group-rules", json=mixed)
    assert r.status_code == 400 and err(r)["type"] == "SecurityGroupNotSingleGroupRules"
    # a bad rule anywhere in the list fails the whole request
    bad = {"security_group_rules": [
        {"security_group_id": g["id"], "direction": "ingress", "protocol": "udp"},
        {"security_group_id": g["id"], "direction": "ingress", "protocol": "nope"},
    ]}
    assert alice.post("/security-group-rules", json=bad).status_code == 400
    final = show_group(alice, g["id"])
    assert final["revision_number"] == 1 and len(final["security_group_rules"]) == 4


def test_rule_create_and_delete_bump_the_group_revision(shared_server: Any) -> None:
    alice = shared_server.api("alice")
    g = make_group(alice)
    r = make_rule(alice, g["id"], protocol="tcp", port_range_min=60, port_range_max=70)
    rule = r.json()["security_group_rule"]
    one = show_group(alice, g["id"])
    assert one["revision_number"] == 1
    assert alice.delete(f"/security-group-rules/{rule['id']}").status_code == 204
    two = show_group(alice, g["id"])
    assert two["revision_number"] == 2
    assert rule["id"] not in {x["id"] for x in two["security_group_rules"]}
    r = alice.delete(f"/security-group-rules/{rule['id']}")
    assert r.status_code == 404
    assert err(r) == {"type": "SecurityGroupRuleNotFound",
                      "message": f"Security group rule {rule['id']} does not exist", "detail": ""}


def test_rules_cannot_change_except_description(shared_server: Any) -> None:
    alice = shared_server.api("alice")
    g = make_group(alice)
    rule = make_rule(alice, g["id"], protocol="tcp").json()["security_group_rule"]
    r = alice.put(f"/security-group-rules/{rule['id']}", json={"security_group_rule": {"direction": "egress"}})
    assert r.status_code == 400 and "Cannot update read-only attribute direction" in err(r)["message"]
    r = alice.put(f"/security-group-rules/{rule['id']}", json={"security_group_rule": {"description": "why"}})
    assert r.status_code == 200
    up = r.json()["security_group_rule"]
    assert up["description"] == "why" and up["revision_number"] == 1 and up["direction"] == "ingress"


def test_rule_list_filters(shared_server: Any) -> None:
    alice = shared_server.api("alice")
    g = make_group(alice)
    make_rule(alice, g["id"], protocol="tcp", port_range_min=1, port_range_max=2)
    make_rule(alice, g["id"], protocol="udp")
    r = alice.get("/security-group-rules", params={"security_group_id": g["id"], "direction": "ingress"})
    assert sorted(x["protocol"] for x in r.json()["security_group_rules"]) == ["tcp", "udp"]
    r = alice.get("/security-group-rules", params={"security_group_id": g["id"], "protocol": "udp",
                                                   "fields": "protocol"})
    assert r.json()["security_group_rules"] == [{"protocol": "udp"}]
    r = alice.get("/security-group-rules", params={"security_group_id": g["id"], "direction": "egress"})
    assert len(r.json()["security_group_rules"]) == 2


# ---------------------------------------------------------------------------------------------
# policy and isolation

def test_reader_reads_but_cannot_write(shared_server: Any) -> None:
    alice, reader = shared_server.api("alice"), shared_server.api("alice_reader")
    g = make_group(alice)
    rule = make_rule(alice, g["id"], protocol="tcp").json()["security_group_rule"]
    assert reader.get(f"/security-groups/{g['id']}").status_code == 200
    assert reader.get(f"/security-group-rules/{rule['id']}").status_code == 200
    assert g["id"] in {x["id"] for x in reader.get("/security-groups").json()["security_groups"]}
    writes = [
        reader.post("/security-groups", json={"security_group": {"name": "r"}}),
        reader.put(f"/security-groups/{g['id']}", json={"security_group": {"name": "r"}}),
        reader.delete(f"/security-groups/{g['id']}"),
        make_rule(reader, g["id"], protocol="udp"),
        reader.put(f"/security-group-rules/{rule['id']}", json={"security_group_rule": {"description": "r"}}),
        reader.delete(f"/security-group-rules/{rule['id']}"),
    ]
    for r in writes:
        assert r.status_code == 403, r.text
        assert err(r)["type"] == "PolicyNotAuthorized"
    after = show_group(alice, g["id"])
    assert after["name"] == g["name"] and len(after["security_group_rules"]) == 3


def test_other_project_sees_nothing(shared_server: Any) -> None:
    alice, bob = shared_server.api("alice"), shared_server.api("bob")
    g = make_group(alice)
    rule = make_rule(alice, g["id"], protocol="tcp").json()["security_group_rule"]
    bob_group = make_group(bob)
    assert g["id"] not in {x["id"] for x in bob.get("/security-groups").json()["security_groups"]}
    bob_rules = {x["id"] for x in bob.get("/security-group-rules").json()["security_group_rules"]}
    assert rule["id"] not in bob_rules and not bob_rules & {x["id"] for x in g["security_group_rules"]}
    for r in (bob.get(f"/security-groups/{g['id']}"),
              bob.put(f"/security-groups/{g['id']}", json={"security_group": {"name": "b"}}),
              bob.delete(f"/security-groups/{g['id']}"),
              make_rule(bob, g["id"], protocol="udp"),
              make_rule(bob, bob_group["id"], protocol="udp", remote_group_id=g["id"])):
        assert r.status_code == 404, r.text
        assert err(r)["type"] == "SecurityGroupNotFound"
    for r in (bob.get(f"/security-group-rules/{rule['id']}"), bob.delete(f"/security-group-rules/{rule['id']}"),
              bob.put(f"/security-group-rules/{rule['id']}", json={"security_group_rule": {"description": "b"}})):
        assert r.status_code == 404 and err(r)["type"] == "SecurityGroupRuleNotFound"
    # naming another project needs admin (400, as neutron-lib's populate_project_id)
    r = bob.post("/security-groups", json={"security_group": {"name": "x", "project_id": g["project_id"]}})
    assert r.status_code == 400 and err(r)["type"] == "HTTPBadRequest"
    assert show_group(alice, g["id"])["revision_number"] == 1


def test_admin_sees_and_changes_every_project(shared_server: Any) -> None:
    alice, admin = shared_server.api("alice"), shared_server.api("admin")
    g = make_group(alice)
    assert g["id"] in {x["id"] for x in admin.get("/security-groups").json()["security_groups"]}
    r = make_rule(admin, g["id"], protocol="tcp", port_range_min=5, port_range_max=5)
    assert r.status_code == 201
    rule = r.json()["security_group_rule"]
    assert rule["project_id"] == g["project_id"]
    assert alice.get(f"/security-group-rules/{rule['id']}").status_code == 200
    made = admin.post("/security-groups", json={"security_group": {"name": "for-alice",
                                                                   "project_id": g["project_id"]}})
    assert made.status_code == 201 and made.json()["security_group"]["project_id"] == g["project_id"]
    assert alice.get(f"/security-groups/{made.json()['security_group']['id']}").status_code == 200
    assert admin.put(f"/security-groups/{g['id']}", json={"security_group": {"description": "a"}}).status_code == 200
    assert admin.delete(f"/security-groups/{g['id']}").status_code == 204
    assert alice.get(f"/security-groups/{g['id']}").status_code == 404


def test_unauthenticated_requests_are_401(shared_server: Any) -> None:
    r = http.get(shared_server.url + "/v2.0/security-groups")
    assert r.status_code == 401 and err(r)["type"] == "Unauthorized"
