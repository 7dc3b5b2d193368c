"""Security groups: data-path cost against the hand-built recipe, and time to apply a change.

1. Throughput (same run, alternating rounds, all in one private network + mount namespace,
   bench.port_up_bench.in_sandbox):
   - vxnet: `vxnet lab up --hosts 3`, one network, VMs fw1@h1 and fw2@h2 through the API in the
     project's default group (the firewall feature's tables: anti-spoofing, default group with
     its remote-group set, conntrack zone per network);
   - hand-built: bench.kernel_lab.KernelLab "static" with `apply_firewall()` (KERNEL-NOTES §6 by
     hand with the default group's semantics), VMs k1@h1, k2@h2, same MTU and VM offloads;
   - hand-built without any table (for scale: what the filtering itself costs);
   - then, in the vxnet lab itself with its agents stopped, the same VMs with vxnet's tables
     and with the hand-written recipe swapped in (one `nft -f` per host and switch), rounds
     alternating: only the rulesets differ.
   Each round runs one single-stream iperf3 per path, the order reversed every other round;
   the ratio vxnet / hand-built is computed per round, median over rounds (goal >= 0.95).
2. Apply time at 1,000 ports (its own namespace in the same sandbox, no lab): a synthetic host
   view with 1,000 local ports in one group (egress any, ingress from the group + 8 more rules)
   -> compute (pure) -> `NftDriver.apply`. Timed, alternating, 6 times each: a rule added to the
   group (a change touching 1,000 ports' rules) applied incrementally (the one rule added to the
   shared group chain) vs the same desired state loaded by a full table replacement; plus a
   member change of the remote group (set element), one more port, the periodic drift check,
   and the adoption pass of a restarted agent (kernel read back, nothing reloaded).
Contract: only its own namespaces; processes stopped by PID; figures never invented.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from bench.common import lab as vxnet_lab
from bench.common import vms_active
from bench.kernel_lab import KernelLab, firewall_recipe, iperf3_run, nsx, sh
from bench.port_up_bench import in_sandbox
from bench.report import Report
from bench.servers import import_repo

NAME = "Security groups: throughput vs the hand-built recipe, and time to apply a change at 1,000 ports"
CIDR24 = "100.64.44"
APPLY_NS = "vxf-apply"
GROUP = "9a000000-0000-4000-8000-00000000000a"
NET = "9b000000-0000-4000-8000-00000000000b"


# --- 1. throughput ------------------------------------------------------------------------------

def _throughput(rounds: int, seconds: float) -> dict[str, Any]:

    out: dict[str, Any] = {"rounds": [], "notes": []}
    k = KernelLab(mode="static", prefix="vxk", cidr24=CIDR24)
    workdir = tempfile.mkdtemp(prefix="vxnet-bench-fw-")
    try:
        with vxnet_lab(workdir) as lab3:
            from vxnet.lab import topology

            net, _ = lab3.network("alice", f"{CIDR24}.0/24", "fw")
            ports = vms_active(lab3, [("fw1", "h1", net["id"], f"{CIDR24}.11"), ("fw2", "h2", net["id"], f"{CIDR24}.12")])
            k.build()
            k.add_vm("k1", 1, 11)
            k.add_vm("k2", 2, 12)
            k.apply_firewall()
            rules = nsx("vxl-h1", "nft", "list", "ruleset", check=False).stdout
            out["notes"].append(
                f"vxnet h1 holds tables {sorted({ln.split()[2] for ln in rules.splitlines() if ln.startswith('table')})}"
                f", bridge-nf-call-iptables={nsx('vxl-h1', 'sysctl', '-n', 'net.bridge.bridge-nf-call-iptables', check=False).stdout.strip()}")
            paths = {"vxnet": (topology.vm_ns("fw1"), topology.vm_ns("fw2"), f"{CIDR24}.12"),
                     "hand-built": (k.vm_ns("k1"), k.vm_ns("k2"), f"{CIDR24}.12"),
                     "hand-built, no tables": (k.vm_ns("k1"), k.vm_ns("k2"), f"{CIDR24}.12")}
            names = list(paths)
            for rnd in range(rounds):
                res: dict[str, Any] = {"load1": os.getloadavg()[0]}
                for name in (names if rnd % 2 == 0 else names[::-1]):
                    if name == "hand-built, no tables":
                        for i in (1, 2, 3):
                            sh(["ip", "netns", "exec", k.host_ns(i), "nft", "flush", "ruleset"])
                    src, dst, ip = paths[name]
                    res[name] = iperf3_run(src, dst, ip, seconds)
                    if name == "hand-built, no tables":
                        k.apply_firewall()
                out["rounds"].append(res)
            k.teardown()
            out["same_lab"] = _same_lab(lab3, ports, rounds, seconds)
    finally:
        k.teardown()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def _recipe(vms: list[tuple[str, str, str]], bridge: str) -> str:
    """KERNEL-NOTES §6 written by hand (bench.kernel_lab.firewall_recipe, the text of
    KernelLab.apply_firewall) for the lab's own VMs `(tap, mac, ip)` on `bridge`: tables `vxr_ps` / `vxr_sg`."""
    return firewall_recipe("vxr_", [(str(n), tap, mac, ip) for n, (tap, mac, ip) in enumerate(vms)], [bridge])


