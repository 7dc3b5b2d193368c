"""Store backends under test: every contract test runs once per backend listed here.

A backend is a `Backend`: how to open a fresh store for one test, how to reopen it (the same
data, a new client/process view), and which optional properties it has:
- `durable`: data survives `close()` + `reopen()` (a file or a cluster, not ":memory:").
- `exclusive_path`: two stores cannot be opened on the same location at once (the embedded
  store's `flock`); the test opens a second store on it and expects `StoreError`.

Adding the etcd backend later means adding one `Backend` to `BACKENDS` (starting etcd with its
own ports and data dir in `open`); no test changes. Tests put every key under `ns` (a prefix
unique per test) so they could share one cluster.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support.etcd import EtcdCluster
from vxnet.store.contract import Store
from vxnet.store.etcd_store import EtcdStore
from vxnet.store.sqlite_store import SqliteStore


@dataclasses.dataclass
class Backend:
    """One way of getting a store; `open()` returns the store for the current test."""

    name: str
    factory: Callable[[str], Store]  # location -> store
    durable: bool
    exclusive_path: bool
    location: str = ""
    opened: list[Store] = dataclasses.field(default_factory=list)

    def open(self) -> Store:
        """A store on this test's location."""
        store = self.factory(self.location)
        self.opened.append(store)
        return store

    def reopen(self, store: Store) -> Store:
        """Close `store` and open the same location again."""
        store.close()
        return self.open()

    def close_all(self) -> None:
        for s in self.opened:
            s.close()


def _sqlite(path: str) -> Store:
    return SqliteStore(path, reap_interval=0.05)


_etcd: EtcdCluster | None = None


_granted: list[int] = []


class _TrackedEtcdStore(EtcdStore):
    """Remembers the leases a test grants, so teardown can revoke them: the member is shared,
    and a lease expiring during a later test would bump the global revision under it."""

    def grant_lease(self, ttl: int) -> int:
        lid = super().grant_lease(ttl)
        _granted.append(lid)
        return lid


def _etcd_store(_location: str) -> Store:
    """A client of the one etcd member shared by the session (started on first use)."""
    global _etcd
    if _etcd is None:
        _etcd = EtcdCluster(1, prefix="vxt-store")
    return _TrackedEtcdStore(_etcd.endpoints)


def _revoke_granted() -> None:
    if _etcd is None or not _granted:
        return
    s = EtcdStore(_etcd.endpoints)
    for lid in _granted:
        s.revoke_lease(lid)
    _granted.clear()
    s.close()


BACKENDS: dict[str, Callable[[str], Backend]] = {
    # a real etcd member; keys are namespaced per test, so tests share it
    "etcd": lambda tmp: Backend("etcd", _etcd_store, durable=True, exclusive_path=False, location="etcd"),
    # location = a file in the test's tmp dir
    "sqlite-file": lambda tmp: Backend("sqlite-file", _sqlite, durable=True, exclusive_path=True,
                                       location=os.path.join(tmp, "store", "vxnet.db")),
    "sqlite-memory": lambda tmp: Backend("sqlite-memory", _sqlite, durable=False, exclusive_path=False,
                                         location=":memory:"),
}


def _make(request: pytest.FixtureRequest, tmp_path: str) -> Iterator[Backend]:
    b = BACKENDS[request.param](str(tmp_path))
    yield b
    b.close_all()
    _revoke_granted()


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: str) -> Iterator[Backend]:
    """Every backend."""
    yield from _make(request, tmp_path)


@pytest.fixture(params=sorted(n for n, f in BACKENDS.items() if f("/nonexistent").durable))
def durable_backend(request: pytest.FixtureRequest, tmp_path: str) -> Iterator[Backend]:
    """Backends whose data survives a close and reopen."""
    yield from _make(request, tmp_path)


@pytest.fixture(params=sorted(n for n, f in BACKENDS.items() if f("/nonexistent").exclusive_path))
def exclusive_backend(request: pytest.FixtureRequest, tmp_path: str) -> Iterator[Backend]:
    """Backends that refuse a second store on the same location."""
    yield from _make(request, tmp_path)


@pytest.fixture
def store(backend: Backend) -> Store:
    """A fresh store of each backend."""
    return backend.open()


@pytest.fixture
def ns() -> str:
    """A key prefix unique to the test."""
    return f"/t/{uuid.uuid4().hex[:12]}/"
