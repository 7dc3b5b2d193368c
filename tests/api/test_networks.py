"""/v2.0/networks over real HTTP: shape and defaults, the query language (filters, fields,
sorting, pagination as the SDK walks it), bulk create, If-Match, admin-only attributes,
shared/external visibility, the isolation matrix, VNI allocation and error bodies.

Tests on `shared_server` create their own objects and find them by id or by a tag unique to
the test, so they never depend on one another.
"""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.api.helpers import assert_error, subnet
from tests.support import http
from vxnet.config import project_id_for

TENANT_A = project_id_for("tenant-a")
TENANT_B = project_id_for("tenant-b")
ADMIN_P = project_id_for("admin")
PROVIDER = ("provider:network_type", "provider:physical_network", "provider:segmentation_id")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def tag() -> str:
    return "t-" + uuid.uuid4().hex[:10]



def create(c: httpx.Client, **attrs: Any) -> dict[str, Any]:
    r = c.post("/networks", json={"network": attrs})
    assert r.status_code == 201, r.text
    return r.json()["network"]


def ids(body: dict[str, Any], key: str = "networks") -> list[str]:
    return [n["id"] for n in body[key]]


def walk(c: httpx.Client, params: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """List the way openstacksdk does: follow `next` links until a page is empty or has no
    `next`. Returns the objects and the number of GETs."""
    r = c.get("/networks", params=params)
    assert r.status_code == 200, r.text
    out, gets = [], 1
    while True:
        body = r.json()
        out.extend(body["networks"])
        nxt = [link["href"] for link in body.get("networks_links", []) if link["rel"] == "next"]
        if not body["networks"] or not nxt:
            return out, gets
        r = c.get(nxt[0])
        gets += 1
        assert r.status_code == 200, r.text


# --- shape and defaults --------------------------------------------------------------------------


def test_create_defaults_as_member(shared_server) -> None:
    alice = shared_server.api("alice")
    r = alice.post("/networks", json={"network": {"name": "net1", "admin_state_up": True}})
    assert r.status_code == 201, r.text
    net = r.json()["network"]
    uuid.UUID(net["id"])
    expected = {
        "name": "net1", "description": "", "admin_state_up": True, "status": "ACTIVE", "subnets": [],
        "shared": False, "router:external": False, "mtu": 1450, "port_security_enabled": True,
        "project_id": TENANT_A, "tenant_id": TENANT_A, "tags": [], "revision_number": 0,
        "availability_zone_hints": [],
    }
    assert {k: net[k] for k in expected} == expected
    assert TIMESTAMP.match(net["created_at"]) and TIMESTAMP.match(net["updated_at"])
    assert not set(PROVIDER) & set(net), "provider attributes are admin-only"
    shown = alice.get(f"/networks/{net['id']}")
    assert shown.status_code == 200
    assert shown.json()["network"] == net


def test_admin_sees_provider_attributes_and_a_vni(shared_server) -> None:
    admin, alice = shared_server.api("admin"), shared_server.api("alice")
    mine = create(alice, name="p")
    net = admin.get(f"/networks/{mine['id']}").json()["network"]
    assert net["provider:network_type"] == "vxlan"
    assert net["provider:physical_network"] is None
    assert 1 <= net["provider:segmentation_id"] < 2**24
    listed = [n for n in admin.get("/networks", params={"id": mine["id"]}).json()["networks"]]
    assert listed[0]["provider:segmentation_id"] == net["provider:segmentation_id"]
    for_member = alice.get("/networks", params={"id": mine["id"]}).json()["networks"][0]
    assert not set(PROVIDER) & set(for_member)


def test_update_bumps_revision_and_keeps_other_attributes(shared_server) -> None:
    alice = shared_server.api("alice")
    net = create(alice, name="before", description="d")
    r = alice.put(f"/networks/{net['id']}", json={"network": {"name": "after", "admin_state_up": False}})
    assert r.status_code == 200, r.text
    up = r.json()["network"]
    assert (up["name"], up["admin_state_up"], up["description"]) == ("after", False, "d")
    assert up["revision_number"] == 1
    assert up["created_at"] == net["created_at"] and up["updated_at"] >= net["updated_at"]
    assert alice.get(f"/networks/{net['id']}").json()["network"] == up


def test_delete_then_404(shared_server) -> None:
    alice = shared_server.api("alice")
    net = create(alice)
    assert alice.delete(f"/networks/{net['id']}").status_code == 204
    assert_error(alice.get(f"/networks/{net['id']}"), 404, "NetworkNotFound",
                 f"Network {net['id']} could not be found.")
    assert_error(alice.delete(f"/networks/{net['id']}"), 404, "NetworkNotFound")
    assert_error(alice.put(f"/networks/{net['id']}", json={"network": {"name": "x"}}), 404, "NetworkNotFound")


def test_mtu_limits(shared_server) -> None:
    alice = shared_server.api("alice")
    assert create(alice, mtu=1400)["mtu"] == 1400
    assert_error(alice.post("/networks", json={"network": {"mtu": 1451}}), 400, message="MTU is too big")
    assert_error(alice.post("/networks", json={"network": {"mtu": -1}}), 400)
    assert create(alice, mtu=0)["mtu"] == 1450  # 0: the default
    net = create(alice)
    assert_error(alice.put(f"/networks/{net['id']}", json={"network": {"mtu": 9000}}), 400)
    r = alice.put(f"/networks/{net['id']}", json={"network": {"mtu": 1300}})
    assert r.status_code == 200 and r.json()["network"]["mtu"] == 1300


def test_mtu_below_ipv4_minimum_refuses_ipv4_subnets(shared_server) -> None:
    """neutron-tempest-plugin's test_create_subnet_mtu_below_minimum_ipv4 and
    test_update_network_mtu_below_minimum_ipv4: a network may have MTU 67, but then no IPv4
    subnet (409), and a network with an IPv4 subnet cannot go below 68 (409)."""
    alice, admin = shared_server.api("alice"), shared_server.api("admin")
    tiny = create(alice, mtu=67)
    assert tiny["mtu"] == 67 and alice.get(f"/networks/{tiny['id']}").json()["network"]["mtu"] == 67
    body = {"subnet": {"network_id": tiny["id"], "ip_version": 4, "cidr": "192.0.2.0/24"}}
    err = assert_error(alice.post("/subnets", json=body), 409)
    assert "below the minimum MTU of IPv4 (68)" in err["message"]
    assert alice.get("/subnets", params={"network_id": tiny["id"]}).json()["subnets"] == []
    assert alice.get(f"/networks/{tiny['id']}").json()["network"]["subnets"] == []
    # raised to 68 it may have one
    assert alice.put(f"/networks/{tiny['id']}", json={"network": {"mtu": 68}}).status_code == 200
    sub = alice.post("/subnets", json=body)
    assert sub.status_code == 201, sub.text
    # and with it, cannot go below again; nothing changes
    net = alice.get(f"/networks/{tiny['id']}").json()["network"]
    assert_error(alice.put(f"/networks/{tiny['id']}", json={"network": {"mtu": 67}}), 409)
    assert alice.get(f"/networks/{tiny['id']}").json()["network"] == net
    # the same for an admin
    assert_error(admin.put(f"/networks/{tiny['id']}", json={"network": {"mtu": 1}}), 409)


# --- filters, fields, sorting --------------------------------------------------------------------


def test_filters_repeated_keys_are_or_and_booleans(shared_server) -> None:
    alice = shared_server.api("alice")
    t = tag()
    a = create(alice, name="fa", tags=[t])
    b = create(alice, name="fb", tags=[t], admin_state_up=False)
    create(alice, name="fc", tags=[t])
    r = alice.get("/networks", params=[("tags", t), ("name", "fa"), ("name", "fb")])
    assert sorted(ids(r.json())) == sorted([a["id"], b["id"]])
    for true in ("True", "true", "1"):
        r = alice.get("/networks", params={"tags": t, "admin_state_up": true})
        assert sorted(n["name"] for n in r.json()["networks"]) == ["fa", "fc"], true
    r = alice.get("/networks", params={"tags": t, "admin_state_up": "False"})
    assert ids(r.json()) == [b["id"]]
    r = alice.get("/networks", params={"tags": t, "name": "nothing-like-this"})
    assert r.json()["networks"] == []
    r = alice.get("/networks", params={"tags": t, "project_id": TENANT_A})
    assert len(r.json()["networks"]) == 3
    r = alice.get("/networks", params={"tags": t, "tenant_id": TENANT_B})
    assert r.json()["networks"] == []


def test_tag_filters(shared_server) -> None:
    alice = shared_server.api("alice")
    t = tag()
    ab = create(alice, name="ab", tags=[t, "a", "b"])
    a = create(alice, name="a", tags=[t, "a"])
    none = create(alice, name="none", tags=[t])

    def names(**params: str) -> list[str]:
        r = alice.get("/networks", params={"tags-any": t, **params})
        assert r.status_code == 200, r.text
        return sorted(n["name"] for n in r.json()["networks"])

    assert names(tags="a,b") == ["ab"]
    assert names(tags="a") == ["a", "ab"]
    assert names(**{"not-tags": "a,b"}) == ["a", "none"]
    assert names(**{"not-tags-any": "a"}) == ["none"]
    assert names(**{"tags-any": "b"}) == ["ab"]
    assert {ab["id"], a["id"], none["id"]} <= set(ids(alice.get("/networks").json()))


def test_fields_selects_attributes(shared_server) -> None:
    alice = shared_server.api("alice")
    net = create(alice, name="fields")
    r = alice.get("/networks", params=[("id", net["id"]), ("fields", "id"), ("fields", "name")])
    assert r.json()["networks"] == [{"id": net["id"], "name": "fields"}]
    r = alice.get("/networks", params={"id": net["id"], "fields": "id,shared"})
    assert r.json()["networks"] == [{"id": net["id"], "shared": False}]
    r = alice.get(f"/networks/{net['id']}", params={"fields": "status"})
    assert r.json() == {"network": {"status": "ACTIVE"}}
    # a member cannot read admin-only attributes through `fields`
    r = alice.get(f"/networks/{net['id']}", params=[("fields", "id"), ("fields", "provider:segmentation_id")])
    assert r.json() == {"network": {"id": net["id"]}}


def test_sorting(shared_server) -> None:
    alice = shared_server.api("alice")
    t = tag()
    for name, up in (("b", True), ("c", False), ("a", True), ("b", False)):
        create(alice, name=name, tags=[t], admin_state_up=up)
    r = alice.get("/networks", params={"tags": t, "sort_key": "name", "sort_dir": "desc"})
    assert [n["name"] for n in r.json()["networks"]] == ["c", "b", "b", "a"]
    r = alice.get("/networks", params=[("tags", t), ("sort_key", "admin_state_up"), ("sort_dir", "asc"),
                                       ("sort_key", "name"), ("sort_dir", "desc")])
    assert [(n["admin_state_up"], n["name"]) for n in r.json()["networks"]] == [
        (False, "c"), (False, "b"), (True, "b"), (True, "a")]
    r = alice.get("/networks", params={"tags": t, "sort_key": "name"})
    assert [n["name"] for n in r.json()["networks"]] == ["a", "b", "b", "c"]
    assert_error(alice.get("/networks", params={"sort_key": "bogus"}), 400, message="bogus")
    assert_error(alice.get("/networks", params={"sort_key": "name", "sort_dir": "sideways"}), 400)
    assert_error(alice.get("/networks", params=[("sort_key", "name"), ("sort_dir", "asc"), ("sort_dir", "desc")]),
                 400)


# --- pagination ----------------------------------------------------------------------------------


def test_pagination_follows_next_like_the_sdk(server) -> None:
    alice = server.api("alice")
    made = sorted(create(alice, name=f"n{i}")["id"] for i in range(6))
    got, gets = walk(alice, {"limit": 1})
    assert [n["id"] for n in got] == made  # default order is by id
    assert gets == 7  # six full pages, then an empty one (as NEUTRON-API-NOTES.md observed)
    got, gets = walk(alice, {"limit": 4})
    assert [n["id"] for n in got] == made and gets == 2  # 4 + a short page without `next`
    got, _ = walk(alice, {"limit": 2, "sort_key": "name", "sort_dir": "desc"})
    assert [n["name"] for n in got] == [f"n{i}" for i in range(5, -1, -1)]


def test_pagination_links_and_marker(server) -> None:
    alice = server.api("alice")
    made = sorted(create(alice, name=f"m{i}")["id"] for i in range(5))
    body = alice.get("/networks", params={"limit": 2}).json()
    assert ids(body) == made[:2]
    links = {link["rel"]: link["href"] for link in body["networks_links"]}
    assert set(links) == {"next", "previous"}
    assert f"marker={made[1]}" in links["next"] and "limit=2" in links["next"]
    assert links["next"].startswith(server.url + "/v2.0/networks?")
    assert f"marker={made[0]}" in links["previous"] and "page_reverse=True" in links["previous"]
    body = alice.get("/networks", params={"limit": 2, "marker": made[1]}).json()
    assert ids(body) == made[2:4]
    body = alice.get("/networks", params={"limit": 2, "marker": made[3]}).json()
    assert ids(body) == made[4:]
    assert [link["rel"] for link in body["networks_links"]] == ["previous"]  # short forward page
    # page_reverse: the page before the marker, still in ascending order
    body = alice.get("/networks", params={"limit": 2, "marker": made[4], "page_reverse": "True"}).json()
    assert ids(body) == made[2:4]
    body = alice.get("/networks", params={"limit": 2, "marker": made[1], "page_reverse": "True"}).json()
    assert ids(body) == made[:1]
    assert [link["rel"] for link in body["networks_links"]] == ["next"]  # short reverse page
    # limit=0 means no limit, no links
    body = alice.get("/networks", params={"limit": 0}).json()
    assert ids(body) == made and "networks_links" not in body
    assert_error(alice.get("/networks", params={"limit": -1}), 400)
    assert_error(alice.get("/networks", params={"limit": "two"}), 400)
    assert_error(alice.get("/networks", params={"limit": 1, "marker": str(uuid.uuid4())}), 404, "NetworkNotFound")


def test_pagination_walks_back_with_previous_links(server) -> None:
    alice = server.api("alice")
    made = sorted(create(alice, name=f"r{i}")["id"] for i in range(5))
    body = alice.get("/networks", params={"limit": 2, "marker": made[4], "page_reverse": "True"}).json()
    seen = ids(body)
    while True:
        prev = [link["href"] for link in body.get("networks_links", []) if link["rel"] == "previous"]
        if not body["networks"] or not prev:
            break
        body = alice.get(prev[0]).json()
        seen = ids(body) + seen
    assert seen == made[:4]


@pytest.mark.parametrize("collection", ["networks", "subnets", "ports", "routers", "security-groups"])
def test_past_the_last_page_keeps_a_previous_link(server, collection: str) -> None:
    """Neutron (api_common.get_pagination_links): an empty forward page still has `previous`
    (without a marker, reverse), which leads back to the last page; an empty reverse page has
    `next`, which leads to the first page. Every paged collection answers alike."""
    alice = server.api("alice")
    net = create(alice, name="pager")
    for i in range(3):
        if collection == "networks":
            create(alice, name=f"p{i}")
        elif collection == "subnets":
            subnet(alice, create(alice, name=f"s{i}"), f"192.0.2.{64 * i}/26")
        elif collection == "ports":
            assert alice.post("/ports", json={"port": {"network_id": net["id"]}}).status_code == 201
        elif collection == "routers":
            assert alice.post("/routers", json={"router": {"name": f"r{i}"}}).status_code == 201
        else:
            assert alice.post("/security-groups", json={"security_group": {"name": f"g{i}"}}).status_code == 201
    key = collection.replace("-", "_")
    every = sorted(o["id"] for o in alice.get(f"/{collection}").json()[key])
    assert len(every) >= 3
    body = alice.get(f"/{collection}", params={"limit": 2, "marker": every[-1]}).json()
    assert body[key] == []
    [link] = body[f"{key}_links"]
    assert link["rel"] == "previous" and "marker" not in link["href"]
    assert "limit=2" in link["href"] and "page_reverse=True" in link["href"]
    assert link["href"].startswith(f"{server.url}/v2.0/{collection}?")
    back = alice.get(link["href"]).json()
    assert [o["id"] for o in back[key]] == every[-2:]
    # the mirror image: before the first page, `next` leads to the first page
    body = alice.get(f"/{collection}", params={"limit": 2, "marker": every[0], "page_reverse": "True"}).json()
    assert body[key] == []
    [link] = body[f"{key}_links"]
    assert link["rel"] == "next" and "marker" not in link["href"] and "page_reverse" not in link["href"]
    assert [o["id"] for o in alice.get(link["href"]).json()[key]] == every[:2]


def test_member_naming_another_project_is_400_and_creates_nothing(server) -> None:
    """neutron-lib's populate_project_id: a non-admin naming a project other than its own (as
    project_id or tenant_id) gets a 400 before any policy check, for every resource, and no
    object appears in either project."""
    alice, bob, admin = server.api("alice"), server.api("bob"), server.api("admin")
    reader = server.api("alice_reader")
    net = create(alice, name="mine")
    sub = subnet(alice, net, "192.0.2.0/24")
    ext = create(admin, name="pub", **{"router:external": True})
    subnet(admin, ext, "203.0.113.0/24")
    group = alice.post("/security-groups", json={"security_group": {"name": "g"}}).json()["security_group"]
    colls = ("networks", "subnets", "ports", "routers", "security-groups", "security-group-rules", "floatingips")

    def snapshot() -> dict[str, list[str]]:
        return {c: sorted(o["id"] for o in admin.get(f"/{c}").json()[c.replace("-", "_")]) for c in colls}

    bodies = {
        "networks": {"network": {"name": "x"}},
        "subnets": {"subnet": {"network_id": net["id"], "ip_version": 4, "cidr": "198.51.100.0/24"}},
        "ports": {"port": {"network_id": net["id"]}},
        "routers": {"router": {"name": "x"}},
        "security-groups": {"security_group": {"name": "x"}},
        "security-group-rules": {"security_group_rule": {"security_group_id": group["id"], "direction": "ingress"}},
        "floatingips": {"floatingip": {"floating_network_id": ext["id"]}},
    }
    before = snapshot()
    message = ("Specifying 'project_id' or 'tenant_id' other than the authenticated project in request is not "
               "allowed for current user.")
    for coll, body in bodies.items():
        member = next(iter(body))
        for key in ("project_id", "tenant_id"):
            for who in (alice, reader):
                r = who.post(f"/{coll}", json={member: {**body[member], key: TENANT_B}})
                assert_error(r, 400, "HTTPBadRequest", message)
        # bulk: one foreign item refuses the whole request
        r = alice.post(f"/{coll}", json={coll.replace("-", "_"): [body[member], {**body[member], "project_id": TENANT_B}]})
        assert r.status_code == 400, (coll, r.text)
    assert snapshot() == before
    assert [n for n in bob.get("/networks").json()["networks"] if n["project_id"] == TENANT_B] == []
    assert bob.get("/routers").json()["routers"] == []
    assert sub["project_id"] == TENANT_A


# --- bulk ----------------------------------------------------------------------------------------


def test_bulk_create(shared_server) -> None:
    alice = shared_server.api("alice")
    t = tag()
    r = alice.post("/networks", json={"networks": [{"name": "b1", "tags": [t]}, {"name": "b2", "tags": [t]}]})
    assert r.status_code == 201, r.text
    nets = r.json()["networks"]
    assert [n["name"] for n in nets] == ["b1", "b2"]
    assert len({n["id"] for n in nets}) == 2
    listed = alice.get("/networks", params={"tags": t}).json()["networks"]
    assert sorted(n["id"] for n in listed) == sorted(n["id"] for n in nets)


def test_bulk_create_allocates_distinct_vnis(shared_server) -> None:
    admin = shared_server.api("admin")
    r = admin.post("/networks", json={"networks": [{"name": "v1"}, {"name": "v2"}, {"name": "v3"}]})
    assert r.status_code == 201, r.text
    vnis = [n["provider:segmentation_id"] for n in r.json()["networks"]]
    assert len(set(vnis)) == 3, vnis
    kvs, _ = shared_server.store.range("/vxnet/vni/")
    owners = {kv.value for kv in kvs}
    assert {n["id"] for n in r.json()["networks"]} <= owners


def test_bulk_create_is_all_or_nothing(shared_server) -> None:
    alice = shared_server.api("alice")
    t = tag()
    r = alice.post("/networks", json={"networks": [{"name": "ok", "tags": [t]}, {"name": 5, "tags": [t]}]})
    assert_error(r, 400, message="name")
    r = alice.post("/networks", json={"networks": [{"name": "ok", "tags": [t]},
                                                   {"name": "bad", "tags": [t], "provider:network_type": "vxlan"}]})
    assert_error(r, 403, "PolicyNotAuthorized")
    admin = shared_server.api("admin")
    taken = create(admin, name="vni-holder", tags=[t + "h"])["provider:segmentation_id"]
    r = admin.post("/networks", json={"networks": [{"name": "ok", "tags": [t]},
                                                   {"name": "dup", "tags": [t], "provider:segmentation_id": taken}]})
    assert_error(r, 409, "SegmentationIdInUse")
    assert alice.get("/networks", params={"tags": t}).json()["networks"] == []
    assert admin.get("/networks", params={"tags": t}).json()["networks"] == []
    assert_error(alice.post("/networks", json={"networks": []}), 400)
    assert_error(alice.post("/networks", json={"networks": {"name": "x"}}), 400)


# --- If-Match ------------------------------------------------------------------------------------


def test_if_match_revision_number(shared_server) -> None:
    alice = shared_server.api("alice")
    net = create(alice, name="rev")
    url = f"/networks/{net['id']}"
    r = alice.put(url, json={"network": {"name": "r1"}}, headers={"If-Match": "revision_number=0"})
    assert r.status_code == 200 and r.json()["network"]["revision_number"] == 1
    r = alice.put(url, json={"network": {"name": "stale"}}, headers={"If-Match": "revision_number=0"})
    assert_error(r, 412, "PreconditionFailed")
    assert alice.get(url).json()["network"]["name"] == "r1"
    assert_error(alice.delete(url, headers={"If-Match": "revision_number=0"}), 412, "PreconditionFailed")
    assert_error(alice.put(url, json={"network": {"name": "x"}}, headers={"If-Match": "revision_number=abc"}), 400)
    assert alice.delete(url, headers={"If-Match": "revision_number=1"}).status_code == 204


@pytest.mark.parametrize("collection", ["networks", "subnets", "ports", "routers", "security-groups",
                                        "security-group-rules", "floatingips"])
def test_delete_with_stale_if_match_is_412(server, collection: str) -> None:
    """Every resource that honours If-Match on PUT honours it on DELETE: a stale revision is a
    412 and the object stays; the current one deletes it."""
    alice, admin = server.api("alice"), server.api("admin")
    net = create(alice, name="im")
    objs = {"networks": net, "subnets": subnet(alice, net, "192.0.2.0/24")}
    if collection == "ports":
        objs["ports"] = alice.post("/ports", json={"port": {"network_id": net["id"]}}).json()["port"]
    elif collection == "routers":
        objs["routers"] = alice.post("/routers", json={"router": {"name": "r"}}).json()["router"]
    elif collection in ("security-groups", "security-group-rules"):
        g = alice.post("/security-groups", json={"security_group": {"name": "g"}}).json()["security_group"]
        objs["security-groups"] = g
        objs["security-group-rules"] = alice.post("/security-group-rules", json={"security_group_rule": {
            "security_group_id": g["id"], "direction": "ingress", "protocol": "tcp"}}).json()["security_group_rule"]
    elif collection == "floatingips":
        ext = create(admin, name="pub", **{"router:external": True})
        subnet(admin, ext, "203.0.113.0/24")
        objs["floatingips"] = alice.post("/floatingips", json={"floatingip": {
            "floating_network_id": ext["id"]}}).json()["floatingip"]
    obj = objs[collection]
    url = f"/{collection}/{obj['id']}"
    rev = alice.get(url).json()[next(iter(alice.get(url).json()))]["revision_number"]
    assert_error(alice.delete(url, headers={"If-Match": f"revision_number={rev + 1}"}), 412, "PreconditionFailed")
    assert alice.get(url).status_code == 200
    assert alice.delete(url, headers={"If-Match": f"revision_number={rev}"}).status_code == 204
    assert alice.get(url).status_code == 404


# --- admin-only attributes, external and shared networks ----------------------------------------


@pytest.mark.parametrize("attr,value", [
    ("provider:network_type", "vxlan"),
    ("provider:segmentation_id", 4242),
    ("provider:physical_network", "physnet1"),
    ("router:external", True),
])
def test_member_cannot_set_admin_only_attributes(shared_server, attr: str, value: Any) -> None:
    alice = shared_server.api("alice")
    t = tag()
    assert_error(alice.post("/networks", json={"network": {"tags": [t], attr: value}}), 403, "PolicyNotAuthorized")
    assert alice.get("/networks", params={"tags": t}).json()["networks"] == []
    net = create(alice)
    if attr == "router:external":
        assert_error(alice.put(f"/networks/{net['id']}", json={"network": {attr: value}}), 403, "PolicyNotAuthorized")


def test_admin_provider_segmentation_id_and_release_on_delete(shared_server) -> None:
    admin = shared_server.api("admin")
    vni = 7_000_000 + uuid.uuid4().int % 1_000_000
    net = create(admin, **{"provider:network_type": "vxlan", "provider:segmentation_id": vni})
    assert net["provider:segmentation_id"] == vni
    r = admin.post("/networks", json={"network": {"provider:segmentation_id": vni}})
    assert_error(r, 409, "SegmentationIdInUse")
    assert admin.delete(f"/networks/{net['id']}").status_code == 204
    again = create(admin, **{"provider:segmentation_id": vni})  # released by the delete
    assert again["provider:segmentation_id"] == vni
    assert_error(admin.post("/networks", json={"network": {"provider:network_type": "gre"}}), 400)
    assert_error(admin.post("/networks", json={"network": {"provider:segmentation_id": 2**24}}), 400)


def test_deleted_network_vni_is_reused(server) -> None:
    admin, alice = server.api("admin"), server.api("alice")
    nets = [create(alice) for _ in range(3)]
    vnis = [admin.get(f"/networks/{n['id']}").json()["network"]["provider:segmentation_id"] for n in nets]
    assert len(set(vnis)) == 3
    assert alice.delete(f"/networks/{nets[1]['id']}").status_code == 204
    fresh = create(alice)
    assert admin.get(f"/networks/{fresh['id']}").json()["network"]["provider:segmentation_id"] == vnis[1]


def test_external_network_visible_to_every_project_but_writable_by_admin_only(shared_server) -> None:
    admin, alice, bob = (shared_server.api(u) for u in ("admin", "alice", "bob"))
    ext = create(admin, name="public", **{"router:external": True})
    assert ext["router:external"] is True and ext["project_id"] == ADMIN_P
    for c in (alice, bob, shared_server.api("alice_reader")):
        r = c.get(f"/networks/{ext['id']}")
        assert r.status_code == 200 and r.json()["network"]["router:external"] is True
        assert not set(PROVIDER) & set(r.json()["network"])
        assert ext["id"] in ids(c.get("/networks", params={"router:external": "True"}).json())
    assert ext["id"] not in ids(bob.get("/networks", params={"router:external": "False"}).json())
    assert_error(bob.put(f"/networks/{ext['id']}", json={"network": {"name": "mine"}}), 403, "PolicyNotAuthorized")
    assert_error(bob.delete(f"/networks/{ext['id']}"), 403, "PolicyNotAuthorized")
    assert admin.delete(f"/networks/{ext['id']}").status_code == 204


def test_shared_network_visibility(shared_server) -> None:
    admin, alice, bob = (shared_server.api(u) for u in ("admin", "alice", "bob"))
    shared = create(admin, name="shared", shared=True)
    private = create(alice, name="private")
    assert shared["id"] in ids(bob.get("/networks").json())
    assert private["id"] not in ids(bob.get("/networks").json())
    assert bob.get(f"/networks/{shared['id']}").status_code == 200
    assert shared["id"] in ids(bob.get("/networks", params={"shared": "true"}).json())
    assert_error(bob.put(f"/networks/{shared['id']}", json={"network": {"name": "x"}}), 403)
    assert_error(bob.delete(f"/networks/{shared['id']}"), 403)
    # the owner can stop sharing; then it is gone for others
    r = admin.put(f"/networks/{shared['id']}", json={"network": {"shared": False}})
    assert r.status_code == 200 and r.json()["network"]["shared"] is False
    assert_error(bob.get(f"/networks/{shared['id']}"), 404, "NetworkNotFound")


def test_member_cannot_create_shared_network(shared_server) -> None:
    alice = shared_server.api("alice")
    assert_error(alice.post("/networks", json={"network": {"shared": True}}), 403, "PolicyNotAuthorized")


# --- isolation / policy matrix -------------------------------------------------------------------


def test_isolation_matrix(shared_server) -> None:
    admin, alice, reader, bob = (shared_server.api(u) for u in ("admin", "alice", "alice_reader", "bob"))
    net = create(alice, name="iso")
    url = f"/networks/{net['id']}"
    upd = {"network": {"name": "changed"}}

    # the reader of the same project: reads, never writes
    assert reader.get(url).status_code == 200
    assert net["id"] in ids(reader.get("/networks").json())
    assert_error(reader.post("/networks", json={"network": {"name": "r"}}), 403, "PolicyNotAuthorized")
    assert_error(reader.put(url, json=upd), 403, "PolicyNotAuthorized")
    assert_error(reader.delete(url), 403, "PolicyNotAuthorized")

    # another project: the network does not exist for it
    assert_error(bob.get(url), 404, "NetworkNotFound")
    assert_error(bob.put(url, json=upd), 404, "NetworkNotFound")
    assert_error(bob.delete(url), 404, "NetworkNotFound")
    assert net["id"] not in ids(bob.get("/networks").json())
    assert bob.get("/networks", params={"id": net["id"]}).json()["networks"] == []

    # a member cannot create in another project (400, as neutron-lib's populate_project_id); admin can
    assert_error(alice.post("/networks", json={"network": {"project_id": TENANT_B}}), 400, "HTTPBadRequest")
    assert_error(alice.post("/networks", json={"network": {"tenant_id": TENANT_B}}), 400, "HTTPBadRequest")
    assert_error(admin.post("/networks", json={"network": {"project_id": TENANT_A, "tenant_id": TENANT_B}}), 400,
                 "HTTPBadRequest", "'project_id' and 'tenant_id' do not match")
    for_bob = create(admin, tenant_id=TENANT_B)
    assert for_bob["project_id"] == for_bob["tenant_id"] == TENANT_B
    assert bob.get(f"/networks/{for_bob['id']}").status_code == 200
    assert_error(alice.get(f"/networks/{for_bob['id']}"), 404)

    # admin sees and changes everything
    assert {net["id"], for_bob["id"]} <= set(ids(admin.get("/networks").json()))
    r = admin.put(url, json=upd)
    assert r.status_code == 200 and r.json()["network"]["name"] == "changed"
    assert alice.get(url).json()["network"]["name"] == "changed"

    # the owner deletes
    assert alice.delete(url).status_code == 204
    assert admin.delete(f"/networks/{for_bob['id']}").status_code == 204


def test_unauthenticated_requests(shared_server) -> None:
    with http.client(base_url=shared_server.url + "/v2.0") as anon:
        assert_error(anon.get("/networks"), 401)
        assert_error(anon.post("/networks", json={"network": {}}), 401)
    with http.client(base_url=shared_server.url + "/v2.0", headers={"X-Auth-Token": "garbage.token"}) as bad:
        assert_error(bad.get("/networks"), 401)


# --- VNI allocation under concurrency ------------------------------------------------------------


def test_fifty_concurrent_creates_get_unique_vnis(server) -> None:
    token = server.token("alice")

    def one(i: int) -> httpx.Response:
        with http.client(base_url=server.url + "/v2.0", headers={"X-Auth-Token": token}, timeout=60) as c:
            return c.post("/networks", json={"network": {"name": f"c{i}"}})

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    assert [r.status_code for r in results] == [201] * 50, [r.text for r in results if r.status_code != 201][:3]
    admin = server.api("admin")
    nets = admin.get("/networks").json()["networks"]
    assert len(nets) == 50
    vnis = [n["provider:segmentation_id"] for n in nets]
    assert len(set(vnis)) == 50
    # the claims in the store agree with the networks
    kvs, _ = server.store.range("/vxnet/vni/")
    assert {int(kv.key.rsplit("/", 1)[1]): kv.value for kv in kvs} == {n["provider:segmentation_id"]: n["id"]
                                                                      for n in nets}
    for n in nets[:25]:
        assert admin.delete(f"/networks/{n['id']}").status_code == 204
    kvs, _ = server.store.range("/vxnet/vni/")
    assert sorted(int(kv.key.rsplit("/", 1)[1]) for kv in kvs) == sorted(vnis[25:])


# --- malformed requests --------------------------------------------------------------------------


@pytest.mark.parametrize("body,message", [
    (b"{not json", "Malformed request body"),
    (b"", None),
    (b"[]", "Resource body required"),
    (b'"network"', "Resource body required"),
    (b'{"network": {"name": "x"}, "extra": 1}', "Resource body required"),
    (b'{"net": {}}', "Resource body required"),
    (b'{"network": []}', None),
    (b'{"network": "x"}', None),
    (b'{"network": {"name": 7}}', "Invalid input for name"),
    (b'{"network": {"name": null}}', "Invalid input for name"),
    (b'{"network": {"name": "' + b"x" * 256 + b'"}}', "exceeds maximum length"),
    (b'{"network": {"admin_state_up": "maybe"}}', "admin_state_up"),
    (b'{"network": {"admin_state_up": 2}}', "admin_state_up"),
    (b'{"network": {"shared": []}}', "shared"),
    (b'{"network": {"mtu": "big"}}', "mtu"),
    (b'{"network": {"tags": "a"}}', "tags"),
    (b'{"network": {"tags": [1]}}', "tags"),
    (b'{"network": {"foo": 1}}', "Unrecognized attribute(s) 'foo'"),
    (b'{"network": {"id": "x"}}', "Unrecognized attribute(s) 'id'"),
    (b'{"network": {"status": "DOWN"}}', "Unrecognized attribute(s) 'status'"),
    (b'{"network": {"project_id": 5}}', "project_id"),
    (b'\xff\xfe', "Malformed request body"),
])
def test_malformed_create_is_400(shared_server, body: bytes, message: str | None) -> None:
    alice = shared_server.api("alice")
    before = len(shared_server.api("admin").get("/networks").json()["networks"])
    r = alice.post("/networks", content=body, headers={"Content-Type": "application/json"})
    assert_error(r, 400, message=message)
    # nothing was created (other tests may run only sequentially in this module)
    assert len(shared_server.api("admin").get("/networks").json()["networks"]) == before


@pytest.mark.parametrize("body,message", [
    ({"network": {}}, "no attributes to update"),
    ({"network": {"name": 1}}, "Invalid input for name"),
    ({"network": {"bogus": 1}}, "Unrecognized attribute(s) 'bogus'"),
    ({"network": {"project_id": TENANT_B}}, "Cannot update read-only attribute project_id"),
    ({"network": {"tenant_id": TENANT_B}}, "Cannot update read-only attribute tenant_id"),
    ({"network": {"status": "DOWN"}}, "Cannot update read-only attribute status"),
    ({"network": {"name": "x", "subnets": []}}, "Cannot update read-only attribute subnets"),
    ({"network": {"admin_state_up": "nope"}}, "admin_state_up"),
    ({"network": None}, "Resource body required"),
    ({"networks": {}}, "Resource body required"),
])
def test_malformed_update_is_400(shared_server, body: Any, message: str) -> None:
    alice = shared_server.api("alice")
    net = create(alice, name="unchanged")
    assert_error(alice.put(f"/networks/{net['id']}", json=body), 400, message=message)
    after = alice.get(f"/networks/{net['id']}").json()["network"]
    assert after == net


def test_wrong_method_and_path(shared_server) -> None:
    alice = shared_server.api("alice")
    assert_error(alice.patch("/networks"), 405)
    assert_error(alice.get("/networkz"), 404)
    net = create(alice)
    assert_error(alice.post(f"/networks/{net['id']}", json={}), 405)


def test_vlan_external_network_admin_only_claims_its_vlan(shared_server) -> None:
    """VLAN provider networks (external networks on a tagged physical network): only an admin
    names the physical network and VLAN (Neutron's policy); one network per (physnet, VLAN),
    released on delete; the VLAN id is 1..4094. The agent refuses them where the kernel has no
    802.1Q (docs/gateway.md), the API does not know the kernel."""
    admin, alice = shared_server.api("admin"), shared_server.api("alice")
    phys = f"vl{uuid.uuid4().hex[:8]}"
    body = {"router:external": True, "provider:network_type": "vlan", "provider:physical_network": phys,
            "provider:segmentation_id": 101}
    t = tag()
    assert_error(alice.post("/networks", json={"network": {"tags": [t], **body}}), 403, "PolicyNotAuthorized")
    for k in ("provider:physical_network", "provider:segmentation_id"):
        assert_error(alice.post("/networks", json={"network": {"tags": [t], "provider:network_type": "vlan", k:
                                                               body[k]}}), 403, "PolicyNotAuthorized")
    assert alice.get("/networks", params={"tags": t}).json()["networks"] == []
    net = create(admin, **body)
    assert (net["provider:network_type"], net["provider:physical_network"], net["provider:segmentation_id"]) == \
        ("vlan", phys, 101)
    assert_error(admin.post("/networks", json={"network": body}), 409, "VlanIdInUse")
    other = create(admin, **{**body, "provider:segmentation_id": 102})         # another VLAN: fine
    flat = create(admin, **{"provider:network_type": "flat", "provider:physical_network": phys})  # untagged: fine
    for bad in (None, 0, 4095):
        assert_error(admin.post("/networks", json={"network": {**body, "provider:segmentation_id": bad}}), 400)
    for n in (net, other, flat):
        assert admin.delete(f"/networks/{n['id']}").status_code == 204
    again = create(admin, **body)                                          # released by the delete
    assert again["provider:segmentation_id"] == 101
    # the VLAN id is not a VNI: deleting the VLAN network releases no VXLAN segment
    assert admin.delete(f"/networks/{again['id']}").status_code == 204


@pytest.mark.parametrize("name", ["", "a/vlan/5", "a:b", "a,b", "has space", "x" * 65])
def test_physical_network_names_are_checked(shared_server, name: str) -> None:
    """A physical network names a claim key and an agent's PHYSNET:IF mapping: a name that
    could collide with another claim (`x/vlan/5`) or break the mapping is a 400, not a network."""
    admin = shared_server.api("admin")
    for kind in ({"provider:network_type": "flat"}, {"provider:network_type": "vlan", "provider:segmentation_id": 5}):
        assert_error(admin.post("/networks", json={"network": {"provider:physical_network": name, **kind}}), 400)
