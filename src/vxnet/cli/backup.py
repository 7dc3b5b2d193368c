"""`vxnet backup FILE` / `vxnet restore FILE`: a consistent snapshot of the store in one file,
restorable into any store (embedded or etcd, the same kind or the other).

Contract:
- The snapshot is every key under `/vxnet/` as of one store revision: etcd answers one range
  request at one revision (read straight from etcd, never from the read cache); the embedded store
  is read from its file in one SQLite read transaction, which sees whole group commits only, so
  a running server (which holds the store's lock) need not be stopped. Lease-bound keys (agent
  liveness) are left out, as `vxnet migrate` does: agents re-register on their own.
- The file is JSON (format `vxnet-backup`, version 1) with the revision, the key count and a
  SHA-256 of the keys and values; it is written 0600 (it holds the token signing keys and
  password hashes) to a temporary name, fsynced, read back and compared key by key with what
  was read, and only then renamed into place.
- `restore` checks the format and digest, then copies the keys into the target exactly as
  `vxnet migrate` does (an empty target unless --force, guarded transactions, a key-by-key
  read-back, a new store epoch so resuming agents take a snapshot). The backup's revision is
  not carried over: revisions are positions in one store only.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sqlite3
from typing import Any
from urllib.parse import quote

import typer

from vxnet.services.repo import ROOT
from vxnet.store.contract import KeyValue, Store, StoreError

FORMAT = "vxnet-backup"
VERSION = 1


def digest(keys: list[tuple[str, str]]) -> str:
    """SHA-256 over the sorted (key, value) pairs, each length-prefixed."""
    h = hashlib.sha256()
    for k, v in sorted(keys):
        for part in (k, v):
            b = part.encode()
            h.update(len(b).to_bytes(8, "big"))
            h.update(b)
    return h.hexdigest()


def _sqlite_path(url: str) -> str | None:
    scheme, _, rest = url.partition("://")
    if scheme != "sqlite":
        return None
    path = rest.partition("?")[0]
    return path if path.startswith("/") else os.path.abspath(path)


def read_sqlite_file(path: str) -> tuple[list[tuple[str, str]], int]:
    """The embedded store's keys and revision from its file, in one read transaction (the
    server that owns the file may be running: WAL readers never block it)."""
    if not os.path.exists(path):
        raise StoreError(f"no embedded store at {path}")
    try:
        db = sqlite3.connect(f"file:{quote('/' + path.lstrip('/'))}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open the embedded store {path}: {e}") from None
    try:
        db.execute("BEGIN")  # one snapshot for both statements
        row = db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
        rows = db.execute("SELECT key, value FROM kv WHERE key >= ? AND key < ? AND lease = 0 ORDER BY key",
                          (ROOT, ROOT[:-1] + chr(ord(ROOT[-1]) + 1))).fetchall()
        db.execute("COMMIT")
    except sqlite3.Error as e:
        raise StoreError(f"cannot read the embedded store {path}: {e}") from None
    finally:
        db.close()
    return [(k, v) for k, v in rows], int(row[0]) if row else 0


def read_store(store: Store) -> tuple[list[tuple[str, str]], int]:
    """Every non-lease key under ROOT of an open store, at one revision."""
    kvs, rev = store.range(ROOT)
    return [(kv.key, kv.value) for kv in kvs if kv.lease == 0], rev


def snapshot(url: str | None, data_dir: str) -> tuple[list[tuple[str, str]], int]:
    """Read the store named by `url` (None: the embedded default in `data_dir`)."""
    from vxnet.store import open_store

    if not url:
        url = "sqlite:///" + os.path.join(data_dir, "vxnet.db")
    path = _sqlite_path(url)
    if path is not None:
        return read_sqlite_file(path)
    if url.startswith(("etcd://", "etcds://")):
        base, _, query = url.partition("?")
        opts = [o for o in query.split("&") if o and not o.startswith("cache=")]
        url = base + "?" + "&".join([*opts, "cache=0"])  # one range at one revision, from etcd itself
    store = open_store(url, data_dir)
    try:
        return read_store(store)
    finally:
        store.close()


def write_backup(path: str, keys: list[tuple[str, str]], revision: int, source: str) -> None:
    """Write, fsync, read back, compare, then rename into place (0600)."""
    doc = {"format": FORMAT, "version": VERSION, "revision": revision, "source": source,
           "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "count": len(keys), "sha256": digest(keys), "keys": [[k, v] for k, v in keys]}
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        back, _ = load_backup(tmp)
        if dict(back) != dict(keys) or len(back) != len(keys):
            raise StoreError("verification failed: the written file differs from the snapshot")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_backup(path: str) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """The keys of a backup file and its header; StoreError if it is not a whole, intact backup."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot read backup {path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StoreError(f"{path} is not a vxnet backup")
    if doc.get("version") != VERSION:
        raise StoreError(f"{path}: backup format version {doc.get('version')!r} is not supported ({VERSION})")
    raw = doc.get("keys")
    if not isinstance(raw, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in raw):
        raise StoreError(f"{path}: malformed key list")
    keys = [(k, v) for k, v in raw]
    if any(not k.startswith(ROOT) for k, _ in keys):
        raise StoreError(f"{path}: a key outside {ROOT}")
    if len(keys) != doc.get("count") or len({k for k, _ in keys}) != len(keys) or digest(keys) != doc.get("sha256"):
        raise StoreError(f"{path}: the digest or key count does not match: the file is damaged")
    header = {k: v for k, v in doc.items() if k != "keys"}
    return keys, header


