"""Handlers marked `off_loop(inline=True)` run on the event loop on the embedded store (no
worker-thread hop, their answer after the durable commit), and on a worker thread elsewhere or
for a bulk body (api/state.py)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api.helpers import assert_error, network, port, subnet
from tests.conftest import ServerHandle, start_server
from vxnet.api import state
from vxnet.store.sqlite_store import SqliteStore


@pytest.fixture
def hops(monkeypatch) -> list[str]:
    """The handlers sent to a worker thread (`run_store(_drive, handler, ...)`), by name."""
    seen: list[str] = []
    real = state.run_store

    async def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
        if fn is state._drive:
            seen.append(args[0].__name__)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(state, "run_store", counting)
    return seen


def test_port_handlers_make_no_thread_hop_on_the_embedded_store(server: ServerHandle, hops: list[str]) -> None:
    c = server.api()
    net = network(c)
    subnet(c, net, "192.0.2.0/24")
    assert hops[-2:] == ["create_network", "create_subnet"]
    hops.clear()
    p = port(c, net, name="a")
    assert c.get(f"/ports/{p['id']}").json()["port"]["name"] == "a"
    r = c.put(f"/ports/{p['id']}", json={"port": {"name": "b"}})
    assert r.status_code == 200 and r.json()["port"]["name"] == "b"
    assert c.delete(f"/ports/{p['id']}").status_code == 204
    assert_error(c.post("/ports", json={"port": {"network_id": str(uuid.uuid4())}}), 404)
    assert hops == []
    # answered only once durable: what the store holds on disk includes the acknowledged writes
    assert server.store._durable_rev == server.store.revision()  # type: ignore[attr-defined]
    r = c.post("/ports", json={"ports": [{"network_id": net["id"]}, {"network_id": net["id"]}]})
    assert r.status_code == 201 and len(r.json()["ports"]) == 2
    assert hops == ["create_port"]  # a bulk create: a worker thread
    assert len(c.get("/ports").json()["ports"]) == 2
    assert hops == ["create_port", "list_ports"]


def test_inline_handler_runs_on_the_loop_thread(server: ServerHandle, monkeypatch) -> None:
    threads: set[str] = set()
    real = SqliteStore.txn

    def recording(self: SqliteStore, *args: Any, **kwargs: Any) -> Any:
        threads.add(threading.current_thread().name)
        return real(self, *args, **kwargs)

    c = server.api()
    net = network(c)
    subnet(c, net, "192.0.2.0/24")
    monkeypatch.setattr(SqliteStore, "txn", recording)
    port(c, net)
    assert threads == {server._thread.name}  # uvicorn's loop runs in the server's thread


class _NoDeferral:
    """The embedded store without `deferring` (as any other store is): handlers keep the thread."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name in ("deferring", "durable"):
            raise AttributeError(name)
        return getattr(self._store, name)


@pytest.fixture
def plain_server(tmp_path) -> Iterator[ServerHandle]:
    inner = SqliteStore(os.path.join(tmp_path, "vxnet.db"))
    h = start_server("", store=_NoDeferral(inner))  # type: ignore[arg-type]
    yield h
    h.stop(close_store=False)
    inner.close()


def test_a_store_without_deferral_keeps_the_worker_thread(plain_server: ServerHandle, hops: list[str]) -> None:
    c = plain_server.api()
    net = network(c)
    subnet(c, net, "192.0.2.0/24")
    hops.clear()
    p = port(c, net)
    c.get(f"/ports/{p['id']}")
    assert hops == ["create_port", "show_port"]
