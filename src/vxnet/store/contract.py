"""The store contract: an etcd-like key-value store with revisions.

Every backend (embedded SQLite, etcd) implements `Store`. The contract, checked by
`tests/store/test_contract.py` against each backend:

- One global revision counter. Every successful write transaction increments it by exactly
  one; all keys written by the transaction share that `mod_revision`. A transaction that
  changes nothing (a failed compare without failure ops, a delete of a missing key) makes no
  revision, as in etcd.
- A key remembers `create_revision` (revision of its creation; reset when it is deleted and
  created again), `mod_revision`, `version` (writes since creation) and `lease` (0 = none).
- `txn(compares, success, failure)` is atomic: if every compare holds, the success operations
  are applied, otherwise the failure operations. Reads in it see the state before it.
- `watch(prefix, start_revision, callback)` first delivers every retained event with
  revision >= start_revision, then each newly committed revision, in order, exactly once, as
  one list of events per revision. A start revision older than the compaction point raises
  `CompactedError`; the watcher must then relist (`range`) and watch from the list's revision+1.
  A callback that raises is the watcher's bug: the store logs it, keeps delivering, and neither
  the writer nor the other watchers notice.
- Leases: keys attached to a lease are deleted (with delete events) when it expires or is
  revoked. `refresh_lease` returns the remaining TTL, or raises `LeaseNotFound`.
- `keeps_key_values` (optional, False if absent): whether `get`/`range` hand out the backend's
  own KeyValue objects, the same object for a key until it changes (the embedded store; etcd
  with its read mirror). Readers then share a parsed copy through `KeyValue.attach`, and such
  a backend holds a long value as that copy once it writes out as exactly the stored text
  (`StoredKeyValue`): attached copies are read-only for everyone.
- `revision_in_memory` (optional, False if absent): `revision()` does no I/O and never blocks
  (the embedded store), so an event loop may call it directly.
- `shared_by_servers` (optional, False if absent): several API servers may write through
  their own connections at once (etcd). Each server's reads then lag the others' writes by a
  watch delay, so a server allocating "the lowest free" address collides with the others
  (services/ipam.py starts every server on a lane of its own there).
- Lost answers: `may_lose_answers` says whether `txn` can raise `StoreUnavailable` after the
  transaction was (or may later be) applied. etcd can (a leader dies after proposing); the
  embedded store cannot (its txn raises only before COMMIT, or answers). Callers that must
  apply a write exactly once (`services/repo.py`) resolve such outcomes with a marker key.

Values are text (JSON in practice). Keys are text paths under one root prefix.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import orjson


class StoreError(Exception):
    """Base class of store errors."""


class CompactedError(StoreError):
    """The requested revision is no longer in the history."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted up to {compact_revision}")
        self.compact_revision = compact_revision


class LeaseNotFound(StoreError):
    """The lease does not exist (expired or revoked)."""


class TxnTooLarge(StoreError):
    """The transaction has more operations than the store accepts (etcd's --max-txn-ops)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; the request may be retried."""


@dataclasses.dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as stored.

    `parsed` is not part of the key (not compared, hashed or shown): a reader may attach the
    parsed form of `value` to it (`attach`), so that the next reader of the same KeyValue need
    not parse it again (services/repo.py and the view hub share one parsed copy of a resource
    this way). Backends that keep their KeyValues in memory (the embedded store, the etcd read
    mirror) hand out the same object until the key changes; a change makes a new one."""

    key: str
    value: str
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0
    parsed: Any = dataclasses.field(default=None, compare=False, repr=False)

    def attach(self, parsed: Any, drop: bool = True) -> None:
        """Remember `parsed`, the parsed form of `value` (treated as read-only by everyone); a
        store's KeyValue then drops its text unless `drop` is False (`drop_text`)."""
        object.__setattr__(self, "parsed", parsed)

    def drop_text(self) -> None:
        """Hold the value as the attached parsed object where it writes out as exactly the text
        (StoredKeyValue); a plain KeyValue keeps its text."""


class ValueChanged(StoreError):
    """A stored value held as its parsed object (`StoredKeyValue`) no longer writes out as the
    text stored: someone changed a shared parsed object in place (a bug: they are read-only)."""


_RAW_VALUE = KeyValue.__dict__["value"]   # the slot under `value`, for StoredKeyValue
MIN_DERIVED = 160   # characters: shorter values stay text (claims, ids, markers)


