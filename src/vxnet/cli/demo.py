"""`vxnet demo`: the one-command experience.

For now (until the lab-based demo lands) it starts a server on the embedded store with the
sample configuration, writes a clouds.yaml for its users, and prints how to drive it with the
unmodified `openstack` CLI. It runs until Ctrl-C.
"""

from __future__ import annotations

import os
import pathlib

import typer

from vxnet.config import load_config

CLOUDS = """clouds:
{entries}
"""
ENTRY = """  vxnet-{user}:
    auth_type: password
    auth:
      auth_url: {url}/identity/v3
      username: {user}
      password: {password}
      project_name: {project}
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
    identity_api_version: 3
"""


def clouds_yaml(url: str, config_path: str) -> str:
    """A clouds.yaml with one cloud per configured human user."""
    cfg = load_config(config_path)
    entries = [
        ENTRY.format(url=url, user=u.name, password=u.password, project=u.project)
        for u in cfg.users
        if "service" not in u.roles
    ]
    return CLOUDS.format(entries="".join(entries).rstrip("\n"))


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        config: str = typer.Option("etc/vxnet.toml", help="server configuration"),
        data_dir: str = typer.Option("var/demo", help="where the demo keeps its store and files"),
        listen: str = typer.Option("127.0.0.1:9696", help="HOST:PORT"),
    ) -> None:
        """Start a demo server and print how to use it (Ctrl-C stops it)."""
        from vxnet.cli.main import server

        data = pathlib.Path(data_dir).resolve()
        data.mkdir(parents=True, exist_ok=True)
        url = f"http://{listen}"
        clouds = data / "clouds.yaml"
        clouds.write_text(clouds_yaml(url, config))
        typer.echo(f"vxnet server on {url}  (store: {data / 'vxnet.db'})")
        typer.echo(f"clouds.yaml written to {clouds}; try:")
        typer.echo(f"  export OS_CLIENT_CONFIG_FILE={clouds}")
        typer.echo("  .venv/bin/openstack --os-cloud vxnet-alice network create net1")
        typer.echo("  .venv/bin/openstack --os-cloud vxnet-alice subnet create --network net1 --subnet-range 192.0.2.0/24 sub1")
        typer.echo("  .venv/bin/openstack --os-cloud vxnet-admin network agent list")
        typer.echo("Ctrl-C stops the server.")
        os.environ.setdefault("VXNET_DEMO", "1")
        server(listen=listen, store=f"sqlite:///{data / 'vxnet.db'}", config=config, data_dir=str(data),
               log_level="warning", workers=1)
