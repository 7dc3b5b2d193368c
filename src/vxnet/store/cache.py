"""Watch-fed read cache for the etcd store: a local mirror of every key, kept by one watch.

How it is kept: a full range read of the whole key space at one revision R (paged, every page
at R), then one watch of the whole key space from R+1. The events of a watch response are
applied in one step under the lock, and etcd never splits one revision over two responses
(it would only with `fragment`, which we do not ask for), so the mirror is always exactly the
cluster's state at `revision`. Every revision changes at least one key (etcd makes no revision
for a txn that changes nothing), so watching every key means the mirror reaches every revision.
A lost stream resumes from `revision + 1` on the next member; a watch cancelled for compaction
(the mirror fell behind the compaction point) reloads everything.

When the mirror serves reads ("live"): only once it has caught up. etcd answers a watch's
`created` before it has sent any history: a watch that starts in the past (a resume after an
outage, a reconnect to another member) is an "unsynced" watcher, fed by etcd's background sync
loop (every 100 ms), which only then sends the missed events, or the cancel for compaction.
Going live on `created` served the pre-outage state for up to that long (seen: 74 ms). So on
`created` the mirror reads the cluster's current revision T linearizably (after the watch
exists, so every revision up to T will reach it through the stream) and goes live only when
it has applied T. Every read it then serves is at least as new as any read or write that
completed before the watch was (re)established. A stream that does not catch up within
`catchup_timeout` (a lagging or partitioned member streams nothing new) is restarted on the
next member; until then reads go to etcd.

A member cut off from the leader (partition, its peers gone) keeps serving a watch but sends
nothing: the watch is opened with etcd's require-leader flag, so etcd ends it once the member
has no leader (measured: about 5 s after the peers stopped, etcd 3.4); the mirror then resumes
on the next member. Until then a server that writes nothing may serve the state of the moment
the member was cut off (its own writes and reads still raise the floor: such a read waits at
most `cache_wait`, then reads etcd and restarts the stream).

What the mirror promises to `EtcdStore` (which decides when to use it):
- `wait(floor, timeout)` returns True only when the watch is connected, the mirror has caught
  up with the cluster's revision read after the watch was created, and it has reached `floor`;
  otherwise the caller reads etcd itself. A wait that times out while the stream looks
  connected restarts the stream on the next member (a partitioned member keeps a stream open
  but sends nothing).
- `get`/`range`/`revision` answer from the mirror; `range` returns keys and the revision they
  are consistent at, taken under one lock.
Nothing here writes: transactions and compares always go to etcd.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from aetcd import rpc

from vxnet.store.contract import CompactedError, Event, EventType, KeyValue, Sharer, StoreError, WatchCallback
from vxnet.store.etcd_grpc import Channels, WatchStream, key_value
from vxnet.store.keyset import KeySet

log = logging.getLogger(__name__)


class EtcdGateway(Protocol):
    """What the mirror uses of its etcd backend (`etcd_store.EtcdStore`): its unary calls, its
    transport (for the watch stream), its endpoint rotation and whether it is closed."""

    _rpc: Channels
    _closed: threading.Event

    def _call(self, method: str, request: Any, *, idempotent: bool) -> Any: ...
    def _current(self) -> str: ...
    def _rotate(self, failed: str) -> None: ...

ALL = b"\0"    # key "\0" with range_end "\0": every key (etcd's "all keys >= key")
PAGE = 2000    # keys per page of the initial load
# Keys the mirror does not hold: the exactly-once attempt markers (services/repo.py TXN_PREFIX),
# one put and one lease-expiry delete per write, read only linearizably from etcd. Their events
# still advance the mirror's revision (every revision reaches it); `EtcdStore` sends reads and
# watches that could include them to etcd.
UNMIRRORED = "/vxnet-txn/"
_UNMIRRORED_RAW = UNMIRRORED.encode()   # tested on the wire's bytes, before decoding
_DELETE = rpc.Event.DELETE
SHRINK_AFTER = 50_000  # deleted keys after which the mirror's dict is rebuilt (a dict never shrinks)
HISTORY = 1024  # revisions of events kept to start a watch a little in the past (old values: memory)


def unmirrored(prefix: str) -> bool:
    """Whether keys under `prefix` may be keys the mirror does not hold."""
    return UNMIRRORED.startswith(prefix) or prefix.startswith(UNMIRRORED)


class WatchCalls:
    """A watch's calls of its owner: `_deliver` a batch (nothing once cancelled), `_fail` once
    with the error that ends it. A callback's or handler's exception is logged: it hurts
    neither the stream nor the other watches."""

    prefix: str
    callback: WatchCallback
    on_error: Callable[[Exception], None] | None
    cancelled: threading.Event

    def _deliver(self, events: list[Event]) -> None:
        if events and not self.cancelled.is_set():
            try:
                self.callback(events)
            except Exception:
                log.exception("watch callback for %s failed", self.prefix)

    def _fail(self, exc: Exception) -> None:
        if self.cancelled.is_set():
            return
        self.cancelled.set()
        if self.on_error is not None:
            try:
                self.on_error(exc)
            except Exception:
                log.exception("watch error handler for %s failed", self.prefix)


class Subscription(WatchCalls):
    """A watch served from the mirror's stream (`Mirror.subscribe`): the revisions of `prefix`
    in order, as a store watch delivers them; `cancel` stops it.

    Delivered on the mirror's own thread, right after it applied them (and on the subscriber's
    thread, inside `subscribe`, for the recent past it replays), never under the mirror's lock,
    one delivery at a time (`Mirror._deliver_lock`). No thread of its own: the contract's
    callbacks must not block (the embedded store calls them on the committing thread, under
    its lock), and a hand-over to another thread put one more wake-up between etcd's watch
    response and the view hub, on the path of every change to the agents (its cost was in the
    tail: p90 0.27-0.80 ms with it, 0.15-0.24 without, at load 7-11; docs/benchmarks.md,
    session 17)."""

    def __init__(self, mirror: Mirror, prefix: str, start: int, callback: WatchCallback,
                 on_error: Callable[[Exception], None] | None) -> None:
        self.mirror = mirror
        self.prefix = prefix
        self.next_rev = start
        self.callback = callback
        self.on_error = on_error
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()
        self.mirror._unsubscribe(self)



class Mirror:
    """Every key of the cluster, as of `revision` (see the module docstring)."""

    def __init__(self, store: EtcdGateway, catchup_timeout: float = 5.0) -> None:
        self._store = store
        self._catchup_timeout = catchup_timeout
        self._cond = threading.Condition(threading.Lock())
        # Held while subscriptions are called (after `_cond` is let go, never the other way
        # round): a subscriber's replay of the recent past is delivered before anything newer.
        self._deliver_lock = threading.RLock()
        self._kv: dict[str, KeyValue] = {}
        self._keys = KeySet()
        self._deleted = 0           # keys deleted since `_kv` was last sized (see `_apply`)
        self._rev = 0
        self._live = False          # serving: the watch is open and the mirror reached `_target`
        self._target: int | None = None  # while catching up: the revision to reach before going live
        self._stream_no = 0         # counts streams, so a late catch-up timer hits only its own
        self.catchups = 0           # streams that had to catch up before going live (for tests)
        self._need_load = True
        self._stop = threading.Event()
        self._response: WatchStream | None = None
        self.loads = 0              # full loads so far (the first one included)
        self._subs: list[Subscription] = []
        # (revision, its events) of the last HISTORY revisions that changed mirrored keys; every
        # revision from `_hist_from` to `_rev` is in it or changed only unmirrored keys.
        self._hist: collections.deque[tuple[int, list[Event]]] = collections.deque()
        self._hist_from = 1
        self._compacted_at = 0
        self._load()                # fail early, like the store itself
        self._thread = threading.Thread(target=self._run, name="vxnet-etcd-mirror", daemon=True)
        self._thread.start()

    # --- reads (the store calls these after `wait` said yes) ----------------------------------

    def wait_live(self, timeout: float) -> bool:
        """True once the mirror is live (waiting at most `timeout` seconds, e.g. for its first
        load at a server's start)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._live or self._stop.is_set(), timeout) and self._live

    def wait(self, floor: int, timeout: float) -> bool:
        """True when the stream is connected and the mirror has reached `floor` (waiting at
        most `timeout` seconds for it); False means: read etcd instead."""
        with self._cond:
            if not self._live:
                return False
            if self._rev >= floor:
                return True
            ok = self._cond.wait_for(lambda: not self._live or self._rev >= floor, timeout)
            if ok and self._live:
                return True
            stuck = self._live
        if stuck:
            log.warning("etcd mirror at %d did not reach %d in %.1f s: restarting its watch", self._rev, floor,
                        timeout)
            self.kick()
        return False

    def get(self, key: str) -> KeyValue | None:
        return self._kv.get(key)

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        with self._cond:
            kv = self._kv
            return [kv[k] for k in self._keys.under(prefix)], self._rev

    def revision(self) -> int:
        return self._rev

    @property
    def live(self) -> bool:
        return self._live

    # --- watches (the store serves its watches from the mirror's stream) ----------------------

    def subscribe(self, prefix: str, start: int, callback: WatchCallback,
                  on_error: Callable[[Exception], None] | None) -> Subscription | None:
        """Deliver the events under `prefix` from revision `start` on, from this mirror's stream
        (no watch of its own on etcd), or None when the mirror's history no longer reaches back
        to `start` or the mirror is not live (then the store opens a watch of its own). Same
        order and batches as a store watch; `on_error` gets CompactedError when the mirror had
        to reload (it missed revisions, so the subscriber, which is where the mirror is, did
        too). Not live: the mirror may be behind `start` and behind a compaction it has not
        heard of yet; its reload would then cancel a watch whose history etcd still holds."""
        sub = Subscription(self, prefix, start, callback, on_error)
        with self._deliver_lock:
            with self._cond:
                if start < self._hist_from or not self._live:
                    return None
                past = [mine for rev, events in self._hist if rev >= start
                        if (mine := [e for e in events if e.kv.key.startswith(prefix)])]
                sub.next_rev = max(start, self._rev + 1)
                self._subs.append(sub)
            for mine in past:
                sub._deliver(mine)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._cond, contextlib.suppress(ValueError):
            self._subs.remove(sub)

    # --- upkeep -------------------------------------------------------------------------------

    def kick(self) -> None:
        """Drop the current stream; the loop reconnects (to the next member) and resumes."""
        resp = self._response
        if resp is not None:
            resp.shutdown()   # cancels the call: wakes the thread reading it

    def close(self) -> None:
        self._stop.set()
        self._set_down()
        self.kick()
        self._thread.join(5)
        with self._cond:
            subs, self._subs = self._subs, []
        for sub in subs:
            sub.cancel()

    def _load(self) -> None:
        """Replace the mirror by a full read of every key at one revision."""

        kvs: list[KeyValue] = []
        rev = 0
        start = ALL
        share = Sharer()  # one copy of equal revisions and short values
        while True:
            data = self._store._call("Range", rpc.RangeRequest(key=start, range_end=ALL, limit=PAGE, revision=rev),
                                     idempotent=True)
            rev = rev or data.header.revision
            page = [key_value(raw, share) for raw in data.kvs]
            kvs += [kv for kv in page if not kv.key.startswith(UNMIRRORED)]
            if not data.more or not page:
                break
            start = data.kvs[-1].key + b"\0"
        with self._cond:
            self._kv = {kv.key: kv for kv in kvs}
            self._deleted = 0
            self._keys = KeySet(kv.key for kv in kvs)
            self._rev = rev
            self._need_load = False
            self.loads += 1
            self._hist.clear()
            self._hist_from = rev + 1
            subs, self._subs = self._subs, []   # they missed what the mirror missed: relist
            self._cond.notify_all()
        with self._deliver_lock:
            for sub in subs:
                sub._fail(CompactedError(self._compacted_at or rev))

    def _apply(self, events: Any) -> None:
        """Apply one watch response's events (etcd `mvccpb.Event`s)."""
        parsed: list[Event] = []
        last = 0   # the last revision of the response, unmirrored keys included
        for raw in events:
            kv_raw = raw.kv
            if kv_raw.key.startswith(_UNMIRRORED_RAW):
                last = max(last, kv_raw.mod_revision)
                continue
            parsed.append(Event(EventType.DELETE if raw.type == _DELETE else EventType.PUT,
                                key_value(kv_raw, known=self._kv)))
        batches: list[tuple[int, list[Event]]] = []
        for ev in parsed:   # one batch per revision, as a store watch delivers them
            if batches and batches[-1][0] == ev.kv.mod_revision:
                batches[-1][1].append(ev)
            else:
                batches.append((ev.kv.mod_revision, [ev]))
        out: list[tuple[Subscription, list[Event]]] = []
        with self._cond:
            kvs, keys = self._kv, self._keys
            for ev in parsed:
                kv = ev.kv
                if ev.type is EventType.DELETE:
                    if kvs.pop(kv.key, None) is not None:
                        keys.discard(kv.key)
                        self._deleted += 1
                else:
                    if kv.key not in kvs:
                        keys.add(kv.key)
                    kvs[kv.key] = kv
            if self._deleted > SHRINK_AFTER and 4 * self._deleted > len(kvs):
                self._kv = dict(kvs)   # a dict never shrinks: one sized for the keys left
                self._deleted = 0
            hist = self._hist
            for rev, batch in batches:
                hist.append((rev, batch))
                for sub in self._subs:
                    if rev >= sub.next_rev:
                        mine = [e for e in batch if e.kv.key.startswith(sub.prefix)]
                        if mine:
                            out.append((sub, mine))
            while len(hist) > HISTORY:
                self._hist_from = hist.popleft()[0] + 1
            self._rev = max(self._rev, last, batches[-1][0] if batches else 0)
            if self._target is not None and self._rev >= self._target:
                self._target = None
                self._live = True
            self._cond.notify_all()
        if out:   # applied first: whatever a subscriber hears of, a read then shows
            with self._deliver_lock:
                for sub, mine in out:
                    sub._deliver(mine)

    def _created(self, stream_no: int) -> None:
        """The watch exists: go live once the mirror has reached the cluster's current revision
        (read now, linearizably, so that every later revision reaches us through this watch)."""
        data = self._store._call("Range", rpc.RangeRequest(key=ALL, count_only=True), idempotent=True)
        target = data.header.revision
        with self._cond:
            if self._rev >= target:
                self._live = True
                self._cond.notify_all()
                return
            self._target = target
            self.catchups += 1
        log.info("etcd mirror at %d catching up to %d before serving reads", self._rev, target)
        timer = threading.Timer(self._catchup_timeout, self._catchup_expired, (stream_no,))
        timer.daemon = True
        timer.start()

    def _catchup_expired(self, stream_no: int) -> None:
        with self._cond:
            stuck = self._stream_no == stream_no and self._target is not None
            rev, target = self._rev, self._target
        if stuck:
            log.warning("etcd mirror at %d did not reach %s in %.1f s: restarting its watch", rev, target,
                        self._catchup_timeout)
            self.kick()

    def _set_down(self) -> None:
        with self._cond:
            self._live = False
            self._target = None
            self._stream_no += 1
            self._cond.notify_all()

    def _run(self) -> None:
        store = self._store
        while not self._stop.is_set():
            ep = store._current()
            failed = True
            try:
                if self._need_load:
                    self._load()
                with self._cond:
                    stream_no = self._stream_no
                # require-leader: etcd ends the watch when its member has lost the leader
                # (partitioned, or its peers gone), instead of keeping a stream open that receives
                # nothing while the mirror keeps serving what it has.
                resp = store._rpc.watch(ep, rpc.WatchCreateRequest(key=ALL, range_end=ALL, start_revision=self._rev + 1),
                                        require_leader=True)
                with resp:
                    self._response = resp
                    if self._stop.is_set():
                        return
                    for res in resp:
                        if self._stop.is_set():
                            return
                        if res.created:
                            self._created(stream_no)
                        if res.canceled:
                            if res.compact_revision:   # history gone under us: reload everything
                                log.warning("etcd mirror behind the compaction point %s: reloading",
                                            res.compact_revision)
                                self._need_load = True
                                self._compacted_at = res.compact_revision
                                failed = False
                            break
                        if res.events:
                            self._apply(res.events)
            except (OSError, StoreError) as e:   # ConnectionError: the stream broke or etcd ended it
                log.debug("etcd mirror stream on %s ended: %s", ep, e)
            finally:
                self._response = None
                self._set_down()
            if self._stop.is_set() or store._closed.is_set():
                return
            if failed:
                store._rotate(ep)
                time.sleep(0.05)
