"""Hard input limits, request ids, the access and audit log, /metrics restriction, Neutron's
subnet CIDR rules and the honest /v2.0 index, all over real HTTP.

- Body size: a body over `[server] max_body_bytes` is a 413 NeutronError on every route, with
  or without a token, sent before the server reads it (a raw socket shows the 413 arriving while
  49.9 MB of the announced 50 MB were never sent), and a chunked body is cut off as soon as it
  passes the limit.
- JSON depth: deeper than `[server] max_json_depth` is a 400 naming the limit, however deep
  (to a million levels), on identity routes too; never a 5xx or a dropped connection.
- Page cap: `[server] max_page_size` caps every list (with or without `limit`); `next` links
  reach every object, and the unmodified `openstack` CLI lists them all.
- Every response, errors and 500s included, carries a fresh `X-Openstack-Request-Id`; a valid
  client id is logged as the global id. One access line per request; writes and denials also in
  the audit log; never a token or a password.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.helpers import assert_error
from tests.conftest import PASSWORDS, USERS, ServerHandle, free_port, get_token, start_server
from tests.support import http
from vxnet.api.extensions import EXTENSIONS
from vxnet.config import Config, project_id_for, user_id_for

RID = re.compile(r"^req-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
MB = 1 << 20


def limited_server(tmp_path: Path, **limits: Any) -> ServerHandle:
    port = free_port()
    cfg = Config(listen=f"127.0.0.1:{port}", users=USERS, **limits)
    return start_server(os.path.join(tmp_path, "vxnet.db"), config=cfg, port=port)


@pytest.fixture
def paged(tmp_path) -> Iterator[ServerHandle]:
    """A server whose pages hold at most 5 objects."""
    h = limited_server(tmp_path, max_page_size=5)
    yield h
    h.stop()


def rid_of(r: httpx.Response) -> str:
    rid = r.headers.get("X-Openstack-Request-Id", "")
    assert RID.match(rid), f"{r.status_code} {r.request.method} {r.request.url}: request id {rid!r}"
    return rid


def raw_exchange(url: str, head: bytes, parts: list[bytes], wait: float = 10) -> bytes:
    """Send `head` and `parts` on one raw connection, then read what comes back until the
    response is complete (Content-Length) or `wait` seconds pass."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(head)
        for p in parts:
            s.sendall(p)
        data = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head_end = data.find(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length: *(\d+)", data)
            if head_end >= 0 and m and len(data) >= head_end + 4 + int(m.group(1)):
                break
        return data


def refusal(status: int, body: dict[str, Any]) -> str:
    """The message of an error body: Neutron's shape, or Keystone's (identity routes render
    their own errors that way)."""
    if "error" in body:
        assert body["error"]["code"] == status and body["error"]["message"], body
        return str(body["error"]["message"])
    err = body["NeutronError"]
    assert set(err) == {"type", "message", "detail"} and err["message"], body
    return str(err["message"])


def status_and_body(raw: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), json.loads(body), headers


# --- body size -----------------------------------------------------------------------------------

@pytest.mark.parametrize("route,user", [
    ("/v2.0/networks", "alice"),
    ("/v2.0/networks", None),
    ("/identity/v3/auth/tokens", None),
    ("/v2.0/ports", "admin"),
])
def test_50_mb_body_is_413_before_it_is_read(shared_server: ServerHandle, route: str, user: str | None) -> None:
    """The 413 arrives while the client has sent the headers and 64 KiB of an announced 50 MB:
    the server answered without waiting for (or reading) the body."""
    token = f"X-Auth-Token: {shared_server.token(user)}\r\n" if user else ""
    head = (f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{token}"
            f"Content-Length: {50 * MB}\r\n\r\n").encode()
    status, body, headers = status_and_body(raw_exchange(shared_server.url, head, [b"[" * 65536]))
    assert status == 413
    assert body["NeutronError"]["type"] == "RequestEntityTooLarge"
    assert f"{MB} bytes" in body["NeutronError"]["message"]
    assert RID.match(headers["x-openstack-request-id"])


@pytest.mark.parametrize("user", ["admin", None])
def test_50_mb_body_sent_in_full_gets_the_413(shared_server: ServerHandle, user: str | None) -> None:
    """A client that sends all 50 MB before reading (httpx does) still reads the 413: the server
    discards the rest instead of resetting the connection; the server stays healthy."""
    headers = {"X-Auth-Token": shared_server.token(user)} if user else {}
    with http.client(base_url=shared_server.url, timeout=60) as c:
        r = c.post("/v2.0/networks", content=b" " * (50 * MB), headers=headers)
        assert_error(r, 413, "RequestEntityTooLarge")
        rid_of(r)
        assert c.get("/v2.0/networks", headers={"X-Auth-Token": shared_server.token("admin")}).status_code == 200


def test_chunked_body_is_cut_off_at_the_limit(shared_server: ServerHandle) -> None:
    """No Content-Length: the server counts the chunks and answers 413 once they pass 1 MiB,
    without waiting for the body's end (the final chunk is never sent here)."""
    head = (b"POST /identity/v3/auth/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % 65536 + b" " * 65536 + b"\r\n"
    status, body, headers = status_and_body(raw_exchange(shared_server.url, head, [chunk] * 20))
    assert status == 413 and "larger than the limit of 1048576 bytes" in refusal(413, body)
    assert RID.match(headers["x-openstack-request-id"])


def test_chunked_body_through_httpx(shared_server: ServerHandle) -> None:
    def gen() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    with http.client(base_url=shared_server.url + "/v2.0", timeout=60,
                     headers={"X-Auth-Token": shared_server.token("alice")}) as c:
        r = c.post("/networks", content=gen())
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert_error(r, 413, "RequestEntityTooLarge")


def test_body_just_under_the_limit_is_read(shared_server: ServerHandle) -> None:
    """A 1 MiB - 1 byte body is parsed and validated as usual (a 400 about its content)."""
    body = json.dumps({"network": {"name": "x", "description": ""}})
    padded = body[:-2] + " " * (MB - 1 - len(body)) + body[-2:]
    assert len(padded) == MB - 1
    r = shared_server.api("alice").post("/networks", content=padded, headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    r = shared_server.api("alice").post("/networks", content=padded + " ", headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    r = shared_server.api("alice").post("/networks", content=padded + "  ",
                                        headers={"Content-Type": "application/json"})
    assert_error(r, 413, "RequestEntityTooLarge")


def test_configured_body_limit(tmp_path: Path) -> None:
    h = limited_server(tmp_path, max_body_bytes=1000)
    try:
        c = h.api("alice")
        assert c.post("/networks", json={"network": {"name": "n" * 200}}).status_code == 201
        assert_error(c.post("/networks", json={"network": {"name": "n" * 200, "description": "d" * 900}}),
                     413, "RequestEntityTooLarge", "1000 bytes")
    finally:
        h.stop()


# --- JSON depth ----------------------------------------------------------------------------------

def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@pytest.mark.parametrize("depth", [33, 100, 999, 1000, 5000, 100_000, 500_000])
@pytest.mark.parametrize("route,user", [("/v2.0/networks", "alice"), ("/identity/v3/auth/tokens", None),
                                        ("/v2.0/routers", "admin")])
def test_deep_json_is_400(shared_server: ServerHandle, depth: int, route: str, user: str | None) -> None:
    headers = {"Content-Type": "application/json"}
    if user:
        headers["X-Auth-Token"] = shared_server.token(user)
    body = '{"network": {"name": ' + nested(depth - 2) + "}}"
    r = http.post(shared_server.url + route, content=body, headers=headers, timeout=30)
    assert r.status_code == 400
    assert "nests arrays/objects deeper than the limit of 32 levels" in refusal(400, r.json())
    rid_of(r)


def test_unbalanced_deep_json_is_400(shared_server: ServerHandle) -> None:
    for body in ["[" * 600_000, '{"a":' * 150_000, "]" * 1000, "[" * 40 + "]" * 39]:
        r = http.post(shared_server.url + "/identity/v3/auth/tokens", content=body, timeout=30)
        assert r.status_code == 400, r.text


def test_depth_at_the_limit_is_parsed(shared_server: ServerHandle) -> None:
    """32 levels are accepted by the parser (and rejected by the model, with its own message)."""
    c = shared_server.api("alice")
    r = c.post("/networks", content='{"network": {"name": ' + nested(30) + "}}",
               headers={"Content-Type": "application/json"})
    err = assert_error(r, 400)
    assert "deeper" not in err["message"] and "name" in err["message"], err
    r = c.post("/networks", content='{"network": {"name": ' + nested(31) + "}}",
               headers={"Content-Type": "application/json"})
    assert_error(r, 400, "BadRequest", "deeper than the limit")


def test_deep_and_wide_bodies_in_strings_are_not_depth(shared_server: ServerHandle) -> None:
    """Brackets inside strings are text, not nesting."""
    c = shared_server.api("alice")
    r = c.post("/networks", json={"network": {"name": "[" * 200, "description": "{" * 200}})
    assert r.status_code == 201, r.text
    assert r.json()["network"]["name"] == "[" * 200


def test_server_healthy_after_the_attacks(shared_server: ServerHandle) -> None:
    r = http.get(shared_server.url + "/metrics", headers={"X-Auth-Token": shared_server.token("admin")})
    fives = [ln for ln in r.text.splitlines() if ln.startswith("vxnet_api_requests_total") and 'status="5' in ln]
    assert fives == []


# --- page cap ------------------------------------------------------------------------------------

def walk(c: httpx.Client, path: str, params: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Follow `next` links the way openstacksdk does; (objects, GETs)."""
    coll = path.strip("/").split("/")[-1].replace("-", "_")
    r = c.get(path, params=params)
    out, gets = [], 1
    while True:
        assert r.status_code == 200, r.text
        body = r.json()
        out.extend(body[coll])
        nxt = [link["href"] for link in body.get(f"{coll}_links", []) if link["rel"] == "next"]
        if not body[coll] or not nxt:
            return out, gets
        r = c.get(nxt[0])
        gets += 1


def test_unpaginated_list_is_capped_with_next_links(paged: ServerHandle) -> None:
    admin = paged.api("admin")
    made = [admin.post("/networks", json={"network": {"name": f"n{i:02}"}}).json()["network"]["id"] for i in range(12)]
    r = admin.get("/networks")
    body = r.json()
    assert len(body["networks"]) == 5
    assert [link["rel"] for link in body["networks_links"]] == ["next"]
    got, gets = walk(admin, "/networks")
    assert sorted(n["id"] for n in got) == sorted(made) and len(got) == 12 and gets == 3
    # a bigger limit is capped too; a smaller one is honoured, with Neutron's links
    assert len(admin.get("/networks", params={"limit": 100}).json()["networks"]) == 5
    small = admin.get("/networks", params={"limit": 3}).json()
    assert len(small["networks"]) == 3 and {lk["rel"] for lk in small["networks_links"]} == {"next", "previous"}
    # sorted and filtered walks reach everything once, in order
    got, _ = walk(admin, "/networks", {"sort_key": "name", "sort_dir": "desc"})
    assert [n["name"] for n in got] == [f"n{i:02}" for i in reversed(range(12))]
    got, _ = walk(admin, "/networks", {"fields": "id"})
    assert sorted(n["id"] for n in got) == sorted(made) and all(set(n) == {"id"} for n in got)
    got, _ = walk(admin, "/networks", {"name": ["n01", "n07", "n11"]})
    assert sorted(n["name"] for n in got) == ["n01", "n07", "n11"]
    # a full last page still links on; the page after it is empty
    five = walk(admin, "/networks", {"limit": 4})[0]
    assert len(five) == 12


def test_page_cap_with_visibility(paged: ServerHandle) -> None:
    """Pages are cut after the caller's visibility: bob walks only his 7 among alice's 9."""
    alice, bob = paged.api("alice"), paged.api("bob")
    for i in range(9):
        alice.post("/networks", json={"network": {"name": f"a{i}"}})
    mine = {bob.post("/networks", json={"network": {"name": f"b{i}"}}).json()["network"]["id"] for i in range(7)}
    got, gets = walk(bob, "/networks")
    assert {n["id"] for n in got} == mine and len(got) == 7 and gets == 2


def test_marker_of_an_unknown_object_is_404(paged: ServerHandle) -> None:
    assert_error(paged.api("admin").get("/networks", params={"marker": str(uuid.uuid4())}), 404, "NetworkNotFound")


def test_no_cap_when_configured_off(tmp_path: Path) -> None:
    h = limited_server(tmp_path, max_page_size=0)
    try:
        c = h.api("admin")
        for i in range(7):
            c.post("/networks", json={"network": {"name": f"n{i}"}})
        body = c.get("/networks").json()
        assert len(body["networks"]) == 7 and "networks_links" not in body
    finally:
        h.stop()


@pytest.fixture
def paged_cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A `vxnet server` subprocess whose pages hold at most 4 objects."""
    from tests.clients import conftest as clients

    plain = clients.config_toml
    monkeypatch.setattr(clients, "config_toml",
                        lambda listen, data_dir: plain(listen, data_dir).replace("[server]\n",
                                                                                   "[server]\nmax_page_size = 4\n", 1))
    cloud = clients.start_cloud(tmp_path)
    yield cloud
    clients.stop_cloud(cloud)


def test_openstack_cli_lists_everything_past_the_cap(paged_cloud: Any) -> None:
    """The unmodified `openstack port list` shows all 11 ports, though a page holds 4."""
    api = paged_cloud.api("admin")
    net = api.post("/networks", json={"network": {"name": "cap"}}).json()["network"]
    made = {api.post("/ports", json={"port": {"network_id": net["id"], "name": f"p{i}"}}).json()["port"]["id"]
            for i in range(11)}
    assert len(api.get("/ports").json()["ports"]) == 4
    rows = paged_cloud.openstack("admin", "port", "list", "-f", "json").json()
    assert {r["ID"] for r in rows} == made
    rows = paged_cloud.openstack("admin", "network", "list", "-f", "json").json()
    assert [r["ID"] for r in rows] == [net["id"]]
    # the real server logs one access line per request by default, with ids and no secrets
    text = paged_cloud.log_file.read_text()
    lines = [ln for ln in text.splitlines() if "vxnet.access" in ln]
    assert any(" GET /v2.0/ports 200 " in ln for ln in lines), text[-2000:]
    assert paged_cloud.token("admin") not in text
    assert paged_cloud.server_errors() == []


# --- request ids and the access/audit log --------------------------------------------------------

@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="vxnet.access")
    caplog.set_level(logging.INFO, logger="vxnet.audit")
    return caplog


def lines_for(caplog: pytest.LogCaptureFixture, rid: str, logger: str, timeout: float = 5) -> list[str]:
    """The log lines of request `rid` (they are written right after the response is sent)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r.getMessage() for r in caplog.records if r.name == logger and r.getMessage().startswith(rid + " ")]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def test_every_response_has_a_request_id(shared_server: ServerHandle) -> None:
    url = shared_server.url
    tok = {"X-Auth-Token": shared_server.token("alice")}
    responses = [
        http.get(url + "/"),
        http.get(url + "/v2.0/networks", headers=tok),
        http.get(url + "/v2.0/networks"),                                   # 401
        http.get(url + "/v2.0/networks", headers={"X-Auth-Token": "forged.token"}),  # 401
        http.get(url + "/v2.0/nothing-here", headers=tok),                  # 404
        http.delete(url + "/v2.0/networks", headers=tok),                   # 405
        http.post(url + "/v2.0/networks", headers=tok, content=b"{"),       # 400
        http.post(url + "/v2.0/networks", headers=tok, content=b" " * (MB + 1)),  # 413
        http.get(url + "/metrics", headers=tok),                            # 403
        http.post(url + "/identity/v3/auth/tokens", json={"auth": {}}),     # 400
    ]
    assert [r.status_code for r in responses] == [200, 200, 401, 401, 404, 405, 400, 413, 403, 400]
    ids = [rid_of(r) for r in responses]
    assert len(set(ids)) == len(ids)


def test_unexpected_error_is_a_neutron_500_with_request_id(tmp_path: Path, logs: Any) -> None:
    h = limited_server(tmp_path)
    try:
        async def boom() -> None:
            raise RuntimeError("kaboom")

        h._server.config.app.add_api_route("/test-limits-boom", boom, include_in_schema=False)
        r = http.get(h.url + "/test-limits-boom")
        err = assert_error(r, 500, "InternalError")
        assert "kaboom" not in err["message"]
        rid = rid_of(r)
        assert any(rid in rec.getMessage() and rec.exc_info for rec in logs.records if rec.name == "vxnet.api")
        assert lines_for(logs, rid, "vxnet.access")[0].split()[5:7] == ["/test-limits-boom", "500"]
    finally:
        h.stop()


def test_access_line_per_request(shared_server: ServerHandle, logs: Any) -> None:
    c = shared_server.api("alice")
    r = c.get("/networks")
    rid = rid_of(r)
    (line,) = lines_for(logs, rid, "vxnet.access")
    m = re.fullmatch(r"(req-\S+) global=- user=(\w+) project=(\w+) GET /v2\.0/networks 200 ([\d.]+)ms "
                     r"remote=127\.0\.0\.1:\d+", line)
    assert m, line
    assert m.group(2) == user_id_for("alice") and m.group(3) == project_id_for("tenant-a")
    assert lines_for(logs, rid, "vxnet.audit", timeout=0.2) == []  # a read is not audited
    # unauthenticated: no user, no project
    r = http.get(shared_server.url + "/v2.0/networks")
    (line,) = lines_for(logs, rid_of(r), "vxnet.access")
    assert " user=- project=- GET /v2.0/networks 401 " in line


def test_global_request_id_is_logged_when_valid(shared_server: ServerHandle, logs: Any) -> None:
    c = shared_server.api("alice")
    mine = "req-" + str(uuid.uuid4())
    r = c.get("/networks", headers={"X-OpenStack-Request-ID": mine})
    rid = rid_of(r)
    assert rid != mine  # the response names this server's own request id
    assert f" global={mine} " in lines_for(logs, rid, "vxnet.access")[0]
    for bad in ["req-" + str(uuid.uuid4()).upper(), "req-nope", str(uuid.uuid4()), "req-" + "a" * 100, "x\u00e9"]:
        r = c.get("/networks", headers={"X-Openstack-Request-Id": bad.encode()})
        assert r.status_code == 200
        assert " global=- " in lines_for(logs, rid_of(r), "vxnet.access")[0]


def test_writes_and_denials_are_audited(shared_server: ServerHandle, logs: Any) -> None:
    alice, reader = shared_server.api("alice"), shared_server.api("alice_reader")
    r = alice.post("/networks", json={"network": {"name": "audited"}})
    net = r.json()["network"]["id"]
    (line,) = lines_for(logs, rid_of(r), "vxnet.audit")
    assert " POST /v2.0/networks 201 " in line and line.endswith(f" ok created={net}"), line
    r = alice.post("/networks", json={"networks": [{"name": "b1"}, {"name": "b2"}]})
    (line,) = lines_for(logs, rid_of(r), "vxnet.audit")
    assert [w.split("=")[1] for w in line.split() if w.startswith("created=")] == [
        n["id"] for n in r.json()["networks"]]
    r = reader.post("/networks", json={"network": {"name": "nope"}})
    assert r.status_code == 403
    (line,) = lines_for(logs, rid_of(r), "vxnet.audit")
    assert " 403 " in line and " denied " in line and f"user={user_id_for('alice_reader')}" in line
    r = alice.put(f"/networks/{net}", json={"network": {"name": "renamed"}})
    assert f" ok network_id={net}" in lines_for(logs, rid_of(r), "vxnet.audit")[0]
    r = alice.delete(f"/networks/{net}")
    assert r.status_code == 204
    (line,) = lines_for(logs, rid_of(r), "vxnet.audit")
    assert f" DELETE /v2.0/networks/{net} 204 " in line and line.endswith(f" ok network_id={net}"), line
    r = http.delete(shared_server.url + f"/v2.0/networks/{net}")
    assert " 401 " in lines_for(logs, rid_of(r), "vxnet.audit")[0]


def test_no_secret_is_ever_logged(shared_server: ServerHandle, logs: Any) -> None:
    pw = PASSWORDS["bob"]
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "bob", "domain": {"id": "default"}, "password": pw}}},
        "scope": {"project": {"name": "tenant-b", "domain": {"id": "default"}}}}}
    r = http.post(shared_server.url + "/identity/v3/auth/tokens", json=body)
    assert r.status_code == 201
    token = r.headers["X-Subject-Token"]
    assert lines_for(logs, rid_of(r), "vxnet.audit")  # the login is a write: audited
    bad = {**body, "auth": {**body["auth"], "identity": {"methods": ["password"], "password": {"user": {
        "name": "bob", "domain": {"id": "default"}, "password": "wrong-" + pw}}}}}
    r = http.post(shared_server.url + "/identity/v3/auth/tokens", json=bad)
    assert r.status_code == 401
    assert " denied " in lines_for(logs, rid_of(r), "vxnet.audit")[0]
    r = http.get(shared_server.url + "/v2.0/networks?name=x", headers={"X-Auth-Token": token})
    rid_of(r)
    lines_for(logs, rid_of(r), "vxnet.access")
    text = "\n".join(rec.getMessage() for rec in logs.records)
    assert pw not in text and token not in text and token.split(".")[0] not in text
    assert "name=x" not in text  # no query strings


# --- /metrics ------------------------------------------------------------------------------------

def test_metrics_need_an_admin_token(shared_server: ServerHandle) -> None:
    url = shared_server.url + "/metrics"
    assert_error(http.get(url), 401)
    assert_error(http.get(url, headers={"X-Auth-Token": shared_server.token("alice")}), 403, "PolicyNotAuthorized")
    r = http.get(url, headers={"X-Auth-Token": shared_server.token("admin")})
    assert r.status_code == 200 and "vxnet_api_requests_total" in r.text


def test_public_metrics(tmp_path: Path) -> None:
    h = limited_server(tmp_path, metrics_public=True)
    try:
        r = http.get(h.url + "/metrics")
        assert r.status_code == 200 and "vxnet_api_requests_total" in r.text
    finally:
        h.stop()


def test_metrics_on_their_own_listener(tmp_path: Path) -> None:
    mport = free_port()
    h = limited_server(tmp_path, metrics_listen=f"127.0.0.1:{mport}")
    try:
        assert_error(http.get(h.url + "/metrics", headers={"X-Auth-Token": h.token("admin")}), 404)
        h.api("alice").get("/networks")
        r = http.get(f"http://127.0.0.1:{mport}/metrics")
        assert r.status_code == 200
        assert re.search(r'vxnet_api_requests_total\{method="GET",route="/v2.0/networks",status="200"\} 1\.0', r.text)
    finally:
        h.stop()
    with pytest.raises(httpx.ConnectError):  # the listener ends with the server
        http.get(f"http://127.0.0.1:{mport}/metrics", timeout=2)


# --- subnets: Neutron's CIDR rules ---------------------------------------------------------------

CIDR_CASES = [
    # (attributes, status, type, message fragment); Neutron's words where Neutron refuses
    ({"cidr": "224.0.0.0/24"}, 400, "InvalidInput", "Multicast IP subnet is not supported if enable_dhcp is True"),
    ({"cidr": "127.0.0.0/24"}, 400, "InvalidInput", "Loopback IP subnet is not supported if enable_dhcp is True"),
    ({"cidr": "0.0.0.0/0"}, 400, "InvalidInput", "First IP '0.0.0.0' of network is not supported if enable_dhcp"),
    ({"cidr": "0.0.0.0/0", "enable_dhcp": False}, 400, "InvalidInput", "0 is not allowed as CIDR prefix length"),
    ({"cidr": "0.0.0.0/24", "enable_dhcp": False}, 400, "InvalidInput", "overlaps the 'this network' range"),
    # vxnet refuses these with DHCP off too (Neutron would accept them)
    ({"cidr": "224.0.0.0/24", "enable_dhcp": False}, 400, "InvalidInput", "overlaps the multicast range 224.0.0.0/4"),
    ({"cidr": "127.0.0.0/24", "enable_dhcp": False}, 400, "InvalidInput", "overlaps the loopback range 127.0.0.0/8"),
    ({"cidr": "240.0.0.0/24"}, 400, "InvalidInput", "overlaps the reserved range 240.0.0.0/4"),
    ({"cidr": "192.0.0.0/2"}, 400, "InvalidInput", "overlaps the multicast range"),
    # malformed
    ({"cidr": "192.0.2.0"}, 400, "BadRequest", "'192.0.2.0' isn't a recognized IP subnet cidr, '192.0.2.0/32' is recommended"),
    ({"cidr": "192.0.2.0/33"}, 400, "BadRequest", "'192.0.2.0/33' is not a valid IP subnet"),
    ({"cidr": "192.0.2.0/24 "}, 400, "BadRequest", "is not a valid IP subnet"),
    # gateway and pools
    ({"cidr": "192.0.2.0/24", "gateway_ip": "198.51.100.1"}, 400, "InvalidInput",
     "Gateway is not valid on subnet 192.0.2.0/24: 198.51.100.1 is outside it"),
    ({"cidr": "192.0.2.0/24", "gateway_ip": "192.0.2.255"}, 400, "InvalidInput", "192.0.2.255 is its broadcast address"),
    ({"cidr": "192.0.2.0/24", "gateway_ip": "192.0.2.0"}, 400, "InvalidInput", "192.0.2.0 is its network address"),
    ({"cidr": "192.0.2.0/24", "allocation_pools": [{"start": "192.0.2.10", "end": "198.51.100.9"}]}, 400,
     "OutOfBoundsAllocationPool", "The allocation pool 192.0.2.10-198.51.100.9 spans beyond the subnet cidr 192.0.2.0/24."),
    ({"cidr": "192.0.2.0/24", "allocation_pools": [{"start": "192.0.2.1", "end": "192.0.2.9"}]}, 409,
     "GatewayConflictWithAllocationPools", "Gateway ip 192.0.2.1 conflicts with allocation pool 192.0.2.1-192.0.2.9"),
]


@pytest.mark.parametrize("attrs,status,type_,message", CIDR_CASES, ids=[str(c[0]) for c in CIDR_CASES])
def test_subnet_cidr_rules(shared_server: ServerHandle, attrs: dict[str, Any], status: int, type_: str,
                           message: str) -> None:
    c = shared_server.api("alice")
    net = c.post("/networks", json={"network": {"name": "cidr"}}).json()["network"]
    r = c.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4, **attrs}})
    assert_error(r, status, type_, message)
    assert c.get("/subnets", params={"network_id": net["id"]}).json()["subnets"] == []


def test_host_bits_are_cleared_as_neutron_does(shared_server: ServerHandle) -> None:
    c = shared_server.api("alice")
    net = c.post("/networks", json={"network": {"name": "hostbits"}}).json()["network"]
    r = c.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4, "cidr": "192.0.2.1/24"}})
    assert r.status_code == 201, r.text
    s = r.json()["subnet"]
    assert (s["cidr"], s["gateway_ip"]) == ("192.0.2.0/24", "192.0.2.1")
    assert s["allocation_pools"] == [{"start": "192.0.2.2", "end": "192.0.2.254"}]


# --- the /v2.0 index and the extension list ------------------------------------------------------

def test_index_lists_only_served_collections(shared_server: ServerHandle) -> None:
    admin = shared_server.api("admin")
    body = admin.get(shared_server.url + "/v2.0/").json()
    names = {r["collection"]: r["name"] for r in body["resources"]}
    assert "metering-labels" not in names
    assert {"networks", "subnets", "ports", "routers", "floatingips", "security-groups",
            "security-group-rules", "subnetpools", "address-scopes", "rbac-policies", "qos/policies",
            "qos/rule-types"} <= set(names)
    assert names["security-groups"] == "security_group" and names["floatingips"] == "floatingip"
    # Neutron's names: the member of the last path segment
    assert (names["qos/policies"], names["qos/rule-types"], names["rbac-policies"]) == ("policy", "rule_type",
                                                                                        "rbac_policy")
    assert not any(c.startswith(("vxnet/", "quotas/")) for c in names)
    for r in body["resources"]:
        href = r["links"][0]["href"]
        assert href == f"{shared_server.url}/v2.0/{r['collection']}"
        assert admin.get(href).status_code == 200, href
    assert_error(http.get(shared_server.url + "/v2.0/"), 401)


def test_index_follows_the_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A collection route added to the app shows up with no list to edit; without the agents
    module, neither `agents` nor the `agent` extension is advertised."""
    from vxnet.api import app as app_module
    from vxnet.api.routers import agents

    monkeypatch.setattr(app_module, "ROUTER_MODULES", tuple(m for m in app_module.ROUTER_MODULES if m is not agents))
    h = limited_server(tmp_path)
    try:
        async def widgets() -> dict[str, Any]:
            return {"widgets": []}

        h._server.config.app.add_api_route("/v2.0/network-widget-availabilities", widgets)
        c = h.api("admin")
        res = {r["collection"]: r["name"] for r in c.get(h.url + "/v2.0/").json()["resources"]}
        assert res["network-widget-availabilities"] == "network_widget_availability"
        assert "agents" not in res and "networks" in res
        assert_error(c.get("/agents"), 404)
        aliases = {e["alias"] for e in c.get("/extensions").json()["extensions"]}
        assert aliases == {e["alias"] for e in EXTENSIONS} - {"agent"}
        assert_error(c.get("/extensions/agent"), 404, "ExtensionNotFound")
        assert c.get("/extensions/router").json()["extension"]["alias"] == "router"
    finally:
        h.stop()


def test_every_advertised_extension_resource_is_served(shared_server: ServerHandle) -> None:
    admin = shared_server.api("admin")
    aliases = {e["alias"] for e in admin.get("/extensions").json()["extensions"]}
    assert aliases == {e["alias"] for e in EXTENSIONS}  # every module is present here
    for coll in ("agents", "routers", "security-groups", "floatingips"):
        assert admin.get("/" + coll).status_code == 200


def test_token_login_still_works_through_the_guard(shared_server: ServerHandle) -> None:
    """The guard passes bodies through untouched (a plain login, with the request id)."""
    tok = get_token(shared_server.url, "alice", PASSWORDS["alice"], "tenant-a")
    assert tok


def test_trace_snapshot_reads_past_the_cap(paged: ServerHandle) -> None:
    """`vxnet trace` reads every object through the API: it follows the `next` links."""
    from vxnet.trace.snapshot import fetch

    admin = paged.api("admin")
    made = {admin.post("/networks", json={"network": {"name": f"t{i}"}}).json()["network"]["id"] for i in range(12)}
    snap = fetch(paged.url, paged.token("admin"))
    assert set(snap.objects["networks"]) == made
