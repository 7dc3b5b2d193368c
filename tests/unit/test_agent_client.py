"""The agent's client against real servers: registration and heartbeats, token renewal,
status reports, and the view stream across server restarts and failover.

The "agent" here holds its view as `view[key][id]`, replaces it on a snapshot and applies
updates; after each scenario it must equal the server's view of the host, computed from
scratch over the store (`full_view`). That is what "no gap" means.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_host_view import AGENT, apply_update, start_agent_server
from tests.conftest import ServerHandle, free_port
from tests.support.view_stream import client_over
from vxnet.agent.client import ServerClient, ServerRejected, ServerUnavailable, split_urls
from vxnet.api.routers.agent_stream import agent_id_for
from vxnet.services.host_view import COLLECTIONS, full_view, host_entry
from vxnet.store.contract import put as store_put
from vxnet.store.sqlite_store import SqliteStore


def client(urls: str | list[str], host: str = "hv1", **kw: Any) -> ServerClient:
    return ServerClient(urls, host, AGENT.name, AGENT.password, AGENT.project, underlay_ip="198.51.100.1", **kw)


def reference_view(store: SqliteStore, host: str) -> dict[str, Any]:
    """The view of `host` computed from scratch from the store."""
    kvs, _ = store.range("/vxnet/res/")
    objects: dict[str, dict[str, Any]] = {c: {} for c in COLLECTIONS}
    hosts = {}
    for kv in kvs:
        coll, _, id_ = kv.key[len("/vxnet/res/"):].partition("/")
        if coll in objects:
            objects[coll][id_] = json.loads(kv.value)
        elif coll == "agents":
            rec = json.loads(kv.value)
            hosts[rec["host"]] = host_entry(rec)
    return full_view(objects, hosts, host)  # type: ignore[arg-type]


class Agent:
    """Consumes `stream()` in a thread as the agent core does: reconnects after any break with
    `since` = the revision of the last message it applied."""

    def __init__(self, c: ServerClient, since: int | None = None) -> None:
        self.c = c
        self.view: dict[str, Any] = {}
        self.messages: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(since,), daemon=True)
        self.thread.start()

    def _run(self, since: int | None) -> None:
        while not self.stopped.is_set():
            try:
                for msg in self.c.stream(since):
                    with self.cond:
                        if msg["type"] == "snapshot":
                            self.view = copy.deepcopy(msg["view"])
                            del self.view["host"]
                        elif msg["type"] == "update":
                            apply_update(self.view, msg["put"], msg["delete"])
                        self.messages.append(msg)
                        self.cond.notify_all()
                    if isinstance(msg.get("revision"), int):
                        since = msg["revision"]
            except (ServerUnavailable, ServerRejected, httpx.HTTPError, RuntimeError, ValueError):
                pass  # broken, refused, or closed under us: reconnect unless stopped
            self.stopped.wait(0.05)

    def close(self) -> None:
        """Stop: from another thread, while the stream may be blocked reading."""
        self.stopped.set()
        self.c.close()

    def wait_revision(self, rev: int, timeout: float = 15) -> None:
        deadline = time.time() + timeout
        with self.cond:
            while not any(m.get("revision", -1) >= rev for m in self.messages):
                left = deadline - time.time()
                assert left > 0, f"revision {rev} never arrived; last {self.messages[-1:]}"
                self.cond.wait(left)

    def snapshots(self) -> int:
        return sum(1 for m in self.messages if m["type"] == "snapshot")


def port(net: str, host: str, pid: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"id": pid or str(uuid.uuid4()), "network_id": net, "binding:host_id": host,
            "device_owner": "compute:nova", "device_id": "vm", "security_groups": [],
            "mac_address": "fa:16:3e:00:00:01", "fixed_ips": [], "status": "DOWN", **kw}


def put(store: SqliteStore, coll: str, obj: dict[str, Any]) -> int:
    return store_put(store, f"/vxnet/res/{coll}/{obj['id']}", json.dumps(obj))


@pytest.fixture
def srv(tmp_path) -> Iterator[ServerHandle]:
    h = start_agent_server(os.path.join(tmp_path, "vxnet.db"))
    yield h
    h.stop()


def stop_server_only(h: ServerHandle) -> None:
    """Stop the HTTP server and its hub but keep the store open (another server uses it)."""
    h._server.should_exit = True
    h._thread.join(10)
    assert not h._thread.is_alive()


def test_split_urls() -> None:
    assert split_urls("http://a:1, http://b:2,") == ["http://a:1", "http://b:2"]
    assert split_urls(["http://a", "http://b,http://c"]) == ["http://a", "http://b", "http://c"]
    with pytest.raises(ValueError):
        split_urls(" , ")


def test_register_heartbeat_and_status(srv: ServerHandle) -> None:
    c = client(srv.url)
    reply = c.register()
    assert reply["lease_ttl"] == 15 and reply["heartbeat_interval"] == 5.0
    assert c.heartbeat() is True
    agent = srv.api("admin").get(f"/agents/{agent_id_for('hv1')}").json()["agent"]
    assert agent["alive"] and agent["configurations"]["underlay_ip"] == "198.51.100.1"
    net = srv.api("admin").post("/networks", json={"network": {"name": "n"}}).json()["network"]["id"]
    p = port(net, "hv1")
    put(srv.store, "ports", p)
    assert c.report_status([p["id"]], []) == [p["id"]]
    assert srv.api("admin").get(f"/ports/{p['id']}").json()["port"]["status"] == "ACTIVE"
    assert c.report_status([], [p["id"]]) == [p["id"]]
    # an unknown host: heartbeat says so (the agent core then registers it)
    other = client(srv.url, host="hv-new")
    assert other.heartbeat() is False
    assert srv.api("admin").get(f"/agents/{agent_id_for('hv-new')}").status_code == 404
    other.register()
    assert srv.api("admin").get(f"/agents/{agent_id_for('hv-new')}").status_code == 200
    assert other.heartbeat() is True
    c.close()
    other.close()


def test_token_is_renewed_before_expiry(tmp_path) -> None:
    h = start_agent_server(os.path.join(tmp_path, "db"), token_ttl=2)
    try:
        c = client(h.url)
        c.register()
        first = c.servers[0].token
        for _ in range(6):  # 3 s: longer than a token lives
            assert c.heartbeat() is True
            time.sleep(0.5)
        assert c.servers[0].token != first
        c.close()
    finally:
        h.stop()


def test_no_server_reachable() -> None:
    c = client([f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"], timeout=1)
    with pytest.raises(ServerUnavailable):
        c.heartbeat()
    with pytest.raises(ServerUnavailable):
        next(iter(c.stream(None)))
    c.close()


def test_watch_follows_changes(srv: ServerHandle) -> None:
    c = client(srv.url)
    c.register()
    net = srv.api("admin").post("/networks", json={"network": {"name": "n"}}).json()["network"]["id"]
    agent = Agent(c)
    rev = 0
    for i in range(30):
        rev = put(srv.store, "ports", port(net, "hv1" if i % 3 else "hv2", f"p{i}", status="ACTIVE"))
    agent.wait_revision(rev)
    assert agent.view == reference_view(srv.store, "hv1")
    assert agent.snapshots() == 1
    t0 = time.time()
    agent.close()  # from another thread, while stream() is blocked reading: it ends promptly
    agent.thread.join(10)
    assert not agent.thread.is_alive() and time.time() - t0 < 2


def test_server_restart_resumes_without_snapshot(tmp_path) -> None:
    """The server dies and comes back on the same port: the client resumes from its last
    revision; no snapshot, and later changes flow again."""
    port_no = free_port()
    store = SqliteStore(os.path.join(tmp_path, "vxnet.db"))
    a = start_agent_server(port=port_no, store=store)
    c = client(a.url)
    c.register()
    net = a.api("admin").post("/networks", json={"network": {"name": "n"}}).json()["network"]["id"]
    agent = Agent(c)
    rev = put(store, "ports", port(net, "hv1", "p1"))
    agent.wait_revision(rev)
    stop_server_only(a)
    b = start_agent_server(port=port_no, store=store)
    try:
        rev2 = put(store, "ports", port(net, "hv1", "p2"))
        agent.wait_revision(rev2)
        assert agent.snapshots() == 1  # resumed: the log of the new server covers `since`
        assert agent.view == reference_view(store, "hv1")
        assert set(agent.view["ports"]) == {"p1", "p2"}
    finally:
        agent.close()
        b.stop()


def test_changes_while_disconnected_then_snapshot(tmp_path) -> None:
    """Changes land while no server runs (another writer on the store): the new server cannot
    replay them for this host and sends a snapshot; the agent's view is complete."""
    port_no = free_port()
    store = SqliteStore(os.path.join(tmp_path, "vxnet.db"))
    a = start_agent_server(port=port_no, store=store)
    c = client(a.url)
    c.register()
    net = a.api("admin").post("/networks", json={"network": {"name": "n"}}).json()["network"]["id"]
    agent = Agent(c)
    agent.wait_revision(put(store, "ports", port(net, "hv1", "p1")))
    stop_server_only(a)
    put(store, "ports", port(net, "hv1", "p2"))
    store_put(store, "/vxnet/res/ports/p1", json.dumps(port(net, "hv9", "p1")))  # moved away
    rev = put(store, "ports", port(net, "hv7", "p3"))
    b = start_agent_server(port=port_no, store=store)
    try:
        agent.wait_revision(rev)
        assert agent.snapshots() == 2
        assert agent.view == reference_view(store, "hv1")
        assert set(agent.view["ports"]) == {"p1", "p2", "p3"}  # p1 on another host, same network
        assert agent.view["ports"]["p1"]["binding:host_id"] == "hv9"
    finally:
        agent.close()
        b.stop()


