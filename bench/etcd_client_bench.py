"""What an etcd call costs the calling server, and what makes a status-shaped write slow.

Three measurements, each on a fresh cluster from `tests/support/etcd.py`:

- `calls` (1 member): the client's CPU per unary call (the whole process' CPU, gRPC's own
  threads included) and its wall time, for the ways a Python server can call etcd's gRPC API:
  grpcio's synchronous call (what `store/etcd_grpc.py` does, from the store's worker threads),
  `.future()`, `grpc.aio` on an event loop thread called from another thread
  (`run_coroutine_threadsafe`, what a worker thread would do with an async client), and
  `grpc.aio` awaited on the loop itself; the synchronous call with the store's channel options,
  without retries (`grpc.enable_retries=0`) and with gRPC's defaults; and building the request
  message alone.
- `members` (3 members): a port status write's transaction (a compare on the port, the port,
  `meta/request` and a leased attempt marker: what `services/agents.set_ports_status` sends)
  through the leader and through each follower.
- `gil` (3 members): the same write's wall time while another Python thread of the process is
  busy (the calling thread needs the GIL back when the answer comes), with the interpreter's
  switch interval at 5 ms (the default), 1 ms and 0.2 ms, against no busy thread. The busy thread
  also takes a CPU from etcd: the first two rows differ by both; the switch interval rows only
  by the GIL.
- `marker` (3 members, through one member, one thread): the status write with its exactly-once
  marker (a compare "absent" and a leased put) against the same write without it (a compare on
  the port, the port and `meta/request`), alternating, 4 rounds each: wall per write and the
  members' CPU per write. Would a "plain" transact for idempotent writes shorten the call?

`python -m bench.etcd_client_bench [--calls 400] [--only calls,members,gil,marker]`
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
from aetcd import rpc

from bench.servers import cpu_seconds
from tests.support.etcd import EtcdCluster
from vxnet.store.contract import Compare, Put, key_missing
from vxnet.store.etcd_grpc import OPTIONS
from vxnet.store.etcd_store import EtcdStore

VALUE = "x" * 750  # about a port's JSON


def _txn_request(n: int) -> Any:
    key = f"/vxnet/res/ports/p{n % 50}".encode()
    return rpc.TxnRequest(
        compare=[rpc.Compare(key=key, target=rpc.Compare.MOD, result=rpc.Compare.LESS, mod_revision=1 << 40)],
        success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=VALUE.encode())),
                 rpc.RequestOp(request_put=rpc.PutRequest(key=b"/vxnet/meta/request", value=b"req"))])


def _per_call(fn: Callable[[int], object], n: int, rounds: int = 3) -> list[tuple[float, float]]:
    """[(process CPU ms per call, wall ms per call)] for `rounds` rounds of `fn(n)`."""
    out = []
    for _ in range(rounds):
        fn(5)  # warm
        c0, w0 = time.process_time(), time.perf_counter()
        fn(n)
        out.append(((time.process_time() - c0) / n * 1e3, (time.perf_counter() - w0) / n * 1e3))
    return out


def _row(label: str, figures: list[tuple[float, float]]) -> None:
    cpu = " ".join(f"{c:.3f}" for c, _ in figures)
    wall = " ".join(f"{w:.2f}" for _, w in figures)
    print(f"  {label:44s} client CPU ms/call {cpu}   wall ms {wall}", flush=True)


def calls(n: int) -> None:
    print("calls: one member, one calling thread, 3 rounds")
    cluster = EtcdCluster(1, prefix="vxecb")
    try:
        target = cluster.endpoints[0].split("://", 1)[1]
        count = rpc.RangeRequest(key=b"\0", count_only=True)
        for label, options in (("store's options", OPTIONS), ("no retries", [*OPTIONS, ("grpc.enable_retries", 0)]),
                               ("gRPC defaults", [])):
            channel = grpc.insecure_channel(target, options)
            kv = rpc.KVStub(channel)
            grpc.channel_ready_future(channel).result(5)
            _row(f"sync Range (count), {label}", _per_call(lambda k, kv=kv: [kv.Range(count, timeout=3) for _ in range(k)], n))
            _row(f"sync Txn, {label}", _per_call(lambda k, kv=kv: [kv.Txn(_txn_request(i), timeout=3) for i in range(k)], n))
            _row(f".future() Txn, {label}",
                 _per_call(lambda k, kv=kv: [kv.Txn.future(_txn_request(i), timeout=3).result() for i in range(k)], n))
            channel.close()
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()

        async def connect() -> Any:
            channel = grpc.aio.insecure_channel(target, OPTIONS)
            await channel.channel_ready()
            return rpc.KVStub(channel)

        akv = asyncio.run_coroutine_threadsafe(connect(), loop).result(5)

        async def one(i: int) -> Any:
            return await akv.Txn(_txn_request(i), timeout=3)

        async def serial(k: int) -> None:
            for i in range(k):
                await akv.Txn(_txn_request(i), timeout=3)

        _row("grpc.aio Txn, from another thread",
             _per_call(lambda k: [asyncio.run_coroutine_threadsafe(one(i), loop).result() for i in range(k)], n))
        _row("grpc.aio Txn, awaited on the loop",
             _per_call(lambda k: asyncio.run_coroutine_threadsafe(serial(k), loop).result(), n))
        loop.call_soon_threadsafe(loop.stop)
        _row("building and serialising the TxnRequest only",
             _per_call(lambda k: [_txn_request(i).SerializeToString() for i in range(k)], n))
    finally:
        cluster.stop()


def _status_writes(store: EtcdStore, lease: int, tag: str, n: int, pause: float = 0.003,
                   marker: bool = True) -> list[float]:
    """Wall ms of `n` status-shaped transactions, one at a time (`marker=False`: without the
    attempt marker's compare and put)."""
    out = []
    for i in range(n):
        key, mkey = f"/vxnet/res/ports/{tag}{i}", f"/vxnet-txn/{tag}{i}"
        compares, ops = [Compare(key, "mod", "<", 1 << 40)], [Put(key, VALUE), Put("/vxnet/meta/request", "req")]
        if marker:
            compares.append(key_missing(mkey))
            ops.append(Put(mkey, "committed", lease))
        t0 = time.perf_counter()
        store.txn(compares, ops)
        out.append((time.perf_counter() - t0) * 1e3)
        time.sleep(pause)
    return sorted(out)


def _pct(xs: list[float]) -> str:
    return f"p50 {xs[len(xs) // 2]:.2f}  p90 {xs[int(len(xs) * 0.9)]:.2f}  mean {sum(xs) / len(xs):.2f} ms"


def members(n: int) -> None:
    print("members: a status write through each member of 3, one thread, 3 rounds")
    cluster = EtcdCluster(3, prefix="vxecb")
    stores: list[EtcdStore] = []
    try:
        roles = []
        for ep in cluster.endpoints:
            channel = grpc.insecure_channel(ep.split("://", 1)[1])
            status = rpc.MaintenanceStub(channel).Status(rpc.StatusRequest(), timeout=3)
            channel.close()
            roles.append("leader" if status.header.member_id == status.leader else "follower")
        stores = [EtcdStore([ep], cache=False) for ep in cluster.endpoints]
        walls: list[list[float]] = [[] for _ in stores]
        for r in range(3):
            for i, store in enumerate(stores):
                walls[i] += _status_writes(store, store.grant_lease(60), f"m{r}-{i}-", n // 3)
        for i, role in enumerate(roles):
            print(f"  member {i} ({role:8s}) txn wall {_pct(sorted(walls[i]))}", flush=True)
    finally:
        for store in stores:
            store.close()
        cluster.stop()


def gil(n: int) -> None:
    print("gil: a status write while another Python thread of the process is busy, 2 rounds")
    cluster = EtcdCluster(3, prefix="vxecb")
    store = None
    default = sys.getswitchinterval()
    try:
        store = EtcdStore(cluster.endpoints, cache=False)
        lease = store.grant_lease(60)
        stop = threading.Event()

        def busy() -> None:
            while not stop.is_set():
                sum(i * i for i in range(2000))

        for r in range(2):
            sys.setswitchinterval(default)
            print(f"  {'no busy thread':40s} txn wall {_pct(_status_writes(store, lease, f'g{r}a', n))}", flush=True)
            stop.clear()
            thread = threading.Thread(target=busy, daemon=True)
            thread.start()
            for interval in (default, 0.001, 0.0002):
                sys.setswitchinterval(interval)
                label = f"busy thread, switch interval {interval * 1e3:g} ms"
                print(f"  {label:40s} txn wall {_pct(_status_writes(store, lease, f'g{r}{interval}', n))}", flush=True)
            stop.set()
            thread.join()
    finally:
        sys.setswitchinterval(default)
        if store is not None:
            store.close()
        cluster.stop()


def marker(n: int) -> None:
    print("marker: a status write with and without the attempt marker, 3 members, alternating, 4 rounds")
    cluster = EtcdCluster(3, prefix="vxecb")
    store = None
    try:
        store = EtcdStore(cluster.endpoints[:1], cache=False)
        lease = store.grant_lease(60)
        pids = [p.pid for p in cluster.procs.values()]
        figures: dict[bool, tuple[list[float], float, int]] = {True: ([], 0.0, 0), False: ([], 0.0, 0)}
        for r in range(4):
            for with_marker in ((True, False) if r % 2 == 0 else (False, True)):
                c0 = sum(cpu_seconds(p) for p in pids)
                walls = _status_writes(store, lease, f"k{r}{int(with_marker)}-", n, marker=with_marker)
                walls_all, cpu, count = figures[with_marker]
                figures[with_marker] = (walls_all + walls, cpu + sum(cpu_seconds(p) for p in pids) - c0, count + n)
                print(f"  round {r} {'with marker   ' if with_marker else 'without marker'} txn wall {_pct(walls)}",
                      flush=True)
        for with_marker, (walls, cpu, count) in figures.items():
            print(f"  {'with marker   ' if with_marker else 'without marker'} all rounds: txn wall "
                  f"{_pct(sorted(walls))}; etcd CPU {cpu * 1e3 / count:.2f} ms per write", flush=True)
    finally:
        if store is not None:
            store.close()
        cluster.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--calls", type=int, default=400, help="calls per round (status writes: half as many)")
    ap.add_argument("--only", default="calls,members,gil", help="calls, members, gil, marker")
    args = ap.parse_args()
    parts = {"calls": calls, "members": members, "gil": gil, "marker": marker}
    for name in args.only.split(","):
        parts[name](args.calls if name == "calls" else args.calls // 2)


if __name__ == "__main__":
    main()
