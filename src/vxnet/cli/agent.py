"""`vxnet agent`: the host agent (runs in the host's network namespace, as root).

Its command line is parsed with argparse (standard library): `vxnet.cli.main` runs `vxnet agent`
without loading typer, pydantic or the other sub-commands' modules (the agent is a long-running
process on every host: what it imports stays resident). The typer app lists the command and
hands its arguments here (`register`). Options, defaults and environment variables are those of
`vxnet agent --help`; a usage error exits with status 2, as every other command.
"""

import argparse
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

DEFAULT_CONTROL_SOCKET = "/run/vxnet/agent.sock"
HELP = "Run the host agent: watch this host's view and converge the kernel to it."


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


def parser() -> argparse.ArgumentParser:
    """The `vxnet agent` command line."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog="vxnet agent", description=HELP)
    a = p.add_argument
    a("--server", required=True, help="server URL(s), comma-separated, tried in order (failover)")
    a("--host", required=True, help="this host's name (binding:host_id of its ports)")
    a("--underlay-ip", required=True, help="this host's VTEP address on the underlay")
    a("--user", default=env("VXNET_AGENT_USER", "vxnet-agent"), help="service user [env VXNET_AGENT_USER]")
    a("--password", default=env("VXNET_AGENT_PASSWORD"),
      help="service user's password, required: no default (a built-in one would be known to everybody); prefer "
           "the environment variable VXNET_AGENT_PASSWORD: a command line is visible to every user of the host")
    a("--project", default=env("VXNET_AGENT_PROJECT", "service"),
      help="service user's project [env VXNET_AGENT_PROJECT]")
    a("--gateway", action=argparse.BooleanOptionalAction, default=False,
      help="this host is a gateway host (SNAT, floating IPs)")
    a("--external-interface", action="append", metavar="[PHYSNET:]IF",
      help="gateway hosts: PHYSNET:IF, the interface of a physical network's external networks (flat: the "
           "interface itself, VLAN: a VLAN device on it); repeatable. A bare IF is the interface of physical "
           "network 'external' (or else the first flat external network)")
    a("--bgp-as", type=int, help="gateway hosts: this host's BGP AS number; with --bgp-peer, announce floating "
                                 "IPs and gateway addresses (FRR bgpd)")
    a("--bgp-peer", action="append", metavar="ADDRESS:AS",
      help="gateway hosts: an upstream BGP router, ADDRESS:AS (repeatable)")
    a("--bgp-router-id", help="BGP router id (default: --underlay-ip)")
    a("--bgp-dir", help="bgpd's state directory (config, pid file, vty socket; default /run/vxnet/bgp-HOST)")
    a("--dhcp-lease-time", type=int, default=86400, help="DHCP lease time in seconds (VMs renew at half)")
    a("--bfd", action=argparse.BooleanOptionalAction, default=False,
      help="BFD (FRR bfdd, 100 ms x 3) to gateway hosts: gateway failover in under a second, without waiting "
           "for the store's lease")
    a("--bfd-dir", help="bfdd's sockets and pid file (default /run/vxnet/bfd-HOST)")
    a("--metrics-listen", metavar="HOST:PORT", help="HOST:PORT for Prometheus /metrics")
    a("--resync", type=float, default=30.0, help="seconds between drift-repair resyncs (default 30)")
    a("--log-level", help="log level (default: the config file's, else info)")
    a("--log-format", help="text or json (default: the config file's, else text)")
    a("--config", help="TOML file with an [agent] table: log_level, log_format (SIGHUP re-reads log_level), "
                       "and a [metadata] table: nova_metadata_url, shared_secret or shared_secret_file, timeout")
    a("--control-socket", default=DEFAULT_CONTROL_SOCKET,
      help=f"unix socket where `vxnet doctor --local` reaches this agent (\"\" = none; default "
           f"{DEFAULT_CONTROL_SOCKET})")
    return p


def skip_httpx_cli() -> None:
    """Keep httpx's own command line out of this process: the httpx package imports it
    (`httpx._main`: click, rich, pygments; ~4 MB resident) whenever those are installed, as
    they are here for typer. Marking the module absent makes httpx define its stub `main`
    instead; the agent never runs httpx's command line. No effect once httpx is imported."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[assignment]


def _fail(message: str) -> int:
    print(f"vxnet agent: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str]) -> int:
    """Run `vxnet agent` with these arguments (after the word `agent`); the exit status."""
    o = parser().parse_args(list(argv))     # a usage error exits with status 2
    server, host, underlay_ip, user, password, project = (
        o.server, o.host, o.underlay_ip, o.user, o.password, o.project)
    gateway, external_interface, bgp_as, bgp_peer, bgp_router_id, bgp_dir = (
        o.gateway, o.external_interface, o.bgp_as, o.bgp_peer, o.bgp_router_id, o.bgp_dir)
    dhcp_lease_time, bfd, bfd_dir, metrics_listen, resync, log_level, log_format, config, control_socket = (
        o.dhcp_lease_time, o.bfd, o.bfd_dir, o.metrics_listen, o.resync, o.log_level, o.log_format, o.config, o.control_socket)
    skip_httpx_cli()
    from vxnet import memprofile
    from vxnet.agent.client import make_control_plane
    from vxnet.agent.core import Agent, AgentConfig
    from vxnet.heap import limit_malloc_arenas

    limit_malloc_arenas()
    memprofile.install()  # only with VXNET_MEMPROFILE set: a debugging aid
    from vxnet.compute.gateway import parse_external_interfaces

    ext_spec = ",".join(i.strip() for i in external_interface or ()) or None
    try:
        parse_external_interfaces(ext_spec)
    except ValueError as e:
        return _fail(f"--external-interface: {e}")
    bgp = None
    if bgp_as is not None or bgp_peer:
        from vxnet.dataplane.bgp import BgpConfig, parse_peer

        try:
            if not gateway or bgp_as is None or not bgp_peer:
                raise ValueError("BGP needs --gateway, --bgp-as and at least one --bgp-peer")
            bgp = BgpConfig(bgp_as, bgp_router_id or underlay_ip, tuple(parse_peer(p) for p in bgp_peer),
                            bgp_dir or f"/run/vxnet/bgp-{host}")
        except ValueError as e:
            return _fail(str(e))

    if not password:
        return _fail("no password for the service user: set VXNET_AGENT_PASSWORD (or --password)")
    from vxnet import logsetup
    from vxnet.config import ConfigError, load_metadata

    try:
        settings = agent_settings(config)
        metadata = load_metadata(config)
        logsetup.configure(log_level or settings.get("log_level") or "info",
                           log_format or settings.get("log_format") or "text")
    except (OSError, ValueError, ConfigError) as e:
        return _fail(str(e))
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
    return 0


def register(app: "typer.Typer") -> None:
    """List `agent` in the typer app, which hands its arguments (and `--help`) to `main`."""
    import typer  # here, not at the top: `vxnet agent` runs without it (a real annotation below:
                    # typer reads the command's signature, so no `from __future__ import annotations`)

    @app.command(help=HELP, add_help_option=False,
                 context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def agent(ctx: typer.Context) -> None:
        raise typer.Exit(main(ctx.args))
