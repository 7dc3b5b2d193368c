"""`vxnet trace`: which hops a packet takes and which rule or route decides its fate."""

from __future__ import annotations

import json

import typer


def _lab_defaults() -> dict[str, str]:
    try:
        from vxnet.lab import lab

        st = lab.load_state()
        return {"url": st["url"], "user": st["admin"]["name"], "password": st["admin"]["password"],
                "project": st["admin"]["project"]}
    except Exception:  # noqa: BLE001 - no lab running: options or environment must say
        return {}


def _token(url: str, user: str, password: str, project: str) -> str:
    import httpx

    from vxnet.httptls import verify_for

    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
    r = httpx.post(url.rstrip("/") + "/identity/v3/auth/tokens", json=body, timeout=10, verify=verify_for(url))
    if r.status_code != 201:
        raise typer.BadParameter(f"cannot log in as {user}: {r.status_code} {r.text[:200]}")
    return r.headers["X-Subject-Token"]


def resolve_source(source: str) -> str:
    """A lab VM name -> its port id; anything else is returned as given."""
    try:
        from vxnet.lab import lab

        vm = (lab.load_state().get("vms") or {}).get(source)
        if vm:
            return str(vm["port"])
    except Exception:  # noqa: BLE001, S110 - no lab: the source must be a port id or an address
        pass
    return source


def register(app: typer.Typer) -> None:
    @app.command()
    def trace(
        source: str = typer.Option(..., "--from", help="port id, lab VM name, or an outside IPv4 or IPv6 address"),
        to: str = typer.Option(..., "--to", help="destination address (IPv4 or IPv6)"),
        proto: str = typer.Option("icmp", help="tcp, udp, icmp or a protocol number"),
        dport: int = typer.Option(None, help="destination port (tcp/udp)"),
        sport: int = typer.Option(None, help="source port (tcp/udp; default 40000)"),
        src_ip: str = typer.Option(None, "--src-ip", help="source address a port sends from (default: its own; "
                                                         "another one is what port security checks)"),
        live: bool = typer.Option(False, "--live", help="check each hop against the real kernel of its host"),
        as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
        server: str = typer.Option(None, envvar="VXNET_URL", help="API URL (default: the running lab's)"),
        user: str = typer.Option(None, envvar="VXNET_USER", help="an admin user"),
        password: str = typer.Option(None, envvar="VXNET_PASSWORD", help="its password"),
        project: str = typer.Option(None, envvar="VXNET_PROJECT", help="its project"),
    ) -> None:
        """Walk a packet through the logical topology: port security, security groups, networks,
        routers, NAT, destination port; name the deciding rule or route; `--live` reports drift."""
        from vxnet.trace import render, run

        lab = _lab_defaults()
        url = server or lab.get("url")
        if not url:
            raise typer.BadParameter("no --server given and no lab running")
        tok = _token(url, user or lab.get("user", "admin"), password or lab.get("password", ""),
                     project or lab.get("project", "admin"))
        try:
            t = run(url, tok, resolve_source(source), to, proto, dport, live, src_ip, sport)
        except ValueError as e:
            typer.echo(f"vxnet trace: {e}", err=True)
            raise typer.Exit(2) from None
        if as_json:
            typer.echo(json.dumps({"verdict": t.verdict, "summary": t.summary, "deciding": t.deciding,
                                   "hops": [{"host": h.host, "what": h.what, "decision": h.decision,
                                             "live": h.live} for h in t.hops]}, indent=1))
        else:
            for line in render(t):
                typer.echo(line)
        # Scriptable: 0 = the packet arrives (delivered, or leaves to the outside), 1 = it does
        # not (dropped, unreachable), 3 = the live kernel disagrees with the desired state.
        raise typer.Exit(3 if t.drift else 0 if t.verdict in ("delivered", "leaves") else 1)



