"""The etcd store's read cache (`vxnet.store.cache.Mirror`), on a real 3-member etcd cluster.

The contract suite (test_contract.py) already runs every contract test through the cache; these
tests check what only the cache can get wrong, counting which reads the mirror answered
(`reads_cached`) and which went to etcd (`reads_etcd`) so a test cannot pass by falling back:
- read-your-writes: a read right after this store's own write sees it, from the mirror;
- a CAS that lost sees, on the next read, at least the state that made it lose;
- another client's write becomes visible without any write of ours;
- the mirror's member dies while others write, delete and compact: reads go to etcd while the
  stream is down, then the mirror reloads everything (its resume point was compacted) and
  shows exactly the cluster's state again;
- the cache is on by default for etcd URLs, and `cache=0` in the URL turns it off;
- a watch that resumes in the past serves no read before it has caught up: etcd answers the
  watch's `created` before the missed events (a gate in the watch's transport holds them, so the
  window is as long as the test wants, not etcd's up-to-100 ms sync period);
- read-your-writes and monotonic reads through member kills, restarts and leader changes.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Self

import pytest

from tests.support.etcd import EtcdCluster
from vxnet.store import open_store
from vxnet.store.cache import Mirror
from vxnet.store.contract import Put, StoreUnavailable, delete, key_unchanged, put
from vxnet.store.etcd_store import EtcdStore

# Upper bounds for events (an election, a member's restart, the mirror's reload), never a pass
# condition: under a CPU burner etcd may need several election rounds, so they are generous.
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    c = EtcdCluster(3, prefix="vxt-cache")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def ns() -> str:
    return f"/c/{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def stores(cluster: EtcdCluster) -> Iterator[list[EtcdStore]]:
    """Opened stores, closed after the test."""
    opened: list[EtcdStore] = []
    yield opened
    for s in opened:
        s.close()


def open_live(stores: list[EtcdStore], endpoints: list[str], **kw: object) -> EtcdStore:
    """A store whose mirror's watch is connected. Tests that count which reads the mirror
    answered pass `cache_wait=TIMEOUT`: a read then waits for the mirror to reach the revision it
    must show (an event), not at most the production default (1 s), which a loaded machine can
    exceed: the read would go to etcd, correct but not what the test checks."""
    s = EtcdStore(endpoints, **kw)  # type: ignore[arg-type]
    stores.append(s)
    wait_for(lambda: s.cache_live, "mirror never connected")
    return s


def wait_for(cond, what: str, timeout: float = TIMEOUT) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def retrying(fn):  # type: ignore[no-untyped-def]
    """`fn()`, retried while etcd has no leader (StoreUnavailable), for at most TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return fn()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_reads_right_after_own_writes_see_them_from_the_mirror(cluster: EtcdCluster, stores: list[EtcdStore],
                                                               ns: str) -> None:
    s = open_live(stores, cluster.endpoints, cache_wait=TIMEOUT)
    c0, e0 = s.reads_cached, s.reads_etcd
    for i in range(100):
        rev = put(s, ns + "k", str(i))
        kv = s.get(ns + "k")
        assert kv is not None and kv.value == str(i) and kv.mod_revision == rev
        kvs, at = s.range(ns)
        assert at >= rev and [kv.value for kv in kvs] == [str(i)]
        assert s.revision() >= rev
        if i % 10 == 0:
            r = delete(s, ns + "k")
            assert s.get(ns + "k") is None and s.range(ns)[1] >= r
    assert s.reads_etcd == e0, "a read fell back to etcd: the mirror did not keep up within cache_wait"
    assert s.reads_cached - c0 == 100 * 3 + 10 * 2


def test_a_lost_cas_then_reads_the_state_that_beat_it(cluster: EtcdCluster, stores: list[EtcdStore],
                                                      ns: str) -> None:
    a = open_live(stores, cluster.endpoints, cache_wait=TIMEOUT)
    b = open_live(stores, cluster.endpoints[1:])  # another server, on another member
    put(a, ns + "k", "0")
    e0 = a.reads_etcd
    bulk = "x" * 2000
    for i in range(1, 11):
        seen = a.get(ns + "k")
        assert seen is not None
        # the other server wins the race, with a big txn: a's mirror needs a few ms to take it in,
        # longer than a's own losing CAS takes, so only the floor makes the next read wait for it
        b.txn([], [Put(ns + "k", f"b{i}")] + [Put(ns + f"bulk/{j}", bulk) for j in range(400)])
        res = a.txn([key_unchanged(seen)], [Put(ns + "k", f"a{i}")])
        assert not res.succeeded
        now = a.get(ns + "k")  # must not be the stale value the CAS was based on
        assert now is not None and now.value == f"b{i}" and now.mod_revision <= res.revision
    assert a.reads_etcd == e0


