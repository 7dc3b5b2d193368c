"""The server's one store watch: agents' views (per-host logs and streams) and change listeners.

One `Hub` per server process and app: one store watch on `/vxnet/` from the revision of one
initial `range`, feeding `ViewIndex` on the event loop (callbacks come on the committing thread
and are handed over with `call_soon_threadsafe`). Every value is parsed once, here; listeners
(the UI's change feed) get each revision's changes as (collection, id, before, after) plus
`objects()`, the hub's own copy of every resource, so nothing else keeps a watch or a copy.
On etcd with the read cache on, the hub's watch rides the store mirror's stream (docs/store.md,
"One watch per server"): one watch of etcd per server, not one for the mirror and one here.

For every tracked host (registered or subscribed) the hub keeps the recent update lines that
touched the host (all hosts' logs together hold at most LOG_BYTES; the oldest lines go first),
and `floor[host]`: every update after that revision is in the log. A stream with
`since >= floor` replays the log after `since`; otherwise it starts with a snapshot. So an agent
resumes without a snapshot on this server, or on another server that was already running, as
long as the log reaches back far enough. A subscriber that falls LOG_LENGTH lines behind is
disconnected (it resumes or gets a snapshot). If applying a change ever fails, the hub reloads
everything and sends every stream a snapshot (full recompute fallback); listeners get
`on_reload`.

An update of a revision written by an API request carries `request_id` (the request's
X-Openstack-Request-Id, from the `meta/request` key written in the same transaction).

A put of `doctor/request` (services/operations.py) sends a `doctor` line to the streams of the
hosts it names: agents compare desired and kernel state and answer over HTTP.

Pings carry a revision: "nothing for you up to here", so a resumed `since` stays recent.
Invariant: a stream never claims a revision it has not delivered. A ping is sent only when the
stream's queue is empty, and it names the hub's revision at that moment: every update of this
host up to it has already been written to the stream (updates are queued on the loop in the same
step that advances `revision`). The agent resumes from the last revision it was told, so a ping
that overtook a queued update would make a reconnect skip that update forever.

A snapshot (`Snapshot`) holds the ids and objects of the view at its revision (the index
replaces an object on a change, never edits one) and is written out while it is sent, in pieces:
the HTTP stream's flow control then keeps what a slow reader has not taken in its socket, not
1,000 whole snapshots in the server at a cold start. Its pieces make one NDJSON line, and
updates queued after it follow it; once it is sent the stream keeps neither the snapshot nor
its last piece (`RELEASE`). Stream JSON is written by orjson (a value it refuses, an
integer beyond 64 bits, by the standard library; orjson writes a non-finite float as null).
The hub's objects are `compact`ed (services/compact.py: shared field names and repeated values,
key-sharing dicts, one shared empty list and dict that refuse changes: nothing changes a hub
object), and an object's id is one string, its own `id`, also where the index holds it. Each is
attached to the KeyValue it was parsed from (`KeyValue.attach`): on a store that keeps its
KeyValues the repo's listings return the hub's objects instead of parsing copies of their own
(services/repo.py), the hub takes a copy the repo parsed first, and the store drops the value's
text, holding the hub's object instead (contract.StoredKeyValue; after a load, in steps on the
loop: `_drop_texts`).

The hub does no store I/O on the event loop after `start` (which runs before serving): the
store revision a subscribe needs is read by the caller off the loop, unless the store answers
it from memory (`revision_in_memory`: the embedded store).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol

import orjson

from vxnet import heap
from vxnet.services.agents import LIVE_PREFIX, STATUS_PREFIX
from vxnet.services.compact import compact, parse_resource
from vxnet.services.host_view import COLLECTIONS, peer_copy
from vxnet.services.operations import DOCTOR_KEY
from vxnet.services.repo import EPOCH_KEY, REQUEST_KEY, ROOT
from vxnet.services.view_index import ViewIndex
from vxnet.store.contract import CompactedError, Event, EventType, KeyValue, Put, Store, WatchHandle, key_missing

log = logging.getLogger("vxnet.agents")

PING_INTERVAL = 5.0
LOG_LENGTH = 4096  # lines a stream may fall behind before it is cut
# All hosts' replay logs together, lines as sent. (Deflating them was tried: besides its CPU,
# zlib releases the GIL on every call, so a busy worker thread can keep the loop waiting up to
# the interpreter's switch interval, 5 ms, for each line of a revision.)
LOG_BYTES = 32 * 1024 * 1024
RES_PREFIX = f"{ROOT}res/"
DROP_STEP = 2000  # values whose text is dropped per step on the loop after a load (~3 ms)
# An empty piece, yielded after a snapshot or a large batch: the HTTP response that iterates the
# stream (Starlette's StreamingResponse) holds the piece it sent last until it gets the next one,
# so without it an idle stream kept its snapshot's last piece (up to Snapshot.CHUNK bytes; 1,000
# streams after a cold start: ~130 MiB). An empty body part writes nothing on the wire.
RELEASE = b""
RELEASE_AFTER = 16 * 1024

Obj = dict[str, Any]
Objects = dict[str, dict[str, Obj]]  # collection -> id -> object
Change = tuple[str, str, "Obj | None", "Obj | None"]  # collection, id, before, after


class Listener(Protocol):
    """Something fed by the hub's watch (the UI's change feed)."""

    def on_changes(self, revision: int, changes: list[Change], objects: Objects) -> None:
        """One store revision, after the hub applied it; `objects` is the state after it."""

    def on_reload(self, revision: int) -> None:
        """The hub reloaded everything (a full resync); earlier notifications may be missing."""


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


def classify(key: str) -> tuple[str, str] | None:
    """(collection, id) of a key listeners hear about: resources, and liveness keys as
    collection "agents" (id = host); else None."""
    if key.startswith(LIVE_PREFIX):
        return "agents", key[len(LIVE_PREFIX):]
    if key.startswith(RES_PREFIX):
        coll, sep, id_ = key[len(RES_PREFIX):].partition("/")
        if sep:
            return coll, id_
    return None


def _parse(value: str) -> Obj:
    try:
        obj = parse_resource(value)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _attached(kv: KeyValue) -> Obj | None:
    """The parsed object attached to `kv`, if it is one the hub can hold (a JSON object)."""
    obj = kv.parsed
    return obj if isinstance(obj, dict) else None


def _parsed(kv: KeyValue) -> Obj:
    """The hub's object of a stored resource: the parsed copy attached to `kv` (by the repo's
    listing, or the hub itself before a reload), else parsed now and attached, so the repo's
    listings return this copy instead of parsing one of their own."""
    obj = _attached(kv)
    if obj is not None:
        return obj
    obj = _parse(kv.value)  # {} for a value that is not a JSON object: not attached
    if obj:
        kv.attach(obj)
    return obj


def _owners_first(messages: dict[str, Any], changes: list[Change]) -> list[str]:
    """The hosts of `messages`, those a changed port is bound to (before or after) first. Their
    streams are woken in this order and each write of a line costs the loop a send (0.07-0.3 ms
    on the 2-vCPU test machine's loopback, GIL held): the host that plugs the port is on the path of its
    first packet, the peers that learn of it are not as much."""
    if len(messages) < 2:
        return list(messages)
    owners = {obj.get("binding:host_id") for coll, _, before, after in changes if coll == "ports"
              for obj in (before, after) if obj}
    return sorted(messages, key=lambda h: h not in owners)  # stable: the index's order otherwise


def dumps(obj: Any) -> bytes:
    """Compact JSON (UTF-8) of `obj`: orjson, or the standard library for what orjson refuses
    (an integer beyond 64 bits)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Snapshot:
    """A host's view at one revision, written out when it is sent, in pieces of about CHUNK
    bytes: the stream's flow control then bounds what a slow reader holds in the server (at a
    cold start, 1,000 snapshots of ~300 KB each were queued at once). It holds the objects the
    view had at `revision` (the index replaces objects, it never changes one), so a piece written
    later still belongs to that revision. The host's own ports come first, written whole; the
    other ports in their `peer_form`. (Writing each object out once for all the snapshots of a
    burst was tried: at 100,000 ports a cold start writes ~75 MB of distinct peer forms, and
    under a 32 MiB bound only ~40% were found again, so it cost more CPU than it saved; see
    docs/benchmarks.md, 2026-12-07.)"""

    CHUNK = 256 * 1024
    GROUP = 64  # objects serialised in one call

    def __init__(self, head: bytes, host: str, sections: list[tuple[str, list[str], list[Any], int]]) -> None:
        self.head = head
        self.host = host
        self.sections = sections

    def chunks(self) -> Iterator[bytes]:
        buf = [self.head]
        size = len(self.head)
        for key, ids, objs, own in self.sections:
            buf.append(b',"' + key.encode() + b'":{')
            start = 0
            while start < len(ids):
                stop = start + self.GROUP
                if start < own:    # the host's own ports: shown whole
                    stop = min(stop, own)
                    values = objs[start:stop]
                else:
                    values = list(map(peer_copy, objs[start:stop])) if key == "ports" else objs[start:stop]
                part = dumps(dict(zip(ids[start:stop], values, strict=True)))
                if start:
                    buf.append(b",")
                buf.append(memoryview(part)[1:-1])   # the braces left out without a copy
                size += len(part)
                start = stop
                if size >= self.CHUNK:
                    yield b"".join(buf)
                    buf, size = [], 0
            buf.append(b"}")
        buf.append(b"}}\n")
        yield b"".join(buf)

    def __bytes__(self) -> bytes:
        return b"".join(self.chunks())


async def wait_within(aw: Awaitable[Any], timeout: float) -> Any:
    """`await aw`, or TimeoutError after `timeout` seconds. Unlike `asyncio.wait_for` of Python
    3.11, which wraps `aw` in a task of its own (its result then takes three loop steps to reach
    the waiting coroutine), this awaits `aw` in the caller's task: a line `push`ed by the hub's
    `_apply` is written by its stream in the next loop step, before the bind's own PUT handler
    (resumed from its worker thread after the commit's watch callback was queued) renders, sends
    and logs its answer."""
    async with asyncio.timeout(timeout):
        return await aw


class Subscriber:
    """One open stream: lines waiting to be sent."""

    def __init__(self, host: str, since: int) -> None:
        self.host = host
        self.since = since  # updates up to this revision are known to the agent already
        self.lines: collections.deque[bytes | Snapshot] = collections.deque()
        self.ready = asyncio.Event()
        self.closed = False

    def take(self) -> bytes:
        """Everything queued, written out (and no longer queued)."""
        out = b"".join(bytes(x) for x in self.lines)
        self.lines.clear()
        return out

    def push(self, line: bytes | Snapshot, rev: int | None = None) -> None:
        """Queue a line; an update at or before `since` is skipped (the agent has it)."""
        if rev is not None and rev <= self.since:
            return
        if len(self.lines) >= LOG_LENGTH:
            self.closed = True  # too slow: let it reconnect and resume (or take a snapshot)
        else:
            self.lines.append(line)
        self.ready.set()


class Hub:
    """The server's one store watch, the view index, per-host logs, open streams, listeners."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.epoch = store_epoch(store)  # revisions are positions in this store only
        self.index = ViewIndex()
        self.revision = 0
        self.others: Objects = {}  # resources outside COLLECTIONS: agent records, tags, ...
        self.live: dict[str, Obj] = {}  # liveness keys by host (listeners see them as "agents")
        self.logs: dict[str, collections.deque[tuple[int, bytes]]] = {}
        self.floor: dict[str, int] = {}
        self._log_order: collections.deque[tuple[str, int, int]] = collections.deque()  # host, rev, size
        self._log_bytes = 0
        self.subs: dict[str, set[Subscriber]] = {}
        self.listeners: list[Listener] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._watch: WatchHandle | None = None
        self.on_liveness_lost: Callable[[str], None] | None = None
        self.fanout_seconds: Any = None  # a prometheus Histogram, set by the API's setup
        self.last_change: dict[str, int] = {}  # host -> last revision that changed its view (`vxnet status`)
        self.reports: dict[str, Obj] = {}      # host -> its agent's last status report (`agent-status/`)
        # The server's hub (set by its setup): a load runs without the cyclic garbage collector
        # and ends with `gc.freeze()`, so later full collections skip the loaded objects
        # (100,000 ports: one full collection scanned ~1.1 M objects, 1-2 s on a shared vCPU).
        self.freeze_gc = False

    # start / stop ------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Load everything and watch from there (call before serving: it reads the store)."""
        if self.loop is not None:
            return
        self.loop = loop
        self._load()
        self._watch_from_here()

    def _watch_from_here(self) -> None:
        while True:
            try:
                self._watch = self.store.watch(ROOT, self.revision + 1, self._on_events, self._on_watch_error)
                return
            except CompactedError:  # compacted between the range and the watch: list again
                self.resync()

    def _on_watch_error(self, exc: Exception) -> None:
        """Store thread: the watch ended by itself (history compacted under it, store closed).
        Relist off the loop, then install it and watch again on the loop."""
        loop = self.loop
        if loop is None or loop.is_closed() or self._watch is None:
            return
        log.warning("store watch ended (%s): reloading every view", exc)

        def fetched(fut: asyncio.Future[tuple[Any, ...]]) -> None:
            if self._watch is None or fut.exception() is not None:
                if fut.exception() is not None:
                    log.error("reload after a lost watch failed: %s; retrying", fut.exception())
                    loop.call_later(1.0, self._on_watch_error, exc)
                return
            self.resync(fut.result())
            self._watch_from_here()

        def go() -> None:
            loop.run_in_executor(None, self._fetch).add_done_callback(fetched)

        with contextlib.suppress(RuntimeError):  # loop closing
            loop.call_soon_threadsafe(go)

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        for subs in self.subs.values():
            for s in subs:
                s.closed = True
                s.ready.set()

    def objects(self) -> Objects:
        """Every resource the hub holds (the index's collections and the others); read-only."""
        return {**self.others, **self.index.objects}

    def _fetch(self) -> tuple[Any, ...]:
        """The store reads of a load (blocking; may run on a worker thread)."""
        kvs, rev = self.store.range(RES_PREFIX)
        live, _ = self.store.range(LIVE_PREFIX)
        reports, _ = self.store.range(STATUS_PREFIX)
        return kvs, rev, live, reports

    def _load(self, fetched: tuple[Any, ...] | None = None) -> None:
        if not self.freeze_gc:
            self._drop_texts(self._load_all(fetched))
            return
        enabled = gc.isenabled()
        gc.disable()  # the load makes millions of objects and no garbage cycles
        try:
            attached = self._load_all(fetched)
        finally:
            if enabled:
                gc.enable()
        gc.freeze()
        self._drop_texts(attached)

    def _drop_texts(self, kvs: list[KeyValue]) -> None:
        """Let the store drop the text of each value the load attached a parse to
        (`KeyValue.drop_text`, contract.StoredKeyValue: ~1.4 us each, 0.15-0.3 s for 100,000
        ports) after the load, in steps of DROP_STEP on the loop when it runs (off the start
        path: the start serves as soon as the index is loaded), else at once. The server's hub
        then gives the freed pages back: the texts came from glibc's heap, where the parsed
        objects (Python's own arenas) cannot reuse them."""
        loop = self.loop

        def step(start: int) -> None:
            for kv in kvs[start:start + DROP_STEP]:
                kv.drop_text()
            if start + DROP_STEP < len(kvs) and loop is not None and loop.is_running():
                loop.call_soon(step, start + DROP_STEP)
            elif self.freeze_gc:
                heap.trim()

        if loop is not None and loop.is_running():
            loop.call_soon(step, 0)
        else:
            for kv in kvs:
                kv.drop_text()
            if self.freeze_gc:
                heap.trim()

    def _load_all(self, fetched: tuple[Any, ...] | None = None) -> list[KeyValue]:
        """Load every object; the KeyValues it attached a new parse to (their text not yet
        dropped: `_drop_texts`)."""
        kvs, rev, live, reports = fetched or self._fetch()
        self.reports = {kv.key[len(STATUS_PREFIX):]: _parse(kv.value) for kv in reports}
        objects: Objects = {c: {} for c in COLLECTIONS}
        others: Objects = {}
        keep = [(coll, id_, kv) for kv in kvs
                for coll, _, id_ in [kv.key[len(RES_PREFIX):].partition("/")]]
        # Parsed a batch at a time (one document per batch, faster than one parse per value) and
        # `compact`ed: only one batch's parsed copies exist at once. A value with a parsed copy
        # attached already (a reload; the repo listed it) keeps that copy; a new one is attached.
        values: list[Obj] = []
        attached: list[KeyValue] = []
        for start in range(0, len(keep), 1000):
            batch = [kv for _, _, kv in keep[start:start + 1000]]
            held = [_attached(kv) for kv in batch]   # read once: a listing may attach one meanwhile
            todo = [kv for kv, obj in zip(batch, held, strict=True) if obj is None]
            try:
                fresh = [compact(v, share_empty=True) if isinstance(v, dict) else {}
                         for v in json.loads("[" + ",".join(kv.value for kv in todo) + "]")]
            except ValueError:  # a value that is not JSON: parse one by one
                fresh = [_parse(kv.value) for kv in todo]
            parsed = iter(fresh)
            for kv, obj in zip(batch, held, strict=True):
                if obj is None:
                    obj = next(parsed)
                    if obj:
                        kv.attach(obj, drop=False)
                        attached.append(kv)
                values.append(obj)
        for (coll, id_, _), obj in zip(keep, values, strict=True):
            if obj.get("id") == id_:
                id_ = obj["id"]  # one copy of the id: the object's own
            (objects if coll in objects else others).setdefault(coll, {})[id_] = obj
        agents = others.get("agents", {})
        self.index.load(objects, agents)
        self.others = others
        for rec in agents.values():
            self.index.track(rec["host"])
        self.live = {kv.key[len(LIVE_PREFIX):]: _parse(kv.value) for kv in live}
        self.revision = rev
        for h in self.index.members:
            self.floor[h] = rev
            self.logs[h] = collections.deque()
        return attached

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
            changes: list[Change] = []
            index_changes: list[tuple[str, str, Obj | None]] = []
            for e in events:
                where = classify(e.kv.key)
                if where is None:
                    continue
                coll, id_ = where
                after = _parsed(e.kv) if e.type is EventType.PUT else None
                live = e.kv.key.startswith(LIVE_PREFIX)
                if coll in COLLECTIONS:
                    before = self.index.objects[coll].get(id_)
                    if before is not None and before.get("id") == id_:
                        id_ = before["id"]   # the index's copy of the id, kept by the new object
                        if after is not None and after.get("id") == id_:
                            after["id"] = id_
                    elif after is not None and after.get("id") == id_:
                        id_ = after["id"]
                    index_changes.append((coll, id_, after))
                else:
                    bucket = self.live if live else self.others.setdefault(coll, {})
                    before = bucket.get(id_)
                    if after is None:
                        bucket.pop(id_, None)
                    else:
                        bucket[id_] = after
                    if coll == "agents" and not live:
                        index_changes.append((coll, id_, after))
                changes.append((coll, id_, before, after))
            messages = self.index.apply(index_changes)
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
        request_id = next((e.kv.value for e in events
                           if e.type is EventType.PUT and e.kv.key == REQUEST_KEY), None)
        if request_id is not None and messages and log.isEnabledFor(logging.DEBUG):  # no sort per revision
            log.debug("revision %d (request %s) updates the views of %s", rev, request_id, ",".join(sorted(messages)))
        for e in events:
            if e.type is EventType.PUT and e.kv.key == DOCTOR_KEY:
                self._doctor(e.kv.value)
            elif e.kv.key.startswith(STATUS_PREFIX):
                if e.type is EventType.PUT:
                    self.reports[e.kv.key[len(STATUS_PREFIX):]] = _parse(e.kv.value)
                else:
                    self.reports.pop(e.kv.key[len(STATUS_PREFIX):], None)
        for h in _owners_first(messages, changes):
            msg = messages[h]
            self.last_change[h] = rev
            body: dict[str, Any] = {"type": "update", "revision": rev}
            if request_id is not None:
                body["request_id"] = request_id  # the API call that produced this revision
            body.update(msg.wire())
            line = dumps(body) + b"\n"
            self._record(h, rev, line)
            for s in self.subs.get(h, ()):
                s.push(line, rev)
        if self.fanout_seconds is not None:
            self.fanout_seconds.observe(time.perf_counter() - started)
        if changes and self.listeners:
            objects = self.objects()
            for listener in list(self.listeners):
                try:
                    listener.on_changes(rev, changes, objects)
                except Exception:  # one listener's bug must not stop the views
                    log.exception("change listener failed at revision %d", rev)

    def _doctor(self, value: str) -> None:
        """A doctor request: a `doctor` line to the streams of the hosts it names (not logged
        for replay: an agent that is not connected now does not answer)."""
        doc = _parse(value)
        hosts = doc.get("hosts")
        line = (json.dumps({"type": "doctor", "id": doc.get("id"), "repair": bool(doc.get("repair")),
                            "hosts": hosts}, separators=(",", ":")) + "\n").encode()
        for h, subs in self.subs.items():
            if hosts is None or h in hosts:
                for s in subs:
                    s.push(line)

    def _record(self, host: str, rev: int, line: bytes) -> None:
        """Log `line` for `host`'s resume; evict the oldest lines over LOG_BYTES."""
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

    def resync(self, fetched: tuple[Any, ...] | None = None) -> None:
        """Reload every object (from `fetched` when the reads were made off the loop) and send
        every open stream a snapshot."""
        self._log_order.clear()
        self._log_bytes = 0
        self._load(fetched)
        for host, subs in self.subs.items():
            self.index.track(host)
            self.floor[host] = self.revision
            self.logs[host] = collections.deque()
            for s in subs:
                s.since = self.revision
                s.push(self.snapshot(host))
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):
                listener.on_reload(self.revision)

    # streams -----------------------------------------------------------------------------------
    def snapshot(self, host: str) -> Snapshot:
        """The snapshot message of `host` at the current revision, to be written out later."""
        me = self.index.hosts.get(host) or {"host": host, "underlay_ip": None, "alive": False, "gateway": False}
        head = dumps({"type": "snapshot", "revision": self.revision, "epoch": self.epoch})[:-1] + b',"view":{"host":' \
            + dumps(me)
        return Snapshot(head, host, self.index.snapshot_items(host))

    def snapshot_line(self, host: str) -> bytes:
        return bytes(self.snapshot(host))

    def subscribe(self, host: str, since: int | None, store_revision: int) -> Subscriber:
        """A new stream for `host`, primed with a snapshot or the log after `since`.
        `store_revision`: the store's current revision, read by the caller off the loop (a
        `since` beyond it belongs to another store)."""
        if self.index.track(host):
            self.floor[host] = self.revision
            self.logs[host] = collections.deque()
        store_revision = max(store_revision, self.revision)
        floor = self.floor.get(host, self.revision)
        replay: list[tuple[int, bytes]] = []
        if since is not None and floor <= since <= store_revision:
            replay = [(rev, line) for rev, line in self.logs.get(host, ()) if rev > since]
        if since is None or since < floor or since > store_revision or len(replay) >= LOG_LENGTH:
            sub = Subscriber(host, self.revision)  # a snapshot is shorter than a long replay
            sub.push(self.snapshot(host))
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

    def ping_line(self, sub: Subscriber) -> bytes:
        """"Nothing for you up to here": only valid while `sub` has nothing queued."""
        assert not sub.lines, "a ping must not overtake queued updates"
        return (json.dumps({"type": "ping", "revision": max(self.revision, sub.since)}) + "\n").encode()

    async def lines(self, sub: Subscriber,
                    wait: Callable[[Awaitable[Any], float], Awaitable[Any]] | None = None) -> AsyncIterator[bytes]:
        """The stream of `sub`: queued lines as they come, a ping after PING_INTERVAL of silence.
        Ends when the subscriber is closed (unsubscribing it). `wait` (`wait_within` by
        default) is a seam for tests that need a given interleaving."""
        wait_for = wait or wait_within
        try:
            while not sub.closed:
                if sub.lines:
                    head = sub.lines[0]
                    if isinstance(head, Snapshot):  # in pieces, each sent before the next is made
                        sub.lines.popleft()
                        for chunk in head.chunks():
                            yield chunk
                        del head, chunk  # the objects at its revision, its last piece: not kept
                        yield RELEASE
                        continue
                    batch = []
                    while sub.lines and not isinstance(sub.lines[0], Snapshot):
                        batch.append(sub.lines.popleft())
                    out = b"".join(batch)  # type: ignore[arg-type]
                    del batch
                    yield out
                    if len(out) >= RELEASE_AFTER:
                        del out
                        yield RELEASE
                    continue
                sub.ready.clear()
                try:
                    await wait_for(sub.ready.wait(), PING_INTERVAL)
                except TimeoutError:
                    # Updates may have been queued after the timeout fired and before this
                    # resumed: they go first, or the ping would claim a revision not delivered.
                    if not sub.lines and not sub.closed:
                        yield self.ping_line(sub)
        finally:
            self.unsubscribe(sub)
