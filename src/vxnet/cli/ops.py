"""`vxnet status` and `vxnet doctor`: the operator's view of a running cluster (docs/operations.md).

Both talk to a server as an admin (`--server`/`VXNET_URL`, `--user`..., or the running lab's).
- `vxnet status [--json]`: `GET /v2.0/vxnet/status` rendered. Exit 0 when every registered
  host is `ok` (or has not reported yet) and the store answers; 1 otherwise.
- `vxnet doctor [--repair] [--host H ...] [--json]`: a doctor request through the servers to
  every alive agent (or the named hosts), then their answers. Exit 0: no drift (or, with
  `--repair`, none left after the repair); 1: drift; 2: a host did not answer (agent dead,
  stopped or too old: run `vxnet doctor --local` on it).
- `vxnet doctor --local [--repair] [--host H] [--netns NS]`: on the host itself. The running
  agent is asked through its control socket (agent/control.py), which works while every
  server is down; with no agent there (stopped, crashed), the host's view is fetched from a
  server, its desired state computed here and compared with the kernel of this namespace (or
  `--netns`); `--repair` then fails for that host (start the agent: it repairs on its first
  pass). On a lab, without `--host`, every lab host (its namespace and its agent's socket).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import typer

from vxnet.agent.control import ask_agent
from vxnet.cli.agent import DEFAULT_CONTROL_SOCKET
from vxnet.cli.trace import _lab_defaults, _token


def _client(server: str | None, user: str | None, password: str | None, project: str | None) -> Any:
    import httpx

    from vxnet.httptls import verify_for

    lab = _lab_defaults()
    url = server or lab.get("url")
    if not url:
        raise typer.BadParameter("no --server given and no lab running")
    tok = _token(url, user or lab.get("user", "admin"), password or lab.get("password", ""),
                 project or lab.get("project", "admin"))
    return httpx.Client(base_url=url.rstrip("/") + "/v2.0", headers={"X-Auth-Token": tok}, timeout=30,
                        verify=verify_for(url))


def _fail(what: str, r: Any) -> None:
    typer.echo(f"{what}: HTTP {r.status_code}: {r.text[:300]}", err=True)
    raise typer.Exit(2)


def render_status(st: dict[str, Any]) -> list[str]:
    """The text of `vxnet status`."""
    srv, store = st["server"], st["store"]
    lines = [(f"server {srv.get('id')}: vxnet {srv.get('version')} (Python {srv.get('python')}), "
              f"view revision {srv.get('view_revision')}, {srv.get('streams')} agent stream(s)")]
    for s in st.get("servers") or []:
        lines.append(f"  server {s.get('id')} {s.get('url')} on {s.get('hostname')} pid {s.get('pid')} "
                     f"since {s.get('started_at')} (vxnet {s.get('version')})")
    if store.get("ok"):
        lines.append(f"store {store.get('backend')}: ok, revision {store.get('revision')}, "
                     f"read {store.get('read_ms')} ms")
    else:
        lines.append(f"store {store.get('backend')}: UNAVAILABLE: {store.get('error')}")
    lines.append("")
    header = (f"{'HOST':<16} {'STATE':<12} {'LAST HEARTBEAT':<20} {'APPLIED/WANTED':<15} {'PORTS ACT/BOUND':<16} "
              f"{'DRIFT FIXED':<11} FEATURES")
    lines.append(header)
    for h in st["hosts"]:
        rev = h["revision"]
        ports = h["ports"]
        applied = "-" if rev.get("applied") is None else str(rev["applied"])
        revs = f"{applied}/{rev.get('wanted') or '-'}"
        counts = f"{ports['by_status'].get('ACTIVE', 0)}/{ports['bound']}"
        fixed = str((h.get("drift") or {}).get("repaired", "-"))
        lines.append(f"{h['host']:<16} {h['state']:<12} {h.get('last_heartbeat') or '-':<20} {revs:<15} "
                     f"{counts:<16} {fixed:<11} {','.join(h.get('features') or []) or '-'}")
        for f in h.get("failing") or []:
            lines.append(f"    failing: {f}")
        for p in ports["not_active"]:
            lines.append(f"    port {p['id']} {p['status']}: {p['why']}")
    return lines


def _status_ok(st: dict[str, Any]) -> bool:
    return bool(st["store"].get("ok")) and all(h["state"] in ("ok", "no report") for h in st["hosts"])


def render_doctor(results: dict[str, dict[str, Any]], missing: list[str], repair: bool) -> list[str]:
    lines = []
    for host in sorted(results):
        res = results[host]
        if res.get("error"):
            lines.append(f"{host}: ERROR {res['error']}")
            continue
        drift = res.get("drift") or []
        if not drift:
            lines.append(f"{host}: no drift")
            continue
        lines.append(f"{host}: {res.get('drift_count', len(drift))} drift(s)")
        for d in drift:
            lines.append(f"  {d['kind']:<9} {d['object']}")
            lines.append(f"            expected: {d['expected'] if d['expected'] is not None else '(absent)'}")
            lines.append(f"            found:    {d['found'] if d['found'] is not None else '(missing)'}")
        if repair:
            left = res.get("after_repair")
            lines.append(f"  repaired: {'yes' if left == [] else f'{len(left)} left' if left else 'not attempted'}")
    for host in missing:
        lines.append(f"{host}: NO ANSWER (agent not alive or too old; run `vxnet doctor --local` there)")
    return lines


def doctor_exit(results: dict[str, dict[str, Any]], missing: list[str], repair: bool) -> int:
    """0 clean (or all repaired), 1 drift, 2 a host did not answer / failed."""
    if missing or any(r.get("error") for r in results.values()):
        return 2
    for r in results.values():
        left = r.get("after_repair") if repair and r.get("drift") else r.get("drift")
        if left:
            return 1
    return 0


def local_targets(host: str | None, netns: str | None, sock: str) -> list[tuple[str, str | None, str]]:
    """(host, namespace, agent control socket) for `--local`: the given host, else every lab
    host, else this machine."""
    if host is not None:
        lab_target = _lab_target(host)
        if lab_target is not None and netns is None:
            return [lab_target]
        return [(host, netns, sock)]
    try:
        from vxnet.lab import lab, topology

        st = lab.load_state()
        return [(topology.host_name(i), topology.host_ns(i), lab.control_socket(topology.host_name(i)))
                for i in range(1, int(st["hosts"]) + 1)]
    except Exception:  # noqa: BLE001 - no lab: this machine's own host name
        return [(socket.gethostname(), netns, sock)]


def _lab_target(host: str) -> tuple[str, str | None, str] | None:
    try:
        from vxnet.lab import lab, topology

        st = lab.load_state()
        i = int(host[1:]) if host.startswith("h") and host[1:].isdigit() else 0
        return (host, topology.host_ns(i), lab.control_socket(host)) if 1 <= i <= int(st["hosts"]) else None
    except Exception:  # noqa: BLE001 - not a lab
        return None


def local_drift(api: Any, host: str, netns: str | None) -> dict[str, Any]:
    """Fetch `host`'s view, compute its desired state here, compare with the kernel."""
    from vxnet.agent import doctor
    from vxnet.compute.host import HostSpec
    from vxnet.compute.view import ViewState, apply_message

    with api.stream("GET", f"/vxnet/hosts/{host}/view") as r:
        if r.status_code != 200:
            return {"host": host, "error": f"view: HTTP {r.status_code} {r.read()[:200]!r}", "drift": []}
        first = next(line for line in r.iter_lines() if line)
    msg = json.loads(first)
    me = (msg.get("view") or {}).get("host") or {}
    if not me.get("underlay_ip"):
        return {"host": host, "error": "no agent ever registered this host (no underlay address)", "drift": []}
    recs = api.get("/agents", params={"host": host}).json().get("agents") or [{}]
    ext = (recs[0].get("configurations") or {}).get("external_interface")
    spec = HostSpec(host, me["underlay_ip"], bool(me.get("gateway")), ext)
    view = apply_message(ViewState(), msg)
    found = doctor.host_drift(view.view, spec, netns)
    return {"host": host, "revision": msg.get("revision"), "checked": list(doctor.CHECKED),
            "drift": [d.as_dict() for d in found]}


