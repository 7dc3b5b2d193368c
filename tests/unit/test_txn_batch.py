"""Group commit (services/txn_batch.py): which attempts share a transaction, and what each one
gets back. The store is the embedded one (real compare-and-swap semantics) behind a gate that
holds the first transaction in flight, so that the next attempts are certainly queued behind it
(no timing involved)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from vxnet.services.txn_batch import MAX_OPS, Attempt, TxnBatcher
from vxnet.store.contract import Compare, Op, Put, StoreUnavailable, TxnResult, key_missing, range_unchanged_since
from vxnet.store.sqlite_store import SqliteStore

REQ = "/vxnet/meta/request"


class Gated:
    """The embedded store; its first txn waits for `release`; records every txn sent."""

    def __init__(self) -> None:
        self.inner = SqliteStore(":memory:")
        self.release = threading.Event()
        self.entered = threading.Event()
        self.sent: list[tuple[list[Compare], list[Op]]] = []
        self.fail_merged: Exception | None = None

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        first = not self.sent
        self.sent.append((list(compares), list(success)))
        if first:
            self.entered.set()
            assert self.release.wait(10)
        elif self.fail_merged is not None and len(self.sent) == 2:
            raise self.fail_merged
        return self.inner.txn(compares, success, failure)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def attempt(key: str, *, claim: bool = True, touches: tuple[str, ...] = (), compares: tuple[Compare, ...] = (),
            request: str | None = None) -> Attempt:
    cmp = [key_missing(key)] if claim else []
    ops: list[Op] = [Put(key, "v")] + [Put(t, "") for t in touches]
    return Attempt([*cmp, *compares], ops, frozenset(touches), request)


def run(store: Gated, first: Attempt, queued: list[Attempt]) -> list[TxnResult | Exception]:
    """Commit `first` (held in flight), queue `queued` behind it, release; outcomes in order."""
    b = TxnBatcher(store, REQ)  # type: ignore[arg-type]
    b.escape = 60.0  # no second batch while the first is held (test_a_stalled_batch_... covers it)
    out: dict[int, TxnResult | Exception] = {}

    def go(i: int, a: Attempt) -> None:
        try:
            out[i] = b.commit(a)
        except Exception as e:  # noqa: BLE001 - the outcome under test
            out[i] = e

    threads = [threading.Thread(target=go, args=(0, first))]
    threads[0].start()
    assert store.entered.wait(10)
    for i, a in enumerate(queued, 1):
        threads.append(threading.Thread(target=go, args=(i, a)))
        threads[-1].start()
    while True:  # every queued attempt is in the queue before the gate opens
        with b._lock:
            if len(b._queue) == len(queued):
                break
    store.release.set()
    for t in threads:
        t.join(10)
    assert len(out) == len(queued) + 1, "a commit never returned"
    return [out[i] for i in range(len(queued) + 1)]


def test_disjoint_attempts_share_one_transaction_and_its_revision() -> None:
    s = Gated()
    res = run(s, attempt("/k/0", request="r0"), [attempt(f"/k/{i}", request=f"r{i}") for i in (1, 2, 3)])
    assert len(s.sent) == 2  # the held one, then one for the three queued
    assert all(isinstance(r, TxnResult) and r.succeeded for r in res)
    assert res[1].revision == res[2].revision == res[3].revision == res[0].revision + 1  # type: ignore[union-attr]
    assert s.inner.get(REQ).value == "r1,r2,r3"  # the audit key names every request of the revision
    assert [k for k in ("/k/1", "/k/2", "/k/3") if s.inner.get(k)] == ["/k/1", "/k/2", "/k/3"]


def test_a_claim_on_the_same_key_goes_in_a_later_transaction_and_fails_its_compare() -> None:
    s = Gated()
    res = run(s, attempt("/k/0"), [attempt("/k/dup"), attempt("/k/dup"), attempt("/k/x")])
    assert [len(c) for c, _ in s.sent] == [1, 2, 1]  # /k/dup + /k/x merged, the second /k/dup alone
    assert [r.succeeded for r in res] == [True, True, False, True]  # type: ignore[union-attr]


def test_touches_are_written_once_but_conflict_with_a_compare_of_the_key() -> None:
    s = Gated()
    guard = Compare("/t/sub", "mod", "==", 0)  # read as missing, as a subnet delete guards it
    res = run(s, attempt("/k/0"), [attempt("/k/1", touches=("/t/sub",)), attempt("/k/2", touches=("/t/sub",)),
                                    attempt("/k/3", claim=False, compares=(guard,))])
    merged_ops = [op.key for op in s.sent[1][1]]
    assert merged_ops == ["/k/1", "/t/sub", "/k/2"]  # one put of the touched key
    assert len(s.sent) == 3  # the guard of the touched key went on its own, after the touches
    assert [r.succeeded for r in res] == [True, True, True, False]  # type: ignore[union-attr]


def test_a_write_under_a_guarded_prefix_is_not_merged() -> None:
    s = Gated()
    res = run(s, attempt("/k/0"), [attempt("/p/a", claim=False, compares=(range_unchanged_since("/q/", 1),)),
                                    attempt("/q/new")])
    assert len(s.sent) == 3
    assert all(r.succeeded for r in res)  # type: ignore[union-attr]


def test_a_failed_merged_compare_sends_each_attempt_again_on_its_own() -> None:
    s = Gated()
    s.inner.txn([], [Put("/k/taken", "x")])
    res = run(s, attempt("/k/0"), [attempt("/k/1"), attempt("/k/taken"), attempt("/k/2")])
    assert len(s.sent[1][0]) == 3  # tried together, failed on /k/taken
    assert len(s.sent) == 2 + 3    # then each alone
    assert [r.succeeded for r in res] == [True, True, False, True]  # type: ignore[union-attr]


def test_a_lost_answer_reaches_every_attempt_of_the_batch() -> None:
    s = Gated()
    s.fail_merged = StoreUnavailable("answer lost")
    res = run(s, attempt("/k/0"), [attempt("/k/1"), attempt("/k/2")])
    assert res[0].succeeded  # type: ignore[union-attr]
    assert all(isinstance(r, StoreUnavailable) for r in res[1:])
    assert len(s.sent) == 2  # no resend: the outcome is each attempt's to resolve (by its marker)


def test_other_errors_send_each_attempt_again_on_its_own() -> None:
    s = Gated()
    s.fail_merged = ValueError("refused")
    res = run(s, attempt("/k/0"), [attempt("/k/1"), attempt("/k/2")])
    assert all(r.succeeded for r in res)  # type: ignore[union-attr]
    assert len(s.sent) == 4


@pytest.mark.parametrize("n_ops", [MAX_OPS // 2 + 1])
def test_a_batch_stays_under_the_operation_limit(n_ops: int) -> None:
    s = Gated()

    def big(i: int) -> Attempt:
        return Attempt([], [Put(f"/b/{i}/{j}", "v") for j in range(n_ops)], frozenset(), None)

    res = run(s, attempt("/k/0"), [big(1), big(2)])
    assert [len(ops) for _, ops in s.sent] == [1, n_ops, n_ops]  # two big ones do not fit in one
    assert all(r.succeeded for r in res)  # type: ignore[union-attr]


def test_a_failure_while_forming_a_batch_blocks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug while the sender forms its batch: its own commit raises, the attempts it had taken
    go alone, and the sender's role is passed on (later commits do not wait forever)."""
    from vxnet.services import txn_batch

    s = Gated()
    calls = {"n": 0}
    fits = txn_batch._Batch.fits

    def flaky(self: Any, a: Attempt) -> bool:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("bug")
        return fits(self, a)

    monkeypatch.setattr(txn_batch._Batch, "fits", flaky)
    res = run(s, attempt("/k/0"), [attempt("/k/1"), attempt("/k/2"), attempt("/k/3")])  # every one answers
    assert res[0].succeeded  # type: ignore[union-attr]
    assert sum(isinstance(r, RuntimeError) for r in res) == 1
    assert all(r.succeeded for r in res if isinstance(r, TxnResult))


