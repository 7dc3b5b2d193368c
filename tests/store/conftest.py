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

from vxnet.store.contract import Store
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


BACKENDS: dict[str, Callable[[str], Backend]] = {
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
