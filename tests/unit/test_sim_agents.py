"""The scale benchmark's pieces: the filled world matches the model the bench checks views and
leaks against, and a simulated agent records exactly what the real agent's pure side computes."""

from __future__ import annotations

import argparse
import asyncio
import json
import random

from bench.scale_bench import World, add_arguments, fill, underlay
from bench.sim_agents import SimAgent, ports_digest
from tests.support.aio import run_in_thread
from vxnet.compute.host import HostSpec, compute_host
from vxnet.services.host_view import COLLECTIONS, full_view
from vxnet.services.ipam import ip_key, mac_key
from vxnet.store import open_store

PREFIX = "scale-change-"


def small_world() -> tuple[World, dict[str, dict[str, dict]], dict[str, dict]]:
    p = argparse.ArgumentParser()
    add_arguments(p)
    opts = p.parse_args(["--scale-hosts", "6", "--scale-networks", "12", "--scale-ports", "48",
                         "--scale-hosts-per-network", "2"])
    store = open_store("memory://")
    try:
        world = fill(store, opts, random.Random(1), 7)
        kvs, _ = store.range("/vxnet/res/")
        objects: dict[str, dict[str, dict]] = {c: {} for c in COLLECTIONS}
        for kv in kvs:
            coll, _, id_ = kv.key[len("/vxnet/res/"):].partition("/")
            objects[coll][id_] = json.loads(kv.value)
        for port in objects["ports"].values():   # the claims the API makes are in the store
            assert store.get(mac_key(port["network_id"], port["mac_address"])) is not None
            ip = port["fixed_ips"][0]
            assert store.get(ip_key(ip["subnet_id"], ip["ip_address"])).value == port["id"]
    finally:
        store.close()
    hosts = {h: {"host": h, "underlay_ip": underlay(i), "alive": True, "gateway": False}
             for i, h in enumerate(world.hosts)}
    return world, objects, hosts


def test_fill_writes_the_world_the_model_describes() -> None:
    world, objects, hosts = small_world()
    assert len(objects["ports"]) == 48 and len(objects["networks"]) == 12 and len(objects["subnets"]) == 12
    for net in objects["networks"].values():
        assert len(net["subnets"]) == 1 and net["provider:segmentation_id"] is not None
    for h in world.hosts:
        view = full_view(objects, hosts, h)
        assert set(view["ports"]) == world.expected_ports(h)
        assert world.nets_of_host[h], "every host has ports"
    for pid, nid in world.net_of.items():
        holders = {h for h in world.hosts if pid in full_view(objects, hosts, h)["ports"]}
        assert holders == set(world.hosts_on[nid])     # exactly the hosts the bench waits for


def run_agent(messages: list[dict]) -> tuple[SimAgent, list[tuple]]:
    reports: list[tuple] = []

    async def main() -> SimAgent:
        agent = SimAgent("scale-00001", underlay(1), 0, "", 0.0, PREFIX, reports.append)
        for m in messages:
            agent.on_message(json.loads(json.dumps(m)), 1.0)   # fresh, as from the wire: it is consumed
            await asyncio.sleep(0.01)    # the coalesced pass runs
        agent.close()
        return agent

    return run_in_thread(main), reports


def test_sim_agent_records_what_the_agent_computes() -> None:
    _, objects, hosts = small_world()
    host = "scale-00001"
    view = full_view(objects, hosts, host)
    pid = min(view["ports"])
    changed = dict(view["ports"][pid], device_id=PREFIX + "0")   # the scale bench's watched change
    new_remote = dict(view["ports"][pid], id="remote-1", mac_address="fa:16:3e:00:00:01",
                      fixed_ips=[{"subnet_id": "s", "ip_address": "100.64.0.200"}],
                      **{"binding:host_id": "scale-00002"})
    msgs = [{"type": "snapshot", "revision": 5, "view": {"host": hosts[host], **view}},
            {"type": "update", "revision": 6, "put": {"ports": {pid: changed}}, "delete": {}},
            {"type": "update", "revision": 7, "put": {"ports": {"remote-1": new_remote}}, "delete": {}}]
    agent, reports = run_agent(msgs[:1])
    expected = compute_host(view, HostSpec(host, underlay(1))).l2
    assert agent.driver.actual.fdb == expected.fdb and agent.driver.actual.neighs == expected.neighs
    assert agent.driver.actual.plugs == expected.plugs and agent.driver.actual.bridges == expected.bridges
    snap = [r for r in reports if r[0] == "snap"]
    assert len(snap) == 1 and snap[0][4:6] == (ports_digest(view["ports"]), len(view["ports"]))

    agent, reports = run_agent(msgs)
    seen = [r for r in reports if r[0] == "seen"]
    assert [(r[1], r[2], r[3], r[6]) for r in seen] == [(host, pid, PREFIX + "0", True)]
    # The snapshot creates everything; the device_id change changes no kernel state; the new remote port
    # adds its two VXLAN FDB entries (self + master) and one neighbour entry.
    assert agent.driver.counts == {
        "bridges.create": len(expected.bridges), "vxlans.create": len(expected.vxlans),
        "plugs.create": len(expected.plugs), "fdb.create": len(expected.fdb) + 2,
        "neighs.create": len(expected.neighs) + 1}
    assert agent.driver.passes == 3


def test_pings_do_not_run_passes() -> None:
    _, objects, hosts = small_world()
    view = full_view(objects, hosts, "scale-00001")
    agent, _ = run_agent([{"type": "snapshot", "revision": 5, "view": view}, {"type": "ping", "revision": 9}])
    assert agent.driver.passes == 1 and agent.pings == 1 and agent.view.revision == 9
