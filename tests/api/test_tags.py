"""The tags sub-resource over real HTTP: every verb, Neutron's status codes and errors, revision
bumps, tag filters on listings, and visibility/policy like the parent resource."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.api.test_security_groups import run_on_both
from vxnet.store.contract import put as store_put


def err(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"NeutronError"}, body
    return body["NeutronError"]


def raw_object(h: Any, collection: str, project_id: str) -> str:
    """A minimal record put straight into the store (tags only need id, project and tags)."""
    oid = str(uuid.uuid4())
    obj = {"id": oid, "name": "", "project_id": project_id, "tenant_id": project_id, "tags": [],
           "revision_number": 0, "updated_at": "2020-01-01T00:00:00Z"}
    store_put(h.store, f"/vxnet/res/{collection}/{oid}", json.dumps(obj))
    return oid


def project_of(c: httpx.Client) -> str:
    return c.get("/security-groups").json()["security_groups"][0]["project_id"]


def make_parents(h: Any, user: str = "alice") -> dict[str, str]:
    """One object per taggable collection, owned by `user`'s project: URL collection -> id."""
    c = h.api(user)
    net = c.post("/networks", json={"network": {"name": "tagged"}})
    assert net.status_code == 201, net.text
    nid = net.json()["network"]["id"]
    sub = c.post("/subnets", json={"subnet": {"network_id": nid, "ip_version": 4, "cidr": "192.0.2.0/24"}})
    assert sub.status_code == 201, sub.text
    port = c.post("/ports", json={"port": {"network_id": nid}})
    assert port.status_code == 201, port.text
    sg = c.post("/security-groups", json={"security_group": {"name": "tagged"}})
    assert sg.status_code == 201, sg.text
    project = sg.json()["security_group"]["project_id"]
    return {
        "networks": nid,
        "subnets": sub.json()["subnet"]["id"],
        "ports": port.json()["port"]["id"],
        "security-groups": sg.json()["security_group"]["id"],
        "routers": raw_object(h, "routers", project),
        "floatingips": raw_object(h, "floatingips", project),
        "subnetpools": raw_object(h, "subnetpools", project),
    }


def revision(h: Any, coll: str, oid: str) -> int:
    kv = h.store.get(f"/vxnet/res/{coll.replace('-', '_')}/{oid}")
    assert kv is not None
    return int(json.loads(kv.value)["revision_number"])


@pytest.fixture(scope="module")
def parents(shared_server: Any) -> dict[str, str]:
    return make_parents(shared_server)


COLLECTIONS = ["networks", "subnets", "ports", "routers", "floatingips", "security-groups", "subnetpools"]


@pytest.mark.parametrize("coll", COLLECTIONS)
def test_every_verb_on_every_taggable_collection(shared_server: Any, parents: dict[str, str], coll: str) -> None:
    alice = shared_server.api("alice")
    oid = parents[coll]
    base = f"/{coll}/{oid}/tags"
    assert alice.delete(base).status_code == 204
    rev0 = revision(shared_server, coll, oid)
    # add one: 201, empty body; checking it: 204
    r = alice.put(f"{base}/red")
    assert r.status_code == 201 and r.content == b""
    assert alice.get(f"{base}/red").status_code == 204
    assert alice.get(base).json() == {"tags": ["red"]}
    assert revision(shared_server, coll, oid) == rev0 + 1
    # adding it again changes nothing
    assert alice.put(f"{base}/red").status_code == 201
    assert revision(shared_server, coll, oid) == rev0 + 1
    # replace all: 200 with the new list
    r = alice.put(base, json={"tags": ["a", "b", "c"]})
    assert r.status_code == 200 and r.json() == {"tags": ["a", "b", "c"]}
    assert revision(shared_server, coll, oid) == rev0 + 2
    r = alice.get(f"{base}/red")
    assert r.status_code == 404
    assert err(r) == {"type": "TagNotFound", "message": "Tag red could not be found.", "detail": ""}
    # add several with POST (keeps the others)
    r = alice.post(base, json={"tags": ["c", "d"]})
    assert r.status_code == 201 and r.json() == {"tags": ["a", "b", "c", "d"]}
    # remove one: 204; removing it again: 404
    assert alice.delete(f"{base}/a").status_code == 204
    r = alice.delete(f"{base}/a")
    assert r.status_code == 404 and err(r)["type"] == "TagNotFound"
    assert alice.get(base).json() == {"tags": ["b", "c", "d"]}
    # the resource itself shows the tags
    if coll in ("networks", "subnets", "ports", "security-groups"):
        member = {"networks": "network", "subnets": "subnet", "ports": "port",
                  "security-groups": "security_group"}[coll]
        assert alice.get(f"/{coll}/{oid}").json()[member]["tags"] == ["b", "c", "d"]
    # remove all: 204
    before = revision(shared_server, coll, oid)
    assert alice.delete(base).status_code == 204
    assert alice.get(base).json() == {"tags": []}
    assert revision(shared_server, coll, oid) == before + 1
    assert alice.delete(base).status_code == 204
    assert revision(shared_server, coll, oid) == before + 1


