"""The agent loop: view stream -> coalesce -> compute (pure) -> reconcile -> port status.

Threads (all daemons, all stopped by `stop()`):
- stream: consumes the control plane's view stream into a `ViewState`; reconnects with
  `since=<last fully applied revision>` and backoff, failing over between servers (the
  control plane object's business).
- monitor: netlink link/neighbour events; a tap appearing wakes the reconciler at once, a
  deletion of something we own (or of a static entry) also invalidates its cache.
- reconcile (the caller's thread in `run()`): waits for a wake-up or the resync period,
  coalesces for `coalesce` seconds in a burst (a wake-up came while the previous pass ran, and
  that pass ended less than `BURST_WINDOW` ago; an isolated change, such as a port bind, is not
  delayed), computes the desired state of the whole host
  (`compute.host.HostComputer`: exactly the pure `compute_host`, recomputing only what
  changed; in a port-up pass the firewall and the overlay before the plug, the rest after it)
  and converges the kernel.
  Level-triggered: every pass starts from the current view and kernel.
- heartbeat: keeps the host registered (re-registers when the server forgot it); every
  heartbeat carries `status_report()` (applied revision, ports, drift repairs, features: what
  `vxnet status` shows).
- reporter: sends port status changes queued by reconcile passes (latest truth wins), retrying
  while no server answers; reconcile never waits on HTTP.

Invariants:
- Nothing is reconciled (so nothing deleted) before the first complete view (snapshot); a
  restarted agent therefore adopts the kernel state and disturbs no traffic.
- A failed pass (or status report) is retried after an exponential backoff (0.1 s doubling up
  to 30 s, with jitter), reset by the next success; the periodic resync goes on regardless.
- When no server is reachable the kernel keeps its last state; drift repair keeps running on
  the last known view.
- A local port is reported ACTIVE only after a pass that applied its data path without error.

Operations (docs/operations.md): a pass logs the request ids (X-Openstack-Request-Id) of the
updates it applied; a `doctor` stream message runs `doctor()` (read-only diff of desired and
kernel state, `agent/doctor.py`; with `repair`, a pass that re-reads the kernel, then the diff
again) in its own thread and sends the result back (`report_doctor`). A pass that plugs a tap or
installs an FDB/neighbour entry logs one `trace` line (logger `vxnet.agent.trace`: wall-clock
times of the update's arrival, pass start, filters loaded, L2 done, and the L2 pass's phases),
from which bench/port_up_bench.py builds its per-stage breakdown.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from vxnet.agent import metrics, report
from vxnet.agent.backoff import Backoff
from vxnet.agent.features import Feature, FeatureResult, HostContext
from vxnet.agent.reconciler import Reconciler, ReconcileResult
from vxnet.compute.diff import Diff, HostDiff
from vxnet.compute.host import HostComputer, HostDesired
from vxnet.compute.state import HostState
from vxnet.compute.view import ViewState, apply_message
from vxnet.config import MetadataSettings

if TYPE_CHECKING:
    from vxnet.agent.ha import HaFailover

log = logging.getLogger("vxnet.agent")
trace_log = logging.getLogger("vxnet.agent.trace")

BURST_WINDOW = 0.05     # seconds after a pass within which a wake-up is coalesced
PLUG_FIRST = frozenset({"firewall"})   # features applied before the L2 pass plugs taps


def _then(first: ReconcileResult, second: ReconcileResult) -> ReconcileResult:
    """Two L2 passes of one agent pass as one result: the second's verdict, both passes' changes."""
    d1, d2 = first.diff, second.diff
    hd = HostDiff(*(Diff(a.create + b.create, a.update + b.update, a.delete + b.delete)
                    for a, b in ((getattr(d1, k), getattr(d2, k)) for k in ("bridges", "vxlans", "plugs", "fdb", "neighs"))))
    return dataclasses.replace(second, diff=hd, seconds=first.seconds + second.seconds,
                               full_read=first.full_read or second.full_read)


_schedstat = threading.local()       # per thread: its own schedstat file, kept open (closed with the thread's locals)


def run_delay() -> float:
    """Seconds the calling thread has waited on a run queue for a CPU (schedstat; 0 without it).
    The file stays open per thread (one `pread` a call, not an open, a read and a close: the
    pass reads it three times, twice before its plug)."""
    try:
        f = getattr(_schedstat, "file", None)
        if f is None:    # a file object, not a bare fd: it is closed when the thread's locals go
            f = _schedstat.file = open(f"/proc/self/task/{threading.get_native_id()}/schedstat", "rb", buffering=0)  # noqa: SIM115
        return int(os.pread(f.fileno(), 128, 0).split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _trace(host: str, result: ReconcileResult, recv_at: float | None, start: float, fw: float, l2: float,
           first: list[str], cpu: tuple[float, float, float], rq: tuple[float, float] = (0.0, 0.0),
           parts: Mapping[str, float] | None = None) -> None:
    """One `trace` log line (wall-clock seconds, comparable across the processes of one machine)
    for a pass that plugged a tap or installed an FDB/neighbour entry: the port-up critical path,
    read by bench/port_up_bench.py. `recv`: the first stream update this pass is the first to
    apply; `fw`: the plug-first features (`first`) loaded; `l2`: the L2 pass (plugs, entries) done;
    `end`: the other features done; `cpu_fw`, `cpu_l2`, `cpu_end`: the reconcile thread's own CPU
    time in start -> fw, fw -> l2 and l2 -> end (wall time minus this is waiting: for a CPU, the
    GIL, or a kernel lock such as RTNL, which every network namespace of the machine shares);
    `rq_fw`, `rq_l2`: of that waiting, the time on a run queue for a CPU in start -> fw and
    fw -> l2 (the rest is the GIL, a lock or I/O); `parts`: the pass's timed parts (seconds, as
    `vxnet_agent_pass_part_seconds`)."""
    d = result.diff
    plugged = [p.tap for p in d.plugs.create] + [p.tap for _, p in d.plugs.update]
    if not (plugged or d.fdb.create or d.neighs.create):
        return
    doc = {"recv": recv_at, "start": start, "fw": fw, "l2": l2, "end": time.time(), "first": first,
           "plugged": plugged, "fdb": sorted({e.mac for e in d.fdb.create}),
           "neigh": sorted({e.ip for e in d.neighs.create}), "full_read": result.full_read,
           "cpu_fw": round(cpu[0], 6), "cpu_l2": round(cpu[1], 6), "cpu_end": round(cpu[2], 6),
           "rq_fw": round(rq[0], 6), "rq_l2": round(rq[1], 6),
           "l2_phases": {k: round(v, 6) for k, v in result.phases},
           "parts": {k: round(v, 6) for k, v in (parts or {}).items()}}
    trace_log.info("host=%s trace %s", host, json.dumps(doc, separators=(",", ":")))


def _trace_report(host: str, sent: float, active: list[str], down: list[str]) -> None:
    """One `trace-status` log line for a port status report the server accepted: `sent` just
    before the request, `answered` when its answer came (wall-clock seconds, as `_trace`); the
    ACTIVE half of port-up, read by bench/port_up_bench.py."""
    doc = {"sent": sent, "answered": time.time(), "active": active, "down": down}
    trace_log.info("host=%s trace-status %s", host, json.dumps(doc, separators=(",", ":")))


_malloc_trim: Any = None


def release_freed_memory() -> None:
    """Give the pages glibc's malloc holds free back to the kernel (`malloc_trim`). After a
    large snapshot is parsed, its decoded objects are freed but their heap pages would stay
    resident beside the typed view (about 1 MB with 10,000 ports); after a pass, what its
    temporary objects used. Best effort (glibc only)."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes

        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