def cluster_doctor(api: Any, repair: bool, hosts: list[str], timeout: float) -> tuple[dict[str, Any], list[str]]:
    """A doctor request through the servers; (answers by host, hosts that did not answer)."""
    r = api.post("/vxnet/doctor", json={"repair": repair, "hosts": hosts or None})
    if r.status_code != 202:
        _fail("vxnet doctor", r)
    req = r.json()["doctor"]
    expected = set(req["expected"])
    not_asked = set(hosts) - expected      # named but not alive
    deadline = time.monotonic() + timeout
    while True:
        got = api.get(f"/vxnet/doctor/{req['id']}")
        if got.status_code != 200:
            _fail("vxnet doctor", got)
        results: dict[str, Any] = got.json()["doctor"]["results"]
        if expected <= set(results) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not hosts:   # registered hosts that are not alive were not asked
        st = api.get("/vxnet/status")
        if st.status_code == 200:
            not_asked |= {h["host"] for h in st.json()["status"]["hosts"] if h["registered"] and not h["alive"]}
    return results, sorted((expected | not_asked) - set(results))


def register(app: typer.Typer) -> None:
    creds = {
        "server": typer.Option(None, envvar="VXNET_URL", help="API URL (default: the running lab's)"),
        "user": typer.Option(None, envvar="VXNET_USER", help="an admin user"),
        "password": typer.Option(None, envvar="VXNET_PASSWORD", help="its password"),
        "project": typer.Option(None, envvar="VXNET_PROJECT", help="its project"),
    }

    @app.command()
    def status(
        as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
        server: str = creds["server"], user: str = creds["user"], password: str = creds["password"],
        project: str = creds["project"],
    ) -> None:
        """Every host (agent alive, last heartbeat, revision applied vs wanted, ports, drift
        repairs, features), the servers and the store. Exit 1 when something is not ok."""
        with _client(server, user, password, project) as api:
            r = api.get("/vxnet/status")
            if r.status_code != 200:
                _fail("vxnet status", r)
            st = r.json()["status"]
        if as_json:
            typer.echo(json.dumps(st, indent=1))
        else:
            for line in render_status(st):
                typer.echo(line)
        raise typer.Exit(0 if _status_ok(st) else 1)

    @app.command()
    def doctor(
        repair: bool = typer.Option(False, "--repair", help="have the agents repair what differs (a pass that "
                                                             "reads the kernel again), then check again"),
        host: list[str] = typer.Option(None, "--host", help="only these hosts (repeatable)"),  # noqa: B008
        local: bool = typer.Option(False, "--local", help="on this host: ask its running agent (works with every "
                                                          "server down), else compare its kernel (or --netns's) "
                                                          "with its desired state computed here"),
        netns: str = typer.Option(None, "--netns", help="--local: the host's network namespace"),
        control_socket: str = typer.Option(DEFAULT_CONTROL_SOCKET, "--control-socket",
                                           help="--local: the running agent's socket (asked first)"),
        timeout: float = typer.Option(30.0, help="seconds to wait for the agents' answers"),
        as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
        server: str = creds["server"], user: str = creds["user"], password: str = creds["password"],
        project: str = creds["project"],
    ) -> None:
        """Compare desired and kernel state on every host now; list the drift per host
        (object, expected, found). Exit 0 clean, 1 drift, 2 a host did not answer."""
        results: dict[str, dict[str, Any]] = {}
        missing: list[str] = []
        if local:
            if host and len(host) > 1 and netns:
                raise typer.BadParameter("--netns goes with a single --host")
            targets = ([t for h in host for t in local_targets(h, netns, control_socket)] if host
                       else local_targets(None, netns, control_socket))
            api = None
            try:
                for h, ns, sock in targets:
                    answer = ask_agent(sock, repair)    # the running agent: works with every server down
                    if answer is not None:
                        results[h] = answer
                    elif repair:
                        results[h] = {"host": h, "drift": [], "error": "no agent answers on " + sock + ": start "
                                      "it (its first pass repairs the host)"}
                    else:
                        api = api or _client(server, user, password, project)
                        results[h] = local_drift(api, h, ns)
            finally:
                if api is not None:
                    api.close()
        else:
            with _client(server, user, password, project) as api:
                results, missing = cluster_doctor(api, repair, list(host or ()), timeout)
        code = doctor_exit(results, missing, repair)
        if as_json:
            typer.echo(json.dumps({"results": results, "no_answer": missing, "exit": code}, indent=1))
        else:
            for line in render_doctor(results, missing, repair):
                typer.echo(line)
        raise typer.Exit(code)
