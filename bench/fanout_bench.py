"""Watch fan-out to many simulated agents: 2 `vxnet server` processes on an etcd cluster, and
1 server on the embedded store (SQLite), measured in the same run.

What one run does per backend (everything real except the agents' data plane):
- starts the servers (`vxnet server --config ... --store ...` subprocesses; for etcd a fresh
  3-member cluster on loopback from tests/support/etcd.py) with an admin and the agent user
  (`vxnet-agent`, service role) and `agent_down_time` long enough that no lease expires during
  the run (the simulated agents do not heartbeat, so liveness never changes a view);
- as admin creates NETWORKS networks (one /24 subnet each, in 100.64.0.0/10) and, for each of
  AGENTS hosts, PORTS_PER_HOST ports bound to it (`binding:host_id`) on random networks, with no
  security groups (a default group's remote-group rule would put every port of the project in
  every view); registers every host (host i on server i mod S);
- cold start: opens every host's view stream at once (host i on server i mod S), one process,
  raw asyncio HTTP/1.1 (chunked NDJSON) to keep the client light; time until every snapshot has
  arrived. Each snapshot's port set is checked against the model (ports of the networks the
  host has a port on);
- CHANGES port updates, one at a time (`PUT /v2.0/ports/{id}` on server 0, setting `device_id`:
  agents compute on it, while a rename reaches the port's own host alone): latency from the
  request being sent until each agent whose view holds the port has received the update with the
  new value (p50/p99 over all (change, agent) pairs, and p50/p99 of the per-change maximum =
  "every interested agent has it"); every update line reaching an agent that does not hold the
  port is counted as a leak; the next change starts when all interested agents have it (or after
  CHANGE_TIMEOUT, counted as missed);
- server RSS (VmRSS) and CPU time from /proc of the server PIDs (and the etcd members' PIDs).

A backend is cut after BUDGET seconds (a FAILED row). Every process it starts is stopped by PID
(servers, etcd members), also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from bench.report import Report, percentile
from bench.servers import (
    ADMIN,
    AGENT,
    NO_AGENT_EXPIRY,
    UNLIMITED_QUOTAS,
    backends,
    etcd_cluster,
    load_averages,
    open_view,
    raise_open_files_limit,
    register_hosts,
    sample,
    servers,
)
from bench.servers import token as get_token

NAME = "Watch fan-out to simulated agents (2 servers on etcd, 1 on the embedded store)"
CHANGE_TIMEOUT = 10.0
BUDGET = 280.0  # seconds per backend (populate, cold start, changes); then the run is cut
CHANGES_BUDGET = 120.0  # of which at most this for the changes (fewer changes are measured then)
BULK = 25


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fanout-agents", type=int, default=1000, help="simulated agents (default 1000)")
    p.add_argument("--fanout-networks", type=int, default=150, help="networks (default 150)")
    p.add_argument("--fanout-ports-per-host", type=int, default=2, help="bound ports per host (default 2)")
    p.add_argument("--fanout-changes", type=int, default=200, help="port updates measured (default 200)")
    p.add_argument("--fanout-etcd-members", type=int, default=3, help="etcd cluster size (default 3)")
    p.add_argument("--fanout-stores", default="etcd,sqlite", help="backends (default etcd,sqlite)")


@contextlib.contextmanager
def store_for(name: str, members: int) -> Iterator[tuple[str | None, list[int]]]:
    """(store URL or None for the embedded store, etcd member PIDs)."""
    if name == "sqlite":
        yield None, []
        return
    with etcd_cluster(members, "vxfan") as cluster:
        yield cluster


# --- the world -----------------------------------------------------------------------------------


class World:
    """What the bench created: host -> its port ids, network -> hosts on it, port -> network."""

    def __init__(self, agents: int) -> None:
        self.hosts = [f"fan-{i:05d}" for i in range(agents)]
        self.ports_of: dict[str, set[str]] = {h: set() for h in self.hosts}
        self.net_of: dict[str, str] = {}
        self.hosts_on: dict[str, set[str]] = {}
        self.ports_on: dict[str, set[str]] = {}

    def expected_ports(self, host: str) -> set[str]:
        nets = {self.net_of[p] for p in self.ports_of[host]}
        return set().union(*(self.ports_on[n] for n in nets)) if nets else set()


async def populate(ports: list[int], admin_tok: str, agent_tok: str, opts: argparse.Namespace,
                   rng: random.Random) -> World:
    world = World(opts.fanout_agents)
    base = f"http://127.0.0.1:{ports[0]}"
    async with httpx.AsyncClient(base_url=base, headers={"X-Auth-Token": admin_tok}, timeout=120) as c:
        nets: list[str] = []
        for start in range(0, opts.fanout_networks, BULK):
            n = min(BULK, opts.fanout_networks - start)
            r = await c.post("/v2.0/networks", json={"networks": [{"name": f"fan-net-{start + k}"} for k in range(n)]})
            assert r.status_code == 201, r.text
            nets += [x["id"] for x in r.json()["networks"]]
        for start in range(0, len(nets), BULK):
            chunk = nets[start:start + BULK]
            subnets = [{"network_id": nid, "cidr": f"100.{64 + (start + k) // 256}.{(start + k) % 256}.0/24",
                        "ip_version": 4, "name": f"fan-sub-{start + k}"} for k, nid in enumerate(chunk)]
            r = await c.post("/v2.0/subnets", json={"subnets": subnets})
            assert r.status_code == 201, r.text
        for n in nets:
            world.hosts_on[n] = set()
            world.ports_on[n] = set()
        wanted = [(h, rng.choice(nets), k) for h in world.hosts for k in range(opts.fanout_ports_per_host)]
        for start in range(0, len(wanted), BULK):
            body = [{"network_id": n, "name": f"{h}-p{k}", "binding:host_id": h, "device_owner": "compute:nova",
                     "device_id": f"vm-{h}-{k}", "security_groups": []} for h, n, k in wanted[start:start + BULK]]
            r = await c.post("/v2.0/ports", json={"ports": body})
            assert r.status_code == 201, r.text
            for p in r.json()["ports"]:
                h, n = p["binding:host_id"], p["network_id"]
                world.ports_of[h].add(p["id"])
                world.net_of[p["id"]] = n
                world.hosts_on[n].add(h)
                world.ports_on[n].add(p["id"])
    await register_hosts(ports, agent_tok, world.hosts)
    return world


# --- simulated agents ----------------------------------------------------------------------------



async def read_view(owner: Any, port: int, host: str, token: str, limit: int,
                    clock: Any) -> AsyncIterator[tuple[float, dict[str, Any]]]:
    """One host's view stream over raw asyncio HTTP/1.1 (chunked NDJSON): (receipt time, message)
    per line. Light enough for 1,000 streams in one process; `owner.writer` gets the connection's
    writer so the owner can close it."""
    reader, owner.writer = await open_view(port, host, token, limit)
    buf = b""
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            raise RuntimeError("stream ended")
        buf += (await reader.readexactly(size + 2))[:-2]
        now = clock()
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line:
                yield now, json.loads(line)

class Agent:
    """One view stream read with raw asyncio (HTTP/1.1 chunked NDJSON)."""

    def __init__(self, host: str, port: int, tok: str, bench: Fanout) -> None:
        self.host, self.port, self.tok, self.bench = host, port, tok, bench
        self.ports: set[str] = set()
        self.snapshot_at: float | None = None
        self.updates = 0
        self.pings = 0
        self.error: str | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        try:
            async for now, msg in read_view(self, self.port, self.host, self.tok, 1 << 24, time.perf_counter):
                self.on_line(now, msg)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - reported in the table
            self.error = f"{type(e).__name__}: {e}"
            self.bench.check_done()

    def on_line(self, now: float, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "ping":
            self.pings += 1
        elif kind == "snapshot":
            self.ports = set(msg["view"].get("ports", {}))
            if self.snapshot_at is None:
                self.snapshot_at = now
                self.bench.snapshot_received(self)
            else:
                self.bench.extra_snapshots += 1
        elif kind == "update":
            self.updates += 1
            for pid in msg.get("delete", {}).get("ports", ()):
                self.ports.discard(pid)
            for pid, obj in msg.get("put", {}).get("ports", {}).items():
                self.ports.add(pid)
                self.bench.port_update(self, now, pid, obj)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Fanout:
    """The client side of one backend's run."""

    def __init__(self) -> None:
        self.agents: list[Agent] = []
        self.snapshots = 0
        self.extra_snapshots = 0
        self.all_snapshots = asyncio.Event()
        self.pending: dict[tuple[str, str], tuple[float, set[str]]] = {}  # (port, name) -> (t0, waiting hosts)
        self.change_done = asyncio.Event()
        self.latencies: list[float] = []
        self.by_port: dict[int, list[float]] = {}  # server port -> latencies of its agents
        self.leaks = 0
        self.stray = 0

    def snapshot_received(self, a: Agent) -> None:
        self.snapshots += 1
        self.check_done()

    def check_done(self) -> None:
        if self.snapshots + sum(1 for a in self.agents if a.error) >= len(self.agents):
            self.all_snapshots.set()

    def port_update(self, a: Agent, now: float, pid: str, obj: dict[str, Any]) -> None:
        entry = self.pending.get((pid, obj.get("device_id", "")))
        if entry is None:
            self.stray += 1
            return
        t0, waiting = entry
        if a.host in waiting:
            waiting.discard(a.host)
            self.latencies.append(now - t0)
            self.by_port.setdefault(a.port, []).append(now - t0)
            if not waiting:
                self.change_done.set()
        else:
            self.leaks += 1


