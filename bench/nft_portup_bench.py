"""The nftables transaction of a port-up against the number of local ports (issue 18).

In a private network namespace (bench.port_up_bench.in_sandbox, no lab): the firewall tables of
N local ports in one group (bench/firewall_bench.py's synthetic view) are loaded, then ports come
up one by one; each port-up's commands are `nft_driver.diff_table` of the tables before and
after, run as one transaction through the agent's executor (`dataplane/nft_exec.py`,
libnftables in-process). Two forms of the same commands alternate, port by port:
- "cache-free": what the driver sends (a new chain's rules in one `add chain NAME { ... }`, new
  elements in `add set NAME { ...; elements = { ... }; }`): libnftables needs only the table
  list before the transaction;
- "classic": the same changes as `add rule` / `add element` commands (what the driver sent
  before): libnftables 1.0.6 dumps every chain and set of the ruleset before the transaction.
Timed: the transaction alone (`NftExecutor.run`), p50 and min over the rounds, at each N.

`--nft-compare sets`: instead, the driver's commands ("plain": a port of one MAC and one IPv4
address has its port-security checks as plain comparisons, compute/firewall.py `_ps_chain`)
against the same commands with those checks as anonymous sets, as they were rendered before
("sets": `anonymous_sets`, the tables loaded in that form too); the forms alternate by block
(plain, sets, plain, sets: the ruleset flushed and the N ports loaded again before each block).
`--nft-compare compute`: no kernel, no root: the pure part of the same port-ups on the agent's
path (a typed view of N local ports in one group and 2N ports of other hosts in view; each
port-up a new port created unbound, then bound to the host, as the lab does): the firewall's
compute in `HostComputer.compute_plug` (its `compute_firewall` timing), the rendering
(`Firewall.tables`) and `diff_table` of the three tables, and the overlay's L2 compute in
`compute_plug` (its `compute_l2` timing: the port's network, all N + 2N ports on it), p50 and
min per N. It uses only APIs
older trees have too, so `PYTHONPATH=<other tree>/src` measures that tree's code.
`--nft-compare sched`: where a port-up's transaction waits. Each port-up's commands (as the
driver's) after 10 ms idle: first as a dry run (libnftables' parse and evaluation, the batch,
the kernel's checks and validation, then its abort), then committed: the thread's CPU, its wait
on a run queue (`/proc/thread-self/schedstat`) and its involuntary context switches; then a
pure Python loop of the same CPU time (no system call) as the control for what the machine's
load alone costs. Run under `nice -n N` to see what a priority changes.
`--nft-v6`: every port dual-stack (an IPv6 fixed IP besides its IPv4 one: IPv6 pairs, its
link-local too), in every form.
`--nft-compare netlink`: each port-up's change the two ways the driver can send it, alternating
port by port through an executor keeping the ledger (as the agent's): as text through libnftables
(`diff_table`, the transaction) and as one netlink batch of its elements (`nft_netlink`
`element_batch`, `run_batch`); the thread's CPU of each part, the wall time of both, and for the
text its dry run (libnftables' parse, evaluation and cache, the kernel's checks) and the two
generation reads that bracket any transaction.
Contract: only its own sandbox namespace; figures never invented.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.port_up_bench import in_sandbox
from bench.report import Report
from bench.servers import import_repo

NAME = "nftables: a port-up's transaction against the local ports (cache-free vs classic commands)"
_FILL = re.compile(r"^add chain (\S+ \S+ \S+) \{ (.*) \}$")
_ELEMS = re.compile(r"^add (?:set|map) (\S+ \S+ \S+) \{ .*elements = (\{ .* \}); \}$")


def classic(lines: list[str]) -> list[str]:
    """The same commands with rules as `add rule` and elements as `add element`."""
    out: list[str] = []
    for line in lines:
        if (m := _ELEMS.match(line)) is not None:
            out.append(f"add element {m.group(1)} {m.group(2)}")
        elif (m := _FILL.match(line)) is not None and not m.group(2).startswith("type "):
            out += [f"add rule {m.group(1)} {r.strip()}" for r in m.group(2).split(";") if r.strip()]
        else:
            out.append(line)
    return out


_MARK = re.compile(r"ether saddr ([0-9a-f:]{17}) ip saddr (\S+) counter")
_MAC = re.compile(r"ether saddr != ([0-9a-f:]{17}) counter")
_ARP = re.compile(r"arp saddr ether != ([0-9a-f:]{17}) counter drop (comment \"[^\"]*\"); "
                  r"arp saddr ip != (\S+) arp saddr ip != 0\.0\.0\.0 counter drop comment \"[^\"]*\"")
_ARP_LINES = re.compile(r"(add rule \S+ \S+ \S+ )arp saddr ether != ([0-9a-f:]{17}) counter drop (comment \"[^\"]*\")\n"
                        r"add rule \S+ \S+ \S+ arp saddr ip != (\S+) arp saddr ip != 0\.0\.0\.0 counter drop comment \"[^\"]*\"")


def anonymous_sets(text: str) -> str:
    """The same commands with a one-MAC, one-address port's checks as anonymous sets (the
    rendering before `_ps_chain` wrote them as plain comparisons)."""
    text = _MARK.sub(r"ether saddr . ip saddr { \1 . \2 } counter", text)
    text = _MAC.sub(r"ether saddr != { \1 } counter", text)
    text = _ARP_LINES.sub(r"\1arp saddr ether . arp saddr ip != { \2 . \4, \2 . 0.0.0.0 } counter drop \3", text)
    return _ARP.sub(r"arp saddr ether . arp saddr ip != { \1 . \3, \1 . 0.0.0.0 } counter drop \2", text)


def _fw(n: int, v6: bool) -> Any:
    """The firewall of bench/firewall_bench.py's view of `n` local ports (dual-stack with `v6`)."""
    from bench.firewall_bench import _view
    from vxnet.compute.firewall import compute_firewall

    return compute_firewall(_view(n, dual_stack=v6), "h1")


