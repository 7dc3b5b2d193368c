"""`vxnet quota reset-usage --store URL`: delete every quota usage counter, so that each is
counted again from the store's objects on its next use (services/quotas.py).

Needed after servers ran with `[quotas] enabled = false` (they neither count nor enforce, so
the counters are stale). Safe while servers run: a transaction that read a counter fails its
compare and reruns with a fresh count. The embedded SQLite store is locked by its server:
stop it first.
"""

from __future__ import annotations

import typer

from vxnet.services.quotas import USAGE_PREFIX, reset_usage
from vxnet.store import open_store
from vxnet.store.contract import StoreError


def register(app: typer.Typer) -> None:
    quota = typer.Typer(help="Quota maintenance.", no_args_is_help=True)
    app.add_typer(quota, name="quota")

    @quota.command("reset-usage")
    def reset_usage_cmd(
        store: str = typer.Option(..., help="store URL, e.g. sqlite:///var/lib/vxnet/vxnet.db or etcd://h1:2379"),
    ) -> None:
        """Delete the usage counters; each is recounted from the store on its next use."""
        try:
            s = open_store(store)
        except StoreError as e:
            typer.echo(f"vxnet quota: {e}", err=True)
            raise typer.Exit(2) from None
        try:
            n = len(s.range(USAGE_PREFIX)[0])
            reset_usage(s)
        except StoreError as e:
            typer.echo(f"vxnet quota: {e}", err=True)
            raise typer.Exit(1) from None
        finally:
            s.close()
        typer.echo(f"deleted {n} usage counters; they are recounted on next use")
