"""Distributed east-west routing on real namespaces: `vxnet lab` server + 3 agents, the API.

Topology (project alice): networks A 192.0.2.0/24 and B 100.64.1.0/24 behind router r;
VMs a1@h1, a2@h2 on A, b1@h1, b3@h3 on B. Every host runs r in its own namespace with the
same gateway IPs and MACs (anycast); a routed packet goes from the sender's host straight to
the destination's host (asymmetric IRB: the request crosses on the destination's VNI, the reply
on the sender's).

- Routed ping in both directions for every pair (same host, across hosts), TCP too; the first
  routed contact puts 0 ARP frames on the underlay; the gateway MAC stays on the service port
  (pitfall A).
- Extra routes, removing and adding back an interface, the SNAT fallback (contract with the
  north-south part), two projects with identical CIDRs, agent restart (SIGKILL) under a ping
  stream, and namespaces gone after the last VM / the router.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.root.conftest import Lab, needs_root
from tests.root.helpers import PingStream, capture, max_gap, nsexec, ping
from vxnet.compute import naming
from vxnet.compute.routing import iface_name, netns_name, service_port
from vxnet.lab import lab as labmod
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

A_CIDR, B_CIDR = "192.0.2.0/24", "100.64.1.0/24"
IPS = {"a1": "192.0.2.11", "a2": "192.0.2.12", "b1": "100.64.1.11", "b3": "100.64.1.13"}
HOST = {"a1": "h1", "a2": "h2", "b1": "h1", "b3": "h3"}
# An upper bound for a (re)started agent to come up and apply a change: a loaded machine may need
# many seconds to start a Python process; the tests wait for the change itself, never for a time.
AGENT_START = 60.0

TCP_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(sys.argv[2].encode() + b":" + c.recv(64)); c.close()
"""
TCP_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); c.sendall(b"hi")
print(c.recv(64).decode())
"""


def wait_for(cond: Callable[[], bool], timeout: float = 10, what: str = "") -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return time.time() - t0
        time.sleep(0.05)
    if os.environ.get("VXNET_DEBUG"):
        for h in ("h1", "h3"):
            for n in router_namespaces(h):
                print(n, nsexec(n, "ip", "route").stdout, nsexec(n, "ip", "-br", "addr").stdout)
        d = os.environ.get("VXNET_LAB_DIR", "")
        print(subprocess.run(f"tail -n 30 {d}/agent-h1.log", shell=True, capture_output=True, text=True,
                             check=False).stdout)
    raise AssertionError(f"timed out after {timeout}s: {what}")


def router_namespaces(host: str | None = None) -> list[str]:
    names = sorted(os.listdir("/run/netns"))
    return [n for n in names if n.startswith("vxr-") and (host is None or n.endswith("-" + host))]


class Topo:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.servers: list[subprocess.Popen[str]] = []
        self.na, self.sa = lab.network("alice", A_CIDR, "A")
        self.nb, self.sb = lab.network("alice", B_CIDR, "B")
        with lab.api("alice") as c:
            r = c.post("/routers", json={"router": {"name": "r"}})
            assert r.status_code == 201, r.text
            self.router = r.json()["router"]
        self.ports = {vm: lab.port("alice", (self.na if vm[0] == "a" else self.nb)["id"], ip) for vm, ip in IPS.items()}
        self.iface_a = self.add_iface(self.sa)
        self.iface_b = self.add_iface(self.sb)

    def add_iface(self, subnet: dict, router: dict | None = None, user: str = "alice") -> str:
        rid = (router or self.router)["id"]
        with self.lab.api(user) as c:
            r = c.put(f"/routers/{rid}/add_router_interface", json={"subnet_id": subnet["id"]})
            assert r.status_code == 200, r.text
            return r.json()["port_id"]

    def remove_iface(self, subnet: dict) -> None:
        with self.lab.api("alice") as c:
            r = c.put(f"/routers/{self.router['id']}/remove_router_interface", json={"subnet_id": subnet["id"]})
            assert r.status_code == 200, r.text

    def set_routes(self, routes: list[dict]) -> None:
        with self.lab.api("alice") as c:
            r = c.put(f"/routers/{self.router['id']}", json={"router": {"routes": routes}})
            assert r.status_code == 200, r.text

    def tcp_server(self, vm: str, port: int = 5001) -> None:
        p = subprocess.Popen(["ip", "netns", "exec", topology.vm_ns(vm), "python3", "-c", TCP_SERVER, str(port), vm],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert p.stdout is not None and "ready" in p.stdout.readline()
        self.servers.append(p)

    def close(self) -> None:
        for p in self.servers:
            p.kill()
            p.wait(5)


def tcp(vm: str, ip: str, port: int = 5001) -> str:
    r = nsexec(topology.vm_ns(vm), "python3", "-c", TCP_CLIENT, ip, str(port), timeout=10)
    return r.stdout.strip() if r.returncode == 0 else f"failed: {r.stderr.strip()[-200:]}"


@pytest.fixture(scope="module")
def topo(lab3: Lab):
    t = Topo(lab3)
    try:
        for vm, p in t.ports.items():
            lab3.vm(vm, HOST[vm], p)
        for p in t.ports.values():
            lab3.wait_status(p["id"], "ACTIVE")
        yield t
    finally:
        t.close()


def test_routed_first_contact_all_pairs_both_directions(topo: Topo) -> None:
    ns = {h: netns_name(topo.router["id"], h) for h in ("h1", "h2", "h3")}
    wait_for(lambda: router_namespaces() == sorted(ns.values()), what=f"router namespaces {router_namespaces()}")
    # Wait until every host's router has both legs plugged (the VMs were ACTIVE before the
    # interfaces' service ports necessarily were: routing is not a VM's own data path).
    for h in ("h1", "h2", "h3"):
        for port_id, net in ((topo.iface_a, topo.na), (topo.iface_b, topo.nb)):
            wait_for(lambda h=h, port_id=port_id, net=net: f"master {naming.bridge_name(net['id'])}" in nsexec(
                topology.host_ns(int(h[1])), "ip", "-o", "link", "show", service_port(port_id)).stdout,
                what=f"{service_port(port_id)} plugged on {h}")

    # First routed contact across hosts: a1@h1 -> b3@h3. Cold ARP caches everywhere (VM, router).
    with capture() as frames:
        assert ping("a1", IPS["b3"], count=1, wait=2) == 1
    assert not [f for f in frames if "ARP" in f or "ff:ff:ff:ff:ff:ff" in f], "\n".join(frames)
    with topo.lab.api("admin") as c:
        vni = {k: c.get(f"/networks/{n['id']}").json()["network"]["provider:segmentation_id"]
               for k, n in (("A", topo.na), ("B", topo.nb))}
    # asymmetric: request on B's VNI (routed on h1), reply on A's VNI (routed on h3)
    assert [f for f in frames if f"vni {vni['B']}" in f and "ICMP echo request" in f], "\n".join(frames)
    assert [f for f in frames if f"vni {vni['A']}" in f and "ICMP echo reply" in f], "\n".join(frames)
    assert len(frames) == 2, "\n".join(frames)

    pairs = [("a1", "b1"), ("a1", "b3"), ("a2", "b1"), ("a2", "b3")]   # same host, then across hosts
    for x, y in pairs:
        assert ping(x, IPS[y]) == 2, f"{x} -> {y}"
        assert ping(y, IPS[x]) == 2, f"{y} -> {x}"
    for vm in ("a1", "b3", "b1"):
        topo.tcp_server(vm)
    assert tcp("a1", IPS["b3"]) == "b3:hi"
    assert tcp("b3", IPS["a1"]) == "a1:hi"
    assert tcp("a1", IPS["b1"]) == "b1:hi"

    # Pitfall A: after routed traffic from every host, each host still sends the gateway MAC to
    # its own router (static entry on the service port; nothing learned from the VXLAN port).
    for h in ("h1", "h2", "h3"):
        for port_id in (topo.iface_a, topo.iface_b):
            with topo.lab.api("admin") as c:
                mac = c.get(f"/ports/{port_id}").json()["port"]["mac_address"]
            fdb = nsexec(topology.host_ns(int(h[1])), "bridge", "fdb", "show").stdout
            lines = [ln for ln in fdb.splitlines() if ln.startswith(mac)]
            assert lines and all(f"dev {service_port(port_id)} " in ln for ln in lines), (h, lines)
    # the namespace: forwarding on, rp_filter off, no NAT, anycast address and MAC on each host
    for h in ("h1", "h3"):
        out = nsexec(ns[h], "sysctl", "-n", "net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter").stdout.split()
        assert out == ["1", "0"]
        addr = nsexec(ns[h], "ip", "-o", "-4", "addr", "show", "dev", iface_name(topo.iface_a)).stdout
        assert "192.0.2.1/24" in addr
        assert "nat" not in nsexec(ns[h], "nft", "list", "ruleset").stdout


def test_extra_route(topo: Topo) -> None:
    # b3 also answers for 203.0.113.5 (allowed as an address pair, or port security drops its
    # replies as spoofed); the router learns to reach it via b3.
    with topo.lab.api("alice") as c:
        r = c.put(f"/ports/{topo.ports['b3']['id']}", json={"port": {"allowed_address_pairs": [
            {"ip_address": "203.0.113.0/24"}]}})
        assert r.status_code == 200, r.text
    nsexec(topology.vm_ns("b3"), "ip", "addr", "add", "203.0.113.5/32", "dev", "lo")
    assert ping("a1", "203.0.113.5", count=1, wait=1) == 0
    topo.set_routes([{"destination": "203.0.113.0/24", "nexthop": IPS["b3"]}])
    try:
        # Every host's router gets the route in its own agent pass: wait for a1's and a2's.
        wait_for(lambda: ping("a1", "203.0.113.5", count=1, wait=1) == 1, what="extra route")
        wait_for(lambda: ping("a2", "203.0.113.5", count=1, wait=1) == 1, what="extra route from a2")
        assert ping("a2", "203.0.113.5") == 2
        out = nsexec(netns_name(topo.router["id"], "h1"), "ip", "route", "show", "203.0.113.0/24").stdout
        assert f"via {IPS['b3']} dev {iface_name(topo.iface_b)}" in out
    finally:
        topo.set_routes([])   # also after a failure: a leftover route breaks the next tests
    wait_for(lambda: ping("a1", "203.0.113.5", count=1, wait=1) == 0, what="extra route removed")


def test_remove_interface_cuts_add_back_restores(topo: Topo) -> None:
    assert ping("a1", IPS["b3"]) == 2
    with PingStream(topology.vm_ns("a1"), IPS["b3"], 0.05) as stream:
        stream.wait_replies(5)            # the stream is routed before the removal
        topo.remove_iface(topo.sb)
        for h in ("h1", "h2", "h3"):
            wait_for(lambda h=h: service_port(topo.iface_b) not in nsexec(
                topology.host_ns(int(h[1])), "ip", "-o", "link").stdout, what=f"leg B gone on {h}")
        t_gone = time.time()              # every host's leg B is gone: nothing can route to B any more
        time.sleep(1.0)                   # an observation window (about 20 requests), not a wait
    late = [s for s in stream.stamps if s > t_gone + 0.02]
    assert not late, f"{len(late)} replies after the legs were gone"
    assert ping("a1", IPS["b3"], count=2, wait=1) == 0
    assert ping("b3", IPS["a1"], count=2, wait=1) == 0

    topo.iface_b = topo.add_iface(topo.sb)       # a new port: new MAC, same gateway IP
    wait_for(lambda: ping("a1", IPS["b3"], count=1, wait=1) == 1, timeout=15, what="routing back")
    # b3 and b1 still hold the old gateway MAC: the new leg's gratuitous ARP updates them.
    wait_for(lambda: ping("b3", IPS["a1"], count=1, wait=1) == 1, timeout=5, what="b3 back (GARP)")
    assert ping("b1", IPS["a2"]) == 2


def test_snat_fallback_rules(topo: Topo) -> None:
    """The north-south contract: a `network:router_centralized_snat` port on subnet A (bound to
    h2, a plain namespace behind it) catches traffic from A that no route matches."""
    with topo.lab.api("admin") as c:
        r = c.post("/ports", json={"port": {
            "network_id": topo.na["id"], "fixed_ips": [{"subnet_id": topo.sa["id"], "ip_address": "192.0.2.3"}],
            "device_owner": "network:router_centralized_snat", "device_id": topo.router["id"],
            "port_security_enabled": False, "security_groups": [],
            "project_id": topo.na["project_id"]}})
        assert r.status_code == 201, r.text
        snat = r.json()["port"]
    labmod.vm_add("snat", "h2", snat["id"], bind=False)
    with topo.lab.api("admin") as c:
        r = c.put(f"/ports/{snat['id']}", json={"port": {"binding:host_id": "h2"}})
        assert r.status_code == 200, r.text
        assert r.json()["port"]["device_owner"] == "network:router_centralized_snat"
    nsexec(topology.vm_ns("snat"), "ip", "addr", "add", "203.0.113.77/32", "dev", "lo")
    ns1 = netns_name(topo.router["id"], "h1")
    wait_for(lambda: "suppress_prefixlength 0" in nsexec(ns1, "ip", "rule").stdout, what="snat rules on h1")
    rules = nsexec(ns1, "ip", "rule").stdout
    assert re.search(r"^1000:\s+from 192\.0\.2\.0/24 lookup main suppress_prefixlength 0", rules, re.MULTILINE), rules
    m = re.search(r"^2000:\s+from 192\.0\.2\.0/24 lookup (\d+)", rules, re.MULTILINE)
    assert m, rules
    table = nsexec(ns1, "ip", "route", "show", "table", m.group(1)).stdout
    assert f"default via 192.0.2.3 dev {iface_name(topo.iface_a)}" in table
    assert "100.64.1.0" not in rules           # subnet B has no SNAT port

    wait_for(lambda: ping("a1", "203.0.113.77", count=1, wait=1) == 1, what="a1 -> snat fallback")
    assert ping("a2", "203.0.113.77") == 2
    assert ping("b3", "203.0.113.77", count=1, wait=1) == 0     # from B: no rule, no route
    assert ping("a1", IPS["b3"]) == 2                            # connected routes still win
    # the port goes: the rules go
    with topo.lab.api("admin") as c:
        assert c.put(f"/ports/{snat['id']}", json={"port": {"device_owner": "", "device_id": ""}}).status_code == 200
        assert c.delete(f"/ports/{snat['id']}").status_code == 204
    labmod.vm_del("snat")
    wait_for(lambda: "suppress_prefixlength" not in nsexec(ns1, "ip", "rule").stdout, what="snat rules gone")
    assert ping("a1", "203.0.113.77", count=1, wait=1) == 0


def test_two_projects_same_cidrs_isolated(topo: Topo) -> None:
    lab = topo.lab
    xa, xsa = lab.network("bob", A_CIDR, "XA")
    xb, xsb = lab.network("bob", B_CIDR, "XB")
    with lab.api("bob") as c:
        rr = c.post("/routers", json={"router": {"name": "rx"}}).json()["router"]
    topo.add_iface(xsa, rr, "bob")
    topo.add_iface(xsb, rr, "bob")
    x1 = lab.port("bob", xa["id"], IPS["a1"])          # same IPs as alice's a1 / b3, same hosts
    y3 = lab.port("bob", xb["id"], IPS["b3"])
    lab.vm("x1", "h1", x1)
    lab.vm("y3", "h3", y3)
    lab.wait_status(x1["id"], "ACTIVE")
    lab.wait_status(y3["id"], "ACTIVE")
    wait_for(lambda: len(router_namespaces("h1")) == 2 and len(router_namespaces("h3")) == 2, what="2 routers")
    topo.tcp_server("y3")
    wait_for(lambda: tcp("x1", IPS["b3"]) == "y3:hi", what="bob routed")
    assert tcp("a1", IPS["b3"]) == "b3:hi"
    assert tcp("x1", IPS["b3"]) == "y3:hi"

    with capture(topology.vm_ns("b3"), "eth0") as at_b3, capture(topology.vm_ns("y3"), "eth0") as at_y3:
        assert ping("x1", IPS["b3"], count=5, interval=0.05) == 5
    assert len([f for f in at_y3 if "ICMP echo request" in f]) == 5, "\n".join(at_y3)
    assert not [f for f in at_b3 if "ICMP" in f], "a packet of bob reached alice:\n" + "\n".join(at_b3)
    with capture(topology.vm_ns("b3"), "eth0") as at_b3, capture(topology.vm_ns("y3"), "eth0") as at_y3:
        assert ping("a1", IPS["b3"], count=5, interval=0.05) == 5
    assert len([f for f in at_b3 if "ICMP echo request" in f]) == 5, "\n".join(at_b3)
    assert not [f for f in at_y3 if "ICMP" in f], "a packet of alice reached bob:\n" + "\n".join(at_y3)
    # clean up bob's router: its namespaces go on every host
    for vm in ("x1", "y3"):
        labmod.vm_del(vm)
    with lab.api("bob") as c:
        for p in (x1, y3):
            assert c.delete(f"/ports/{p['id']}").status_code == 204
        for s in (xsa, xsb):
            r = c.put(f"/routers/{rr['id']}/remove_router_interface", json={"subnet_id": s["id"]})
            assert r.status_code == 200, r.text
        assert c.delete(f"/routers/{rr['id']}").status_code == 204
    wait_for(lambda: not [n for n in router_namespaces() if rr["id"][:11] in n], what="bob's namespaces gone")


def test_agent_crash_and_restart_adopts_router_namespace(topo: Topo) -> None:
    """A routed ping stream (every 10 ms) runs from before the agent is killed -9 until the
    restarted agent has applied two router changes, so the whole restart and its first passes
    happen under it: not one request may go unanswered, and the namespace is the same one."""
    ns = netns_name(topo.router["id"], "h1")
    ino = os.stat(f"/run/netns/{ns}").st_ino
    assert ping("a1", IPS["b3"]) == 2
    st = labmod.load_state()
    with PingStream(topology.vm_ns("a1"), IPS["b3"], 0.01) as stream:
        stream.wait_replies(20)                      # the stream is routed
        labmod.stop_agent(st, "h1", sig=9)           # a crash: nothing cleaned up (returns once it is gone)
        stream.wait_replies(stream.replies + 20)     # routed with no agent on h1
        labmod.start_agent(st, "h1")
        # the restarted agent runs the router: it applies a change, then another one
        topo.set_routes([{"destination": "203.0.113.0/24", "nexthop": IPS["b3"]}])
        wait_for(lambda: "203.0.113.0/24" in nsexec(ns, "ip", "route").stdout, timeout=AGENT_START,
                 what="route after restart")
        topo.set_routes([])
        wait_for(lambda: "203.0.113.0/24" not in nsexec(ns, "ip", "route").stdout, timeout=AGENT_START,
                 what="route removed")
        stream.wait_replies(stream.replies + 20)     # and still routed after those passes
    missing = stream.unanswered()
    assert not missing, f"{len(missing)} of {stream.last_seq()} pings unanswered across the agent restart " \
        f"(icmp_seq {missing[:20]}; longest gap {max_gap(stream.stamps):.3f} s)"
    assert os.stat(f"/run/netns/{ns}").st_ino == ino   # the same namespace, adopted
    assert ping("b3", IPS["a1"]) == 2


def test_namespace_gone_after_last_vm_and_router_delete(topo: Topo) -> None:
    lab = topo.lab
    # leftover of a crashed agent: a router namespace of h2 nobody wants any more goes too
    subprocess.run(["ip", "netns", "add", netns_name("deadbeef-0000-4000-8000-000000000000", "h2")], check=True)
    labmod.vm_del("a2")
    with lab.api("alice") as c:
        assert c.delete(f"/ports/{topo.ports['a2']['id']}").status_code == 204
    wait_for(lambda: router_namespaces("h2") == [], what=f"h2 router namespaces {router_namespaces('h2')}")
    assert len(router_namespaces("h1")) == 1 and len(router_namespaces("h3")) == 1
    assert service_port(topo.iface_a) not in nsexec(topology.host_ns(2), "ip", "-o", "link").stdout
    # router delete: interfaces first (Neutron), then the router; nothing left anywhere
    topo.remove_iface(topo.sa)
    topo.remove_iface(topo.sb)
    with lab.api("alice") as c:
        assert c.delete(f"/routers/{topo.router['id']}").status_code == 204
    wait_for(lambda: router_namespaces() == [], what=f"router namespaces {router_namespaces()}")
    for h in (1, 2, 3):
        links = nsexec(topology.host_ns(h), "ip", "-o", "link").stdout
        assert "vxpr" not in links, links
    assert ping("a1", IPS["b3"], count=1, wait=1) == 0
    assert ping("b1", IPS["b3"]) == 2       # L2 across hosts untouched
