"""Simulated agents for the control-plane scale benchmark (bench/scale_bench.py): many hosts'
agents in a few worker processes, each running the real agent's pure side on a real server's
view stream, with a data-plane driver that only records what it would apply.

The same as the real agent (`vxnet.agent.core.Agent.on_message` / `run_once`):
- the view: `ViewState` + `apply_message` (compute/view.py) for every stream message;
- a pass: `HostComputer(HostSpec(host, underlay_ip)).compute(view.view)` (compute/host.py:
  the L2 state with every feature's L2 part merged in, exactly what `run_once` reconciles);
- the diff against what the previous pass applied: `diff_host(desired, recorded)` (the keyed
  diff of compute/diff.py that the reconciler's drivers apply), then `apply_host` updates the
  record, as the reconciler updates its cache of applied entries;
- scheduling of passes: a non-ping message wakes the agent, the pass runs `coalesce` seconds
  later over the current view (one pass per burst, level-triggered), as the reconcile loop;
- the wire: the same endpoint (`GET /v2.0/vxnet/hosts/{host}/view`), the same NDJSON messages,
  one HTTP connection per agent.
Not the same (and why):
- the stream reader is the raw asyncio HTTP/1.1 chunked reader of bench/fanout_bench.py (`read_view`),
  not `ServerClient.stream` (httpx, one blocking thread per agent: 1,000 threads and clients in
  a few processes would measure the GIL, not the control plane). It hands the same decoded
  messages, in the same order, to the same `apply_message`. No reconnect/`since`/failover (no
  stream breaks during a run; a broken stream is reported as an error).
- the data plane: `RecordingDriver` counts, per kind, the creates/updates/deletes a pass would
  apply; every tap counts as present (the hypervisor's part). No netlink, no kernel read, no
  drift-repair resync, no features' `apply`; no heartbeats or status reports (the bench
  server's `agent_down_time` is long, so liveness never changes a view during the run).
- the CPU: the agents of one worker share its event loop (one thread), so a pass may wait for
  other agents' passes of that process, and all workers share the machine with the server.
  The agent side of the latencies is therefore an upper bound for agents with a host each.
  One artefact is removed: the garbage collector of a process holding ~250 views would scan all
  of them in every full collection (seconds, measured: `GcPauses`), where a real agent scans its
  own view only; so once an agent's snapshot is computed, everything allocated so far is moved to
  the permanent generation (`gc.freeze()`), and later collections scan only what came after.
  Full collections and their longest pause are still measured and reported.

Worker protocol (`worker_main`, over a multiprocessing Pipe; times are `time.monotonic()`,
the system-wide CLOCK_MONOTONIC, so they compare across processes):
parent -> worker: ("go",) open every stream; ("stats",); ("stop",).
worker -> parent: ("ready", feature names); ("snap", host, t_received, t_applied, ports digest,
n ports, n fdb entries); ("seen", host, port id, device_id, t_received, t_applied, was in view)
for every port put whose `device_id` starts with `watch_prefix`, once the pass that included it finished;
("error", host, text); ("stats", dict). A "seen" ends with the time its pass started (so
receipt -> pass start = coalescing and waiting for the CPU; pass start -> applied = the pass).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import gc
import hashlib
import resource
import time
from multiprocessing.connection import Connection
from typing import Any

from bench.fanout_bench import read_view
from vxnet.compute.diff import HostDiff, apply_host, diff_host
from vxnet.compute.host import HostComputer, HostDesired, HostSpec
from vxnet.compute.state import HostState
from vxnet.compute.view import ViewState, apply_message


def ports_digest(port_ids: Any) -> str:
    """A digest of a set of port ids (the same in every process)."""
    return hashlib.sha1("\n".join(sorted(port_ids)).encode()).hexdigest()


class RecordingDriver:
    """Stands in for the reconciler: keeps what it 'applied' and counts every change by kind."""

    def __init__(self) -> None:
        self.actual = HostState()
        self.counts: collections.Counter[str] = collections.Counter()  # "fdb.create" -> n
        self.passes = 0

    def apply(self, desired: HostState) -> HostDiff:
        d = diff_host(desired, self.actual)
        self.passes += 1
        if not d.empty:
            for f in dataclasses.fields(d):
                part = getattr(d, f.name)
                for op in ("create", "update", "delete"):
                    n = len(getattr(part, op))
                    if n:
                        self.counts[f"{f.name}.{op}"] += n
            self.actual = apply_host(self.actual, d)
        return d


class SimAgent:
    """One host: a view stream, the pure agent passes, a recording driver."""

    def __init__(self, host: str, underlay_ip: str, server_port: int, token: str, coalesce: float,
                 watch_prefix: str, report: Any) -> None:
        self.host, self.underlay_ip, self.server_port, self.token = host, underlay_ip, server_port, token
        self.coalesce, self.watch_prefix, self.report = coalesce, watch_prefix, report
        self.view = ViewState()
        self.computer = HostComputer(HostSpec(host, underlay_ip))
        self.driver = RecordingDriver()
        self.writer: asyncio.StreamWriter | None = None
        self._pass: asyncio.TimerHandle | None = None
        self._seen: list[tuple[str, str, float, bool]] = []
        self._snap_at: float | None = None
        self.snapshot_reported = False
        self.extra_snapshots = 0
        self.updates = 0
        self.pings = 0
        self.feature_errors: collections.Counter[str] = collections.Counter()
        self.error: str | None = None

    async def run(self) -> None:
        try:
            async for now, msg in read_view(self, self.server_port, self.host, self.token, 1 << 26, time.monotonic):
                self.on_message(msg, now)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - reported to the parent
            self.error = f"{type(e).__name__}: {e}"
            self.report(("error", self.host, self.error))

    def on_message(self, msg: dict[str, Any], now: float) -> None:
        """As `Agent.on_message`: apply to the view, wake the pass unless it is a ping."""
        kind = msg.get("type")
        if kind == "ping":
            self.pings += 1
        elif kind == "snapshot":
            if self._snap_at is None:
                self._snap_at = now
            else:
                self.extra_snapshots += 1
        elif kind == "update":
            self.updates += 1
            held = self.view.data.get("ports", {})
            for pid, obj in ((msg.get("put") or {}).get("ports") or {}).items():
                mark = obj.get("device_id") or ""
                if mark.startswith(self.watch_prefix):
                    self._seen.append((pid, mark, now, pid in held))
        self.view = apply_message(self.view, msg, consume=True)   # as the agent: the message is the stream's
        if kind != "ping" and self._pass is None:
            self._pass = asyncio.get_running_loop().call_later(self.coalesce, self.run_pass)

    def run_pass(self) -> None:
        """As `Agent.run_once`, with the recording driver instead of the kernel."""
        self._pass = None
        started = time.monotonic()
        view = self.view
        if not view.complete:
            return
        try:
            desired = self.computer.compute(view.view).l2
        except Exception:  # noqa: BLE001 - as the agent: a compute bug is logged, not fatal
            self.feature_errors["compute"] += 1
            return
        self.driver.apply(desired)
        done = time.monotonic()
        if not self.snapshot_reported and self._snap_at is not None:
            self.snapshot_reported = True
            gc.freeze()  # see "the CPU" in the module docstring
            ports = view.data.get("ports", {})
            self.report(("snap", self.host, self._snap_at, done, ports_digest(ports), len(ports),
                         len(self.driver.actual.fdb)))
        for pid, name, t_recv, held in self._seen:
            self.report(("seen", self.host, pid, name, t_recv, done, held, started))
        self._seen.clear()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.computer = HostComputer(self.computer.spec)     # drop the caches


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class GcPauses:
    """Pauses of the worker's garbage collector by generation: (count, total s, max s); the
    max is of the pauses since the previous `take()`."""

    def __init__(self) -> None:
        self.by_gen: dict[int, list[float]] = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
        self._t = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
            return
        d = time.perf_counter() - self._t
        s = self.by_gen[info["generation"]]
        s[0] += 1
        s[1] += d
        s[2] = max(s[2], d)

    def take(self) -> dict[int, tuple[float, ...]]:
        out = {g: tuple(v) for g, v in self.by_gen.items()}
        for v in self.by_gen.values():
            v[2] = 0.0
        return out


def _stats(agents: list[SimAgent], gcp: GcPauses) -> dict[str, Any]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    counts: collections.Counter[str] = collections.Counter()
    ferr: collections.Counter[str] = collections.Counter()
    for a in agents:
        counts.update(a.driver.counts)
        ferr.update(a.feature_errors)
    return {
        "cpu": ru.ru_utime + ru.ru_stime, "rss": _rss_mib(), "maxrss": ru.ru_maxrss / 1024,
        "agents": len(agents), "passes": sum(a.driver.passes for a in agents),
        "updates": sum(a.updates for a in agents), "pings": sum(a.pings for a in agents),
        "extra_snapshots": sum(a.extra_snapshots for a in agents),
        "errors": sum(1 for a in agents if a.error), "counts": dict(counts), "feature_errors": dict(ferr),
        "view_ports": [len(a.view.data.get("ports", {})) for a in agents],
        "fdb": [len(a.driver.actual.fdb) for a in agents],
        "gc": gcp.take(),
    }


async def _worker(conn: Connection, spec: dict[str, Any]) -> None:
    gcp = GcPauses()
    loop = asyncio.get_running_loop()
    cmds: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    report = conn.send
    agents = [SimAgent(h, ip, port, spec["token"], spec["coalesce"], spec["watch_prefix"], report)
              for h, ip, port in spec["agents"]]
    loop.add_reader(conn.fileno(), lambda: cmds.put_nowait(conn.recv()))
    report(("ready", sorted(HostDesired().features)))
    tasks: list[asyncio.Task[None]] = []
    try:
        while True:
            cmd = await cmds.get()
            if cmd[0] == "go":
                tasks = [asyncio.create_task(a.run()) for a in agents]
            elif cmd[0] == "stats":
                report(("stats", _stats(agents, gcp)))
            elif cmd[0] == "stop":
                break
    finally:
        loop.remove_reader(conn.fileno())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for a in agents:
            a.close()


def worker_main(conn: Connection, spec: dict[str, Any]) -> None:
    """Entry point of one worker process. `spec`: token, coalesce, watch_prefix, and `agents`,
    a list of (host, underlay_ip, server port)."""
    try:
        asyncio.run(_worker(conn, spec))
    finally:
        conn.close()
