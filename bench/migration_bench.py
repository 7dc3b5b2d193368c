"""Live-migration outage and agent-restart loss under a ping stream (issue 9, item 5).

Inside one private network + mount namespace (bench.port_up_bench.in_sandbox):
- vxnet: `vxnet lab up` (server + 3 agents), VMs m1@h1 and m2@h2 on one network. Each run: m1
  pings m2 every `--mig-interval` (2 ms) with `ping -D`; after 0.5 s m2 is migrated with the
  lab's own `vm_migrate` (= `vxnet lab vm migrate`: the tap disappears from the old host and
  appears on the new one, then the port's binding:host_id is PUT), alternating h2 -> h3 -> h2;
  the ping runs on 1.5 s more. Outage = the largest gap between two consecutive reply timestamps
  (KERNEL-NOTES §10: the "lost" count understates it). The lab's `topology.move_vm` is wrapped
  (in this child process only) to timestamp the moment the VM's NIC is back up on the new host,
  which splits the outage into "VM move" (last reply before the gap -> NIC up) and "control
  plane" (NIC up -> first reply again: agent notices the tap, server sees the binding, every
  agent rewrites its FDB entry).
- kernel reference: bench.kernel_lab "static" with the same two VMs, migrated by KERNEL-NOTES
  §10 commands (same VM move, then the FDB rewrite on every host at once with `bridge -batch`):
  the outage with an instant control plane, alternating with the vxnet runs.
- agent restart: m1 pings m2 every 2 ms; after 0.5 s the agents of both VMs' hosts are killed
  with SIGKILL, restarted 0.3 s later (`lab.stop_agent`/`start_agent`), and the ping runs 3 s
  more. Loss = transmitted - received; plus the largest reply gap. Runs are 3 s apart so each
  restarted agent has finished its first pass.
Every process started is stopped by PID (pings by SIGINT, the lab's by `lab down`).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench.common import lab as vxnet_lab
from bench.common import vms_active
from bench.kernel_lab import KernelLab, nsx
from bench.port_up_bench import in_sandbox
from bench.report import Report, percentile
from bench.servers import import_repo

NAME = "Live-migration outage and agent-restart loss under a 2 ms ping stream"
CIDR24 = "100.64.70"


def _ping_stream(src_ns: str, dst_ip: str, interval: float) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", src_ns, "ping", "-n", "-D", "-i", str(interval), "-W", "1", dst_ip],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop_ping(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    stamps = [float(x) for x in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.MULTILINE)]
    sent, recv = (int(m.group(1)), int(m.group(2))) if m else (0, len(stamps))
    gap = max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)
    return {"sent": sent, "received": recv, "gap": gap, "max_gap": gap, "stamps": stamps}


def _with_stream(src_ns: str, dst_ip: str, interval: float, action: Callable[[], dict[str, float]],
                 after: float) -> dict[str, Any]:
    proc = _ping_stream(src_ns, dst_ip, interval)
    try:
        time.sleep(0.5)
        marks = action()
        time.sleep(after)
    finally:
        res = _stop_ping(proc)
    res.update(marks)
    stamps = res.pop("stamps")
    if marks.get("moved"):
        # The outage is the reply gap around the moment the NIC came back on the new host, not
        # the largest gap of the stream: on a loaded machine a scheduling stall elsewhere in the
        # stream can be longer (kept as `max_gap`).
        around = [(a, b) for a, b in itertools.pairwise(stamps) if a <= marks["moved"] <= b]
        if around:
            a, b = around[0]
            res.update(gap=b - a, vm_move=marks["moved"] - a, control=b - marks["moved"])
        else:
            res["gap"] = float("nan")
    return res


def measure(runs: int, interval: float) -> dict[str, Any]:
    """Alternating migration runs (vxnet, kernel), then agent-restart runs (inside the sandbox)."""
    import_repo()
    from vxnet.lab import lab, topology

    out: dict[str, Any] = {"vxnet": [], "kernel": [], "restart": [], "errors": []}
    marks: dict[str, float] = {}
    orig_move = topology.move_vm

    def timed_move(*a: Any, **kw: Any) -> None:
        orig_move(*a, **kw)
        marks["moved"] = time.time()

    k = KernelLab(mode="static", prefix="vxk", cidr24=CIDR24)
    workdir = tempfile.mkdtemp(prefix="vxnet-bench-mig-")
    topology.move_vm = timed_move   # instrumentation of this child process only
    try:
        with vxnet_lab(workdir) as lab3:
            net, _ = lab3.network("alice", f"{CIDR24}.0/24", "mig")
            vms_active(lab3, [("m1", "h1", net["id"], f"{CIDR24}.11"), ("m2", "h2", net["id"], f"{CIDR24}.12")])
            k.build()
            k.add_vm("km1", 1, 11)
            k.add_vm("km2", 2, 12)
            k.apply_firewall()
            m1, km1 = topology.vm_ns("m1"), k.vm_ns("km1")
            for ns in (m1, km1):
                if nsx(ns, "ping", "-c", "2", "-i", "0.1", "-W", "1", f"{CIDR24}.12", check=False).returncode:
                    raise RuntimeError(f"{ns} cannot reach {CIDR24}.12 before the runs")
            for run in range(runs):
                dest = "h3" if run % 2 == 0 else "h2"

                def vx_action(d: str = dest) -> dict[str, float]:
                    marks.clear()
                    t0 = time.time()
                    lab.vm_migrate("m2", d)
                    return {"t0": t0, "moved": marks.get("moved", 0.0), "returned": time.time()}

                def k_action(d: int = int(dest[1:])) -> dict[str, float]:
                    t0 = time.time()
                    mv, rw = k.migrate("km2", d)
                    return {"t0": t0, "moved": t0 + mv, "returned": time.time(), "rewrite": rw}

                for system, ns, act in (("vxnet", m1, vx_action), ("kernel", km1, k_action)):
                    try:
                        r = _with_stream(ns, f"{CIDR24}.12", interval, act, 1.5)
                        r["dest"] = dest
                        out[system].append(r)
                    except Exception as e:  # noqa: BLE001 - the table says what broke
                        out["errors"].append(f"{system} migration run {run + 1}: {type(e).__name__}: {e}"[:400])
            st = lab.load_state()
            for run in range(runs):
                hosts = sorted({"h1", st["vms"]["m2"]["host"]})

                def restart(hs: list[str] = hosts) -> dict[str, float]:
                    for h in hs:
                        lab.stop_agent(st, h, signal.SIGKILL)
                    time.sleep(0.3)
                    for h in hs:
                        lab.start_agent(st, h)
                    return {}
                try:
                    r = _with_stream(m1, f"{CIDR24}.12", interval, restart, 3.0)
                    r["hosts"] = hosts
                    out["restart"].append(r)
                except Exception as e:  # noqa: BLE001
                    out["errors"].append(f"agent restart run {run + 1}: {type(e).__name__}: {e}"[:400])
                time.sleep(3)
    finally:
        topology.move_vm = orig_move
        k.teardown()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mig-runs", type=int, default=6, help="migrations per system and agent-restart runs (6)")
    p.add_argument("--mig-interval", type=float, default=0.002, help="ping interval in seconds (0.002)")


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x * 1e3:.1f}"


def _dist(xs: list[float]) -> str:
    if not xs:
        return ""
    return f"{_ms(statistics.median(xs))} ({_ms(min(xs))}-{_ms(max(xs))})"


def run(opts: argparse.Namespace) -> Report:
    cols = ["system", "event", "runs", "outage ms: median (min-max)", "p90 outage ms",
            "largest gap anywhere in the stream ms", "lost pings (median; max)", "VM move part ms", "control-plane part ms", "notes"]
    if os.geteuid() != 0:
        return Report(NAME, cols, [["all", "not run", *[""] * (len(cols) - 2)]])
    runs = 2 if opts.quick else max(1, opts.mig_runs)
    load0 = os.getloadavg()
    try:
        res: dict[str, Any] = in_sandbox(  # type: ignore[assignment]
            f"__import__('bench.migration_bench', fromlist=['_']).measure({runs}, {opts.mig_interval})",
            600 + 30 * runs)
    except Exception as e:  # noqa: BLE001
        return Report(NAME, cols, [["all", "failed", "", f"{type(e).__name__}: {e}"[:600], *[""] * (len(cols) - 4)]])
    rows = []
    labels = {"vxnet": ("vxnet", "live migration (`vxnet lab vm migrate`)",
                        "move = lab's tap move; control plane = NIC up -> first reply"),
              "kernel": ("kernel (hand-built)", "live migration, KERNEL-NOTES §10 commands",
                         "same move, then FDB rewrite on all hosts (bridge -batch), no control plane"),
              "restart": ("vxnet", "agents of both hosts kill -9, restart 0.3 s later", "")}
    for key in ("vxnet", "kernel", "restart"):
        rs = res[key]
        system, event, note = labels[key]
        if not rs:
            rows.append([system, event, "0", "not measured", "", "", "", "", "", "see notes"])
            continue
        gaps = [r["gap"] for r in rs if r["gap"] == r["gap"]]   # NaN: no reply on one side of the move
        lost = [r["sent"] - r["received"] for r in rs]
        maxg = [r["max_gap"] for r in rs]
        rows.append([system, event, str(len(rs)), _dist(gaps), _ms(percentile(gaps, 90)), _dist(maxg),
                     f"{statistics.median(lost):g}; {max(lost)}",
                     _dist([r["vm_move"] for r in rs if "vm_move" in r]),
                     _dist([r["control"] for r in rs if "control" in r]), note])
    if res["vxnet"] and res["kernel"]:
        pairs = [a["gap"] / b["gap"] for a, b in zip(res["vxnet"], res["kernel"], strict=False)
                 if b["gap"] > 0 and a["gap"] == a["gap"]]
        ctl = [a["control"] / b["control"] for a, b in zip(res["vxnet"], res["kernel"], strict=False)
               if "control" in a and "control" in b and b["control"] > 0]
        rows.append(["ratio vxnet / kernel", "live migration", str(len(pairs)),
                     f"{statistics.median(pairs):.2f}x" if pairs else "", "", "", "", "",
                     f"{statistics.median(ctl):.2f}x" if ctl else "", "per-run pairs (alternating), median"])
    goals = [("Goal (issue 9): migration outage = VM move + control-plane propagation, nothing more; agent restart "
             "loses nothing (0 pings).")]
    if res["restart"]:
        lost = [r["sent"] - r["received"] for r in res["restart"]]
        goals.append(f"Agent restart here: {sum(lost)} pings lost over {len(lost)} runs "
                     f"({'met' if sum(lost) == 0 else 'NOT met'}); largest gap "
                     f"{_ms(max(r['gap'] for r in res['restart']))} ms.")
    notes = [(f"Ping every {opts.mig_interval * 1e3:g} ms with `ping -D` from a VM on h1 to the migrating VM; "
             f"{runs} migrations per system (vxnet and kernel alternating, h2 -> h3 -> h2 ...), then {runs} "
             "agent-restart runs. Migration outage = the gap between the two consecutive reply timestamps around "
             "the moment the VM's NIC is up on the new host (a scheduling stall elsewhere in the stream can be "
             "longer on a loaded machine: shown as 'largest gap anywhere'). Agent restart: lost pings and the "
             "largest gap anywhere."),
             ("The VM move (old tap deleted, new veth created and addressed on the new host, ~6 ip/ethtool process "
             "spawns) is the same code in both systems and stands for the VM's downtime; the kernel row's control "
             "plane is one `bridge -batch` per host run back to back."),
             "Load average (1/5/15 min) at the start: " + " / ".join(f"{x:.1f}" for x in load0) + "; at the end: "
             + " / ".join(f"{x:.1f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs shared with other "
             "sessions (process spawns, hence the move part, slow down with load).",
             *res["errors"]]
    slow = [r for r in res["kernel"] + res["vxnet"] if r.get("control", 0) > 0.5]
    if slow:
        notes.append(f"{len(slow)} run(s) had a control-plane part over 0.5 s. Cause, reproduced outside the "
                     "benchmark (in 8 migrations, the 2 with this coincidence had the ~1 s gap, none of the 6 others): "
                     "the new tap's ifindex in the host namespace equalled the VM-side "
                     "eth0's ifindex in the VM namespace. The kernel's linkwatch then treats the veth's carrier "
                     "change as non-urgent (iflink == ifindex) and applies it up to 1 s later, and the bridge "
                     "keeps the port disabled until then. vxnet's lab and agents are exposed the same way; which "
                     "run hits it depends only on ifindex counters.")
    extra = "Per run (ms; gap / move part / control part / lost):\n\n"
    for key in ("vxnet", "kernel", "restart"):
        extra += f"- {labels[key][0]}, {labels[key][1]}: " + "; ".join(
            f"{_ms(r['gap'])} / {_ms(r.get('vm_move'))} / {_ms(r.get('control'))} / {r['sent'] - r['received']}"
            + (f" (-> {r['dest']})" if "dest" in r else "") for r in res[key]) + "\n"
    return Report(NAME, cols, rows, notes=notes, goals=goals, extra_markdown=extra)


if __name__ == "__main__":
    from bench.__main__ import main

    sys.exit(main(["--only", "migration_bench", *sys.argv[1:]]))