async def measure(srv: list[tuple[int, int]], etcd_pids: list[int], opts: argparse.Namespace,
                  label: str, rows: list[list[str]], notes: list[str], phase: list[str]) -> None:
    rng = random.Random(6)
    ports = [p for p, _ in srv]
    spids = [pid for _, pid in srv]
    admin_tok, agent_tok = get_token(ports[0], ADMIN), get_token(ports[0], AGENT)
    t = time.perf_counter()
    phase.append("creating networks, subnets, ports and registering hosts")
    world = await populate(ports, admin_tok, agent_tok, opts, rng)
    populate_s = time.perf_counter() - t
    n_ports = sum(len(v) for v in world.ports_of.values())
    cpu0, rss0 = sample(spids)
    ecpu0, erss0 = sample(etcd_pids) if etcd_pids else (0.0, 0.0)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)

    bench = Fanout()
    bench.agents = [Agent(h, ports[i % len(ports)], agent_tok, bench) for i, h in enumerate(world.hosts)]
    t0 = time.perf_counter()
    phase.append("cold start")
    tasks = [asyncio.create_task(a.run()) for a in bench.agents]
    try:
        try:
            await asyncio.wait_for(bench.all_snapshots.wait(), 120)
        except TimeoutError:
            pass
        cold = time.perf_counter() - t0
        snap_times = [a.snapshot_at - t0 for a in bench.agents if a.snapshot_at is not None]
        errors = [a.error for a in bench.agents if a.error]
        cpu1, rss1 = sample(spids)
        ecpu1, _ = sample(etcd_pids) if etcd_pids else (0.0, 0.0)
        wrong_views = sum(1 for a in bench.agents if a.snapshot_at is not None and a.ports != world.expected_ports(a.host))
        views = [len(a.ports) for a in bench.agents]
        rows.append([label, f"cold start: {len(snap_times)}/{len(bench.agents)} snapshots", f"{cold * 1000:.0f}",
                     f"{percentile(snap_times, 50) * 1000:.0f}", f"{percentile(snap_times, 99) * 1000:.0f}",
                     f"{cpu1 - cpu0:.1f}", f"{rss1:.0f}",
                     f"{wrong_views} views differ from the model; {len(errors)} stream errors"
                     + (f" (first: {errors[0]})" if errors else "")
                     + f"; ports per view p50 {percentile(views, 50):.0f}, max {max(views)}"
                     + (f"; etcd CPU {ecpu1 - ecpu0:.1f} s" if etcd_pids else "")])

        phase.append("port changes")
        await asyncio.sleep(1.0)
        updates_before = sum(a.updates for a in bench.agents)
        stray_before = bench.stray
        if updates_before:
            notes.append(f"{label}: {updates_before} update lines arrived between the snapshots and the first change.")
        all_ports = sorted(world.net_of)
        per_change: list[float] = []
        api_lat: list[float] = []
        missed = 0
        model_mismatch = 0
        interested_n: list[int] = []
        n = opts.fanout_changes
        cpu2, _ = sample(spids)
        ecpu2, _ = sample(etcd_pids) if etcd_pids else (0.0, 0.0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}", headers={"X-Auth-Token": admin_tok},
                                     timeout=30) as c:
            await c.get("/v2.0/networks?limit=1")  # connect before the first timed change
            changes_end = time.perf_counter() + CHANGES_BUDGET
            for i in range(opts.fanout_changes):
                if time.perf_counter() > changes_end:
                    notes.append(f"{label}: only {i} of {opts.fanout_changes} changes fitted in {CHANGES_BUDGET:.0f} s.")
                    n = i
                    break
                pid = rng.choice(all_ports)
                holders = {a.host for a in bench.agents if pid in a.ports}
                if holders != world.hosts_on[world.net_of[pid]]:
                    model_mismatch += 1
                interested_n.append(len(holders))
                name = f"fan-change-{i}"
                bench.change_done.clear()
                ts = time.perf_counter()
                bench.pending[(pid, name)] = (ts, set(holders))
                r = await c.put(f"/v2.0/ports/{pid}", json={"port": {"device_id": name}})
                api_lat.append(time.perf_counter() - ts)
                assert r.status_code == 200, r.text
                if holders:
                    try:
                        await asyncio.wait_for(bench.change_done.wait(), CHANGE_TIMEOUT)
                        per_change.append(max(bench.latencies[-len(holders):]))
                    except TimeoutError:
                        missed += len(bench.pending[(pid, name)][1])
        await asyncio.sleep(0.5)  # late leaks still count
        cpu3, rss3 = sample(spids)
        ecpu3, erss3 = sample(etcd_pids) if etcd_pids else (0.0, 0.0)
        lat = bench.latencies
        stray = bench.stray - stray_before
        lines = sum(a.updates for a in bench.agents) - updates_before
        split = "; ".join(f"agents on server {k}{' (the writer)' if p == ports[0] else ''}: p50 "
                          f"{percentile(bench.by_port.get(p, []), 50) * 1000:.1f} ms, p99 "
                          f"{percentile(bench.by_port.get(p, []), 99) * 1000:.1f} ms"
                          for k, p in enumerate(ports)) if len(ports) > 1 else ""
        if split:
            notes.append(f"{label}: {split}.")
        notes.append(f"{label}: {lines} update lines reached agents during the changes, for "
                     f"{len(bench.latencies)} expected deliveries (anything else was a ping).")
        rows.append([label, f"port update -> each interested agent ({len(lat)} deliveries)", "",
                     f"{percentile(lat, 50) * 1000:.1f}", f"{percentile(lat, 99) * 1000:.1f}",
                     f"{1000 * (cpu3 - cpu2) / max(1, n):.1f} ms/change", f"{rss3:.0f}",
                     (f"{missed} missed, {bench.leaks} leaked to agents without the port, {stray} other port "
                      f"updates; interested agents per change p50 {percentile(interested_n, 50):.0f}, max "
                      f"{max(interested_n)}; {model_mismatch} holder sets differ from the model")])
        rows.append([label, f"port update -> all interested agents ({len(per_change)} changes)", "",
                     f"{percentile(per_change, 50) * 1000:.1f}", f"{percentile(per_change, 99) * 1000:.1f}", "", "",
                     f"max {max(per_change, default=float('nan')) * 1000:.1f} ms; API PUT alone p50 {percentile(api_lat, 50) * 1000:.1f} ms, p99 "
                     f"{percentile(api_lat, 99) * 1000:.1f} ms"
                     + (f"; etcd CPU {1000 * (ecpu3 - ecpu2) / max(1, n):.1f} ms/change, etcd RSS {erss3:.0f} MiB"
                        if etcd_pids else "")])
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        pings = sum(a.pings for a in bench.agents)
        notes.append(f"{label}: {len(spids)} server(s), {len(world.hosts)} hosts, {n_ports} ports on "
                     f"{opts.fanout_networks} networks, created and registered in {populate_s:.0f} s; server RSS "
                     f"before streams {rss0:.0f} MiB (all servers); client CPU during streams "
                     f"{ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime:.1f} s, client max RSS "
                     f"{ru1.ru_maxrss / 1024:.0f} MiB; {pings} pings, {bench.extra_snapshots} extra snapshots"
                     + (f"; etcd RSS before streams {erss0:.0f} MiB (all members)" if etcd_pids else ""))
    finally:
        for tk in tasks:
            tk.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for a in bench.agents:
            a.close()


