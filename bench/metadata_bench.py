"""Metadata service: a request through the host's proxy vs the lab's Nova endpoint directly.

What runs, in one private network + mount namespace (bench.port_up_bench.in_sandbox):
`vxnet lab up` (server, 3 real agents, the lab's Nova metadata endpoint), one network with a
router, VM md1 on h1 (a port with device_id = its instance at the lab's Nova). Two rows,
alternating rounds, each round `--md-requests` sequential GETs of
`/openstack/latest/meta_data.json`, one new TCP connection per request (as cloud-init's first
requests), timed by a client process (`http.client`, perf_counter around connect + request +
whole body):
- proxied: from md1 to http://169.254.169.254 (steered on h1 to the agent's listener, which
  signs and forwards to the endpoint over the management network);
- direct: from the lab's root namespace to the endpoint, with the headers the proxy would send.
The added latency is proxied minus direct (p50 and p99 of all requests of the row).

Contract: only namespaces of its own sandbox; the lab's processes are stopped by `lab down` (by PID).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench import common
from bench.port_up_bench import in_sandbox
from bench.report import Report, percentile
from bench.servers import import_repo

NAME = "Metadata service: request through the host's proxy vs the lab's Nova endpoint directly (vxnet lab)"
PATH = "/openstack/latest/meta_data.json"
CLIENT = r"""
import http.client, json, sys, time
host, port, n, headers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
out, bad = [], 0
for _ in range(n):
    t0 = time.perf_counter()
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", sys.argv[5], headers=headers)
    r = c.getresponse(); body = r.read(); c.close()
    out.append((time.perf_counter() - t0) * 1000)
    bad += r.status != 200
print(json.dumps({"ms": out, "bad": bad}))
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--md-rounds", type=int, default=4, help="alternating rounds (4)")
    p.add_argument("--md-requests", type=int, default=100, help="requests per row and round (100)")


def _client(ns: str | None, host: str, port: int, n: int, headers: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, "-c", CLIENT, host, str(port), str(n), json.dumps(headers), PATH]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip()[-400:])
    return dict(json.loads(r.stdout))


def measure(rounds: int, requests: int) -> dict[str, Any]:
    """Build the lab and run the alternating rounds (runs inside the sandbox)."""
    import_repo()
    from vxnet.compute.metadata import sign
    from vxnet.lab import lab as vlab
    from vxnet.lab import nova_metadata, topology

    out: dict[str, Any] = {"proxied": [], "direct": [], "bad": 0, "error": None}
    workdir = tempfile.mkdtemp(prefix="vxnet-bench-md-")
    try:
        with common.lab(workdir) as lab3:
            net, sub = lab3.network("alice", "100.64.60.0/24", "md")
            with lab3.api("alice") as c:
                rid = c.post("/routers", json={"router": {"name": "md"}}).json()["router"]["id"]
                assert c.put(f"/routers/{rid}/add_router_interface", json={"subnet_id": sub["id"]}).status_code == 200
            port = common.vms_active(lab3, [("md1", "h1", net["id"], "100.64.60.11")])["md1"]
            st = vlab.load_state()
            iid = st["vms"]["md1"]["instance_id"]
            with open(nova_metadata.files(vlab.state_dir())["secret"]) as f:
                secret = f.read().strip()
            host, _, nport = st["nova_metadata"]["listen"].rpartition(":")
            headers = {"X-Instance-ID": iid, "X-Tenant-ID": port["project_id"], "X-Forwarded-For": "100.64.60.11",
                       "X-Instance-ID-Signature": sign(secret, iid)}
            ns = topology.vm_ns("md1")
            deadline = time.time() + 30
            while True:           # the first answer (steering is in place once the port is ACTIVE)
                try:
                    _client(ns, "169.254.169.254", 80, 1, {})
                    break
                except RuntimeError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.2)
            for i in common.alternating(rounds, 2):
                if i == 0:
                    got = _client(ns, "169.254.169.254", 80, requests, {})
                else:
                    got = _client(None, host, int(nport), requests, headers)
                out["proxied" if i == 0 else "direct"] += got["ms"]
                out["bad"] += got["bad"]
    except Exception as e:  # noqa: BLE001 - the table says what broke
        out["error"] = f"{type(e).__name__}: {e}"[:400]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def run(opts: argparse.Namespace) -> Report:
    cols = ["path", "requests", "p50 ms", "p99 ms", "mean ms"]
    if os.geteuid() != 0:
        return Report(NAME, cols, [["all", "not run", "", "", "needs root (namespaces)"]])
    rounds = 2 if opts.quick else max(1, opts.md_rounds)
    requests = 20 if opts.quick else max(1, opts.md_requests)
    load0 = os.getloadavg()
    try:
        res: dict[str, Any] = in_sandbox(  # type: ignore[assignment]
            f"__import__('bench.metadata_bench', fromlist=['_']).measure({rounds}, {requests})", 600)
    except Exception as e:  # noqa: BLE001
        return Report(NAME, cols, [["all", "failed", "", "", f"{type(e).__name__}: {e}"[:600]]])
    if res["error"]:
        return Report(NAME, cols, [["all", "failed", "", "", res["error"]]])
    rows = []
    stats = {}
    for key, label in (("proxied", "VM -> 169.254.169.254 (agent proxy -> lab Nova)"),
                       ("direct", "root namespace -> lab Nova directly (same headers)")):
        ms = res[key]
        stats[key] = (percentile(ms, 50), percentile(ms, 99))
        rows.append([label, str(len(ms)), f"{stats[key][0]:.2f}", f"{stats[key][1]:.2f}", f"{sum(ms) / len(ms):.2f}"])
    add50, add99 = stats["proxied"][0] - stats["direct"][0], stats["proxied"][1] - stats["direct"][1]
    rows.append(["added by the proxy (proxied - direct)", "", f"{add50:.2f}", f"{add99:.2f}", ""])
    notes = [(f"{rounds} alternating rounds of {requests} sequential requests per row; a new TCP connection per "
             f"request (the proxy closes its connection to the VM, and opens one to Nova per request). "
             f"Non-200 answers: {res['bad']}. Load average before: {load0[0]:.1f}.")]
    goals = [(f"The proxy adds {add50:.2f} ms at p50 ({add99:.2f} ms at p99) to a metadata request: the steered "
             "bridge hop into the metadata namespace, the agent's Python HTTP server, and a second TCP "
             "connection to Nova.")]
    return Report(NAME, cols, rows, notes=notes, goals=goals)


if __name__ == "__main__":
    from bench.__main__ import main

    sys.exit(main(["--only", "metadata_bench", *sys.argv[1:]]))
