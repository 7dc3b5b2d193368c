"""`/v2.0/vxnet/status` and `/v2.0/vxnet/doctor` over HTTP; the request id in the agents' view
stream; `vxnet_build_info`; `vxnet --version`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.test_agents import bound_port, register
from tests.api.test_host_view import StreamReader, agent_client, start_agent_server
from tests.conftest import ServerHandle
from tests.support import http


@pytest.fixture
def srv(tmp_path) -> Iterator[ServerHandle]:
    """Hosts stay alive between heartbeats for 60 s: a test's steps never race the down time,
    however loaded the machine (with 2 s, a CI run at load 20 saw registered hosts die mid-test)."""
    h = start_agent_server(os.path.join(tmp_path, "vxnet.db"), agent_down_time=60)
    yield h
    h.stop()


@pytest.fixture
def srv_short(tmp_path) -> Iterator[ServerHandle]:
    """Hosts die 2 s after their last heartbeat."""
    h = start_agent_server(os.path.join(tmp_path, "vxnet.db"), agent_down_time=2)
    yield h
    h.stop()


def status(h: ServerHandle) -> dict[str, Any]:
    r = h.api("admin").get("/vxnet/status")
    assert r.status_code == 200, r.text
    return r.json()["status"]


def host(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in st["hosts"] if h["host"] == name)


def report(applied: int | None, received: int | None = None, **kw: Any) -> dict[str, Any]:
    return {"status": {"version": "test", "features": ["firewall"], "applied_revision": applied,
                       "received_revision": received if received is not None else applied, "failing": [],
                       "ports": {"active": 0, "down": 1}, "down": {}, "drift": {"repaired": 0}, **kw}}


def test_status_alive_behind_and_port_reasons(srv: ServerHandle) -> None:
    c = agent_client(srv)
    register(c, "hv1", "198.51.100.1")
    register(c, "hv2", "198.51.100.2")
    register(c, "hv3", "198.51.100.3")
    reader = StreamReader(srv, "hv1")
    try:
        port = bound_port(srv, "hv1")
        _, upd = reader.wait(lambda m: m.get("type") == "update" and port["id"] in (m.get("put") or {}).get("ports", {}))
    finally:
        reader.close()
    rev = upd["revision"]
    # hv1 received the port but applied only an older revision: behind, with its reason for the port.
    r = c.post("/hosts/hv1/heartbeat", json=report(rev - 1, rev, down={port["id"]: "tap tapX not present"}))
    assert r.status_code == 200, r.text
    hv2_rev = srv.store.revision()      # everything hv2 was sent is at or before this
    assert c.post("/hosts/hv2/heartbeat", json=report(hv2_rev)).status_code == 200
    st = status(srv)
    h1 = host(st, "hv1")
    assert h1["alive"] and h1["state"] == "behind" and h1["revision"] == {"applied": rev - 1, "wanted": rev}
    assert h1["ports"]["bound"] == 1 and h1["ports"]["by_status"] == {"DOWN": 1}
    assert h1["ports"]["not_active"][0]["why"] == "tap tapX not present"
    assert h1["features"] == ["firewall"] and h1["underlay_ip"] == "198.51.100.1"
    assert host(st, "hv2")["state"] == "ok"
    assert host(st, "hv3")["state"] == "no report"      # registered, never reported (an older agent)
    assert st["store"]["ok"] and st["store"]["revision"] >= rev
    assert [s for s in st["servers"] if s["id"] == st["server"]["id"]], st["servers"]

    # hv1 applies it: ok. A report is stored only when it changes (no store write per heartbeat).
    assert c.post("/hosts/hv1/heartbeat", json=report(rev)).status_code == 200
    before = srv.store.revision()
    assert c.post("/hosts/hv1/heartbeat", json=report(rev)).status_code == 200
    assert srv.store.revision() == before
    assert host(status(srv), "hv1")["state"] == "ok"


def test_status_dead_after_down_time_keeps_last_report(srv_short: ServerHandle) -> None:
    srv = srv_short
    c = agent_client(srv)
    register(c, "hv1", "198.51.100.1")
    register(c, "hv2", "198.51.100.2")
    hv2_rev = srv.store.revision()
    assert c.post("/hosts/hv2/heartbeat", json=report(hv2_rev)).status_code == 200
    # hv2 stops heartbeating: dead after agent_down_time (2 s), its last report still shown.
    deadline = time.time() + 30
    while time.time() < deadline:
        assert c.post("/hosts/hv1/heartbeat", json=report(hv2_rev)).status_code == 200
        h2 = host(status(srv), "hv2")
        if h2["state"] == "dead":
            break
        time.sleep(0.3)
    assert h2["state"] == "dead" and not h2["alive"] and h2["revision"]["applied"] == hv2_rev


def test_status_and_doctor_are_admin_only(srv: ServerHandle) -> None:
    alice = srv.api("alice")
    assert alice.get("/vxnet/status").status_code == 403
    r = alice.post("/vxnet/doctor", json={"repair": True})
    assert r.status_code == 403 and r.json()["NeutronError"]["type"] == "PolicyNotAuthorized"
    assert alice.get("/vxnet/doctor/" + "0" * 32).status_code == 403
    # an agent (service role) answers doctor requests but may not start one or read the status
    c = agent_client(srv)
    assert c.get("/status").status_code == 403
    assert c.post("/doctor", json={}).status_code == 403
    assert alice.post("/vxnet/hosts/hv1/doctor/" + "0" * 32, json={"drift": []}).status_code == 403
    admin = srv.api("admin")
    for body in ({"repair": "yes"}, {"hosts": "hv1"}, {"other": 1}, []):
        r = admin.post("/vxnet/doctor", json=body)
        assert r.status_code == 400, (body, r.text)
    assert admin.get("/vxnet/doctor/not-an-id").status_code == 400
    assert c.post("/hosts/hv1/doctor/../x", json={}).status_code in (400, 404)
    assert c.post("/hosts/hv1/heartbeat", json={"status": "bad"}).status_code in (400, 404)


def test_doctor_request_reaches_named_agents_and_answers_come_back(srv: ServerHandle) -> None:
    c = agent_client(srv)
    register(c, "hv1", "198.51.100.1")
    register(c, "hv2", "198.51.100.2")
    r1, r2 = StreamReader(srv, "hv1"), StreamReader(srv, "hv2")
    try:
        r1.wait(lambda m: m.get("type") == "snapshot")
        r2.wait(lambda m: m.get("type") == "snapshot")
        r = srv.api("admin").post("/vxnet/doctor", json={"repair": True, "hosts": ["hv1"]})
        assert r.status_code == 202, r.text
        doc = r.json()["doctor"]
        assert doc["expected"] == ["hv1"] and doc["repair"] is True
        _, msg = r1.wait(lambda m: m.get("type") == "doctor")
        assert msg["id"] == doc["id"] and msg["repair"] is True
        everyone = srv.api("admin").post("/vxnet/doctor", json={}).json()["doctor"]
        r2.wait(lambda m: m.get("type") == "doctor" and m["id"] == everyone["id"])
        assert not [m for _, m in r2.lines if m.get("id") == doc["id"]], "hv2 got a request for hv1 only"
    finally:
        r1.close()
        r2.close()
    drift = [{"kind": "fdb", "object": "vxv-1 fa:16:3e:00:00:01 False", "expected": "x", "found": None}]
    assert c.post(f"/hosts/hv1/doctor/{doc['id']}", json={"host": "hv1", "drift": drift}).status_code == 200
    got = srv.api("admin").get(f"/vxnet/doctor/{doc['id']}").json()["doctor"]["results"]
    assert got == {"hv1": {"host": "hv1", "drift": drift}}


def test_request_id_travels_with_the_revision(srv: ServerHandle) -> None:
    c = agent_client(srv)
    register(c, "hv1", "198.51.100.1")
    port = bound_port(srv, "hv1")
    reader = StreamReader(srv, "hv1")
    try:
        reader.wait(lambda m: m.get("type") == "snapshot")
        r = srv.api("admin").put(f"/ports/{port['id']}", json={"port": {"name": "renamed"}})
        assert r.status_code == 200, r.text
        rid = r.headers["X-Openstack-Request-Id"]
        _, msg = reader.wait(lambda m: m.get("type") == "update"
                             and (m.get("put") or {}).get("ports", {}).get(port["id"], {}).get("name") == "renamed")
        assert msg["request_id"] == rid
    finally:
        reader.close()


def test_build_info_metric_and_version() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from vxnet.buildinfo import register_build_info, version

    reg = CollectorRegistry()
    register_build_info(reg)
    text = generate_latest(reg).decode()
    from importlib import metadata

    assert version() == metadata.version("vxnet")      # the package's metadata, read cheaply
    assert f'vxnet_build_info{{python="{sys.version.split()[0]}",version="{version()}"}} 1.0' in text
    out = subprocess.run([sys.executable, "-c", "from vxnet.cli.main import main; main()", "--version"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stdout.strip() == f"vxnet {version()} (Python {sys.version.split()[0]})"


def test_server_metrics_carry_build_info_and_host_states(srv: ServerHandle) -> None:
    c = agent_client(srv)
    register(c, "hv1", "198.51.100.1")
    register(c, "hv2", "198.51.100.2")
    assert c.post("/hosts/hv1/heartbeat", json=report(srv.store.revision())).status_code == 200
    deadline = time.time() + 10
    while True:
        r = http.get(srv.url + "/metrics", headers={"X-Auth-Token": srv.token("admin")}, timeout=10)
        assert r.status_code == 200 and "vxnet_build_info{" in r.text
        if 'vxnet_hosts{state="ok"} 1.0' in r.text or time.time() > deadline:
            break
        time.sleep(0.2)     # the hub sees the stored report through its watch
    assert 'vxnet_hosts{state="ok"} 1.0' in r.text and 'vxnet_hosts{state="no report"} 1.0' in r.text, r.text
    assert 'vxnet_host_up{host="hv1"} 1.0' in r.text and 'vxnet_host_revision_lag{host="hv1"} 0.0' in r.text
