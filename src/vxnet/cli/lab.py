"""`vxnet lab`: hosts and VMs as namespaces on this machine, with a server and real agents."""

from __future__ import annotations

import signal

import typer


def register(app: typer.Typer) -> None:
    """Add the `lab` command group to the main CLI."""
    lab = typer.Typer(help="Test and demo bench: hosts and VMs as network namespaces (needs root).",
                      no_args_is_help=True)
    vm = typer.Typer(help="VMs (namespaces or QEMU guests, plugged like Nova's taps).", no_args_is_help=True)
    agent = typer.Typer(help="Stop/start a host's agent (failure tests).", no_args_is_help=True)
    lab.add_typer(vm, name="vm")
    lab.add_typer(agent, name="agent")
    hostg = typer.Typer(help="Kill and bring back a whole host (failure tests).", no_args_is_help=True)
    lab.add_typer(hostg, name="host")
    app.add_typer(lab, name="lab")

    def _run(fn, *a, **kw):  # type: ignore[no-untyped-def]
        from vxnet.lab.lab import LabError

        try:
            return fn(*a, **kw)
        except LabError as e:
            typer.echo(f"vxnet lab: {e}", err=True)
            raise typer.Exit(1) from None

    @lab.command("up")
    def lab_up(
        hosts: int = typer.Option(3, help="number of hosts (h1..hN)"),
        config: str = typer.Option(..., help="server TOML configuration"),
        server: str = typer.Option(None, help="reuse running server(s) at this URL (several: comma-separated, agents fail over) instead of starting one"),
        gateways: int = typer.Option(0, help="extra gateway hosts (h<N+1>..), agents with --gateway"),
        external: bool = typer.Option(False, "--external", help="external segment: the gateway hosts' external "
                                      "interfaces and an outside client namespace (vxl-x, 203.0.113.100 and .1)"),
        external2: bool = typer.Option(False, "--external2", help="with --external: a second external segment, "
                                       "physical network external2 (vxl-x2, 100.127.254.100 and .1)"),
        bgp: bool = typer.Option(False, "--bgp", help="with --external: the outside runs an upstream FRR BGP "
                                 "router (AS 64500, 100.127.255.253) the gateway agents peer with (AS 64512)"),
    ) -> None:
        """Build the underlay and N hosts, start the server and one agent per host; print the API URL."""
        from vxnet.lab import lab as L

        st = _run(L.up, hosts, config, server, None, gateways, external, external2, bgp)
        typer.echo(st["url"])

    @lab.command("down")
    def lab_down() -> None:
        """Remove everything the lab created (also after a crash)."""
        from vxnet.lab import lab as L

        L.down()

    @lab.command("status")
    def lab_status() -> None:
        """Show the running lab's state."""
        import json

        from vxnet.lab import lab as L

        typer.echo(json.dumps({k: v for k, v in _run(L.load_state).items() if k not in ("admin", "agent_user")},
                              indent=1))

    @vm.command("add")
    def vm_add(name: str, host: str = typer.Option(..., help="h1..hN"),
               port: str = typer.Option(..., help="port id"),
               no_bind: bool = typer.Option(False, help="create the VM but do not bind the port"),
               hostname: str = typer.Option(None, help="hostname served by the metadata service (default: NAME)"),
               user_data: str = typer.Option(None, "--user-data", help="FILE served as the VM's user data"),
               ssh_key: str = typer.Option(None, "--ssh-key", help="public SSH key FILE served as the VM's key"),
               qemu: bool = typer.Option(False, "--qemu", help="a real QEMU guest (busybox, DHCP client) "
                                         "instead of a namespace"),
               cloud_init: bool = typer.Option(False, "--cloud-init", help="a QEMU guest of the Debian "
                                               "cloud-init image (built on first use; slow)"),
               ) -> None:
        """Create VM NAME on HOST with the port's MAC/IP/MTU, and bind the port to HOST (device_id:
        the VM's instance id at the lab's Nova metadata endpoint)."""
        from vxnet.lab import lab as L

        try:
            data = open(user_data, "rb").read() if user_data else None     # noqa: SIM115 - read at once
            key = open(ssh_key).read() if ssh_key else None                  # noqa: SIM115
        except OSError as e:
            typer.echo(f"vxnet lab: {e}", err=True)
            raise typer.Exit(1) from None
        info = _run(L.vm_add, name, host, port, not no_bind, hostname, data, key, qemu, cloud_init)
        typer.echo(f"{name} on {host}: {info['ip']}" + (f" (QEMU, {info['qemu']['accel']})" if qemu or cloud_init else ""))

    @vm.command("console")
    def vm_console(name: str) -> None:
        """Print the console log of QEMU guest NAME."""
        from vxnet.lab import lab as L

        typer.echo(_run(L.vm_console, name), nl=False)

    @vm.command("del")
    def vm_del(name: str) -> None:
        """Delete VM NAME (its tap disappears from the host)."""
        from vxnet.lab import lab as L

        _run(L.vm_del, name)

    @vm.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def vm_exec(ctx: typer.Context, name: str) -> None:
        """Run a command in VM NAME: `vxnet lab vm exec NAME -- CMD ...`."""
        from vxnet.lab import lab as L

        raise typer.Exit(_run(L.vm_exec, name, list(ctx.args)))

    @vm.command("migrate")
    def vm_migrate(name: str, host: str = typer.Option(..., help="destination host")) -> None:
        """Move VM NAME to HOST: recreate its tap there, then rebind its port (like a live migration)."""
        from vxnet.lab import lab as L

        _run(L.vm_migrate, name, host)

    @agent.command("stop")
    def agent_stop(host: str, kill: bool = typer.Option(False, "--kill", help="SIGKILL (crash) instead of SIGTERM")) -> None:
        """Stop HOST's agent."""
        from vxnet.lab import lab as L

        _run(L.stop_agent, _run(L.load_state), host, signal.SIGKILL if kill else signal.SIGTERM)

    @agent.command("start")
    def agent_start(host: str) -> None:
        """Start HOST's agent (again)."""
        from vxnet.lab import lab as L

        typer.echo(_run(L.start_agent, _run(L.load_state), host))

    @hostg.command("fail")
    def host_fail(host: str, partition: bool = typer.Option(
            False, "--partition", help="only cut its underlay link (its agent and daemons go on)")) -> None:
        """HOST dies: cables down, every process in its namespaces SIGKILLed (no clean shutdown)."""
        from vxnet.lab import hostfail

        killed = _run(hostfail.fail, _run(_lab_state), host, partition)
        typer.echo(f"{host}: {'partitioned' if partition else f'down, killed {len(killed)} processes'}")

    @hostg.command("recover")
    def host_recover(host: str, partition: bool = typer.Option(
            False, "--partition", help="end a partition (cable up only)")) -> None:
        """HOST comes back like after a reboot: its agent starts again and registers."""
        from vxnet.lab import hostfail

        pid = _run(hostfail.recover, _run(_lab_state), host, partition)
        typer.echo(f"{host}: up" + (f", agent {pid}" if pid else ""))

    def _lab_state():  # type: ignore[no-untyped-def]
        from vxnet.lab import lab as L

        return L.load_state()