def test_failover_to_a_running_server_replays_the_gap(tmp_path) -> None:
    """Two servers on one store; the client's server dies; changes made meanwhile through the
    other server reach the client, which resumes there without a snapshot."""
    store = SqliteStore(os.path.join(tmp_path, "vxnet.db"))
    a = start_agent_server(store=store)
    b = start_agent_server(store=store)
    c = client([a.url, b.url])
    c.register()
    net = a.api("admin").post("/networks", json={"network": {"name": "n"}}).json()["network"]["id"]
    agent = Agent(c)
    agent.wait_revision(put(store, "ports", port(net, "hv1", "p0")))
    assert c.current_url == a.url
    stop_server_only(a)
    # While the client reconnects: changes through server B's API and directly in the store.
    admin_b = b.api("admin")
    net2 = admin_b.post("/networks", json={"network": {"name": "n2"}}).json()["network"]["id"]
    revs = [put(store, "ports", port(net, "hv2", f"q{i}")) for i in range(20)]
    revs.append(put(store, "ports", port(net2, "hv1", "p-net2")))
    try:
        agent.wait_revision(revs[-1])
        assert c.current_url == b.url
        assert agent.snapshots() == 1
        updates = [m["revision"] for m in agent.messages if m["type"] == "update"]
        assert updates == sorted(updates) and len(updates) == len(set(updates))  # in order, no repeats
        assert set(revs) <= set(updates)  # every change of the gap
        assert agent.view == reference_view(store, "hv1")
        assert c.heartbeat() is True and c.current_url == b.url
    finally:
        agent.close()
        b.stop()