_DROP = {"vxnet": "table bridge vxnet_ps {}\ndelete table bridge vxnet_ps\ntable inet vxnet_sg {}\ndelete table inet vxnet_sg\n",
         "recipe": "table bridge vxr_ps {}\ndelete table bridge vxr_ps\ntable inet vxr_sg {}\ndelete table inet vxr_sg\n"}


def _swap(hosts: list[str], saved: dict[str, str], recipe: str, to: str) -> None:
    """Replace one ruleset by the other on `hosts`, in one transaction per host."""
    for h in hosts:
        text = (_DROP["vxnet"] + _DROP["recipe"] + (recipe if to == "recipe" else saved[h]))
        sh(["ip", "netns", "exec", h, "nft", "-f", "-"], inp=text)


def _same_lab(lab3: Any, ports: dict[str, Any], rounds: int, seconds: float) -> list[dict[str, Any]]:
    """The vxnet lab's own VMs with vxnet's tables vs the hand-written recipe swapped in (agents
    stopped meanwhile, so nobody puts theirs back): only the rulesets differ."""
    from vxnet.compute import naming
    from vxnet.lab import lab, topology

    st = lab.load_state()
    for h in ("h1", "h2", "h3"):
        lab.stop_agent(st, h)
    hosts = [topology.host_ns(i) for i in (1, 2)]
    saved = {h: nsx(h, "nft", "list", "table", "bridge", "vxnet_ps").stdout
             + nsx(h, "nft", "list", "table", "inet", "vxnet_sg").stdout for h in hosts}
    vms = [(naming.tap_name(p["id"]), p["mac_address"], p["fixed_ips"][0]["ip_address"]) for p in ports.values()]
    recipe = _recipe(vms, naming.bridge_name(next(iter(ports.values()))["network_id"]))
    out = []
    src, dst, ip = topology.vm_ns("fw1"), topology.vm_ns("fw2"), ports["fw2"]["fixed_ips"][0]["ip_address"]
    for rnd in range(rounds):
        res: dict[str, Any] = {"load1": os.getloadavg()[0]}
        for name in (("vxnet", "recipe") if rnd % 2 == 0 else ("recipe", "vxnet")):
            _swap(hosts, saved, recipe, name)
            res[name] = iperf3_run(src, dst, ip, seconds)
        out.append(res)
    _swap(hosts, saved, recipe, "vxnet")
    return out


# --- 2. apply time ----------------------------------------------------------------------------

def _view(nports: int, extra_rules: int = 0, members_extra: int = 0, dual_stack: bool = False) -> dict[str, Any]:
    """A view of `nports` ports on h1 and `members_extra` on h2 in one group (port i: 100.64.x.y;
    with `dual_stack` also 2001:db8::<i + 1>: each port has IPv6 pairs, its link-local too)."""
    net = {"id": NET, "provider:network_type": "vxlan", "provider:segmentation_id": 1001}
    rules = [{"id": "9c000000-0000-4000-8000-000000000001", "security_group_id": GROUP, "direction": "egress",
              "ethertype": "IPv4"},
             {"id": "9c000000-0000-4000-8000-000000000002", "security_group_id": GROUP, "direction": "ingress",
              "ethertype": "IPv4", "remote_group_id": GROUP}]
    for i in range(8 + extra_rules):
        rules.append({"id": f"9d000000-0000-4000-8000-{i:012d}", "security_group_id": GROUP, "direction": "ingress",
                      "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 1000 + i, "port_range_max": 1000 + i,
                      "remote_ip_prefix": f"203.0.113.{i % 250}/32"})
    ports = {}
    for i in range(nports + members_extra):
        pid = f"{i:08x}-9e00-4000-8000-000000000000"
        ports[pid] = {"id": pid, "network_id": NET, "binding:host_id": "h1" if i < nports else "h2",
                      "mac_address": f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                      "fixed_ips": [{"ip_address": f"100.{64 + (i >> 16)}.{i >> 8 & 255}.{i & 255}"},
                                    *([{"ip_address": f"2001:db8::{i + 1:x}"}] if dual_stack else [])],
                      "security_groups": [GROUP], "port_security_enabled": True, "device_owner": "compute:nova"}
    return {"networks": {NET: net}, "ports": ports, "security_groups": {GROUP: {"id": GROUP, "stateful": True}},
            "security_group_rules": {r["id"]: r for r in rules}}


