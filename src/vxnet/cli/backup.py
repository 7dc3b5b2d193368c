"""`vxnet backup FILE` / `vxnet restore FILE`: a consistent snapshot of the store in one file,
restorable into any store (embedded or etcd, the same kind or the other).

Contract:
- The snapshot is every key under `/vxnet/` as of one store revision: etcd answers one range
  request at one revision (read straight from etcd, never from the read cache); the embedded store
  is read from its file in one SQLite read transaction, which sees whole group commits only, so
  a running server (which holds the store's lock) need not be stopped. Agent liveness keys (on
  leases) are left out, as `vxnet migrate` does: agents re-register on their own. The identity
  records that live on leases are kept (marked `leased`): revoked tokens, "not before" cut-offs
  of users and retired signing keys. Dropping them would make a revoked token valid again after
  a restore.
- The file is JSON (format `vxnet-backup`, version 1) with the revision, the key count and a
  SHA-256 of the keys and values; it is written 0600 (it holds the token signing keys and
  password hashes) to a temporary name, fsynced, read back and compared key by key with what
  was read, and only then renamed into place.
- `restore` checks the format and digest, then copies the keys into the target exactly as
  `vxnet migrate` does (an empty target unless --force, guarded transactions, a key-by-key
  read-back, a new store epoch so resuming agents take a snapshot). The backup's revision is
  not carried over: revisions are positions in one store only. Leased identity records get a
  new lease that lasts at least as long as the original could still have: a revocation until
  its token's expiry (+ grace), a cut-off and a retired key one token lifetime (`token_ttl`)
  from now; records already past their use are not restored.
- The digest detects damage, not forgery: a backup is as sensitive as the store (whoever can
  write one that gets restored can mint tokens). Keep it 0600 and where only operators write.
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

from vxnet.cli.migrate import LEASED_KEPT
from vxnet.services.repo import ROOT
from vxnet.store.contract import KeyValue, Store, StoreError

FORMAT = "vxnet-backup"
VERSION = 1


def digest(keys: list[tuple[str, str]], leased: list[str]) -> str:
    """SHA-256 over the sorted (key, value) pairs, then the sorted leased key names, each
    length-prefixed (so no two different contents share a byte stream)."""
    h = hashlib.sha256()
    for part in [x for kv in sorted(keys) for x in kv] + ["--leased--", *sorted(leased)]:
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


def _kept(key: str, lease: int) -> bool:
    return lease == 0 or key.startswith(LEASED_KEPT)


def read_sqlite_file(path: str) -> tuple[list[tuple[str, str]], list[str], int]:
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
        rows = db.execute("SELECT key, value, lease FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                          (ROOT, ROOT[:-1] + chr(ord(ROOT[-1]) + 1))).fetchall()
        db.execute("COMMIT")
    except sqlite3.Error as e:
        raise StoreError(f"cannot read the embedded store {path}: {e}") from None
    finally:
        db.close()
    kept = [(k, v, lease) for k, v, lease in rows if _kept(k, lease)]
    return [(k, v) for k, v, _ in kept], [k for k, _, lease in kept if lease], int(row[0]) if row else 0


def read_store(store: Store) -> tuple[list[tuple[str, str]], list[str], int]:
    """The kept keys under ROOT of an open store at one revision, and which were on leases."""
    kvs, rev = store.range(ROOT)
    kept = [kv for kv in kvs if _kept(kv.key, kv.lease)]
    return [(kv.key, kv.value) for kv in kept], [kv.key for kv in kept if kv.lease], rev


def snapshot(url: str | None, data_dir: str) -> tuple[list[tuple[str, str]], list[str], int]:
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


def write_backup(path: str, keys: list[tuple[str, str]], leased: list[str], revision: int, source: str) -> None:
    """Write, fsync, read back, compare, then rename into place (0600)."""
    doc = {"format": FORMAT, "version": VERSION, "revision": revision, "source": source,
           "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "count": len(keys), "sha256": digest(keys, leased), "leased": sorted(leased),
           "keys": [[k, v] for k, v in keys]}
    tmp = f"{path}.tmp-{os.getpid()}"
    # O_EXCL|O_NOFOLLOW: never write through a file or link someone else put at that name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        back, back_leased, _ = load_backup(tmp)
        if dict(back) != dict(keys) or len(back) != len(keys) or sorted(back_leased) != sorted(leased):
            raise StoreError("verification failed: the written file differs from the snapshot")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_backup(path: str) -> tuple[list[tuple[str, str]], list[str], dict[str, Any]]:
    """The keys of a backup file, which of them were leased, and its header; StoreError if it is
    not a whole, intact backup."""
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
    leased = doc.get("leased", [])
    if not isinstance(leased, list) or not all(isinstance(k, str) and k.startswith(LEASED_KEPT) for k in leased):
        raise StoreError(f"{path}: malformed leased list")
    if (len(keys) != doc.get("count") or len({k for k, _ in keys}) != len(keys)
            or not set(leased) <= {k for k, _ in keys} or digest(keys, leased) != doc.get("sha256")):
        raise StoreError(f"{path}: the digest or key count does not match: the file is damaged")
    header = {k: v for k, v in doc.items() if k != "keys"}
    return keys, leased, header


class _Snapshot:
    """A read-only Store over a backup's keys: the source side of `migrate`."""

    def __init__(self, keys: list[tuple[str, str]], leased: set[str]) -> None:
        # a leased key is shown on a (placeholder) lease, so `migrate` gives it a new one
        self._kvs = [KeyValue(k, v, 1, 1, 1, 1 if k in leased else 0) for k, v in sorted(keys)]

    def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        return [kv for kv in self._kvs if kv.key.startswith(prefix)], 1


def restore(keys: list[tuple[str, str]], leased: list[str], target: Store, force: bool = False,
            token_ttl: int = 3600) -> int:
    """Copy the keys into `target` and verify them (see `cli/migrate.migrate`); leased identity
    records get new leases. Returns how many keys were written."""
    from vxnet.cli.migrate import migrate

    return migrate(_Snapshot(keys, set(leased)), target, force, token_ttl)  # type: ignore[arg-type]


def _store_url(store: str | None, config: str | None) -> tuple[str | None, str, int]:
    from vxnet.config import load_config

    cfg = load_config(config).with_overrides(store=store)
    return cfg.store, cfg.data_dir, cfg.token_ttl


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
            url, data_dir, _ = _store_url(store, config)
            keys, leased, rev = snapshot(url, data_dir)
            write_backup(file, keys, leased, rev, (url or "sqlite").partition("://")[0])
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
        """Restore a backup into a store and verify it (stop the store's servers first; start them after)."""
        from vxnet.config import ConfigError
        from vxnet.store import open_store

        try:
            keys, leased, header = load_backup(file)
            url, data_dir, token_ttl = _store_url(store, config)
            target = open_store(url, data_dir)
        except (StoreError, ConfigError, OSError) as e:
            typer.echo(f"vxnet restore: {e}", err=True)
            raise typer.Exit(2) from None
        try:
            n = restore(keys, leased, target, force, token_ttl)
        except StoreError as e:
            typer.echo(f"vxnet restore: {e}", err=True)
            raise typer.Exit(1) from None
        finally:
            target.close()
        typer.echo(f"restored and verified {n} keys (backup of revision {header['revision']}) into "
                   f"{url or 'the embedded store'}")

