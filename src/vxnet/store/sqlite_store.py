"""Embedded store: the contract of `contract.py` on one SQLite file.

Design:
- The file is the durable copy (WAL, synchronous=FULL by default: a commit is on disk, fsynced,
  so it survives a crash of the process *and* of the machine / a power loss). A write is
  acknowledged (txn returns) only after the SQLite COMMIT that holds it returned.
- Group commit: a txn is decided and applied in memory under the store lock (fast), queued, and
  then written by whichever waiting txn takes the database lock first, together with every
  other queued txn, in one SQLite transaction (one fsync for the group). While one group is
  being fsynced, the next group collects. Revisions stay one per txn, in order.
- Reads (`get`/`range`/`revision`) and compares see a txn as soon as it is decided, before its
  group is on disk (at most one fsync earlier than its writer's answer); a txn that depends on
  such a read is in the same or a later group, so it is never durable without it. Watchers get
  events only once they are durable. If a COMMIT fails, memory is ahead of the file: the store
  closes itself (every later call raises StoreError) and a restart reloads the file.
- All keys are mirrored in memory (a dict, and the sorted `KeySet` of store/keyset.py), so
  reads never touch SQLite. A KeyValue handed out stays the same object until its key changes,
  so a parsed copy attached to it (`KeyValue.attach`) is shared by every reader, and a long
  value's text is dropped once such a copy writes out as exactly that text (`contract.
  StoredKeyValue`: the server's view hub parses every resource, so a resource's JSON is held
  once, parsed). The group commit writes the text each transaction was given, never text
  derived from memory. A load keeps one copy of equal revision numbers and of equal short
  values (`contract.Sharer`: the MAC and IP claims of a port both hold its id), and a write
  keeps the key's existing name.
  That is sound because one process owns the file: `open` takes an exclusive `flock` on a
  lock file beside it, and a second server on the same file gets a clear error.
- Checkpoints (copying the WAL's pages into the database file, then fsyncing it, so the WAL can
  be reused) run on a thread of their own with its own connection (`_checkpoint_loop`), every
  `CHECKPOINT_EVERY` group commits, not inside a writer's COMMIT: SQLite's automatic checkpoint
  (every 1,000 pages) put two more fsyncs, the WAL's and the database file's, on the path of
  whichever write crossed the line. It is only a backstop now (`AUTOCHECKPOINT_BACKSTOP` pages,
  if the thread falls behind). Durability does not depend on it: every COMMIT is in the fsynced
  WAL; a checkpoint fsyncs the database file before SQLite lets the WAL be overwritten.
- History for watches is the `events` table; old events are compacted automatically, keeping
  `history` revisions.
- Every file of the store is 0600 and a new directory 0700 (`secure_files.py`): the store holds
  the token signing keys. A store file others can read is refused at open.
- Leases live in the `leases` table; a reaper thread deletes the keys of expired leases. After a
  restart every lease gets its full TTL again (as etcd does after a leader change).
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence

from vxnet.store import secure_files
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
    Sharer,
    StoreError,
    TxnResult,
    WatchCallback,
    prefix_end,
    stored_kv,
)
from vxnet.store.keyset import KeySet

log = logging.getLogger(__name__)

SHRINK_AFTER = 50_000  # deleted keys after which the in-memory dict is rebuilt (see `_apply`)
CHECKPOINT_EVERY = 200  # group commits between two background checkpoints (a bind's commit: ~5 pages)
AUTOCHECKPOINT_BACKSTOP = 4_000  # WAL pages (16 MB) after which a COMMIT checkpoints itself (SQLite default: 1,000)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL, version INTEGER NOT NULL, lease INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS events (rev INTEGER NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL,
    key TEXT NOT NULL, value TEXT NOT NULL, create_rev INTEGER NOT NULL, version INTEGER NOT NULL,
    lease INTEGER NOT NULL, PRIMARY KEY (rev, seq));
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl INTEGER NOT NULL);
"""
# Upserts, not INSERT OR REPLACE: a replace deletes the row and inserts it under a new rowid, which
# writes the key's index page too (and the old row's page); an update in place writes only the
# row's page. A bind's commit: 10.5 -> 5 pages of WAL (docs/benchmarks.md, session 12).
_PUT_KV = ("INSERT INTO kv VALUES (?,?,?,?,?,?) ON CONFLICT (key) DO UPDATE SET value=excluded.value, "
           "create_rev=excluded.create_rev, mod_rev=excluded.mod_rev, version=excluded.version, lease=excluded.lease")