def _value(kv: KeyValue) -> str:
    raw = _RAW_VALUE.__get__(kv)
    if raw.__class__ is str:
        return raw  # type: ignore[no-any-return]
    text = orjson.dumps(kv.parsed)    # the text is the parsed object written out (see StoredKeyValue)
    if hash(text) != raw:
        raise ValueChanged(f"the value of {kv.key} was changed in memory (a shared parsed object was modified)")
    return text.decode()


class StoredKeyValue(KeyValue):
    """A KeyValue of a store's in-memory copy whose text is dropped once a parsed object that
    writes out as exactly that text is attached: then `value` is that object written out again
    (orjson, ~1 us for a port) and the slot under it holds the text's hash (64 bits, the
    interpreter's: memory only), checked on every read (an object changed in place raises
    ValueChanged instead of answering other text). A resource's JSON is the largest part of a
    store's memory, and the server parses every resource anyway (the view hub), so its text
    costs nothing once the parse is held. Text that orjson would write differently (non-ASCII
    characters, which `json.dumps` escapes; some floats; integers beyond 64 bits) is kept as
    text. Equal to (and hashed as) the KeyValue with the same fields; copies and pickles are
    plain KeyValues. Built by `stored_kv`."""

    __slots__ = ()

    value = property(_value, lambda self, raw: _RAW_VALUE.__set__(self, raw))  # type: ignore[assignment]

    def attach(self, parsed: Any, drop: bool = True) -> None:
        object.__setattr__(self, "parsed", parsed)   # first: a reader that sees the hash finds it
        if drop:
            self.drop_text()

    def drop_text(self) -> None:
        parsed = self.parsed
        raw = _RAW_VALUE.__get__(self)
        if raw.__class__ is not str or parsed.__class__ is not dict:
            return
        try:
            text = orjson.dumps(parsed)
        except TypeError:   # what orjson refuses (an integer beyond 64 bits): keep the text
            return
        if len(text) == len(raw) and text == raw.encode("utf-8", "surrogatepass"):
            _RAW_VALUE.__set__(self, hash(text))

    def _fields(self) -> tuple[Any, ...]:
        return (self.key, self.value, self.create_revision, self.mod_revision, self.version, self.lease)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyValue):
            return NotImplemented
        return self._fields() == (other.key, other.value, other.create_revision, other.mod_revision,
                                  other.version, other.lease)

    def __hash__(self) -> int:
        return hash(self._fields())

    def __reduce__(self) -> Any:
        return (KeyValue, self._fields())


SHORT = 64  # characters: values up to this long are interned (`stored_kv`, `Sharer`)


def stored_kv(key: str, value: str, create_revision: int, mod_revision: int, version: int,
              lease: int = 0) -> KeyValue:
    """A KeyValue for a store's in-memory copy: a long value's text may later be dropped for
    the parsed object a reader attaches (StoredKeyValue); a short one is interned (see
    `Sharer`)."""
    if len(value) < MIN_DERIVED:
        if len(value) <= SHORT and value.__class__ is str:   # (a str subclass cannot be interned)
            value = sys.intern(value)
        return KeyValue(key, value, create_revision, mod_revision, version, lease)
    return StoredKeyValue(key, value, create_revision, mod_revision, version, lease)


class Sharer:
    """Builds the KeyValues of a load (`stored_kv`) with one copy of equal revision numbers (a
    transaction writes many keys at one revision; every number beyond 256 is an object of its
    own, 32 bytes) and of equal short values: interned (`sys.intern`), so a port's MAC and IP
    claims hold one copy of its id, and that copy is the server's parse of the port's own `id`
    too (services/compact.py interns it: 100,000 ports, ~8 MiB). Equal values, so nothing a
    reader sees changes; drop it after the load (it holds the revisions it has seen)."""

    def __init__(self) -> None:
        self._ints: dict[int, int] = {}

    def kv(self, key: str, value: str, create_revision: int, mod_revision: int, version: int,
           lease: int = 0) -> KeyValue:
        ints = self._ints
        n = len(value)
        if n <= SHORT and value.__class__ is str:
            value = sys.intern(value)
        cls = KeyValue if n < MIN_DERIVED else StoredKeyValue   # as `stored_kv`, inline: a load makes many
        return cls(key, value, ints.setdefault(create_revision, create_revision),
                   ints.setdefault(mod_revision, mod_revision), version, ints.setdefault(lease, lease))


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """A change of one key. For DELETE, `kv.value` is "" and `kv.mod_revision` is the
    revision of the deletion."""

    type: EventType
    kv: KeyValue


