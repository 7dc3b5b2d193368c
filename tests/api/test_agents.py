"""/v2.0/agents and the agents' registration, heartbeat, liveness and port status, over HTTP."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_host_view import StreamReader, agent_client, start_agent_server
from tests.conftest import ServerHandle
from tests.support import http
from vxnet.api.routers.agent_stream import agent_id_for, live_key

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")


@pytest.fixture
def srv(tmp_path) -> Iterator[ServerHandle]:
    h = start_agent_server(os.path.join(tmp_path, "vxnet.db"))
    yield h
    h.stop()


# Upper bound for a lease-driven event (expiry, sweep) to be seen: never a pass condition.
EVENT_BOUND = 30.0


# Agents of `short_lease` are declared dead this long after their last heartbeat. Long enough
# that no step of a test meant to happen while a host is alive can outlast it on a loaded machine
# (a 2 s lease expired between a registration and the next few requests under a CPU burner).
SHORT_LEASE = 5


@pytest.fixture
def short_lease(tmp_path) -> Iterator[ServerHandle]:
    """Agents are declared dead SHORT_LEASE s after their last heartbeat."""
    h = start_agent_server(os.path.join(tmp_path, "vxnet.db"), agent_down_time=SHORT_LEASE)
    yield h
    h.stop()


def register(c: httpx.Client, host: str, ip: str = "198.51.100.1", **kw: Any) -> dict[str, Any]:
    r = c.post(f"/hosts/{host}/register", json={"underlay_ip": ip, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def bound_port(h: ServerHandle, host: str, user: str = "alice") -> dict[str, Any]:
    api = h.api(user)
    net = api.post("/networks", json={"network": {"name": "n"}}).json()["network"]
    r = api.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.64.1.0/24", "ip_version": 4}})
    assert r.status_code == 201, r.text
    r = h.api("admin").post("/ports", json={"port": {"network_id": net["id"], "binding:host_id": host,
                                                     "project_id": api.get("/networks/" + net["id"]).json()[
                                                         "network"]["project_id"]}})
    assert r.status_code == 201, r.text
    return r.json()["port"]


def test_register_shows_a_neutron_agent(srv: ServerHandle) -> None:
    c = agent_client(srv)
    reply = register(c, "compute-1", "198.51.100.7", gateway=True, external_interface="eth9")
    assert reply["host"] == "compute-1" and reply["lease_ttl"] == 15 and reply["heartbeat_interval"] == 5
    agents = srv.api("admin").get("/agents").json()["agents"]
    assert len(agents) == 1
    a = agents[0]
    assert a["id"] == agent_id_for("compute-1") == reply["agent_id"]
    assert a["binary"] == "vxnet-agent" and a["agent_type"] == "vxnet agent" and a["host"] == "compute-1"
    assert a["alive"] is True and a["admin_state_up"] is True and a["availability_zone"] is None
    assert a["configurations"] == {"underlay_ip": "198.51.100.7", "gateway": True, "external_interface": "eth9",
                                   "ports": 0}
    for k in ("heartbeat_timestamp", "created_at", "started_at"):
        assert STAMP.match(a[k]), a[k]
    assert {"topic", "description"} <= set(a)
    shown = srv.api("admin").get(f"/agents/{a['id']}").json()["agent"]
    assert shown == a
    # filters and fields work as on any collection
    assert srv.api("admin").get("/agents", params={"host": "other"}).json()["agents"] == []
    assert srv.api("admin").get("/agents", params={"fields": "host"}).json()["agents"] == [{"host": "compute-1"}]
    # registering again keeps the id and created_at, refreshes started_at, updates the config
    register(c, "compute-1", "198.51.100.8")
    again = srv.api("admin").get(f"/agents/{a['id']}").json()["agent"]
    assert again["created_at"] == a["created_at"] and again["configurations"]["underlay_ip"] == "198.51.100.8"
    assert again["configurations"]["gateway"] is False


def test_non_admins_see_no_agents(srv: ServerHandle) -> None:
    register(agent_client(srv), "compute-1")
    aid = agent_id_for("compute-1")
    for user in ("alice", "alice_reader", "bob"):
        r = srv.api(user).get("/agents")
        assert r.status_code == 200 and r.json() == {"agents": []}
        r = srv.api(user).get(f"/agents/{aid}")
        assert r.status_code == 404 and r.json()["NeutronError"]["type"] == "AgentNotFound"
        r = srv.api(user).put(f"/agents/{aid}", json={"agent": {"admin_state_up": False}})
        assert r.status_code == 404
        assert srv.api(user).delete(f"/agents/{aid}").status_code == 404
    # the agents' own identity may read them
    tok = agent_client(srv).headers["X-Auth-Token"]
    r = http.get(srv.url + "/v2.0/agents", headers={"X-Auth-Token": tok})
    assert [a["host"] for a in r.json()["agents"]] == ["compute-1"]


def test_update_agent(srv: ServerHandle) -> None:
    register(agent_client(srv), "compute-1")
    aid = agent_id_for("compute-1")
    admin = srv.api("admin")
    r = admin.put(f"/agents/{aid}", json={"agent": {"admin_state_up": False, "description": "maintenance"}})
    assert r.status_code == 200, r.text
    assert r.json()["agent"]["admin_state_up"] is False and r.json()["agent"]["description"] == "maintenance"
    assert admin.get(f"/agents/{aid}").json()["agent"]["description"] == "maintenance"
    # re-registration keeps what the admin set
    register(agent_client(srv), "compute-1")
    assert admin.get(f"/agents/{aid}").json()["agent"]["admin_state_up"] is False
    r = admin.put(f"/agents/{aid}", json={"agent": {"host": "elsewhere"}})
    assert r.status_code == 400 and "Unrecognized attribute" in r.json()["NeutronError"]["message"]
    r = admin.put(f"/agents/{aid}", json={"agent": {"admin_state_up": "maybe"}})
    assert r.status_code == 400
    r = admin.put("/agents/00000000-0000-0000-0000-000000000000", json={"agent": {"description": "x"}})
    assert r.status_code == 404 and r.json()["NeutronError"]["type"] == "AgentNotFound"


def test_delete_agent_forces_reregistration(srv: ServerHandle) -> None:
    c = agent_client(srv)
    register(c, "compute-1")
    aid = agent_id_for("compute-1")
    assert c.post("/hosts/compute-1/heartbeat").json() == {"alive": True}
    # as for PUT, a stale If-Match is a 412 and the agent stays (agents carry no revision_number)
    r = srv.api("admin").delete(f"/agents/{aid}", headers={"If-Match": "revision_number=3"})
    assert r.status_code == 412 and r.json()["NeutronError"]["type"] == "PreconditionFailed"
    assert srv.api("admin").get(f"/agents/{aid}").status_code == 200
    assert c.post("/hosts/compute-1/heartbeat").json() == {"alive": True}
    assert srv.api("admin").delete(f"/agents/{aid}").status_code == 204
    assert srv.api("admin").get(f"/agents/{aid}").status_code == 404
    r = c.post("/hosts/compute-1/heartbeat")
    assert r.status_code == 404 and r.json()["NeutronError"]["type"] == "AgentNotFound"
    register(c, "compute-1")
    assert srv.api("admin").get(f"/agents/{aid}").json()["agent"]["alive"] is True
    assert srv.api("admin").delete("/agents/" + aid + "x").status_code == 404


def test_register_validation_and_policy(srv: ServerHandle) -> None:
    c = agent_client(srv)
    for body in ({}, {"underlay_ip": "not-an-ip"}, {"underlay_ip": "198.51.100.1", "gateway": "perhaps"},
                 {"underlay_ip": "198.51.100.1", "colour": "blue"}):
        r = c.post("/hosts/h1/register", json=body)
        assert r.status_code == 400, body
        assert "NeutronError" in r.json()
    r = c.post("/hosts/h1/register", content=b"{nope")
    assert r.status_code == 400
    for user in ("alice", "bob"):
        r = srv.api(user).post("/vxnet/hosts/h1/register", json={"underlay_ip": "198.51.100.1"})
        assert r.status_code == 403
        assert srv.api(user).post("/vxnet/hosts/h1/heartbeat").status_code == 403
        assert srv.api(user).post("/vxnet/hosts/h1/ports-status", json={"ACTIVE": []}).status_code == 403
    assert http.post(srv.url + "/v2.0/vxnet/hosts/h1/heartbeat").status_code == 401
    # an admin may act for an agent
    assert srv.api("admin").post("/vxnet/hosts/h1/register", json={"underlay_ip": "198.51.100.1"}).status_code == 200
    assert srv.api("admin").get("/agents").json()["agents"][0]["host"] == "h1"
    assert c.post("/hosts/never-registered/heartbeat").status_code == 404


def test_ports_status_only_for_the_host(srv: ServerHandle) -> None:
    c = agent_client(srv)
    register(c, "hv1")
    mine = bound_port(srv, "hv1")
    other = bound_port(srv, "hv2", user="bob")
    assert mine["status"] == "DOWN"
    r = c.post("/hosts/hv1/ports-status", json={"ACTIVE": [mine["id"], other["id"], "no-such-port"]})
    assert r.status_code == 200 and r.json() == {"updated": [mine["id"]]}
    got = srv.api("alice").get(f"/ports/{mine['id']}").json()["port"]
    assert got["status"] == "ACTIVE" and got["revision_number"] > mine["revision_number"]
    assert srv.api("bob").get(f"/ports/{other['id']}").json()["port"]["status"] == "DOWN"
    # repeating is a no-op; DOWN goes back
    assert c.post("/hosts/hv1/ports-status", json={"ACTIVE": [mine["id"]]}).json() == {"updated": []}
    assert c.post("/hosts/hv1/ports-status", json={"DOWN": [mine["id"]]}).json() == {"updated": [mine["id"]]}
    assert c.post("/hosts/hv1/ports-status", json={"ACTIVE": "x"}).status_code == 400
    assert c.post("/hosts/hv1/ports-status", json={"UP": []}).status_code == 400
    # a host name no host can have is refused as on the other host endpoints, before the body
    assert c.post("/hosts/hv%201/ports-status", json={"ACTIVE": [mine["id"]]}).status_code == 400
    assert srv.api("admin").get("/agents").json()["agents"][0]["configurations"]["ports"] == 1


def test_lease_expiry_marks_agent_dead_and_ports_down(short_lease: ServerHandle, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="vxnet.agents")
    h = short_lease
    c = agent_client(h)
    reply = register(c, "hv1", "198.51.100.1")
    register(c, "hv2", "198.51.100.2")
    assert reply["lease_ttl"] == SHORT_LEASE
    port = bound_port(h, "hv1")
    net_id = port["network_id"]
    # hv2 has a port on the same network, so it watches hv1's host entry
    r = h.api("admin").post("/ports", json={"port": {"network_id": net_id, "binding:host_id": "hv2",
                                                     "project_id": port["project_id"]}})
    assert r.status_code == 201
    assert c.post("/hosts/hv1/ports-status", json={"ACTIVE": [port["id"]]}).json()["updated"] == [port["id"]]
    for host in ("hv1", "hv2"):   # a fresh lease each, right before the snapshot that shows hv1 alive
        assert c.post(f"/hosts/{host}/heartbeat").status_code == 200
    peer = StreamReader(h, "hv2")
    _, snap = peer.wait(lambda m: m["type"] == "snapshot")
    assert snap["view"]["hosts"]["hv1"]["alive"] is True
    # hv2 keeps beating, hv1 stops: wait for hv1 dead, then for its port DOWN (events; the
    # deadline only bounds them: a loaded machine may need more than the lease plus a sweep)
    deadline = time.time() + EVENT_BOUND
    while time.time() < deadline:
        assert c.post("/hosts/hv2/heartbeat").status_code == 200
        a1 = h.api("admin").get(f"/agents/{agent_id_for('hv1')}").json()["agent"]
        if not a1["alive"]:
            break
        time.sleep(0.3)
    assert a1["alive"] is False
    while time.time() < deadline:
        assert c.post("/hosts/hv2/heartbeat").status_code == 200
        if h.api("alice").get(f"/ports/{port['id']}").json()["port"]["status"] == "DOWN":
            break
        time.sleep(0.1)
    assert h.api("alice").get(f"/ports/{port['id']}").json()["port"]["status"] == "DOWN"
    assert h.api("admin").get(f"/agents/{agent_id_for('hv2')}").json()["agent"]["alive"] is True
    peer.wait(lambda m: m["type"] == "update" and m["put"].get("hosts", {}).get("hv1", {}).get("alive") is False)
    # the operator's log says which host died and what it cost, once
    deaths = [r.getMessage() for r in caplog.records if "declared dead" in r.getMessage()]
    assert deaths == [("agent hv1 declared dead (its liveness lease ended without a heartbeat): "
                       "record alive=false, 1 ACTIVE port(s) set DOWN")], deaths
    # the dead agent's heartbeat is refused; registering brings it back
    assert c.post("/hosts/hv1/heartbeat").status_code == 404
    register(c, "hv1", "198.51.100.1")
    assert h.api("admin").get(f"/agents/{agent_id_for('hv1')}").json()["agent"]["alive"] is True
    peer.wait(lambda m: m["type"] == "update" and m["put"].get("hosts", {}).get("hv1", {}).get("alive") is True)
    peer.close()


def test_reregistration_does_not_expire_the_host(short_lease: ServerHandle, caplog: pytest.LogCaptureFixture) -> None:
    """An agent restart registers with a new lease; the old lease's end must not mark it dead."""
    caplog.set_level(logging.WARNING, logger="vxnet.agents")
    h = short_lease
    c = agent_client(h)
    register(c, "hv1")
    old_lease_end = time.monotonic() + SHORT_LEASE
    time.sleep(1.0)
    register(c, "hv1")  # new lease; the old one is revoked without deleting the key
    while time.monotonic() < old_lease_end + 1.5:   # until the old lease's end has passed
        time.sleep(0.4)
        assert c.post("/hosts/hv1/heartbeat").status_code == 200
        agent = h.api("admin").get(f"/agents/{agent_id_for('hv1')}").json()["agent"]
        if agent["alive"] is not True:  # say which half of `alive` failed: the record or the liveness key
            live = h.store.get(live_key("hv1"))
            leases = dict(getattr(h.store, "_leases", {}))
            pytest.fail(f"alive={agent['alive']}: record {agent}; liveness key {live}; "
                        f"leases {leases} at monotonic {time.monotonic()}")
    assert not [r for r in caplog.records if "declared dead" in r.getMessage()]



