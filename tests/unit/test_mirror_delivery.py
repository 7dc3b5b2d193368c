"""Watches served from the etcd mirror (store/cache.py, `Mirror.subscribe`) are delivered on the
thread that applied the revision, at once, with no hand-over to another thread; and still as a
store watch delivers: every revision at or after the start that changed a key under the prefix,
once, in order, one batch per revision, also while subscribers join during a stream of revisions
(their replay of the recent past comes before anything newer). A reload ends every watch with
CompactedError, once. Pure logic: the fake etcd of test_mirror_keys (the events are applied by
the test as the mirror's stream would)."""

from __future__ import annotations

import random
import threading

from tests.unit.test_mirror_keys import _event, _Gateway
from vxnet.store.cache import Mirror
from vxnet.store.contract import CompactedError, Event


def _mirror() -> Mirror:
    m = Mirror(_Gateway())
    m._thread.join(5)   # the fake's watch never connects: its thread ends
    m._live = True      # as after a watch that caught up
    return m


class _Recorder:
    def __init__(self) -> None:
        self.batches: list[list[Event]] = []
        self.threads: set[str] = set()
        self.errors: list[Exception] = []

    def __call__(self, events: list[Event]) -> None:
        self.batches.append(events)
        self.threads.add(threading.current_thread().name)

    def error(self, exc: Exception) -> None:
        self.errors.append(exc)

    def revisions(self) -> list[int]:
        return [b[0].kv.mod_revision for b in self.batches]


def test_a_revision_reaches_the_subscriber_on_the_applying_thread_before_apply_returns() -> None:
    m = _mirror()
    rec = _Recorder()
    assert m.subscribe("/vxnet/", 2, rec, rec.error) is not None

    def stream() -> None:
        m._apply([_event("/vxnet/res/ports/p1", 2)])
        assert rec.revisions() == [2], "delivered when apply returns, not later on another thread"

    t = threading.Thread(target=stream, name="the-mirror-stream")
    t.start()
    t.join(5)
    assert rec.revisions() == [2]
    assert rec.threads == {"the-mirror-stream"}
    assert m.get("/vxnet/res/ports/p1") is not None   # applied before it was delivered


def test_subscribers_joining_during_a_stream_get_every_revision_once_in_order() -> None:
    m = _mirror()
    rnd = random.Random(17)
    prefixes = ["/vxnet/", "/vxnet/res/ports/", "/vxnet/res/networks/", "/vxnet/ipam/"]
    changed: dict[int, set[str]] = {}   # revision -> the keys it changed
    last = 400
    started: list[tuple[str, int, _Recorder]] = []
    go = threading.Event()

    def stream() -> None:
        go.wait(5)
        for rev in range(2, last + 1):
            keys = {f"/vxnet/{rnd.choice(['res/ports', 'res/networks', 'ipam'])}/{rnd.randrange(50)}"
                    for _ in range(rnd.randint(1, 3))}
            changed[rev] = keys
            m._apply([_event(k, rev) for k in sorted(keys)])

    def join(seed: int) -> None:
        r = random.Random(seed)
        go.wait(5)
        for _ in range(6):
            prefix = r.choice(prefixes)
            start = max(2, m.revision() + r.randint(-30, 5))   # the recent past or the near future
            rec = _Recorder()
            if m.subscribe(prefix, start, rec, rec.error) is not None:
                started.append((prefix, start, rec))
            threading.Event().wait(r.random() / 500)

    threads = [threading.Thread(target=stream)] + [threading.Thread(target=join, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(30)
    assert len(started) > 10
    for prefix, start, rec in started:
        want = [rev for rev in range(start, last + 1) if any(k.startswith(prefix) for k in changed[rev])]
        assert rec.revisions() == want, (prefix, start)
        for batch in rec.batches:
            rev = batch[0].kv.mod_revision
            assert sorted(e.kv.key for e in batch) == sorted(k for k in changed[rev] if k.startswith(prefix))
            assert all(e.kv.mod_revision == rev for e in batch)
        assert not rec.errors


def test_a_cancelled_subscription_hears_nothing_more_and_a_reload_ends_the_others_once() -> None:
    m = _mirror()
    gone, kept = _Recorder(), _Recorder()
    sub = m.subscribe("/vxnet/", 2, gone, gone.error)
    assert sub is not None and m.subscribe("/vxnet/", 2, kept, kept.error) is not None
    m._apply([_event("/vxnet/a", 2)])
    sub.cancel()
    m._apply([_event("/vxnet/b", 3)])
    assert gone.revisions() == [2] and kept.revisions() == [2, 3]
    m._load()                       # the mirror lost history: every watch on it ends
    m._live = True
    m._apply([_event("/vxnet/c", 4)])
    assert [type(e) for e in kept.errors] == [CompactedError] and kept.revisions() == [2, 3]
    assert not gone.errors
