"""`vxnet migrate --from URL --to URL`: copy every object from one store into another
(typically the embedded SQLite store into an etcd cluster) with its value intact.

Invariants: the target must hold nothing under `/vxnet/` (unless --force); keys are written in
transactions of at most 100 keys, each guarded by "key missing", so a concurrent writer or a
second migration cannot be overwritten; the target gets a new store epoch (agents resuming
with a revision of the source get a snapshot); lease-bound keys (agent liveness) are not copied, since
agents re-register on their own; afterwards every copied key is read back and compared. The
source is only read. Stop the servers first: the embedded store is locked by its server.

The identity records that live on leases are the exception (`LEASED_KEPT`): revoked tokens,
users' "not before" cut-offs and retired signing keys are copied onto new leases that last at
least as long as the originals could still have (`leased_ttl`); without them a revoked token
would be valid again on the new store. Records already past their use are not copied.
"""

from __future__ import annotations

import json
import time
import uuid

import typer

from vxnet.services.identity_state import GRACE, NOT_BEFORE_PREFIX, OLD_KEYS_PREFIX, REVOKED_PREFIX
from vxnet.services.repo import EPOCH_KEY, ROOT
from vxnet.store import open_store
from vxnet.store.contract import Delete, KeyValue, Put, Store, StoreError, key_missing

BATCH = 100
# lease-bound keys that are copied (everything else on a lease is transient: liveness, markers)
LEASED_KEPT = (REVOKED_PREFIX, NOT_BEFORE_PREFIX, OLD_KEYS_PREFIX)


def leased_ttl(key: str, value: str, token_ttl: int, now: float) -> int:
    """Seconds a leased identity record must still live (<= 0: it is of no use any more)."""
    try:
        doc = json.loads(value) if not key.startswith(OLD_KEYS_PREFIX) else {}
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    if key.startswith(REVOKED_PREFIX) and isinstance(doc.get("expires_at"), (int, float)):
        return int(doc["expires_at"] - now) + GRACE
    if key.startswith(NOT_BEFORE_PREFIX) and isinstance(doc.get("not_before"), (int, float)):
        return int(doc["not_before"] + token_ttl - now) + GRACE
    return token_ttl + GRACE  # a retired key (or an unreadable record): one token lifetime from now


def copy_leased(target: Store, kvs: list[KeyValue], token_ttl: int, now: float | None = None) -> int:
    """Write the leased identity records of `kvs` onto new leases (see the module docstring) and
    read each back; returns how many were written."""
    now = time.time() if now is None else now
    n = 0
    for kv in kvs:
        ttl = leased_ttl(kv.key, kv.value, token_ttl, now)
        if ttl <= 0:
            continue
        lease = target.grant_lease(ttl)
        if not target.txn([key_missing(kv.key)], [Put(kv.key, kv.value, lease)]).succeeded:
            raise StoreError(f"{kv.key} appeared in the target during the copy; nothing more was written")
        got = target.get(kv.key)
        if got is None or got.value != kv.value:
            raise StoreError(f"verification failed: {kv.key} differs after the copy")
        n += 1
    return n


def migrate(source: Store, target: Store, force: bool = False, token_ttl: int = 3600) -> int:
    """Copy all keys under ROOT; returns how many were copied. Raises StoreError on mismatch."""
    kvs, _ = source.range(ROOT)
    leased = [kv for kv in kvs if kv.lease and kv.key.startswith(LEASED_KEPT)]
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
    got = {kv.key: kv.value for kv in copied if kv.lease == 0}
    want.pop(EPOCH_KEY, None)
    got.pop(EPOCH_KEY, None)
    if want != got:
        missing = sorted(set(want) - set(got))[:5]
        raise StoreError(f"verification failed: {len(set(want) ^ set(got))} keys differ (e.g. {missing})")
    # A new epoch: revisions of the source mean nothing here; agents resuming with one get a
    # snapshot (see services/view_hub.store_epoch).
    target.txn([], [Put(EPOCH_KEY, uuid.uuid4().hex)])
    return len(kvs) + copy_leased(target, leased, token_ttl)


def register(app: typer.Typer) -> None:
    @app.command("migrate")
    def migrate_cmd(
        from_url: str = typer.Option(..., "--from", help="source store URL, e.g. sqlite:///var/lib/vxnet/vxnet.db"),
        to_url: str = typer.Option(..., "--to", help="target store URL, e.g. etcd://h1:2379,h2:2379,h3:2379"),
        force: bool = typer.Option(False, help="replace what the target holds under /vxnet/"),
        token_ttl: int = typer.Option(3600, help="the servers' token_ttl: how long copied token revocations "
                                                 "and retired keys are kept at least"),
    ) -> None:
        """Copy every object from one store to another and verify the copy."""
        try:
            source = open_store(from_url)
            target = open_store(to_url)
        except StoreError as e:
            typer.echo(f"vxnet migrate: {e}", err=True)
            raise typer.Exit(2) from None
        try:
            n = migrate(source, target, force, token_ttl)
        except StoreError as e:
            typer.echo(f"vxnet migrate: {e}", err=True)
            raise typer.Exit(1) from None
        finally:
            source.close()
            target.close()
        typer.echo(f"copied and verified {n} keys from {from_url} to {to_url}")
