"""`vxnet migrate --from URL --to URL`: copy every object from one store into another
(typically the embedded SQLite store into an etcd cluster) with its value intact.

Invariants: the target must hold nothing under `/vxnet/` (unless --force); keys are written in
transactions of at most 100 keys, each guarded by "key missing", so a concurrent writer or a
second migration cannot be overwritten; the target gets a new store epoch (agents resuming
with a revision of the source get a snapshot); lease-bound keys (agent liveness) are not copied, since
agents re-register on their own; afterwards every copied key is read back and compared. The
source is only read. Stop the servers first: the embedded store is locked by its server.
"""

from __future__ import annotations

import uuid

import typer

from vxnet.services.repo import EPOCH_KEY, ROOT
from vxnet.store import open_store
from vxnet.store.contract import Delete, Put, Store, StoreError, key_missing

BATCH = 100


def migrate(source: Store, target: Store, force: bool = False) -> int:
    """Copy all keys under ROOT; returns how many were copied. Raises StoreError on mismatch."""
    kvs, _ = source.range(ROOT)
    kvs = [kv for kv in kvs if kv.lease == 0]
    existing, _ = target.range(ROOT)
    if existing and not force:
        raise StoreError(f"target already holds {len(existing)} keys under {ROOT}; use --force to replace them")
    if existing:
        target.txn([], [Delete(ROOT, prefix=True)])
    for i in range(0, len(kvs), BATCH):
        chunk = kvs[i : i + BATCH]
        res = target.txn([key_missing(kv.key) for kv in chunk], [Put(kv.key, kv.value) for kv in chunk])
        if not res.succeeded:
            raise StoreError("a key appeared in the target during the migration; nothing more was written")
    copied, _ = target.range(ROOT)
    want = {kv.key: kv.value for kv in kvs}
    got = {kv.key: kv.value for kv in copied}
    want.pop(EPOCH_KEY, None)
    got.pop(EPOCH_KEY, None)
    if want != got:
        missing = sorted(set(want) - set(got))[:5]
        raise StoreError(f"verification failed: {len(set(want) ^ set(got))} keys differ (e.g. {missing})")
    # A new epoch: revisions of the source mean nothing here; agents resuming with one get a
    # snapshot (see services/view_hub.store_epoch).
    target.txn([], [Put(EPOCH_KEY, uuid.uuid4().hex)])
    return len(kvs)


def register(app: typer.Typer) -> None:
    @app.command("migrate")
    def migrate_cmd(
        from_url: str = typer.Option(..., "--from", help="source store URL, e.g. sqlite:///var/lib/vxnet/vxnet.db"),
        to_url: str = typer.Option(..., "--to", help="target store URL, e.g. etcd://h1:2379,h2:2379,h3:2379"),
        force: bool = typer.Option(False, help="replace what the target holds under /vxnet/"),
    ) -> None:
        """Copy every object from one store to another and verify the copy."""
        try:
            source = open_store(from_url)
            target = open_store(to_url)
        except StoreError as e:
            typer.echo(f"vxnet migrate: {e}", err=True)
            raise typer.Exit(2) from None
        try:
            n = migrate(source, target, force)
        except StoreError as e:
            typer.echo(f"vxnet migrate: {e}", err=True)
            raise typer.Exit(1) from None
        finally:
            source.close()
            target.close()
        typer.echo(f"copied and verified {n} keys from {from_url} to {to_url}")
