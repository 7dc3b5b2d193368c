"""Gateway failover: N host failures of the active gateway with live streams, and the
floating-IP path's throughput with conntrackd running vs not.

Inside one private network + mount namespace (bench.port_up_bench.in_sandbox): `vxnet lab up
--hosts 2 --gateways 2 --external`, every agent with `--bfd` (FRR bfdd, 100 ms x 3), the
store's lease 8 s. One router (active + standby), VM v1 on h1 with a floating IP, VM v2 on h2
behind SNAT, both on the real path (distributed router -> snat port).
Per failover: three streams sending every 50 ms (the outside's TCP connection to v1 through
the floating IP, v2's TCP connection to the outside through SNAT, the outside's ping of the
floating IP; tests/support/tcpstream.py, echoed, every echo timestamped); once the standby's
conntrack table holds both flows (conntrackd), `vxnet lab host fail` on the active (cables
down, SIGKILL of its agent, bfdd, conntrackd); the gaps are the longest time between two
answers of each stream; "kept" = the TCP socket never failed. Then `lab host recover` and wait
until the host is the router's standby again (and BFD up), so the next failover is the same
situation with the roles swapped.
Throughput: iperf3 (1 stream) outside -> floating IP -> v1, alternating rounds with the
router's conntrackd daemons running and stopped (SIGTERM by PID, restarted with the agent's own
config afterwards).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from bench import common
from bench.port_up_bench import in_sandbox
from bench.report import Report
from bench.servers import import_repo

NAME = "Gateway failover (BFD + conntrackd): gaps, connections kept, conntrackd throughput cost"
LEASE = 8
ANCHORS = ("OVN BFD defaults ~3 s detection, no conntrack sync; Neutron L3 HA (VRRP 2 s) ~6-7 s, TCP sessions "
           "break; vxnet before: 7.6 s longest gap (lease 8 s), connections lost")


def _conntrackd(ns: str) -> list[tuple[int, list[str]]]:
    out = []
    for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout.split():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = [c.decode() for c in f.read().split(b"\0") if c]
        except OSError:
            continue
        if cmd and cmd[0].endswith("conntrackd"):
            out.append((int(pid), cmd))
    return out


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def measure(failovers: int, rounds: int, seconds: int) -> dict[str, Any]:
    """Runs inside the sandbox (see module docstring)."""
    import_repo()
    import signal
    import tempfile

    from tests.root.conftest import Lab
    from tests.root.test_gateway import allow_outside, ok, tenant_router, vm_behind, wait_for
    from tests.root.test_gateway_ha import Streams, _ready, placement, synced
    from tests.support.tcpstream import serve
    from vxnet.compute.gateway import router_netns
    from vxnet.lab import hostfail, lab, topology

    d = tempfile.mkdtemp(prefix="vxnet-habench-")
    os.environ["VXNET_LAB_DIR"] = os.path.join(d, "state")
    cfg = common.lab_config(d, f"agent_down_time = {LEASE}")
    st = lab.up(2, cfg, agent_args=["--bfd"], gateways=2, external=True)
    g = Lab(st)
    out: dict[str, Any] = {"failovers": [], "with_gbps": [], "without_gbps": []}
    procs: list[subprocess.Popen[Any]] = []
    try:
        g.wait_agents({"h1", "h2", "h3", "h4"}, timeout=60)
        net, _, r = tenant_router(g, "alice", "192.0.2.0/24", "ha")
        allow_outside(g, "alice")
        p1, p2 = g.port("alice", net["id"], "192.0.2.11"), g.port("alice", net["id"], "192.0.2.12")
        vm_behind(g, "v1", "h1", p1, r["id"], via_snat=False)
        vm_behind(g, "v2", "h2", p2, r["id"], via_snat=False)
        with g.api("alice") as c:
            fip = ok(c.post("/floatingips", json={"floatingip": {
                "floating_network_id": r["external_gateway_info"]["network_id"], "port_id": p1["id"]}}),
                201)["floatingip"]["floating_ip_address"]
        with g.api("alice") as c:   # iperf3's port from the outside too
            sg = ok(c.get("/security-groups", params={"name": "default"}))["security_groups"][0]
            c.post("/security-group-rules", json={"security_group_rule": {
                "security_group_id": sg["id"], "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
                "port_range_min": 5201, "port_range_max": 5201, "remote_ip_prefix": "203.0.113.0/24"}})
        procs += [serve(topology.vm_ns("v1"), 8081), serve(topology.EXTERNAL_NS, 8090),
                  subprocess.Popen(["ip", "netns", "exec", topology.vm_ns("v1"), "iperf3", "-s"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        topo = {"ra": r["id"]}
        for _ in range(failovers):
            act, sb = _ready(g, topo)
            streams = Streams(fip, "v2")
            rec: dict[str, Any] = {"active": act}
            try:
                wait_for(lambda sb=sb: synced(router_netns(r["id"], sb), fip), timeout=20, interval=0.2)
                t_fail = time.time()
                hostfail.fail(g.state, act)
                streams.flowing_after(t_fail + 0.1, n=20)
                rec["flowing_after_s"] = time.time() - t_fail
                rec.update(streams.gaps(t_fail - 1))
                rec["kept"] = streams.alive()
                wait_for(lambda sb=sb: placement(g, r["id"]) == (sb, ()), timeout=LEASE + 30, interval=0.2)
                hostfail.recover(g.state, act)
                wait_for(lambda act=act, sb=sb: placement(g, r["id"]) == (sb, (act,)), timeout=60, interval=0.2)
                streams.flowing_after(time.time(), n=10)
                rec["kept"] = rec["kept"] and streams.alive()
            finally:
                rec["end"] = streams.stop()
            out["failovers"].append(rec)
        # throughput: conntrackd running vs stopped, alternating
        act, sb = _ready(g, topo)
        daemons = [d for ns in (router_netns(r["id"], act), router_netns(r["id"], sb)) for d in _conntrackd(ns)]
        out["ctd_cpu_s"] = []
        for _ in range(rounds):
            c0 = sum(_cpu(pid) for pid, _c in daemons)
            out["with_gbps"].append(common.iperf_gbps(topology.EXTERNAL_NS, fip, seconds))
            out["ctd_cpu_s"].append(sum(_cpu(pid) for pid, _c in daemons) - c0)
            for pid, _cmd in daemons:
                os.kill(pid, signal.SIGTERM)
            time.sleep(0.5)
            out["without_gbps"].append(common.iperf_gbps(topology.EXTERNAL_NS, fip, seconds))
            for ns in (router_netns(r["id"], act), router_netns(r["id"], sb)):
                cmd = next(c for _p, c in daemons if c[-1].endswith(f"ct-{ns}/conntrackd.conf"))
                lock = os.path.join(os.path.dirname(cmd[-1]), "lock")
                if os.path.exists(lock):
                    os.unlink(lock)
                subprocess.run(["ip", "netns", "exec", ns, *cmd], check=False, capture_output=True)  # as the agent did
            time.sleep(0.5)
            daemons = [d for ns in (router_netns(r["id"], act), router_netns(r["id"], sb)) for d in _conntrackd(ns)]
        out["daemons"] = len(daemons)
    finally:
        common.kill_all(procs)
        lab.down()
    out["load"] = os.getloadavg()
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ha-failovers", type=int, default=10, help="host failures of the active gateway (10)")
    p.add_argument("--ha-rounds", type=int, default=3, help="alternating conntrackd on/off iperf3 rounds (3)")


def _stats(xs: list[float]) -> str:
    if not xs:
        return ""
    return f"p50 {statistics.median(xs) * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms (n={len(xs)})"


def run(opts: argparse.Namespace) -> Report:
    cols = ["measure", "result", "notes"]
    if os.geteuid() != 0:
        return Report(NAME, cols, [["all", "not run (needs root)", ""]])
    n = 2 if opts.quick else max(1, opts.ha_failovers)
    rounds = 1 if opts.quick else max(1, opts.ha_rounds)
    seconds = 3
    load0 = os.getloadavg()
    try:
        res: dict[str, Any] = in_sandbox(  # type: ignore[assignment]
            f"__import__('bench.gateway_ha_bench', fromlist=['_']).measure({n}, {rounds}, {seconds})",
            300 + n * 60 + rounds * 30)
    except Exception as e:  # noqa: BLE001
        return Report(NAME, cols, [["all", "failed", f"{type(e).__name__}: {e}"[:600]]])
    fo = res["failovers"]
    kept = sum(1 for f in fo if f["kept"])
    rows = [[f"gap, ping of the floating IP (every 50 ms), {len(fo)} failovers", _stats([f["ping"] for f in fo]),
             "longest time between two replies around the failure"],
            ["gap, TCP outside -> floating IP -> v1 (every 50 ms, echoed)", _stats([f["fip_tcp"] for f in fo]),
             "includes TCP's retransmission timeout (200 ms, doubling)"],
            ["gap, TCP v2 -> SNAT -> outside (every 50 ms, echoed)", _stats([f["snat_tcp"] for f in fo]), ""],
            ["connections kept (both TCP streams, same sockets)", f"{kept} of {len(fo)} failovers", ""],
            ["anchors", ANCHORS, ""]]
    w = [x for x in res["with_gbps"] if x]
    wo = [x for x in res["without_gbps"] if x]
    ratios = [a / b for a, b in zip(res["with_gbps"], res["without_gbps"], strict=False) if a and b]
    rows.append(["iperf3 outside -> floating IP, conntrackd running / stopped (Gbit/s)",
                 f"{statistics.median(w):.2f} / {statistics.median(wo):.2f}" if w and wo else "",
                 (f"ratio per round: {', '.join(f'{x:.2f}' for x in ratios)} (goal >= 0.9); conntrackd CPU during "
                  f"the rounds: {', '.join(f'{x:.2f}' for x in res.get('ctd_cpu_s', []))} s")])
    notes = [f"{len(fo)} failovers, {rounds} throughput rounds of {seconds} s. Load average at the start "
             + " / ".join(f"{x:.1f}" for x in load0) + ", at the end " + " / ".join(f"{x:.1f}" for x in res["load"])
             + f" on {os.cpu_count()} CPUs shared with other engineers' runs.",
             "Per failover (active, flowing again after s, gaps s): " + "; ".join(
                 f"{f['active']} {f['flowing_after_s']:.2f} ping {f['ping']:.2f} fip {f['fip_tcp']:.2f} "
                 f"snat {f['snat_tcp']:.2f}" for f in fo)]
    return Report(NAME, cols, rows, notes=notes)


if __name__ == "__main__":
    from bench.__main__ import main

    sys.exit(main(["--only", "gateway_ha_bench", *sys.argv[1:]]))
