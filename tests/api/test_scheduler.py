"""Centralized SNAT over HTTP: snat ports follow a router's interfaces while it has a gateway,
and the gateway + snat ports are scheduled on alive gateway hosts (least loaded, ties by name),
unscheduled without one, scheduled when one registers, moved when its lease expires."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_host_view import agent_client, start_agent_server
from tests.conftest import ServerHandle
from tests.support.heartbeats import Heartbeats
from vxnet.services.scheduler import choose, plan

SNAT = "network:router_centralized_snat"
GW = "network:router_gateway"


@pytest.fixture
def srv(tmp_path) -> Iterator[ServerHandle]:
    h = start_agent_server(os.path.join(tmp_path, "vxnet.db"), agent_down_time=2)
    yield h
    h.stop()


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def register(c: httpx.Client, host: str, gateway: bool = True) -> None:
    ok(c.post(f"/hosts/{host}/register", json={"underlay_ip": "198.51.100.9", "gateway": gateway}))


def ext_net(admin: httpx.Client) -> dict[str, Any]:
    net = ok(admin.post("/networks", json={"network": {"name": "public", "router:external": True,
                                                       "provider:network_type": "flat"}}), 201)["network"]
    ok(admin.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                               "cidr": "203.0.113.0/24", "gateway_ip": "203.0.113.1"}}), 201)
    return net


def tenant(c: httpx.Client, cidr: str) -> dict[str, Any]:
    net = ok(c.post("/networks", json={"network": {"name": "n"}}), 201)["network"]
    return ok(c.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4, "cidr": cidr}}), 201)["subnet"]


def router_ports(admin: httpx.Client, rid: str, owner: str) -> list[dict[str, Any]]:
    return ok(admin.get("/ports", params={"device_id": rid, "device_owner": owner}))["ports"]


def standbys(admin: httpx.Client, rid: str) -> set[tuple[str, ...]]:
    """The standby lists recorded on a router's gateway and snat ports (one value expected)."""
    return {tuple((p["binding:vif_details"] or {}).get("ha_standby_hosts") or ())
            for p in router_ports(admin, rid, GW) + router_ports(admin, rid, SNAT)}


def test_plan_failover_standbys_and_rebalance() -> None:
    """The pure HA placement: a dead active's router goes to its standby, standbys fill up
    spreading over hosts, a joining host gets actives (prepared ones first)."""
    assert plan({"r1": ("", ())}, []) == {"r1": ("", ())}
    assert plan({"r1": ("", ())}, ["a"]) == {"r1": ("a", ())}
    two = plan({"r1": ("", ()), "r2": ("", ())}, ["a", "b"])
    assert two == {"r1": ("a", ("b",)), "r2": ("b", ("a",))}       # actives spread, standbys too
    # the active dies: its standby takes over (not the least-loaded host), a new standby is found
    got = plan({"r1": ("a", ("c",)), "r2": ("b", ("a",))}, ["b", "c"])
    assert got == {"r1": ("c", ("b",)), "r2": ("b", ("c",))}
    # a dead standby is replaced, an alive active kept even if unbalanced without `rebalance`
    assert plan({"r1": ("a", ("x",)), "r2": ("a", ("b",))}, ["a", "b"]) == \
        {"r1": ("a", ("b",)), "r2": ("a", ("b",))}
    # rebalance: the router whose standby is the under-loaded host moves (swap), one at a time
    got = plan({"r1": ("a", ("c",)), "r2": ("a", ("b",)), "r3": ("a", ("c",))}, ["a", "b", "c"], rebalance=True)
    assert got["r2"] == ("b", ("a",)) and [got[r][0] for r in ("r1", "r3")].count("a") == 1
    assert sorted(a for a, _ in got.values()) == ["a", "b", "c"]
    assert all(a not in sb and len(sb) == 1 for a, sb in got.values())
    # balanced within one: nothing moves
    same = {"r1": ("a", ("b",)), "r2": ("a", ("b",)), "r3": ("b", ("a",))}
    assert plan(same, ["a", "b"], rebalance=True) == same


