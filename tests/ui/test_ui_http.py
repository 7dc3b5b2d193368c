"""/ui over plain HTTP: the page and its assets, and the event stream's authentication."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import USERS, ServerHandle
from tests.support import http
from vxnet.config import project_id_for


def test_page_and_assets_are_served_with_a_strict_policy(ui_server: ServerHandle) -> None:
    r = http.get(ui_server.url + "/ui")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/ui/app.js"' in r.text
    for asset, kind in (("app.js", "javascript"), ("topology.js", "javascript"), ("app.css", "text/css")):
        a = http.get(f"{ui_server.url}/ui/{asset}")
        assert a.status_code == 200 and kind in a.headers["content-type"], asset
    assert http.get(ui_server.url + "/ui/", follow_redirects=True).url.path == "/ui"


def test_nothing_outside_the_static_folder(ui_server: ServerHandle) -> None:
    for path in ("/ui/../api/app.py", "/ui/%2e%2e/%2e%2e/config.py", "/ui/..%2f..%2fapi%2fapp.py", "/ui/nope.js"):
        r = http.get(ui_server.url + path)
        assert r.status_code == 404, path
        assert r.json()["NeutronError"]["type"] == "HTTPNotFound"


def test_event_stream_needs_a_valid_token(ui_server: ServerHandle) -> None:
    url = ui_server.url + "/ui/events"
    for params in ({}, {"token": "garbage"}, {"token": ui_server.token("alice")[:-4] + "AAAA"}):
        r = http.get(url, params=params, timeout=5)
        assert r.status_code == 401, params
        assert "NeutronError" in r.json() or "error" in r.json()
    with http.stream("GET", url, headers={"X-Auth-Token": ui_server.token("alice")}, timeout=5) as r:
        assert r.status_code == 200
        first = next(r.iter_lines())
        assert first.startswith(("retry:", "event: ready"))


def _changes_until(lines: Any, stop_id: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    kind = ""
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: ") and kind == "change":
            seen.extend(json.loads(line[6:])["changes"])
            if any(c["id"] == stop_id and c["type"] == "delete" for c in seen):
                return seen
    raise AssertionError("stream ended")


def test_shared_network_and_its_subnets_deleted_together_reach_other_tenants(ui_server: ServerHandle) -> None:
    """Bob sees an admin's shared network and its subnet; deleting the network deletes the subnet
    in the same transaction, and bob is told of both (the subnet judged with its deleted network)."""
    adm = ui_server.api("admin")
    net = adm.post("/networks", json={"network": {"name": "shared", "shared": True}}).json()["network"]
    sub = adm.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.163.0.0/24",
                                                "ip_version": 4}}).json()["subnet"]
    assert [s["id"] for s in ui_server.api("bob").get("/subnets").json()["subnets"]] == [sub["id"]]
    with http.stream("GET", ui_server.url + "/ui/events", params={"token": ui_server.token("bob")}, timeout=10) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("retry:")
        assert adm.delete(f"/networks/{net['id']}").status_code == 204
        seen = _changes_until(lines, net["id"])
    assert {(c["collection"], c["id"], c["type"]) for c in seen} >= {
        ("networks", net["id"], "delete"), ("subnets", sub["id"], "delete")}


def _changes_until_seen(lines: Any, wanted: set[tuple[str, str, str]]) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    kind = ""
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: ") and kind == "change":
            seen.extend(json.loads(line[6:])["changes"])
            if wanted <= {(c["collection"], c["id"], c["type"]) for c in seen}:
                return seen
    raise AssertionError("stream ended")


def test_network_shared_by_rbac_tells_the_target_of_its_subnets(ui_server: ServerHandle) -> None:
    """Alice shares a network with bob's project by an RBAC policy: bob's stream names the
    network and its (unchanged) subnet at once, and both as gone when the policy is deleted;
    alice's other, unshared network's subnet is never named to bob."""
    alice = ui_server.api("alice")
    net = alice.post("/networks", json={"network": {"name": "to-share"}}).json()["network"]
    sub = alice.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.164.0.0/24",
                                                  "ip_version": 4}}).json()["subnet"]
    private = alice.post("/networks", json={"network": {"name": "private"}}).json()["network"]
    hidden = alice.post("/subnets", json={"subnet": {"network_id": private["id"], "cidr": "100.165.0.0/24",
                                                     "ip_version": 4}}).json()["subnet"]
    target = project_id_for(next(u.project for u in USERS if u.name == "bob"))
    with http.stream("GET", ui_server.url + "/ui/events", params={"token": ui_server.token("bob")}, timeout=10) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("retry:")
        pol = alice.post("/rbac-policies", json={"rbac_policy": {
            "object_type": "network", "object_id": net["id"], "action": "access_as_shared",
            "target_tenant": target}}).json()["rbac_policy"]
        # bob now sees the subnet through the REST API, and the stream told him so
        assert [s["id"] for s in ui_server.api("bob").get("/subnets").json()["subnets"]] == [sub["id"]]
        seen = _changes_until_seen(lines, {("networks", net["id"], "put"), ("subnets", sub["id"], "put")})
        assert alice.delete(f"/rbac-policies/{pol['id']}").status_code == 204
        seen += _changes_until_seen(lines, {("networks", net["id"], "put"), ("subnets", sub["id"], "delete")})
    assert ui_server.api("bob").get("/subnets").json()["subnets"] == []
    assert hidden["id"] not in {c["id"] for c in seen} and private["id"] not in {c["id"] for c in seen}
    assert pol["id"] not in {c["id"] for c in seen}  # the policy is alice's, not bob's to hear of
