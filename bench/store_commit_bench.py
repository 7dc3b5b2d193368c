"""What durable commits cost the embedded store: SQLite synchronous=FULL (fsync per group
commit, the default) vs NORMAL (no fsync per commit), with 1 and 8 writer threads.

Each writer does port-create-shaped transactions straight on `SqliteStore` (a compare that the
resource key does not exist, a ~600-byte put and a claim put), so the figure is the store's own
ceiling, without HTTP. With 8 threads, FULL shows how much group commit recovers: the writers
queued while one fsync runs share the next one.

`python -m bench.store_commit_bench [--txns 2400]`
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

from vxnet.store.contract import Put, key_missing
from vxnet.store.sqlite_store import SqliteStore


def measure(path: str, synchronous: str, threads: int, txns: int) -> tuple[float, float, float]:
    """(txn/s, p50 ms, p99 ms)."""
    store = SqliteStore(path, synchronous=synchronous)
    lat: list[float] = []
    lock = threading.Lock()
    per = max(1, txns // threads)

    def writer(t: int) -> None:
        mine = []
        for i in range(per):
            k = f"/vxnet/res/ports/{t}-{i}"
            t0 = time.perf_counter()
            store.txn([key_missing(k)], [Put(k, "x" * 600), Put(f"/vxnet/ipam/s/{t}-{i}", k)])
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    store.close()
    lat.sort()
    return len(lat) / wall, lat[len(lat) // 2] * 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--txns", type=int, default=2400, help="transactions per case (FULL, 1 thread: a sixth)")
    opts = p.parse_args()
    d = tempfile.mkdtemp(prefix="vxnet-commit-bench-", dir="/var/tmp")
    try:
        print(f"{'synchronous':<12} {'threads':>7} {'txn/s':>8} {'p50 ms':>7} {'p99 ms':>7}")
        for sync in ("NORMAL", "FULL"):
            for threads in (1, 8):
                n = opts.txns // 6 if (sync, threads) == ("FULL", 1) else opts.txns
                rate, p50, p99 = measure(os.path.join(d, f"{sync}-{threads}.db"), sync, threads, n)
                print(f"{sync:<12} {threads:>7} {rate:>8.0f} {p50:>7.1f} {p99:>7.1f}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
