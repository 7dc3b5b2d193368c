"""The store contract (`vxnet.store.contract`), checked once per backend (see conftest.py).

Nothing here knows which backend it talks to: revisions are compared relative to the store's
own current revision, never to absolute numbers, and every key lives under `ns`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from vxnet.services.compact import compact
from vxnet.store.contract import (
    CompactedError,
    Compare,
    Delete,
    Event,
    EventType,
    KeyValue,
    LeaseNotFound,
    Put,
    Store,
    StoreError,
    delete,
    key_missing,
    key_unchanged,
    prefix_end,
    put,
    range_unchanged_since,
)

Backend = Any  # conftest.Backend: open(), reopen(store)
TIMEOUT = 10.0


class Recorder:
    """A watch callback that records each delivered batch (thread-safe)."""

    def __init__(self) -> None:
        self.batches: list[list[Event]] = []
        self._cond = threading.Condition()

    def __call__(self, events: list[Event]) -> None:
        with self._cond:
            self.batches.append(list(events))
            self._cond.notify_all()

    def wait(self, pred: Callable[[list[list[Event]]], bool], timeout: float = TIMEOUT) -> list[list[Event]]:
        """Wait until `pred(batches)` holds; fails the test on timeout."""
        with self._cond:
            ok = self._cond.wait_for(lambda: pred(self.batches), timeout)
            assert ok, f"watch condition not met; got {self.revisions()}"
            return [list(b) for b in self.batches]

    def wait_revision(self, rev: int) -> list[list[Event]]:
        return self.wait(lambda bs: any(e.kv.mod_revision >= rev for b in bs for e in b))

    def revisions(self) -> list[int]:
        """The revision of each batch, in delivery order."""
        with self._cond:
            return [b[0].kv.mod_revision for b in self.batches]

    def events(self) -> list[tuple[str, str, int]]:
        with self._cond:
            return [(e.type.value, e.kv.key, e.kv.mod_revision) for b in self.batches for e in b]


def assert_batches_well_formed(batches: list[list[Event]]) -> None:
    """One revision per batch, strictly increasing across batches."""
    last = -1
    for b in batches:
        assert b, "empty batch delivered"
        revs = {e.kv.mod_revision for e in b}
        assert len(revs) == 1, f"batch mixes revisions {revs}"
        rev = revs.pop()
        assert rev > last, f"batch revision {rev} after {last}"
        last = rev


# --- revisions and key metadata ------------------------------------------------------------------


def test_fresh_keys_are_missing(store: Store, ns: str) -> None:
    assert store.get(ns + "a") is None
    kvs, rev = store.range(ns)
    assert kvs == []
    assert rev == store.revision()


def test_each_write_increments_revision_by_one(store: Store, ns: str) -> None:
    r0 = store.revision()
    for i in range(1, 6):
        r = put(store, ns + f"k{i}", "v")
        assert r == r0 + i
        assert store.revision() == r


def test_keys_of_one_txn_share_its_revision(store: Store, ns: str) -> None:
    put(store, ns + "old", "x")
    r0 = store.revision()
    res = store.txn([], [Put(ns + "a", "1"), Put(ns + "b", "2"), Delete(ns + "old")])
    assert res.succeeded
    assert res.revision == r0 + 1 == store.revision()
    for k in ("a", "b"):
        kv = store.get(ns + k)
        assert kv is not None
        assert kv.mod_revision == kv.create_revision == r0 + 1
    assert store.get(ns + "old") is None


def test_create_mod_revision_and_version(store: Store, ns: str) -> None:
    k = ns + "k"
    r1 = put(store, k, "one")
    kv = store.get(k)
    assert kv == KeyValue(k, "one", r1, r1, 1, 0)
    put(store, ns + "other", "x")
    r3 = put(store, k, "two")
    kv = store.get(k)
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == ("two", r1, r3, 2)
    r4 = delete(store, k)
    assert r4 == r3 + 1
    assert store.get(k) is None
    # re-created: create_revision and version start over
    r5 = put(store, k, "three")
    kv = store.get(k)
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == ("three", r5, r5, 1)


def test_write_that_changes_nothing_makes_no_revision(store: Store, ns: str) -> None:
    put(store, ns + "a", "1")
    r0 = store.revision()
    res = store.txn([], [Delete(ns + "missing")])
    assert res.succeeded and res.revision == r0 == store.revision()
    res = store.txn([], [Delete(ns + "nothing/", prefix=True)])
    assert res.succeeded and store.revision() == r0


def test_values_round_trip_unicode_and_json(store: Store, ns: str) -> None:
    value = '{"name": "r\u00e9seau \u7db2\u7d61 \U0001f310", "q": "\\"x\\"", "nl": "a\\nb"}'
    put(store, ns + "\u00e9t\u00e9/k", value)
    kv = store.get(ns + "\u00e9t\u00e9/k")
    assert kv is not None and kv.value == value
    put(store, ns + "empty", "")
    assert store.get(ns + "empty").value == ""


def test_long_values_read_back_exactly_everywhere(store: Store, ns: str) -> None:
    """Long values (a stored resource's JSON) may be held as the parsed object a reader attached
    (contract.StoredKeyValue): every read path gives back exactly the text written, before and
    after a parse is attached, for text the parse writes out identically and for text it does
    not (non-ASCII written unescaped)."""
    port = json.dumps({"id": "p1", "name": "web-1", "fixed_ips": [{"subnet_id": "s1", "ip_address": "100.64.0.2"}],
                       "binding:host_id": "h1", "tags": [], "binding:profile": {}, "weight": 0.5,
                       "description": "d" * 300}, separators=(",", ":"))
    other = json.dumps({"id": "p2", "name": "r\u00e9seau \u7db2\u7d61 \U0001f310", "tags": [],
                        "description": "d" * 300}, separators=(",", ":"), ensure_ascii=False)
    rec = Recorder()
    store.watch(ns, store.revision() + 1, rec)
    rev = store.txn([], [Put(ns + "a", port), Put(ns + "b", other)]).revision
    for attached in (False, True):
        assert store.get(ns + "a").value == port
        kvs = [kv for kv in store.range(ns)[0] if kv.key != ns + "c"]
        assert [kv.value for kv in kvs] == [port, other]
        assert kvs[0] == KeyValue(ns + "a", port, rev, rev, 1)
        assert hash(kvs[0]) == hash(KeyValue(ns + "a", port, rev, rev, 1))
        assert store.txn([Compare(ns + "a", "value", "==", port)], [Put(ns + "c", "x")]).succeeded
        assert not store.txn([Compare(ns + "a", "value", "==", other)], [Put(ns + "c", "y")]).succeeded
        assert store.txn([Compare(ns + "b", "value", "==", other)], [Put(ns + "c", "z")]).succeeded
        if not attached:
            for kv in kvs:
                kv.attach(compact(json.loads(kv.value), share_empty=True))
    rec.wait_revision(rev)
    assert [(e.kv.key, e.kv.value) for batch in rec.batches for e in batch if e.kv.mod_revision == rev] == [
        (ns + "a", port), (ns + "b", other)]


# --- transactions --------------------------------------------------------------------------------


@pytest.fixture
def sample(store: Store, ns: str) -> tuple[Store, str, KeyValue]:
    """A key created at revision c, modified at m > c, version 2, value "v2"."""
    k = ns + "k"
    put(store, k, "v1")
    put(store, ns + "filler", "x")
    put(store, k, "v2")
    kv = store.get(k)
    assert kv is not None and kv.version == 2 and kv.mod_revision > kv.create_revision
    return store, k, kv


def _compare_cases(kv: KeyValue) -> list[tuple[str, str, object, bool]]:
    """(target, op, value, expected) for the sample key."""
    c, m, _v = kv.create_revision, kv.mod_revision, kv.version
    return [
        ("create", "==", c, True), ("create", "==", c + 1, False),
        ("create", "!=", c, False), ("create", "!=", c + 1, True),
        ("create", "<", c + 1, True), ("create", "<", c, False),
        ("create", ">", c - 1, True), ("create", ">", c, False),
        ("mod", "==", m, True), ("mod", "==", c, False),
        ("mod", "!=", m, False), ("mod", "!=", c, True),
        ("mod", "<", m + 1, True), ("mod", "<", m, False),
        ("mod", ">", m - 1, True), ("mod", ">", m, False),
        ("version", "==", 2, True), ("version", "==", 1, False),
        ("version", "!=", 2, False), ("version", "!=", 3, True),
        ("version", "<", 3, True), ("version", "<", 2, False),
        ("version", ">", 1, True), ("version", ">", 2, False),
        ("value", "==", "v2", True), ("value", "==", "v1", False),
        ("value", "!=", "v2", False), ("value", "!=", "v1", True),
        ("value", "<", "v3", True), ("value", "<", "v2", False),
        ("value", ">", "v1", True), ("value", ">", "v2", False),
        ("exists", "==", True, True), ("exists", "==", False, False),
        ("exists", "!=", True, False), ("exists", "!=", False, True),
    ]


def test_txn_compare_every_target_and_op_on_existing_key(sample: tuple[Store, str, KeyValue]) -> None:
    store, k, kv = sample
    for i, (target, op, value, expected) in enumerate(_compare_cases(kv)):
        r0 = store.revision()
        res = store.txn([Compare(k, target, op, value)], [Put(k + f"/ok{i}", "s")], [Put(k + f"/fail{i}", "f")])
        case = f"{target} {op} {value!r}"
        assert res.succeeded is expected, case
        assert res.revision == r0 + 1, case
        assert (store.get(k + f"/ok{i}") is not None) is expected, case
        assert (store.get(k + f"/fail{i}") is not None) is (not expected), case


def test_txn_compare_on_missing_key(store: Store, ns: str) -> None:
    k = ns + "missing"
    cases = [
        ("create", "==", 0, True), ("mod", "==", 0, True), ("version", "==", 0, True),
        ("create", ">", 0, False), ("mod", "!=", 0, False), ("version", "<", 1, True),
        ("exists", "==", False, True), ("exists", "==", True, False),
    ]
    for target, op, value, expected in cases:
        res = store.txn([Compare(k, target, op, value)], [], [])
        assert res.succeeded is expected, f"{target} {op} {value}"
    assert store.txn([key_missing(k)], []).succeeded
    put(store, k, "now")
    assert not store.txn([key_missing(k)], []).succeeded


def test_txn_all_compares_must_hold(store: Store, ns: str) -> None:
    put(store, ns + "a", "1")
    a = store.get(ns + "a")
    ok = [key_unchanged(a), key_missing(ns + "b")]
    assert store.txn(ok, [Put(ns + "c", "x")]).succeeded
    r0 = store.revision()
    bad = [key_unchanged(a), key_missing(ns + "c")]
    res = store.txn(bad, [Put(ns + "d", "x")])
    assert not res.succeeded
    assert res.revision == r0 == store.revision()
    assert store.get(ns + "d") is None


def test_txn_failure_branch_is_applied_atomically(store: Store, ns: str) -> None:
    put(store, ns + "a", "1")
    put(store, ns + "gone", "x")
    r0 = store.revision()
    res = store.txn([Compare(ns + "a", "value", "==", "2")],
                    [Put(ns + "success", "s")],
                    [Put(ns + "f1", "f"), Put(ns + "a", "3"), Delete(ns + "gone")])
    assert not res.succeeded
    assert res.revision == r0 + 1
    assert store.get(ns + "success") is None
    assert store.get(ns + "f1").mod_revision == r0 + 1
    assert store.get(ns + "a").value == "3"
    assert store.get(ns + "gone") is None


def test_txn_compares_see_state_before_the_txn(store: Store, ns: str) -> None:
    # the success ops change the compared key; the compare is evaluated first
    put(store, ns + "a", "1")
    res = store.txn([Compare(ns + "a", "value", "==", "1")], [Put(ns + "a", "2"), Put(ns + "b", "x")])
    assert res.succeeded
    assert store.get(ns + "a").value == "2"


def test_cas_loses_to_a_concurrent_write(store: Store, ns: str) -> None:
    put(store, ns + "a", "1")
    seen = store.get(ns + "a")
    put(store, ns + "a", "2")  # someone else
    assert not store.txn([key_unchanged(seen)], [Put(ns + "a", "mine")]).succeeded
    assert store.get(ns + "a").value == "2"


def test_put_and_delete_of_same_key_in_one_txn(store: Store, ns: str) -> None:
    # the later op wins; the result is one revision
    put(store, ns + "a", "1")
    r0 = store.revision()
    store.txn([], [Delete(ns + "a"), Put(ns + "a", "again")])
    kv = store.get(ns + "a")
    assert kv is not None and kv.value == "again" and kv.mod_revision == r0 + 1
    assert store.revision() == r0 + 1


def test_value_compare_on_missing_key_never_holds(store: Store, ns: str) -> None:
    for op in ("==", "!=", "<", ">"):
        for value in ("", "x"):
            assert not store.txn([Compare(ns + "missing", "value", op, value)], []).succeeded, (op, value)


def test_prefix_compare_on_an_empty_range_is_a_missing_key(store: Store, ns: str) -> None:
    empty = ns + "empty/"
    assert store.txn([Compare(empty, "mod", "==", 0, prefix=True)], []).succeeded
    assert store.txn([Compare(empty, "create", "<", 1, prefix=True)], []).succeeded
    assert not store.txn([Compare(empty, "mod", "==", 5, prefix=True)], []).succeeded
    assert not store.txn([Compare(empty, "version", ">", 0, prefix=True)], []).succeeded
    assert not store.txn([Compare(empty, "value", "==", "x", prefix=True)], []).succeeded
    assert not store.txn([Compare(empty, "value", "!=", "x", prefix=True)], []).succeeded
    with pytest.raises(ValueError):
        Compare(empty, "exists", "==", True, prefix=True)


def test_prefix_compare_must_hold_for_every_key_under_the_prefix(store: Store, ns: str) -> None:
    put(store, ns + "p/a", "x")
    put(store, ns + "p/b", "x")
    put(store, ns + "pz", "other")  # shares the string prefix "p" but not "p/"
    assert store.txn([Compare(ns + "p/", "value", "==", "x", prefix=True)], []).succeeded
    put(store, ns + "p/c", "y")
    r0 = store.revision()
    res = store.txn([Compare(ns + "p/", "value", "==", "x", prefix=True)], [Put(ns + "s", "1")], [Put(ns + "f", "1")])
    assert not res.succeeded and store.get(ns + "f") is not None and res.revision == r0 + 1
    assert store.txn([Compare(ns + "p/", "version", "==", 1, prefix=True)], []).succeeded


def test_range_unchanged_since(store: Store, ns: str) -> None:
    put(store, ns + "r/a", "1")
    put(store, ns + "r/b", "1")
    put(store, ns + "elsewhere", "1")
    _, read_rev = store.range(ns + "r/")
    guard = range_unchanged_since(ns + "r/", read_rev)
    assert store.txn([guard], []).succeeded
    put(store, ns + "elsewhere", "2")  # outside the prefix: irrelevant
    assert store.txn([guard], []).succeeded
    delete(store, ns + "r/a")  # deletions do not break it
    assert store.txn([guard], []).succeeded
    put(store, ns + "r/new", "1")  # a key created after the read does
    assert not store.txn([guard], [Put(ns + "w", "x")]).succeeded
    assert store.get(ns + "w") is None
    _, read_rev = store.range(ns + "r/")
    assert store.txn([range_unchanged_since(ns + "r/", read_rev)], []).succeeded
    put(store, ns + "r/b", "2")  # and so does a modified one
    assert not store.txn([range_unchanged_since(ns + "r/", read_rev)], []).succeeded


# --- ranges and prefix deletes -------------------------------------------------------------------


def test_range_is_sorted_and_limited_to_prefix(store: Store, ns: str) -> None:
    keys = ["b/2", "a", "b/10", "b/1", "c", "b/", "ba", "\u00e9", "B"]
    for k in keys:
        put(store, ns + k, k)
    put(store, ns[:-1] + "x", "sibling of ns")  # shares ns without its trailing slash
    kvs, rev = store.range(ns)
    assert [kv.key for kv in kvs] == [ns + k for k in sorted(keys)]
    assert rev == store.revision()
    sub, _ = store.range(ns + "b/")
    assert [kv.key for kv in sub] == [ns + "b/", ns + "b/1", ns + "b/10", ns + "b/2"]
    assert all(kv.value == kv.key[len(ns):] for kv in kvs)


def test_range_revision_is_consistent_with_contents(store: Store, ns: str) -> None:
    put(store, ns + "a", "1")
    kvs, rev = store.range(ns)
    assert max(kv.mod_revision for kv in kvs) <= rev
    put(store, ns + "b", "1")
    _, rev2 = store.range(ns)
    assert rev2 == rev + 1


def test_prefix_delete_removes_only_the_prefix(store: Store, ns: str) -> None:
    for k in ("p/1", "p/2", "p/sub/3", "p", "p2/1", "q"):
        put(store, ns + k, "x")
    r0 = store.revision()
    rec = Recorder()
    store.watch(ns, r0 + 1, rec)
    res = store.txn([], [Delete(ns + "p/", prefix=True)])
    assert res.revision == r0 + 1
    assert [kv.key[len(ns):] for kv in store.range(ns)[0]] == ["p", "p2/1", "q"]
    batches = rec.wait_revision(r0 + 1)
    assert len(batches) == 1
    assert sorted((e.type, e.kv.key, e.kv.mod_revision) for e in batches[0]) == [
        (EventType.DELETE, ns + k, r0 + 1) for k in ("p/1", "p/2", "p/sub/3")
    ]


def test_prefix_end() -> None:
    assert prefix_end("/a/") == "/a0"
    assert all("/a/" <= k < prefix_end("/a/") for k in ("/a/", "/a/x", "/a/\uffff"))
    assert not "/a0" < prefix_end("/a/")


# --- watch ---------------------------------------------------------------------------------------


def test_watch_replays_history_then_goes_live(store: Store, ns: str) -> None:
    revs = [put(store, ns + f"k{i}", str(i)) for i in range(5)]
    delete(store, ns + "k0")
    revs.append(store.revision())
    rec = Recorder()
    h = store.watch(ns, revs[2], rec)
    rec.wait_revision(revs[-1])
    live = [put(store, ns + "k1", "again"), store.txn([], [Put(ns + "x", "1"), Put(ns + "y", "2")]).revision]
    batches = rec.wait_revision(live[-1])
    h.cancel()
    assert_batches_well_formed(batches)
    assert rec.revisions() == revs[2:] + live
    assert rec.events()[:4] == [("put", ns + "k2", revs[2]), ("put", ns + "k3", revs[3]),
                                ("put", ns + "k4", revs[4]), ("delete", ns + "k0", revs[5])]
    # history events carry the key's metadata as of that revision
    first = batches[0][0].kv
    assert (first.value, first.create_revision, first.version) == ("2", revs[2], 1)
    again = batches[-2][0].kv
    assert (again.value, again.version, again.create_revision) == ("again", 2, revs[1])
    assert sorted(e.kv.key for e in batches[-1]) == [ns + "x", ns + "y"]


def test_watch_from_next_revision_is_live_only(store: Store, ns: str) -> None:
    put(store, ns + "before", "x")
    rec = Recorder()
    store.watch(ns, store.revision() + 1, rec)
    r = put(store, ns + "after", "y")
    rec.wait_revision(r)
    assert rec.events() == [("put", ns + "after", r)]


def test_watch_filters_by_prefix(store: Store, ns: str) -> None:
    rec = Recorder()
    start = store.revision() + 1
    store.watch(ns + "mine/", start, rec)
    put(store, ns + "other/a", "x")
    put(store, ns + "mine", "no trailing slash")
    r_mixed = store.txn([], [Put(ns + "other/b", "x"), Put(ns + "mine/a", "1")]).revision
    r_last = put(store, ns + "mine/b", "2")
    rec.wait_revision(r_last)
    assert rec.events() == [("put", ns + "mine/a", r_mixed), ("put", ns + "mine/b", r_last)]
    # the same filter applies to history replay
    rec2 = Recorder()
    store.watch(ns + "mine/", start, rec2)
    rec2.wait_revision(r_last)
    assert rec2.events() == rec.events()


def test_delete_event_carries_the_deletion_revision(store: Store, ns: str) -> None:
    put(store, ns + "a", "1")
    rec = Recorder()
    store.watch(ns, store.revision() + 1, rec)
    r = delete(store, ns + "a")
    batches = rec.wait_revision(r)
    (ev,) = batches[0]
    assert ev.type is EventType.DELETE and ev.kv.key == ns + "a" and ev.kv.mod_revision == r


def test_watch_started_during_writes_sees_every_revision_exactly_once(store: Store, ns: str) -> None:
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 3000:
            written.append(put(store, ns + f"w/{i % 7}", str(i)))
            i += 1

    put(store, ns + "w/start", "0")
    start = store.revision()
    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.02)
    rec = Recorder()
    h = store.watch(ns + "w/", start, rec)  # history and live overlap here
    time.sleep(0.05)
    stop.set()
    t.join()
    batches = rec.wait_revision(written[-1])
    h.cancel()
    assert_batches_well_formed(batches)
    assert rec.revisions() == [start] + written


def test_healthy_or_cancelled_watch_never_reports_an_error(store: Store, ns: str) -> None:
    errors: list[Exception] = []
    rec = Recorder()
    h = store.watch(ns, store.revision() + 1, rec, on_error=errors.append)
    r = put(store, ns + "a", "1")
    rec.wait_revision(r)
    h.cancel()
    probe = Recorder()
    store.watch(ns, store.revision() + 1, probe)
    r2 = put(store, ns + "b", "2")
    probe.wait_revision(r2)
    assert errors == [] and rec.revisions() == [r]


def test_several_watchers_each_get_every_event(store: Store, ns: str) -> None:
    recs = [Recorder() for _ in range(3)]
    start = store.revision() + 1
    for r in recs:
        store.watch(ns, start, r)
    revs = [put(store, ns + str(i), "x") for i in range(20)]
    for r in recs:
        r.wait_revision(revs[-1])
        assert r.revisions() == revs


def test_cancel_stops_delivery_and_is_idempotent(store: Store, ns: str) -> None:
    rec, other = Recorder(), Recorder()
    h = store.watch(ns, store.revision() + 1, rec)
    store.watch(ns, store.revision() + 1, other)
    r1 = put(store, ns + "a", "1")
    rec.wait_revision(r1)
    h.cancel()
    h.cancel()
    r2 = put(store, ns + "b", "2")
    other.wait_revision(r2)  # the store delivered r2 to a live watcher
    assert rec.revisions() == [r1]


def test_watch_batches_for_a_busy_txn_stream(store: Store, ns: str) -> None:
    rec = Recorder()
    store.watch(ns, store.revision() + 1, rec)
    expected = []
    for i in range(10):
        res = store.txn([], [Put(ns + f"{i}/a", "1"), Put(ns + f"{i}/b", "2"), Delete(ns + f"{i - 1}/a")])
        expected.append(res.revision)
    batches = rec.wait_revision(expected[-1])
    assert_batches_well_formed(batches)
    assert rec.revisions() == expected
    assert [len(b) for b in batches] == [2] + [3] * 9


# --- compaction ----------------------------------------------------------------------------------


def test_compaction_forgets_history_before_the_revision(store: Store, ns: str) -> None:
    revs = [put(store, ns + f"k{i}", str(i)) for i in range(6)]
    store.compact(revs[3])
    with pytest.raises(CompactedError) as exc:
        store.watch(ns, revs[2], Recorder())
    assert exc.value.compact_revision >= revs[2]
    assert isinstance(exc.value, StoreError)
    # from the compaction revision on, history is still there
    rec = Recorder()
    store.watch(ns, revs[3], rec)
    rec.wait_revision(revs[5])
    assert rec.revisions() == revs[3:]
    # the data itself is untouched
    assert [kv.value for kv in store.range(ns)[0]] == [str(i) for i in range(6)]


def test_relist_after_compaction_then_watch_from_list_revision(store: Store, ns: str) -> None:
    for i in range(4):
        put(store, ns + f"k{i}", str(i))
    store.compact(store.revision())
    with pytest.raises(CompactedError):
        store.watch(ns, 1, Recorder())
    kvs, rev = store.range(ns)
    rec = Recorder()
    store.watch(ns, rev + 1, rec)
    r = put(store, ns + "new", "x")
    rec.wait_revision(r)
    assert len(kvs) == 4 and rec.revisions() == [r]


# --- leases --------------------------------------------------------------------------------------


def test_lease_grant_attach_refresh(store: Store, ns: str) -> None:
    lid = store.grant_lease(30)
    assert isinstance(lid, int) and lid != 0
    assert store.grant_lease(30) != lid
    put(store, ns + "a", "1", lease=lid)
    assert store.get(ns + "a").lease == lid
    assert store.refresh_lease(lid) == 30


def test_revoke_deletes_attached_keys_with_delete_events(store: Store, ns: str) -> None:
    lid = store.grant_lease(30)
    other = store.grant_lease(30)
    store.txn([], [Put(ns + "a", "1", lid), Put(ns + "b", "2", lid), Put(ns + "c", "3", other), Put(ns + "d", "4")])
    rec = Recorder()
    store.watch(ns, store.revision() + 1, rec)
    r0 = store.revision()
    store.revoke_lease(lid)
    assert store.get(ns + "a") is None and store.get(ns + "b") is None
    assert store.get(ns + "c") is not None and store.get(ns + "d") is not None
    batches = rec.wait_revision(r0 + 1)
    assert sorted((e.type, e.kv.key) for b in batches for e in b) == [
        (EventType.DELETE, ns + "a"), (EventType.DELETE, ns + "b")]
    assert store.revision() == r0 + 1
    with pytest.raises(LeaseNotFound):
        store.refresh_lease(lid)
    store.revoke_lease(lid)  # unknown ids are ignored
    store.revoke_lease(987654321)
    assert store.refresh_lease(other) == 30


def test_put_with_unknown_lease_fails_and_writes_nothing(store: Store, ns: str) -> None:
    r0 = store.revision()
    with pytest.raises(LeaseNotFound):
        store.txn([], [Put(ns + "a", "1"), Put(ns + "b", "2", lease=424242)])
    assert store.get(ns + "a") is None
    assert store.revision() == r0
    with pytest.raises(LeaseNotFound):
        store.refresh_lease(424242)
    assert issubclass(LeaseNotFound, StoreError)


def test_overwriting_without_lease_detaches_the_key(store: Store, ns: str) -> None:
    lid = store.grant_lease(30)
    put(store, ns + "a", "1", lease=lid)
    put(store, ns + "a", "2")
    assert store.get(ns + "a").lease == 0
    store.revoke_lease(lid)
    assert store.get(ns + "a").value == "2"


def test_a_key_moved_to_another_lease_follows_it(store: Store, ns: str) -> None:
    """A revoke deletes the keys attached to the lease now: not a key moved to another lease or
    deleted since (the embedded store keeps an index of keys by lease)."""
    first, second = store.grant_lease(30), store.grant_lease(30)
    store.txn([], [Put(ns + "a", "1", first), Put(ns + "b", "2", first), Put(ns + "c", "3", first)])
    put(store, ns + "a", "1", lease=second)   # moved
    store.txn([], [Delete(ns + "b")])         # gone
    rec = Recorder()
    store.watch(ns, store.revision() + 1, rec)
    r0 = store.revision()
    store.revoke_lease(first)
    batches = rec.wait_revision(r0 + 1)
    assert [(e.type, e.kv.key) for b in batches for e in b] == [(EventType.DELETE, ns + "c")]
    assert store.get(ns + "a").lease == second
    store.revoke_lease(second)
    assert store.get(ns + "a") is None


def test_expired_lease_deletes_its_keys(store: Store, ns: str) -> None:
    lid = store.grant_lease(1)
    kept = store.grant_lease(1)
    put(store, ns + "gone", "x", lease=lid)
    put(store, ns + "kept", "x", lease=kept)
    put(store, ns + "plain", "x")
    rec = Recorder()
    store.watch(ns, store.revision() + 1, rec)
    t0 = time.monotonic()
    while store.get(ns + "gone") is not None:
        assert time.monotonic() - t0 < TIMEOUT, "lease did not expire"
        store.refresh_lease(kept)
        time.sleep(0.05)
    assert time.monotonic() - t0 >= 0.9  # not before its TTL
    rec.wait(lambda bs: any(e.kv.key == ns + "gone" for b in bs for e in b))
    assert [(e.type, e.kv.key) for b in rec.batches for e in b] == [(EventType.DELETE, ns + "gone")]
    assert store.get(ns + "kept") is not None and store.get(ns + "plain") is not None
    with pytest.raises(LeaseNotFound):
        store.refresh_lease(lid)


# --- durability and exclusivity ------------------------------------------------------------------


def test_data_history_and_leases_survive_reopen(durable_backend: Any, ns: str) -> None:
    store = durable_backend.open()
    lid = store.grant_lease(60)
    revs = [put(store, ns + "a", "1"), put(store, ns + "b", "2", lease=lid), delete(store, ns + "a"),
            put(store, ns + "c", "3")]
    before_kvs, before_rev = store.range(ns)
    store = durable_backend.reopen(store)
    assert store.revision() == before_rev
    assert store.range(ns) == (before_kvs, before_rev)
    rec = Recorder()
    store.watch(ns, revs[0], rec)
    rec.wait_revision(revs[-1])
    assert rec.events() == [("put", ns + "a", revs[0]), ("put", ns + "b", revs[1]),
                            ("delete", ns + "a", revs[2]), ("put", ns + "c", revs[3])]
    assert put(store, ns + "d", "4") == before_rev + 1
    assert store.refresh_lease(lid) == 60
    assert store.grant_lease(5) != lid
    store.revoke_lease(lid)
    assert store.get(ns + "b") is None


def test_long_values_survive_reopen(durable_backend: Any, ns: str) -> None:
    store = durable_backend.open()
    value = json.dumps({"id": "p", "name": "\u00e9" * 50, "description": "long " * 100}, separators=(",", ":"))
    rev = put(store, ns + "a", value)
    for kv in store.range(ns)[0]:   # a reader's parse attached: the file still holds the text
        kv.attach(compact(json.loads(kv.value), share_empty=True))
    store = durable_backend.reopen(store)
    assert store.get(ns + "a") == KeyValue(ns + "a", value, rev, rev, 1)
    assert store.range(ns)[0][0].value == value


def test_compaction_survives_reopen(durable_backend: Any, ns: str) -> None:
    store = durable_backend.open()
    revs = [put(store, ns + str(i), "x") for i in range(4)]
    store.compact(revs[2])
    store = durable_backend.reopen(store)
    with pytest.raises(CompactedError):
        store.watch(ns, revs[1], Recorder())
    rec = Recorder()
    store.watch(ns, revs[2], rec)
    rec.wait_revision(revs[3])
    assert rec.revisions() == revs[2:]


def test_second_open_of_the_same_location_fails(exclusive_backend: Any, ns: str) -> None:
    store = exclusive_backend.open()
    put(store, ns + "a", "1")
    with pytest.raises(StoreError, match="in use"):
        exclusive_backend.open()
    assert store.get(ns + "a").value == "1"  # the first store is unharmed
    put(store, ns + "b", "2")
    store = exclusive_backend.reopen(store)  # released on close
    assert store.get(ns + "b").value == "2"


def test_closed_store_refuses_writes(backend: Any, ns: str) -> None:
    store = backend.open()
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError):
        store.txn([], [Put(ns + "a", "1")])
    with pytest.raises(StoreError):
        store.watch(ns, 1, Recorder())


# --- concurrency ---------------------------------------------------------------------------------


def test_concurrent_cas_increments_lose_nothing(store: Store, ns: str) -> None:
    threads, per_thread = 8, 60
    key = ns + "counter"
    start_rev = store.revision()
    attempts = [0] * threads

    def worker(n: int) -> None:
        done = 0
        while done < per_thread:
            attempts[n] += 1
            kv = store.get(key)
            if kv is None:
                res = store.txn([key_missing(key)], [Put(key, "1")])
            else:
                res = store.txn([key_unchanged(kv)], [Put(key, str(int(kv.value) + 1))])
            done += res.succeeded

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    kv = store.get(key)
    assert kv is not None
    assert int(kv.value) == threads * per_thread
    assert kv.version == threads * per_thread
    assert store.revision() == start_rev + threads * per_thread  # failed CAS makes no revision
    assert sum(attempts) >= threads * per_thread


def test_concurrent_claims_of_one_key_have_one_winner(store: Store, ns: str) -> None:
    key = ns + "claim"
    winners: list[int] = []
    barrier = threading.Barrier(16)

    def claim(n: int) -> None:
        barrier.wait()
        if store.txn([key_missing(key)], [Put(key, str(n))]).succeeded:
            winners.append(n)

    ts = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert len(winners) == 1
    assert store.get(key).value == str(winners[0])


def test_watch_under_concurrent_writers_is_ordered_and_complete(store: Store, ns: str) -> None:
    rec = Recorder()
    start = store.revision() + 1
    store.watch(ns, start, rec)
    results: list[int] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(50):
            r = store.txn([], [Put(ns + f"{n}/{i}", "x"), Put(ns + f"{n}/last", str(i))]).revision
            with lock:
                results.append(r)

    ts = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    batches = rec.wait_revision(max(results))
    assert_batches_well_formed(batches)
    assert rec.revisions() == sorted(results) == list(range(start, start + 200))
    assert all(len(b) == 2 for b in batches)


def test_failing_watch_callback_hurts_neither_writer_nor_other_watchers(store: Store, ns: str) -> None:
    calls: list[int] = []

    def broken(events: list[Event]) -> None:
        calls.append(events[0].kv.mod_revision)
        raise RuntimeError("watcher bug")

    good = Recorder()
    start = store.revision() + 1
    store.watch(ns, start, broken)
    store.watch(ns, start, good)
    r1 = put(store, ns + "a", "1")  # must not raise
    r2 = put(store, ns + "b", "2")
    good.wait_revision(r2)
    assert good.revisions() == [r1, r2]
    deadline = time.monotonic() + TIMEOUT  # each etcd watcher has its own thread: it may lag
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == [r1, r2]
    assert store.get(ns + "b").value == "2"
    # replay to a broken callback does not fail the watch call either
    store.watch(ns, start, broken)
    deadline = time.monotonic() + TIMEOUT  # replay may be asynchronous (etcd)
    while len(calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == [r1, r2, r1, r2]


# --- range compares ------------------------------------------------------------------------------


def test_range_unchanged_since_detects_new_and_changed_keys_only(store: Store, ns: str) -> None:
    from vxnet.store.contract import range_unchanged_since

    put(store, ns + "p/a", "1")
    put(store, ns + "q", "outside")
    seen = store.revision()
    guard = range_unchanged_since(ns + "p/", seen)
    assert store.txn([guard], [Put(ns + "ok1", "x")]).succeeded  # nothing changed under p/
    put(store, ns + "q", "outside changed")  # outside the prefix: irrelevant
    assert store.txn([guard], [Put(ns + "ok2", "x")]).succeeded
    delete(store, ns + "p/a")  # deleting does not break it
    assert store.txn([guard], [Put(ns + "ok3", "x")]).succeeded
    put(store, ns + "p/new", "1")  # a key created after the read does
    r0 = store.revision()
    res = store.txn([guard], [Put(ns + "bad", "x")])
    assert not res.succeeded and store.get(ns + "bad") is None and store.revision() == r0
    # an empty prefix holds trivially
    assert store.txn([range_unchanged_since(ns + "empty/", 0)], [Put(ns + "ok4", "x")]).succeeded
