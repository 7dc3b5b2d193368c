"""The `vxnet` command line: one typer app with a sub-command per component (the console entry
point is `vxnet.cli.main.main`, which runs `vxnet agent` without this app, see there)."""

from __future__ import annotations

import json
import logging
import os

import typer

from vxnet.cli import agent as cli_agent
from vxnet.cli import backup as cli_backup
from vxnet.cli import demo as cli_demo
from vxnet.cli import keys as cli_keys
from vxnet.cli import lab as cli_lab
from vxnet.cli import migrate as cli_migrate
from vxnet.cli import ops as cli_ops
from vxnet.cli import quota as cli_quota
from vxnet.cli import trace as cli_trace
from vxnet.config import ConfigError, exposed_secrets, load_config
from vxnet.store import open_store
from vxnet.store.contract import StoreError

app = typer.Typer(help="vxnet: software-defined network virtualisation on plain Linux.", no_args_is_help=True)



def _print_version(value: bool) -> None:
    if value:
        from vxnet.buildinfo import describe

        typer.echo(describe())
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """vxnet: software-defined network virtualisation on plain Linux."""


# Sub-commands living in their own modules (vxnet/cli/<name>.py exposing `register(app)`).
# Imported explicitly: a missing or broken module fails `vxnet` at once, never drops its
# commands silently. (Each keeps its heavy imports inside its commands, so `--help` stays fast.)
for _mod in (cli_agent, cli_lab, cli_demo, cli_trace, cli_migrate, cli_keys, cli_quota, cli_backup, cli_ops):
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
    log_level: str = typer.Option(None, help="log level (default: the config's log_level, else warning); "
                                             "SIGHUP re-reads the config's"),
    log_format: str = typer.Option(None, help="text or json (default: the config's log_format, else text)"),
    workers: int = typer.Option(1, help="server processes sharing the port (etcd store only; each is a "
                                        "stateless API server like one on another host)"),
) -> None:
    """Run the API server (Neutron v2.0 + Keystone v3 subset + web UI + agent streams)."""
    import uvicorn

    from vxnet import logsetup
    from vxnet.api.app import SPEC_ENV, create_app

    try:
        cfg = load_config(config).with_overrides(listen=listen, store=store, data_dir=data_dir,
                                                 log_format=log_format)
        log_level = log_level or cfg.log_level or "warning"
        logsetup.configure(log_level, cfg.log_format)
    except (ConfigError, OSError, ValueError) as e:
        typer.echo(f"vxnet server: {e}", err=True)
        raise typer.Exit(2) from None
    if config:
        logsetup.reload_on_sighup(lambda: load_config(config).log_level)
        if exposed := exposed_secrets(config):
            logging.getLogger("vxnet.config").warning("%s", exposed)
    uvicorn_logs = {"log_config": None} if cfg.log_format == "json" else {}  # uvicorn's lines as JSON too
    host, port = split_listen(cfg.listen)
    tls = {"ssl_certfile": cfg.tls_cert, "ssl_keyfile": cfg.tls_key} if cfg.tls_cert else {}
    if workers > 1:
        # The embedded store belongs to one process; with etcd every worker is a full server.
        if not (cfg.store or "").startswith(("etcd://", "etcds://")):
            typer.echo("vxnet server: --workers needs an etcd store (the embedded store serves one process)", err=True)
            raise typer.Exit(2)
        os.environ[SPEC_ENV] = json.dumps({"config": config, "listen": cfg.listen, "store": cfg.store,
                                           "data_dir": cfg.data_dir, "log_level": log_level,
                                           "log_format": cfg.log_format})
        uvicorn.run("vxnet.api.app:app_from_env", factory=True, workers=workers, host=host, port=port,
                    log_level=log_level, access_log=False, timeout_graceful_shutdown=5, **tls, **uvicorn_logs)
        return
    from vxnet import heap, memprofile

    heap.limit_malloc_arenas()  # before the threads allocate (vxnet/heap.py)
    memprofile.install()  # only with VXNET_MEMPROFILE set: a debugging aid
    try:
        st = open_store(cfg.store, cfg.data_dir)
    except (StoreError, OSError) as e:
        typer.echo(f"vxnet server: {e}", err=True)
        raise typer.Exit(2) from None
    application = create_app(cfg, st)
    try:
        uvicorn.run(application, host=host, port=port, log_level=log_level, access_log=False,
                    timeout_graceful_shutdown=5, **tls, **uvicorn_logs)
    finally:
        st.close()


