"""QEMU guest boot -> DHCP lease -> first ping across hosts (docs/guests.md), with TCG.

Definition: `vxnet lab` with 3 hosts; a namespace VM on h2 on the same network. Per run: a new
port, t0 just before `lab.vm_add(..., qemu=True)` (QEMU started in h1's namespace on the port's
tap, then the port bound); "lease" = the moment the guest's console shows `vxnet-guest: lease`
(its own busybox udhcpc, answered by h1's agent; polled every 20 ms); "first ping" = the first
echo reply the namespace VM on h2 receives from the guest's address (iputils ping every 50 ms
from the lease on; it quantises to 10 ms, KERNEL-NOTES 13, negligible here). The guest's own
uptime at the lease (kernel clock, from the console line) is shown too: the rest of the boot
figure is QEMU's start-up and the kernel's decompression under TCG. The guest is deleted after
each run (QEMU killed by PID). Runs are few and one at a time: TCG guests are CPU-heavy.

Contract: runs in its own sandbox; `lab down` on the way out, also on failure.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench.report import Report

NAME = "QEMU guest (TCG): boot -> DHCP lease -> first ping across hosts"
NET_CIDR = "100.64.30.0/24"


def measure(runs: int) -> dict[str, Any]:
    """Inside the sandbox: the figures of `runs` guest boots."""
    from bench.common import lab, vms_active
    from vxnet.lab import lab as vxlab
    from vxnet.lab import qemu

    out: dict[str, Any] = {"runs": [], "errors": []}
    with tempfile.TemporaryDirectory() as workdir, lab(workdir) as lab3:
        net, _ = lab3.network("alice", NET_CIDR, "qbench")
        vms_active(lab3, [("qbv", "h2", net["id"], "100.64.30.200")])
        for i in range(runs):
            p = lab3.port("alice", net["id"])
            ip = p["fixed_ips"][0]["ip_address"]
            name = f"qb{i}"
            t0 = time.monotonic()
            vm = vxlab.vm_add(name, "h1", p["id"], qemu=True)
            t_started = time.monotonic()
            try:
                log = qemu.wait_console(vm["qemu"]["console"], "vxnet-guest: lease", 120)
                t_lease = time.monotonic()
                m = re.search(r"vxnet-guest: lease \S+ .*\(uptime ([\d.]+)\)", log)
                r = subprocess.run(["ip", "netns", "exec", "vxl-v-qbv", "ping", "-n", "-q", "-c", "1", "-i", "0.05",
                                    "-w", "60", ip], capture_output=True, text=True, check=False)
                t_ping = time.monotonic()
                if r.returncode != 0:
                    out["errors"].append(f"run {i}: no reply from the guest: {r.stdout[-300:]}")
                    continue
                out["runs"].append({"start": t_started - t0, "lease": t_lease - t0, "ping": t_ping - t_lease,
                                    "uptime": float(m.group(1)) if m else None, "accel": vm["qemu"]["accel"]})
            finally:
                vxlab.vm_del(name)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--qemu-runs", type=int, default=3, help="guest boots (3)")


def run(opts: argparse.Namespace) -> Report:
    cols = ["run", "accel", "vm add returned s", "boot -> lease s", "guest uptime at lease s",
            "lease -> first ping ms", "boot -> first ping s"]
    if os.geteuid() != 0:
        return Report(NAME, cols, [["all", "not run (needs root)", *[""] * (len(cols) - 2)]])
    from bench.port_up_bench import in_sandbox

    runs = 1 if opts.quick else max(1, opts.qemu_runs)
    load0 = os.getloadavg()
    try:
        res: dict[str, Any] = in_sandbox(  # type: ignore[assignment]
            f"__import__('bench.qemu_bench', fromlist=['_']).measure({runs})", 120 + 150 * runs)
    except Exception as e:  # noqa: BLE001
        return Report(NAME, cols, [["all", "failed", f"{type(e).__name__}: {e}"[:600], *[""] * (len(cols) - 3)]])
    rows = []
    for i, r in enumerate(res["runs"]):
        rows.append([str(i + 1), r["accel"], f"{r['start']:.2f}", f"{r['lease']:.2f}",
                     "" if r["uptime"] is None else f"{r['uptime']:.2f}", f"{r['ping'] * 1e3:.0f}",
                     f"{r['lease'] + r['ping']:.2f}"])
    if len(res["runs"]) > 1:
        med = statistics.median
        rows.append(["median", "", f"{med(r['start'] for r in res['runs']):.2f}",
                     f"{med(r['lease'] for r in res['runs']):.2f}", "",
                     f"{med(r['ping'] for r in res['runs']) * 1e3:.0f}",
                     f"{med(r['lease'] + r['ping'] for r in res['runs']):.2f}"])
    notes = [("Guest: Debian's cloud kernel + a busybox-static initramfs (lab/image.py), 128 MiB, 1 vCPU; "
              "KVM is used only when a probe boot under it succeeds (here it spins in the host kernel: TCG)."),
             "Load average (1/5/15 min) at the start: " + " / ".join(f"{x:.1f}" for x in load0)
             + "; at the end: " + " / ".join(f"{x:.1f}" for x in os.getloadavg())
             + f" on {os.cpu_count()} CPUs shared with other sessions (TCG is CPU-bound: the boot figure "
             "scales with the load).", *res["errors"]]
    return Report(NAME, cols, rows, notes=notes)


if __name__ == "__main__":
    from bench.__main__ import main

    sys.exit(main(["--only", "qemu_bench", *sys.argv[1:]]))
