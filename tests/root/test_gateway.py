"""North-south through gateway hosts, real packets: `vxnet lab up --hosts 2 --gateways 2
--external` (h3, h4 are gateway hosts; vxl-x is the outside: client 203.0.113.100 and the
external subnet's gateway 203.0.113.1).

- SNAT: VMs of two projects with the SAME address behind two routers reach the outside client
  at the same time; the client sees each router's gateway address, each answer reaches the
  right VM (a TCP server in vxl-x answers with the peer address it saw).
- Floating IP: reachable from the outside (the VM sees the real client address), the VM's own
  connections leave from the floating IP; `floating ip set --port` moves it at once (an open
  ping flow from the client follows: conntrack entries are flushed), unset/delete stop it.
- Gateway host failure (agent SIGKILLed and its SNAT namespaces removed): the routers move to
  the other gateway host after the agent lease; SNAT and the floating IP come back. The outage
  is measured from `ping -D` gaps and printed.
- The real path: a VM whose default route is its subnet's gateway (the distributed `vxr-`
  router on its own host, policy-routed to the snat port) gets SNAT and a floating IP too.
The SNAT and floating-IP tests point the VMs' default route at their router's snat port (the
gateway namespace's leg on their subnet), so they test the gateway alone; the failure test uses
the real path.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.root.conftest import Lab, lab_session, needs_root
from tests.root.helpers import PingStream, max_gap, nsexec, ping_result, wait_for
from vxnet.compute.gateway import router_netns
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

OUT = topology.EXTERNAL_NS
CLIENT = topology.EXTERNAL_CLIENT_IP
# agent_down_time of this lab (seconds): short for the failover test, long enough that an agent
# restart (a Python start-up, slow on a loaded 2-CPU machine) completes within it.
LEASE = 8

PEER_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64); print("ready", flush=True)
while True:
    c, a = s.accept()
    c.sendall(f"{sys.argv[2]} {a[0]}\\n".encode()); c.close()
"""
PEER_CLIENT = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print(s.recv(200).decode().strip())
except OSError as e:
    print("ERR", e)
"""


@pytest.fixture(scope="module")
def gwlab(tmp_path_factory) -> Iterator[Lab]:
    with lab_session(tmp_path_factory, "gwlab", 2, lease=LEASE, gateways=2, external=True,
                     wait_hosts={"h1", "h2", "h3", "h4"}) as g:
        g.servers.append(serve(OUT, 8080, "outside"))
        yield g


def serve(ns: str, port: int, name: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", PEER_SERVER, str(port), name],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"   # listening (not: 0.3 s later)
    return p


def ask(ns: str, ip: str, port: int, timeout: float = 2) -> str:
    """`name peer` from the peer server at ip:port, seen from namespace `ns` ('ERR ...' if none)."""
    return nsexec(ns, "python3", "-c", PEER_CLIENT, ip, str(port), str(timeout)).stdout.strip()


def ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def external_network(g: Lab) -> dict[str, Any]:
    with g.api("admin") as c:
        nets = ok(c.get("/networks", params={"name": "public"}))["networks"]
        if nets:
            return nets[0]
        net = ok(c.post("/networks", json={"network": {
            "name": "public", "router:external": True, "provider:network_type": "flat",
            "provider:physical_network": "external"}}), 201)["network"]
        ok(c.post("/subnets", json={"subnet": {
            "network_id": net["id"], "ip_version": 4, "cidr": "203.0.113.0/24", "gateway_ip": topology.EXTERNAL_GATEWAY_IP,
            "allocation_pools": [{"start": "203.0.113.10", "end": "203.0.113.99"}]}}), 201)
        return net


def tenant_router(g: Lab, user: str, cidr: str, name: str) -> tuple[dict, dict, dict]:
    """A network + subnet behind a new router with its gateway on `public`."""
    ext = external_network(g)
    net, sub = g.network(user, cidr, name)
    with g.api(user) as c:
        r = ok(c.post("/routers", json={"router": {"name": name, "external_gateway_info": {"network_id": ext["id"]}}}),
               201)["router"]
        ok(c.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": sub["id"]}))
        r = ok(c.get(f"/routers/{r['id']}"))["router"]
    return net, sub, r


def allow_outside(g: Lab, user: str) -> None:
    """Ingress TCP 8081 and ICMP from the external subnet in the project's default group (the
    VMs' security groups see the real client address, KERNEL-NOTES §5)."""
    with g.api(user) as c:
        sg = ok(c.get("/security-groups", params={"name": "default"}))["security_groups"][0]
        for rule in ({"protocol": "tcp", "port_range_min": 8081, "port_range_max": 8081}, {"protocol": "icmp"}):
            r = c.post("/security-group-rules", json={"security_group_rule": {
                "security_group_id": sg["id"], "direction": "ingress", "ethertype": "IPv4",
                "remote_ip_prefix": "203.0.113.0/24", **rule}})
            assert r.status_code in (201, 409), r.text