def _apply_times(nports: int, rounds: int) -> dict[str, Any]:
    import_repo()
    from vxnet.compute.firewall import compute_firewall
    from vxnet.dataplane.nft_driver import NftDriver

    sh(["ip", "netns", "del", APPLY_NS], check=False)
    sh(["ip", "netns", "add", APPLY_NS])
    out: dict[str, Any] = {}
    applied: dict[tuple[str, str], Any] = {}      # what the agent's firewall Manager would hold

    def load(drv: NftDriver, tables: Any, force_full: bool = False) -> Any:
        r = drv.apply([(t, applied.get((t.family, t.name))) for t in tables], force_full=force_full)
        applied.update({(t.family, t.name): t for t in tables})
        return r

    try:
        d = NftDriver(APPLY_NS)
        base, changed = _view(nports), _view(nports, extra_rules=1)
        t0 = time.perf_counter()
        fw_base = compute_firewall(base, "h1")
        tables = fw_base.tables
        out["compute_ms"] = (time.perf_counter() - t0) * 1e3
        fw_changed = compute_firewall(changed, "h1")
        out["rules"] = sum(len(c.rules) for t in tables for c in t.chains)
        out["first"] = load(d, tables).seconds * 1e3
        inc, full = [], []
        for rnd in range(rounds):
            for mode in (("inc", "full") if rnd % 2 == 0 else ("full", "inc")):
                r = load(d, fw_changed.tables, force_full=(mode == "full"))
                (inc if mode == "inc" else full).append((r.seconds * 1e3, r.mode, r.commands))
                load(d, fw_base.tables, force_full=True)          # same starting point for the next one
        out["incremental"], out["full"] = inc, full
        load(d, fw_base.tables, force_full=True)
        members = compute_firewall(_view(nports, members_extra=1), "h1")
        r = load(d, members.tables)
        out["member"] = (r.seconds * 1e3, r.mode, r.commands)
        more = compute_firewall(_view(nports + 1), "h1")
        r = load(d, more.tables)
        out["port"] = (r.seconds * 1e3, r.mode, r.commands)
        applied.clear()                                  # the agent's periodic drift check
        r = load(d, more.tables)
        out["resync"] = (r.seconds * 1e3, r.mode, r.commands)
        d.close()
        fresh = NftDriver(APPLY_NS)                      # a restarted agent: no memory at all
        applied.clear()
        r = load(fresh, more.tables)
        out["adopt"] = (r.seconds * 1e3, r.mode, r.commands)
        fresh.close()
    finally:
        sh(["ip", "netns", "del", APPLY_NS], check=False)
    return out


def measure(rounds: int, seconds: float, nports: int, apply_rounds: int) -> dict[str, Any]:
    """Both parts, inside the sandbox."""
    import_repo()
    return {"throughput": _throughput(rounds, seconds), "apply": _apply_times(nports, apply_rounds)}


# --- report -------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fw-rounds", type=int, default=5, help="alternating iperf3 rounds (5)")
    p.add_argument("--fw-seconds", type=float, default=3.0, help="iperf3 seconds per path and round (3)")
    p.add_argument("--fw-ports", type=int, default=1000, help="local ports for the apply-time part (1000)")


