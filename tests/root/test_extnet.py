"""The physical network side of gateways, real packets: `vxnet lab up --hosts 2 --gateways 1
--external` (h3 is the gateway host; vxl-x is the outside of physical network `external`).

- Hairpin: a VM reaches another VM's floating IP of the same router, and its own, through the
  gateway namespace (DNAT + hairpin SNAT); a VM behind another router reaches it too (out on the
  external segment and back in). The server VM sees the sender's floating IP (or the router's
  gateway address when the sender has none), and the answer comes back from the floating IP.
- Floating IP status: DOWN when created, ACTIVE once the serving gateway programmed it (the
  agent reports it), DOWN when disassociated.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.root.conftest import USERS_TOML, Lab, needs_root
from tests.root.test_gateway import (
    CLIENT,
    OUT,
    allow_outside,
    ask,
    external_network,
    gateway_ip,
    ok,
    serve,
    tenant_router,
    vm_behind,
    wait_for,
)
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]


@pytest.fixture(scope="module")
def xlab(tmp_path_factory) -> Iterator[Lab]:
    from tests.conftest import free_port
    from vxnet.lab import lab

    d = tmp_path_factory.mktemp("xlab")
    cfg = d / "lab.toml"
    cfg.write_text(USERS_TOML.format(port=free_port(), db=d / "vxnet.db"))
    old = os.environ.get("VXNET_LAB_DIR")
    os.environ["VXNET_LAB_DIR"] = str(d / "state")
    servers: list[subprocess.Popen[str]] = []
    try:
        lab.down(quiet=True)
        st = lab.up(2, str(cfg), gateways=1, external=True)
        g = Lab(st)
        g.servers = servers  # type: ignore[attr-defined]

        def registered() -> bool:
            with g.api("admin") as c:
                agents = c.get("/agents").json()["agents"]
            return {a["host"] for a in agents if a["alive"]} >= {"h1", "h2", "h3"}
        wait_for(registered, timeout=30, interval=0.2)
        servers.append(serve(OUT, 8080, "outside"))
        yield g
    finally:
        for p in servers:
            p.kill()
            p.wait()
        try:
            lab.down()
        finally:
            if old is None:
                os.environ.pop("VXNET_LAB_DIR", None)
            else:
                os.environ["VXNET_LAB_DIR"] = old


def fip_for(g: Lab, user: str, port: dict) -> dict:
    ext = external_network(g)
    with g.api(user) as c:
        return ok(c.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"],
                                                              "port_id": port["id"]}}), 201)["floatingip"]


def test_hairpin_to_floating_ips_of_the_same_cloud(xlab: Lab) -> None:
    g = xlab
    net, _, r = tenant_router(g, "alice", "100.64.70.0/24", "hp")
    a = g.port("alice", net["id"], "100.64.70.11")
    b = g.port("alice", net["id"], "100.64.70.12")
    c = g.port("alice", net["id"], "100.64.70.13")
    allow_outside(g, "alice")
    with g.api("alice") as cl:          # the hairpinned source is in 100.64.70.0/24 or 203.0.113.0/24
        sg = ok(cl.get("/security-groups", params={"name": "default"}))["security_groups"][0]
        rr = cl.post("/security-group-rules", json={"security_group_rule": {
            "security_group_id": sg["id"], "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
            "port_range_min": 8081, "port_range_max": 8081, "remote_ip_prefix": "100.64.70.0/24"}})
        assert rr.status_code in (201, 409), rr.text
    # the real path: default route = the distributed router on the VM's own host
    vm_behind(g, "ha", "h1", a, r["id"], via_snat=False)
    vm_behind(g, "hb", "h2", b, r["id"], via_snat=False)
    vm_behind(g, "hc", "h1", c, r["id"], via_snat=False)
    for vm in ("ha", "hb"):
        g.servers.append(serve(topology.vm_ns(vm), 8081, vm))  # type: ignore[attr-defined]
    fa, fb = fip_for(g, "alice", a), fip_for(g, "alice", b)
    wait_for(lambda: ask(OUT, fb["floating_ip_address"], 8081, 0.5) == f"hb {CLIENT}", timeout=20)
    wait_for(lambda: ask(OUT, fa["floating_ip_address"], 8081, 0.5) == f"ha {CLIENT}", timeout=20)

    # VM with a floating IP -> another VM's floating IP: the server sees the sender's floating IP
    assert ask(topology.vm_ns("ha"), fb["floating_ip_address"], 8081) == f"hb {fa['floating_ip_address']}"
    # VM without one: the server sees the router's gateway address
    assert ask(topology.vm_ns("hc"), fb["floating_ip_address"], 8081) == f"hb {gateway_ip(r)}"
    # its own floating IP
    assert ask(topology.vm_ns("ha"), fa["floating_ip_address"], 8081) == f"ha {fa['floating_ip_address']}"
    # ICMP too, and the answer comes from the floating IP
    out = subprocess.run(["ip", "netns", "exec", topology.vm_ns("hc"), "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1",
                          fb["floating_ip_address"]], capture_output=True, text=True)
    assert out.stdout.count(f"from {fb['floating_ip_address']}") == 3, out.stdout

    # A VM behind ANOTHER router (another project) reaches it through the external segment.
    onet, _, orr = tenant_router(g, "bob", "100.64.71.0/24", "hp2")
    o = g.port("bob", onet["id"], "100.64.71.11")
    vm_behind(g, "ho", "h2", o, orr["id"], via_snat=False)
    wait_for(lambda: ask(topology.vm_ns("ho"), CLIENT, 8080, 0.5) == f"outside {gateway_ip(orr)}", timeout=20)
    assert ask(topology.vm_ns("ho"), fb["floating_ip_address"], 8081) == f"hb {gateway_ip(orr)}"

    # Disassociated: no hairpin either.
    with g.api("alice") as cl:
        ok(cl.put(f"/floatingips/{fb['id']}", json={"floatingip": {"port_id": None}}))
    wait_for(lambda: ask(topology.vm_ns("hc"), fb["floating_ip_address"], 8081, 0.3).startswith("ERR"))


def fip_status(g: Lab, fid: str) -> str:
    with g.api("admin") as c:
        return ok(c.get(f"/floatingips/{fid}"))["floatingip"]["status"]


def test_floating_ip_status_is_the_gateways_report(xlab: Lab) -> None:
    """DOWN when created unassociated; associated: DOWN in the API's answer, ACTIVE once the
    gateway host reported it programmed (and it answers from the outside); disassociated:
    DOWN, and no report turns it ACTIVE again."""
    g = xlab
    net, _, r = tenant_router(g, "alice", "100.64.72.0/24", "st")
    p = g.port("alice", net["id"], "100.64.72.11")
    allow_outside(g, "alice")
    vm_behind(g, "s1", "h1", p, r["id"], via_snat=False)
    ext = external_network(g)
    with g.api("alice") as c:
        fip = ok(c.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"]}}), 201)["floatingip"]
        assert fip["status"] == "DOWN"
        up = ok(c.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": p["id"]}}))["floatingip"]
    assert up["status"] == "DOWN"                 # not the API's to say
    took = wait_for(lambda: fip_status(g, fip["id"]) == "ACTIVE", timeout=20)
    print(f"\nfloating IP associated -> ACTIVE (reported by the gateway): {took * 1000:.0f} ms")
    assert subprocess.run(["ip", "netns", "exec", OUT, "ping", "-c", "1", "-W", "2", fip["floating_ip_address"]],
                          capture_output=True).returncode == 0
    with g.api("alice") as c:
        ok(c.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": None}}))
    assert fip_status(g, fip["id"]) == "DOWN"
    time.sleep(1)                                 # and no agent report turns it ACTIVE again
    assert fip_status(g, fip["id"]) == "DOWN"
