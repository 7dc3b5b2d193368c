"""`vxnet demo`: the one-command experience (see vxnet/demo/run.py), and the clouds.yaml it
writes so the unmodified `openstack` CLI drives the demo cloud."""

from __future__ import annotations

import os

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
        config: str = typer.Option("etc/vxnet.toml", help="sample configuration (its users are the demo's)"),
        data_dir: str = typer.Option("var/demo", help="where the demo keeps its store, logs and files"),
        listen: str = typer.Option("127.0.0.1:9696", help="HOST:PORT of the demo's API server and web UI"),
        check: bool = typer.Option(False, "--check", help="prove the matrix, remove everything, exit non-zero "
                                                          "if any cell is wrong (no waiting)"),
    ) -> None:
        """Build a two-tenant cloud on a lab (3 hosts + a gateway, real agents), prove its
        connectivity matrix with real packets, keep it running until Ctrl-C (needs root)."""
        from vxnet.demo.run import run

        if os.geteuid() != 0:
            typer.echo("vxnet demo builds network namespaces: run it as root", err=True)
            raise typer.Exit(2)
        raise typer.Exit(run(config, data_dir, listen, check, typer.echo))
