"""etcd backend of the store contract, over etcd's gRPC v3 API (`etcd_grpc`: one channel per
member, never-sent vs unanswered calls; see its docstring for why gRPC and not the JSON gateway).

Contract mapping and invariants:
- Revisions, create/mod revision, version and leases are etcd's own.
- Several ops on one key in one txn are coalesced (the later op wins), because etcd refuses
  duplicate keys in a txn. A prefix delete and a put under that prefix in the same txn are
  turned into explicit deletes of the keys found under the prefix (read just before).
- Writes are sent once: only a request that never reached a member (not connected) is retried
  on the next endpoint. A write whose answer was lost raises StoreUnavailable: it may have been
  applied, and only the caller knows whether retrying is safe. Reads are retried freely.
- A watch runs in its own thread, resumes after a failover from the last delivered revision + 1
  (no gap, no duplicate), delivers one batch per revision, and ends with `on_error` on
  compaction (CompactedError) or when the store is closed.

Reads and the read cache (`cache.Mirror`, on unless `cache=False`): `get`, `range` and
`revision` are served from a local mirror of every key, fed by one watch, instead of one etcd
round trip each. Consistency:
- Reads are serializable (the whole state at one revision the cluster had), at most one watch
  delay behind writes made through other clients (other servers): about a millisecond here.
- Never behind this store's own writes or earlier reads: every txn answer (succeeded or not)
  and every read raises a floor revision, and a read waits until the mirror has reached it
  (at most `cache_wait` seconds; then it reads etcd, and the mirror's stream is restarted).
  So a read after a successful write sees it, and a CAS retry after a failed compare sees at
  least the state that made it fail.
- `read_after(revision)` raises the floor to a revision learned elsewhere (the server's view
  hub watches on its own stream, which may run ahead of the mirror's): a request caused by
  what the hub delivered then reads at least what the hub had.
- After a write whose answer was lost (StoreUnavailable) the floor is unknown: the next read
  first asks etcd for its current revision (so reading back staged writes sees them if they
  landed).
- While the mirror's stream is down (member lost, reloading after compaction) reads go to etcd.
- Transactions, compares and leases always go to etcd: CAS stays linearizable.
- Keys under `cache.UNMIRRORED` (the exactly-once attempt markers) are not in the mirror: reads
  and watches that may include them go to etcd.

Watches, while the mirror is on, are served from the mirror's own stream (`Mirror.subscribe`):
one watch of the whole key space per store, not one per caller, so each event crosses the
wire and is decoded once per server. A watch starting further back than the mirror's recent
history (`cache.HISTORY` revisions) gets a watch of its own on etcd. Either way: in order, one
batch per revision, no gap, no duplicate, CompactedError when history was lost. A watch fed by
the mirror never runs ahead of the mirror's reads: whatever it delivered, a read then shows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from aetcd import rpc

from vxnet.store.cache import UNMIRRORED, Mirror, WatchCalls, unmirrored
from vxnet.store.contract import (
    CompactedError,
    Compare,
    Delete,
    Event,
    EventType,
    KeyValue,
    LeaseNotFound,
    Op,
    Put,
    StoreError,
    StoreUnavailable,
    TxnResult,
    TxnTooLarge,
    WatchCallback,
    prefix_end,
)
from vxnet.store.etcd_grpc import Channels, NeverSent, RpcFailed, Unanswered, WatchStream, key_value

log = logging.getLogger(__name__)

_TARGETS = {"create": (rpc.Compare.CREATE, "create_revision"), "mod": (rpc.Compare.MOD, "mod_revision"),
            "version": (rpc.Compare.VERSION, "version"), "value": (rpc.Compare.VALUE, "value")}
_RESULTS = {"==": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL, "<": rpc.Compare.LESS, ">": rpc.Compare.GREATER}
_DELETE = rpc.Event.DELETE


def _endpoint(text: str) -> str:
    text = text.strip()
    if not text.startswith(("http://", "https://")):
        text = "http://" + text
    return text.rstrip("/")


def _range(key: str, end: str = "", **fields: Any) -> Any:
    """A RangeRequest for `key` (to `end`, exclusive, if given)."""
    return rpc.RangeRequest(key=key.encode(), range_end=end.encode(), **fields)


# Error texts of a member whose request may still apply (its own deadline or cancellation hit
# while the proposal was in flight): never a definite "not applied".
_OUTCOME_UNKNOWN = ("context deadline exceeded", "context canceled")


class _EtcdError(StoreError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _batches(events: Any) -> list[list[Event]]:
    """A WatchResponse's events as contract Events, one batch per revision."""
    out: list[list[Event]] = []
    for raw in events:
        kv = key_value(raw.kv)
        ev = Event(EventType.DELETE if raw.type == _DELETE else EventType.PUT, kv)
        if out and out[-1][0].kv.mod_revision == kv.mod_revision:
            out[-1].append(ev)
        else:
            out.append([ev])
    return out