def test_another_clients_write_becomes_visible(cluster: EtcdCluster, stores: list[EtcdStore], ns: str) -> None:
    a = open_live(stores, cluster.endpoints)
    b = open_live(stores, cluster.endpoints[2:])
    e0 = a.reads_etcd
    rev = b.txn([], [Put(ns + "x", "1"), Put(ns + "y", "2")]).revision
    wait_for(lambda: a.get(ns + "x") is not None, "another client's write never showed up")
    kvs, at = a.range(ns)
    assert at >= rev and [(kv.key, kv.value, kv.mod_revision) for kv in kvs] == [
        (ns + "x", "1", rev), (ns + "y", "2", rev)]
    assert a.revision() >= rev
    assert a.reads_etcd == e0, "served by etcd, not by the mirror"


def test_mirror_reloads_after_its_member_was_gone_past_a_compaction(
        cluster: EtcdCluster, stores: list[EtcdStore], ns: str) -> None:
    name = cluster.names[0]
    a = open_live(stores, cluster.endpoints[:1])   # knows only member 0
    b = open_live(stores, cluster.endpoints[1:])
    put(b, ns + "keep", "1")
    put(b, ns + "gone", "1")
    put(b, ns + "changed", "old")
    wait_for(lambda: a.get(ns + "changed") is not None, "mirror never saw the first writes")
    assert a._mirror is not None and a._mirror.loads == 1
    cluster.kill(name)
    try:
        wait_for(lambda: not a.cache_live, "mirror still live with its only member dead")
        with pytest.raises(StoreUnavailable):   # no stale answer while the stream is down
            a.get(ns + "keep")
        # if member 0 led, writes time out until the others elect a leader (1-2 s): retry them
        # (each is idempotent, so an ambiguous first attempt does no harm)
        retrying(lambda: delete(b, ns + "gone"))
        retrying(lambda: put(b, ns + "changed", "new"))
        retrying(lambda: put(b, ns + "added", "1"))
        for i in range(20):
            retrying(lambda i=i: put(b, ns + "filler", str(i)))
        retrying(lambda: b.compact(b.revision()))
        expected = retrying(lambda: b.range(ns))
    finally:
        stale: list[int] = []
        stop = threading.Event()
        poller = threading.Thread(target=poll_live, args=(a._mirror, expected[1], stale, stop))
        poller.start()
        cluster.start(name)
        cluster.wait_healthy()
    # The events, in the order they happen: the mirror's first watch on the restarted member is
    # created (etcd answers `created` at once and the cancel for compaction up to 100 ms later:
    # the mirror must not serve its pre-outage state meanwhile), cancelled for compaction, the
    # reload (loads == 2), a new watch (live once caught up). Polled meanwhile: whenever the
    # mirror serves reads, it is at least at `expected`'s revision. Read `loads` before `cache_live`: read the
    # other way round, a poll preempted between the two reads could see the first watch live and
    # then the finished reload while the new watch is not yet live.

    try:
        wait_for(lambda: a._mirror.loads == 2 and a.cache_live, "mirror did not reload after compaction")
    finally:
        stop.set()
        poller.join()
    assert stale == [], "stale reads while the mirror resumed"
    e0 = a.reads_etcd
    wait_for(lambda: a.range(ns)[1] >= expected[1], "mirror did not catch up")
    assert a.range(ns)[0] == expected[0]
    assert a.get(ns + "gone") is None and a.get(ns + "changed").value == "new"
    assert a.reads_etcd == e0
    r = put(a, ns + "after", "1")          # and it keeps following
    assert a.get(ns + "after").mod_revision == r


