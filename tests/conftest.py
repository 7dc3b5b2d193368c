"""Shared fixtures: a real vxnet server over real HTTP, and authenticated clients.

`server` starts `vxnet.api.app` under uvicorn in a thread on a free loopback port with a fresh
store and the test identities below; `api(user)` returns an httpx client holding that user's
token. Tests talk HTTP only, as any client would.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.support import http, ports, uvserver
from vxnet.api.app import create_app
from vxnet.config import QUOTA_DEFAULTS, Config, QuotaSettings, User
from vxnet.store.contract import Store
from vxnet.store.sqlite_store import SqliteStore

USERS = (
    User("admin", "s3cret", "admin", ("admin",)),
    User("alice", "alice-pw", "tenant-a", ("member", "reader")),
    User("alice_reader", "reader-pw", "tenant-a", ("reader",)),
    User("bob", "bob-pw", "tenant-b", ("member", "reader")),
    User("vxnet-agent", "vxnet-agent-pw", "service", ("service",)),
)
PASSWORDS = {u.name: u.password for u in USERS}
# Module-scoped servers accumulate one project's objects over many tests: the fixtures' servers
# count but do not limit (tests/api/test_quotas.py runs its servers with Neutron's defaults).
UNLIMITED = QuotaSettings(defaults=tuple((r, -1) for r in QUOTA_DEFAULTS))


def free_port() -> int:
    return ports.free_port()


class ServerHandle:
    """A running server: its base URL, store and config."""

    def __init__(self, url: str, store: Store, config: Config, thread: threading.Thread, server: uvserver.Server) -> None:
        self.url = url
        self.store = store
        self.config = config
        self._thread = thread
        self._server = server
        self._tokens: dict[str, str] = {}

    def token(self, user: str) -> str:
        if user not in self._tokens:
            self._tokens[user] = get_token(self.url, user, PASSWORDS[user], next(u.project for u in USERS if u.name == user))
        return self._tokens[user]

    def api(self, user: str = "admin") -> httpx.Client:
        return http.client(base_url=self.url + "/v2.0", headers={"X-Auth-Token": self.token(user)}, timeout=30)

    def stop(self, close_store: bool = True) -> None:
        """Stop the server; keep the store open when other servers share it."""
        self._server.stop()
        self._thread.join(10)
        if close_store:
            self.store.close()


def get_token(url: str, user: str, password: str, project: str) -> str:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
    r = http.post(url + "/identity/v3/auth/tokens", json=body, timeout=10)
    assert r.status_code == 201, r.text
    return r.headers["X-Subject-Token"]


def start_server(db_path: str, config: Config | None = None, port: int | None = None, store: Store | None = None) -> ServerHandle:
    """A server on `db_path` (or on `store`, e.g. an EtcdStore) in a thread."""
    port = port or free_port()
    config = config or Config(listen=f"127.0.0.1:{port}", users=USERS, quotas=UNLIMITED)
    store = store if store is not None else SqliteStore(db_path)
    # timeout_graceful_shutdown: open agent/UI streams end fast
    server, thread = uvserver.run_in_thread(create_app(config, store), port, timeout_graceful_shutdown=1)
    return ServerHandle(f"http://127.0.0.1:{port}", store, config, thread, server)


@pytest.fixture
def server(tmp_path) -> Iterator[ServerHandle]:
    """A fresh server per test."""
    h = start_server(os.path.join(tmp_path, "vxnet.db"))
    yield h
    h.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory) -> Iterator[ServerHandle]:
    """One server for a whole test module (tests must not depend on each other's objects)."""
    h = start_server(os.path.join(tmp_path_factory.mktemp("srv"), "vxnet.db"))
    yield h
    h.stop()