class _Watch(WatchCalls):
    """A watch of its own on etcd: its thread's stream delivers the batches."""

    def __init__(self, store: EtcdStore, prefix: str, start: int, callback: WatchCallback,
                 on_error: Callable[[Exception], None] | None) -> None:
        self.store = store
        self.prefix = prefix
        self.next_rev = start
        self.callback = callback
        self.on_error = on_error
        self.cancelled = threading.Event()
        self._stream: WatchStream | None = None
        self.thread = threading.Thread(target=self._run, name=f"vxnet-etcd-watch {prefix}", daemon=True)

    def cancel(self) -> None:
        self.cancelled.set()
        stream = self._stream
        if stream is not None:
            stream.shutdown()

    def _run(self) -> None:
        key, end = self.prefix.encode(), prefix_end(self.prefix).encode()
        while not self.cancelled.is_set():
            ep = self.store._current()
            create = rpc.WatchCreateRequest(key=key, range_end=end, start_revision=self.next_rev)
            try:
                stream = self._stream = self.store._rpc.watch(ep, create)
                if self.cancelled.is_set():
                    stream.shutdown()
                with stream:
                    for res in stream:
                        if self.cancelled.is_set():
                            return
                        if res.canceled:
                            if res.compact_revision:
                                self._fail(CompactedError(res.compact_revision))
                                return
                            break  # cancelled by the server for another reason: resume
                        for batch in _batches(res.events):
                            self._deliver(batch)
                            self.next_rev = batch[0].kv.mod_revision + 1
            except ConnectionError:
                pass
            if self.cancelled.is_set() or self.store._closed.is_set():
                return
            self.store._rotate(ep)
            time.sleep(0.2)


