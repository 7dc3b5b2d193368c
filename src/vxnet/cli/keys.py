"""`vxnet keys rotate` and `vxnet passwd`: the operator's side of tokens and passwords.

- `vxnet keys rotate [--revoke] --config FILE`: a new token signing key for the whole cloud.
  Without `--revoke` tokens signed with the old key stay valid until they expire (the old key is
  kept in the store for one token lifetime); with `--revoke` every older key is dropped at once,
  so every token issued before is refused by every server (use it when the store may have been
  read). Works on a running cloud: servers pick the new key up through their store watch. On etcd
  the command writes the store directly; the embedded store is locked by its server, so the
  command then asks that server (an admin login: `--user`, password from VXNET_PASSWORD, the
  config's plain password, or a prompt).
- `vxnet passwd`: reads a password (tty prompt twice, or one line of stdin) and prints the
  `password_hash` to put in `[[identity.users]]` instead of `password`.
"""

from __future__ import annotations

import getpass
import os
import sys

import typer

from vxnet.config import Config, ConfigError, load_config


def _rotate_via_server(cfg: Config, revoke: bool, user: str | None, url: str | None) -> dict[str, object]:
    import httpx

    admins = [u for u in cfg.users if "admin" in u.roles and (user is None or u.name == user)]
    if not admins:
        raise typer.BadParameter(f"no admin user {user or ''} in the config to ask the server with")
    admin = admins[0]
    password = os.environ.get("VXNET_PASSWORD") or admin.password or getpass.getpass(f"password of {admin.name}: ")
    scheme = "https" if cfg.tls_cert else "http"
    base = (url or cfg.public_url or f"{scheme}://{cfg.listen}").rstrip("/")
    verify: bool | str = cfg.tls_cert or True
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": admin.name, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": admin.project, "domain": {"id": "default"}}}}}
    with httpx.Client(base_url=base, timeout=30, verify=verify) as c:
        r = c.post("/identity/v3/auth/tokens", json=body)
        if r.status_code != 201:
            raise typer.BadParameter(f"login as {admin.name} at {base} failed: {r.status_code} {r.text[:200]}")
        r = c.post("/identity/v3/OS-VXNET/keys/rotate", json={"revoke": revoke},
                   headers={"X-Auth-Token": r.headers["X-Subject-Token"]})
        if r.status_code != 200:
            raise typer.BadParameter(f"rotation refused by {base}: {r.status_code} {r.text[:200]}")
        return r.json()["rotation"]  # type: ignore[no-any-return]


def register(app: typer.Typer) -> None:
    keys = typer.Typer(help="Token signing keys.", no_args_is_help=True)
    app.add_typer(keys, name="keys")

    @keys.command()
    def rotate(
        config: str = typer.Option(None, help="the servers' TOML configuration (store, token_ttl, users)"),
        store: str = typer.Option(None, help="store URL (default: the config's)"),
        data_dir: str = typer.Option(None, help="data directory of the embedded store"),
        revoke: bool = typer.Option(False, "--revoke", help="drop the old keys now: every older token is refused"),
        user: str = typer.Option(None, help="admin user to ask a running server with (embedded store)"),
        url: str = typer.Option(None, help="server URL to ask (default: the config's public_url or listen)"),
    ) -> None:
        """Make a new token signing key current (old tokens last until expiry, or not with --revoke)."""
        from vxnet.services.identity_state import rotate_keys
        from vxnet.store import open_store
        from vxnet.store.contract import StoreError

        try:
            cfg = load_config(config).with_overrides(store=store, data_dir=data_dir)
        except ConfigError as e:
            typer.echo(f"vxnet keys rotate: {e}", err=True)
            raise typer.Exit(2) from None
        try:
            st = open_store(cfg.store, cfg.data_dir)
        except StoreError as e:
            if "in use" not in str(e):
                typer.echo(f"vxnet keys rotate: {e}", err=True)
                raise typer.Exit(2) from None
            res = _rotate_via_server(cfg, revoke, user, url)  # the server holds the embedded store
            old, new = str(res["old_key_id"]), str(res["new_key_id"])
        else:
            try:
                old, new = rotate_keys(st, cfg.token_ttl, revoke)
            finally:
                st.close()
        typer.echo(f"signing key {old} -> {new}; " + (
            "older keys dropped: every token issued before is refused now" if revoke else
            f"tokens signed with {old} stay valid until they expire (at most {cfg.token_ttl} s)"))

    @app.command()
    def passwd() -> None:
        """Print a password_hash for `[[identity.users]]` (password from the tty, or stdin)."""
        from vxnet.passwords import hash_password

        if sys.stdin.isatty():
            pw = getpass.getpass("password: ")
            if getpass.getpass("again: ") != pw:
                typer.echo("vxnet passwd: the passwords differ", err=True)
                raise typer.Exit(1)
        else:
            pw = sys.stdin.readline().rstrip("\r\n")
        if not pw:
            typer.echo("vxnet passwd: empty password", err=True)
            raise typer.Exit(1)
        typer.echo(hash_password(pw))
