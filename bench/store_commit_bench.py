"""What durable commits cost the embedded store: SQLite synchronous=FULL (fsync per group
commit, the default) vs NORMAL (no fsync per commit), with 1 and 8 writer threads.

Each writer does port-create-shaped transactions straight on `SqliteStore` (a compare that the
resource key does not exist, a ~600-byte put and a claim put), so the figure is the store's own
ceiling, without HTTP. With 8 threads, FULL shows how much group commit recovers: the writers
queued while one fsync runs share the next one.

`python -m bench.store_commit_bench [--txns 2400]`

`--binds N`: instead, the port-up bind's commit: N ports (a ~1.5 KB JSON value each and two
claim keys) written first, then each updated in place (a new binding), one transaction at a
time, `--gap` ms apart, as binds reach the server; printed: the commit's p50 / p90 / p99 / max
ms, how many of those commits took over 3x the p50 (a checkpoint or a WAL restart on the
writer's path shows there), the background checkpoints (a store that has them), and the WAL
pages one such commit writes (counted on a second store whose checkpoints are held off).
Against another tree's store (A/B): `PYTHONPATH=<tree>/src` (vxnet comes from there, this
benchmark from the current directory).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time

from vxnet.store import sqlite_store
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


def _port(i: int, host: str) -> str:
    """A port's stored JSON, about 1.5 KB like the lab's."""
    return json.dumps({"id": f"{i:08d}-0000-4000-8000-000000000000", "name": f"p{i}", "network_id": "n" * 36,
                       "mac_address": f"fa:16:3e:00:{i // 256 % 256:02x}:{i % 256:02x}", "binding:host_id": host,
                       "fixed_ips": [{"subnet_id": "s" * 36, "ip_address": f"100.64.{i // 256 % 256}.{i % 256}"}],
                       "device_owner": "compute:nova" if host else "", "security_groups": ["g" * 36],
                       "binding:profile": {}, "binding:vif_details": {"port_filter": True}, "pad": "x" * 900})


def _create_ports(store: SqliteStore, n: int) -> None:
    for i in range(n):
        k = f"/vxnet/res/ports/{i:08d}"
        store.txn([key_missing(k)], [Put(k, _port(i, "")), Put(f"/vxnet/ipam/s/{i}", k),
                                     Put(f"/vxnet/macs/{i}", k)])


def bind_commits(path: str, n: int, gap: float) -> list[float]:
    """Each of n ports updated once, one commit at a time, `gap` s apart: the commits' ms."""
    store = SqliteStore(path)
    _create_ports(store, n)
    lat = []
    for i in range(n):
        time.sleep(gap)
        t0 = time.perf_counter()
        store.txn([], [Put(f"/vxnet/res/ports/{i:08d}", _port(i, f"h{i % 3}"))])
        lat.append((time.perf_counter() - t0) * 1000)
    print(f"background checkpoints: {getattr(store, 'checkpoints', 'none (SQLite checkpoints inside a COMMIT)')}")
    store.close()
    return lat


def wal_pages_per_bind(path: str, n: int) -> float:
    """WAL pages one bind-shaped commit writes (checkpoints held off while counting)."""
    if hasattr(sqlite_store, "CHECKPOINT_EVERY"):
        sqlite_store.CHECKPOINT_EVERY = 1 << 30
    store = SqliteStore(path)
    store._db.execute("PRAGMA wal_autocheckpoint=0")
    _create_ports(store, n)
    side = sqlite3.connect(path)
    side.execute("PRAGMA wal_checkpoint(PASSIVE)")  # everything so far into the file ...
    for i in range(n):
        store.txn([], [Put(f"/vxnet/res/ports/{i:08d}", _port(i, f"h{i % 3}"))])
    _, frames, _ = side.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()  # ... then count the binds'
    side.close()
    store.close()
    return frames / n


def main_binds(n: int, gap_ms: float) -> None:
    d = tempfile.mkdtemp(prefix="vxnet-commit-bench-", dir="/var/tmp")
    try:
        lat = sorted(bind_commits(os.path.join(d, "binds.db"), n, gap_ms / 1000))
        p50 = lat[len(lat) // 2]
        slow = sum(1 for x in lat if x > 3 * p50)
        print(f"{n} bind commits, {gap_ms:g} ms apart (store from {sqlite_store.__file__}): ms p50 / p90 / p99 / max "
              f"{p50:.2f} / {lat[int(len(lat) * 0.9)]:.2f} / {lat[int(len(lat) * 0.99)]:.2f} / {lat[-1]:.2f}; "
              f"over 3x p50: {slow}")
        print(f"WAL pages per bind commit: {wal_pages_per_bind(os.path.join(d, 'pages.db'), min(n, 300)):.1f}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--txns", type=int, default=2400, help="transactions per case (FULL, 1 thread: a sixth)")
    p.add_argument("--binds", type=int, default=0, help="measure N bind-shaped commits instead (see above)")
    p.add_argument("--gap", type=float, default=5.0, help="ms between two bind commits (5)")
    opts = p.parse_args()
    if opts.binds:
        main_binds(opts.binds, opts.gap)
        return
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
