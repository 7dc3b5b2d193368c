"""The one source of truth: an etcd-like store behind one contract (see `contract.py`)."""

from __future__ import annotations

import os

from vxnet.store.contract import Store, StoreError

DEFAULT_DATA_DIR = "/var/lib/vxnet"


def open_store(url: str | None, data_dir: str = DEFAULT_DATA_DIR) -> Store:
    """Open a store by URL: `sqlite:///abs/path.db`, `sqlite://relative.db`, `memory://`,
    or (with the etcd backend) `etcd://h1:2379,h2:2379`. None means the embedded default."""
    if not url:
        url = "sqlite:///" + os.path.join(data_dir, "vxnet.db")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise StoreError(f"store URL {url!r} has no scheme (sqlite://, memory://, etcd://)")
    if scheme == "sqlite":
        from vxnet.store.sqlite_store import SqliteStore

        return SqliteStore(rest if rest.startswith("/") else os.path.abspath(rest))
    if scheme == "memory":
        from vxnet.store.sqlite_store import SqliteStore

        return SqliteStore(":memory:")
    if scheme == "etcd":
        try:
            from vxnet.store.etcd_store import EtcdStore  # type: ignore[import-not-found]
        except ImportError as e:
            raise StoreError("the etcd backend is not available in this build") from e
        return EtcdStore(rest.split(","))
    raise StoreError(f"unknown store scheme {scheme!r}")