def poll_live(m: Mirror, floor: int, stale: list[int], stop: threading.Event) -> None:
    """Until `stop`, every ms: if the mirror says it serves reads, it must be at least at
    `floor` (the revision of a linearizable read that completed before); record it if not.
    This checks the mirror itself, not a read through the store: a store's read also waits for
    the floor of its own earlier reads, which would hide the window from a test that reads."""
    while not stop.is_set():
        with m._cond:
            if m.live and m.revision() < floor:
                stale.append(m.revision())
        time.sleep(0.001)


def test_mirror_stops_serving_when_its_member_loses_the_leader(cluster: EtcdCluster, stores: list[EtcdStore],
                                                              ns: str) -> None:
    """Member 0's peers stop (SIGSTOP): member 0 keeps the mirror's watch open but can learn of
    no new revision. etcd ends the watch (require-leader), so the mirror stops serving reads
    rather than showing that member's frozen state; it serves again once the peers are back."""
    a = open_live(stores, cluster.endpoints[:1])
    others = [cluster.procs[n] for n in cluster.names[1:]]
    for p in others:
        p.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: not a.cache_live, "mirror still serving from a member without a leader")
    finally:
        for p in others:
            p.send_signal(signal.SIGCONT)
    cluster.wait_healthy()
    wait_for(lambda: a.cache_live, "mirror did not resume once the leader was back")
    rev = retrying(lambda: put(a, ns + "k", "v"))
    assert a.get(ns + "k").mod_revision == rev


def test_cache_on_by_default(cluster: EtcdCluster, stores: list[EtcdStore], ns: str) -> None:
    s = open_store("etcd://" + ",".join(e.removeprefix("http://") for e in cluster.endpoints))
    assert isinstance(s, EtcdStore)
    stores.append(s)
    rev = put(s, ns + "k", "v")
    assert s.get(ns + "k").mod_revision == rev
    # The mirror's watch connects in the background and a read waits at most the default
    # cache_wait for it: on a loaded machine the first reads may go to etcd. Wait for the event
    # (a read answered by the mirror) instead of expecting it from the first read.
    wait_for(lambda: s.get(ns + "k").mod_revision == rev and s.reads_cached >= 1, "no read served by the mirror")
    assert s.cache_live


def test_cache_off_reads_etcd(cluster: EtcdCluster, stores: list[EtcdStore], ns: str) -> None:
    s = open_store("etcd://" + ",".join(e.removeprefix("http://") for e in cluster.endpoints) + "?cache=0")
    assert isinstance(s, EtcdStore)
    stores.append(s)
    rev = put(s, ns + "k", "v")
    assert s.get(ns + "k").mod_revision == rev and s.range(ns)[1] >= rev
    assert s.reads_cached == 0 and s.reads_etcd == 2 and not s.cache_live


