"""The embedded store's in-memory dict after a wave of deletions (a dict never shrinks by itself)."""

from __future__ import annotations

import sys
from pathlib import Path

from vxnet.store import sqlite_store
from vxnet.store.contract import Delete, Put


def test_the_embedded_store_shrinks_its_dict_after_many_deletions(tmp_path: Path) -> None:
    """A dict never shrinks; after a wave of deletions the store's in-memory dict is rebuilt for
    the keys left (what a registration wave leaves: every binding-failed key gone), and reads
    and writes go on as before."""
    store = sqlite_store.SqliteStore(str(tmp_path / "s.db"))
    try:
        n = 2 * sqlite_store.SHRINK_AFTER
        for start in range(0, n, 5000):
            store.txn([], [Put(f"/k/{i:07d}", "v") for i in range(start, min(n, start + 5000))])
        grown = sys.getsizeof(store._kv)
        for start in range(0, n, 5000):   # delete 3 of every 4 keys
            store.txn([], [Delete(f"/k/{i:07d}") for i in range(start, min(n, start + 5000)) if i % 4])
        assert len(store._kv) == len(range(0, n, 4))
        assert sys.getsizeof(store._kv) < 0.6 * grown   # a table of half the size
        assert store.get("/k/0000000").value == "v" and store.get("/k/0000001") is None
        assert [kv.key for kv in store.range("/k/")[0]][:2] == ["/k/0000000", "/k/0000004"]
        store.txn([], [Put("/k/0000001", "again")])
        assert store.get("/k/0000001").value == "again"
    finally:
        store.close()