class ControlPlane(Protocol):
    """What the agent needs from the servers (`vxnet.agent.client.ServerClient` implements it)."""

    def register(self) -> Mapping[str, Any]: ...
    def heartbeat(self, report: Mapping[str, Any] | None = None) -> bool: ...
    def stream(self, since: int | None) -> Iterator[Mapping[str, Any]]: ...
    def report_status(self, active: Iterable[str], down: Iterable[str]) -> None: ...


@dataclasses.dataclass
class AgentConfig:
    host: str
    underlay_ip: str
    netns: str | None = None          # tests: run the data plane of a namespace from outside it
    coalesce: float = 0.002
    resync_interval: float = 30.0
    heartbeat_interval: float = 3.0
    retry_interval: float = 0.1       # first retry after a failed pass or report; doubles while failing
    retry_max: float = 30.0
    gateway: bool = False
    external_interface: str | None = None
    dhcp_lease_time: int = 86400
    metadata: MetadataSettings | None = None   # [metadata] of the agent's config file
    bfd: bool = False                 # BFD (FRR bfdd) to gateway hosts: fast gateway failover
    bfd_dir: str | None = None        # bfdd's sockets and pid file (default /run/vxnet/bfd-<host>)
    bgp: Any = None                   # gateway hosts: a dataplane.bgp.BgpConfig

    @property
    def context(self) -> HostContext:
        return HostContext(self.host, self.underlay_ip, self.netns, self.gateway, self.external_interface,
                           self.dhcp_lease_time, self.metadata, self.ha_dir, self.bgp)

    @property
    def ha_dir(self) -> str | None:
        return (self.bfd_dir or f"/run/vxnet/bfd-{self.host}") if self.bfd else None


