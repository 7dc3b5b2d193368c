"""Underlay overhead of first contact: frames on the underlay while N VMs on 3 hosts (default 6,
two per host) each ping each other once, vxnet vs the hand-built flood-and-learn baseline
(issue 9, item 4).

Systems, built afresh for every run inside one private network + mount namespace
(bench.port_up_bench.in_sandbox):
- vxnet: `vxnet lab up` (server + 3 agents); every run a new network and N new VMs through the
  API, counted once every port is ACTIVE (the lab stays up between runs; idle VMs send nothing:
  IPv6 is off in the lab).
- kernel static: bench.kernel_lab "static" (vxnet's recipe without a control plane): the
  cross-check that vxnet's figure is the recipe's.
- flood-and-learn: bench.kernel_lab "flood": VXLAN and bridge learning on, head-end replication
  entries (00:00:00:00:00:00 -> every other VTEP), no static FDB/neighbour entries, no ARP
  suppression: what Linux VXLAN does without a control plane.
The VMs' neighbour caches are empty at the start of a run (fresh VMs). A tcpdump
(--immediate-mode, on the underlay bridge of that system) records the run: VM i pings VM j once
(`ping -c 1 -W 1`) for every ordered pair, one after the other. Frames are classified by
bench.kernel_lab.classify (ARP, broadcast, multicast, unknown-unicast flood copies, VXLAN unicast
to the right VTEP, other). Underlay ARP between VTEPs is pinned (permanent entries) in every
system, so what remains is overlay traffic.

Goal (issue 9): vxnet 0 broadcast frames; a ping between VMs on different hosts = 2 VXLAN
unicast frames and nothing else.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import Any

from bench.common import lab as vxnet_lab
from bench.kernel_lab import KINDS, Capture, KernelLab, nsx
from bench.port_up_bench import in_sandbox
from bench.report import Report
from bench.servers import import_repo

NAME = "Underlay overhead: frames for all-to-all first contact, vxnet vs flood-and-learn VXLAN"
HOSTS = 3


def _pings(vms: list[tuple[str, str]]) -> tuple[int, int]:
    """Every VM pings every other once (ordered pairs, sequential); returns (ok, total)."""
    ok = total = 0
    for src_ns, _ in vms:
        for dst_ns, dst_ip in vms:
            if dst_ns == src_ns:
                continue
            total += 1
            ok += nsx(src_ns, "ping", "-n", "-q", "-c", "1", "-W", "1", dst_ip, check=False).returncode == 0
    return ok, total


def _count(ul_ns: str, ul_br: str, vms: list[tuple[str, str]], mac_vtep: dict[str, str]) -> dict[str, Any]:
    cap = Capture(ul_ns, ul_br)
    try:
        ok, total = _pings(vms)
    finally:
        frames = cap.stop()
    from bench.kernel_lab import classify

    return {"counts": classify(frames, mac_vtep), "ok": ok, "total": total}


def _kernel_run(mode: str, nvms: int, prefix: str) -> dict[str, Any]:
    k = KernelLab(hosts=HOSTS, mode=mode, prefix=prefix, cidr24="100.64.50")
    try:
        k.build()
        vms = [k.add_vm(f"u{i}", (i - 1) % HOSTS + 1, 10 + i) for i in range(1, nvms + 1)]
        if mode == "static":
            k.apply_firewall()     # vxnet's port security + default group, as in the data-plane benchmark
        return _count(k.ul_ns, k.ul_br, [(k.vm_ns(v.name), v.ip) for v in vms],
                      {v.mac: k.vtep(v.host) for v in vms})
    finally:
        k.teardown()


def _vxnet_run(lab3: Any, run: int, nvms: int) -> dict[str, Any]:
    from vxnet.lab import lab, topology

    net, _ = lab3.network("alice", f"100.64.{60 + run}.0/24", f"ul{run}")
    ports = []
    for i in range(1, nvms + 1):
        p = lab3.port("alice", net["id"], f"100.64.{60 + run}.{10 + i}")
        host = f"h{(i - 1) % HOSTS + 1}"
        lab3.vm(f"r{run}u{i}", host, p)
        ports.append((p, host))
    for p, _ in ports:
        lab3.wait_status(p["id"], "ACTIVE", timeout=30)
    vms = [(topology.vm_ns(f"r{run}u{i + 1}"), p["fixed_ips"][0]["ip_address"]) for i, (p, _) in enumerate(ports)]
    mac_vtep = {p["mac_address"]: topology.underlay_ip(int(h[1:])) for p, h in ports}
    res = _count(topology.UNDERLAY_NS, topology.UNDERLAY_BR, vms, mac_vtep)
    for i in range(1, nvms + 1):       # idle VMs are silent, but keep the lab small
        lab.vm_del(f"r{run}u{i}")
    return res


def measure(runs: int, nvms: int) -> dict[str, Any]:
    """`runs` alternating runs of (vxnet, kernel static, flood-and-learn) (inside the sandbox)."""
    import_repo()

    out: dict[str, Any] = {"vxnet": [], "kernel static": [], "flood-and-learn": [], "errors": []}
    workdir = tempfile.mkdtemp(prefix="vxnet-bench-ul-")
    try:
        with vxnet_lab(workdir) as lab3:
            for run in range(runs):
                for system, fn in (("vxnet", lambda r=run: _vxnet_run(lab3, r, nvms)),
                                   ("kernel static", lambda: _kernel_run("static", nvms, "vxks")),
                                   ("flood-and-learn", lambda: _kernel_run("flood", nvms, "vxkf"))):
                    try:
                        out[system].append(fn())
                    except Exception as e:  # noqa: BLE001 - the table says what broke
                        out["errors"].append(f"{system} run {run + 1}: {type(e).__name__}: {e}"[:400])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ul-runs", type=int, default=3, help="runs of each system, alternating (3)")
    p.add_argument("--ul-vms", type=int, default=6, help="VMs, round-robin over 3 hosts (6)")


def run(opts: argparse.Namespace) -> Report:
    cols = ["system", "runs", "pings ok", "frames", *KINDS, "frames per ping"]
    if os.geteuid() != 0:
        return Report(NAME, cols, [["all", "not run", *[""] * (len(cols) - 2)]])
    runs = 1 if opts.quick else max(1, opts.ul_runs)
    nvms = opts.ul_vms
    load0 = os.getloadavg()
    try:
        res: dict[str, Any] = in_sandbox(  # type: ignore[assignment]
            f"__import__('bench.underlay_bench', fromlist=['_']).measure({runs}, {nvms})", 600 + 120 * runs)
    except Exception as e:  # noqa: BLE001
        return Report(NAME, cols, [["all", "failed", f"{type(e).__name__}: {e}"[:600], *[""] * (len(cols) - 3)]])
    rows = []
    per_run = []
    for system in ("vxnet", "kernel static", "flood-and-learn"):
        rs = res[system]
        if not rs:
            rows.append([system, "0", "not measured", *[""] * (len(cols) - 3)])
            continue
        ok, total = sum(r["ok"] for r in rs), sum(r["total"] for r in rs)
        per = [r["counts"] for r in rs]
        # The table gives the mean per run (counts are per run of N*(N-1) pings); min-max when runs differ.
        cells = []
        for k in ("frames", *KINDS):
            vals = [c[k] for c in per]
            mean = sum(vals) / len(vals)
            cells.append(f"{mean:g}" if min(vals) == max(vals) else f"{mean:.1f} ({min(vals)}-{max(vals)})")
        fpp = sum(c["frames"] for c in per) / max(1, total)
        rows.append([system, str(len(rs)), f"{ok}/{total}", *cells, f"{fpp:.2f}"])
        per_run += [f"{system} run {i + 1}: " + ", ".join(f"{k} {c[k]}" for k in ("frames", *KINDS, "IGMP")) +
                    f"; pings {r['ok']}/{r['total']}" for i, (r, c) in enumerate(zip(rs, per, strict=True))]
    goals = ["Goal (issue 9): vxnet 0 broadcast frames on the underlay for all-to-all first contact."]
    if res["vxnet"]:
        b = sum(r["counts"]["broadcast"] for r in res["vxnet"])
        a = sum(r["counts"]["ARP"] for r in res["vxnet"])
        cross = nvms * (nvms - 1) - nvms * (nvms // HOSTS - 1) if nvms % HOSTS == 0 else None
        vxu = [r["counts"]["VXLAN unicast"] for r in res["vxnet"]]
        goals.append(f"Met here: {'yes' if b == 0 else 'NO'} ({b} broadcast, {a} ARP frames over "
                     f"{len(res['vxnet'])} runs)" + (f"; VXLAN unicast per run {vxu} for {cross} cross-host pings "
                                                     f"(2 each = {2 * cross})" if cross is not None else "") + ".")
    notes = [(f"{nvms} VMs round-robin over {HOSTS} hosts, {nvms * (nvms - 1)} pings per run (every ordered pair "
             f"once, sequential, `ping -c 1 -W 1`), {runs} runs per system, alternating (vxnet, kernel static, "
             "flood-and-learn); counts are per run (mean, with min-max where runs differ). Capture: tcpdump "
             "--immediate-mode on the underlay bridge of that system's lab."),
             ("Kinds: ARP = ARP on the underlay or inside VXLAN; broadcast/multicast = outer or inner group "
             "destination (an ARP request is both ARP and broadcast); unknown-unicast flood = a VXLAN copy of an "
             "inner unicast frame sent to a VTEP that does not host its destination (head-end replication of an "
             "unknown MAC); VXLAN unicast = inner unicast to the VTEP that hosts the destination. The per-run list also counts "
             "the IGMP reports among the multicast frames (VMs report their groups for a few seconds after their NIC "
             "comes up; with BUM entries every host gets them)."),
             "Load average (1/5/15 min) at the start: " + " / ".join(f"{x:.1f}" for x in load0) + "; at the end: "
             + " / ".join(f"{x:.1f}" for x in os.getloadavg()) + " (frame counts do not depend on load).",
             *res["errors"]]
    extra = "Per run:\n\n" + "\n".join(f"- {x}" for x in per_run) if per_run else ""
    return Report(NAME, cols, rows, notes=notes, goals=goals, extra_markdown=extra)


if __name__ == "__main__":
    from bench.__main__ import main

    sys.exit(main(["--only", "underlay_bench", *sys.argv[1:]]))