def test_attempts_stuck_behind_a_stalled_batch_go_as_a_second_one() -> None:
    """The batch in flight does not answer (a stalled member): after `escape` the attempts
    waiting behind it go out as one second batch; a third waits for one of the two."""
    s = Gated()
    b = TxnBatcher(s, REQ)  # type: ignore[arg-type]
    b.escape = 0.05
    out: dict[str, TxnResult] = {}

    def go(name: str) -> None:
        out[name] = b.commit(attempt(f"/k/{name}"))

    first = threading.Thread(target=go, args=("0",))
    first.start()
    assert s.entered.wait(10)
    rest = [threading.Thread(target=go, args=(n,)) for n in ("1", "2")]
    for t in rest:
        t.start()
    for t in rest:
        t.join(10)  # answered while the first is still held
    assert sorted(out) == ["1", "2"] and out["1"].revision == out["2"].revision
    assert [len(c) for c, _ in s.sent] == [1, 2]
    s.release.set()
    first.join(10)
    assert out["0"].succeeded
    assert b._senders == 0


def test_a_sender_never_takes_an_attempt_that_sends_itself() -> None:
    """An attempt made a sender (the role passed to it, or escaping a stalled batch) may still
    be queued for a moment; another sender forming its batch then must leave it alone, or its
    ops would be sent twice."""
    s = Gated()
    s.release.set()
    b = TxnBatcher(s, REQ)  # type: ignore[arg-type]
    about_to_send = attempt("/k/lead")
    about_to_send.lead = True
    b._queue.append(about_to_send)  # (its own sender slot is not counted: the next commit sends)
    assert b.commit(attempt("/k/mine")).succeeded
    assert [[op.key for op in ops] for _, ops in s.sent] == [["/k/mine"]]
    assert b._queue == [about_to_send]
