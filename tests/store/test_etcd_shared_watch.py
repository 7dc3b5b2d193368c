"""Watches served from the etcd store's mirror stream, and the keys the mirror leaves out, on a
real 3-member etcd cluster.

- A watch of an etcd store with the mirror on rides the mirror's stream (`cache.Subscription`):
  it delivers exactly what etcd's own watch delivers (same batches, keys, types, revisions,
  values), starting in the future or replaying the recent past.
- A watch that starts before a compaction still raises CompactedError, as the contract says.
- When the mirror has to reload (it lost history), every watch on it ends with CompactedError.
- Attempt markers (`/vxnet-txn/`) are not in the mirror, but their revisions still reach it: a
  read at a revision that changed only a marker is answered by the mirror without waiting, and a
  marker read goes to etcd.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.support.etcd import EtcdCluster
from vxnet.store.cache import UNMIRRORED, Subscription
from vxnet.store.contract import CompactedError, Delete, Event, Put, key_missing
from vxnet.store.etcd_store import EtcdStore, _Watch

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    c = EtcdCluster(3, prefix="vxt-swatch")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def stores() -> Iterator[list[EtcdStore]]:
    opened: list[EtcdStore] = []
    yield opened
    for s in opened:
        s.close()


@pytest.fixture
def ns() -> str:
    return f"/w/{uuid.uuid4().hex[:12]}/"


def wait_for(cond, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[tuple[str, str, int, str]]] = []
        self.errors: list[Exception] = []
        self.lock = threading.Lock()

    def __call__(self, events: list[Event]) -> None:
        with self.lock:
            self.batches.append([(e.type.value, e.kv.key, e.kv.mod_revision, e.kv.value) for e in events])

    def error(self, exc: Exception) -> None:
        self.errors.append(exc)

    def revs(self) -> list[int]:
        with self.lock:
            return [b[0][2] for b in self.batches]


def workload(s: EtcdStore, ns: str) -> int:
    """Puts, a multi-key txn, deletes, a marker-only txn and a txn mixing a marker with a key;
    returns the last revision."""
    s.txn([], [Put(ns + "a", "1")])
    s.txn([], [Put(ns + "b", "2"), Put(ns + "c", "3"), Put("/elsewhere/" + ns, "x")])
    s.txn([key_missing(UNMIRRORED + ns + "m1")], [Put(UNMIRRORED + ns + "m1", "committed")])
    s.txn([], [Put(ns + "a", "4"), Put(UNMIRRORED + ns + "m2", "committed")])
    s.txn([], [Delete(ns + "b")])
    return s.txn([], [Delete(ns, prefix=True)]).revision


def test_mirror_fed_watch_delivers_what_etcd_watch_delivers(cluster: EtcdCluster, stores: list[EtcdStore],
                                                            ns: str) -> None:
    mirrored = EtcdStore(cluster.endpoints)
    plain = EtcdStore(cluster.endpoints[1:], cache=False)
    stores += [mirrored, plain]
    start = plain.revision() + 1
    got, want = Recorder(), Recorder()
    h = mirrored.watch(ns, start, got, got.error)
    assert isinstance(h, Subscription)
    assert isinstance(plain.watch(ns, start, want, want.error), _Watch)
    last = workload(plain, ns)
    wait_for(lambda: want.revs() and want.revs()[-1] == last, "etcd's own watch never delivered the workload")
    wait_for(lambda: got.revs() and got.revs()[-1] == last, "the mirror-fed watch never delivered the workload")
    assert got.batches == want.batches and len(want.batches) == 5 and not got.errors
    # started in the recent past: the mirror replays its history, then goes on live
    late = Recorder()
    assert isinstance(mirrored.watch(ns, start, late, late.error), Subscription)
    wait_for(lambda: late.revs() and late.revs()[-1] == last, "the replay never arrived")
    r = plain.txn([], [Put(ns + "z", "9")]).revision
    wait_for(lambda: late.revs()[-1] == r, "the replayed watch did not go on live")
    wait_for(lambda: want.revs()[-1] == r, "etcd's own watch never delivered the last put")
    assert late.batches == want.batches and want.batches[-1] == [("put", ns + "z", r, "9")]
    h.cancel()
    plain.txn([], [Put(ns + "after-cancel", "1")])
    n = len(got.batches)
    time.sleep(0.2)  # a cancelled watch must stay quiet: nothing to wait for
    assert len(got.batches) == n


def test_watch_before_a_compaction_still_raises(cluster: EtcdCluster, stores: list[EtcdStore], ns: str) -> None:
    s = EtcdStore(cluster.endpoints)
    stores.append(s)
    first = s.txn([], [Put(ns + "k", "0")]).revision
    last = 0
    for i in range(1, 4):
        last = s.txn([], [Put(ns + "k", str(i))]).revision
    s.compact(last)
    with pytest.raises(CompactedError):
        s.watch(ns, first, lambda events: None)


def test_mirror_reload_ends_its_watches_with_compacted(cluster: EtcdCluster, stores: list[EtcdStore],
                                                       ns: str) -> None:
    s = EtcdStore(cluster.endpoints)
    stores.append(s)
    wait_for(lambda: s.cache_live, "mirror never connected")
    rec = Recorder()
    s.watch(ns, s.revision() + 1, rec, rec.error)
    m = s._mirror
    assert m is not None
    loads = m.loads
    m._need_load = True  # what a compaction cancel of its stream sets
    m.kick()
    wait_for(lambda: m.loads > loads, "the mirror never reloaded")
    wait_for(lambda: bool(rec.errors), "the watch on a reloaded mirror did not end")
    assert isinstance(rec.errors[0], CompactedError)


def test_markers_are_left_out_of_the_mirror_but_their_revisions_are_not(
        cluster: EtcdCluster, stores: list[EtcdStore], ns: str) -> None:
    s = EtcdStore(cluster.endpoints, cache_wait=TIMEOUT)
    other = EtcdStore(cluster.endpoints[2:], cache=False)
    stores += [s, other]
    wait_for(lambda: s.cache_live, "mirror never connected")
    marker = UNMIRRORED + ns + "m"
    r = other.txn([key_missing(marker)], [Put(marker, "committed")]).revision
    s.read_after(r)  # a revision that changed nothing but a marker
    e0, c0 = s.reads_etcd, s.reads_cached
    assert s.revision() >= r
    assert (s.reads_etcd, s.reads_cached) == (e0, c0 + 1), "the mirror never reached a marker-only revision"
    m = s._mirror
    assert m is not None and m.get(marker) is None
    kv = s.get(marker)  # from etcd
    assert kv is not None and kv.value == "committed" and s.reads_etcd == e0 + 1
    kvs, _ = s.range(UNMIRRORED + ns)
    assert [k.key for k in kvs] == [marker]