def test_startup_sweep_waits_a_lease_before_declaring_hosts_dead(tmp_path) -> None:
    """A store new to the agents (migration, restored backup) has their records but no liveness
    keys: a host that re-registers within one lease keeps its ports ACTIVE; the ports of one that
    does not go DOWN after that lease (the sweep did run)."""
    from vxnet.cli.migrate import migrate
    from vxnet.store.sqlite_store import SqliteStore

    old = start_agent_server(os.path.join(tmp_path, "old.db"), agent_down_time=30)
    c = agent_client(old)
    register(c, "hv1", "198.51.100.1")
    register(c, "hv2", "198.51.100.2")
    p1, p2 = bound_port(old, "hv1"), bound_port(old, "hv2", user="bob")
    assert c.post("/hosts/hv1/ports-status", json={"ACTIVE": [p1["id"]]}).status_code == 200
    assert c.post("/hosts/hv2/ports-status", json={"ACTIVE": [p2["id"]]}).status_code == 200
    old.stop()
    src, dst = SqliteStore(os.path.join(tmp_path, "old.db")), SqliteStore(os.path.join(tmp_path, "new.db"))
    migrate(src, dst)  # copies everything but lease-bound keys, as `vxnet migrate` does
    src.close()
    new = start_agent_server(store=dst, agent_down_time=SHORT_LEASE)
    try:
        admin = new.api("admin")

        def status(port: dict[str, Any]) -> str:
            return str(admin.get(f"/ports/{port['id']}").json()["port"]["status"])

        assert status(p1) == status(p2) == "ACTIVE"  # nothing swept at start
        c2 = agent_client(new)
        register(c2, "hv1", "198.51.100.1")
        deadline = time.time() + EVENT_BOUND
        while status(p2) == "ACTIVE" and time.time() < deadline:
            assert c2.post("/hosts/hv1/heartbeat").status_code == 200
            assert status(p1) == "ACTIVE"
            time.sleep(0.2)
        assert status(p2) == "DOWN", "the host that never came back was not swept"
        assert status(p1) == "ACTIVE"
        assert admin.get(f"/agents/{agent_id_for('hv1')}").json()["agent"]["alive"] is True
        assert admin.get(f"/agents/{agent_id_for('hv2')}").json()["agent"]["alive"] is False
    finally:
        new.stop()


def test_resume_from_another_stores_revision_gets_a_snapshot(srv: ServerHandle) -> None:
    """Revisions are positions in one store: a `since` tagged with another epoch (the store
    before a migration) starts over with a snapshot; the same epoch resumes without one."""
    c = agent_client(srv)
    register(c, "hv1", "198.51.100.1")
    port = bound_port(srv, "hv1")
    first = StreamReader(srv, "hv1")
    _, snap = first.wait(lambda m: m["type"] == "snapshot")
    first.close()
    assert isinstance(snap["epoch"], str) and snap["epoch"]
    same = StreamReader(srv, "hv1", since=snap["revision"], epoch=snap["epoch"])
    other = StreamReader(srv, "hv1", since=snap["revision"], epoch="0" * 32)
    r = srv.api("admin").put(f"/ports/{port['id']}", json={"port": {"name": "changed"}})
    assert r.status_code == 200
    _, m = same.wait(lambda m: m["type"] in ("snapshot", "update"))
    assert m["type"] == "update"  # resumed, no snapshot
    _, m = other.wait(lambda m: m["type"] in ("snapshot", "update"))
    assert m["type"] == "snapshot" and m["epoch"] == snap["epoch"]
    same.close()
    other.close()
