"""Port status change -> `network-vif-plugged` received by Nova: latency and batching.

`python -m bench.nova_events_bench [--nova-ports N] [--nova-backends sqlite,etcd]`:
- per backend: `vxnet server`s as subprocesses with a `[nova]` section pointing at a recording
  Nova endpoint in this process (tests/support/fake_nova.py, a real HTTP server); embedded
  store: one server; etcd: a fresh 3-member cluster and two servers, the agent reporting to
  the first and Nova's events sent by whichever server's sender claims them;
- a registered host `hv1`; N ports created bound to it (`compute:nova`, a device id each), so
  each is bound with vif type `tap` before the measurement;
- one at a time (unloaded): t0 just before the agent's `POST /v2.0/vxnet/hosts/hv1/ports-status
  {"ACTIVE": [id]}` (the lab's path: the agent reports the port up once its tap is plugged);
  t1 = the recording endpoint's arrival time of the request carrying that port's event;
  latency = t1 - t0 (status commit, outbox watch, claim, token, HTTP POST);
- a burst: N more ports reported ACTIVE by 8 reporters at once; the time until the last event
  arrived, and how many POSTs carried them (batching happens only when events wait).
Every process is stopped by PID at the end of its round.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from bench.report import Report, percentile
from bench.servers import ADMIN, AGENT, NO_AGENT_EXPIRY, backends, etcd_cluster, import_repo, servers, token

NAME = "Nova events: port ACTIVE -> network-vif-plugged received"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nova-ports", type=int, default=200, help="ports per measurement (default 200)")
    p.add_argument("--nova-backends", default="sqlite,etcd", help="store backends (default sqlite,etcd)")


def _round(store_url: str | None, count: int, workdir: str, n: int, nova: Any) -> dict[str, Any]:
    extra = NO_AGENT_EXPIRY + "access_log = false\n" + (
        f'\n[nova]\nurl = "{nova.url}"\nusername = "{ADMIN[0]}"\nproject = "{ADMIN[2]}"\n')
    with servers(workdir, store_url, count, (ADMIN, AGENT), server=extra) as procs:
        ports = [p for p, _ in procs]
        admin = httpx.Client(base_url=f"http://127.0.0.1:{ports[-1]}/v2.0",
                             headers={"X-Auth-Token": token(ports[-1], ADMIN)}, timeout=60)
        agent = httpx.Client(base_url=f"http://127.0.0.1:{ports[0]}/v2.0/vxnet",
                             headers={"X-Auth-Token": token(ports[0], AGENT)}, timeout=60)
        assert agent.post("/hosts/hv1/register", json={"underlay_ip": "198.51.100.9"}).status_code == 200
        net = admin.post("/networks", json={"network": {"name": "bench"}}).json()["network"]
        r = admin.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                    "cidr": "100.64.0.0/16"}})
        assert r.status_code == 201, r.text

        def vm_port() -> dict[str, Any]:
            r = admin.post("/ports", json={"port": {"network_id": net["id"], "device_owner": "compute:nova",
                                                    "device_id": str(uuid.uuid4()), "binding:host_id": "hv1"}})
            assert r.status_code == 201 and r.json()["port"]["binding:vif_type"] == "tap", r.text
            return r.json()["port"]

        def arrival(tag: str, timeout: float = 30.0) -> float:
            found: list[float] = []

            def seen(f: Any) -> bool:
                found[:] = [rec.at for rec in f.accepted if any(e["tag"] == tag for e in rec.events)]
                return bool(found)

            if not nova.wait_for(seen, timeout):
                raise RuntimeError(f"no event for port {tag} within {timeout:.0f} s")
            return found[0]

        lat, report_ms = [], []
        for p in [vm_port() for _ in range(n)]:
            t0 = time.time()
            r = agent.post("/hosts/hv1/ports-status", json={"ACTIVE": [p["id"]]})
            report_ms.append((time.time() - t0) * 1000)
            assert r.status_code == 200 and r.json()["updated"] == [p["id"]], r.text
            lat.append((arrival(p["id"]) - t0) * 1000)
        burst = [vm_port() for _ in range(n)]
        posts_before = len(nova.accepted)
        reporters = [httpx.Client(base_url=agent.base_url, headers=agent.headers, timeout=60) for _ in range(8)]
        t0 = time.time()
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda i: reporters[i % 8].post("/hosts/hv1/ports-status",
                                                        json={"ACTIVE": [burst[i]["id"]]}), range(n)))
        last = max(arrival(p["id"]) for p in burst)
        posts = len(nova.accepted) - posts_before
        for c in (admin, agent, *reporters):
            c.close()
        dups = len(nova.events()) - len({e["tag"] for e in nova.events()})
        return {"lat": lat, "report": report_ms, "burst_s": last - t0, "posts": posts, "dups": dups}


def run(opts: argparse.Namespace) -> Report:
    import_repo()
    from tests.support.fake_nova import FakeNova

    n = max(5, opts.nova_ports // (10 if getattr(opts, "quick", False) else 1))
    notes: list[str] = []
    rows = []
    for backend in backends(opts.nova_backends, notes):
        nova = FakeNova()
        workdir = tempfile.mkdtemp(prefix="vxnet-nova-bench-")
        try:
            if backend == "sqlite":
                res = _round(None, 1, workdir, n, nova)
                what = "embedded, 1 server"
            else:
                with etcd_cluster(3, "novab") as (url, _):
                    res = _round(url, 2, workdir, n, nova)
                what = "etcd (3 members), 2 servers"
        finally:
            nova.close()
            shutil.rmtree(workdir, ignore_errors=True)
        lat = res["lat"]
        rows.append([what, "one at a time", str(n), f"{percentile(lat, 50):.1f}", f"{percentile(lat, 99):.1f}",
                     f"{max(lat):.1f}", f"status report p50 {percentile(res['report'], 50):.1f} ms"])
        rows.append([what, "burst, 8 reporters", str(n), "", "", f"{res['burst_s'] * 1000:.0f} (last)",
                     f"{res['posts']} POSTs for {n} events; {res['dups']} duplicates"])
    notes.append("Latency: from just before the agent's ACTIVE report to the recording Nova's arrival time "
                 "of the POST carrying that port's event (same clock, one machine).")
    notes.append("Load average (1/5/15 min) at the end: " + " / ".join(f"{x:.1f}" for x in os.getloadavg())
                 + f" on {os.cpu_count()} CPUs shared with other sessions.")
    return Report(NAME, ["store", "measurement", "ports", "p50 ms", "p99 ms", "max ms", "notes"], rows, notes=notes,
                  goals=["Goal (issue 15): p99 <= 100 ms (Neutron batches every 2 s: send_events_interval)."])


if __name__ == "__main__":
    import sys

    from bench.__main__ import main

    sys.exit(main(["--only", "nova_events_bench", *sys.argv[1:]]))