class _Snapshot:
    """A read-only Store over a backup's keys: the source side of `migrate`."""

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        self._kvs = [KeyValue(k, v, 1, 1, 1) for k, v in sorted(keys)]

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        return [kv for kv in self._kvs if kv.key.startswith(prefix)], 1


def restore(keys: list[tuple[str, str]], target: Store, force: bool = False) -> int:
    """Copy the keys into `target` and verify them (see `cli/migrate.migrate`)."""
    from vxnet.cli.migrate import migrate

    return migrate(_Snapshot(keys), target, force)  # type: ignore[arg-type]


def _store_url(store: str | None, config: str | None) -> tuple[str | None, str]:
    from vxnet.config import load_config

    cfg = load_config(config).with_overrides(store=store)
    return cfg.store, cfg.data_dir


def register(app: typer.Typer) -> None:
    @app.command("backup")
    def backup_cmd(
        file: str = typer.Argument(..., help="the backup file to write (0600)"),
        store: str = typer.Option(None, help="store URL (default: the configuration's, else the embedded store)"),
        config: str = typer.Option(None, help="TOML configuration file naming the store"),
    ) -> None:
        """Write a consistent snapshot of the store to FILE (the server may keep running)."""
        from vxnet.config import ConfigError

        try:
            url, data_dir = _store_url(store, config)
            keys, rev = snapshot(url, data_dir)
            write_backup(file, keys, rev, (url or "sqlite").partition("://")[0])
        except (StoreError, ConfigError, OSError) as e:
            typer.echo(f"vxnet backup: {e}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"backed up and verified {len(keys)} keys at revision {rev} to {file}")

    @app.command("restore")
    def restore_cmd(
        file: str = typer.Argument(..., help="a file written by `vxnet backup`"),
        store: str = typer.Option(None, help="target store URL (default: the configuration's, else the embedded store)"),
        config: str = typer.Option(None, help="TOML configuration file naming the store"),
        force: bool = typer.Option(False, help="replace what the target holds under /vxnet/"),
    ) -> None:
        """Restore a backup into a store (stop its servers first for the embedded store) and verify it."""
        from vxnet.config import ConfigError
        from vxnet.store import open_store

        try:
            keys, header = load_backup(file)
            url, data_dir = _store_url(store, config)
            target = open_store(url, data_dir)
        except (StoreError, ConfigError, OSError) as e:
            typer.echo(f"vxnet restore: {e}", err=True)
            raise typer.Exit(2) from None
        try:
            n = restore(keys, target, force)
        except StoreError as e:
            typer.echo(f"vxnet restore: {e}", err=True)
            raise typer.Exit(1) from None
        finally:
            target.close()
        typer.echo(f"restored and verified {n} keys (backup of revision {header['revision']}) into "
                   f"{url or 'the embedded store'}")

