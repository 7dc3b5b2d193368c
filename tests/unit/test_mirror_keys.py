"""The etcd mirror's key order (store/cache.py): `range` after many inserts and deletes in
random order equals a brute-force prefix scan of its keys, in key order; unmirrored keys
(attempt markers) never appear. Pure logic: a fake etcd that serves one empty page and no watch."""

from __future__ import annotations

import random
import threading
from typing import Any

from aetcd import rpc

from vxnet.store.cache import UNMIRRORED, Mirror


class _Channels:
    def watch(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError("no watch here")


class _Gateway:
    """An empty cluster at revision 1 whose watch never connects (the mirror's thread ends)."""

    def __init__(self) -> None:
        self._closed = threading.Event()
        self._closed.set()
        self._rpc = _Channels()

    def _call(self, method: str, request: Any, *, idempotent: bool) -> Any:
        return rpc.RangeResponse(header=rpc.ResponseHeader(revision=1))

    def _current(self) -> str:
        return "http://etcd.invalid"

    def _rotate(self, failed: str) -> None:
        pass


def _event(key: str, rev: int, delete: bool = False) -> Any:
    kv = rpc.KeyValue(key=key.encode(), mod_revision=rev, create_revision=rev, version=1,
                      value=b"" if delete else ("v" + key).encode())
    return rpc.Event(type=rpc.Event.DELETE if delete else rpc.Event.PUT, kv=kv)


def test_range_matches_a_brute_force_scan_through_random_inserts_and_deletes() -> None:
    m = Mirror(_Gateway())
    m._thread.join(5)
    rnd = random.Random(14)
    live: set[str] = set()
    prefixes = ["/vxnet/res/ports/", "/vxnet/res/", "/vxnet/ipam/", "/vxnet/ipam/s1/", "/vxnet/", "/", "/vxnet/res/po"]
    rev = 1
    for _ in range(400):
        batch = []
        rev += 1
        for _ in range(rnd.randint(1, 6)):
            if live and rnd.random() < 0.35:
                key = rnd.choice(sorted(live))
                live.discard(key)
                batch.append(_event(key, rev, delete=True))
            else:
                coll = rnd.choice(["res/ports", "res/networks", "res/subnets", "ipam/s1", "ipam/s2", "mac"])
                key = f"/vxnet/{coll}/{rnd.getrandbits(32):08x}"
                if key in live:
                    continue
                live.add(key)
                batch.append(_event(key, rev))
        batch.append(_event(f"{UNMIRRORED}{rev}", rev))   # a marker in the same revision: never mirrored
        m._apply(batch)
        for p in prefixes:
            kvs, at = m.range(p)
            assert [kv.key for kv in kvs] == sorted(k for k in live if k.startswith(p))
            assert all(kv.value == "v" + kv.key for kv in kvs)
            assert at == rev
    assert m.range(UNMIRRORED)[0] == []
    assert len(m._keys) == len(live)
