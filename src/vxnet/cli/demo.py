"""`vxnet demo`: the one-command experience (see vxnet/demo/run.py)."""

from __future__ import annotations

import os

import typer


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
