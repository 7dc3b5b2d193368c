"""Group commit for a store that pays per request (etcd): the attempts of `Repo.transact` that
are ready at the same time, on any worker thread of this process, go to the store as one
transaction.

Why: on etcd a transaction's cost is mostly per request, not per key (measured on a 3-member
cluster with two mirrors watching: ~1.8 ms of etcd CPU for a port create's txn of 7 puts and 9
compares, about the same with 5 puts; ~0.9 ms per create when 4 creates share one txn). The
gateway's JSON, the gRPC hop, the raft entry, the apply and one watch message per watcher are
paid once per request.

How (natural batching, no timer): one batch per process is in flight. An attempt that arrives
while one is in flight queues; when the answer comes, the next thread in the queue becomes the
sender and takes every queued attempt that fits (FIFO, its own first). A lone attempt goes out
at once, exactly as without batching. One exception bounds the wait: an attempt still queued
after `ESCAPE` (15 ms: the batch in flight is stalled, e.g. etcd applying a large revision)
sends a second batch of what is queued; never more than `MAX_SENDERS` (2) in flight. Without
it a stall delayed everything queued behind it by the stall plus one more round trip (p99 of
creates, 8 clients on 2 servers: median 61.7 ms without it, 41.5 with it; docs/benchmarks.md).

Why a merged transaction means the same as its parts, one after another: attempts go into one
batch only if no attempt writes a key (or a prefix) another one compares or writes. Then each
attempt's compares read keys that no other attempt of the batch changes, so evaluating them all
on the state before the batch is evaluating each one on the state after the ones before it; and
the writes are disjoint, so their union is the same final state in any order. Two kinds of
writes may be shared, because their value means nothing or is a log:
- `touch` keys (`UnitOfWork.touch`: a new revision for others to guard on; nobody reads the
  value): several attempts touching one key write it once. A touch still conflicts with an
  attempt that compares that key.
- `meta/request` (the audit trail, `repo.REQUEST_KEY`): one put holding the request ids of every
  attempt of the batch, comma-separated, in batch order; the revision then names every request
  it applied.

Outcomes, per attempt of a batch:
- The batch succeeded: every attempt succeeded, at the batch's revision.
- A compare failed: it is not known whose, so every attempt is sent again on its own, by its own
  thread (as if it had never been batched). Nothing was applied.
- The answer was lost (`StoreUnavailable`): every attempt gets it and resolves it by its own
  marker (services/repo.py, `_resolve`): the batch is one atomic transaction, so either every
  marker is in the store or none is, and a fence of any one of them keeps the whole batch from
  ever applying; the others' fences then succeed too. Attempts stay exactly-once.
- Any other error (a lease gone, too many operations, a refused request): nothing was applied;
  every attempt is sent again on its own and meets its own error.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence

from vxnet.store.contract import Compare, Delete, Op, Put, Store, StoreUnavailable, TxnResult

MAX_OPS = 120      # etcd refuses a txn with more than --max-txn-ops (default 128) compares or ops
MAX_ATTEMPTS = 16  # attempts per batch
ESCAPE = 0.015     # seconds an attempt waits behind a batch in flight before a second batch may go
MAX_SENDERS = 2    # batches in flight at once (the second only after ESCAPE)


@dataclasses.dataclass(eq=False)
class Attempt:
    """One attempt's transaction: its compares and ops (without the audit put), the keys it only
    touches, and its request id (or None)."""

    compares: Sequence[Compare]
    ops: Sequence[Op]
    touches: frozenset[str]
    request_id: str | None
    result: TxnResult | None = None
    error: Exception | None = None
    alone: bool = False        # send it again on its own
    lead: bool = False         # this attempt's thread sends the next batch
    woken: threading.Event = dataclasses.field(default_factory=threading.Event)
    _keys: tuple[set[str], list[str], set[str], list[str]] | None = None

    def keys(self) -> tuple[set[str], list[str], set[str], list[str]]:
        """(keys compared, prefixes compared, keys written but not only touched, prefixes
        deleted)."""
        if self._keys is None:
            rk: set[str] = set()
            rp: list[str] = []
            wk: set[str] = set()
            wp: list[str] = []
            for c in self.compares:
                if c.prefix:
                    rp.append(c.key)
                else:
                    rk.add(c.key)
            for op in self.ops:
                if isinstance(op, Delete) and op.prefix:
                    wp.append(op.key)
                elif op.key not in self.touches:
                    wk.add(op.key)
            self._keys = (rk, rp, wk, wp)
        return self._keys


def _hits(keys: set[str], prefixes: list[str], other_keys: set[str], other_prefixes: list[str]) -> bool:
    """Whether the key set (keys + prefixes) meets the other one."""
    if not keys.isdisjoint(other_keys):
        return True
    for p in prefixes:
        if any(k.startswith(p) for k in other_keys) or any(q.startswith(p) or p.startswith(q) for q in other_prefixes):
            return True
    return any(k.startswith(q) for q in other_prefixes for k in keys)


class _Batch:
    """The attempts of one merged transaction and the key sets they claim."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []
        self.rk: set[str] = set()
        self.rp: list[str] = []
        self.wk: set[str] = set()     # written (not only touched)
        self.wp: list[str] = []
        self.tk: set[str] = set()     # touched
        self.n_cmp = 0
        self.n_ops = 0

    def fits(self, a: Attempt) -> bool:
        rk, rp, wk, wp = a.keys()
        n_cmp, n_ops = self.n_cmp + len(a.compares), self.n_ops + len(a.ops)
        if self.attempts and (n_cmp > MAX_OPS or n_ops > MAX_OPS or len(self.attempts) >= MAX_ATTEMPTS):
            return False
        if not self.attempts:
            return True
        writes_a = wk | a.touches
        return not (_hits(writes_a, wp, self.rk, self.rp)              # a writes what the batch reads
                    or _hits(self.wk | self.tk, self.wp, rk, rp)       # the batch writes what a reads
                    or _hits(wk, wp, self.wk | self.tk, self.wp)       # a writes what the batch writes
                    or _hits(a.touches, [], self.wk, self.wp))         # a touches what the batch writes

    def add(self, a: Attempt) -> None:
        rk, rp, wk, wp = a.keys()
        self.attempts.append(a)
        self.rk |= rk
        self.rp += rp
        self.wk |= wk
        self.wp += wp
        self.tk |= a.touches
        self.n_cmp += len(a.compares)
        self.n_ops += len(a.ops)

    def txn(self, request_key: str) -> tuple[list[Compare], list[Op]]:
        compares: dict[Compare, None] = {}
        ops: list[Op] = []
        touched: set[str] = set()
        for a in self.attempts:
            compares.update(dict.fromkeys(a.compares))
            for op in a.ops:
                if op.key in a.touches:
                    if op.key in touched:
                        continue
                    touched.add(op.key)
                ops.append(op)
        ids = list(dict.fromkeys(a.request_id for a in self.attempts if a.request_id is not None))
        if ids:
            ops.append(Put(request_key, ",".join(ids)))
        return list(compares), ops


