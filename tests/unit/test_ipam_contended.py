"""Automatic IPv4 addresses when a subnet is contended (services/ipam.py `_lowest_free`), on the
embedded store with a second writer that takes the address an allocation picked (what another
server does): the allocation reruns, and for a while picks spread over the first free addresses
instead of all servers colliding on the lowest one. Uncontended allocation stays lowest-first,
and a spread pick never hides the free addresses below it once the contention is over."""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

from vxnet.services import ipam
from vxnet.services.repo import Repo, UnitOfWork
from vxnet.store.contract import Put
from vxnet.store.sqlite_store import SqliteStore


def subnet() -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "network_id": "n", "cidr": "192.0.2.0/24", "ip_version": 4,
            "allocation_pools": [{"start": "192.0.2.2", "end": "192.0.2.254"}]}


def allocate(repo: Repo, sub: dict[str, Any], steal_first: bool = False) -> tuple[str, int]:
    """One allocation in its own transaction: (address, attempts). With `steal_first`, another
    writer claims the address the first attempt picked before it commits."""
    def fn(uow: UnitOfWork) -> tuple[str, int]:
        ip = ipam.allocate_ip(uow, sub, str(uuid.uuid4()))
        if steal_first and uow.attempt == 1:
            repo.store.txn([], [Put(ipam.ip_key(sub["id"], ip), "another server")])
        return ip, uow.attempt
    return repo.transact(fn)


def n(ip: str) -> int:
    return int(ipaddress.ip_address(ip)) - int(ipaddress.ip_address("192.0.2.0"))


def test_uncontended_allocation_is_lowest_first() -> None:
    repo, sub = Repo(SqliteStore(":memory:")), subnet()
    assert [n(allocate(repo, sub)[0]) for _ in range(5)] == [2, 3, 4, 5, 6]
    assert sub["id"] not in ipam._contended


def test_a_rerun_spreads_picks_then_lowest_first_again() -> None:
    repo, sub = Repo(SqliteStore(":memory:")), subnet()
    ip, attempts = allocate(repo, sub, steal_first=True)
    assert attempts == 2 and n(ip) != 2  # .2 went to the other writer
    assert ipam._contended[sub["id"]] > 0
    taken = {2, n(ip)}
    picks = []
    for _ in range(20):
        free = sorted(set(range(2, 255)) - taken)
        got = n(allocate(repo, sub)[0])
        assert got in free[:ipam.WINDOW], "a spread pick outside the first free addresses"
        assert got not in taken
        picks.append(got == free[0])
        taken.add(got)
    assert not all(picks), "20 contended picks were all the lowest free address"
    ipam._contended[sub["id"]] = 0.0  # the contention is over
    free = sorted(set(range(2, 255)) - taken)
    assert [n(allocate(repo, sub)[0]) for _ in range(3)] == free[:3], "the hint skipped free addresses"