def test_choose_least_loaded_ties_by_name() -> None:
    assert choose([], {}) == ""
    assert choose(["gw2", "gw1"], {}) == "gw1"
    assert choose(["gw1", "gw2"], {"gw1": 1}) == "gw2"
    assert choose(["gw1", "gw2", "gw3"], {"gw1": 2, "gw2": 1, "gw3": 1}) == "gw2"


def test_snat_ports_follow_interfaces_and_gateway(srv: ServerHandle) -> None:
    admin, alice = srv.api("admin"), srv.api("alice")
    ext = ext_net(admin)
    s1, s2 = tenant(alice, "100.64.1.0/24"), tenant(alice, "100.64.2.0/24")
    r = ok(alice.post("/routers", json={"router": {"name": "r"}}), 201)["router"]
    ok(alice.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": s1["id"]}))
    assert router_ports(admin, r["id"], SNAT) == []          # no gateway: no snat port
    ok(alice.put(f"/routers/{r['id']}", json={"router": {"external_gateway_info": {"network_id": ext["id"]}}}))
    snat = router_ports(admin, r["id"], SNAT)
    assert len(snat) == 1 and snat[0]["fixed_ips"][0]["subnet_id"] == s1["id"]
    assert snat[0]["project_id"] == "" and snat[0]["fixed_ips"][0]["ip_address"] != "100.64.1.1"
    ok(alice.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": s2["id"]}))
    assert sorted(p["fixed_ips"][0]["subnet_id"] for p in router_ports(admin, r["id"], SNAT)) == \
        sorted([s1["id"], s2["id"]])
    # project "" as in Neutron; the tenant sees them as the owner of their networks, and nobody
    # deletes them through the port API
    mine = ok(alice.get("/ports", params={"device_owner": SNAT}))["ports"]
    assert len(mine) == 2
    assert alice.delete(f"/ports/{mine[0]['id']}").status_code == 409
    assert admin.delete(f"/ports/{mine[0]['id']}").status_code == 409
    ok(alice.put(f"/routers/{r['id']}/remove_router_interface", json={"subnet_id": s1["id"]}))
    assert [p["fixed_ips"][0]["subnet_id"] for p in router_ports(admin, r["id"], SNAT)] == [s2["id"]]
    ok(alice.put(f"/routers/{r['id']}", json={"router": {"external_gateway_info": {}}}))
    assert router_ports(admin, r["id"], SNAT) == []
    # gateway again, then everything removed: the network and subnet can be deleted
    ok(alice.put(f"/routers/{r['id']}", json={"router": {"external_gateway_info": {"network_id": ext["id"]}}}))
    assert len(router_ports(admin, r["id"], SNAT)) == 1
    ok(alice.put(f"/routers/{r['id']}/remove_router_interface", json={"subnet_id": s2["id"]}))
    assert router_ports(admin, r["id"], SNAT) == []
    assert alice.delete(f"/routers/{r['id']}").status_code == 204
    assert alice.delete(f"/networks/{s2['network_id']}").status_code == 204


def test_scheduling_register_and_lease_expiry(srv: ServerHandle) -> None:
    with Heartbeats(lambda: agent_client(srv)) as beats:
        _scheduling_register_and_lease_expiry(srv, beats)


def _scheduling_register_and_lease_expiry(srv: ServerHandle, beats: Heartbeats) -> None:
    admin, alice = srv.api("admin"), srv.api("alice")
    c = agent_client(srv)
    ext = ext_net(admin)
    register(c, "compute1", gateway=False)
    beats.add("compute1")
    routers = []
    for i in range(3):
        s = tenant(alice, f"100.64.{10 + i}.0/24")
        r = ok(alice.post("/routers", json={"router": {"name": f"r{i}",
                                                       "external_gateway_info": {"network_id": ext["id"]}}}), 201)
        routers.append(r["router"]["id"])
        ok(alice.put(f"/routers/{routers[-1]}/add_router_interface", json={"subnet_id": s["id"]}))

    def hosts() -> dict[str, set[str]]:
        out = {}
        for rid in routers:
            ports = router_ports(admin, rid, GW) + router_ports(admin, rid, SNAT)
            assert len(ports) == 2
            out[rid] = {p["binding:host_id"] for p in ports}
        return out

    assert all(h == {""} for h in hosts().values())          # no gateway host: unscheduled
    register(c, "gw2")
    beats.add("gw2")
    assert all(h == {"gw2"} for h in hosts().values())       # scheduled as soon as one registers
    assert all(standbys(admin, rid) == {()} for rid in routers)   # one gateway host: no standby
    register(c, "gw1")
    beats.add("gw1")
    # a gateway joining: actives are spread (3-0 -> 2-1, the first router by id moves), every
    # router gets the other host as its standby
    placed = hosts()
    moved = min(routers)
    assert placed[moved] == {"gw1"} and all(placed[rid] == {"gw2"} for rid in routers if rid != moved)
    assert standbys(admin, moved) == {("gw2",)}
    assert all(standbys(admin, rid) == {("gw1",)} for rid in routers if rid != moved)
    # a new router goes to the least loaded host
    s = tenant(alice, "100.64.20.0/24")
    r = ok(alice.post("/routers", json={"router": {"name": "r3"}}), 201)["router"]
    ok(alice.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": s["id"]}))
    ok(alice.put(f"/routers/{r['id']}", json={"router": {"external_gateway_info": {"network_id": ext["id"]}}}))
    routers.append(r["id"])
    assert hosts()[r["id"]] == {"gw1"} and standbys(admin, r["id"]) == {("gw2",)}
    # gw2 stops heartbeating: after its lease its routers move to gw1 (gw1 keeps beating)
    beats.discard("gw2")
    deadline = time.time() + 30  # bounds a lease-driven event, not a pass condition
    moved = False
    while time.time() < deadline and not moved:
        moved = all(h == {"gw1"} for h in hosts().values())
        time.sleep(0.3)
    assert moved, hosts()
    assert all(standbys(admin, rid) == {()} for rid in routers)   # no other alive gateway
    for rid in routers:
        assert all(p["status"] == "DOWN" for p in router_ports(admin, rid, SNAT))
    # gw1 dies too: unscheduled; gw2 comes back: everything goes to gw2
    beats.discard("gw1", "compute1")
    deadline = time.time() + 30  # bounds a lease-driven event, not a pass condition
    while time.time() < deadline and not all(h == {""} for h in hosts().values()):
        time.sleep(0.3)
    assert all(h == {""} for h in hosts().values())
    register(c, "gw2")
    assert all(h == {"gw2"} for h in hosts().values())


def test_agent_restart_does_not_rebalance(srv: ServerHandle) -> None:
    """A gateway agent that registers again while its liveness key still stands (a restart
    within its lease) neither joined nor came back: its routers stay where they are, even when
    the actives are unbalanced (a rebalance would move a router and its connections for
    nothing). A host that returns after its lease expired does rebalance."""
    with Heartbeats(lambda: agent_client(srv)) as beats:
        _agent_restart_does_not_rebalance(srv, beats)


def _agent_restart_does_not_rebalance(srv: ServerHandle, beats: Heartbeats) -> None:
    admin, alice = srv.api("admin"), srv.api("alice")
    c = agent_client(srv)
    ext = ext_net(admin)
    register(c, "gw1")
    register(c, "gw2")
    beats.add("gw1", "gw2")             # both stay alive throughout: every register is a restart
    routers = []
    for i in range(4):
        r = ok(alice.post("/routers", json={"router": {"name": f"r{i}",
                                                       "external_gateway_info": {"network_id": ext["id"]}}}), 201)
        routers.append(r["router"]["id"])

    def actives() -> dict[str, str]:
        return {rid: router_ports(admin, rid, GW)[0]["binding:host_id"] for rid in routers}

    placed = actives()
    assert sorted(placed.values()) == ["gw1", "gw1", "gw2", "gw2"], placed     # least loaded first
    for rid in [rid for rid, h in placed.items() if h == "gw1"]:           # leave gw2 with 2, gw1 with 0
        ok(alice.delete(f"/routers/{rid}"), 204)
        routers.remove(rid)
    before = actives()
    assert set(before.values()) == {"gw2"}
    register(c, "gw2")                                                     # restarts, lease still live
    register(c, "gw1")
    assert actives() == before
