"""Repo.transact after an ambiguous commit (the store applied the write but the answer was lost,
as when etcd's leader dies mid-request): it must neither duplicate the write nor report a
failure for a write that landed. The store is a real SqliteStore behind a wrapper that loses
one answer."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from vxnet.services.repo import Repo, UnitOfWork
from vxnet.store.contract import Compare, Op, StoreUnavailable, TxnResult
from vxnet.store.sqlite_store import SqliteStore


class LosingStore:
    """Delegates to a SqliteStore; the next txn is applied-then-lost or lost-before-applying."""

    may_lose_answers = True  # so Repo uses its attempt markers, as on etcd

    def __init__(self, mode: str) -> None:
        self.inner = SqliteStore(":memory:")
        self.mode = mode  # "after" | "before" | "down"
        self.txns = 0

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        self.txns += 1
        if self.mode == "after":
            self.mode = ""
            self.inner.txn(compares, success, failure)
            raise StoreUnavailable("answer lost")
        if self.mode == "before":
            self.mode = ""
            raise StoreUnavailable("request lost")
        return self.inner.txn(compares, success, failure)

    def get(self, key: str) -> Any:
        if self.mode == "down":
            raise StoreUnavailable("still down")
        return self.inner.get(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def create_port(uow: UnitOfWork) -> str:
    pid = str(uuid.uuid4())
    uow.claim("/vxnet/ipam/s1/192.0.2.10", pid)
    uow.put("ports", {"id": pid, "ip": "192.0.2.10"})
    return pid


@pytest.mark.parametrize("mode", ["after", "before"])
def test_lost_answer_neither_duplicates_nor_fails(mode: str) -> None:
    store = LosingStore(mode)
    repo = Repo(store)  # type: ignore[arg-type]
    pid = repo.transact(create_port)
    ports = repo.list("ports")
    assert [p["id"] for p in ports] == [pid]  # exactly one port, and it is the one reported
    assert store.inner.get("/vxnet/ipam/s1/192.0.2.10").value == pid
    # landed: no rerun; lost: a fence, then one rerun
    assert store.txns == (1 if mode == "after" else 3)


def test_unknown_outcome_stays_unknown_while_the_store_is_down() -> None:
    store = LosingStore("after")
    repo = Repo(store)  # type: ignore[arg-type]
    original = store.txn

    def txn_then_down(*a: Any) -> TxnResult:
        try:
            return original(*a)
        finally:
            store.mode = "down"

    store.txn = txn_then_down  # type: ignore[method-assign]
    repo.ambiguity_patience = 0.3
    with pytest.raises(StoreUnavailable):
        repo.transact(create_port)