def test_failover_to_a_server_of_another_store_starts_over(tmp_path) -> None:
    """The next server runs on another store (a migrated one): the client's `since` is a
    revision of the old store, which the new one could take for its own; the store epoch the
    client sends with it makes the server answer with a snapshot, and the view is the new
    store's, not the old one's plus a replay."""
    old_store = SqliteStore(os.path.join(tmp_path, "old.db"))
    new_store = SqliteStore(os.path.join(tmp_path, "new.db"))
    a = start_agent_server(store=old_store)
    b = start_agent_server(store=new_store)
    on_b = client(b.url)
    on_b.register()  # hv1 is known to the new store early: b logs its updates from here on
    on_b.close()
    c = client([a.url, b.url])
    c.register()
    net = a.api("admin").post("/networks", json={"network": {"name": "n"}}).json()["network"]["id"]
    agent = Agent(c)
    agent.wait_revision(put(old_store, "ports", port(net, "hv1", "old-port")))
    assert c.epoch is not None
    old_epoch = c.epoch
    # The new store holds another world, at revisions past the old one's: without the epoch,
    # b would take `since` for one of its own revisions and replay its log after it.
    net2 = b.api("admin").post("/networks", json={"network": {"name": "n2"}}).json()["network"]["id"]
    for i in range(10):
        put(new_store, "ports", port(net2, "hv2", f"filler{i}"))
    rev = put(new_store, "ports", port(net2, "hv1", "new-port"))
    assert rev > agent.messages[-1]["revision"]
    stop_server_only(a)
    try:
        agent.wait_revision(rev)
        assert c.current_url == b.url
        assert "old-port" not in agent.view["ports"] and "new-port" in agent.view["ports"]
        assert agent.view == reference_view(new_store, "hv1")
        assert agent.snapshots() == 2 and c.epoch not in (None, old_epoch)
    finally:
        agent.close()
        b.stop()
        old_store.close()


