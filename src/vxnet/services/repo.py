"""Resources over the store: one JSON object per key, changed by optimistic transactions.

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

`Repo.stage_hook` (None unless installed; services/quotas.py installs one) sees every staged
`put`/`delete` of a resource, before it is staged, in the same unit of work: it may read and
stage more keys (e.g. usage counters) or raise to refuse the whole transaction.

Reads outside a transaction come from a parse cache keyed by mod revision. `Repo.list` returns
the cached objects themselves: treat them as read-only. `Repo.get` returns a private copy.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from vxnet.store.contract import (
    Compare,
    Delete,
    KeyValue,
    Op,
    Put,
    Store,
    StoreUnavailable,
    key_missing,
    range_unchanged_since,
)

ROOT = "/vxnet/"
EPOCH_KEY = f"{ROOT}meta/epoch"  # the store's epoch: see api/routers/agent_stream.store_epoch
T = TypeVar("T")


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

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self._compares: dict[str, Compare] = {}
        self._ops: dict[str, Op] = {}
        self._claims: set[str] = set()
        self.after_commit: list[Callable[[], None]] = []
        self.hook_state: dict[str, Any] = {}  # the stage hook's per-transaction notes

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
        if self.repo.stage_hook is not None:
            self.repo.stage_hook(self, collection, key, obj)
        self._ops[key] = Put(key, json.dumps(obj))

    def delete(self, collection: str, id_: str) -> None:
        key = res_key(collection, id_)
        if self.repo.stage_hook is not None:
            self.repo.stage_hook(self, collection, key, None)
        self._ops[key] = Delete(key)

    def put_raw(self, key: str, value: str) -> None:
        self._ops[key] = Put(key, value)

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
        self.ambiguity_patience = 6.0  # seconds to wait for the store after a lost answer
        self.ambiguity_settle = 2.0    # seconds a lost write may still take to appear
        self._cache: dict[str, tuple[int, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.stage_hook: StageHook | None = None

    def _scan(self, prefix: str) -> list[tuple[KeyValue, dict[str, Any]]]:
        kvs, _ = self.store.range(prefix)
        out = []
        cache = self._cache
        for kv in kvs:
            hit = cache.get(kv.key)
            if hit is None or hit[0] != kv.mod_revision:
                hit = (kv.mod_revision, json.loads(kv.value))
                cache[kv.key] = hit
            out.append((kv, hit[1]))
        if len(cache) > 2 * len(kvs) + 100_000:  # drop entries of deleted keys now and then
            with self._lock:
                live = {kv.key for kv in self.store.range(ROOT)[0]}
                for k in [k for k in cache if k not in live]:
                    cache.pop(k, None)
        return out

    def list(self, collection: str) -> list[dict[str, Any]]:
        """Read-only cached objects of a collection, in key order."""
        return [obj for _, obj in self._scan(f"{ROOT}res/{collection}/")]

    def get(self, collection: str, id_: str) -> dict[str, Any] | None:
        """A private copy of one resource, or None."""
        kv = self.store.get(res_key(collection, id_))
        if kv is None:
            return None
        hit = self._cache.get(kv.key)
        if hit is not None and hit[0] == kv.mod_revision:
            return copy.deepcopy(hit[1])
        return json.loads(kv.value)

    def transact(self, fn: Callable[[UnitOfWork], T]) -> T:
        """Run `fn` in a unit of work and commit it; rerun on conflicts (see module doc).
        Raises ClaimTaken when a claim still fails after retries."""
        last_claim: str | None = None
        for _ in range(self.max_retries):
            uow = UnitOfWork(self)
            result = fn(uow)
            if not uow._ops:
                return result
            try:
                succeeded = self.store.txn(list(uow._compares.values()), list(uow._ops.values())).succeeded
            except StoreUnavailable:
                # The answer was lost (e.g. etcd's leader died): the write may or may not have
                # been applied. Answering 503 would invite a retry that duplicates it, so look.
                succeeded = self._holds_staged(uow)
            if succeeded:
                for cb in uow.after_commit:
                    cb()
                return result
            last_claim = next((k for k in uow._claims if self.store.get(k) is not None), None)
        if last_claim is not None:
            raise ClaimTaken(last_claim)
        raise Conflict("too many concurrent changes; try again")

    def _holds_staged(self, uow: UnitOfWork) -> bool:
        """After an ambiguous commit: whether the store now holds exactly what `uow` staged
        (every put key has our value, every deleted key is gone). True means the transaction
        landed, or the store already is what we wanted; False means it did not land and `fn`
        may run again. Waits up to `ambiguity_patience` seconds for the store to answer (an etcd
        leader election takes 1-2 s); still unreachable -> StoreUnavailable (outcome unknown)."""
        start = time.monotonic()
        deadline = start + self.ambiguity_patience
        # Never from a read cache: a stale "not there" would run the change a second time.
        get = getattr(self.store, "get_linearizable", self.store.get)
        while True:
            try:
                if all(self._matches(op, get(key)) for key, op in uow._ops.items()):
                    return True
                # Not there (yet): a proposal the store gave up waiting for may still commit
                # (etcd under load answers "request timed out" and commits a moment later), so
                # look again for a while before concluding that it did not land.
                if time.monotonic() - start >= self.ambiguity_settle:
                    return False
                time.sleep(0.1)
            except StoreUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    @staticmethod
    def _matches(op: Any, kv: Any) -> bool:
        """The store holds what `op` staged (a put's value, or a deleted key's absence)."""
        return isinstance(op, Put) == (kv is not None) and (kv is None or kv.value == op.value)
