"""Automatic IPv4 addresses when a subnet is contended (services/ipam.py `_lowest_free`), on the
embedded store with a second writer that takes the address an allocation picked (what another
server does): the allocation reruns, and for a while picks spread over the first free addresses
instead of all servers colliding on the lowest one. Uncontended allocation stays lowest-first,
and a spread pick never hides the free addresses below it once the contention is over."""

from __future__ import annotations

import ipaddress
import itertools
import uuid
from typing import Any

import pytest

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


def test_a_rerun_moves_picks_to_a_lane_then_lowest_first_again() -> None:
    repo, sub = Repo(SqliteStore(":memory:")), subnet()
    ip, attempts = allocate(repo, sub, steal_first=True)
    assert attempts == 2 and n(ip) != 2  # .2 went to the other writer
    assert ipam._contended[sub["id"]] > 0
    taken = {2, n(ip)}
    picks = [n(ip)]
    for _ in range(20):
        got = n(allocate(repo, sub)[0])
        assert got not in taken and 2 <= got <= 254
        taken.add(got)
        picks.append(got)
    # A lane: upwards from a random free address, each pick the next free one (wrapping to a
    # new lane only at the pool's end), not the lowest free addresses.
    steps = [b - a for a, b in itertools.pairwise(picks)]
    assert sum(1 for s in steps if s == 1) >= len(steps) - 2, f"picks are not a lane: {picks}"
    assert picks[1:] != list(range(3, 23)), "contended picks were the lowest free addresses"
    ipam._contended[sub["id"]] = 0.0  # the contention is over
    free = sorted(set(range(2, 255)) - taken)
    assert [n(allocate(repo, sub)[0]) for _ in range(3)] == free[:3], "the hint skipped free addresses"


def test_a_rerun_inside_a_lane_draws_a_new_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another server allocating in our lane (the lanes met): the rerun leaves it for a new
    random free start instead of following the other server upwards."""
    repo, sub = Repo(SqliteStore(":memory:")), subnet()
    draws = iter([40, 100])  # lane starts: pool offsets (pool start .2)
    monkeypatch.setattr(ipam.random, "randrange", lambda size: next(draws))
    first, attempts = allocate(repo, sub, steal_first=True)  # .2 taken by the other writer
    assert (n(first), attempts) == (42, 2)
    assert n(allocate(repo, sub)[0]) == 43
    got, attempts = allocate(repo, sub, steal_first=True)  # the other writer takes our .44
    assert (n(got), attempts) == (102, 2)
    assert n(allocate(repo, sub)[0]) == 103


def test_a_nearly_full_pool_still_allocates_every_free_address() -> None:
    """Contended, with only a few free addresses left (random lane draws mostly miss): every
    free address is still found, and then exhaustion is a 409, not a false one earlier."""
    repo, sub = Repo(SqliteStore(":memory:")), subnet()
    for k in range(2, 250):
        repo.store.txn([], [Put(ipam.ip_key(sub["id"], f"192.0.2.{k}"), "another server")])
    ipam._contended[sub["id"]] = 1e18
    try:
        got = sorted(n(allocate(repo, sub)[0]) for _ in range(5))
        assert got == [250, 251, 252, 253, 254]
        try:
            allocate(repo, sub)
        except ipam.Conflict as e:
            assert "No more IP addresses" in str(e)
        else:
            raise AssertionError("a full pool allocated an address")
    finally:
        ipam._contended.pop(sub["id"], None)


class SharedStore(SqliteStore):
    """The embedded store declaring what etcd declares: several servers write to it."""

    shared_by_servers = True


def _server_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start a fresh process's allocation hints (what another API server has)."""
    for name in ("_low_water", "_in_flight", "_contended", "_lanes"):
        monkeypatch.setattr(ipam, name, {})


@pytest.mark.parametrize("shared", [False, True])
def test_two_servers_allocating_at_once_on_a_shared_store_pick_apart(
        monkeypatch: pytest.MonkeyPatch, shared: bool) -> None:
    """Two servers stage an address on a fresh subnet before either commits (each server's
    reads cannot see the other's in-flight claim). On a store shared by servers (etcd) each
    allocates from a lane of its own from the first allocation on, so they do not both take
    the lowest free address and one rerun; the embedded store keeps lowest-first."""
    store = SharedStore(":memory:") if shared else SqliteStore(":memory:")
    repo = Repo(store)
    sub = subnet() | {"cidr": "100.64.0.0/16", "allocation_pools": [{"start": "100.64.0.2", "end": "100.64.255.254"}]}
    picks = []
    for _server in range(2):
        _server_state(monkeypatch)
        uow = UnitOfWork(repo)
        picks.append(ipam.allocate_ip(uow, sub, str(uuid.uuid4())))
    if shared:
        assert picks[0] != picks[1], picks
        _server_state(monkeypatch)
        first = allocate(repo, sub)[0]  # one server's next picks: upwards from its lane's start
        assert [allocate(repo, sub)[0] for _ in range(3)] == [
            str(ipaddress.ip_address(first) + k) for k in (1, 2, 3)]
    else:
        assert picks == ["100.64.0.2", "100.64.0.2"]  # lowest-first: they would collide


def test_a_lane_that_reaches_another_servers_lane_draws_a_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Server B's lane, started just below server A's, reaches A's first address: B draws a new
    lane there instead of scanning past A's taken addresses onto A's next one, which A has in
    flight where B cannot see it (both would claim it: one reruns, its batch fails)."""
    store = SharedStore(":memory:")
    repo = Repo(store)
    sub = subnet()
    names = ("_low_water", "_in_flight", "_contended", "_lanes")
    servers: list[dict[str, Any]] = [{name: {} for name in names} for _ in range(2)]

    def on(server: int) -> None:
        for name in names:
            monkeypatch.setattr(ipam, name, servers[server][name])

    draws = iter([40, 37, 100])  # lane starts as pool offsets (pool start .2): A's, B's, B's next
    monkeypatch.setattr(ipam.random, "randrange", lambda size: next(draws))
    on(0)
    assert [n(allocate(repo, sub)[0]) for _ in range(3)] == [42, 43, 44]
    on(1)
    assert [n(allocate(repo, sub)[0]) for _ in range(3)] == [39, 40, 41]
    on(0)
    in_flight = ipam.allocate_ip(UnitOfWork(repo), sub, str(uuid.uuid4()))  # A stages .45, uncommitted
    assert n(in_flight) == 45
    on(1)
    assert n(allocate(repo, sub)[0]) == 102  # not past .42-.44 onto A's .45
    assert n(allocate(repo, sub)[0]) == 103
