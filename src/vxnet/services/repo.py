"""Resources over the store: one JSON object per key (compact JSON: no spaces), changed by optimistic
transactions.

Layout (all under `/vxnet/`):
- `res/<collection>/<id>`: a resource as the API shows it to an admin (e.g. `res/ports/<id>`).
- `ipam/<subnet_id>/<ip>` = port id: an allocated fixed IP (unique by construction).
- `mac/<mac>` = port id; `vni/<vni>` = network id; `sgdefault/<project_id>` = group id.
- `agents/<host>`: an agent's registration, attached to its heartbeat lease.

Writes go through `Repo.transact(fn)`: `fn(uow)` reads what it needs through the unit of work
(every read becomes a compare on the key's mod revision), stages puts/deletes/claims, and
`transact` commits them as one store transaction. If anything it read changed meanwhile, or a
claimed key was taken, the whole function runs again (bounded), so concurrent requests on any
number of servers never interleave half-way. A function that raises stages nothing: a failed
request leaves nothing behind.

Exactly once (docs/store.md has the proof): every attempt also writes a marker key
`/vxnet-txn/<attempt>` = "committed" (compare: it does not exist), attached to a lease so markers
expire. When the store's answer is lost (`StoreUnavailable` from the txn; etcd's leader died), the
marker decides: present -> the attempt was applied; absent -> a *fence* txn puts the marker as
"aborted" if it still does not exist. The fence's success proves the attempt can never apply
later (its compare on the marker would fail), so `fn` may run again; its failure means the marker
exists, i.e. the attempt was applied. No time window is involved. A store that declares
`may_lose_answers = False` (the embedded one: its txn either commits and answers or raises
before committing) skips the marker.

Resource ids come from `new_id(collection)`, drawn once per `transact` call: every rerun of `fn`
gets the same ids, and `put` of an object with such an id claims its key (must not exist), so a
re-applied create can never store a second copy and is recognised as this request's own.
`touch(key)` bumps a key's revision for others to guard on (e.g. "an allocation on this subnet
happened"); its value means nothing and nothing reads it back.

Audit trail: while `REQUEST_ID` is set (the API's request guard sets it to the request's
`X-Openstack-Request-Id` for the duration of the request), every committed transaction also
puts `meta/request` = that id, so the store revision a request produced names the request; the
servers' view hub sends it with that revision's view updates and agents log it with the pass
that applied them (docs/operations.md). One key, overwritten: it costs one put per write. On
etcd, attempts ready at the same time share one transaction (`services/txn_batch.py`: group
commit, each attempt with its own marker); `meta/request` then holds the ids of every request
of that revision, comma-separated.

`Repo.stage_hook` (None unless installed; services/quotas.py installs one) sees every staged
`put`/`delete` of a resource, before it is staged, in the same unit of work: it may read and
stage more keys (e.g. usage counters) or raise to refuse the whole transaction.

Parsed objects are shared, not copied: a listed value is parsed once into a `compact` copy
(services/compact.py, `parse_resource`) and attached to its KeyValue (`KeyValue.attach`), where
the server's view hub attaches the copy it parses from its watch. On a store that keeps its
KeyValues (`keeps_key_values`: the embedded store, etcd with its read mirror) the KeyValue is
the store's own until the key changes, so the hub's object is the one a listing returns and
listing 100,000 ports adds no copy of them. Other stores' KeyValues are new at every read: there
a parse cache keyed by key and mod revision keeps the copies. `Repo.list` (and `UnitOfWork.list`)
return these shared objects themselves: treat them as read-only (their empty lists and dicts
refuse changes). `Repo.get` and `UnitOfWork.get` return private copies.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from vxnet.services.compact import parse_resource
from vxnet.services.txn_batch import Attempt, TxnBatcher
from vxnet.store.contract import (
    Compare,
    Delete,
    KeyValue,
    LeaseNotFound,
    Op,
    Put,
    Store,
    StoreUnavailable,
    key_missing,
    range_unchanged_since,
)

log = logging.getLogger(__name__)

ROOT = "/vxnet/"
EPOCH_KEY = f"{ROOT}meta/epoch"  # the store's epoch: see api/routers/agent_stream.store_epoch
# Attempt markers live outside ROOT, so that watches, migration and listings never see them.
TXN_PREFIX = "/vxnet-txn/"
COMMITTED = "committed"
ABORTED = "aborted"
MARKER_MARGIN = 15.0  # seconds: a marker's absence is evidence only this long before it may expire
T = TypeVar("T")

REQUEST_KEY = f"{ROOT}meta/request"  # the request id of the transaction that wrote it (audit trail)
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("vxnet_request_id", default=None)
_current_uow: contextvars.ContextVar[UnitOfWork | None] = contextvars.ContextVar("vxnet_uow", default=None)


def new_id(collection: str) -> str:
    """A new resource id. Inside `Repo.transact`'s function: the same id on every rerun of that
    function (see the module docstring); elsewhere a fresh uuid4."""
    uow = _current_uow.get()
    return uow.new_id(collection) if uow is not None else str(uuid.uuid4())


class IdSource:
    """The ids of one logical request: the n-th id asked for `collection` is the same in every
    attempt (a new `cursor()` per attempt)."""

    def __init__(self) -> None:
        self._ids: dict[str, list[str]] = {}
        self.attempts = 0  # cursors handed out: the attempts of the request so far

    def cursor(self) -> dict[str, int]:
        self.attempts += 1
        return {}

    def take(self, cursor: dict[str, int], collection: str) -> str:
        drawn = self._ids.setdefault(collection, [])
        n = cursor.get(collection, 0)
        cursor[collection] = n + 1
        if n == len(drawn):
            drawn.append(str(uuid.uuid4()))
        return drawn[n]


def res_key(collection: str, id_: str) -> str:
    return f"{ROOT}res/{collection}/{id_}"


def now_iso() -> str:
    """Neutron's timestamp format."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Conflict(Exception):
    """The transaction's reads went stale or a claim was taken; `transact` retries."""


