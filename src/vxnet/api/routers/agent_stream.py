"""/v2.0/vxnet/hosts/{host}/...: the agents' side of the server (register, heartbeat, view
stream, port status). Callers need the `admin` or `service` role.

Store layout:
- `/vxnet/res/agents/<agent id>`: the Neutron agent record (durable; id derived from the host
  name, so every server computes the same one). `alive` there is what the server last decided.
- `/vxnet/agents/<host>`: the liveness key, attached to the agent's lease. Heartbeats refresh
  the lease (no write); the record's `heartbeat_timestamp` is rewritten at most every
  HEARTBEAT_RECORD_INTERVAL seconds.
- When the liveness key disappears (lease expired or revoked) and has not been recreated, the
  record becomes `alive: false` and the host's ACTIVE ports DOWN, in one transaction. Every
  server does this (idempotently); at start each server also repairs records left `alive`
  without a liveness key.

Stream messages are those of the contract; the snapshot's `view.host` is the host's own
`hosts` entry, which also appears (and changes) under `hosts` like any other.

The hub (one per server process and app): one store watch on `/vxnet/` from the revision of
one initial `range`, feeding `ViewIndex` on the event loop (callbacks come on the committing
thread and are handed over with `call_soon_threadsafe`). For every tracked host (registered or
subscribed) it keeps the recent update lines that touched the host (all hosts' logs together
hold at most LOG_BYTES; the oldest lines go first), and `floor[host]`: every update after that
revision is in the log. A stream with
`since >= floor` replays the log after `since`; otherwise it starts with a snapshot. So an
agent resumes without a snapshot on this server, or on another server that was already
running, as long as the log reaches back far enough. Pings carry the hub's revision: "nothing
for you up to here", so a resumed `since` stays recent. A subscriber that falls LOG_LENGTH
lines behind is disconnected (it resumes or gets a snapshot). If applying a change ever fails,
the hub reloads everything and sends every stream a snapshot (full recompute fallback).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import StreamingResponse
from prometheus_client import Gauge, Histogram

from vxnet.api.auth import Context
from vxnet.api.errors import ApiError, bad_request, policy_denied
from vxnet.api.state import AppState, read_json
from vxnet.api.validation import Body, Bool, IpAddr, ShortStr, validate
from vxnet.services import scheduler
from vxnet.services.host_view import COLLECTIONS, ViewIndex
from vxnet.services.repo import EPOCH_KEY, ROOT, UnitOfWork, now_iso, res_key
from vxnet.store.contract import (
    CompactedError,
    Compare,
    Event,
    EventType,
    LeaseNotFound,
    Put,
    Store,
    StoreError,
    key_missing,
)

log = logging.getLogger("vxnet.agents")
router = APIRouter(prefix="/v2.0/vxnet", tags=["agent control plane"])

PING_INTERVAL = 5.0
LOG_LENGTH = 4096  # lines a stream may fall behind before it is cut
LOG_BYTES = 32 * 1024 * 1024  # all hosts' replay logs together
HEARTBEAT_RECORD_INTERVAL = 10.0
LIVE_PREFIX = f"{ROOT}agents/"
_AGENT_NS = uuid.UUID("0c5d1a7e-3f0b-4d2a-8a51-6e1f4b2c9d07")


def agent_id_for(host: str) -> str:
    """The agent record id of a host (the same on every server)."""
    return str(uuid.uuid5(_AGENT_NS, "agent:" + host))


def store_epoch(store: Store) -> str:
    """The store's epoch: revisions only mean something within one epoch. It is created once
    per store and replaced by `vxnet migrate`, so an agent that resumes with a revision of
    another store (same keys, other numbering) gets a snapshot instead of a wrong replay."""
    kv = store.get(EPOCH_KEY)
    if kv is None:
        store.txn([key_missing(EPOCH_KEY)], [Put(EPOCH_KEY, uuid.uuid4().hex)])
        kv = store.get(EPOCH_KEY)
        assert kv is not None
    return kv.value


def live_key(host: str) -> str:
    return LIVE_PREFIX + host


def agent_time(t: float | None = None) -> str:
    """Neutron's agent timestamp format."""
    return dt.datetime.fromtimestamp(time.time() if t is None else t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def require_service(ctx: Context) -> None:
    """Only the agents' own identity (service role) or an admin may use these endpoints."""
    if not (ctx.is_admin or "service" in ctx.roles):
        raise policy_denied("vxnet_agent")


def lease_ttl(st: AppState) -> int:
    return max(2, int(st.config.agent_down_time))


def heartbeat_interval(st: AppState) -> float:
    return max(0.5, lease_ttl(st) / 3)


# --- the hub ---------------------------------------------------------------------------------

class Subscriber:
    """One open stream: lines waiting to be sent."""

    def __init__(self, host: str, since: int) -> None:
        self.host = host
        self.since = since  # updates up to this revision are known to the agent already
        self.lines: collections.deque[bytes] = collections.deque()
        self.ready = asyncio.Event()
        self.closed = False

    def push(self, line: bytes, rev: int | None = None) -> None:
        """Queue a line; an update at or before `since` is skipped (the agent has it)."""
        if rev is not None and rev <= self.since:
            return
        if len(self.lines) >= LOG_LENGTH:
            self.closed = True  # too slow: let it reconnect and resume (or take a snapshot)
        else:
            self.lines.append(line)
        self.ready.set()


class Hub:
    """The server's one store watch, the view index, per-host logs and open streams."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.epoch = store_epoch(store)  # revisions are positions in this store only
        self.index = ViewIndex()
        self.revision = 0
        self.logs: dict[str, collections.deque[tuple[int, bytes]]] = {}
        self.floor: dict[str, int] = {}
        self._log_order: collections.deque[tuple[str, int, int]] = collections.deque()  # host, rev, size
        self._log_bytes = 0
        self.subs: dict[str, set[Subscriber]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._watch: Any = None
        self.on_liveness_lost: Any = None  # callable(host), set by setup()
        self.fanout_seconds: Any = None  # a prometheus Histogram, set by setup()

    # start / stop ------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.loop is not None:
            return
        self.loop = loop
        while True:
            self._load()
            try:
                self._watch = self.store.watch(ROOT, self.revision + 1, self._on_events)
                return
            except CompactedError:  # compacted between the range and the watch: list again
                continue

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        for subs in self.subs.values():
            for s in subs:
                s.closed = True
                s.ready.set()

    def _load(self) -> None:
        kvs, rev = self.store.range(f"{ROOT}res/")
        objects: dict[str, dict[str, Any]] = {c: {} for c in COLLECTIONS}
        agents: dict[str, Any] = {}
        keep = [(coll, id_, kv.value) for kv in kvs
                for coll, _, id_ in [kv.key[len(ROOT) + 4:].partition("/")] if coll in objects or coll == "agents"]
        # One parse of every value: the parser shares equal keys within one document, so 100,000
        # ports hold one copy of each field name, not one each (about 40% of their memory).
        values = json.loads("[" + ",".join(v for _, _, v in keep) + "]")
        for (coll, id_, _), obj in zip(keep, values, strict=True):
            (agents if coll == "agents" else objects[coll])[id_] = obj
        self.index.load(objects, agents)
        for rec in agents.values():
            self.index.track(rec["host"])
        self.revision = rev
        for h in self.index.members:
            self.floor[h] = rev
            self.logs[h] = collections.deque()

    def _on_events(self, events: list[Event]) -> None:
        """Store thread: hand the revision to the event loop."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closing
            loop.call_soon_threadsafe(self._apply, events)

    # changes -----------------------------------------------------------------------------------
    def _apply(self, events: list[Event]) -> None:
        rev = events[0].kv.mod_revision
        if rev <= self.revision:
            return  # already in a reload
        lost = [e.kv.key[len(LIVE_PREFIX):] for e in events
                if e.type is EventType.DELETE and e.kv.key.startswith(LIVE_PREFIX)]
        if lost and self.on_liveness_lost is not None:
            for host in lost:
                self.on_liveness_lost(host)  # scheduled: runs after this revision is applied
        started = time.perf_counter()
        try:
            changes: list[tuple[str, str, dict[str, Any] | None]] = []
            for e in events:
                if e.kv.key.startswith(f"{ROOT}res/"):
                    coll, _, id_ = e.kv.key[len(ROOT) + 4:].partition("/")
                    if coll in COLLECTIONS or coll == "agents":
                        changes.append((coll, id_, json.loads(e.kv.value) if e.type is EventType.PUT else None))
            messages = self.index.apply(changes)
        except Exception:  # a bug in the incremental path must not lose views: reload instead
            log.exception("view index failed at revision %d; reloading", rev)
            self.resync()
            return
        self.revision = rev
        if len(self.index.members) != len(self.floor):  # a host registered: tracked from here on
            for h in self.index.members:
                if h not in self.floor:
                    self.floor[h] = rev
                    self.logs[h] = collections.deque()
        for h, msg in messages.items():
            body = {"type": "update", "revision": rev}
            body.update(msg.wire())
            line = (json.dumps(body, separators=(",", ":")) + "\n").encode()
            self._record(h, rev, line)
            for s in self.subs.get(h, ()):
                s.push(line, rev)
        if self.fanout_seconds is not None:
            self.fanout_seconds.observe(time.perf_counter() - started)

    def _record(self, host: str, rev: int, line: bytes) -> None:
        self.logs.setdefault(host, collections.deque()).append((rev, line))
        self._log_order.append((host, rev, len(line)))
        self._log_bytes += len(line)
        while self._log_bytes > LOG_BYTES:
            h, old_rev, size = self._log_order.popleft()
            self._log_bytes -= size
            logq = self.logs.get(h)
            if logq and logq[0][0] == old_rev:
                logq.popleft()
                self.floor[h] = max(self.floor.get(h, 0), old_rev)

    def resync(self) -> None:
        """Reload every object and send every open stream a snapshot."""
        self._log_order.clear()
        self._log_bytes = 0
        self._load()
        for host, subs in self.subs.items():
            self.index.track(host)
            self.floor[host] = self.revision
            self.logs[host] = collections.deque()
            for s in subs:
                s.since = self.revision
                s.push(self.snapshot_line(host))

    # streams -----------------------------------------------------------------------------------
    def snapshot_line(self, host: str) -> bytes:
        view: dict[str, Any] = self.index.snapshot(host)
        me = self.index.hosts.get(host)
        view = {"host": me or {"host": host, "underlay_ip": None, "alive": False, "gateway": False}, **view}
        return (json.dumps({"type": "snapshot", "revision": self.revision, "epoch": self.epoch, "view": view},
                           separators=(",", ":")) + "\n").encode()

    def subscribe(self, host: str, since: int | None) -> Subscriber:
        """A new stream for `host`, primed with a snapshot or the log after `since`."""
        if self.index.track(host):
            self.floor[host] = self.revision
            self.logs[host] = collections.deque()
        floor = self.floor.get(host, self.revision)
        replay: list[tuple[int, bytes]] = []
        if since is not None and floor <= since <= self.store.revision():
            replay = [(rev, line) for rev, line in self.logs.get(host, ()) if rev > since]
        if since is None or since < floor or since > self.store.revision() or len(replay) >= LOG_LENGTH:
            sub = Subscriber(host, self.revision)  # a snapshot is shorter than a long replay
            sub.push(self.snapshot_line(host))
        else:
            sub = Subscriber(host, since)
            for rev, line in replay:
                sub.push(line, rev)
        self.subs.setdefault(host, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        subs = self.subs.get(sub.host)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subs[sub.host]

    def ping_line(self) -> bytes:
        return (json.dumps({"type": "ping", "revision": self.revision}) + "\n").encode()


def hub_of(st: AppState) -> Hub:
    """The app's hub, started on first use if the lifespan did not start it."""
    hub: Hub = st.hub
    if hub.loop is None:
        hub.start(asyncio.get_running_loop())
    return hub


# --- liveness --------------------------------------------------------------------------------

def mark_dead(st: AppState, host: str) -> None:
    """If `host` has no liveness key: its record says not alive and its ACTIVE ports go DOWN."""

    def txn(uow: UnitOfWork) -> None:
        if uow.get_raw(live_key(host)) is not None:
            return  # registered again meanwhile
        rec = uow.get("agents", agent_id_for(host))
        if rec is not None and rec.get("alive"):
            rec["alive"] = False
            uow.put("agents", rec)
        for port in uow.list("ports", lambda p: p.get("binding:host_id") == host and p.get("status") == "ACTIVE"):
            p = dict(port)
            p["status"] = "DOWN"
            _touch(p)
            uow.put("ports", p)
        scheduler.reschedule(uow)  # a dead gateway host's routers move to an alive one

    try:
        st.repo.transact(txn)
    except Exception:  # the next start-up sweep or expiry retries; the watch must go on
        log.exception("marking agent %s dead failed", host)


def _touch(obj: dict[str, Any]) -> None:
    obj["revision_number"] = obj.get("revision_number", 0) + 1
    obj["updated_at"] = now_iso()


def sweep_dead(st: AppState) -> None:
    """Records left alive without a liveness key (e.g. a server was down at expiry)."""
    try:
        for rec in st.repo.list("agents"):
            if rec.get("alive") and st.store.get(live_key(rec["host"])) is None:
                mark_dead(st, rec["host"])
    except StoreError:
        log.exception("start-up sweep of dead agents failed; expiries seen from now on still count")


def setup(app: FastAPI, state: AppState) -> None:
    """Create the hub; start it (and the start-up sweep) with the app, stop it after."""
    hub = Hub(state.store)
    state.hub = hub

    def lost(host: str) -> None:
        assert hub.loop is not None
        hub.loop.call_soon(mark_dead, state, host)

    hub.on_liveness_lost = lost
    registry = getattr(app.state, "metrics_registry", None)
    if registry is not None:
        hub.fanout_seconds = Histogram(
            "vxnet_view_fanout_seconds", "Time to turn one store revision into every host's view update",
            registry=registry, buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1))
        Gauge("vxnet_view_streams", "Open agent view streams", registry=registry).set_function(
            lambda: sum(len(s) for s in hub.subs.values()))
        Gauge("vxnet_view_tracked_hosts", "Hosts whose views this server keeps", registry=registry).set_function(
            lambda: len(hub.index.members))
    previous = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        hub.start(loop)
        # The sweep waits one lease period: agents whose liveness keys are missing only because
        # this store is new to them (a migration, a restored backup) re-register meanwhile and
        # keep their ports ACTIVE; a host that really died is marked dead at the end of it.
        sweep = loop.call_later(lease_ttl(state), sweep_dead, state)
        async with previous(a) as inner:
            yield inner
        sweep.cancel()
        hub.stop()

    app.router.lifespan_context = lifespan


# --- endpoints -------------------------------------------------------------------------------

class RegisterBody(Body):
    underlay_ip: IpAddr
    gateway: Bool = False
    external_interface: ShortStr | None = None
    agent_type: ShortStr = "vxnet agent"


def _check_host(host: str) -> None:
    if not host or len(host) > 255 or any(c.isspace() for c in host):
        raise bad_request(f"Invalid host name '{host}'")


@router.post("/hosts/{host}/register")
async def register(host: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    require_service(ctx)
    _check_host(host)
    body = validate(RegisterBody, await read_json(request))
    ttl = lease_ttl(st)
    lease = st.store.grant_lease(ttl)
    rkey, lkey = res_key("agents", agent_id_for(host)), live_key(host)
    for _ in range(50):
        rec_kv, live_kv = st.store.get(rkey), st.store.get(lkey)
        old = json.loads(rec_kv.value) if rec_kv else None
        now = agent_time()
        rec = {
            "id": agent_id_for(host),
            "agent_type": body.agent_type,
            "binary": "vxnet-agent",
            "host": host,
            "topic": "N/A",
            "alive": True,
            "admin_state_up": old["admin_state_up"] if old else True,
            "heartbeat_timestamp": now,
            "created_at": old["created_at"] if old else now,
            "started_at": now,
            "configurations": {"underlay_ip": body.underlay_ip, "gateway": body.gateway,
                               "external_interface": body.external_interface},
            "availability_zone": None,
            "description": old["description"] if old else "",
            "resources_synced": None,
        }
        compares = [Compare(rkey, "mod", "==", rec_kv.mod_revision) if rec_kv else key_missing(rkey),
                    Compare(lkey, "mod", "==", live_kv.mod_revision) if live_kv else key_missing(lkey)]
        live = json.dumps({"host": host, "lease": lease, "registered_at": now})
        if st.store.txn(compares, [Put(rkey, json.dumps(rec)), Put(lkey, live, lease)]).succeeded:
            break
    else:
        st.store.revoke_lease(lease)
        raise ApiError(409, "Conflict", f"Agent {host} is registering concurrently; try again")
    if live_kv is not None and live_kv.lease and live_kv.lease != lease:
        # The key now belongs to the new lease, so revoking the old one deletes nothing.
        st.store.revoke_lease(live_kv.lease)
    if body.gateway or (old and (old.get("configurations") or {}).get("gateway")):
        st.repo.transact(scheduler.reschedule)  # unscheduled routers get this gateway host
    return {"host": host, "agent_id": rec["id"], "lease_ttl": ttl, "heartbeat_interval": heartbeat_interval(st)}


@router.post("/hosts/{host}/heartbeat")
async def heartbeat(host: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    require_service(st.context(request))
    kv = st.store.get(live_key(host))
    not_registered = ApiError(404, "AgentNotFound", f"Agent for host {host} is not registered")
    if kv is None or not kv.lease:
        raise not_registered
    try:
        st.store.refresh_lease(kv.lease)
    except LeaseNotFound:
        raise not_registered from None
    rkey = res_key("agents", agent_id_for(host))
    rec_kv = st.store.get(rkey)
    if rec_kv is None:
        raise not_registered
    rec = json.loads(rec_kv.value)
    stamp = dt.datetime.strptime(rec["heartbeat_timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
    if not rec["alive"] or time.time() - stamp.timestamp() >= HEARTBEAT_RECORD_INTERVAL:
        rec["alive"] = True
        rec["heartbeat_timestamp"] = agent_time()
        # Best effort: a concurrent change of the record wins; the next heartbeat retries.
        st.store.txn([Compare(rkey, "mod", "==", rec_kv.mod_revision)], [Put(rkey, json.dumps(rec))])
    return {"alive": True}


@router.get("/hosts/{host}/view")
async def view(host: str, request: Request) -> StreamingResponse:
    st = AppState.of(request)
    require_service(st.context(request))
    _check_host(host)
    since_s = request.query_params.get("since")
    since: int | None = None
    if since_s is not None:
        try:
            since = int(since_s)
        except ValueError:
            raise bad_request(f"Invalid since '{since_s}': expected a revision number") from None
        if since < 0:
            raise bad_request(f"Invalid since '{since_s}': expected a revision number")
    hub = hub_of(st)
    if request.query_params.get("epoch", hub.epoch) != hub.epoch:
        since = None  # a revision of another store (before a migration): start from a snapshot
    sub = hub.subscribe(host, since)
    # A stream never ends on its own. A vanished client is noticed by the next write (at the
    # latest the next ping); a server shutting down must cancel streams after a grace period
    # (uvicorn's timeout_graceful_shutdown), or it waits for them forever.

    async def lines() -> AsyncIterator[bytes]:
        try:
            while not sub.closed:
                if sub.lines:
                    batch = b"".join(sub.lines)
                    sub.lines.clear()
                    yield batch
                    continue
                sub.ready.clear()
                try:
                    await asyncio.wait_for(sub.ready.wait(), timeout=PING_INTERVAL)
                except TimeoutError:
                    yield hub.ping_line()
        finally:
            hub.unsubscribe(sub)

    return StreamingResponse(lines(), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/hosts/{host}/ports-status")
async def ports_status(host: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    require_service(st.context(request))
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - {"ACTIVE", "DOWN"}:
        raise bad_request("Body must be {\"ACTIVE\": [port ids], \"DOWN\": [port ids]}")
    wanted: dict[str, str] = {}
    for status in ("DOWN", "ACTIVE"):
        ids = body.get(status, [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise bad_request(f"'{status}' must be a list of port ids")
        for i in ids:
            wanted[i] = status

    def txn(uow: UnitOfWork) -> list[str]:
        changed = []
        for pid, status in wanted.items():
            port = uow.get("ports", pid)
            if port is None or port.get("binding:host_id") != host or port.get("status") == status:
                continue
            port["status"] = status
            _touch(port)
            uow.put("ports", port)
            changed.append(pid)
        return changed

    changed = st.repo.transact(txn) if wanted else []
    return {"updated": changed}
