"""The server's share of port-up's ACTIVE half: an agent's status report (`POST
/v2.0/vxnet/hosts/{host}/ports-status`) and the client's GET that first shows ACTIVE, without
agents or a data plane (the port-up lab's last stage rows, server only).

Servers (subprocesses, bench/servers.py): one on the embedded store, or two on a fresh
3-member etcd cluster (`--store etcd`: the report goes to server 1, as the lab's agents do, the
GETs to server 2, as the lab's client does). Three hosts registered, N ports created and bound
to host i mod 3 (status DOWN: no agent runs). Then, one at a time, the port's host reports it
ACTIVE through a synchronous httpx client (as the agent's reporter thread does: one keep-alive
connection, the body in a second write), and the client polls the port through its own
connection (a GET every ~1 ms, as the port-up benchmark's ACTIVE poll) from just before the
report until it shows ACTIVE; `--no-poll` leaves the GETs out (the report alone, on servers that
do nothing else). Between reports `--gap` ms, so each finds the servers idle.

Printed (ms, p50 / p90 / p99): report request -> answer; with the poll, report sent -> the
first GET that shows ACTIVE; and the servers' CPU time (user + system, /proc) per report, and
of it their event loops' (main threads'); with the poll, its GETs' included.

`PYTHONPATH=$PWD/src .venv/bin/python -m bench.status_path_bench [--store embedded|etcd]
[--ports 200] [--no-poll] [--gap 20]`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator

import httpx

from bench.report import percentile
from bench.servers import (
    ADMIN,
    AGENT,
    UNLIMITED_QUOTAS,
    cpu_seconds,
    etcd_cluster,
    load_averages,
    register_hosts,
    servers,
    token,
)

HOSTS = ("h1", "h2", "h3")


@contextlib.contextmanager
def _servers(store: str, workdir: str) -> Iterator[list[tuple[int, int]]]:
    """[(port, pid)]: the reporting server first, the client's server last."""
    if store == "etcd":
        with etcd_cluster(3, "vxbench-st") as (url, _), \
                servers(workdir, url, 2, quotas=UNLIMITED_QUOTAS) as out:
            yield out
    else:
        with servers(workdir, None, 1, quotas=UNLIMITED_QUOTAS) as out:
            yield out


def _loop_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of the servers' main threads: their event loops."""
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/task/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _poll(api: httpx.Client, port_id: str, stop: threading.Event, seen: list[float]) -> None:
    """GET the port every ~1 ms until it shows ACTIVE (its time into `seen`) or `stop`."""
    while not stop.is_set():
        if api.get(f"/ports/{port_id}").json()["port"]["status"] == "ACTIVE":
            seen.append(time.perf_counter())
            return
        time.sleep(0.001)


def measure(srvs: list[tuple[int, int]], opts: argparse.Namespace) -> dict[str, list[float] | float]:
    (p1, _), (p2, _) = srvs[0], srvs[-1]
    admin_tok, agent_tok = token(p2, ADMIN), token(p1, AGENT)
    asyncio.run(register_hosts([p1], agent_tok, list(HOSTS)))
    api = httpx.Client(base_url=f"http://127.0.0.1:{p2}/v2.0", headers={"X-Auth-Token": admin_tok}, timeout=30)
    agent = httpx.Client(base_url=f"http://127.0.0.1:{p1}/v2.0/vxnet", headers={"X-Auth-Token": agent_tok},
                         timeout=30)
    net = api.post("/networks", json={"network": {"name": "status-bench"}}).json()["network"]
    r = api.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.64.0.0/16", "ip_version": 4}})
    assert r.status_code == 201, r.text
    ports = []
    for i in range(opts.ports):
        r = api.post("/ports", json={"port": {"network_id": net["id"], "name": f"p{i}",
                                              "binding:host_id": HOSTS[i % 3], "device_owner": "compute:nova"}})
        assert r.status_code == 201, r.text
        ports.append((r.json()["port"]["id"], HOSTS[i % 3]))
    time.sleep(1.0)
    report_ms: list[float] = []
    active_ms: list[float] = []
    pids = [pid for _, pid in srvs]
    cpu0, loop0 = sum(cpu_seconds(p) for p in pids), _loop_cpu(pids)
    for port_id, host in ports:
        seen: list[float] = []
        stop = threading.Event()
        poller = threading.Thread(target=_poll, args=(api, port_id, stop, seen)) if opts.poll else None
        if poller is not None:
            poller.start()
        t0 = time.perf_counter()
        r = agent.post(f"/hosts/{host}/ports-status", json={"ACTIVE": [port_id], "DOWN": []})
        t1 = time.perf_counter()
        assert r.status_code == 200 and r.json()["updated"] == [port_id], r.text
        if poller is not None:
            poller.join(10)
            stop.set()
            active_ms.append((seen[0] - t0) * 1000)
        report_ms.append((t1 - t0) * 1000)
        time.sleep(opts.gap / 1000)
    cpu, loop = sum(cpu_seconds(p) for p in pids) - cpu0, _loop_cpu(pids) - loop0
    api.close()
    agent.close()
    return {"report": report_ms, "active": active_ms, "cpu_ms": cpu * 1000 / len(ports),
            "loop_ms": loop * 1000 / len(ports)}


def row(name: str, xs: list[float]) -> str:
    xs = sorted(xs)
    return f"{name:<48} " + " / ".join(f"{percentile(xs, q):5.2f}" for q in (50, 90, 99))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", choices=("embedded", "etcd"), default="embedded")
    p.add_argument("--ports", type=int, default=200)
    p.add_argument("--no-poll", dest="poll", action="store_false",
                   help="read the port once after the answer instead of polling during the report")
    p.add_argument("--gap", type=float, default=20.0, help="ms between reports (20)")
    opts = p.parse_args()
    start_load = load_averages()
    with tempfile.TemporaryDirectory(prefix="vxnet-status-bench-") as d, _servers(opts.store, d) as srvs:
        got = measure(srvs, opts)
    print(f"{opts.ports} status reports, {opts.store}, poll {'on' if opts.poll else 'off'}, "
          f"load {start_load} -> {load_averages()}; ms p50 / p90 / p99")
    print(row("report: request -> answer", got["report"]))  # type: ignore[arg-type]
    if opts.poll:
        print(row("report sent -> the client's GET shows ACTIVE", got["active"]))  # type: ignore[arg-type]
    print(f"{'servers CPU per report (ms)':<48} {got['cpu_ms']:.2f} (event loops {got['loop_ms']:.2f})")


if __name__ == "__main__":
    main()