def run(opts: argparse.Namespace) -> Report:
    cols = ["measure", "figure", "details"]
    if os.geteuid() != 0:
        return Report(NAME, cols, [["all", "not run", "needs root (namespaces)"]])
    rounds = 1 if opts.quick else max(1, opts.fw_rounds)
    seconds = 1.0 if opts.quick else opts.fw_seconds
    nports = 100 if opts.quick else opts.fw_ports
    apply_rounds = 2 if opts.quick else 6
    load0 = os.getloadavg()
    try:
        res: dict[str, Any] = in_sandbox(  # type: ignore[assignment]
            f"__import__('bench.firewall_bench', fromlist=['_']).measure({rounds}, {seconds}, {nports}, {apply_rounds})",
            900 + rounds * 3 * (seconds + 10))
    except Exception as e:  # noqa: BLE001 - the table says what broke
        return Report(NAME, cols, [["all", "failed", f"{type(e).__name__}: {e}"[:600]]])
    rows: list[list[str]] = []
    tp = res["throughput"]
    series: dict[str, list[float]] = {}
    for rnd in tp["rounds"]:
        for k, v in rnd.items():
            if k != "load1" and "gbps" in v:
                series.setdefault(k, []).append(v["gbps"])
    for k, xs in series.items():
        rows.append([f"iperf3 VM->VM across hosts, {k}", f"{statistics.median(xs):.2f} Gbit/s",
                     "rounds: " + ", ".join(f"{x:.2f}" for x in xs)])
    ratios = [r["vxnet"]["gbps"] / r["hand-built"]["gbps"] for r in tp["rounds"]
              if "gbps" in r.get("vxnet", {}) and "gbps" in r.get("hand-built", {}) and r["hand-built"]["gbps"] > 0]
    cost = [r["hand-built"]["gbps"] / r["hand-built, no tables"]["gbps"] for r in tp["rounds"]
            if "gbps" in r.get("hand-built", {}) and "gbps" in r.get("hand-built, no tables", {})]
    errors = [f"{k}: {v['error']}" for r in tp["rounds"] for k, v in r.items() if k != "load1" and "error" in v]
    if ratios:
        rows.append(["ratio vxnet / hand-built (per round, median)", f"{statistics.median(ratios):.2f}",
                     "rounds: " + ", ".join(f"{x:.2f}" for x in ratios)])
    if cost:
        rows.append(["ratio hand-built with tables / without (per round, median)", f"{statistics.median(cost):.2f}",
                     "what anti-spoofing + conntrack + SG cost on this path"])
    same = tp.get("same_lab") or []
    sr = [r["vxnet"]["gbps"] / r["recipe"]["gbps"] for r in same
          if "gbps" in r.get("vxnet", {}) and "gbps" in r.get("recipe", {}) and r["recipe"]["gbps"] > 0]
    for k in ("vxnet", "recipe"):
        xs = [r[k]["gbps"] for r in same if "gbps" in r.get(k, {})]
        if xs:
            rows.append([f"same lab, same VMs: {'vxnet tables' if k == 'vxnet' else 'hand-written recipe swapped in'}",
                         f"{statistics.median(xs):.2f} Gbit/s", "rounds: " + ", ".join(f"{x:.2f}" for x in xs)])
    if sr:
        rows.append(["ratio vxnet tables / recipe, same lab (per round, median)", f"{statistics.median(sr):.2f}",
                     "rounds: " + ", ".join(f"{x:.2f}" for x in sr)])
    errors += [f"same lab {k}: {v['error']}" for r in same for k, v in r.items() if k != "load1" and "error" in v]
    ap = res["apply"]
    rows.append([f"compute (pure) + render, {nports} ports", f"{ap['compute_ms']:.0f} ms",
                 f"{ap['rules']} rules in the two tables"])
    rows.append(["first load (full, empty kernel)", f"{ap['first']:.0f} ms", "one transaction"])
    for key, label in (("incremental", "rule added to the group of all ports: incremental (the rule alone)"),
                       ("full", "the same change by full table replacement")):
        xs = [x[0] for x in ap[key]]
        rows.append([label, f"{statistics.median(xs):.0f} ms",
                     f"median of {len(xs)} (alternating); {ap[key][0][2]} commands; all: "
                     + ", ".join(f"{x:.0f}" for x in xs)])
    for key, label in (("member", "remote-group member added (set element)"),
                       ("port", "one more port (dispatch maps + its chains)"),
                       ("resync", "periodic drift check (ruleset generation unchanged)"),
                       ("adopt", "restarted agent: kernel read back, nothing reloaded")):
        ms, mode, cmds = ap[key]
        rows.append([label, f"{ms:.0f} ms", f"mode {mode}, {cmds} commands"])
    goals = ["Goal: vxnet / hand-built throughput ratio >= 0.95"
             + (f": separate labs {statistics.median(ratios):.2f} ({'met' if statistics.median(ratios) >= 0.95 else 'NOT met'})"
                if ratios else ": separate labs not measured")
             + (f"; same lab, rulesets swapped {statistics.median(sr):.2f} "
                f"({'met' if statistics.median(sr) >= 0.95 else 'NOT met'})." if sr else ".")]
    notes = [(f"{rounds} alternating rounds of single-stream iperf3 -t {seconds:g} per path (order reversed every other "
             "round); 'no tables' = the hand-built lab's hosts with `nft flush ruleset` for that measurement (no "
             "conntrack either), re-applied right after."),
             ("Apply-time rows: `NftDriver(netns).apply` in a namespace of the sandbox (libnftables in-process, in "
             "the driver's worker thread inside that namespace: the agent's own path), timed from the call to its "
             "return; each incremental/full sample starts from the same loaded state; a restarted agent lists both "
             "tables tersely (libnftables) and compares every rule's comment hash."),
             *tp["notes"], *errors,
             "Load average (1/5/15 min) at start: " + " / ".join(f"{x:.1f}" for x in load0) + "; at the end: "
             + " / ".join(f"{x:.1f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs shared with other "
             "sessions: absolute figures move with it, per-round ratios much less."]
    return Report(NAME, cols, rows, notes=notes, goals=goals)


if __name__ == "__main__":
    from bench.__main__ import main

    sys.exit(main(["--only", "firewall_bench", *sys.argv[1:]]))
