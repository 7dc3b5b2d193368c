"""`vxnet` console entry point: one typer app with a sub-command per component."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys

import typer

from vxnet.config import ConfigError, load_config
from vxnet.store import open_store
from vxnet.store.contract import StoreError

app = typer.Typer(help="vxnet: software-defined network virtualisation on plain Linux.", no_args_is_help=True)



@app.callback()
def _root() -> None:
    """vxnet: software-defined network virtualisation on plain Linux."""


# Sub-command groups living in their own modules (vxnet/cli/<name>.py exposing `app`),
# added when present.
for _name in ("agent", "lab", "demo", "trace", "bench", "migrate", "keys", "quota"):
    try:
        _mod = importlib.import_module(f"vxnet.cli.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"vxnet.cli.{_name}":
            raise
        continue
    _mod.register(app)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


@app.command()
def server(
    listen: str = typer.Option(None, help="HOST:PORT to serve on (default from config, else 127.0.0.1:9696)"),
    store: str = typer.Option(None, help="store URL: sqlite:///path.db, memory://, etcd://h1:2379,..."),
    config: str = typer.Option(None, help="TOML configuration file"),
    data_dir: str = typer.Option(None, help="data directory for the embedded store"),
    log_level: str = typer.Option("warning", help="log level"),
    workers: int = typer.Option(1, help="server processes sharing the port (etcd store only; each is a "
                                        "stateless API server like one on another host)"),
) -> None:
    """Run the API server (Neutron v2.0 + Keystone v3 subset + web UI + agent streams)."""
    import uvicorn

    from vxnet.api.app import SPEC_ENV, create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        cfg = load_config(config).with_overrides(listen=listen, store=store, data_dir=data_dir)
    except (ConfigError, OSError) as e:
        typer.echo(f"vxnet server: {e}", err=True)
        raise typer.Exit(2) from None
    host, port = split_listen(cfg.listen)
    tls = {"ssl_certfile": cfg.tls_cert, "ssl_keyfile": cfg.tls_key} if cfg.tls_cert else {}
    if workers > 1:
        # The embedded store belongs to one process; with etcd every worker is a full server.
        if not (cfg.store or "").startswith(("etcd://", "etcds://")):
            typer.echo("vxnet server: --workers needs an etcd store (the embedded store serves one process)", err=True)
            raise typer.Exit(2)
        os.environ[SPEC_ENV] = json.dumps({"config": config, "listen": cfg.listen, "store": cfg.store,
                                           "data_dir": cfg.data_dir, "log_level": log_level})
        uvicorn.run("vxnet.api.app:app_from_env", factory=True, workers=workers, host=host, port=port,
                    log_level=log_level, access_log=False, timeout_graceful_shutdown=5, **tls)
        return
    try:
        st = open_store(cfg.store, cfg.data_dir)
    except (StoreError, OSError) as e:
        typer.echo(f"vxnet server: {e}", err=True)
        raise typer.Exit(2) from None
    application = create_app(cfg, st)
    try:
        uvicorn.run(application, host=host, port=port, log_level=log_level, access_log=False,
                    timeout_graceful_shutdown=5, **tls)
    finally:
        st.close()


def main() -> None:
    """Console script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