class TxnBatcher:
    """Merges concurrent attempts into one store transaction (see the module docstring)."""

    def __init__(self, store: Store, request_key: str) -> None:
        self.store = store
        self.request_key = request_key
        self._lock = threading.Lock()
        self._queue: list[Attempt] = []
        self._senders = 0   # batches in flight (or being formed)
        self.escape = ESCAPE
        self.batches = 0   # transactions sent for more than one attempt (for tests and benchmarks)
        self.batched = 0   # attempts they carried

    def commit(self, attempt: Attempt) -> TxnResult:
        """Commit `attempt`, merged with others when they are ready at the same time. Raises
        what its own transaction would (StoreUnavailable: outcome unknown)."""
        with self._lock:
            self._queue.append(attempt)
            if not self._senders:
                self._senders = 1
                attempt.lead = True
        while not attempt.lead and not attempt.woken.wait(self.escape):
            with self._lock:  # the batch in flight is slow (a stalled member...): send a second one
                if attempt.woken.is_set() or self._senders >= MAX_SENDERS:
                    continue
                if any(a is attempt for a in self._queue):
                    self._senders += 1
                    attempt.lead = True
        if attempt.lead:
            self._send(attempt)
        if attempt.alone:
            return self._alone(attempt)
        if attempt.error is not None:
            raise attempt.error
        assert attempt.result is not None
        return attempt.result

    def _alone(self, a: Attempt) -> TxnResult:
        ops = list(a.ops)
        if a.request_id is not None:
            ops.append(Put(self.request_key, a.request_id))
        return self.store.txn(a.compares, ops)

    def _send(self, own: Attempt) -> None:
        """As the sender: take a batch from the queue (`own`, then whatever fits, oldest
        first), send it, hand each attempt its outcome, pass the sender's role on. The role is
        held while the batch is in flight: what arrives meanwhile waits and goes in the next."""
        batch = _Batch()
        batch.add(own)
        try:
            with self._lock:
                try:
                    for a in self._queue:  # not another sender's own (made lead, about to send it)
                        if a is not own and not a.lead and batch.fits(a):
                            batch.add(a)
                finally:  # whatever happens, what the batch holds is no longer queued
                    taken = set(map(id, batch.attempts))
                    self._queue = [a for a in self._queue if id(a) not in taken]
            if len(batch.attempts) == 1:
                try:
                    own.result = self._alone(own)
                except Exception as e:  # noqa: BLE001 - re-raised in the caller's thread, as the store raised it
                    own.error = e
            else:
                self._send_merged(batch)
        finally:
            with self._lock:
                nxt = next((a for a in self._queue if not a.lead), None)
                if nxt is not None:
                    nxt.lead = True
                    nxt.woken.set()
                else:
                    self._senders -= 1
            for a in batch.attempts:
                if a.result is None and a.error is None:
                    a.alone = True  # the batch was never sent (a bug raised above): each goes alone
                if a is not own:
                    a.woken.set()

    def _send_merged(self, batch: _Batch) -> None:
        compares, ops = batch.txn(self.request_key)
        try:
            result = self.store.txn(compares, ops)
        except StoreUnavailable as e:
            for a in batch.attempts:
                a.error = e
            return
        except Exception:  # noqa: BLE001 - nothing applied: each attempt meets its own error alone
            for a in batch.attempts:
                a.alone = True
            return
        self.batches += 1
        self.batched += len(batch.attempts)
        for a in batch.attempts:
            if result.succeeded:
                a.result = result
            else:
                a.alone = True
