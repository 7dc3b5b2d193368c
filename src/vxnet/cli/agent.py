"""`vxnet agent`: the host agent (runs in the host's network namespace, as root)."""

from __future__ import annotations

import logging
import signal
import tomllib
from typing import Any

import typer

DEFAULT_CONTROL_SOCKET = "/run/vxnet/agent.sock"


def agent_settings(path: str | None) -> dict[str, Any]:
    """The `[agent]` table of the agent's TOML file (`log_level`, `log_format`); {} without one."""
    if path is None:
        return {}
    with open(path, "rb") as f:
        try:
            table = tomllib.load(f).get("agent", {})
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: {e}") from None
    unknown = set(table) - {"log_level", "log_format"}
    if unknown:
        raise ValueError(f"{path}: unknown [agent] keys: {', '.join(sorted(unknown))}")
    return dict(table)


def register(app: typer.Typer) -> None:
    """Add the `agent` command to the main CLI."""

    @app.command()
    def agent(
        server: str = typer.Option(..., help="server URL(s), comma-separated, tried in order (failover)"),
        host: str = typer.Option(..., help="this host's name (binding:host_id of its ports)"),
        underlay_ip: str = typer.Option(..., help="this host's VTEP address on the underlay"),
        user: str = typer.Option("vxnet-agent", envvar="VXNET_AGENT_USER", help="service user"),
        password: str = typer.Option("vxnet-agent-pw", envvar="VXNET_AGENT_PASSWORD",
                                     help="service user's password (prefer the environment variable: "
                                          "a command line is visible to every user of the host)"),
        project: str = typer.Option("service", envvar="VXNET_AGENT_PROJECT", help="service user's project"),
        gateway: bool = typer.Option(False, help="this host is a gateway host (SNAT, floating IPs)"),
        external_interface: list[str] = typer.Option(  # noqa: B008
            None, help="gateway hosts: PHYSNET:IF, the interface of a physical network's external networks "
                       "(flat: the interface itself, VLAN: a VLAN device on it); repeatable. A bare IF is the "
                       "interface of physical network 'external' (or else the first flat external network)"),
        bgp_as: int = typer.Option(None, help="gateway hosts: this host's BGP AS number; with --bgp-peer, "
                                              "announce floating IPs and gateway addresses (FRR bgpd)"),
        bgp_peer: list[str] = typer.Option(None, help="gateway hosts: an upstream BGP router, "  # noqa: B008
                                                      "ADDRESS:AS (repeatable)"),
        bgp_router_id: str = typer.Option(None, help="BGP router id (default: --underlay-ip)"),
        bgp_dir: str = typer.Option(None, help="bgpd's state directory (config, pid file, vty socket; "
                                               "default /run/vxnet/bgp-HOST)"),
        dhcp_lease_time: int = typer.Option(86400, help="DHCP lease time in seconds (VMs renew at half)"),
        bfd: bool = typer.Option(False, help="BFD (FRR bfdd, 100 ms x 3) to gateway hosts: gateway failover "
                                 "in under a second, without waiting for the store's lease"),
        bfd_dir: str = typer.Option(None, help="bfdd's sockets and pid file (default /run/vxnet/bfd-HOST)"),
        metrics_listen: str = typer.Option(None, help="HOST:PORT for Prometheus /metrics"),
        resync: float = typer.Option(30.0, help="seconds between drift-repair resyncs"),
        log_level: str = typer.Option(None, help="log level (default: the config file's, else info)"),
        log_format: str = typer.Option(None, help="text or json (default: the config file's, else text)"),
        config: str = typer.Option(None, help="TOML file with an \\[agent] table: log_level, log_format "
                                              "(SIGHUP re-reads log_level), and a \\[metadata] table: "
                                              "nova_metadata_url, shared_secret or shared_secret_file, timeout"),
        control_socket: str = typer.Option(DEFAULT_CONTROL_SOCKET, help="unix socket where `vxnet doctor --local` "
                                                                        "reaches this agent (\"\" = none)"),
    ) -> None:
        """Run the host agent: watch this host's view and converge the kernel to it."""
        from vxnet.agent.client import make_control_plane
        from vxnet.agent.core import Agent, AgentConfig
        from vxnet.heap import limit_malloc_arenas

        limit_malloc_arenas()
        from vxnet.compute.gateway import parse_external_interfaces

        ext_spec = ",".join(i.strip() for i in external_interface or ()) or None
        try:
            parse_external_interfaces(ext_spec)
        except ValueError as e:
            typer.echo(f"vxnet agent: --external-interface: {e}", err=True)
            raise typer.Exit(2) from None
        bgp = None
        if bgp_as is not None or bgp_peer:
            from vxnet.dataplane.bgp import BgpConfig, parse_peer

            try:
                if not gateway or bgp_as is None or not bgp_peer:
                    raise ValueError("BGP needs --gateway, --bgp-as and at least one --bgp-peer")
                bgp = BgpConfig(bgp_as, bgp_router_id or underlay_ip, tuple(parse_peer(p) for p in bgp_peer),
                                bgp_dir or f"/run/vxnet/bgp-{host}")
            except ValueError as e:
                typer.echo(f"vxnet agent: {e}", err=True)
                raise typer.Exit(2) from None

        from vxnet import logsetup
        from vxnet.config import ConfigError, load_metadata

        try:
            settings = agent_settings(config)
            metadata = load_metadata(config)
            logsetup.configure(log_level or settings.get("log_level") or "info",
                               log_format or settings.get("log_format") or "text")
        except (OSError, ValueError, ConfigError) as e:
            typer.echo(f"vxnet agent: {e}", err=True)
            raise typer.Exit(2) from None
        if config:
            logsetup.reload_on_sighup(lambda: agent_settings(config).get("log_level"))
        logging.getLogger("httpx").setLevel(logging.WARNING)
        if metrics_listen:
            from prometheus_client import start_http_server

            mhost, _, mport = metrics_listen.rpartition(":")
            start_http_server(int(mport), addr=mhost.strip("[]") or "127.0.0.1")
        control = make_control_plane([s.strip() for s in server.split(",") if s.strip()], host, underlay_ip,
                                     user, password, project, gateway, ext_spec)
        a = Agent(AgentConfig(host=host, underlay_ip=underlay_ip, resync_interval=resync, gateway=gateway,
                              external_interface=ext_spec, dhcp_lease_time=dhcp_lease_time,
                              metadata=metadata, bfd=bfd, bfd_dir=bfd_dir, bgp=bgp),
                  control)
        local = None
        if control_socket:
            from vxnet.agent.control import ControlSocket

            try:
                local = ControlSocket(control_socket, lambda repair: a.doctor(repair))
            except OSError as e:    # not fatal: only `vxnet doctor --local` needs it
                logging.getLogger("vxnet.agent").warning("control socket %s: %s (vxnet doctor --local cannot "
                                                         "reach this agent)", control_socket, e)
        signal.signal(signal.SIGTERM, lambda *_: a.stop())
        try:
            a.run()
        except KeyboardInterrupt:
            a.stop()
        finally:
            if local is not None:
                local.close()