class ClaimTaken(Exception):
    """A claimed key exists already (raised by `UnitOfWork.claim(..., must=True)` at commit)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class StageHook(Protocol):
    """Called by `UnitOfWork.put`/`delete` before a resource write is staged (`obj` None for
    a delete); may read/stage through `uow` or raise (see the module docstring)."""

    def __call__(self, uow: UnitOfWork, collection: str, key: str, obj: dict[str, Any] | None) -> None: ...


class UnitOfWork:
    """Reads with compares, staged writes; committed by `Repo.transact`."""

    def __init__(self, repo: Repo, ids: IdSource | None = None) -> None:
        self.repo = repo
        self._compares: dict[str, Compare] = {}
        self._ops: dict[str, Op] = {}
        self._claims: set[str] = set()
        self._ids = ids or IdSource()
        self._cursor = self._ids.cursor()
        self.attempt = self._ids.attempts  # 1 on the first run of the function, 2 on its rerun...
        self._created: set[str] = set()  # resource keys under ids of this request
        self._touched: set[str] = set()  # keys staged by `touch`
        self.after_commit: list[Callable[[], None]] = []
        self.hook_state: dict[str, Any] = {}  # the stage hook's per-transaction notes

    def new_id(self, collection: str) -> str:
        """An id for a new resource of `collection`, the same on every rerun of the function;
        putting the resource claims its key."""
        id_ = self._ids.take(self._cursor, collection)
        self._created.add(res_key(collection, id_))
        return id_

    # reads -------------------------------------------------------------------------------------
    def get(self, collection: str, id_: str) -> dict[str, Any] | None:
        """A private copy of the resource (None if missing); the read is guarded. A write
        staged earlier in this unit of work is seen (read your own writes)."""
        key = res_key(collection, id_)
        if key in self._ops:  # read your own staged write
            op = self._ops[key]
            return json.loads(op.value) if isinstance(op, Put) else None
        kv = self.repo.store.get(key)
        self._guard(key, kv)
        return json.loads(kv.value) if kv else None

    def list(
        self,
        collection: str,
        where: Callable[[dict[str, Any]], bool] | None = None,
        *,
        guard_new: bool = False,
    ) -> list[dict[str, Any]]:
        """Read-only cached objects of a collection; guards every returned object. With
        `guard_new` the commit also fails if any object of the collection was created or
        changed after this read (e.g. "no port uses this group" for a delete); without it the
        absence of other objects is not guarded (use claims for uniqueness)."""
        out = []
        prefix = f"{ROOT}res/{collection}/"
        if guard_new:
            self._compares["range:" + prefix] = range_unchanged_since(prefix, self.repo.store.revision())
        for kv, obj in self.repo._scan(prefix):
            if where is None or where(obj):
                self._guard(kv.key, kv)
                out.append(obj)
        return out

    def get_raw(self, key: str) -> str | None:
        """The value of a raw key (None if missing); staged writes of this unit are seen."""
        if key in self._ops:
            op = self._ops[key]
            return op.value if isinstance(op, Put) else None
        kv = self.repo.store.get(key)
        self._guard(key, kv)
        return kv.value if kv else None

    def range_raw(self, prefix: str) -> dict[str, str]:
        """Raw keys under `prefix` and their values, staged writes of this unit seen. Guarded as
        a whole: the commit fails if any key under `prefix` was created or changed after this
        read (deleting one does not count: guard a key that changes with such deletes)."""
        kvs, rev = self.repo.store.range(prefix)
        self._compares.setdefault("range:" + prefix, range_unchanged_since(prefix, rev))
        out = {kv.key: kv.value for kv in kvs}
        for key, op in self._ops.items():
            if key.startswith(prefix):
                if isinstance(op, Put):
                    out[key] = op.value
                else:
                    out.pop(key, None)
        return out

    def staged(self, key: str) -> bool:
        """Whether this unit of work staged a write of `key`."""
        return key in self._ops

    def read_revision(self, key: str) -> int | None:
        """The mod revision this unit of work read `key` at (0: read as missing), None if it
        did not read it (or only staged it)."""
        c = self._compares.get(key)
        return c.value if c is not None and c.target == "mod" and c.op == "==" else None  # type: ignore[return-value]

    def _guard(self, key: str, kv: KeyValue | None) -> None:
        if key in self._compares or key in self._ops:
            return
        self._compares[key] = Compare(key, "mod", "==", kv.mod_revision if kv else 0)

    # writes ------------------------------------------------------------------------------------
    def put(self, collection: str, obj: dict[str, Any]) -> None:
        key = res_key(collection, obj["id"])
        if key in self._created:  # a create: the key must not exist (a re-apply fails here)
            self._compares[key] = key_missing(key)
        if self.repo.stage_hook is not None:
            self.repo.stage_hook(self, collection, key, obj)
        self._ops[key] = Put(key, json.dumps(obj, separators=(",", ":")))  # no spaces: ~6% of a port

    def delete(self, collection: str, id_: str) -> None:
        key = res_key(collection, id_)
        if self.repo.stage_hook is not None:
            self.repo.stage_hook(self, collection, key, None)
        self._ops[key] = Delete(key)

    def put_raw(self, key: str, value: str) -> None:
        self._ops[key] = Put(key, value)

    def touch(self, key: str) -> None:
        """Bump `key`'s revision without reading it, so that transactions guarding it (having
        read it) fail. The value is meaningless: never compare it or use it as evidence."""
        if key not in self._ops:
            self._ops[key] = Put(key, "")
            self._touched.add(key)

    def touches(self) -> frozenset[str]:
        """The keys this unit of work only touches (no other write of them staged)."""
        return frozenset(k for k in self._touched if self._ops.get(k) == Put(k, ""))

    def delete_raw(self, key: str) -> None:
        self._ops[key] = Delete(key)

    def claim(self, key: str, value: str) -> None:
        """Create `key` only if it does not exist at commit (e.g. an IP or a MAC)."""
        self._claims.add(key)
        self._compares[key] = key_missing(key)
        self._ops[key] = Put(key, value)

    def claimed_under(self, prefix: str) -> set[str]:
        """Keys under `prefix` claimed so far in this unit of work (not yet in the store)."""
        return {k for k in self._claims if k.startswith(prefix)}

    def is_claimed(self, key: str) -> bool:
        """Claimed in the store or staged here already."""
        return key in self._claims or self.repo.store.get(key) is not None


class Repo:
    """Resource access over a `Store` (see the module docstring)."""

    def __init__(self, store: Store, max_retries: int = 50) -> None:
        self.store = store
        self.max_retries = max_retries
        self.ambiguity_patience = 6.0  # seconds to keep trying to learn a lost answer's outcome
        self.marker_ttl = 60           # seconds an attempt marker lives at most ...
        # ... and at least marker_ttl - marker_rotate. Each expiry deletes the markers of one
        # rotation in one etcd revision, stalling etcd's writes meanwhile (4,500 markers: 50-150 ms;
        # 900: 20-70 ms): rotating often keeps that short (docs/store.md)
        self.marker_rotate = 3.0
        self.fence_ttl = 3600          # seconds a fence keeps a fenced attempt from applying
        self._markers = _MarkerLeases(self)
        # group commit (services/txn_batch.py) where a transaction costs a round trip that may
        # lose its answer (etcd); the embedded store commits each transaction on its own
        self.batcher = TxnBatcher(store, REQUEST_KEY) if getattr(store, "may_lose_answers", True) else None
        self._cache: dict[str, tuple[int, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.stage_hook: StageHook | None = None

    def _scan(self, prefix: str) -> list[tuple[KeyValue, dict[str, Any]]]:
        kvs, _ = self.store.range(prefix)
        out = []
        if getattr(self.store, "keeps_key_values", False):  # one parsed copy, on the store's KeyValue
            for kv in kvs:
                obj = kv.parsed
                if obj is None:
                    obj = parse_resource(kv.value)
                    kv.attach(obj)
                out.append((kv, obj))
            return out
        cache = self._cache
        for kv in kvs:
            hit = cache.get(kv.key)
            if hit is None or hit[0] != kv.mod_revision:
                hit = (kv.mod_revision, parse_resource(kv.value))
                cache[kv.key] = hit
            out.append((kv, hit[1]))
        if len(cache) > 2 * len(kvs) + 100_000:  # drop entries of deleted keys now and then
            with self._lock:
                live = {kv.key for kv in self.store.range(ROOT)[0]}
                for k in [k for k in list(cache) if k not in live]:
                    cache.pop(k, None)
        return out

    def list(self, collection: str) -> list[dict[str, Any]]:
        """Read-only cached objects of a collection, in key order."""
        return [obj for _, obj in self._scan(f"{ROOT}res/{collection}/")]

    def get(self, collection: str, id_: str) -> dict[str, Any] | None:
        """A private copy of one resource, or None."""
        kv = self.store.get(res_key(collection, id_))
        return json.loads(kv.value) if kv is not None else None  # faster than a deep copy of a parsed one

    def transact(self, fn: Callable[[UnitOfWork], T]) -> T:
        """Run `fn` in a unit of work and commit it, exactly once; rerun on conflicts (see the
        module doc). Raises ClaimTaken when a claim still fails after retries, and
        StoreUnavailable when the store cannot be reached, or stays unreachable after a lost
        answer for `ambiguity_patience` seconds (then the outcome is unknown: the write may
        or may not have been applied)."""
        ids = IdSource()
        markers = bool(getattr(self.store, "may_lose_answers", True))
        attempts: list[tuple[UnitOfWork, T]] = []
        last_claim: str | None = None
        for _ in range(self.max_retries):
            uow = UnitOfWork(self, ids)
            token = _current_uow.set(uow)
            try:
                result = fn(uow)
            finally:
                _current_uow.reset(token)
            if not uow._ops:
                return result
            compares = list(uow._compares.values())
            ops = list(uow._ops.values())
            request_id = REQUEST_ID.get()
            if request_id is not None and self.batcher is None:
                ops.append(Put(REQUEST_KEY, request_id))
            marker = ""
            granted_at = 0.0
            if markers:
                marker = TXN_PREFIX + uuid.uuid4().hex
                lease, granted_at = self._markers.current()
                compares.append(key_missing(marker))
                ops.append(Put(marker, COMMITTED, lease))
            try:
                if self.batcher is not None:
                    succeeded = self.batcher.commit(Attempt(compares, ops, uow.touches(), request_id)).succeeded
                else:
                    succeeded = self.store.txn(compares, ops).succeeded
            except LeaseNotFound:
                self._markers.drop()  # the marker lease ended early (e.g. a store restart)
                continue
            except StoreUnavailable:
                if not markers:
                    raise  # such a store applies nothing it does not answer for
                # The answer was lost (e.g. etcd's leader died): decide, by the marker, whether
                # this attempt applied, so that fn reruns only when it never can.
                succeeded = self._resolve(marker, granted_at)
            if succeeded:
                for cb in uow.after_commit:
                    cb()
                return result
            mine = self._created_earlier(uow, attempts) if attempts else None
            if mine is not None:  # an earlier attempt created our ids: the request is done
                for cb in mine[0].after_commit:
                    cb()
                return mine[1]
            attempts.append((uow, result))
            last_claim = next((k for k in uow._claims if self.store.get(k) is not None), None)
        if last_claim is not None:
            raise ClaimTaken(last_claim)
        raise Conflict("too many concurrent changes; try again")

    def _resolve(self, marker: str, granted_at: float) -> bool:
        """After a lost answer: True if the attempt that wrote `marker` was applied; False if
        it was not and never can be (a fence holds its marker key). See the module docstring.
        Keeps trying for `ambiguity_patience` seconds, then raises StoreUnavailable."""
        deadline = time.monotonic() + self.ambiguity_patience
        read = getattr(self.store, "get_linearizable", self.store.get)
        fence_lease = 0
        while True:
            # Absence proves "not applied" only while the marker cannot have expired.
            if time.monotonic() > granted_at + self.marker_ttl - MARKER_MARGIN:
                raise StoreUnavailable("too late to tell whether the write was applied: outcome unknown")
            try:
                kv = read(marker)
                if kv is not None:  # ours: applied, or fenced by an earlier fence of ours
                    log.warning("lost store answer resolved: attempt %s %s", marker,
                                "applied" if kv.value == COMMITTED else "fenced")
                    return kv.value == COMMITTED
                if not fence_lease:
                    fence_lease = self.store.grant_lease(self.fence_ttl)
                if self.store.txn([key_missing(marker)], [Put(marker, ABORTED, fence_lease)]).succeeded:
                    log.warning("lost store answer resolved: attempt %s fenced", marker)
                    return False  # the attempt's compare on its marker can never hold again
                # the marker exists now: read it (applied, or a fence whose answer was lost)
            except LeaseNotFound:
                fence_lease = 0
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _created_earlier(
        self, uow: UnitOfWork, attempts: list[tuple[UnitOfWork, T]]
    ) -> tuple[UnitOfWork, T] | None:
        """After a failed compare: the earlier attempt whose creates are in the store, if one
        is. Ids are drawn once per request (`IdSource`), so a key created under one of them
        can only come from an attempt of this request; its value tells which one."""
        for key in uow._created:
            kv = self.store.get(key)
            if kv is None:
                continue
            for earlier in attempts:
                op = earlier[0]._ops.get(key)
                if isinstance(op, Put) and op.value == kv.value:
                    return earlier
        return None


class _MarkerLeases:
    """The lease the attempt markers are attached to: a new one every `rotate` seconds, each
    living `ttl` seconds.

    A grant is an etcd write (a raft round, 2-5 ms here), so no attempt waits for one while the
    current lease is usable: an attempt that finds the lease older than `rotate` uses it and
    starts the next grant on a thread of its own; the attempts after it get the new lease. Only
    a lease older than `max_age` (20 s, at most a third of the TTL: a server that wrote nothing
    for that long), a dropped one or none is granted in line. So a marker lives at least
    `ttl - max_age` seconds (40) and at most `ttl`; `Repo._resolve` counts from the grant of the
    lease it actually used."""

    def __init__(self, repo: Repo) -> None:
        self._repo = repo
        self._lock = threading.Lock()
        self._lease = 0
        self._granted_at = 0.0
        self._granting = False    # a grant in the background is under way
        self.max_age = 20.0       # seconds (at most a third of the TTL): older leases are not used
        self.grants_inline = 0    # grants an attempt waited for (for tests and benchmarks)

    def current(self) -> tuple[int, float]:
        """(lease id, monotonic time just before it was granted)."""
        with self._lock:
            now = time.monotonic()
            age = now - self._granted_at
            if not self._lease or age > min(self.max_age, self._repo.marker_ttl / 3):
                self._lease = self._repo.store.grant_lease(self._repo.marker_ttl)
                self._granted_at = now
                self.grants_inline += 1
            elif age > self._repo.marker_rotate and not self._granting:
                self._granting = True
                threading.Thread(target=self._grant, name="vxnet-marker-lease", daemon=True).start()
            return self._lease, self._granted_at

    def _grant(self) -> None:
        """The next lease, granted off the writers' path."""
        try:
            at = time.monotonic()
            lease = self._repo.store.grant_lease(self._repo.marker_ttl)
        except Exception:  # the next attempt tries again (in line once the lease is too old)
            log.warning("granting the next attempt-marker lease failed", exc_info=True)
            with self._lock:
                self._granting = False
            return
        with self._lock:
            self._granting = False
            if at > self._granted_at:
                self._lease, self._granted_at = lease, at

    def drop(self) -> None:
        with self._lock:
            self._lease = 0
