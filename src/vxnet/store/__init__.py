"""The one source of truth: an etcd-like store behind one contract (see `contract.py`)."""

from __future__ import annotations

import os

from vxnet.store.contract import Store, StoreError

DEFAULT_DATA_DIR = "/var/lib/vxnet"


def open_store(url: str | None, data_dir: str = DEFAULT_DATA_DIR) -> Store:
    """Open a store by URL: `sqlite:///abs/path.db`, `sqlite://relative.db`, `memory://`,
    (`?synchronous=normal` trades durability on power loss for speed: docs/deployment.md),
    `etcd://h1:2379,h2:2379`, or with TLS
    `etcds://h1:2379,h2:2379?ca=/etc/vxnet/ca.pem&cert=/etc/vxnet/client.pem&key=/etc/vxnet/client.key`. None means the embedded default.
    etcd URLs serve reads from the watch-fed mirror (`store/cache.py`) by default; `cache=0`
    reads etcd on every read (docs/deployment.md, "Read cache")."""
    if not url:
        # the default store lives in the state directory, which must be the owner's alone
        from vxnet.store.secure_files import check_private, private_dir

        private_dir(data_dir)
        check_private(data_dir, "state directory")
        url = "sqlite:///" + os.path.join(data_dir, "vxnet.db")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise StoreError(f"store URL {url!r} has no scheme (sqlite://, memory://, etcd://)")
    if scheme == "sqlite":
        from urllib.parse import parse_qs

        from vxnet.store.sqlite_store import SqliteStore

        path, _, query = rest.partition("?")
        opts = {k: v[-1] for k, v in parse_qs(query).items()}
        if set(opts) - {"synchronous"}:
            raise StoreError(f"unknown sqlite URL options: {', '.join(sorted(set(opts) - {'synchronous'}))} "
                             "(synchronous)")
        return SqliteStore(path if path.startswith("/") else os.path.abspath(path),
                           synchronous=opts.get("synchronous", "full"))
    if scheme == "memory":
        from vxnet.store.sqlite_store import SqliteStore

        return SqliteStore(":memory:")
    if scheme in ("etcd", "etcds"):
        from urllib.parse import parse_qs

        from vxnet.store.etcd_store import EtcdStore

        hosts, _, query = rest.partition("?")
        opts = {k: v[-1] for k, v in parse_qs(query).items()}
        unknown = set(opts) - {"ca", "cert", "key", "cache"}
        if unknown:
            raise StoreError(f"unknown etcd URL options: {', '.join(sorted(unknown))} (ca, cert, key, cache)")
        if opts.get("cache", "1") not in ("0", "1"):
            raise StoreError("etcd URL option cache must be 0 or 1")
        proto = "https" if scheme == "etcds" else "http"
        endpoints = [h if "://" in h else f"{proto}://{h}" for h in hosts.split(",") if h]
        return EtcdStore(endpoints, ca=opts.get("ca"), cert=opts.get("cert"), key=opts.get("key"),
                         cache=opts.get("cache", "1") == "1")
    raise StoreError(f"unknown store scheme {scheme!r}")