def test_tags_filter_listings(shared_server: Any, parents: dict[str, str]) -> None:
    alice = shared_server.api("alice")
    nid = parents["networks"]
    marker = f"m-{uuid.uuid4().hex[:6]}"
    assert alice.put(f"/networks/{nid}/tags", json={"tags": [marker, "blue"]}).status_code == 200
    ids = lambda **q: [n["id"] for n in alice.get("/networks", params=q).json()["networks"]]
    assert ids(tags=marker) == [nid]
    assert ids(tags=f"{marker},blue") == [nid]
    assert ids(tags=f"{marker},green") == []
    assert ids(**{"tags-any": f"green,{marker}"}) == [nid]
    assert nid not in ids(**{"not-tags": marker})
    sg = parents["security-groups"]
    assert alice.put(f"/security-groups/{sg}/tags", json={"tags": [marker]}).status_code == 200
    found = alice.get("/security-groups", params={"tags": marker}).json()["security_groups"]
    assert [g["id"] for g in found] == [sg]


def test_tag_names_with_unusual_characters(shared_server: Any, parents: dict[str, str]) -> None:
    alice = shared_server.api("alice")
    base = f"/networks/{parents['networks']}/tags"
    alice.delete(base)
    for tag in ("with space", "ünïcode", "a/b", "x" * 255):
        assert alice.put(f"{base}/{tag}").status_code == 201, tag
        assert alice.get(f"{base}/{tag}").status_code == 204, tag
    assert alice.get(base).json()["tags"] == ["with space", "ünïcode", "a/b", "x" * 255]
    assert alice.delete(base).status_code == 204


@pytest.mark.parametrize(("body", "text"), [
    ({"tags": ["a", "a"]}, "Duplicate items in the list: 'a'"),
    ({"tags": "a"}, "is not a list"),
    ({"tags": [1]}, "'1' is not a valid string"),
    ({"tags": ["x" * 256]}, "exceeds maximum length of 255"),
    ({"tags": [""]}, "must not be empty"),
    ({"labels": ["a"]}, "Invalid tags body"),
    (["a"], "Invalid tags body"),
])
def test_bad_tag_bodies_are_400(shared_server: Any, parents: dict[str, str], body: Any, text: str) -> None:
    alice = shared_server.api("alice")
    nid = parents["networks"]
    before = alice.get(f"/networks/{nid}/tags").json()
    for method in ("PUT", "POST"):
        r = alice.request(method, f"/networks/{nid}/tags", json=body)
        assert r.status_code == 400, r.text
        e = err(r)
        assert e["type"] == "InvalidInput" and text in e["message"], e
        assert e["message"].startswith("Invalid input for operation: ")
    assert alice.get(f"/networks/{nid}/tags").json() == before