class Agent:
    """One host's agent. `run()` blocks; `start()` runs it in a thread."""

    def __init__(self, cfg: AgentConfig, control: ControlPlane, reconciler: Reconciler | None = None,
                 features: list[Feature] | None = None) -> None:
        self.cfg = cfg
        self.control = control
        self.reconciler = reconciler or Reconciler(cfg.underlay_ip, cfg.netns)
        self.features: list[Feature] = build_features(cfg.context) if features is None else features
        self._lock = threading.Lock()
        self._view = ViewState()
        self.computer = HostComputer(cfg.context.spec)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._invalidate = False
        self._applied_revision: int | None = None
        self._status_lock = threading.Lock()
        self._reported: dict[str, tuple[str, Any]] = {}     # port -> (status, port revision) sent
        self._to_report: dict[str, tuple[str, Any]] = {}    # port -> (status, port revision) to send
        self._fip_reported: dict[str, tuple[str, Any]] = {}  # the same for floating IPs served here
        self._fip_to_report: dict[str, tuple[str, Any]] = {}
        self._fip_backoff = Backoff(cfg.retry_interval, cfg.retry_max)
        self._fip_retry_at = 0.0          # a failed floating IP report waits until then (ports do not)
        self._report_wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pass_backoff = Backoff(cfg.retry_interval, cfg.retry_max)
        self._report_backoff = Backoff(cfg.retry_interval, cfg.retry_max)
        self.last_result: ReconcileResult | None = None
        self.last_timings: dict[str, float] = {}     # part of the last pass -> seconds
        self.passes = 0
        self.unchanged_passes = 0        # passes whose desired state was the previous pass's
        self._last_desired: HostDesired | None = None
        self._held = False                # the last pass held taps (their filters not loaded)
        self.applied = threading.Condition()     # notified after every pass
        self._recv_at: float | None = None  # wall time of the first update not yet in a pass (trace)
        # what `status_report()` tells the servers (docs/operations.md)
        self._received_revision: int | None = None  # revision of the last update/snapshot in the view
        self._applied_received: int | None = None   # ... of the view the last clean pass applied
        self._request_ids: list[str] = []            # of the updates not yet in a pass (logged by it)
        self._down_reasons: dict[str, str] = {}      # local port -> why it is not ACTIVE
        self._failing: tuple[str, ...] = ()          # what the last pass failed to apply
        self.drift_repaired = 0                      # objects changed while the desired state did not
        self.last_drift_at: str | None = None
        # `doctor()` reads the kernel through its own netlink socket and `nft` (None); tests put
        # their fakes here (a `Kernel` and a `list_table(family, name)`, see agent/doctor.py).
        self.doctor_kernel: Any = None
        self.doctor_list_table: Any = None
        self.ha: HaFailover | None = None
        if cfg.bfd:
            from vxnet.agent.ha import HaFailover

            self.ha = HaFailover(cfg.host, cfg.underlay_ip, cfg.gateway, cfg.ha_dir or "",
                                 self._wake.set, cfg.netns)

    # ------------------------------------------------------------------ public surface
    @property
    def view(self) -> ViewState:
        with self._lock:
            return self._view

    @property
    def applied_revision(self) -> int | None:
        return self._applied_revision

    def on_message(self, msg: Mapping[str, Any], consume: bool = False) -> None:
        """Feed one stream message (thread-safe). `consume`: the message is given up (the
        stream's own): its raw objects are dropped as they are parsed, so a large snapshot's raw
        and typed forms are never alive together (peak RSS)."""
        kind = msg.get("type")
        if kind == "doctor":
            from vxnet.agent import doctor

            doctor.answer_request(self, msg)
            return
        with self._lock:
            self._view = apply_message(self._view, msg, consume)
            view = self._view
            if kind in ("update", "snapshot") and view.revision == int(msg.get("revision") or 0):
                self._received_revision = view.revision
                if kind == "update" and self._recv_at is None:
                    self._recv_at = time.time()
                rid = msg.get("request_id")  # several, comma-separated, for a revision of merged requests
                if isinstance(rid, str):
                    self._request_ids += [r[:80] for r in rid.split(",")[:16]][:1000 - len(self._request_ids)]
        metrics.VIEW_REVISION.set(view.revision)
        if msg.get("type") == "update":
            for kind in {*(msg.get("put") or {}), *(msg.get("delete") or {})}:
                metrics.VIEW_UPDATES.labels(kind).inc()
        if msg.get("type") != "ping":
            metrics.UPDATE_REVISION.set(view.revision)
            self._wake.set()
        if msg.get("type") == "snapshot" and consume:
            release_freed_memory()

    def kernel_changed(self, invalidate: bool) -> None:
        """Something changed in the kernel behind our back (or a tap appeared)."""
        if invalidate:
            self._invalidate = True
        self._wake.set()

    def start(self) -> None:
        """Run the agent in background threads."""
        if self.ha is not None:
            self.ha.start()
        for target, name in ((self._stream_loop, "stream"), (self._monitor_loop, "monitor"),
                             (self._heartbeat_loop, "heartbeat"), (self._reporter_loop, "reporter"),
                             (self._reconcile_loop, "reconcile")):
            t = threading.Thread(target=target, name=f"vxnet-agent-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def run(self) -> None:
        """Run until `stop()` (the reconcile loop in the calling thread)."""
        if self.ha is not None:
            self.ha.start()
        for target, name in ((self._stream_loop, "stream"), (self._monitor_loop, "monitor"),
                             (self._heartbeat_loop, "heartbeat"), (self._reporter_loop, "reporter")):
            t = threading.Thread(target=target, name=f"vxnet-agent-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        self._reconcile_loop()

    def stop(self) -> None:
        if self.ha is not None:
            self.ha.close()
        self._stop.set()
        self._wake.set()
        self._report_wake.set()
        for t in self._threads:
            if t is not threading.current_thread() and t.name.endswith("reconcile"):
                t.join(5)

    def wait_applied(self, revision: int, timeout: float = 10) -> bool:
        """Test helper: block until a pass applied at least `revision`."""
        with self.applied:
            return self.applied.wait_for(lambda: (self._applied_revision or -1) >= revision, timeout)

    # ------------------------------------------------------------------ reconcile
    def run_once(self) -> ReconcileResult | None:
        """One level-triggered pass over the current view; None before the first snapshot."""
        with self._lock:
            view, received = self._view, self._received_revision
            if not view.complete:
                return None
            request_ids, self._request_ids = self._request_ids, []
            recv_at, self._recv_at = self._recv_at, None
        wall0, cpu0 = time.time(), time.thread_time()
        tracing = trace_log.isEnabledFor(logging.INFO)
        rq0 = run_delay() if tracing else 0.0
        invalidated = self._invalidate
        if invalidated:
            self._invalidate = False
            self.reconciler.invalidate()
            for f in self.features:
                f.invalidate()
        t0 = time.perf_counter()
        try:
            # with BFD: gateway/snat ports of a router whose active is down move to its standby
            v = self.ha.view(view.view) if self.ha is not None else view.view
            # The plug path first: what must be in place before a tap is plugged (its firewall),
            # then the L2 pass (plugs and entries); the other features after it. A pass that
            # cannot plug a new tap (no new plug, no device absent or held last pass, no drift
            # repair) runs the L2 pass first of all (e.g. a peer's pass for a remote port: its
            # FDB entry before anything). When a desired plug's device was absent and a feature
            # changed something (e.g. made its service port), a second L2 pass plugs it now.
            # Only the overlay (and, when the pass may plug a tap, the firewall) is computed
            # before the L2 pass when every bridge it wants is one this host already has (a
            # port-up, a peer's pass for a remote port): the L2 pass then takes the features'
            # L2 parts as the previous pass computed them, and the other features are computed
            # after it; if their L2 parts changed, a second L2 pass converges to the whole
            # desired state. Otherwise (the start, a resync, a new network here: its features'
            # entries before its first tap) everything is computed first.
            plug = self.computer.compute_plug(v, firewall=False)
            first = PLUG_FIRST if invalidated or self._may_plug(plug.l2) else frozenset()
            last = self._last_desired
            early = (first <= {"firewall"} and not invalidated and last is not None
                     and plug.l2.bridges <= last.l2.bridges)
            if early:
                if first:
                    self.computer.plug_firewall()
                timings = dict(self.computer.timings)
                timings["compute_plug"] = time.perf_counter() - t0
                desired = None
            else:
                desired = self.computer.compute(v)     # == compute_host(v, spec)
                timings = dict(self.computer.timings)
                timings["compute"] = time.perf_counter() - t0
            fresults: dict[str, FeatureResult] = {}
            for f in self.features:
                if f.name in first:
                    part = self.computer.plug_firewall() if desired is None else desired.features[f.name]
                    fresults[f.name] = self._timed_feature(f, part, plug.l2, timings)
            hold = frozenset().union(*(r.hold for r in fresults.values()))
            whole = invalidated or last is None     # a pass over everything (start, resync)
            if whole:
                release_freed_memory()    # the firewall's transaction and listing: not on top of the L2 pass
            wall_fw, cpu_fw = time.time(), time.thread_time()
            rq_fw = run_delay() if tracing else 0.0
            result = self.reconciler.reconcile(plug.l2 if desired is None else desired.l2, hold)
            if whole:
                release_freed_memory()    # the kernel read and the netlink batches: not on top of the features
            wall_l2, cpu_l2 = time.time(), time.thread_time()
            rq_l2 = run_delay() if tracing else 0.0
            timings["l2"] = result.seconds
            timings["plug_path"] = time.perf_counter() - t0
            if desired is None:
                t1 = time.perf_counter()
                desired = self.computer.compute(v)     # the rest of compute_host(v, spec)
                timings.update({k: x for k, x in self.computer.timings.items() if k not in timings})
                timings["compute_rest"] = time.perf_counter() - t1
                timings["compute"] = timings["compute_plug"] + timings["compute_rest"]
                if desired.l2 is not plug.l2 and desired.l2 != plug.l2:
                    # the features' L2 parts changed: converge to the whole desired state now
                    again = self.reconciler.reconcile(desired.l2, hold)
                    timings["l2_rest"] = again.seconds
                    result = _then(result, again)
            for f in self.features:
                if f.name not in first:
                    fresults[f.name] = self._timed_feature(f, desired.features[f.name], desired.l2, timings)
                    if whole:
                        release_freed_memory()    # its nftables transaction: not on top of the next feature's
            self._held = any(r.hold for r in fresults.values())
            if result.absent and any(any(fresults[f.name].changes.values()) for f in self.features
                                     if f.name not in first):
                again = self.reconciler.reconcile(desired.l2, hold | frozenset().union(
                    *(r.hold for r in fresults.values())))
                timings["l2_after"] = again.seconds
                result = _then(result, again)
        except Exception:   # a bug or kernel surprise must not stop the agent: logged, retried next pass
            metrics.ERRORS.labels("reconcile").inc()
            log.exception("reconcile failed (host=%s revision=%s request_ids=%s)", self.cfg.host, view.revision,
                          ",".join(request_ids) or "-")
            self._failing = ("reconcile: exception (see the agent log)",)
            self.reconciler.invalidate()
            self._retry_later()
            return None
        self.last_timings = timings
        if tracing:
            _trace(self.cfg.host, result, recv_at, wall0, wall_fw, wall_l2, sorted(first),
                   (cpu_fw - cpu0, cpu_l2 - cpu_fw, time.thread_time() - cpu_l2), (rq_fw - rq0, rq_l2 - rq_fw),
                   timings)
        for part, secs in timings.items():
            metrics.PASS_PART_SECONDS.labels(part).observe(secs)
        l2_result = result
        ordered = [fresults[f.name] for f in self.features]   # in the features' order
        if ordered:
            result = self._combine(result, ordered)
        self.passes += 1
        unchanged = desired is self._last_desired
        self.unchanged_passes += unchanged
        self._last_desired = desired
        metrics.PASSES.labels("unchanged" if unchanged else "changed").inc()
        if unchanged and not self._failing:
            self._count_drift(result, ordered)
        self.last_result = result
        self._down_reasons = report.down_reasons(desired.l2.local_ports, l2_result, [f.name for f in self.features],
                                                 ordered)
        self._failing = tuple(str(f)[:200] for f in result.failed[:5])
        self._record(view, desired, result, request_ids)
        self._report(view, result)
        if self.ha is not None:
            self.ha.after_pass(v)
        self._report_fips(view, {k: v for r in ordered for k, v in r.floatingips.items()})
        if not result.failed:
            self._pass_backoff.reset()
            self._applied_received = received
            with self.applied:
                self._applied_revision = view.revision
            metrics.APPLIED_REVISION.set(view.revision)
        with self.applied:
            self.applied.notify_all()
        if result.failed:
            self._retry_later()
        if invalidated or not unchanged:
            # After the pass's work (its port-up path is done and notified): the pages its
            # temporary objects (netlink batches, nft texts and listings, libnftables' parse)
            # left free go back to the kernel. ~0.5 ms when there is something to give back;
            # with 10,000 ports in view it keeps ~10-15 MB off the agent's resident memory.
            release_freed_memory()
        return result

    def _may_plug(self, l2: HostState) -> bool:
        """Whether this pass's L2 pass may plug a tap whose filters it must wait for: a plug
        the previous pass did not want, or a device it found absent, or one it held."""
        last = self._last_desired
        return (last is None or self._held or (self.last_result is not None and bool(self.last_result.absent))
                or not l2.plugs <= last.l2.plugs)

    def _timed_feature(self, f: Feature, part: Any, l2: HostState, timings: dict[str, float]) -> FeatureResult:
        t = time.perf_counter()
        r = self._apply_feature(f, part)
        if r.all_down and f.name in PLUG_FIRST:       # crashed: nothing it guards may be plugged anew
            r = dataclasses.replace(r, hold=frozenset(lp.port_id for lp in l2.local_ports))
        timings[f"apply_{f.name}"] = time.perf_counter() - t
        return r

    def _apply_feature(self, f: Feature, desired: Any) -> FeatureResult:
        try:
            return f.apply(desired)
        except Exception:
            metrics.ERRORS.labels(f"feature_{f.name}").inc()
            log.exception("feature %s failed (host=%s)", f.name, self.cfg.host)
            f.invalidate()
            return FeatureResult(failed=(f"feature {f.name}",), all_down=True)

    def _combine(self, result: ReconcileResult, fresults: list[FeatureResult]) -> ReconcileResult:
        """The L2 result with the features' failures and DOWN ports folded in."""
        local = result.active | result.down
        down = local if any(r.all_down for r in fresults) else frozenset().union(*(r.down for r in fresults)) & local
        failed = result.failed + tuple(x for r in fresults for x in r.failed)
        for f, r in zip(self.features, fresults, strict=True):
            if any(r.changes.values()):
                log.info("host=%s feature %s applied %s", self.cfg.host, f.name,
                         {k: v for k, v in r.changes.items() if v})
        return dataclasses.replace(result, failed=failed, active=result.active - down, down=result.down | down)

    def _count_drift(self, result: ReconcileResult, fresults: list[FeatureResult]) -> None:
        """Changes made by a pass whose desired state had not changed (after a clean pass):
        the kernel drifted (someone else changed it) and this pass repaired it."""
        counts = report.drift_counts(result, [f.name for f in self.features], fresults)
        if counts:
            for kind, n in counts.items():
                metrics.DRIFT_REPAIRS.labels(kind).inc(n)
            self.drift_repaired += sum(counts.values())
            self.last_drift_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            log.warning("host=%s repaired drift: %s", self.cfg.host, counts)

    def status_report(self) -> dict[str, Any]:
        """What this agent tells the servers with every heartbeat (`vxnet status`)."""
        return report.status_report(self._received_revision, self._applied_received, self.last_result,
                                    [f.name for f in self.features], self._failing, self._down_reasons,
                                    self.drift_repaired, self.last_drift_at)

    def doctor(self, repair: bool = False, timeout: float = 20.0) -> dict[str, Any]:
        """Compare the desired state of the current view with the kernel (agent/doctor.py)."""
        from vxnet.agent import doctor

        return doctor.run(self, repair, timeout)

    def _record(self, view: ViewState, desired: HostDesired, result: ReconcileResult,
                request_ids: list[str] | None = None) -> None:
        for kind, n in view.size().items():
            metrics.VIEW_OBJECTS.labels(kind).set(n)
        for kind, n in desired.l2.size().items():
            metrics.DESIRED_OBJECTS.labels(kind).set(n)
        metrics.RECONCILES.labels(str(result.full_read).lower()).inc()
        metrics.RECONCILE_SECONDS.observe(result.seconds)
        for kind in (f.name for f in dataclasses.fields(result.diff)):   # not asdict: a deep copy of every entry
            for op in ("create", "update", "delete"):
                n = len(getattr(getattr(result.diff, kind), op))
                if n:
                    metrics.KERNEL_CHANGES.labels(kind, op).inc(n)
        if result.failed:
            metrics.ERRORS.labels("apply").inc(len(result.failed))
        metrics.PORTS.labels("ACTIVE").set(len(result.active))
        metrics.PORTS.labels("DOWN").set(len(result.down))
        if result.changes or request_ids:
            parts = " ".join(f"{k}={v * 1000:.1f}" for k, v in self.last_timings.items() if v >= 0.0001)
            log.info("host=%s revision=%s request_ids=%s applied %s in %.1f ms (ms: %s)%s", self.cfg.host,
                     view.revision, ",".join(dict.fromkeys(request_ids or ())) or "-",
                     {k: v for k, v in result.diff.counts().items() if v}, result.seconds * 1000, parts,
                     f" failed={list(result.failed)}" if result.failed else "")

    def _report(self, view: ViewState, result: ReconcileResult) -> None:
        """Queue the status changes of this pass for the reporter thread (never blocks on HTTP:
        a slow or unreachable server must not delay the next reconcile)."""
        ports = view.view.ports
        want: dict[str, tuple[str, Any]] = {}
        local = result.active | result.down
        with self._status_lock:
            for pid in local:
                status = "ACTIVE" if pid in result.active else "DOWN"
                obj = ports.get(pid)
                known = obj.status if obj is not None else None
                stamp = (status, obj.revision if obj is not None and obj.revision is not None else known)
                if known != status and self._reported.get(pid) != stamp:
                    want[pid] = stamp
            for pid in list(self._reported):
                if pid not in local:
                    del self._reported[pid]
            self._to_report = want      # level-triggered: the latest truth replaces older wishes
        if want:
            self._report_wake.set()

    def _report_fips(self, view: ViewState, statuses: Mapping[str, str]) -> None:
        """Queue the floating IP status changes of this pass (as `_report` for ports)."""
        fips = view.view.floatingips
        want: dict[str, tuple[str, Any]] = {}
        with self._status_lock:
            for fid, status in statuses.items():
                obj = fips.get(fid)
                if obj is None:
                    continue
                stamp = (status, obj.revision if obj.revision is not None else obj.status)
                if obj.status != status and self._fip_reported.get(fid) != stamp:
                    want[fid] = stamp
            for fid in list(self._fip_reported):
                if fid not in statuses:
                    del self._fip_reported[fid]
            self._fip_to_report = want
        if want:
            self._report_wake.set()

    def _send_fips(self) -> None:
        """Send the queued floating IP statuses. A failure is retried after its own backoff
        (a timer wakes the reporter), without holding back port reports."""
        with self._status_lock:
            batch = dict(self._fip_to_report)
        send = getattr(self.control, "report_floatingips_status", None)
        if not batch or send is None or time.monotonic() < self._fip_retry_at:
            return
        active = sorted(f for f, (s, _) in batch.items() if s == "ACTIVE")
        down = sorted(f for f, (s, _) in batch.items() if s == "DOWN")
        try:
            send(active, down)
        except Exception as e:  # noqa: BLE001 - as for ports: retried
            metrics.ERRORS.labels("report_status").inc()
            delay = self._fip_backoff.next()
            log.warning("host=%s floating IP status report failed (%s); retry in %.1f s", self.cfg.host, e, delay)
            self._fip_retry_at = time.monotonic() + delay
            t = threading.Timer(delay, self._report_wake.set)
            t.daemon = True
            t.start()
            return
        self._fip_backoff.reset()
        with self._status_lock:
            for fid, stamp in batch.items():
                self._fip_reported[fid] = stamp
                if self._fip_to_report.get(fid) == stamp:
                    del self._fip_to_report[fid]
        log.info("host=%s floating IPs ACTIVE=%s DOWN=%s", self.cfg.host, active, down)

    def _reporter_loop(self) -> None:
        while not self._stop.is_set():
            self._report_wake.wait(1.0)
            self._report_wake.clear()
            if not self._stop.is_set():
                self._send_fips()
            with self._status_lock:
                batch = dict(self._to_report)
            if not batch or self._stop.is_set():
                continue
            active = sorted(p for p, (s, _) in batch.items() if s == "ACTIVE")
            down = sorted(p for p, (s, _) in batch.items() if s == "DOWN")
            sent = time.time()
            try:
                self.control.report_status(active, down)
            except Exception as e:  # noqa: BLE001 - server unreachable/refusing: keep forwarding, retry
                metrics.ERRORS.labels("report_status").inc()
                log.warning("host=%s status report failed (%s); will retry", self.cfg.host, e)
                self._stop.wait(self._report_backoff.next())
                self._report_wake.set()
                continue
            self._report_backoff.reset()
            if trace_log.isEnabledFor(logging.INFO):
                _trace_report(self.cfg.host, sent, active, down)
            with self._status_lock:
                for pid, stamp in batch.items():
                    self._reported[pid] = stamp
                    if self._to_report.get(pid) == stamp:
                        del self._to_report[pid]
            log.info("host=%s ports ACTIVE=%s DOWN=%s", self.cfg.host, active, down)

    def _retry_later(self) -> None:
        """Wake the reconcile loop again after the next backoff delay (0.1 s, doubling while
        passes keep failing, up to `retry_max`; reset by a pass without failures)."""
        delay = self._pass_backoff.next()
        metrics.RETRY_SECONDS.set(delay)
        t = threading.Timer(delay, self._wake.set)
        t.daemon = True
        t.start()

    def _reconcile_loop(self) -> None:
        next_resync = time.monotonic() + self.cfg.resync_interval
        last_end, burst = 0.0, False
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_resync - time.monotonic()))
            if self._stop.is_set():
                break
            if time.monotonic() >= next_resync:
                self._invalidate = True     # drift repair: read the kernel again
                next_resync = time.monotonic() + self.cfg.resync_interval
            # Coalesce only in a burst: changes arrived while the previous pass ran and that
            # pass ended moments ago. They, plus what comes within `coalesce`, go into the next
            # pass. An isolated change (e.g. a port bind, even just after an unrelated pass such
            # as the one its new tap woke) finds the loop idle and starts its pass at once.
            if self.cfg.coalesce and burst and time.monotonic() - last_end < BURST_WINDOW:
                time.sleep(self.cfg.coalesce)
            self._wake.clear()
            self.run_once()
            last_end = time.monotonic()
            burst = self._wake.is_set()      # woken again while the pass ran
        self.reconciler.close()
        for f in self.features:
            try:
                f.close()
            except Exception:
                log.exception("closing feature %s", f.name)

    # ------------------------------------------------------------------ stream
    def _stream_loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                since = self._applied_revision if self.view.complete else None
                for msg in self.control.stream(since):
                    if self._stop.is_set():
                        return
                    metrics.STREAM_CONNECTED.set(1)
                    backoff = 0.1
                    self.on_message(msg, consume=True)
                    del msg         # the next message may be read while this one's objects are freed
            except Exception as e:  # noqa: BLE001 - whatever broke the stream, reconnect
                metrics.ERRORS.labels("stream").inc()
                log.warning("host=%s view stream lost: %s", self.cfg.host, e)
            metrics.STREAM_CONNECTED.set(0)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _heartbeat_loop(self) -> None:
        registered = False
        while not self._stop.is_set():
            try:
                if not registered:
                    reply = self.control.register()
                    self.cfg.heartbeat_interval = float(reply.get("heartbeat_interval", self.cfg.heartbeat_interval))
                    registered = True
                    log.info("host=%s registered (underlay %s)", self.cfg.host, self.cfg.underlay_ip)
                elif not self.control.heartbeat(self.status_report()):
                    registered = False
                    continue
            except Exception as e:  # noqa: BLE001 - keep heartbeating whatever the failure
                metrics.ERRORS.labels("heartbeat").inc()
                log.warning("host=%s heartbeat failed: %s", self.cfg.host, e)
                registered = False
                self._stop.wait(1.0)
                continue
            self._stop.wait(self.cfg.heartbeat_interval)

    # ------------------------------------------------------------------ kernel events
    def _monitor_loop(self) -> None:
        from vxnet.compute import naming
        from vxnet.dataplane.rtnl import AF_BRIDGE, RTM_DELLINK, RTM_DELNEIGH, RTM_NEWLINK, RtnlMonitor

        while not self._stop.is_set():
            mon = None
            try:
                mon = RtnlMonitor(self.cfg.netns)
                self.reconciler.watch_links(True)    # subscribed: link events reach it from now on
                while not self._stop.is_set():
                    for ev in mon.events(timeout=1.0):
                        if ev.type in (RTM_NEWLINK, RTM_DELLINK):
                            self.reconciler.links_changed()
                            name = ev.ifname or ""
                            if naming.is_plug(name) or naming.is_owned(name):
                                self.kernel_changed(invalidate=ev.type == RTM_DELLINK)
                        elif ev.type == RTM_DELNEIGH and (
                                (ev.family == AF_BRIDGE and ev.state & 0xC0)     # static FDB entry
                                or ev.ifindex in self.reconciler.owned_ifindexes):  # on our bridge
                            self.kernel_changed(invalidate=True)
            except OSError as e:
                # Typically ENOBUFS after a burst of changes: events were lost, so whatever they
                # said is unknown; read the kernel again (level-triggered).
                metrics.ERRORS.labels("monitor").inc()
                log.info("host=%s netlink monitor restarting (events lost: %s)", self.cfg.host, e)
                self.kernel_changed(invalidate=True)
                self._stop.wait(0.05)
            finally:
                self.reconciler.watch_links(False)       # no events: every pass reads the links
                if mon is not None:
                    mon.close()


def build_features(ctx: HostContext) -> list[Feature]:
    """The features an agent runs, in apply order. Imported here, not at the top: an L2-only agent
    (`features=[]`) never loads their drivers, a host that is no gateway never loads the
    gateway's (docs/architecture.md, agent memory)."""
    from vxnet.agent.dhcp import DhcpFeature
    from vxnet.agent.firewall import FirewallFeature
    from vxnet.agent.metadata import MetadataFeature
    from vxnet.agent.qos import QosFeature
    from vxnet.agent.routing import RoutingFeature

    gateway: list[Feature] = []
    if ctx.gateway:
        from vxnet.agent import gateway as gw

        gateway = [*gw.build(ctx)]
    return [
        *gateway,                   # SNAT and floating IPs (gateway hosts only)
        RoutingFeature(ctx),        # distributed routers
        FirewallFeature(ctx),       # port security, security groups (before any tap is plugged)
        DhcpFeature(ctx),           # DHCP for local VMs
        QosFeature(ctx),            # bandwidth limits and DSCP marks on VM taps
        MetadataFeature(ctx),       # 169.254.169.254 for local VMs, proxied to Nova
    ]