def router_ports(g: Lab, rid: str, owner: str) -> list[dict]:
    with g.api("admin") as c:
        return ok(c.get("/ports", params={"device_id": rid, "device_owner": owner}))["ports"]


def gateway_ip(r: dict) -> str:
    return r["external_gateway_info"]["external_fixed_ips"][0]["ip_address"]


def vm_behind(g: Lab, name: str, host: str, port: dict, rid: str, via_snat: bool = True) -> None:
    """A VM whose default route is its router's snat port (see the module docstring), or with
    `via_snat=False` its subnet's gateway (the distributed router, as the lab sets it)."""
    g.vm(name, host, port)
    g.wait_status(port["id"], "ACTIVE")
    snat = router_ports(g, rid, "network:router_centralized_snat")
    assert len(snat) == 1
    g.wait_status(snat[0]["id"], "ACTIVE", timeout=20)
    if via_snat:
        nsexec(topology.vm_ns(name), "ip", "route", "replace", "default", "via", snat[0]["fixed_ips"][0]["ip_address"])


def outside_vm(g: Lab, name: str, host: str, cidr: str, router: str, ip: str) -> tuple[dict, dict]:
    """Alice's VM `name` on `host` at `ip`, in a new network `cidr` behind a new router `router`
    (gateway on `public`), on the real path (`vm_behind` with via_snat=False), the outside
    allowed in (`allow_outside`): (router, port)."""
    net, _, r = tenant_router(g, "alice", cidr, router)
    p = g.port("alice", net["id"], ip)
    allow_outside(g, "alice")
    vm_behind(g, name, host, p, r["id"], via_snat=False)
    return r, p


def test_snat_two_projects_same_addresses(gwlab: Lab) -> None:
    g = gwlab
    na, _, ra = tenant_router(g, "alice", "192.0.2.0/24", "a")
    nb, _, rb = tenant_router(g, "bob", "192.0.2.0/24", "b")
    gws = {h for r in (ra, rb) for p in router_ports(g, r["id"], "network:router_gateway")
           for h in [p["binding:host_id"]]}
    assert gws == {"h3", "h4"}, gws          # least loaded: one router per gateway host
    a1 = g.port("alice", na["id"], "192.0.2.11")
    b1 = g.port("bob", nb["id"], "192.0.2.11")
    vm_behind(g, "a1", "h1", a1, ra["id"])
    vm_behind(g, "b1", "h2", b1, rb["id"])
    for r in (ra, rb):
        gw_port = router_ports(g, r["id"], "network:router_gateway")[0]
        g.wait_status(gw_port["id"], "ACTIVE", timeout=20)

    # Both at the same time: each VM reads the address the outside client saw.
    procs = {vm: subprocess.Popen(["ip", "netns", "exec", topology.vm_ns(vm), "python3", "-c", PEER_CLIENT, CLIENT,
                                   "8080", "3"], stdout=subprocess.PIPE, text=True) for vm in ("a1", "b1")}
    seen = {vm: p.communicate(timeout=10)[0].strip() for vm, p in procs.items()}
    assert seen == {"a1": f"outside {gateway_ip(ra)}", "b1": f"outside {gateway_ip(rb)}"}, seen
    # pings at the same time, every reply to the right VM
    pings = {vm: subprocess.Popen(["ip", "netns", "exec", topology.vm_ns(vm), "ping", "-n", "-D", "-c", "20", "-i",
                                   "0.05", "-W", "1", CLIENT], stdout=subprocess.PIPE, text=True)
             for vm in ("a1", "b1")}
    for p in pings.values():
        sent, got, _ = ping_result(p)
        assert sent == got == 20
    # a third party on the outside cannot reach the private address through the gateway
    assert nsexec(OUT, "ping", "-c", "1", "-W", "1", "192.0.2.11").returncode != 0
    # MSS clamping is in the gateway namespace of both routers
    for r in (ra, rb):
        host = router_ports(g, r["id"], "network:router_gateway")[0]["binding:host_id"]
        rules = nsexec(router_netns(r["id"], host), "nft", "list", "table", "ip", "vxnet_nat").stdout
        assert "maxseg size set rt mtu" in rules and f"snat to {gateway_ip(r)}" in rules


