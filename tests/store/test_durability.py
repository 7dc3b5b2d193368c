"""The embedded store's durable commits (docs/store.md, "Durability"): synchronous=FULL by
default, group commit, acknowledgement only after the COMMIT, watchers only of durable
revisions. Group commit is made deterministic by holding the store's database lock (what a
long fsync of the previous group does) while writers queue up."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest

from vxnet.store import open_store, sqlite_store
from vxnet.store.contract import Delete, Event, Put, StoreError, key_missing
from vxnet.store.sqlite_store import SqliteStore


def _sync_mode(store: SqliteStore) -> int:
    return int(store._db.execute("PRAGMA synchronous").fetchone()[0])


def test_full_by_default_normal_only_when_asked(tmp_path) -> None:
    default = open_store(f"sqlite:///{tmp_path}/a.db")
    normal = open_store(f"sqlite:///{tmp_path}/b.db?synchronous=normal")
    try:
        assert _sync_mode(default) == 2  # FULL: the WAL is fsynced at every COMMIT
        assert _sync_mode(normal) == 1
    finally:
        default.close()
        normal.close()
    with pytest.raises(StoreError):
        open_store(f"sqlite:///{tmp_path}/c.db?synchronous=off")
    with pytest.raises(StoreError):
        open_store(f"sqlite:///{tmp_path}/c.db?sync=full")


def test_queued_writers_share_one_commit_and_are_answered_only_after_it(tmp_path) -> None:
    path = os.path.join(tmp_path, "s.db")
    store = SqliteStore(path)
    commits: list[str] = []
    store._db.set_trace_callback(lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None)
    seen: list[list[Event]] = []
    store.watch("/k/", 1, seen.append)
    answered: list[int] = []
    n = 8

    def writer(i: int) -> None:
        r = store.txn([key_missing(f"/k/{i}")], [Put(f"/k/{i}", str(i))])
        assert r.succeeded
        answered.append(r.revision)

    store._db_lock.acquire()  # the previous group's fsync "is running"
    try:
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for _ in range(500):  # every writer has applied in memory and is waiting for the disk
            if store.revision() == n:
                break
            threading.Event().wait(0.01)
        assert store.revision() == n
        assert store.get("/k/3") is not None  # decided: visible to reads and compares ...
        assert answered == []                 # ... but nobody is answered before the COMMIT
        assert seen == []                     # ... and no watcher sees a non-durable revision
        assert commits == []
    finally:
        store._db_lock.release()
    for t in threads:
        t.join(10)
    assert sorted(answered) == list(range(1, n + 1))
    assert len(commits) == 1  # one COMMIT (one fsync) for the whole group
    assert [b[0].kv.mod_revision for b in seen] == list(range(1, n + 1))  # in order, once each
    store.close()
    again = SqliteStore(path)  # what the file holds: all of them
    try:
        assert again.revision() == n and len(again.range("/k/")[0]) == n
    finally:
        again.close()


def test_a_failed_commit_closes_the_store_and_answers_nobody_success(tmp_path) -> None:
    path = os.path.join(tmp_path, "s.db")
    store = SqliteStore(path)
    store.txn([], [Put("/k/a", "1")])

    class BrokenDb:
        """The connection, except that COMMIT fails (as an fsync error would)."""

        def __init__(self, db) -> None:
            self.db = db

        def execute(self, sql: str, *args):
            if sql == "COMMIT":
                raise OSError("disk I/O error")
            return self.db.execute(sql, *args)

        def __getattr__(self, name: str):
            return getattr(self.db, name)

    real = store._db
    store._db = BrokenDb(real)  # type: ignore[assignment]
    with pytest.raises(StoreError):
        store.txn([], [Put("/k/b", "2")])
    with pytest.raises(StoreError):  # memory may be ahead of the file: the store stops serving
        store.txn([], [Put("/k/c", "3")])
    store._db = real
    store.close()
    again = SqliteStore(path)
    try:
        assert again.get("/k/a") is not None and again.get("/k/b") is None
    finally:
        again.close()


def _main_file_keys(path: str, copy_dir: str) -> set[str]:
    """The keys in the database file alone (what checkpoints have copied there), not the WAL."""
    only = os.path.join(copy_dir, "main-only.db")
    shutil.copyfile(path, only)
    db = sqlite3.connect(only)
    try:
        return {k for (k,) in db.execute("SELECT key FROM kv")}
    finally:
        db.close()


def test_checkpoints_run_on_their_own_thread_not_in_a_writers_commit(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 5)
    path = os.path.join(tmp_path, "s.db")
    store = SqliteStore(path)
    try:
        # SQLite's own checkpoint (inside a COMMIT) only as a backstop, far above its default of 1,000 pages
        backstop = int(store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        assert backstop == sqlite_store.AUTOCHECKPOINT_BACKSTOP > 1000
        for i in range(5):  # a few pages each: nowhere near an automatic checkpoint
            store.txn([], [Put(f"/k/{i}", "x" * 100)])
        for _ in range(500):
            if store.checkpoints >= 1:
                break
            threading.Event().wait(0.01)
        assert store.checkpoints == 1
        assert _main_file_keys(path, str(tmp_path)) == {f"/k/{i}" for i in range(5)}  # copied, fsynced
        for i in range(5, 8):  # the WAL goes on from where it was; no new checkpoint below the count
            store.txn([], [Put(f"/k/{i}", "y")])
        assert store.checkpoints == 1
    finally:
        store.close()
    assert store._checkpointer is not None and not store._checkpointer.is_alive()
    again = SqliteStore(path)
    try:
        assert [kv.key for kv in again.range("/k/")[0]] == [f"/k/{i}" for i in range(8)]
    finally:
        again.close()


_WRITER = """
import sys
from vxnet.store import sqlite_store
from vxnet.store.contract import Delete, Put
sqlite_store.CHECKPOINT_EVERY = 3
store = sqlite_store.SqliteStore(sys.argv[1])
lease = store.grant_lease(3600)
for i in range(100000):
    ops = [Put(f"/k/{i % 7}", str(i), lease=lease if i % 2 else 0)]
    if i % 5 == 4:
        ops.append(Delete(f"/k/{(i + 3) % 7}"))
    r = store.txn([], ops)
    print(r.revision, flush=True)  # acknowledged
"""


def test_every_acknowledged_write_survives_a_kill_while_checkpoints_run(tmp_path) -> None:
    """kill -9 of a process writing (puts, updates in place, deletes, leased keys) with a
    background checkpoint every 3 commits: the reopened file holds every acknowledged
    revision, and the same keys, versions and revisions as a store that wrote them slowly."""
    path = os.path.join(tmp_path, "s.db")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, path], stdout=subprocess.PIPE, text=True)
    acked = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        acked = int(line)
        if acked >= 300:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    for line in proc.stdout:  # answers written before the kill
        acked = int(line)
    again = SqliteStore(path)
    try:
        assert again.revision() >= acked
        writes = again.revision()  # one txn per revision; replay them into a fresh store to compare
        ref = SqliteStore(os.path.join(tmp_path, "ref.db"))
        try:
            lease = ref.grant_lease(3600)
            for i in range(writes):
                ops = [Put(f"/k/{i % 7}", str(i), lease=lease if i % 2 else 0)]
                if i % 5 == 4:
                    ops.append(Delete(f"/k/{(i + 3) % 7}"))
                ref.txn([], ops)
            got = [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, bool(kv.lease))
                   for kv in again.range("/k/")[0]]
            want = [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, bool(kv.lease))
                    for kv in ref.range("/k/")[0]]
            assert got == want
        finally:
            ref.close()
    finally:
        again.close()