_SET_META = "INSERT INTO meta VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value=excluded.value"


class _Watcher:
    __slots__ = ("callback", "cancelled", "prefix", "start", "store")

    def __init__(self, store: SqliteStore, prefix: str, callback: WatchCallback, start: int = 0) -> None:
        self.store = store
        self.prefix = prefix
        self.callback = callback
        self.cancelled = False
        self.start = start

    def cancel(self) -> None:
        self.cancelled = True
        self.store._drop_watcher(self)


class SqliteStore:
    """The embedded backend. See the module docstring."""

    may_lose_answers = False  # a txn either commits and answers, or raises before COMMIT
    keeps_key_values = True   # get/range hand out the store's own KeyValues (see the module docstring)
    revision_in_memory = True  # `revision()` reads a field: callers on an event loop may call it there

    def __init__(self, path: str, history: int = 200_000, reap_interval: float = 0.25,
                 synchronous: str = "FULL") -> None:
        """`synchronous`: SQLite's setting, FULL (durable on power loss, the default) or NORMAL
        (durable on a process crash only)."""
        if synchronous.upper() not in ("FULL", "NORMAL"):
            raise StoreError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.path = path
        if path != ":memory:":
            secure_files.prepare_sqlite(path)  # 0700 dir if new, 0600 files, refuses readable ones
            self._lockfile = open(path + ".lock", "w")  # noqa: SIM115 - held for the store's life
            try:
                fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lockfile.close()
                raise StoreError(f"store {path} is in use by another process") from None
        else:
            self._lockfile = None
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.executescript(_SCHEMA)
        self._synchronous = synchronous.upper()
        if path != ":memory:":
            secure_files.verify_sqlite(path)
        self._lock = threading.RLock()    # memory; taken after _db_lock, never before it
        self._db_lock = threading.Lock()  # the SQLite connection (one group commit at a time)
        # per revision awaiting its commit: (rev, staged KeyValues, events, each event's text, revoked lease)
        self._queue: list[tuple[int, dict[str, KeyValue | None], list[Event], list[str], int]] = []
        self._failed: BaseException | None = None
        self._shut = False
        self._history = history
        self._kv: dict[str, KeyValue] = {}
        self._keys = KeySet()
        self._deleted = 0   # keys deleted since `_kv` was last sized (see `_apply`)
        # lease -> its keys: a revoke or an expiry deletes them without scanning every key
        self._lease_keys: dict[int, set[str]] = {}
        share = Sharer()
        for key, value, crev, mrev, version, lease in self._db.execute(
                "SELECT key, value, create_rev, mod_rev, version, lease FROM kv"):
            self._kv[key] = share.kv(key, value, crev, mrev, version, lease)
            if lease:
                self._lease_keys.setdefault(lease, set()).add(key)
        del share
        self._keys = KeySet(self._kv)
        self._rev = self._meta("revision")
        self._durable_rev = self._rev  # the newest revision on disk (and delivered to watchers)
        self._compacted = self._meta("compacted")
        self._next_lease = self._meta("next_lease") or int(time.time() * 1000)
        now = time.monotonic()
        self._leases: dict[int, tuple[int, float]] = {
            lid: (ttl, now + ttl) for lid, ttl in self._db.execute("SELECT id, ttl FROM leases")
        }
        self._watchers: list[_Watcher] = []
        self._closed = threading.Event()
        self._reaper = threading.Thread(
            target=self._reap_loop, args=(reap_interval,), name="vxnet-lease-reaper", daemon=True
        )
        self._reaper.start()
        self.checkpoints = 0  # background checkpoints done (tests and benchmarks read it)
        self._commits = 0     # group commits since the last background checkpoint was asked for
        self._checkpoint_due = threading.Event()
        self._checkpointer: threading.Thread | None = None
        if path != ":memory:":
            self._db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_BACKSTOP}")
            self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="vxnet-store-checkpoint",
                                                  daemon=True)
            self._checkpointer.start()

    # --- reads -------------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        return self._kv.get(key)

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        with self._lock:
            kv = self._kv
            return [kv[k] for k in self._keys.under(prefix)], self._rev

    def revision(self) -> int:
        return self._rev

    # --- writes ------------------------------------------------------------------------------

    def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        with self._lock:
            self._check_open()
            ok = all(self._holds(c) for c in compares)
            ops = success if ok else failure
            if not ops:
                return TxnResult(ok, self._rev)
            for op in ops:
                if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                    raise LeaseNotFound(f"lease {op.lease} not found")
            if not self._apply(ops):
                return TxnResult(ok, self._rev)
            rev = self._rev
        self._sync(rev)
        return TxnResult(ok, rev)

    def _apply(self, ops: Sequence[Op], revoked_lease: int = 0) -> list[Event]:
        """Apply ops as one revision in memory and queue it for the next group commit (caller
        holds the lock). Returns the events. With `revoked_lease`, the lease's row is deleted
        in the same SQLite transaction."""
        rev = self._rev + 1
        staged: dict[str, KeyValue | None] = {}
        events: list[Event] = []
        texts: list[str] = []   # each event's value as written: the commit writes these, not the KeyValues'

        def current(key: str) -> KeyValue | None:
            return staged[key] if key in staged else self._kv.get(key)

        for op in ops:
            if isinstance(op, Put):
                old = current(op.key)
                kv = stored_kv(
                    old.key if old else op.key,  # one copy of a key's name, the dict's
                    op.value,
                    old.create_revision if old else rev,
                    rev,
                    (old.version + 1) if old else 1,
                    op.lease,
                )
                staged[op.key] = kv
                events.append(Event(EventType.PUT, kv))
                texts.append(op.value)
            else:
                keys = [op.key]
                if op.prefix:
                    keys = self._prefix_keys(op.key) + [k for k in staged if k.startswith(op.key)]
                for key in dict.fromkeys(keys):
                    if current(key) is None:
                        continue
                    staged[key] = None
                    events.append(Event(EventType.DELETE, KeyValue(key, "", 0, rev, 0, 0)))
                    texts.append("")
        if not events:
            if revoked_lease:
                self._queue.append((0, {}, [], [], revoked_lease))
            return []
        self._queue.append((rev, staged, events, texts, revoked_lease))
        self._rev = rev
        by_lease = self._lease_keys
        for key, kv in staged.items():
            old = self._kv.get(key)
            if old is not None and old.lease and (kv is None or kv.lease != old.lease):
                held = by_lease.get(old.lease)
                if held is not None:
                    held.discard(key)
                    if not held:
                        del by_lease[old.lease]
            if kv is None:
                if self._kv.pop(key, None) is not None:
                    self._keys.discard(key)
                    self._deleted += 1
            else:
                if old is None:
                    self._keys.add(key)
                if kv.lease:
                    by_lease.setdefault(kv.lease, set()).add(key)
                self._kv[key] = kv
        if self._deleted > SHRINK_AFTER and 4 * self._deleted > len(self._kv):
            # A dict never shrinks: after many deletions (a registration wave drops every
            # binding-failed key), one sized for the keys left (420,000 -> 320,000 keys: 15 -> 7 MiB).
            self._kv = dict(self._kv)
            self._deleted = 0
        return events

    def _sync(self, rev: int) -> None:
        """Return once revision `rev` is on disk: write it, with everything queued, in one
        SQLite transaction, unless another caller's group commit already did."""
        with self._db_lock:
            if self._durable_rev >= rev:
                return
            self._flush_locked()
        if self._durable_rev < rev:
            raise StoreError(f"store failed: {self._failed}")

    def _flush_locked(self) -> None:
        """Commit every queued revision (caller holds _db_lock, not _lock)."""
        with self._lock:
            queue, self._queue = self._queue, []
            upto = self._rev
            if self._failed is not None:
                return
        if not queue:
            return
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            for rev, staged, events, texts, revoked_lease in queue:
                if revoked_lease:
                    db.execute("DELETE FROM leases WHERE id=?", (revoked_lease,))
                written = {e.kv.key: t for e, t in zip(events, texts, strict=True) if e.type is EventType.PUT}
                for key, kv in staged.items():
                    if kv is None:
                        db.execute("DELETE FROM kv WHERE key=?", (key,))
                    else:
                        db.execute(
                            _PUT_KV,
                            (kv.key, written[kv.key], kv.create_revision, kv.mod_revision, kv.version, kv.lease),
                        )
                db.executemany(
                    "INSERT INTO events VALUES (?,?,?,?,?,?,?,?)",
                    [
                        (rev, i, e.type.value, e.kv.key, t, e.kv.create_revision, e.kv.version, e.kv.lease)
                        for i, (e, t) in enumerate(zip(events, texts, strict=True))
                    ],
                )
            db.execute(_SET_META, ("revision", upto))
            if upto - self._compacted > self._history + 1000:
                self._compact_locked(upto - self._history)
            db.execute("COMMIT")
        except BaseException as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            with self._lock:  # memory is ahead of the file now: stop serving
                self._failed = e
                self._closed.set()
            log.exception("group commit failed: the store is closed")
            raise StoreError(f"commit failed: {e}") from e
        with self._lock:
            self._durable_rev = upto
            for _, _, events, _, _ in queue:
                if events:
                    self._notify(events)
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY:
            self._commits = 0
            self._checkpoint_due.set()

    def _holds(self, c: Compare) -> bool:
        if not c.prefix:
            return c.holds(self._kv.get(c.key))
        keys = self._prefix_keys(c.key)
        if not keys:  # as etcd: an empty range is compared as one missing key
            return c.holds(None)
        return all(c.holds(self._kv[k]) for k in keys)

    def _prefix_keys(self, prefix: str) -> list[str]:
        return self._keys.under(prefix)

    # --- watch -------------------------------------------------------------------------------

    def watch(
        self,
        prefix: str,
        start_revision: int,
        callback: WatchCallback,
        on_error: Callable[[Exception], None] | None = None,
    ) -> _Watcher:
        """See the contract. The embedded store never ends a watch by itself (it compacts only
        history older than any live watcher could need, and delivers synchronously), so
        `on_error` is never called."""
        with self._db_lock, self._lock:  # the file holds exactly the revisions up to _durable_rev
            self._check_open()
            if start_revision <= self._compacted:
                raise CompactedError(self._compacted)
            w = _Watcher(self, prefix, callback, start_revision)
            if start_revision <= self._durable_rev:
                rows = self._db.execute(
                    "SELECT rev, type, key, value, create_rev, version, lease FROM events "
                    "WHERE rev >= ? AND key >= ? AND key < ? ORDER BY rev, seq",
                    (start_revision, prefix, prefix_end(prefix)),
                )
                batch: list[Event] = []
                batch_rev = None
                for rev, typ, key, value, crev, version, lease in rows:
                    if not key.startswith(prefix):
                        continue
                    if batch_rev is not None and rev != batch_rev and batch:
                        _deliver(callback, batch)
                        batch = []
                    batch_rev = rev
                    batch.append(Event(EventType(typ), KeyValue(key, value, crev, rev, version, lease)))
                if batch:
                    _deliver(callback, batch)
            self._watchers.append(w)
            return w

    def _drop_watcher(self, w: _Watcher) -> None:
        with self._lock:
            if w in self._watchers:
                self._watchers.remove(w)

    def _notify(self, events: list[Event]) -> None:
        for w in list(self._watchers):
            if events[0].kv.mod_revision < w.start:
                continue
            mine = [e for e in events if e.kv.key.startswith(w.prefix)]
            if mine and not w.cancelled:
                _deliver(w.callback, mine)

    # --- leases ------------------------------------------------------------------------------

    def grant_lease(self, ttl: int) -> int:
        with self._db_lock, self._lock:
            self._check_open()
            self._next_lease += 1
            lid = self._next_lease
            self._db.execute(_SET_META, ("next_lease", lid))
            self._db.execute("INSERT INTO leases VALUES (?, ?)", (lid, ttl))
            self._leases[lid] = (ttl, time.monotonic() + ttl)
            return lid

    def refresh_lease(self, lease_id: int) -> int:
        with self._lock:
            if lease_id not in self._leases:
                raise LeaseNotFound(f"lease {lease_id} not found")
            ttl, _ = self._leases[lease_id]
            self._leases[lease_id] = (ttl, time.monotonic() + ttl)
            return ttl

    def revoke_lease(self, lease_id: int) -> None:
        self._revoke(lease_id, expired_only=False)

    def _revoke(self, lease_id: int, expired_only: bool) -> None:
        with self._lock:
            self._check_open()
            entry = self._leases.get(lease_id)
            if entry is None or (expired_only and entry[1] >= time.monotonic()):
                return  # gone, or refreshed meanwhile
            keys = sorted(self._lease_keys.get(lease_id, ()))
            # the lease row goes in the same SQLite transaction as its keys: a crash in between
            # would otherwise leave keys attached to a lease that no longer expires
            self._apply([Delete(k) for k in keys], revoked_lease=lease_id)
            del self._leases[lease_id]
            rev = self._rev
        with self._db_lock:
            self._flush_locked()
        if self._durable_rev < rev:
            raise StoreError(f"store failed: {self._failed}")

    def _expire(self, lease_id: int) -> None:
        """Revoke `lease_id` if it is still past its deadline (a refresh may have won the race)."""
        self._revoke(lease_id, expired_only=True)

    def _reap_loop(self, interval: float) -> None:
        while not self._closed.wait(interval):
            now = time.monotonic()
            expired = [lid for lid, (_, deadline) in list(self._leases.items()) if deadline < now]
            for lid in expired:
                try:
                    self._expire(lid)
                except Exception:
                    if self._closed.is_set():
                        return
                    log.exception("expiring lease %s failed; will retry", lid)

    # --- maintenance -------------------------------------------------------------------------

    def _checkpoint_loop(self) -> None:
        """Checkpoint the WAL when asked (see the module docstring), on a connection of this
        thread's own: a PASSIVE checkpoint takes no lock a writer waits for, so commits go on
        while it copies pages and fsyncs. SQLite syncs the WAL, then the database file, before
        it counts the pages as copied (at this connection's `synchronous`, FULL or NORMAL:
        both sync a checkpoint)."""
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            while True:
                self._checkpoint_due.wait()
                self._checkpoint_due.clear()
                if self._closed.is_set():
                    return
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # to the end: no read left open
                except sqlite3.Error:
                    log.exception("background checkpoint failed; the next one retries")
                    continue
                self.checkpoints += 1
        finally:
            db.close()

    def compact(self, revision: int) -> None:
        with self._db_lock, self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._compact_locked(min(revision, self._rev))
            self._db.execute("COMMIT")

    def _compact_locked(self, revision: int) -> None:
        if revision <= self._compacted:
            return
        self._db.execute("DELETE FROM events WHERE rev < ?", (revision,))
        self._db.execute(_SET_META, ("compacted", revision - 1))
        self._compacted = revision - 1

    def close(self) -> None:
        with self._db_lock:
            if self._shut:
                return
            if not self._closed.is_set():
                try:
                    self._flush_locked()  # queued txns whose writers are waiting for it
                except StoreError:
                    pass
            with self._lock:
                self._shut = True
                self._closed.set()
                self._watchers.clear()
                if self._checkpointer is not None:  # its connection first: the last one to close checkpoints
                    self._checkpoint_due.set()
                    self._checkpointer.join()
                self._db.close()
                if self._lockfile is not None:
                    fcntl.flock(self._lockfile, fcntl.LOCK_UN)
                    self._lockfile.close()

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise StoreError("store is closed")

    def _meta(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0


def _deliver(callback: WatchCallback, events: list[Event]) -> None:
    """Run a watch callback; its failure is logged and hurts neither the writer (whose
    transaction is committed already) nor the other watchers."""
    try:
        callback(events)
    except Exception:
        log.exception("watch callback %r failed at revision %s", callback, events[0].kv.mod_revision)