def test_floating_ip_both_ways_follows_set_unset_delete(gwlab: Lab) -> None:
    g = gwlab
    na, _, ra = tenant_router(g, "alice", "100.64.20.0/24", "fa")
    f1 = g.port("alice", na["id"], "100.64.20.11")
    f2 = g.port("alice", na["id"], "100.64.20.12")
    allow_outside(g, "alice")
    vm_behind(g, "f1", "h1", f1, ra["id"])
    vm_behind(g, "f2", "h2", f2, ra["id"])
    g.servers.append(serve(topology.vm_ns("f1"), 8081, "f1"))
    g.servers.append(serve(topology.vm_ns("f2"), 8081, "f2"))
    ext = external_network(g)
    with g.api("alice") as c:
        fip = ok(c.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"], "port_id": f1["id"]}}),
                 201)["floatingip"]
    addr = fip["floating_ip_address"]
    took = wait_for(lambda: ask(OUT, addr, 8081, 0.5) == f"f1 {CLIENT}")
    print(f"\nfloating IP create -> first answer from outside: {took * 1000:.0f} ms")
    # MSS clamping: the outside (MTU 1500) offers MSS 1460; the VM (MTU 1450) must see 1410.
    cap = subprocess.Popen(["ip", "netns", "exec", topology.vm_ns("f1"), "tcpdump", "-l", "-n", "-c", "1", "-i", "eth0",
                            "tcp[tcpflags] == tcp-syn"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert cap.stderr is not None
    while "listening on" not in (line := cap.stderr.readline()):   # armed (not: 0.5 s later)
        assert line, "tcpdump ended before it listened"
    assert ask(OUT, addr, 8081) == f"f1 {CLIENT}"
    syn, _ = cap.communicate(timeout=10)
    assert "mss 1410" in syn, syn
    assert ask(topology.vm_ns("f1"), CLIENT, 8080) == f"outside {addr}"        # outbound leaves from the fip
    assert ask(topology.vm_ns("f2"), CLIENT, 8080) == f"outside {gateway_ip(ra)}"   # the other VM: plain SNAT

    # A ping flow from the outside stays open while the fip moves to f2: it must follow at once.
    rx2 = lambda: int(nsexec(topology.vm_ns("f2"), "cat", "/sys/class/net/eth0/statistics/rx_packets").stdout)
    with PingStream(OUT, addr, 0.02) as flow:
        flow.wait_replies(10)                      # the flow runs (answered by f1) before the move
        before = rx2()
        t0 = time.time()
        with g.api("alice") as c:
            ok(c.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": f2["id"]}}))
        took = wait_for(lambda: ask(OUT, addr, 8081, 0.5) == f"f2 {CLIENT}")
        print(f"floating IP set --port (move) -> answered by the new VM: {(time.time() - t0) * 1000:.0f} ms")
        flow.wait_replies(flow.replies + 60)       # 60 more replies, which f2 must have answered
    assert rx2() - before > 50, "the running ping flow did not follow the floating IP (stale conntrack)"
    print(f"ping flow during the move: {flow.replies}/{flow.last_seq()} answered, "
          f"longest gap {max_gap(flow.stamps) * 1000:.0f} ms")
    assert max_gap(flow.stamps) < 2.0

    with g.api("alice") as c:
        ok(c.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": None}}))
    wait_for(lambda: ask(OUT, addr, 8081, 0.3).startswith("ERR"))
    assert ask(topology.vm_ns("f2"), CLIENT, 8080) == f"outside {gateway_ip(ra)}"
    with g.api("alice") as c:
        ok(c.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": f1["id"]}}))
    wait_for(lambda: ask(OUT, addr, 8081, 0.5) == f"f1 {CLIENT}")
    with g.api("alice") as c:
        assert c.delete(f"/floatingips/{fip['id']}").status_code == 204
    wait_for(lambda: ask(OUT, addr, 8081, 0.3).startswith("ERR"))


def test_real_path_through_distributed_router(gwlab: Lab) -> None:
    g = gwlab
    rr, p = outside_vm(g, "r1", "h2", "100.64.50.0/24", "real", "100.64.50.11")
    assert "default via 100.64.50.1" in nsexec(topology.vm_ns("r1"), "ip", "route").stdout
    g.servers.append(serve(topology.vm_ns("r1"), 8081, "r1"))
    wait_for(lambda: ask(topology.vm_ns("r1"), CLIENT, 8080, 0.5) == f"outside {gateway_ip(rr)}", timeout=15)
    ext = external_network(g)
    with g.api("alice") as c:
        fip = ok(c.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"], "port_id": p["id"]}}),
                 201)["floatingip"]
    addr = fip["floating_ip_address"]
    wait_for(lambda: ask(OUT, addr, 8081, 0.5) == f"r1 {CLIENT}")
    assert ask(topology.vm_ns("r1"), CLIENT, 8080) == f"outside {addr}"
    with g.api("alice") as c:
        assert c.delete(f"/floatingips/{fip['id']}").status_code == 204


def test_gateway_agent_restart_disturbs_nothing(gwlab: Lab) -> None:
    """A restarted gateway agent adopts its namespaces: a ping through the floating IP and one
    through SNAT lose nothing while the agent is stopped and started again."""
    from vxnet.lab import lab

    g = gwlab
    rr, p = outside_vm(g, "s1", "h1", "100.64.60.0/24", "rst", "100.64.60.11")
    ext = external_network(g)
    with g.api("alice") as c:
        fip = ok(c.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"], "port_id": p["id"]}}),
                 201)["floatingip"]
    addr = fip["floating_ip_address"]
    wait_for(lambda: nsexec(OUT, "ping", "-c", "1", "-W", "0.3", addr).returncode == 0)
    host = router_ports(g, rr["id"], "network:router_gateway")[0]["binding:host_id"]
    ns = router_netns(rr["id"], host)
    before = nsexec(ns, "ip", "-o", "link").stdout.count("qg-")
    st = lab.load_state()
    with PingStream(OUT, addr, 0.02) as via_fip, PingStream(topology.vm_ns("s1"), CLIENT, 0.02) as via_snat, \
            g.api("admin") as c:
        pings = (via_fip, via_snat)
        for p in pings:
            p.wait_replies(10)                     # both flows run before the stop
        started = lambda: c.get("/agents", params={"host": host}).json()["agents"][0]["started_at"]
        old = started()
        t0 = time.time()
        lab.stop_agent(st, host)
        lab.start_agent(lab.load_state(), host)
        # registered again; the bound is for a loaded machine, where a Python start takes seconds
        wait_for(lambda: started() != old, timeout=LEASE + 60, interval=0.1)
        print(f"\ngateway agent {host} restarted (stop -> registered again) in {time.time() - t0:.2f} s")
        for p in pings:
            p.wait_replies(p.replies + 100)        # and 2 s more of each flow with the new agent
    for p in pings:
        missing = p.unanswered()
        assert not missing, f"lost {len(missing)} of {p.last_seq()}, longest gap {max_gap(p.stamps):.3f} s"
    assert nsexec(ns, "ip", "-o", "link").stdout.count("qg-") == before == 1


def test_gateway_host_failure_moves_snat_and_floating_ip(gwlab: Lab) -> None:
    from vxnet.lab import lab

    g = gwlab
    rr, p = outside_vm(g, "k1", "h1", "100.64.30.0/24", "fail", "100.64.30.11")  # the real path
    g.servers.append(serve(topology.vm_ns("k1"), 8081, "k1"))
    ext = external_network(g)
    with g.api("alice") as c:
        fip = ok(c.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"], "port_id": p["id"]}}),
                 201)["floatingip"]
    addr = fip["floating_ip_address"]
    wait_for(lambda: ask(OUT, addr, 8081, 0.5) == f"k1 {CLIENT}")
    victim = router_ports(g, rr["id"], "network:router_gateway")[0]["binding:host_id"]
    other = ({"h3", "h4"} - {victim}).pop()

    out_ping = subprocess.Popen(["ip", "netns", "exec", topology.vm_ns("k1"), "ping", "-n", "-D", "-i", "0.05", "-c",
                                 "400", "-W", "1", CLIENT], stdout=subprocess.PIPE, text=True)
    in_ping = subprocess.Popen(["ip", "netns", "exec", OUT, "ping", "-n", "-D", "-i", "0.05", "-c", "400", "-W", "1",
                                addr], stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    t_kill = time.time()
    st = lab.load_state()
    lab.stop_agent(st, victim, 9)      # SIGKILL: the host is gone...
    for ns in os.listdir("/run/netns"):
        if ns.startswith("vxs-") and ns.endswith("-" + victim):
            subprocess.run(["ip", "netns", "del", ns], check=False)   # ...and its namespaces with it
    wait_for(lambda: router_ports(g, rr["id"], "network:router_gateway")[0]["binding:host_id"] == other,
             timeout=LEASE + 10, interval=0.1)
    t_moved = time.time()
    wait_for(lambda: ask(OUT, addr, 8081, 0.5) == f"k1 {CLIENT}", timeout=15)
    t_back = time.time()
    assert ask(topology.vm_ns("k1"), CLIENT, 8080) == f"outside {addr}"
    _, got_out, stamps_out = ping_result(out_ping)
    _, got_in, stamps_in = ping_result(in_ping)
    print(f"\ngateway host {victim} killed: rescheduled to {other} after {t_moved - t_kill:.2f} s, floating IP "
          f"answering after {t_back - t_kill:.2f} s; longest gap VM->outside (SNAT via fip) "
          f"{max_gap(stamps_out):.2f} s, outside->fip {max_gap(stamps_in):.2f} s (lease {LEASE} s)")
    assert got_out > 0 and got_in > 0
    assert max_gap(stamps_out) < LEASE + 8 and max_gap(stamps_in) < LEASE + 8
    lab.start_agent(lab.load_state(), victim)