def run_backend(store: str, opts: argparse.Namespace, rows: list[list[str]], notes: list[str]) -> None:
    n_servers = 1 if store == "sqlite" else 2
    workdir = tempfile.mkdtemp(prefix="vxnet-fanout-")
    members = opts.fanout_etcd_members
    phase = ["starting the store and servers"]
    label = "embedded (1 server)" if store == "sqlite" else f"etcd x{members} (2 servers)"
    try:
        with store_for(store, members) as (url, etcd_pids), servers(workdir, url, n_servers, server=NO_AGENT_EXPIRY, quotas=UNLIMITED_QUOTAS) as srv:
            asyncio.run(asyncio.wait_for(measure(srv, etcd_pids, opts, label, rows, notes, phase), BUDGET))
    except TimeoutError:
        rows.append([label, "FAILED", "", "", "", "", "", f"cut after {BUDGET:.0f} s, while {phase[-1]}"])
    except Exception as e:  # noqa: BLE001 - a failed backend is a row, the other still runs
        rows.append([label, "FAILED", "", "", "", "", "", f"{type(e).__name__}: {str(e)[:300]}"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(opts: argparse.Namespace) -> Report:
    if getattr(opts, "quick", False):
        opts.fanout_agents = max(10, opts.fanout_agents // 10)
        opts.fanout_networks = max(5, opts.fanout_networks // 10)
        opts.fanout_changes = max(20, opts.fanout_changes // 10)
    raise_open_files_limit()
    load0 = load_averages()
    rows: list[list[str]] = []
    notes: list[str] = []
    for store in backends(opts.fanout_stores, notes):
        run_backend(store, opts, rows, notes)
    by = {r[0]: r for r in rows if r[1].startswith("port update -> all")}
    if len(by) == 2:
        (_, a), (_, b) = sorted(by.items())  # embedded first, then etcd
        try:
            notes.append(f"etcd / embedded, p99 to all interested agents: {float(b[4]) / float(a[4]):.2f}; "
                         f"p50: {float(b[3]) / float(a[3]):.2f}.")
        except (ValueError, ZeroDivisionError):
            pass
    notes.append("Latency is from the admin's PUT being sent (server 0) until the agent's stream delivered the "
                 "changed port; streams are split over the servers (host i on server i mod S), so on etcd half "
                 "of the deliveries cross from the writing server through etcd's watch to the other server. "
                 "One change at a time. Client (all agents, one asyncio process) and servers and etcd share "
                 f"{os.cpu_count()} CPUs.")
    notes.append(f"Load average (1/5/15 min) at the start: {load0}; at the end: {load_averages()}.")
    goals = ["Goal (issue 9, at 100,000 ports): p99 <= 200 ms from a port change to every interested agent."]
    return Report(NAME, ["backend", "measurement", "wall ms", "p50 ms", "p99 ms", "server CPU s", "server RSS MiB",
                         "notes"], rows, notes=notes, goals=goals)


if __name__ == "__main__":
    from bench.__main__ import main

    sys.exit(main(["--only", "fanout_bench", *sys.argv[1:]]))