class _WatchGate:
    """The mirror's watch stream (`Channels.watch`, store/etcd_grpc.py), with two gates: a new
    stream waits at `connect` until the test opens it, then its first response (etcd's
    `created`) passes and everything after it waits until `events` opens. `held` is set once
    the mirror has taken the first response and asks for more (so it has finished handling
    `created`)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.connect = threading.Event()
        self.connecting = threading.Event()
        self.events = threading.Event()
        self.held = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> _GatedStream:
        self.connecting.set()
        self.connect.wait()
        return _GatedStream(self._stream(*args, **kwargs), self)


class _GatedStream:
    def __init__(self, inner: Any, gate: _WatchGate) -> None:
        self._inner, self._gate = inner, gate

    def __iter__(self) -> Iterator[Any]:
        first = True
        for res in self._inner:
            yield res
            if first:
                first = False
                self._gate.held.set()
                self._gate.events.wait()

    def shutdown(self) -> None:
        self._inner.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.shutdown()


def test_a_resumed_watch_serves_no_read_before_it_caught_up(cluster: EtcdCluster, stores: list[EtcdStore],
                                                           ns: str) -> None:
    a = open_live(stores, cluster.endpoints, cache_wait=TIMEOUT)
    b = open_live(stores, cluster.endpoints)
    put(a, ns + "k", "old")
    assert a.get(ns + "k").value == "old"
    assert a._mirror is not None
    gate = _WatchGate(a._rpc.watch)
    a._rpc.watch = gate                     # type: ignore[method-assign]
    a._mirror.kick()                        # the stream drops; its successor waits at the gate
    assert gate.connecting.wait(TIMEOUT), f"no new watch (mirror thread alive: {a._mirror._thread.is_alive()})"
    wait_for(lambda: not a.cache_live, "mirror still live without a stream")
    rev = put(b, ns + "k", "new")           # acknowledged while a's mirror is disconnected
    assert b.get_linearizable(ns + "k").value == "new"
    gate.connect.set()
    assert gate.held.wait(TIMEOUT), "the resumed watch never got its `created`"
    # The window: a's watch exists (from the revision after "old"), the event with "new" is not in.
    e0 = a.reads_etcd
    kv = a.get(ns + "k")
    assert kv is not None and kv.value == "new" and kv.mod_revision == rev, "stale read from a mirror catching up"
    assert not a.cache_live and a.reads_etcd == e0 + 1, "the mirror answered before it caught up"
    gate.events.set()
    wait_for(lambda: a.cache_live, "mirror never caught up")
    c0 = a.reads_cached
    assert a.get(ns + "k").mod_revision == rev and a.reads_cached == c0 + 1
    assert a._mirror.catchups == 1


def test_read_your_writes_through_member_restarts(cluster: EtcdCluster, stores: list[EtcdStore], ns: str) -> None:
    """Each round kills the member the mirror streams from (the leader too, now and then), writes
    and reads back through the same store while the mirror reconnects to another member, then
    restarts the member (it comes back behind the others and catches up). Every read after an
    acknowledged write sees it, and no read goes back to an older revision."""
    a = open_live(stores, cluster.endpoints)
    names = dict(zip(cluster.endpoints, cluster.names, strict=True))
    n = 0
    seen = 0                                    # the newest revision a read has shown
    mirrored = 0

    def write_read(count: int) -> None:
        nonlocal n, seen, mirrored
        for _ in range(count):
            n += 1
            try:
                put(a, ns + "k", str(n))
            except StoreUnavailable:            # answer lost: it may have landed; put it again
                retrying(lambda v=str(n): put(a, ns + "k", v))
            c0 = a.reads_cached
            kv = retrying(lambda: a.get(ns + "k"))
            assert kv is not None and kv.value == str(n), f"write {n} acknowledged, read shows {kv}"
            assert kv.mod_revision >= seen
            seen = kv.mod_revision
            mirrored += a.reads_cached - c0

    for _ in range(3):
        victim = names[a._current()]
        cluster.kill(victim)
        try:
            write_read(15)
        finally:
            cluster.start(victim)
        write_read(15)                          # the member rejoins (maybe not caught up yet)
        cluster.wait_healthy()
        write_read(5)
    wait_for(lambda: a.cache_live, "mirror not live after the restarts")
    write_read(5)
    assert mirrored > 0, "no read came from the mirror: the test checked only etcd"


def test_a_watch_taken_while_the_mirror_catches_up_survives_its_compaction_reload(
        cluster: EtcdCluster, stores: list[EtcdStore], ns: str) -> None:
    # A watch from a revision etcd still holds must deliver it, whatever the mirror does: here
    # the mirror's stream is down while the cluster moves on and compacts past the mirror's
    # resume point, so the mirror will reload (and cancel whatever it serves). A watch taken in
    # that window must not be one of those (seen once as a flaky contract test).
    from tests.store.test_contract import Recorder

    a = open_live(stores, cluster.endpoints)
    b = open_live(stores, cluster.endpoints)
    assert a._mirror is not None
    gate = _WatchGate(a._rpc.watch)
    a._rpc.watch = gate                     # type: ignore[method-assign]
    a._mirror.kick()
    assert gate.connecting.wait(TIMEOUT), "no new watch"
    wait_for(lambda: not a.cache_live, "mirror still live without a stream")
    revs = [put(b, ns + f"k{i}", str(i)) for i in range(6)]
    b.compact(revs[3])
    errors: list[Exception] = []
    rec = Recorder()
    w = a.watch(ns, revs[3], rec, errors.append)
    try:
        gate.connect.set()
        gate.events.set()
        wait_for(lambda: a._mirror is not None and a._mirror.loads >= 2, "the mirror never reloaded")
        rec.wait_revision(revs[5])
        assert rec.revisions() == revs[3:] and not errors
        r = put(b, ns + "after", "x")     # and it goes on after the reload
        rec.wait_revision(r)
        assert rec.revisions() == [*revs[3:], r] and not errors
    finally:
        w.cancel()