def measure_sets(sizes: list[int], rounds: int, v6: bool = False) -> dict[str, Any]:
    """Inside the sandbox: per size, the port-up transaction times of the plain and the
    anonymous-set forms (ms), alternating by block."""
    import_repo()
    from vxnet.compute.nft_table import table_text
    from vxnet.dataplane.nft_exec import NftExecutor

    out: dict[str, Any] = {}
    for n in sizes:
        ex = NftExecutor()
        times: dict[str, list[float]] = {"plain": [], "sets": []}
        sets_seen = 0
        for block in range(4):
            form = ("plain", "sets")[block % 2]
            shape = anonymous_sets if form == "sets" else (lambda x: x)
            fw = _fw(n, v6)
            if ex.run("flush ruleset\n" + shape("".join(table_text(t) for t in fw.tables))) is not None:
                raise RuntimeError(f"loading {n} ports ({form})")
            for k in range(max(1, rounds // 2)):
                fw, _, text = _port_up(ex, fw, n + 1 + k, form, lambda ls, sh=shape: sh("\n".join(ls) + "\n"), times, v6)
                sets_seen = max(sets_seen, text.count("{ 02:")) if form == "sets" else sets_seen
        ex.close()
        out[str(n)] = _result(times, sets_seen, fw)
    return out


def _port_up(ex: Any, fw: Any, n: int, form: str, text_of: Callable[[list[str]], str],
             times: dict[str, list[float]], v6: bool = False) -> tuple[Any, list[str], str]:
    """The tables of `n` local ports after `fw`'s, loaded by one timed transaction (into
    `times[form]`) of the commands `diff_table` gives, as `text_of` writes them."""
    from vxnet.dataplane.nft_driver import diff_table

    new = _fw(n, v6)
    lines = [c for t, o in zip(new.tables, fw.tables, strict=True) for c in diff_table(o, t)]
    text = text_of(lines)
    t0 = time.perf_counter()
    err = ex.run(text)
    times[form].append((time.perf_counter() - t0) * 1e3)
    if err is not None:
        raise RuntimeError(f"{form} port-up at {n} ports: {err}")
    return new, lines, text


def _result(times: dict[str, list[float]], commands: int, fw: Any) -> dict[str, Any]:
    return {"times": times, "commands": commands, "objects": sum(len(t.chains) + len(t.sets) for t in fw.tables)}


def measure_compute(sizes: list[int], rounds: int, v6: bool = False) -> dict[str, Any]:
    """Per size, the pure part of a port-up (ms): firewall compute, render, diff."""
    import_repo()
    from bench.firewall_bench import _view
    from vxnet.compute.host import HostComputer, HostSpec
    from vxnet.compute.view import ViewState, apply_message
    from vxnet.dataplane.nft_driver import diff_table

    out: dict[str, Any] = {}
    for n in sizes:
        raw = _view(n, members_extra=2 * n, dual_stack=v6)
        state = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": raw})
        hc = HostComputer(HostSpec("h1", "192.0.2.1"))
        fw = hc.compute(state.view).firewall
        template = next(iter(raw["ports"].values()))
        times: dict[str, list[float]] = {"compute": [], "render": [], "diff": [], "l2": []}
        rev = 2
        for k in range(rounds):
            pid = f"{10**6 + k:08x}-9e00-4000-8000-000000000000"
            p = dict(template, id=pid, mac_address=f"02:01:00:00:{k >> 8:02x}:{k & 255:02x}",
                     fixed_ips=[{"ip_address": f"100.100.{k >> 8}.{k & 255}"},
                                *([{"ip_address": f"2001:db8:100::{k + 1:x}"}] if v6 else [])], **{"binding:host_id": ""})
            for host in ("", "h1"):         # created unbound, then bound here
                state = apply_message(state, {"type": "update", "revision": rev,
                                              "put": {"ports": {pid: dict(p, **{"binding:host_id": host})}}})
                rev += 1
                v = state.view              # one View object per pass, as the agent's
                plug = hc.compute_plug(v)
                fw_ms = hc.timings.get("compute_firewall", 0.0) * 1e3
                l2_ms = hc.timings.get("compute_l2", 0.0) * 1e3
                t0 = time.perf_counter()
                tables = plug.firewall.tables
                t1 = time.perf_counter()
                for t, o in zip(tables, fw.tables, strict=True):
                    diff_table(o, t)
                t2 = time.perf_counter()
                hc.compute(v)
                fw = plug.firewall
            times["compute"].append(fw_ms)
            times["render"].append((t1 - t0) * 1e3)
            times["diff"].append((t2 - t1) * 1e3)
            times["l2"].append(l2_ms)
        out[str(n)] = {"times": times, "commands": 0, "objects": sum(len(t.chains) + len(t.sets) for t in fw.tables)}
    return out


def _switches() -> int:
    """The calling thread's involuntary context switches so far (it was preempted)."""
    with open("/proc/thread-self/status") as f:
        return next(int(line.split(":")[1]) for line in f if line.startswith("nonvoluntary_ctxt_switches"))


def measure_sched(sizes: list[int], rounds: int, v6: bool = False) -> dict[str, Any]:
    """Inside the sandbox: per size, each port-up's transaction (after 10 ms idle, as a pass
    after a wait) as the dry run first (`nft_ctx_set_dry_run`: libnftables' work and the
    kernel's checks, then the kernel aborts it) and then committed: its thread CPU, its wait
    on a run queue (schedstat) and how often it was preempted; then, as the control, a pure
    Python loop of the same CPU time (no system call, no lock): its wait and preemptions."""
    import ctypes

    import_repo()
    from vxnet.agent.core import run_delay
    from vxnet.compute.nft_table import table_text
    from vxnet.dataplane.nft_driver import diff_table
    from vxnet.dataplane.nft_exec import NftExecutor

    out: dict[str, Any] = {}
    for n in sizes:
        ex = NftExecutor()
        lib, ctx = ex._lib._lib, ex._lib._ctx  # type: ignore[union-attr]
        lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        fw = _fw(n, v6)
        if ex.run("flush ruleset\n" + "".join(table_text(t) for t in fw.tables)) is not None:
            raise RuntimeError(f"loading {n} ports")
        times: dict[str, list[float]] = {k: [] for k in (
            "dry run: CPU", "transaction: CPU", "transaction: run-queue wait", "transaction: preempted (times)",
            "same-CPU Python loop: run-queue wait", "same-CPU Python loop: preempted (times)")}
        commands = 0
        for k in range(rounds):
            new = _fw(n + 1 + k, v6)
            lines = [c for t, o in zip(new.tables, fw.tables, strict=True) for c in diff_table(o, t)]
            text, commands = "\n".join(lines) + "\n", len(lines)
            lib.nft_ctx_set_dry_run(ctx, True)
            c0 = time.thread_time()
            err = ex.run(text)
            times["dry run: CPU"].append((time.thread_time() - c0) * 1e3)
            lib.nft_ctx_set_dry_run(ctx, False)
            time.sleep(0.01)
            c0, r0, s0 = time.thread_time(), run_delay(), _switches()
            err = err or ex.run(text)
            c1, r1, s1 = time.thread_time(), run_delay(), _switches()
            if err is not None:
                raise RuntimeError(f"port-up at {n} ports: {err}")
            times["transaction: CPU"].append((c1 - c0) * 1e3)
            times["transaction: run-queue wait"].append((r1 - r0) * 1e3)
            times["transaction: preempted (times)"].append(float(s1 - s0))
            time.sleep(0.01)
            spend, c0, r0, s0 = c1 - c0, time.thread_time(), run_delay(), _switches()
            while time.thread_time() - c0 < spend:
                pass
            times["same-CPU Python loop: run-queue wait"].append((run_delay() - r0) * 1e3)
            times["same-CPU Python loop: preempted (times)"].append(float(_switches() - s0))
            fw = new
        ex.close()
        out[str(n)] = _result(times, commands, fw)
    return out


def measure_netlink(sizes: list[int], rounds: int, v6: bool = False) -> dict[str, Any]:
    """Inside the sandbox: per size, each port-up's change applied the two ways the driver can,
    alternating port by port, through an executor keeping the ledger (as the agent's): as text
    through libnftables (`diff_table`, then the transaction) and as one netlink batch of its
    elements (`element_batch`, then `run_batch`); the thread's CPU of each part (ms), and for
    the text the dry run (libnftables' parse, evaluation and cache, the kernel's checks, abort)
    and the two generation reads around a transaction."""
    import ctypes

    import_repo()
    from vxnet.compute.nft_table import table_text
    from vxnet.dataplane.nft_driver import diff_table
    from vxnet.dataplane.nft_exec import NftExecutor
    from vxnet.dataplane.nft_netlink import element_batch

    out: dict[str, Any] = {}
    for n in sizes:
        ex = NftExecutor(ledger=True)
        lib, ctx = ex._lib._lib, ex._lib._ctx  # type: ignore[union-attr]
        lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        fw = _fw(n, v6)
        if ex.run("flush ruleset\n" + "".join(table_text(t) for t in fw.tables)) is not None:
            raise RuntimeError(f"loading {n} ports")
        times: dict[str, list[float]] = {}
        commands = 0
        for k in range(2 * rounds):
            new = _fw(n + 1 + k, v6)
            pairs = list(zip(new.tables, fw.tables, strict=True))
            time.sleep(0.005)
            w0, c0 = time.perf_counter(), time.thread_time()
            if k % 2 == 0:
                form, parts = "libnftables", ("diff_table (Python)", "transaction (with 2 generation reads)",
                                              "diff + transaction")
                text = "\n".join(c for t, o in pairs for c in diff_table(o, t)) + "\n"
                commands = text.count("\n")
                c1 = time.thread_time()
                err = ex.run(text)
            else:
                form, parts = "netlink", ("element_batch (Python)", "batch (with 2 generation reads)",
                                          "element_batch + batch")
                batch = element_batch(pairs)
                if not batch:
                    raise RuntimeError(f"port-up at {n} ports: not an element-only change")
                c1 = time.thread_time()
                err = ex.run_batch(batch)
            c2, w2 = time.thread_time(), time.perf_counter()
            for part, ms in zip((*parts, f"{parts[2]}, wall"), (c1 - c0, c2 - c1, c2 - c0, w2 - w0), strict=True):
                times.setdefault(f"{form}: {part}", []).append(ms * 1e3)
            if err is not None:
                raise RuntimeError(f"port-up at {n} ports: {err}")
            fw = new
            if k % 2 == 0:                     # the next port-up's text as a dry run: libnftables' part
                nxt = _fw(n + 2 + k, v6)
                text = "\n".join(c for t, o in zip(nxt.tables, fw.tables, strict=True) for c in diff_table(o, t)) + "\n"
                lib.nft_ctx_set_dry_run(ctx, True)
                c0 = time.thread_time()
                ex._lib.run(text)  # type: ignore[union-attr]
                times.setdefault("libnftables: dry run (parse, cache, kernel checks)", []).append(
                    (time.thread_time() - c0) * 1e3)
                lib.nft_ctx_set_dry_run(ctx, False)
                c0 = time.thread_time()
                ex.generation()
                ex.generation()
                times.setdefault("generation reads (2)", []).append((time.thread_time() - c0) * 1e3)
        ex.close()
        out[str(n)] = _result(times, commands, fw)
    return out


def measure(sizes: list[int], rounds: int, v6: bool = False) -> dict[str, Any]:
    """Inside the sandbox: per size, the transaction times of both forms (ms)."""
    import_repo()
    from vxnet.compute.nft_table import table_text
    from vxnet.dataplane.nft_exec import NftExecutor

    out: dict[str, Any] = {}
    for n in sizes:
        ex = NftExecutor()
        if ex.run("flush ruleset\n") is not None:
            raise RuntimeError("nft flush ruleset failed")
        fw = _fw(n, v6)
        err = ex.run("".join(table_text(t) for t in fw.tables))
        if err is not None:
            raise RuntimeError(f"loading {n} ports: {err}")
        times: dict[str, list[float]] = {"cache-free": [], "classic": []}
        commands = 0
        for k in range(2 * rounds):
            form = ("cache-free", "classic")[k % 2]
            fw, lines, _ = _port_up(ex, fw, n + 1 + k, form,
                                    lambda ls, f=form: "\n".join(ls if f == "cache-free" else classic(ls)) + "\n", times, v6)
            commands = len(lines)
        ex.close()
        out[str(n)] = _result(times, commands, fw)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nft-sizes", default="10,100,300", help="local ports before the port-ups (10,100,300)")
    p.add_argument("--nft-rounds", type=int, default=15, help="port-ups per form and size (15)")
    p.add_argument("--nft-compare", choices=("classic", "sets", "compute", "sched", "netlink"), default="classic",
                   help="classic: cache-free vs classic commands; sets: plain vs anonymous-set checks; "
                        "compute: the pure part (firewall compute, render, diff), no kernel; sched: each "
                        "transaction's CPU (and its dry run's), run-queue wait and preemptions against a "
                        "pure Python loop of the same CPU; netlink: the port-up as libnftables text vs a "
                        "netlink batch of its elements (the thread's CPU of each part)")
    p.add_argument("--nft-v6", action="store_true", help="dual-stack ports (an IPv6 fixed IP each)")


def run(opts: argparse.Namespace) -> Report:
    cols = ["local ports", "form", "p50 ms", "min ms", "max ms", "port-ups", "notes"]
    compare = getattr(opts, "nft_compare", "classic")
    if os.geteuid() != 0 and compare != "compute":
        return Report(NAME, cols, [["all", "not run", "", "", "", "", "needs root (namespaces)"]])
    sizes = [int(x) for x in str(getattr(opts, "nft_sizes", "10,100,300")).split(",")]
    rounds = 3 if opts.quick else max(1, int(getattr(opts, "nft_rounds", 15)))
    v6 = bool(getattr(opts, "nft_v6", False))
    load0 = os.getloadavg()[0]
    fn = {"sets": "measure_sets", "compute": "measure_compute", "sched": "measure_sched",
          "netlink": "measure_netlink"}.get(compare, "measure")
    try:
        res: dict[str, Any] = (measure_compute(sizes, rounds, v6) if compare == "compute" else in_sandbox(  # type: ignore[assignment]
            f"__import__('bench.nft_portup_bench', fromlist=['_']).{fn}({sizes!r}, {rounds}, {v6!r})", 600))
    except Exception as e:  # noqa: BLE001 - the table says what broke
        return Report(NAME, cols, [["all", "failed", "", "", "", "", f"{type(e).__name__}: {e}"[:600]]])
    rows: list[list[str]] = []
    for n, r in res.items():
        for form, xs in r["times"].items():
            unit = " (count, not ms)" if form.endswith("(times)") else ""
            what = (f"{r['commands']} anonymous sets in a port-up (sets form)" if fn == "measure_sets"
                     else "pure, no kernel" if fn == "measure_compute" else f"{r['commands']} commands (cache-free form)")
            rows.append([n, form, f"{statistics.median(xs):.2f}", f"{min(xs):.2f}", f"{max(xs):.2f}", str(len(xs)),
                         f"{what}; {r['objects']} chains+sets in the tables{unit}"])
    notes = [f"load average (1 min) {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
             *(["dual-stack ports (--nft-v6)"] if v6 else []),
             "the pure part of each port-up (in-process)" if fn == "measure_compute" else
             "each port-up: its dry run, its transaction, the same-CPU loop, in turn; nice "
             f"{os.getpriority(os.PRIO_PROCESS, 0)}" if fn == "measure_sched" else
             "the thread's CPU (time.thread_time) unless 'wall'; forms alternate port-up by port-up; "
             "executor with the ledger (as the agent's)" if fn == "measure_netlink" else
             "each port-up's transaction alone (libnftables in-process, the agent's executor); forms alternate"]
    return Report(NAME, cols, rows, notes=notes)
