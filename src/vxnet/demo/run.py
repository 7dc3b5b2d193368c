"""`vxnet demo`: build the demo cloud on a lab, prove the matrix with real packets, keep it up.

Steps (each printed as it happens): a server on the embedded store and a lab of 3 compute hosts
and 1 gateway host with real agents, an external network with a client outside the cloud
(`vxnet lab up --gateways 1 --external`); the two tenants' topologies (scenario.py) through the
public API; the VMs (the lab plays Nova), namespaces and one QEMU guest per tenant (guest.py);
every VM's port ACTIVE; the matrix (matrix.py).
Everything lives under the data directory (the lab's state, the store, logs, clouds.yaml) or
under the lab prefix `vxl` (namespaces, links, processes), and all of it is removed at the end,
also when a step fails or on Ctrl-C.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx

from vxnet.config import load_config
from vxnet.demo import guest, matrix, scenario
from vxnet.demo.matrix import Cell
from vxnet.store.secure_files import private_dir, write_private

DEMO_TOML = """# written by `vxnet demo`: the sample configuration's users, the store in the lab directory
[server]
listen = "{listen}"
underlay_mtu = 1500
token_ttl = 86400
{users}
"""
USER_TOML = """
[[identity.users]]
name = "{name}"
password = "{password}"
project = "{project}"
roles = [{roles}]
"""


def write_config(sample: str, data: pathlib.Path, listen: str) -> pathlib.Path:
    """The demo's server configuration: the sample's users, no store (the lab's own file)."""
    cfg = load_config(sample)
    users = "".join(USER_TOML.format(name=u.name, password=u.password, project=u.project,
                                     roles=", ".join(f'"{r}"' for r in u.roles)) for u in cfg.users)
    path = data / "vxnet.toml"
    write_private(str(path), DEMO_TOML.format(listen=listen, users=users))  # holds passwords: 0600
    return path


def wait_active(admin: httpx.Client, port_ids: list[str], timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while True:
        ports = scenario.call(admin, "GET", "/ports")["ports"]
        status = {p["id"]: p["status"] for p in ports}
        waiting = [p for p in port_ids if status.get(p) != "ACTIVE"]
        if not waiting:
            return
        if time.time() > deadline:
            raise scenario.DemoError(f"ports not ACTIVE after {timeout:.0f} s: {waiting}")
        time.sleep(0.3)


def cells_for(t: scenario.Tenant, outside_ns: str, vm_ns: Callable[[str], str], dhcp_script: str) -> list[Cell]:
    """The matrix rows of one tenant (each also says how to trace the same packet)."""
    u, p, out = t.user, t.ports, scenario.OUTSIDE_CLIENT
    ns = lambda vm: vm_ns(t.vm(vm))
    return [
        matrix.probe_dhcp(Cell(u, f"DHCP       db1 asks for a lease (answered by its own host {t.hosts['db1']})",
                               "open"), ns("db1"), dhcp_script, t.ips["db1"], scenario.DB_GW, 1450),
        matrix.probe_tcp(Cell(u, f"east-west  web1 -> web2 {t.ips['web2']}:22 (same network, "
                                 f"{t.hosts['web1']} -> {t.hosts['web2']})", "open",
                              trace=(p["web1"], t.ips["web2"], "tcp", 22)),
                         ns("web1"), t.ips["web2"], 22, want_who=f"{u}/web2"),
        matrix.probe_ping(Cell(u, f"east-west  web2 -> web1 {t.ips['web1']} ping", "open",
                               trace=(p["web2"], t.ips["web1"], "icmp", None)), ns("web2"), t.ips["web1"]),
        matrix.probe_tcp(Cell(u, f"routed     web1 -> db1 {t.ips['db1']}:22 (web -> db subnet, "
                                 f"{t.hosts['web1']} -> {t.hosts['db1']})", "open",
                              trace=(p["web1"], t.ips["db1"], "tcp", 22)),
                         ns("web1"), t.ips["db1"], 22, want_who=f"{u}/db1"),
        matrix.probe_ping(Cell(u, f"routed     db1 -> web2 {t.ips['web2']} ping", "open",
                               trace=(p["db1"], t.ips["web2"], "icmp", None)), ns("db1"), t.ips["web2"]),
        matrix.probe_tcp(Cell(u, f"SNAT       db1 -> outside {out}:8080 (seen as the router's {t.gateway_ip})",
                              "open", trace=(p["db1"], out, "tcp", 8080)),
                         ns("db1"), out, 8080, want_peer=t.gateway_ip),
        matrix.probe_tcp(Cell(u, f"floating   outside -> {t.fip}:22 (web1, sees the client's address)", "open",
                              trace=(out, t.fip, "tcp", 22)),
                         outside_ns, t.fip, 22, want_who=f"{u}/web1", want_peer=out),
        matrix.probe_tcp(Cell(u, f"blocked    outside -> {t.fip}:80 (no rule of web1's groups allows it)",
                              "blocked", trace=(out, t.fip, "tcp", 80)), outside_ns, t.fip, 80),
        matrix.probe_tcp(Cell(u, f"blocked    outside -> {t.ips['web2']}:22 (a private address: no way in "
                                 "without a floating IP)", "blocked", trace=(out, t.ips["web2"], "tcp", 22)),
                         outside_ns, t.ips["web2"], 22),
        # the dual-stack cell: IPv6 routed east-west and to the outside, never NATed
        matrix.probe_tcp(Cell(u, f"IPv6       ds1 -> ds2 [{t.ips6['ds2']}]:22 (routed web -> db, "
                                 f"{t.hosts['ds1']} -> {t.hosts['ds2']})", "open",
                              trace=(p["ds1"], t.ips6["ds2"], "tcp", 22)),
                         ns("ds1"), t.ips6["ds2"], 22, want_who=f"{u}/ds2", want_peer=t.ips6["ds1"]),
        matrix.probe_tcp(Cell(u, f"IPv6       ds2 -> outside [{scenario.OUTSIDE_CLIENT6}]:8080 (routed via "
                                 f"{t.gateway_ip6}, no NAT: seen as its own address)", "open",
                              trace=(p["ds2"], scenario.OUTSIDE_CLIENT6, "tcp", 8080)),
                         ns("ds2"), scenario.OUTSIDE_CLIENT6, 8080, want_peer=t.ips6["ds2"]),
    ]


def add_traces(cells: list[Cell], url: str, admin_token: str) -> None:
    """`vxnet trace` of each cell's packet (one snapshot of the state for all): its verdict must
    agree with the real packet, and it names the rule or route that decided."""
    from vxnet.trace import fetch, walk

    snap = fetch(url, admin_token)
    for c in cells:
        src, dst, proto, dport = c.trace
        if not src:
            continue
        t = walk(snap, src, dst, proto, dport)
        passes = t.verdict in ("delivered", "leaves")
        agree = passes == (c.got == "open")
        c.traced = ("" if agree else "WRONG: ") + f"trace: {t.verdict} ({t.deciding or t.summary})"


def print_matrix(cells: list[Cell], echo: Callable[[str], None]) -> None:
    width = max(len(c.what) for c in cells)
    echo("")
    echo(f"  {'tenant':6}  {'path':{width}}  {'expect':7}  {'got':7}  evidence")
    for c in cells:
        mark = "ok " if c.ok else "BAD"
        echo(f"{mark} {c.tenant:6}  {c.what:{width}}  {c.expect:7}  {c.got:7}  {c.evidence}")
        if c.traced:
            echo(f"    {'':6}  {'':{width}}  {'':7}  {'':7}  {c.traced}")
    echo("")


def run(sample_config: str, data_dir: str, listen: str, check: bool, echo: Callable[[str], None]) -> int:
    """The whole demo; returns the exit code (non-zero when a cell is wrong)."""
    from vxnet.demo.clouds import clouds_yaml
    from vxnet.lab import lab as L
    from vxnet.lab import topology

    data = pathlib.Path(data_dir).resolve()
    private_dir(str(data))
    os.environ["VXNET_LAB_DIR"] = str(data / "lab")
    config = write_config(sample_config, data, listen)
    services: list[subprocess.Popen[str]] = []
    stop = {"now": False}

    def interrupted(*_: Any) -> None:
        stop["now"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    t0 = time.time()
    try:
        echo("[1/5] lab: 3 compute hosts + 1 gateway host, real agents, external network and client ...")
        st = L.up(3, str(config), gateways=1, external=True)
        url = st["url"]
        write_private(str(data / "clouds.yaml"), clouds_yaml(url, str(config)))
        admin = scenario.login(url, "admin", *_password(config, "admin"))
        echo(f"      server {url}, agents on {', '.join(sorted(st['agents']))}")
        echo("[2/5] admin: external network public 203.0.113.0/24 + 2001:db8:ffff::/64 (flat, on the gateway host)")
        public = scenario.create_public(admin)
        tenants: dict[str, scenario.Tenant] = {}
        echo("[3/5] tenants build the same topology with the same addresses, through the API")
        for user, (password, project) in scenario.TENANTS.items():
            with scenario.login(url, user, password, project) as api:
                tenants[user] = scenario.build_tenant(api, user, public, lambda m: echo("      " + m))
                guest.create_port(api, tenants[user], public)
        echo("[4/5] VMs: namespaces plugged like Nova's taps, ports bound to their hosts")
        for t in tenants.values():
            for vm in scenario.VMS:
                L.vm_add(t.vm(vm), t.hosts[vm], t.ports[vm])
            for vm, ip6 in t.ips6.items():        # static IPv6 in the dual-stack VMs
                topology.vm_ipv6(t.vm(vm), f"{ip6}/64", t.gateways6[vm])
            # the outside routes the tenant's prefix to its router (IPv6 is routed, not NATed)
            topology.outside_route6(scenario.V6_PREFIX[t.user], t.gateway_ip6)
        echo("      and one real QEMU guest per tenant (its own DHCP client) ...")
        guests = {u: guest.boot(t) for u, t in tenants.items()}
        wait_active(admin, [p for t in tenants.values() for p in t.ports.values()])
        for t in tenants.values():
            for vm in scenario.VMS:
                services.append(matrix.start_service(topology.vm_ns(t.vm(vm)), f"{t.user}/{vm}", [22, 80]))
        outside = topology.external_client_ns()
        services.append(matrix.start_service(outside, "outside", [8080]))
        echo(f"      {sum(len(t.ports) for t in tenants.values())} VMs ACTIVE, {len(guests)} of them QEMU guests "
             f"({time.time() - t0:.1f} s since start)")
        echo("[5/5] the matrix, with real packets")
        script = data / "udhcpc-report.sh"
        script.write_text(matrix.DHCP_SCRIPT)
        script.chmod(0o755)
        cells = [c for t in tenants.values() for c in cells_for(t, outside, topology.vm_ns, str(script))]
        cells += [c for u, t in tenants.items() for c in guest.cells(t, guests[u], outside)]
        add_traces(cells, url, admin.headers["X-Auth-Token"])
        print_matrix(cells, echo)
        bad = [c for c in cells if not c.ok]
        echo(f"{len(cells) - len(bad)}/{len(cells)} cells as expected.")
        echo(f"Web UI: {url}/ui  (users: admin/s3cret, alice/alice-pw, bob/bob-pw)")
        echo(f"openstack CLI: export OS_CLIENT_CONFIG_FILE={data / 'clouds.yaml'}; "
             "openstack --os-cloud vxnet-alice network list")
        if check:
            return 1 if bad else 0
        echo("The demo keeps running; Ctrl-C removes everything.")
        while not stop["now"]:
            time.sleep(1)
        return 0
    except KeyboardInterrupt:
        return 0
    except (scenario.DemoError, L.LabError, RuntimeError) as e:
        echo(f"vxnet demo failed: {e}")
        return 1
    finally:
        echo("removing the demo (lab namespaces, links, processes) ...")
        for p in services:
            p.kill()
            p.wait(5)
        L.down()


def _password(config: pathlib.Path, user: str) -> tuple[str, str]:
    for u in load_config(str(config)).users:
        if u.name == user:
            return u.password, u.project
    raise scenario.DemoError(f"{config} has no user {user}")