class EtcdStore:
    """The contract over an etcd cluster (see the module docstring)."""

    may_lose_answers = True  # a txn whose answer is lost may have been, or may still be, applied
    shared_by_servers = True  # every API server of a deployment writes to the one cluster

    def __init__(self, endpoints: Sequence[str], timeout: float = 3.0, ca: str | None = None,
                 cert: str | None = None, key: str | None = None, cache: bool = True,
                 cache_wait: float = 1.0) -> None:
        """`ca` verifies https members; `cert`/`key` is the client certificate, if etcd asks.
        `cache`: serve reads from a watch-fed mirror (see the module docstring); a read waits
        at most `cache_wait` seconds for the mirror to catch up before asking etcd."""
        if not endpoints:
            raise StoreError("etcd store needs at least one endpoint")
        self._eps = [_endpoint(e) for e in endpoints]
        self._cur = 0
        self._rpc = Channels(timeout, ca, cert, key)
        self._closed = threading.Event()
        self._watches: list[_Watch] = []
        self._lock = threading.Lock()
        self._floor = 0              # the oldest revision a read may show (see the module docstring)
        self._floor_unknown = False  # a write's answer was lost: ask etcd for the floor first
        self._floor_lock = threading.Lock()
        self._cache_wait = cache_wait
        self._mirror: Mirror | None = None
        self.reads_cached = 0        # reads answered by the mirror / by etcd (for tests and benchmarks)
        self.reads_etcd = 0
        try:
            if cache:
                self._mirror = Mirror(self)  # loads every key: fails early when no member answers
            else:
                self._real_revision()  # fail early when no member answers
        except BaseException:
            self._rpc.close()
            raise
        # reads served by the mirror hand out its own KeyValues (contract.KeyValue.parsed)
        self.keeps_key_values = self._mirror is not None

    # --- transport ---------------------------------------------------------------------------

    def _current(self) -> str:
        return self._eps[self._cur % len(self._eps)]

    def _rotate(self, failed: str) -> None:
        with self._lock:
            if self._current() == failed:
                self._cur += 1

    def _call(self, method: str, request: Any, *, idempotent: bool) -> Any:
        if self._closed.is_set():
            raise StoreError("store is closed")
        last: Exception | None = None
        for _ in range(2 * len(self._eps)):
            ep = self._current()
            try:
                return self._rpc.call(ep, method, request)
            except NeverSent as e:  # never reached a member: always safe to retry
                last = e
                self._rotate(ep)
                continue
            except Unanswered as e:
                if not idempotent:
                    raise StoreUnavailable(f"etcd request to {ep} failed, outcome unknown: {e}") from e
                last = e
                self._rotate(ep)
                continue
            except RpcFailed as e:
                # UNAVAILABLE, DEADLINE_EXCEEDED (no leader right now), or the member's own
                # context expired while the request was in raft (etcd answers "context deadline
                # exceeded" under another code; seen in the Jepsen test as a 500 on a create):
                # the outcome is unknown, as for a lost answer.
                if e.code in (14, 4) or any(s in str(e) for s in _OUTCOME_UNKNOWN):
                    last = _EtcdError(e.code, str(e))
                    if not idempotent:
                        raise StoreUnavailable(f"etcd: {e}") from None
                    time.sleep(0.2)
                    continue
                raise _EtcdError(e.code, str(e)) from None
        raise StoreUnavailable(f"no etcd member answered: {last}")

    # --- reads -------------------------------------------------------------------------------

    def _raise_floor(self, revision: int) -> None:
        with self._floor_lock:
            self._floor = max(self._floor, revision)

    def read_after(self, revision: int) -> None:
        """Later reads of this store show at least `revision` (e.g. one this server saw on another
        watch of the same cluster): a read waits for the mirror to reach it, as after a write."""
        self._raise_floor(revision)

    def catch_up(self) -> None:
        """Later reads show everything committed before this call (one linearizable round trip
        for the current revision): for a read that found nothing where the caller has reason to
        expect something another server may have just written."""
        self.reads_etcd += 1
        self._raise_floor(self._real_revision())

    def _cached(self) -> Mirror | None:
        """The mirror when it may answer now (connected, at or past the floor), else None."""
        m = self._mirror
        if m is None:
            self.reads_etcd += 1
            return None
        if self._closed.is_set():
            raise StoreError("store is closed")
        if self._floor_unknown:
            self._raise_floor(self._real_revision())  # may raise StoreUnavailable: the caller retries
            self._floor_unknown = False
        if m.wait(self._floor, self._cache_wait):
            self.reads_cached += 1
            return m
        self.reads_etcd += 1
        return None

    def _uncached(self) -> None:
        """For a read the mirror cannot answer (keys it leaves out): counted, goes to etcd."""
        self.reads_etcd += 1

    def get(self, key: str) -> KeyValue | None:
        m = self._cached() if not key.startswith(UNMIRRORED) else self._uncached()
        if m is not None:
            return m.get(key)
        data = self._call("Range", _range(key), idempotent=True)
        self._raise_floor(data.header.revision)
        return key_value(data.kvs[0]) if data.kvs else None

    def get_linearizable(self, key: str) -> KeyValue | None:
        """`get` answered by the etcd cluster itself (a linearizable read through the leader),
        never by the mirror: what deciding the outcome of an ambiguous commit needs, because a
        wrong "it did not land" there would run the change twice."""
        self.reads_etcd += 1
        data = self._call("Range", _range(key), idempotent=True)
        self._raise_floor(data.header.revision)
        return key_value(data.kvs[0]) if data.kvs else None

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        m = self._cached() if not unmirrored(prefix) else self._uncached()
        if m is not None:
            return m.range(prefix)
        kvs, rev = self._real_range(prefix)
        self._raise_floor(rev)
        return kvs, rev

    def revision(self) -> int:
        m = self._cached()
        if m is not None:
            return m.revision()
        rev = self._real_revision()
        self._raise_floor(rev)
        return rev

    def _real_range(self, prefix: str) -> tuple[list[KeyValue], int]:
        data = self._call("Range", _range(prefix, prefix_end(prefix)), idempotent=True)
        return [key_value(raw) for raw in data.kvs], data.header.revision

    def _real_revision(self) -> int:
        data = self._call("Range", _range("\0", count_only=True), idempotent=True)
        return data.header.revision  # type: ignore[no-any-return]

    @property
    def cache_live(self) -> bool:
        """Whether reads are being served from the mirror (its watch is connected)."""
        return self._mirror is not None and self._mirror.live

    # --- writes ------------------------------------------------------------------------------

    def _ops(self, ops: Sequence[Op]) -> list[Any]:
        final: dict[str, Op] = {}
        for op in ops:
            if isinstance(op, Delete) and op.prefix:
                for k in [k for k in final if k.startswith(op.key)]:
                    del final[k]
            final[op.key if not (isinstance(op, Delete) and op.prefix) else "\0prefix\0" + op.key] = op
        puts = {k for k, op in final.items() if isinstance(op, Put)}
        out: list[Any] = []
        for k, op in final.items():
            if isinstance(op, Put):
                out.append(rpc.RequestOp(request_put=rpc.PutRequest(key=op.key.encode(), value=op.value.encode(),
                                                                    lease=op.lease or 0)))
            elif op.prefix:
                inside = [p for p in puts if p.startswith(op.key)]
                if inside:  # etcd refuses overlapping put and delete ranges: expand the prefix
                    for kv in self._real_range(op.key)[0]:
                        if kv.key not in puts:
                            out.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=kv.key.encode())))
                else:
                    out.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(
                        key=op.key.encode(), range_end=prefix_end(op.key).encode())))
            else:
                out.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key.encode())))
        return out

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        cmp = []
        for c in compares:
            if c.target == "exists":
                want_exists = bool(c.value) == (c.op == "==")
                cmp.append(rpc.Compare(key=c.key.encode(), target=rpc.Compare.CREATE, create_revision=0,
                                       result=rpc.Compare.GREATER if want_exists else rpc.Compare.EQUAL))
                continue
            target, field = _TARGETS[c.target]
            value = str(c.value).encode() if c.target == "value" else int(c.value)  # type: ignore[call-overload]
            cmp.append(rpc.Compare(key=c.key.encode(), target=target, result=_RESULTS[c.op], **{field: value},
                                   range_end=prefix_end(c.key).encode() if c.prefix else b""))
        request = rpc.TxnRequest(compare=cmp, success=self._ops(success), failure=self._ops(failure))
        try:
            data = self._call("Txn", request, idempotent=False)
        except StoreUnavailable:
            self._floor_unknown = True  # it may have landed: the next read must see it if it did
            raise
        except _EtcdError as e:
            if "lease not found" in str(e):
                raise LeaseNotFound(str(e)) from None
            if "too many operations" in str(e):
                raise TxnTooLarge(f"{len(request.success)} operations in one transaction: {e}") from None
            raise
        rev = data.header.revision
        self._raise_floor(rev)
        return TxnResult(bool(data.succeeded), rev)

    # --- watch -------------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int, callback: WatchCallback,
              on_error: Callable[[Exception], None] | None = None) -> _Watch:
        if self._closed.is_set():
            raise StoreError("store is closed")
        start_revision = max(start_revision, 1)
        # A start etcd has compacted away fails now, even if the mirror could replay it (the
        # contract's answer); two round trips per watch opened, which is rare (start, relist).
        if start_revision <= self._real_revision():
            self._check_not_compacted(prefix, start_revision)
        # From the mirror's stream when it is live (a server's watches start with it: waited
        # for as long as a read would wait), else a watch of its own (cache.Mirror.subscribe).
        if self._mirror is not None and not unmirrored(prefix) and self._mirror.wait_live(self._cache_wait):
            sub = self._mirror.subscribe(prefix, start_revision, callback, on_error)
            if sub is not None:
                return sub
        w = _Watch(self, prefix, start_revision, callback, on_error)
        with self._lock:
            self._watches.append(w)
        w.thread.start()
        return w

    def _check_not_compacted(self, prefix: str, start_revision: int) -> None:
        """Raise CompactedError if etcd no longer holds revision `start_revision` (at most the
        cluster's current one)."""
        try:  # a range at a compacted revision fails: tell the caller now, not later
            self._call("Range", _range(prefix, count_only=True, revision=start_revision), idempotent=True)
        except _EtcdError as e:
            if e.code == 11 and "compacted" in str(e):
                raise CompactedError(self._compact_revision(prefix, start_revision)) from None
            raise

    def _compact_revision(self, prefix: str, start: int) -> int:
        """The compaction revision etcd names when a watch from `start` is refused."""
        create = rpc.WatchCreateRequest(key=prefix.encode(), start_revision=start)
        try:
            with self._rpc.watch(self._current(), create) as stream:
                for res in stream:
                    if res.canceled:
                        return res.compact_revision or start  # type: ignore[no-any-return]
        except ConnectionError:
            pass
        return start

    # --- leases ------------------------------------------------------------------------------

    def grant_lease(self, ttl: int) -> int:
        data = self._call("LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl), idempotent=False)
        return data.ID  # type: ignore[no-any-return]

    def refresh_lease(self, lease_id: int) -> int:
        data = self._call("LeaseKeepAlive", rpc.LeaseKeepAliveRequest(ID=lease_id), idempotent=True)
        if data.TTL <= 0:
            raise LeaseNotFound(f"lease {lease_id} not found")
        return data.TTL  # type: ignore[no-any-return]

    def revoke_lease(self, lease_id: int) -> None:
        try:  # its key deletions are a write: reads after it must not show those keys
            data = self._call("LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id), idempotent=True)
            self._raise_floor(data.header.revision)
        except _EtcdError as e:
            if "not found" not in str(e):
                raise

    # --- maintenance -------------------------------------------------------------------------

    def compact(self, revision: int) -> None:
        try:
            self._call("Compact", rpc.CompactionRequest(revision=revision, physical=True), idempotent=True)
        except _EtcdError as e:
            if "compacted" not in str(e):  # compacting an already compacted revision is fine
                raise

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            watches, self._watches = self._watches, []
        for w in watches:
            w.cancel()
        if self._mirror is not None:
            self._mirror.close()
        self._rpc.close()
