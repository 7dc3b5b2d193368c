"""Distributed routing: routed VM-to-VM latency and throughput vs L2, same run, alternating rounds.

What runs, in one private network + mount namespace (bench.port_up_bench.in_sandbox):
`vxnet lab up` (server + 3 real agents), network A (100.64.50.0/24: ra1@h1, ra2@h2, ra3@h1) and
network B (100.64.51.0/24: rb1@h1, rb2@h2) behind one distributed router, all created through
the API and measured once every port is ACTIVE and routed pings answer. Rows:
- L2 across hosts (ra1 -> ra2) and L2 same host (ra1 -> ra3);
- routed across hosts (ra1 -> rb2: routed on h1, crosses on B's VNI; the reply is routed on h2)
  and routed same host (ra1 -> rb1: never leaves h1).
Every round measures every row once (order reversed every other round, so others' load falls on
every row): iperf3 single TCP stream for `--rt-seconds`, then `ping -c N -i 0.01` after 3
warm-up pings. Ratios are per-round ratios routed / L2, median over rounds.

Contract: only namespaces of its own sandbox; every process started is stopped by PID (iperf3
servers by bench.kernel_lab, the lab's by `lab down`); a row that could not run says why.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from bench import common
from bench.port_up_bench import in_sandbox
from bench.report import Report
from bench.servers import import_repo

NAME = "Distributed routing: routed VM-to-VM vs L2 (vxnet lab, same run, alternating rounds)"
A24, B24 = "100.64.50", "100.64.51"
VMS = (("ra1", "A", "h1", 11), ("ra2", "A", "h2", 12), ("ra3", "A", "h1", 13), ("rb1", "B", "h1", 21),
       ("rb2", "B", "h2", 22))
ROWS = (("L2", "across hosts (ra1@h1 -> ra2@h2)", "ra1", "ra2", f"{A24}.12"),
        ("routed", "across hosts (ra1@h1 -> rb2@h2)", "ra1", "rb2", f"{B24}.22"),
        ("L2", "same host (ra1 -> ra3, h1)", "ra1", "ra3", f"{A24}.13"),
        ("routed", "same host (ra1 -> rb1, h1)", "ra1", "rb1", f"{B24}.21"))
PAIRS = ((1, 0), (3, 2))      # (routed row, L2 row) compared per round


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rt-rounds", type=int, default=3, help="alternating rounds over the routing rows (3)")
    p.add_argument("--rt-seconds", type=float, default=3.0, help="iperf3 seconds per row and round (3)")
    p.add_argument("--rt-pings", type=int, default=200, help="pings per row and round, 10 ms apart (200)")


def measure(rounds: int, seconds: float, count: int) -> dict[str, Any]:
    """Build the lab and run `rounds` alternating rounds (runs inside the sandbox)."""
    import_repo()

    out: dict[str, Any] = {"rows": [{"rounds": [], "error": None} for _ in ROWS], "setup_s": None}
    workdir = tempfile.mkdtemp(prefix="vxnet-bench-rt-")
    try:
        with common.lab(workdir) as lab3:
            t0 = time.time()
            nets = {"A": lab3.network("alice", f"{A24}.0/24", "rt-a"), "B": lab3.network("alice", f"{B24}.0/24", "rt-b")}
            with lab3.api("alice") as c:
                rid = c.post("/routers", json={"router": {"name": "rt"}}).json()["router"]["id"]
                for _, sub in nets.values():
                    r = c.put(f"/routers/{rid}/add_router_interface", json={"subnet_id": sub["id"]})
                    assert r.status_code == 200, r.text
            common.vms_active(lab3, [(name, host, nets[net][0]["id"], f"{A24 if net == 'A' else B24}.{octet}")
                              for name, net, host, octet in VMS])
            common.measure_rows(out, ROWS, t0, rounds, seconds, count)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def run(opts: argparse.Namespace) -> Report:
    cols = ["path", "between", "iperf3 Gbit/s (median; min-max)", "ping avg ms", "p50 ms", "p99 ms", "lost"]
    if os.geteuid() != 0:
        return Report(NAME, cols, [["all", "not run", "", "", "", "", "needs root (namespaces)"]])
    rounds = 1 if opts.quick else max(1, opts.rt_rounds)
    seconds = 1.0 if opts.quick else opts.rt_seconds
    count = 50 if opts.quick else opts.rt_pings
    load0 = os.getloadavg()
    try:
        res = common.sandboxed_measure(in_sandbox, "bench.routing_bench", len(ROWS), rounds, seconds, count)
    except Exception as e:  # noqa: BLE001 - the table says what broke
        return Report(NAME, cols, [["all", "failed", "", "", "", "", f"{type(e).__name__}: {e}"[:600]]])
    rows = common.rows_table(ROWS, res["rows"])
    goals = []
    for routed, l2 in PAIRS:
        a, b = res["rows"][routed], res["rows"][l2]
        if a["error"] or b["error"]:
            continue
        g, lat = common.paired_ratio(a, b, "gbps"), common.paired_ratio(a, b, "p50")
        rows.append(["ratio routed / L2", ROWS[routed][1].split(" (")[0],
                     f"{g:.2f}x" if g is not None else "", "", f"{lat:.2f}x" if lat is not None else "", "", ""])
        if routed == 1 and g is not None and lat is not None:
            goals.append(f"Routed across hosts costs one extra veth hop and one forwarding lookup on each end's "
                         f"host (no NAT, no conntrack in the router namespace): here {g:.2f}x the L2 throughput "
                         f"and {lat:.2f}x its p50 latency (KERNEL-NOTES §8 by hand: 0.146 ms routed vs 0.119 ms "
                         "L2 across hosts, 1.23x).")
    notes = [(f"{rounds} alternating rounds (row order reversed every other round); each row: iperf3 -t {seconds:g} "
              f"single TCP stream (receiver Gbit/s), then {count} pings 10 ms apart (3 warm-up pings not counted). "
              "VMs: MTU 1450, TSO/GSO/GRO on (the lab's guest-like VM settings); the port security / security group "
              "tables of the firewall feature are active on every VM port (default group)."),
             f"Lab setup (networks, router, 5 VMs ACTIVE, first routed ping answered): {res['setup_s']:.1f} s."
             if res.get("setup_s") else "Lab setup did not finish.",
             common.load_note(load0, [row["rounds"] for row in res["rows"]])]
    extra = common.rows_per_round(("path", "between"), ROWS, res["rows"], rounds)
    return Report(NAME, cols, rows, notes=notes, goals=goals, extra_markdown=extra)


if __name__ == "__main__":
    from bench.__main__ import main

    sys.exit(main(["--only", "routing_bench", *sys.argv[1:]]))