def test_unix_socket_server(tmp_path) -> None:
    """`unix:///path` reaches a server listening on a unix socket (as from a lab namespace)."""
    import uvicorn

    from tests.conftest import USERS
    from vxnet.api.app import create_app
    from vxnet.config import Config

    sock = os.path.join(tmp_path, "vxnet.sock")
    store = SqliteStore(os.path.join(tmp_path, "vxnet.db"))
    app = create_app(Config(users=USERS + (AGENT,)), store)
    server = uvicorn.Server(uvicorn.Config(app, uds=sock, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started:
        assert time.time() < deadline
        time.sleep(0.01)
    c = client(f"unix://{sock}")
    try:
        assert c.register()["host"] == "hv1"
        assert c.heartbeat() is True
        first = next(iter(c.stream(None)))
        assert first["type"] == "snapshot" and first["view"]["host"]["underlay_ip"] == "198.51.100.1"
    finally:
        c.close()
        server.should_exit = True
        thread.join(10)
        store.close()


@pytest.mark.slow
def test_failover_and_expiry_over_etcd() -> None:
    """Two servers, each with its own client of one etcd member (as on two machines): the
    agent fails over and resumes without a snapshot; when it stops, its lease expires in etcd
    and the surviving server declares it dead."""
    from tests.support.etcd import EtcdCluster
    from vxnet.store.contract import Put
    from vxnet.store.etcd_store import EtcdStore

    cluster = EtcdCluster(1, prefix="vxac")
    try:
        cluster.wait_healthy()
        sa, sb = EtcdStore(cluster.endpoints), EtcdStore(cluster.endpoints)
        a = start_agent_server(store=sa, agent_down_time=3)  # type: ignore[arg-type]
        b = start_agent_server(store=sb, agent_down_time=3)  # type: ignore[arg-type]
        c = client([a.url, b.url])
        c.register()
        net = a.api("admin").post("/networks", json={"network": {"name": "n"}}).json()["network"]["id"]
        agent = Agent(c)

        def write(p: dict[str, Any]) -> int:
            return sb.txn([], [Put(f"/vxnet/res/ports/{p['id']}", json.dumps(p))]).revision

        agent.wait_revision(write(port(net, "hv1", "p1")))
        stop_server_only(a)
        revs = [write(port(net, "hv2", f"q{i}")) for i in range(5)]
        agent.wait_revision(revs[-1])
        assert agent.snapshots() == 1 and c.current_url == b.url
        assert agent.view == reference_view(sb, "hv1")  # type: ignore[arg-type]
        agent.close()  # the agent stops: no more heartbeats
        aid = agent_id_for("hv1")
        deadline = time.time() + 15
        while b.api("admin").get(f"/agents/{aid}").json()["agent"]["alive"]:
            assert time.time() < deadline, "agent never declared dead"
            time.sleep(0.2)
        stop_server_only(b)
        sa.close()
        sb.close()
    finally:
        cluster.stop()


def test_a_server_answering_5xx_is_skipped(srv: ServerHandle) -> None:
    """A server that answers but cannot serve (503, e.g. its store is gone) is failed over
    like an unreachable one."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def unavailable(request: Any) -> JSONResponse:
        return JSONResponse({"NeutronError": {"type": "ServiceUnavailable", "message": "store down",
                                              "detail": ""}}, status_code=503)

    sick = Starlette(routes=[Route("/{path:path}", unavailable, methods=["GET", "POST"])])
    port_no = free_port()
    server = uvicorn.Server(uvicorn.Config(sick, host="127.0.0.1", port=port_no, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        c = client([f"http://127.0.0.1:{port_no}", srv.url])
        assert c.register()["host"] == "hv1" and c.current_url == srv.url
        c._current = 0  # back to the sick one first: the stream fails over too
        first = next(iter(c.stream(None)))
        assert first["type"] == "snapshot" and c.current_url == srv.url
        c.close()
    finally:
        server.should_exit = True
        thread.join(10)


def test_plain_http_servers_load_no_ca_bundle() -> None:
    # http:// and unix:// clients share one TLS context that loads nothing (httpx's default
    # loads the CA bundle per client, ~1-3 MB resident); https:// keeps the verified default.
    from vxnet.agent.client import _Server
    from vxnet.httptls import verify_for

    def ctx(s: _Server) -> object:
        transport = s.transport or s.http._transport      # httpx's pool holds the context
        return transport._pool._ssl_context

    plain, uds, tls = _Server("http://192.0.2.1:9696", 5), _Server("unix:///run/none.sock", 5), \
        _Server("https://192.0.2.1:9696", 5)
    try:
        shared = verify_for("http://192.0.2.1")
        assert ctx(plain) is shared and ctx(uds) is shared and ctx(tls) is not shared
        assert ctx(tls).verify_mode.name == "CERT_REQUIRED" and ctx(tls).get_ca_certs() != []
    finally:
        for s in (plain, uds, tls):
            s.close()


def test_view_stream_lines_end_at_newlines_only() -> None:
    # NDJSON: a message ends at "\n" only; a name may hold U+2028 or other Unicode line breaks
    # raw (the server writes UTF-8, not \u escapes), which split a line in httpx's iter_lines;
    # pieces may end inside a line and inside a UTF-8 character.
    first = {"type": "snapshot", "revision": 1, "view": {"ports": {"p1": {"id": "p1", "name": "a\u2028b\x1cc\x85é"}}}}
    text = (json.dumps(first, ensure_ascii=False) + "\n\n" + json.dumps({"type": "ping", "revision": 2}) + "\r\n"
            + json.dumps({"type": "ping", "revision": 3})).encode()
    cut = text.index("é".encode()) + 1          # inside the two bytes of "é"
    c = client_over([text[:5], text[5:cut], text[cut:]])
    try:
        msgs = list(c.stream(None))
    finally:
        c.close()
    assert msgs == [first, {"type": "ping", "revision": 2}, {"type": "ping", "revision": 3}]


def test_a_snapshot_text_is_let_go_before_its_message_is_handled() -> None:
    """While the agent takes a message, the stream holds nothing of its text (httpx's line list
    held a restarted agent's snapshot text, ~5.5 MB at 10,000 ports, through its parse)."""
    import tracemalloc

    ports = {f"p{i:06d}": {"id": f"p{i:06d}", "network_id": "n1", "mac_address": "02:00:00:00:00:01",
                           "description": "x" * 2000} for i in range(3000)}     # dropped by the typed parse
    text = (json.dumps({"type": "snapshot", "revision": 1, "view": {"ports": ports}}) + "\n").encode()
    del ports
    c = client_over([text[i:i + 65536] for i in range(0, len(text), 65536)])
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        stream = c.stream(None)
        msg = next(stream)
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
        c.close()
    assert len(msg["view"]["ports"]) == 3000
    assert len(text) > 6_000_000 and held < len(text) / 3, held    # the typed ports (~1 MB), not the text
