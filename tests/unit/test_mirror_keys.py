"""The etcd mirror's key order (store/cache.py): `range` after many inserts and deletes in
random order equals a brute-force prefix scan of its keys, in key order; unmirrored keys
(attempt markers) never appear. Pure logic: a gateway that serves one empty page and no watch."""

from __future__ import annotations

import base64
import random
import threading
from typing import Any

from vxnet.store.cache import UNMIRRORED, Mirror


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class _Pool:
    def stream(self, *args: Any) -> Any:
        raise ConnectionRefusedError("no watch here")


class _Gateway:
    """An empty cluster at revision 1 whose watch never connects (the mirror's thread ends)."""

    def __init__(self) -> None:
        self._closed = threading.Event()
        self._closed.set()
        self._pool = _Pool()

    def _call(self, path: str, body: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        return {"header": {"revision": "1"}, "kvs": []}

    def _current(self) -> str:
        return "http://etcd.invalid"

    def _rotate(self, failed: str) -> None:
        pass


def _event(key: str, rev: int, delete: bool = False) -> dict[str, Any]:
    kv = {"key": _b64(key), "mod_revision": str(rev), "create_revision": str(rev), "version": "1"}
    if not delete:
        kv["value"] = _b64("v" + key)
    return {"type": "DELETE", "kv": kv} if delete else {"kv": kv}


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