CompareTarget = Literal["create", "mod", "version", "value", "exists"]
CompareOp = Literal["==", "!=", "<", ">"]


@dataclasses.dataclass(frozen=True, slots=True)
class Compare:
    """A condition on one key. `exists` compares a bool; a missing key has create/mod/version 0
    and no value: a `value` compare on a missing key never holds, whatever the op (etcd's rule).

    With `prefix=True` the condition must hold for every key under `key` that exists; when none
    does, it is evaluated once against a missing key (so `mod < N` holds and a `value` compare
    fails), exactly as etcd's compare with a range_end. `exists` takes no prefix.
    `range_unchanged_since` uses it to detect keys created or changed under a prefix after a
    read."""

    key: str
    target: CompareTarget
    op: CompareOp
    value: int | str | bool
    prefix: bool = False

    def __post_init__(self) -> None:
        if self.prefix and self.target == "exists":
            raise ValueError("an `exists` compare takes no prefix")

    def holds(self, kv: KeyValue | None) -> bool:
        """Evaluate against the current value of the key (None if missing)."""
        actual: int | str | bool
        if self.target == "exists":
            actual = kv is not None
        elif self.target == "value":
            if kv is None:
                return False
            actual = kv.value
        elif self.target == "create":
            actual = kv.create_revision if kv else 0
        elif self.target == "mod":
            actual = kv.mod_revision if kv else 0
        else:
            actual = kv.version if kv else 0
        if self.op == "==":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        if self.op == "<":
            return actual < self.value  # type: ignore[operator]
        return actual > self.value  # type: ignore[operator]


def key_missing(key: str) -> Compare:
    """Compare that holds when `key` does not exist."""
    return Compare(key, "create", "==", 0)


def range_unchanged_since(prefix: str, revision: int) -> Compare:
    """Compare that holds when no key under `prefix` was created or modified after `revision`
    (deleting keys does not break it)."""
    return Compare(prefix, "mod", "<", revision + 1, prefix=True)


def key_unchanged(kv: KeyValue) -> Compare:
    """Compare that holds when `kv` was not modified since it was read."""
    return Compare(kv.key, "mod", "==", kv.mod_revision)


@dataclasses.dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: str
    lease: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Delete:
    """Delete one key, or every key under it if `prefix` is set."""

    key: str
    prefix: bool = False


Op = Put | Delete


@dataclasses.dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int


WatchCallback = Callable[[list[Event]], None]


class WatchHandle(Protocol):
    def cancel(self) -> None:
        """Stop delivering events. Idempotent."""


class Store(Protocol):
    """The contract every backend implements. Methods are thread-safe and blocking."""

    may_lose_answers: bool

    def get(self, key: str) -> KeyValue | None:
        """The key, or None."""

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys starting with `prefix`, sorted by key, and the revision they were read at."""

    def revision(self) -> int:
        """The current revision."""

    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """Atomic compare-and-swap; see the module docstring."""

    def watch(
        self,
        prefix: str,
        start_revision: int,
        callback: WatchCallback,
        on_error: Callable[[Exception], None] | None = None,
    ) -> WatchHandle:
        """Deliver events under `prefix` from `start_revision` on; see the module docstring.
        The callback runs on the store's thread and must not block. `on_error` is called once
        if the watch ends by itself (history compacted under a lagging watcher: CompactedError;
        store closed); the caller then relists and watches again."""

    def grant_lease(self, ttl: int) -> int:
        """A new lease id with `ttl` seconds."""

    def refresh_lease(self, lease_id: int) -> int:
        """Keep a lease alive; returns its TTL. Raises LeaseNotFound."""

    def revoke_lease(self, lease_id: int) -> None:
        """Delete the lease and its keys. Unknown ids are ignored."""

    def compact(self, revision: int) -> None:
        """Forget history before `revision`."""

    def close(self) -> None:
        """Release resources."""


def put(store: Store, key: str, value: str, lease: int = 0) -> int:
    """Unconditional put; returns the new revision."""
    return store.txn([], [Put(key, value, lease)]).revision


def delete(store: Store, key: str) -> int:
    """Unconditional delete; returns the new revision."""
    return store.txn([], [Delete(key)]).revision


def prefix_end(prefix: str) -> str:
    """The smallest key greater than every key starting with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else "\U0010ffff"