def test_bad_single_tags_and_bodies(shared_server: Any, parents: dict[str, str]) -> None:
    alice = shared_server.api("alice")
    nid = parents["networks"]
    r = alice.put(f"/networks/{nid}/tags/{'y' * 256}")
    assert r.status_code == 400 and "exceeds maximum length of 255" in err(r)["message"]
    r = alice.put(f"/networks/{nid}/tags", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and err(r)["type"] == "MalformedRequestBody"


def test_missing_parent_and_unknown_collection_are_404(shared_server: Any) -> None:
    alice = shared_server.api("alice")
    missing = str(uuid.uuid4())
    expected = {"networks": ("NetworkNotFound", f"Network {missing} could not be found."),
                "security-groups": ("SecurityGroupNotFound", f"Security group {missing} does not exist"),
                "ports": ("PortNotFound", f"Port {missing} could not be found.")}
    for coll, (type_, message) in expected.items():
        for r in (alice.get(f"/{coll}/{missing}/tags"), alice.put(f"/{coll}/{missing}/tags/x"),
                  alice.put(f"/{coll}/{missing}/tags", json={"tags": []}), alice.delete(f"/{coll}/{missing}/tags"),
                  alice.get(f"/{coll}/{missing}/tags/x"), alice.delete(f"/{coll}/{missing}/tags/x")):
            assert r.status_code == 404, r.text
            assert err(r) == {"type": type_, "message": message, "detail": ""}
    r = alice.get(f"/agents/{missing}/tags")
    assert r.status_code == 404 and err(r)["type"] == "HTTPNotFound"


@pytest.mark.parametrize("coll", COLLECTIONS)
def test_other_project_gets_404_and_reader_gets_403(shared_server: Any, parents: dict[str, str], coll: str) -> None:
    alice, reader, bob = shared_server.api("alice"), shared_server.api("alice_reader"), shared_server.api("bob")
    oid = parents[coll]
    base = f"/{coll}/{oid}/tags"
    assert alice.put(base, json={"tags": ["keep"]}).status_code == 200
    rev = revision(shared_server, coll, oid)
    for r in (bob.get(base), bob.get(f"{base}/keep"), bob.put(f"{base}/x"), bob.put(base, json={"tags": []}),
              bob.post(base, json={"tags": ["x"]}), bob.delete(f"{base}/keep"), bob.delete(base)):
        assert r.status_code == 404, (coll, r.text)
        assert err(r)["type"].endswith("NotFound")
    assert reader.get(base).json() == {"tags": ["keep"]}
    assert reader.get(f"{base}/keep").status_code == 204
    for r in (reader.put(f"{base}/x"), reader.put(base, json={"tags": []}), reader.post(base, json={"tags": ["x"]}),
              reader.delete(f"{base}/keep"), reader.delete(base)):
        assert r.status_code == 403, (coll, r.text)
        assert err(r)["type"] == "PolicyNotAuthorized"
    assert alice.get(base).json() == {"tags": ["keep"]}
    assert revision(shared_server, coll, oid) == rev


def test_admin_tags_any_project_and_shared_network_is_readonly_for_others(shared_server: Any,
                                                                          parents: dict[str, str]) -> None:
    admin, alice, bob = shared_server.api("admin"), shared_server.api("alice"), shared_server.api("bob")
    nid = parents["networks"]
    assert admin.put(f"/networks/{nid}/tags/by-admin").status_code == 201
    assert "by-admin" in alice.get(f"/networks/{nid}/tags").json()["tags"]
    assert admin.delete(f"/networks/{nid}/tags/by-admin").status_code == 204
    shared = admin.post("/networks", json={"network": {"name": "shared", "shared": True}}).json()["network"]
    assert admin.put(f"/networks/{shared['id']}/tags", json={"tags": ["public"]}).status_code == 200
    # bob sees the shared network (and its tags) but may not change them
    assert bob.get(f"/networks/{shared['id']}/tags").json() == {"tags": ["public"]}
    assert bob.get(f"/networks/{shared['id']}/tags/public").status_code == 204
    for r in (bob.put(f"/networks/{shared['id']}/tags/mine"), bob.delete(f"/networks/{shared['id']}/tags"),
              bob.delete(f"/networks/{shared['id']}/tags/public")):
        assert r.status_code == 403 and err(r)["type"] == "PolicyNotAuthorized"
    assert admin.get(f"/networks/{shared['id']}/tags").json() == {"tags": ["public"]}


def test_subnet_of_shared_network_tags_are_visible_but_not_writable(shared_server: Any) -> None:
    admin, bob = shared_server.api("admin"), shared_server.api("bob")
    net = admin.post("/networks", json={"network": {"name": "sh", "shared": True}}).json()["network"]
    sub = admin.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                  "cidr": "198.51.100.0/24"}}).json()["subnet"]
    assert admin.put(f"/subnets/{sub['id']}/tags/t").status_code == 201
    assert bob.get(f"/subnets/{sub['id']}/tags").json() == {"tags": ["t"]}
    assert bob.put(f"/subnets/{sub['id']}/tags/u").status_code == 403


def test_concurrent_tag_adds_all_land(server: Any) -> None:
    """Each single-tag PUT is a read-modify-write of the parent; with two servers over one store
    writing at the same time, none may be lost."""
    alice = server.api("alice")
    nid = alice.post("/networks", json={"network": {"name": "n"}}).json()["network"]["id"]

    def add(c: httpx.Client, i: int) -> int:
        return c.put(f"/networks/{nid}/tags/t{i}").status_code

    codes = run_on_both(server, "alice", add, 24)
    assert codes == [201] * 24
    assert sorted(alice.get(f"/networks/{nid}/tags").json()["tags"]) == sorted(f"t{i}" for i in range(24))
    assert alice.get(f"/networks/{nid}").json()["network"]["revision_number"] == 24
