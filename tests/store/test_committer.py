"""The embedded store's committer (`SqliteStore.deferring` / `durable`, docs/store.md "Durability"):
txns decided on an event loop are acknowledged only once their group commit is on disk; one
group -> one COMMIT and one loop callback; a failed COMMIT fails every waiter and closes the
store. The committer is held back by holding the database lock (what the previous group's
fsync does) or by a flush that blocks until the test lets it go."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest

from tests.store.test_durability import BrokenDb
from tests.support.aio import run_in_thread
from vxnet.store import sqlite_store
from vxnet.store.contract import Delete, Put, StoreError, key_missing
from vxnet.store.sqlite_store import SqliteStore


def _count_commits(store: SqliteStore) -> list[str]:
    commits: list[str] = []
    store._db.set_trace_callback(lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None)
    return commits


def _count_callbacks(loop: asyncio.AbstractEventLoop) -> list[Any]:
    """Every `call_soon_threadsafe` made on `loop` from now on."""
    calls: list[Any] = []
    real = loop.call_soon_threadsafe

    def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(callback)
        return real(callback, *args, **kwargs)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    return calls


def _deferred_put(store: SqliteStore, key: str, value: str) -> int:
    with store.deferring() as pending:
        assert store.txn([key_missing(key)], [Put(key, value)]).succeeded
    return pending.rev


def test_a_group_of_deferred_txns_is_one_commit_and_one_loop_callback(tmp_path) -> None:
    store = SqliteStore(os.path.join(tmp_path, "s.db"))
    commits = _count_commits(store)
    n = 8

    async def main() -> None:
        calls = _count_callbacks(asyncio.get_running_loop())
        store._db_lock.acquire()  # the previous group's fsync "is running"
        try:
            revs = [_deferred_put(store, f"/k/{i}", str(i)) for i in range(n)]
            assert revs == list(range(1, n + 1))  # decided at once, in order
            waits = [asyncio.ensure_future(store.durable(r)) for r in revs]
            await asyncio.sleep(0.1)
            assert not any(w.done() for w in waits)  # nothing acknowledged before its COMMIT
            assert commits == []
        finally:
            store._db_lock.release()
        await asyncio.wait_for(asyncio.gather(*waits), 10)
        assert len(commits) == 1
        assert len(calls) == 1  # the whole group answered by one callback on the loop
        await store.durable(n)  # already durable: returns without the committer
        assert len(calls) == 1

    try:
        run_in_thread(main)
        assert store._durable_rev == n
    finally:
        store.close()
    again = SqliteStore(os.path.join(tmp_path, "s.db"))
    try:
        assert len(again.range("/k/")[0]) == n
    finally:
        again.close()


def test_a_deferred_txn_is_acknowledged_only_after_its_flush(tmp_path) -> None:
    store = SqliteStore(os.path.join(tmp_path, "s.db"))
    go = threading.Event()
    entered = threading.Event()
    real = store._flush_locked

    def slow_flush() -> None:  # the fsync that takes its time
        entered.set()
        assert go.wait(10)
        real()

    store._flush_locked = slow_flush  # type: ignore[method-assign]

    async def main() -> None:
        rev = _deferred_put(store, "/k/a", "1")
        assert store.get("/k/a") is not None  # decided: readers see it
        wait = asyncio.ensure_future(store.durable(rev))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert not wait.done()
        assert store._durable_rev < rev
        go.set()
        await asyncio.wait_for(wait, 10)
        assert store._durable_rev >= rev

    try:
        run_in_thread(main)
    finally:
        go.set()
        store.close()


def test_a_failed_commit_fails_every_waiter_and_closes_the_store(tmp_path) -> None:
    path = os.path.join(tmp_path, "s.db")
    store = SqliteStore(path)
    store.txn([], [Put("/k/a", "1")])

    real = store._db

    async def main() -> list[Any]:
        store._db_lock.acquire()
        try:
            revs = [_deferred_put(store, f"/k/{i}", str(i)) for i in range(4)]
            waits = [asyncio.ensure_future(store.durable(r)) for r in revs]
            await asyncio.sleep(0.05)
            store._db = BrokenDb(real)  # type: ignore[assignment]
        finally:
            store._db_lock.release()
        results = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 10)
        with pytest.raises(StoreError):  # closed: no later txn, no later wait
            store.txn([], [Put("/k/z", "9")])
        with pytest.raises(StoreError):
            await store.durable(store.revision() + 1)
        return results

    try:
        results = run_in_thread(main)
        assert len(results) == 4 and all(isinstance(r, StoreError) for r in results)
    finally:
        store._db = real
        store.close()
    again = SqliteStore(path)
    try:
        assert again.get("/k/a") is not None and again.range("/k/")[0] == [again.get("/k/a")]
    finally:
        again.close()


def test_txn_outside_deferring_still_waits_for_its_commit(tmp_path) -> None:
    """The thread path is unchanged: `txn` returns only once durable."""
    store = SqliteStore(os.path.join(tmp_path, "s.db"))
    try:
        r = store.txn([], [Put("/k/a", "1")])
        assert store._durable_rev >= r.revision
        other = SqliteStore(os.path.join(tmp_path, "o.db"))
        try:
            with other.deferring():  # another store's deferral does not apply to this one
                r = store.txn([], [Put("/k/b", "2")])
            assert store._durable_rev >= r.revision
        finally:
            other.close()
    finally:
        store.close()


def test_a_group_writes_each_keys_last_state_and_every_event(tmp_path, monkeypatch) -> None:
    """The group commit writes a key's net effect over the group (put then delete, delete then
    put) and every revision's events, in multi-row statements of at most ROWS_PER_STATEMENT."""
    monkeypatch.setattr(sqlite_store, "ROWS_PER_STATEMENT", 3)
    path = os.path.join(tmp_path, "s.db")
    store = SqliteStore(path)
    store.txn([], [Put("/k/gone", "0"), Put("/k/back", "0")])
    store._db_lock.acquire()  # one group for all of the below
    try:
        writers = [
            threading.Thread(target=store.txn, args=([], ops)) for ops in (
                [Delete("/k/back"), Put("/k/new", "1")],
                [Delete("/k/gone"), Put("/k/back", "2")],
                [Put(f"/k/m{i}", str(i)) for i in range(7)],
                [Put("/k/new", "3"), Delete("/k/m6")],
            )
        ]
        for t in writers:  # one after the other: the revisions' order is the list's
            t.start()
            while len(store._queue) < writers.index(t) + 1:
                time.sleep(0.001)
    finally:
        store._db_lock.release()
    for t in writers:
        t.join(10)
    expected = {kv.key: (kv.value, kv.mod_revision, kv.version) for kv in store.range("/k/")[0]}
    events = store._db.execute("SELECT rev, seq, type, key FROM events WHERE rev > 1 ORDER BY rev, seq").fetchall()
    store.close()
    again = SqliteStore(path)
    try:
        assert {kv.key: (kv.value, kv.mod_revision, kv.version) for kv in again.range("/k/")[0]} == expected
        assert expected["/k/back"] == ("2", 3, 1) and expected["/k/new"] == ("3", 5, 2)
        assert "/k/gone" not in expected and "/k/m6" not in expected and len(expected) == 8
        assert events[:4] == [
            (2, 0, "delete", "/k/back"), (2, 1, "put", "/k/new"), (3, 0, "delete", "/k/gone"), (3, 1, "put", "/k/back")]
        assert len(events) == 4 + 7 + 2
    finally:
        again.close()
