"""IPv6 routing: routed ping6 (and iperf3) vs routed IPv4 between the same two VMs, same run.

What runs, in one private network + mount namespace (bench.port_up_bench.in_sandbox):
`vxnet lab up` (server + 3 real agents); networks A (100.64.60.0/24 + 2001:db8:60::/64) and B
(100.64.61.0/24 + 2001:db8:61::/64) behind one distributed router, through the API; dual-stack
VMs va@h1 (A) and vb@h2 (B), port security off on both (the same ports for both families, so
only the IP version differs), IPv6 configured statically in the VMs. Rows, alternating rounds:
routed IPv4 va -> vb and routed IPv6 va -> vb (both routed on h1, cross on B's VNI, replies
routed on h2). Each row per round: iperf3 single TCP stream, then pings 10 ms apart after 3
warm-ups. The ratio is per round (v6 / v4), median over rounds.

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

NAME = "IPv6 routing: routed ping6/iperf3 vs routed IPv4, same VMs, same run"
NETS = {"A": ("100.64.60.0/24", "2001:db8:60::/64"), "B": ("100.64.61.0/24", "2001:db8:61::/64")}
VMS = (("va", "A", "h1", "100.64.60.11", "2001:db8:60::11"), ("vb", "B", "h2", "100.64.61.12", "2001:db8:61::12"))
ROWS = (("IPv4", "routed across hosts (va@h1 -> vb@h2)", "va", "vb", "100.64.61.12"),
        ("IPv6", "routed across hosts (va@h1 -> vb@h2)", "va", "vb", "2001:db8:61::12"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--v6-rounds", type=int, default=3, help="alternating rounds over the two rows (3)")
    p.add_argument("--v6-seconds", type=float, default=2.0, help="iperf3 seconds per row and round (2)")
    p.add_argument("--v6-pings", type=int, default=200, help="pings per row and round, 10 ms apart (200)")


def _ok(r: Any) -> Any:
    assert r.status_code in (200, 201), r.text
    return r.json()


def measure(rounds: int, seconds: float, count: int) -> dict[str, Any]:
    """Build the lab and run `rounds` alternating rounds (runs inside the sandbox)."""
    import_repo()
    from vxnet.lab import topology

    out: dict[str, Any] = {"rows": [{"rounds": [], "error": None} for _ in ROWS], "setup_s": None}
    workdir = tempfile.mkdtemp(prefix="vxnet-bench-v6-")
    try:
        with common.lab(workdir) as lab3:
            t0 = time.time()
            subs: dict[str, dict[str, Any]] = {}
            with lab3.api("alice") as c:
                rid = _ok(c.post("/routers", json={"router": {"name": "v6"}}))["router"]["id"]
                for name, (c4, c6) in NETS.items():
                    net = _ok(c.post("/networks", json={"network": {"name": f"v6-{name}"}}))["network"]
                    s4 = _ok(c.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                                 "cidr": c4}}))["subnet"]
                    s6 = _ok(c.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 6,
                                                                 "cidr": c6, "enable_dhcp": False}}))["subnet"]
                    subs[name] = {"net": net, "4": s4, "6": s6}
                    for s in (s4, s6):
                        _ok(c.put(f"/routers/{rid}/add_router_interface", json={"subnet_id": s["id"]}))
                ports = {}
                for vm, name, host, ip4, ip6 in VMS:
                    s = subs[name]
                    ports[vm] = _ok(c.post("/ports", json={"port": {
                        "network_id": s["net"]["id"], "port_security_enabled": False,
                        "fixed_ips": [{"subnet_id": s["4"]["id"], "ip_address": ip4},
                                      {"subnet_id": s["6"]["id"], "ip_address": ip6}]}}))["port"]
                    lab3.vm(vm, host, ports[vm])
                    topology.vm_ipv6(vm, f"{ip6}/64", s["6"]["gateway_ip"])
            for p in ports.values():
                lab3.wait_status(p["id"], "ACTIVE", timeout=30)
            common.measure_rows(out, ROWS, t0, rounds, seconds, count)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def run(opts: argparse.Namespace) -> Report:
    cols = ["family", "between", "iperf3 Gbit/s (median; min-max)", "ping avg ms", "p50 ms", "p99 ms", "lost"]
    if os.geteuid() != 0:
        return Report(NAME, cols, [["all", "not run", "", "", "", "", "needs root (namespaces)"]])
    rounds = 1 if opts.quick else max(1, opts.v6_rounds)
    seconds = 1.0 if opts.quick else opts.v6_seconds
    count = 50 if opts.quick else opts.v6_pings
    load0 = os.getloadavg()
    try:
        res = common.sandboxed_measure(in_sandbox, "bench.ipv6_routing_bench", len(ROWS), rounds, seconds, count)
    except Exception as e:  # noqa: BLE001 - the table says what broke
        return Report(NAME, cols, [["all", "failed", "", "", "", "", f"{type(e).__name__}: {e}"[:600]]])
    rows = common.rows_table(ROWS, res["rows"])
    goals = []
    a, b = res["rows"][1], res["rows"][0]
    if not a["error"] and not b["error"]:
        g, lat = common.paired_ratio(a, b, "gbps"), common.paired_ratio(a, b, "p50")
        rows.append(["ratio IPv6 / IPv4", "routed across hosts", f"{g:.2f}x" if g is not None else "", "",
                     f"{lat:.2f}x" if lat is not None else "", "", ""])
        if g is not None and lat is not None:
            goals.append(f"Routed IPv6 takes the same path as routed IPv4 (anycast legs, static neighbours, no "
                         f"NAT): here {lat:.2f}x its p50 ping latency and {g:.2f}x its throughput.")
    notes = [(f"{rounds} alternating rounds (row order reversed every other round); each row: iperf3 -t {seconds:g} "
              f"single TCP stream (receiver Gbit/s), then {count} pings 10 ms apart (3 warm-up pings not counted). "
              "VMs: MTU 1450, TSO/GSO/GRO on (guest-like); port security off on both ports (both families alike)."),
             f"Lab setup (networks, router, 2 VMs ACTIVE, first routed pings answered): {res['setup_s']:.1f} s."
             if res.get("setup_s") else "Lab setup did not finish.",
             common.load_note(load0, [row["rounds"] for row in res["rows"]])]
    extra = common.rows_per_round(("family", "between"), ROWS, res["rows"], rounds)
    return Report(NAME, cols, rows, notes=notes, goals=goals, extra_markdown=extra)


if __name__ == "__main__":
    from bench.__main__ import main

    sys.exit(main(["--only", "ipv6_routing_bench", *sys.argv[1:]]))
