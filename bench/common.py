"""Pieces the data-plane benchmarks share: a `vxnet lab` on a fresh store, lab VMs on new ports
waited ACTIVE, waiting for a first ping, alternating rounds over rows (one iperf3 + ping
measurement per row and round; `measure_rows` runs them for VM-to-VM rows after the first
pings), a row's table cells and per-round cells (`rows_table`, `rows_per_round`), and per-round
ratios of two rows measured in the same run.

Contract: `lab()` always runs `lab down` (its namespaces and processes, by PID) when it exits;
the benches call these helpers inside their own sandbox (bench.port_up_bench.in_sandbox);
VXNET_LAB_DIR is restored afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from bench.kernel_lab import iperf3_run, nsx, ping_run
from bench.report import percentile
from bench.servers import import_repo


@contextlib.contextmanager
def lab(workdir: str, gateway: bool = False) -> Iterator[Any]:
    """`vxnet lab up --hosts 3` (+ one gateway host and an outside client with `gateway`) on a
    fresh store in `workdir`; always `lab down` afterwards. Yields a tests.root.conftest.Lab."""
    import_repo()
    from tests.distributed.conftest import lab_dir
    from tests.root.conftest import Lab
    from vxnet.lab import lab as vxlab

    cfg = lab_config(workdir)
    with lab_dir(os.path.join(workdir, "state")):
        try:
            st = vxlab.up(3, cfg, gateways=1, external=True) if gateway else vxlab.up(3, cfg)
            yield Lab(st)
        finally:
            vxlab.down()


def lab_config(workdir: str, server_extra: str = "") -> str:
    """Write `workdir`/lab.toml: the root tests' users and quotas, a fresh store in `workdir` on a
    free port, and the `server_extra` lines (e.g. "agent_down_time = 8") in its [server] table;
    returns its path."""
    import_repo()
    from tests.conftest import free_port
    from tests.root.conftest import USERS_TOML

    toml = USERS_TOML.format(port=free_port(), db=os.path.join(workdir, "vxnet.db"))
    if server_extra:
        toml = toml.replace("underlay_mtu = 1500", "underlay_mtu = 1500\n" + server_extra)
    cfg = os.path.join(workdir, "lab.toml")
    with open(cfg, "w") as f:
        f.write(toml)
    return cfg


def iperf_gbps(ns: str, ip: str, seconds: int) -> float | None:
    """Gbit/s received by a single-stream `iperf3 -c ip -t seconds` from namespace `ns` (None if it failed)."""
    r = subprocess.run(["ip", "netns", "exec", ns, "iperf3", "-c", ip, "-t", str(seconds), "-J"], capture_output=True,
                       text=True, timeout=seconds + 30, check=False)
    try:
        return float(json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9
    except (ValueError, KeyError):
        return None



def kill_all(procs: Iterable[subprocess.Popen[Any]]) -> None:
    """Kill the processes a bench started (by their Popen, so by PID) and reap them."""
    for p in procs:
        p.kill()
        p.wait()


def vms_active(lab3: Any, vms: Iterable[tuple[str, str, str, str]], project: str = "alice",
               timeout: float = 30) -> dict[str, dict[str, Any]]:
    """For each (VM name, host, network id, IP): a port through the API and a lab VM on it;
    returns the ports by VM name once every one is ACTIVE (a tests.root.conftest.Lab `lab3`)."""
    ports = {}
    for name, host, network_id, ip in vms:
        ports[name] = lab3.port(project, network_id, ip)
        lab3.vm(name, host, ports[name])
    for p in ports.values():
        lab3.wait_status(p["id"], "ACTIVE", timeout=timeout)
    return ports


def wait_ping(ns: str, ip: str, timeout: float) -> bool:
    """Whether `ip` answers a ping from namespace `ns` within `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if nsx(ns, "ping", "-n", "-q", "-c", "1", "-W", "1", ip, check=False).returncode == 0:
            return True
    return False


def paired_ratio(a: dict[str, Any], b: dict[str, Any], what: str) -> float | None:
    """Median over rounds of row a's figure / row b's figure in the same round; `what` is
    "gbps" (iperf3 throughput) or "p50" (ping latency). None when no round has both."""
    ratios = []
    for ra, rb in zip(a["rounds"], b["rounds"], strict=False):
        if what == "gbps":
            if "gbps" in ra["iperf"] and "gbps" in rb["iperf"] and rb["iperf"]["gbps"] > 0:
                ratios.append(ra["iperf"]["gbps"] / rb["iperf"]["gbps"])
        elif ra["ping"]["rtts"] and rb["ping"]["rtts"]:
            ratios.append(percentile(ra["ping"]["rtts"], 50) / percentile(rb["ping"]["rtts"], 50))
    return statistics.median(ratios) if ratios else None


def alternating(rounds: int, nrows: int) -> Iterator[int]:
    """Row indexes for `rounds` rounds over `nrows` rows, the order reversed every other round
    (so load from others falls on every row)."""
    for rnd in range(rounds):
        yield from (range(nrows) if rnd % 2 == 0 else reversed(range(nrows)))


def measure_row(src_ns: str, dst_ns: str, dst_ip: str, seconds: float, count: int,
                bind_ip: str | None = None) -> dict[str, Any]:
    """One row in one round: the 1-min load before it, a single-stream iperf3 for `seconds`,
    then `count` pings 10 ms apart (bench.kernel_lab.iperf3_run / ping_run)."""
    res: dict[str, Any] = {"load1": os.getloadavg()[0]}
    res["iperf"] = iperf3_run(src_ns, dst_ns, dst_ip, seconds, bind_ip)
    res["ping"] = ping_run(src_ns, dst_ip, count, 0.01)
    return res


def row_cells(rounds: Sequence[dict[str, Any]]) -> list[str]:
    """A row's table cells over its rounds (`measure_row` results): iperf3 Gbit/s
    "median; min-max" (or why every round failed), ping avg, p50 and p99 ms (pooled), lost."""
    gb = [r["iperf"]["gbps"] for r in rounds if "gbps" in r["iperf"]]
    errs = [r["iperf"]["error"] for r in rounds if "error" in r["iperf"]]
    rtts = [x for r in rounds for x in r["ping"]["rtts"]]
    return [f"{statistics.median(gb):.2f}; {min(gb):.2f}-{max(gb):.2f}" if gb else "failed: " + "; ".join(errs)[:200],
            f"{statistics.mean(rtts):.3f}" if rtts else "", f"{percentile(rtts, 50):.3f}" if rtts else "",
            f"{percentile(rtts, 99):.3f}" if rtts else "", str(sum(r["ping"]["lost"] for r in rounds))]


def round_cells(rounds: Sequence[dict[str, Any]]) -> list[str]:
    """Per round: "Gbit/s / ping p50 ms / 1-min load before the row" ("fail" / "-" when missing)."""
    cells = []
    for r in rounds:
        g = f"{r['iperf']['gbps']:.2f}" if "gbps" in r["iperf"] else "fail"
        p = f"{percentile(r['ping']['rtts'], 50):.3f}" if r["ping"]["rtts"] else "-"
        cells.append(f"{g} / {p} / {r['load1']:.1f}")
    return cells


def per_round_table(columns: tuple[str, str], rows: Sequence[tuple[str, str, Sequence[dict[str, Any]]]],
                    rounds: int) -> str:
    """Markdown: one line per (label, path, rounds), the rounds as `round_cells`; `columns` names
    the first two columns."""
    out = "Per round (Gbit/s | ping p50 ms | 1-min load before the row):\n\n"
    out += f"| {columns[0]} | {columns[1]} | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + " |\n"
    out += "|---|---|" + "---|" * rounds + "\n"
    for label, path, rs in rows:
        out += f"| {label} | {path} | " + " | ".join(round_cells(rs)) + " |\n"
    return out


def load_note(load0: Sequence[float], rows: Sequence[Sequence[dict[str, Any]]]) -> str:
    """Load averages at the start and the end, and the range of the 1-min load before each row."""
    loads = [r["load1"] for rs in rows for r in rs]
    return ("Load average (1/5/15 min) at the start: " + " / ".join(f"{x:.1f}" for x in load0) + "; at the end: "
            + " / ".join(f"{x:.1f}" for x in os.getloadavg())
            + (f"; 1-min load before each row: {min(loads):.1f}-{max(loads):.1f}" if loads else "")
            + f" on {os.cpu_count()} CPUs shared with other sessions: absolute figures move with it, the "
            "per-round ratios much less.")


Row = tuple[str, str, str, str, str]     # (kind, between, source VM, destination VM, destination IP)


def measure_rows(out: dict[str, Any], rows: Sequence[Row], t0: float, rounds: int, seconds: float,
                 count: int) -> None:
    """The measuring part of a VM-to-VM bench once its VMs are up (`t0`: when its setup began):
    each row first waits (30 s) for a first ping answer, else its `error` says so; then
    `out["setup_s"]` is the setup time; then `rounds` alternating rounds of `measure_row` fill
    each answering row's `rounds` (`out["rows"][i]` belongs to `rows[i]`)."""
    from vxnet.lab import topology

    for i, (_, _, src, dst, ip) in enumerate(rows):
        if not wait_ping(topology.vm_ns(src), ip, 30):
            out["rows"][i]["error"] = f"{src} -> {dst} ({ip}) never answered within 30 s"
    out["setup_s"] = time.time() - t0
    for i in alternating(rounds, len(rows)):
        row = out["rows"][i]
        if not row["error"]:
            _, _, src, dst, ip = rows[i]
            row["rounds"].append(measure_row(topology.vm_ns(src), topology.vm_ns(dst), ip, seconds, count))


def rows_table(rows: Sequence[Row], results: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Table lines for `measure_rows` results: kind, between, then `row_cells` (or why the row
    was not measured, the other cells empty)."""
    table: list[list[str]] = []
    for (kind, between, *_), row in zip(rows, results, strict=True):
        if row["error"]:
            table.append([kind, between, "not measured: " + row["error"], "", "", "", ""])
        else:
            table.append([kind, between, *row_cells(row["rounds"])])
    return table


def rows_per_round(columns: tuple[str, str], rows: Sequence[Row], results: Sequence[dict[str, Any]],
                   rounds: int) -> str:
    """`per_round_table` of `measure_rows` results."""
    return per_round_table(columns, [(kind, between, row["rounds"])
                                     for (kind, between, *_), row in zip(rows, results, strict=True)], rounds)


def sandboxed_measure(sandbox: Callable[[str, float], Any], module: str, nrows: int, rounds: int, seconds: float,
                      count: int) -> dict[str, Any]:
    """`module.measure(rounds, seconds, count)` run by `sandbox` (bench.port_up_bench.in_sandbox),
    with a timeout for `nrows` rows of `measure_rows` (raises what `sandbox` raises)."""
    return sandbox(f"__import__('{module}', fromlist=['_']).measure({rounds}, {seconds}, {count})",
                   600 + rounds * nrows * (seconds + count * 0.012 + 10))
