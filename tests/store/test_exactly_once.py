"""Exactly-once writes through `Repo.transact` when the store loses answers (docs/store.md).

Deterministic fault injection, against every backend of `conftest.py` (real etcd included):
`Faulty` wraps a real store and, for the transactions a test scripts, forwards the txn and then
raises `StoreUnavailable` (the answer was lost after the store applied it), or keeps the txn
back and raises (the request is "still in flight"), so a test can apply it later itself (a
late commit). Port creates use the real services (`services/ports.new_port_record`: MAC and
IP claims, the subnet's allocation touch). Each test asserts: exactly one copy of the port,
and it is the one whose id `transact` acknowledged.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.store.conftest import Backend
from vxnet.services import ipam
from vxnet.services.ports import new_port_record
from vxnet.services.repo import TXN_PREFIX, Repo, UnitOfWork
from vxnet.store.contract import Compare, Op, Store, StoreUnavailable, TxnResult


class Faulty:
    """A store whose next txns follow `script`: "ok" (forwarded), "lose" (applied, answer
    lost), "hold" (not sent yet, answer lost: `held` keeps it for a late commit), "gate" (held
    in flight until `gate` is set, then forwarded: attempts queue behind it and are batched). `before_raise`
    runs after a "lose" txn applied and before its error is raised (a second writer)."""

    may_lose_answers = True

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.script: list[str] = []
        self.held: list[tuple[Sequence[Compare], Sequence[Op], Sequence[Op]]] = []
        self.before_raise: Callable[[], None] | None = None
        self.txns = 0
        self.gate = threading.Event()     # "gate": the txn waits for it, then is forwarded
        self.at_gate = threading.Event()
        self.markers: list[int] = []      # markers per txn sent (several: a merged batch)

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        self.txns += 1
        self.markers.append(sum(op.key.startswith(TXN_PREFIX) for op in success))
        action = self.script.pop(0) if self.script else "ok"
        if action == "gate":
            self.at_gate.set()
            assert self.gate.wait(30)
        if action == "hold":
            self.held.append((list(compares), list(success), list(failure)))
            raise StoreUnavailable("request sent, no answer (held back by the test)")
        result = self.inner.txn(compares, success, failure)
        if action == "lose":
            if self.before_raise is not None:
                hook, self.before_raise = self.before_raise, None
                hook()
            raise StoreUnavailable("answer lost after the store applied the transaction")
        return result

    def get_linearizable(self, key: str) -> Any:
        return getattr(self.inner, "get_linearizable", self.inner.get)(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _setup(repo: Repo, cidr: str = "192.0.2.0/24") -> dict[str, Any]:
    """A network with one IPv4 subnet; returns the network."""
    net_id, sub_id = str(uuid.uuid4()), str(uuid.uuid4())
    net = {"id": net_id, "name": "n", "port_security_enabled": False, "project_id": "p1"}
    sub = {"id": sub_id, "network_id": net_id, "cidr": cidr, "ip_version": 4, "gateway_ip": None,
           "allocation_pools": [{"start": cidr.rsplit(".", 1)[0] + ".10", "end": cidr.rsplit(".", 1)[0] + ".200"}],
           "created_at": "2026-01-01T00:00:00Z"}

    def txn(uow: UnitOfWork) -> None:
        uow.put("networks", net)
        uow.put("subnets", sub)

    repo.transact(txn)
    return net


def _create(net: dict[str, Any], name: str) -> Callable[[UnitOfWork], dict[str, Any]]:
    def txn(uow: UnitOfWork) -> dict[str, Any]:
        return new_port_record(uow, network=net, project_id="p1", name=name, security_groups=[],
                               port_security_enabled=False)
    return txn


def _ports(repo: Repo, net: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in repo.list("ports") if p["network_id"] == net["id"]]


def _assert_one_copy(repo: Repo, net: dict[str, Any], acked: dict[str, Any], name: str) -> None:
    copies = [p for p in _ports(repo, net) if p["name"] == name]
    assert [p["id"] for p in copies] == [acked["id"]], copies  # one copy, the acknowledged one
    assert copies[0]["fixed_ips"] == acked["fixed_ips"] and copies[0]["mac_address"] == acked["mac_address"]
    store = repo.store
    ip = acked["fixed_ips"][0]
    assert store.get(ipam.ip_key(ip["subnet_id"], ip["ip_address"])).value == acked["id"]
    assert store.get(ipam.mac_key(net["id"], acked["mac_address"])).value == acked["id"]


@pytest.fixture
def faulty(backend: Backend) -> Faulty:
    return Faulty(backend.open())


def test_commit_then_lost_answer_is_one_copy(faulty: Faulty) -> None:
    repo = Repo(faulty)  # type: ignore[arg-type]
    net = _setup(repo)
    faulty.script = ["lose"]
    n = faulty.txns
    acked = repo.transact(_create(net, "a"))
    assert faulty.txns == n + 1  # the marker said "applied": no fence, no rerun
    _assert_one_copy(repo, net, acked, "a")


def test_lost_answer_with_a_second_writer_on_the_subnet_is_one_copy(faulty: Faulty) -> None:
    """The bug of issue 14: another server creates a port on the same subnet (touching the
    subnet's allocation key) between our commit and the read-back."""
    repo = Repo(faulty)  # type: ignore[arg-type]
    other = Repo(faulty.inner)  # a second server on the same store
    net = _setup(repo)
    others: list[dict[str, Any]] = []
    faulty.before_raise = lambda: others.append(other.transact(_create(net, "b")))
    faulty.script = ["lose"]
    acked = repo.transact(_create(net, "a"))
    assert len(others) == 1
    _assert_one_copy(repo, net, acked, "a")
    _assert_one_copy(repo, net, others[0], "b")
    assert len(_ports(repo, net)) == 2


def test_late_commit_after_the_fence_fails_its_compare(faulty: Faulty) -> None:
    repo = Repo(faulty)  # type: ignore[arg-type]
    net = _setup(repo)
    faulty.script = ["hold"]
    acked = repo.transact(_create(net, "a"))  # fenced, then run again with the same id
    assert len(faulty.held) == 1
    compares, success, failure = faulty.held[0]
    marker = next(op.key for op in success if op.key.startswith(TXN_PREFIX))
    assert faulty.inner.get(marker).value == "aborted"  # the fence
    late = faulty.inner.txn(compares, success, failure)  # the original request arrives now
    assert not late.succeeded
    _assert_one_copy(repo, net, acked, "a")
    held_port = next(json.loads(op.value) for op in success if op.key.startswith("/vxnet/res/ports/"))
    assert held_port["id"] == acked["id"]  # the same logical create: same id, claimed


def test_lost_fence_answer_and_lost_rerun_answer(faulty: Faulty) -> None:
    """Held attempt, the fence's answer lost too (it was applied), then the rerun's answer
    lost (applied): still one copy, and the held attempt can never apply."""
    repo = Repo(faulty)  # type: ignore[arg-type]
    net = _setup(repo)
    faulty.script = ["hold", "lose", "lose"]
    acked = repo.transact(_create(net, "a"))
    _assert_one_copy(repo, net, acked, "a")
    compares, success, failure = faulty.held[0]
    assert not faulty.inner.txn(compares, success, failure).succeeded
    _assert_one_copy(repo, net, acked, "a")


def test_store_down_after_a_lost_answer_is_unknown_not_a_rerun(faulty: Faulty) -> None:
    repo = Repo(faulty)  # type: ignore[arg-type]
    net = _setup(repo)
    repo.ambiguity_patience = 0.5
    down = {"on": False}

    def unreachable(key: str) -> Any:
        raise StoreUnavailable("down")

    def go_down() -> None:
        down["on"] = True
        faulty.get_linearizable = unreachable  # type: ignore[method-assign]
        faulty.grant_lease = unreachable  # type: ignore[assignment]

    faulty.before_raise = go_down
    faulty.script = ["lose"]
    with pytest.raises(StoreUnavailable):
        repo.transact(_create(net, "a"))
    assert down["on"]
    assert len([p for p in _ports(repo, net) if p["name"] == "a"]) == 1  # applied once, never rerun


def test_a_reapplied_create_is_recognised_as_this_requests_own(backend: Backend) -> None:
    """Defence in depth without markers: a store that applies a create but answers "compare
    failed". The rerun draws the same id, its claim fails, and `transact` returns the first
    attempt's result instead of creating a second port."""

    class Lying:
        may_lose_answers = False

        def __init__(self, inner: Store) -> None:
            self.inner, self.lie = inner, False

        def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
            r = self.inner.txn(compares, success, failure)
            if self.lie:
                self.lie = False
                return TxnResult(False, r.revision)
            return r

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    store = Lying(backend.open())
    repo = Repo(store)  # type: ignore[arg-type]
    net = _setup(repo)
    ids: list[str] = []

    def create(uow: UnitOfWork) -> dict[str, Any]:
        port = _create(net, "a")(uow)
        ids.append(port["id"])
        return port

    store.lie = True
    acked = repo.transact(create)
    assert len(ids) == 2 and ids[0] == ids[1]  # the rerun drew the same id
    _assert_one_copy(repo, net, acked, "a")


def test_absence_is_no_evidence_once_the_marker_may_have_expired(faulty: Faulty) -> None:
    """A marker's lease bounds how long its absence means "not applied": past that, the
    outcome is reported unknown at once (no fence, never a rerun)."""
    repo = Repo(faulty)  # type: ignore[arg-type]
    net = _setup(repo)
    repo.marker_ttl = 16  # absence is evidence until 16 - 15 s after the lease's grant ...
    repo._markers.current()
    repo._markers._granted_at -= 2.0  # ... and the lease was granted 2 s ago
    faulty.script = ["hold"]
    n = faulty.txns
    with pytest.raises(StoreUnavailable):
        repo.transact(_create(net, "a"))
    assert faulty.txns == n + 1  # the held attempt only: no fence, no rerun
    marker = next(op.key for op in faulty.held[0][1] if op.key.startswith(TXN_PREFIX))
    assert faulty.inner.get(marker) is None
    assert [p for p in _ports(repo, net) if p["name"] == "a"] == []


def _batched(faulty: Faulty, repo: Repo, names: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Create a port per name, each on a network of its own (so no two compete for an address),
    `names[0]`'s txn held at the gate and the others queued behind it one after the other (so
    they go to the store as one merged txn, services/txn_batch.py); then open the gate. The
    networks and the acknowledged ports, by name."""
    assert repo.batcher is not None
    repo.batcher.escape = 60.0  # the held txn must not let a second batch go meanwhile
    cidrs = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]
    nets = {name: _setup(repo, cidrs[i]) for i, name in enumerate(names)}
    acked: dict[str, dict[str, Any]] = {}

    def create(name: str) -> None:
        acked[name] = repo.transact(_create(nets[name], name))

    first = threading.Thread(target=create, args=(names[0],))
    first.start()
    assert faulty.at_gate.wait(30)
    rest = [threading.Thread(target=create, args=(n,)) for n in names[1:]]
    for k, t in enumerate(rest, 1):
        t.start()
        while len(repo.batcher._queue) < k:  # it waits behind the held one
            threading.Event().wait(0.01)
    faulty.gate.set()
    for t in [first, *rest]:
        t.join(60)
    assert sorted(acked) == sorted(names)
    return nets, acked


def test_lost_answer_of_a_merged_batch_is_one_copy_each(faulty: Faulty) -> None:
    """Two creates share one txn whose answer is lost after it applied: each resolves by its
    own marker as applied; no fence, no rerun."""
    repo = Repo(faulty)  # type: ignore[arg-type]
    faulty.script = ["ok"] * 3 + ["gate", "lose"]  # the three networks, then the creates
    n = len(faulty.markers) + 3
    nets, acked = _batched(faulty, repo, ["a", "b", "c"])
    assert faulty.markers[n:] == [1, 2]  # a alone, then b and c in one txn; nothing after
    for name in "abc":
        _assert_one_copy(repo, nets[name], acked[name], name)
        assert len(_ports(repo, nets[name])) == 1


def test_a_fenced_merged_batch_never_applies_late(faulty: Faulty) -> None:
    """A merged txn held back (answer lost, not applied): each of its attempts fences its own
    marker and reruns; the held batch, delivered late, fails its compares."""
    repo = Repo(faulty)  # type: ignore[arg-type]
    faulty.script = ["ok"] * 3 + ["gate", "hold"]
    nets, acked = _batched(faulty, repo, ["a", "b", "c"])
    assert len(faulty.held) == 1
    compares, success, failure = faulty.held[0]
    markers = [op.key for op in success if op.key.startswith(TXN_PREFIX)]
    assert len(markers) == 2 and all(faulty.inner.get(m).value == "aborted" for m in markers)  # both fenced
    assert not faulty.inner.txn(compares, success, failure).succeeded  # the late batch
    for name in "abc":
        _assert_one_copy(repo, nets[name], acked[name], name)
        assert len(_ports(repo, nets[name])) == 1
