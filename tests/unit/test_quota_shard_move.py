"""Quota delta shards (services/quotas.py): a worker thread whose transaction reruns moves to a
random shard, so two servers' threads that came to share one stop rerunning each other's
creates. Embedded store; the "other server" is a second writer moving the same shard between
the attempt's read and its commit. The count stays exact either way."""

from __future__ import annotations

import uuid

import pytest

from vxnet.config import QuotaSettings
from vxnet.services import quotas
from vxnet.services.repo import Repo, UnitOfWork, new_id
from vxnet.store.contract import Put
from vxnet.store.sqlite_store import SqliteStore

PROJECT = "p-" + uuid.uuid4().hex


def create_port(repo: Repo, other_writes: bool) -> list[int]:
    """One port create; returns the shard of every attempt. With `other_writes`, another writer
    moves the first attempt's shard by one before it commits."""
    shards: list[int] = []

    def fn(uow: UnitOfWork) -> None:
        port = {"id": new_id("ports"), "project_id": PROJECT, "revision_number": 0, "fixed_ips": []}
        uow.put("ports", port)
        shard = uow.hook_state["quota"].shard
        shards.append(shard)
        if other_writes and uow.attempt == 1:
            key = quotas._shard_prefix(PROJECT, "port") + str(shard)
            kv = repo.store.get(key)
            repo.store.txn([], [Put(key, str(int(kv.value if kv else "0") + 1))])

    repo.transact(fn)
    return shards


@pytest.mark.parametrize("quota", [-1, 100])
def test_a_rerun_moves_the_thread_to_another_shard(monkeypatch: pytest.MonkeyPatch, quota: int) -> None:
    repo = Repo(SqliteStore(":memory:"))
    quotas.QuotaEngine(QuotaSettings(defaults=(("port", quota),))).install(repo)
    monkeypatch.setattr(quotas._shard_local, "shard", 3, raising=False)
    monkeypatch.setattr(quotas.random, "randrange", lambda n: 41)
    assert create_port(repo, other_writes=False) == [3]
    assert create_port(repo, other_writes=True) == [3, 41], "the rerun stayed on the shared shard"
    assert create_port(repo, other_writes=False) == [41], "the thread went back to the shared shard"
    # 3 ports created here, 1 more counted by the other writer: nothing lost, nothing twice
    assert quotas.stored_usage(repo.store, PROJECT, "port") == 4
