"""IPv6 routing with real packets (issue #16): `vxnet lab up --hosts 2 --gateways 1 --external`
(h1, h2 compute hosts; h3 the gateway host; vxl-x the outside: 2001:db8:ffff::100, and
2001:db8:ffff::1, the external IPv6 subnet's gateway).

- East-west: ping6 routed between two IPv6 subnets across hosts, both ways, through the
  distributed router on each VM's host; the underlay carries 0 neighbour solicitations or
  advertisements (the routers hold static IPv6 neighbours).
- North-south: routed, never NATed, through the gateway namespace: ping6 VM -> outside client
  and back; the outside's TCP server sees the VM's own IPv6 address.
- Two tenants with the SAME IPv6 prefix: the outside reaches exactly the one its route names
  (a TCP server in each VM answers its own name), the other gets no answer; a router forwards
  nothing from the external network to a prefix that is not its own (isolation filter).
- `vxnet trace` of IPv6 paths (routed across hosts, to the outside) agrees with the packets,
  `--live` included.

The VMs' IPv6 addresses are configured statically (nodad): this test does not depend on RA or
DHCPv6. `PORT_SECURITY` True (the default): the ports keep port security (IPv6 source checks
on the host, docs/ipv6-dataplane.md) and their project's default group gets ingress ICMPv6 and
TCP 8081 from ::/0; False isolates a routing problem from the host's IPv6 filters.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.root.conftest import Lab, lab_session, needs_root
from tests.root.helpers import capture, nsexec, wait_for
from vxnet.compute.gateway import router_netns
from vxnet.compute.routing import netns_name
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

PORT_SECURITY = True
OUT = topology.EXTERNAL_NS
CLIENT6 = topology.EXTERNAL_CLIENT_IP6

SERVER6 = """
import socket, sys
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1]))); s.listen(64); print("ready", flush=True)
while True:
    c, a = s.accept()
    c.sendall(f"{sys.argv[2]} {a[0]}\\n".encode()); c.close()
"""
CLIENT = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print(s.recv(200).decode().strip())
except OSError as e:
    print("ERR", e)
"""


def ok(r: Any, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def ping6(ns: str, ip: str, count: int = 3, interval: float = 0.2) -> int:
    r = nsexec(ns, "ping", "-6", "-n", "-c", str(count), "-i", str(interval), "-W", "1", ip)
    m = re.search(r"(\d+) received", r.stdout)
    return int(m.group(1)) if m else 0


def ask(ns: str, ip: str, port: int = 8081, timeout: float = 2) -> str:
    return nsexec(ns, "python3", "-c", CLIENT, ip, str(port), str(timeout)).stdout.strip()


def serve(ns: str, port: int, name: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", SERVER6, str(port), name],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


@pytest.fixture(scope="module")
def v6lab(tmp_path_factory) -> Iterator[Lab]:
    with lab_session(tmp_path_factory, "v6lab", 2, wait_hosts={"h1", "h2", "h3"}, gateways=1, external=True) as g:
        g.servers.append(serve(OUT, 8080, "outside"))
        yield g


def public(g: Lab) -> dict[str, Any]:
    """The dual-stack external network (created once)."""
    with g.api("admin") as c:
        nets = ok(c.get("/networks", params={"name": "public"}))["networks"]
        if nets:
            return nets[0]
        net = ok(c.post("/networks", json={"network": {
            "name": "public", "router:external": True, "provider:network_type": "flat",
            "provider:physical_network": "external"}}), 201)["network"]
        ok(c.post("/subnets", json={"subnet": {
            "network_id": net["id"], "ip_version": 4, "cidr": "203.0.113.0/24",
            "gateway_ip": topology.EXTERNAL_GATEWAY_IP,
            "allocation_pools": [{"start": "203.0.113.10", "end": "203.0.113.99"}]}}), 201)
        ok(c.post("/subnets", json={"subnet": {
            "network_id": net["id"], "ip_version": 6, "cidr": topology.EXTERNAL_CIDR6, "enable_dhcp": False,
            "gateway_ip": topology.EXTERNAL_GATEWAY_IP6,
            "allocation_pools": [{"start": "2001:db8:ffff::10", "end": "2001:db8:ffff::99"}]}}), 201)
        return net


def network(g: Lab, user: str, name: str, cidr6: str, cidr4: str | None = None) -> tuple[dict, dict, dict | None]:
    """A network with an IPv6 subnet (static addressing) and optionally an IPv4 one."""
    with g.api(user) as c:
        net = ok(c.post("/networks", json={"network": {"name": name}}), 201)["network"]
        s6 = ok(c.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 6, "cidr": cidr6,
                                                    "enable_dhcp": False}}), 201)["subnet"]
        s4 = ok(c.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4, "cidr": cidr4}}),
                201)["subnet"] if cidr4 else None
    return net, s6, s4


def router(g: Lab, user: str, name: str, subnets: list[dict]) -> dict[str, Any]:
    ext = public(g)
    with g.api(user) as c:
        r = ok(c.post("/routers", json={"router": {"name": name, "external_gateway_info": {"network_id": ext["id"]}}}),
               201)["router"]
        for s in subnets:
            ok(c.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": s["id"]}))
        return ok(c.get(f"/routers/{r['id']}"))["router"]


def gw6(r: dict[str, Any]) -> str:
    return next(f["ip_address"] for f in r["external_gateway_info"]["external_fixed_ips"] if ":" in f["ip_address"])


def vm(g: Lab, user: str, name: str, host: str, net: dict, ips: list[tuple[dict, str]]) -> dict[str, Any]:
    """A VM with these fixed IPs (IPv6 configured statically in it); see PORT_SECURITY."""
    with g.api(user) as c:
        port = ok(c.post("/ports", json={"port": {
            "network_id": net["id"], "port_security_enabled": PORT_SECURITY,
            "fixed_ips": [{"subnet_id": s["id"], "ip_address": ip} for s, ip in ips]}}), 201)["port"]
        if PORT_SECURITY:
            sg = ok(c.get("/security-groups", params={"name": "default"}))["security_groups"][0]
            for rule in ({"protocol": "ipv6-icmp"}, {"protocol": "tcp", "port_range_min": 8081,
                                                     "port_range_max": 8081}):
                r = c.post("/security-group-rules", json={"security_group_rule": {
                    "security_group_id": sg["id"], "direction": "ingress", "ethertype": "IPv6",
                    "remote_ip_prefix": "::/0", **rule}})
                assert r.status_code in (201, 409), r.text
    g.vm(name, host, port)
    s6, ip6 = next((s, ip) for s, ip in ips if s["ip_version"] == 6)
    topology.vm_ipv6(name, f"{ip6}/{s6['cidr'].split('/')[1]}", s6["gateway_ip"])
    g.wait_status(port["id"], "ACTIVE")
    return port


def wait_router_ports(g: Lab, rid: str) -> None:
    """The router's gateway and centralized (snat) ports are up on the gateway host."""
    with g.api("admin") as c:
        ports = ok(c.get("/ports", params={"device_id": rid}))["ports"]
    for p in ports:
        if p["device_owner"] in ("network:router_gateway", "network:router_centralized_snat"):
            g.wait_status(p["id"], "ACTIVE", timeout=30)


@pytest.fixture(scope="module")
def alice(v6lab: Lab) -> dict[str, Any]:
    """alice: nets A (2001:db8:1::/64 + 192.0.2.0/24) and B (2001:db8:2::/64 + 100.64.2.0/24)
    behind router ra; a1 on h1 in A, a2 on h2 in B."""
    g = v6lab
    na, a6, a4 = network(g, "alice", "a", "2001:db8:1::/64", "192.0.2.0/24")
    nb, b6, b4 = network(g, "alice", "b", "2001:db8:2::/64", "100.64.2.0/24")
    ra = router(g, "alice", "ra", [a6, a4, b6, b4])   # type: ignore[list-item]
    a1 = vm(g, "alice", "a1", "h1", na, [(a4, "192.0.2.11"), (a6, "2001:db8:1::11")])   # type: ignore[list-item]
    a2 = vm(g, "alice", "a2", "h2", nb, [(b4, "100.64.2.12"), (b6, "2001:db8:2::12")])  # type: ignore[list-item]
    return {"router": ra, "a1": a1, "a2": a2, "net_a": na}


def test_ping6_routed_between_subnets_across_hosts_without_underlay_nd(v6lab: Lab, alice: dict) -> None:
    # a VM is ACTIVE once its own host is programmed; the other host's router learns it a moment later
    wait_for(lambda: ping6(topology.vm_ns("a1"), "2001:db8:2::12", 1) == 1)
    for vm in ("a1", "a2"):          # fresh neighbour caches in the VMs: each solicits its gateway again
        nsexec(topology.vm_ns(vm), "ip", "-6", "neigh", "flush", "all")
    with capture() as frames:
        assert ping6(topology.vm_ns("a1"), "2001:db8:2::12") == 3
        assert ping6(topology.vm_ns("a2"), "2001:db8:1::11") == 3
    echo = [f for f in frames if "ICMP6, echo request" in f]
    nd = [f for f in frames if "neighbor solicitation" in f or "neighbor advertisement" in f]
    assert len(echo) >= 6, frames       # the capture saw the routed traffic inside VXLAN
    assert nd == [], nd
    # the routed hop is really the router on the sender's host (hop limit decremented once)
    out = nsexec(topology.vm_ns("a1"), "ping", "-6", "-n", "-c", "1", "-W", "1", "2001:db8:2::12").stdout
    assert "ttl=63" in out or "hlim=63" in out, out
    # and IPv4 still routes on the same dual-stack router
    r = nsexec(topology.vm_ns("a1"), "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "100.64.2.12")
    assert " 0% packet loss" in r.stdout, r.stdout


def test_ping6_to_the_outside_and_back_routed_without_nat(v6lab: Lab, alice: dict) -> None:
    g = v6lab
    ra = alice["router"]
    wait_router_ports(g, ra["id"])
    for prefix in ("2001:db8:1::/64", "2001:db8:2::/64"):
        topology.outside_route6(prefix, gw6(ra))
    wait_for(lambda: ping6(topology.vm_ns("a1"), CLIENT6, 1) == 1)
    assert ping6(topology.vm_ns("a1"), CLIENT6) == 3
    assert ping6(topology.vm_ns("a2"), CLIENT6) == 3
    assert ping6(OUT, "2001:db8:1::11") == 3
    assert ping6(OUT, "2001:db8:2::12") == 3
    # no NAT: the outside sees the VM's own address, the VM sees the client's
    assert ask(topology.vm_ns("a1"), CLIENT6, 8080) == "outside 2001:db8:1::11"
    v6lab.servers.append(serve(topology.vm_ns("a1"), 8081, "a1"))  # type: ignore[attr-defined]
    assert ask(OUT, "2001:db8:1::11") == f"a1 {CLIENT6}"
    # the gateway namespace holds the isolation filter and IPv6 is not in its NAT table
    host = next(p["binding:host_id"] for p in _ports(g, ra["id"]) if p["device_owner"] == "network:router_gateway")
    ns = router_netns(ra["id"], host)
    assert "2001:db8:1::/64" in nsexec(ns, "nft", "list", "table", "ip6", "vxnet_v6").stdout
    assert "2001:db8" not in nsexec(ns, "nft", "list", "table", "ip", "vxnet_nat").stdout


def _ports(g: Lab, rid: str) -> list[dict[str, Any]]:
    with g.api("admin") as c:
        return ok(c.get("/ports", params={"device_id": rid}))["ports"]


def test_two_tenants_same_v6_prefix_outside_reaches_only_the_configured_one(v6lab: Lab, alice: dict) -> None:
    g = v6lab
    ra = alice["router"]
    nb, b6, _ = network(g, "bob", "bob-a", "2001:db8:1::/64")
    rb = router(g, "bob", "rb", [b6])
    vm(g, "bob", "b1", "h2", nb, [(b6, "2001:db8:1::11")])      # the same address as alice's a1
    wait_router_ports(g, rb["id"])
    wait_router_ports(g, ra["id"])
    g.servers.append(serve(topology.vm_ns("b1"), 8081, "b1"))  # type: ignore[attr-defined]
    if not any("a1" in " ".join(p.args) for p in g.servers):   # type: ignore[attr-defined]
        g.servers.append(serve(topology.vm_ns("a1"), 8081, "a1"))  # type: ignore[attr-defined]

    # The outside routes the prefix to alice's router: only a1 answers, b1 gets nothing back.
    topology.outside_route6("2001:db8:1::/64", gw6(ra))
    wait_for(lambda: ask(OUT, "2001:db8:1::11", timeout=0.5) == f"a1 {CLIENT6}")
    for _ in range(3):
        assert ask(OUT, "2001:db8:1::11") == f"a1 {CLIENT6}"
    assert ping6(topology.vm_ns("b1"), CLIENT6, 2) == 0      # the replies go to alice's router, and die there
    assert ping6(topology.vm_ns("a1"), CLIENT6, 2) == 2

    # Re-pointed at bob's router: only b1 answers.
    topology.outside_route6("2001:db8:1::/64", gw6(rb))
    wait_for(lambda: ask(OUT, "2001:db8:1::11", timeout=0.5) == f"b1 {CLIENT6}")
    assert ping6(topology.vm_ns("b1"), CLIENT6, 2) == 2
    assert ping6(topology.vm_ns("a1"), CLIENT6, 2) == 0

    # No way between the tenants: bob's router forwards nothing from outside to alice's other
    # prefix (isolation filter), even when the outside routes it there.
    host = next(p["binding:host_id"] for p in _ports(g, rb["id"]) if p["device_owner"] == "network:router_gateway")
    ns = router_netns(rb["id"], host)

    def dropped() -> int:
        text = nsexec(ns, "nft", "list", "table", "ip6", "vxnet_v6").stdout
        return sum(int(n) for n in re.findall(r"ip6 daddr != .* counter packets (\d+)", text))

    before = dropped()
    topology.outside_route6("2001:db8:2::/64", gw6(rb))
    assert ping6(OUT, "2001:db8:2::12", 3) == 0
    assert dropped() >= before + 3
    assert "2001:db8:2" not in nsexec(ns, "ip", "-6", "route").stdout    # bob's router has no route there
    topology.outside_route6("2001:db8:2::/64", gw6(ra))
    assert ping6(OUT, "2001:db8:2::12", 2) == 2
    topology.outside_route6("2001:db8:1::/64", gw6(ra))


def _trace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "vxnet"), "trace", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_trace_v6_paths_agree_with_the_packets(v6lab: Lab, alice: dict) -> None:
    assert ping6(topology.vm_ns("a1"), "2001:db8:2::12", 1) == 1
    t = _trace("--from", "a1", "--to", "2001:db8:2::12", "--live")
    assert t.returncode == 0, t.stdout + t.stderr
    assert "verdict: DELIVERED" in t.stdout and "connected 2001:db8:2::/64" in t.stdout, t.stdout
    assert "static neighbour 2001:db8:2::12" in t.stdout and "DRIFT" not in t.stdout, t.stdout
    topology.outside_route6("2001:db8:1::/64", gw6(alice["router"]))
    assert ping6(topology.vm_ns("a1"), CLIENT6, 1) == 1
    t = _trace("--from", "a1", "--to", CLIENT6, "--live")
    assert t.returncode == 0, t.stdout + t.stderr
    assert "verdict: LEAVES" in t.stdout and "no NAT for IPv6" in t.stdout and "DRIFT" not in t.stdout, t.stdout
    t = _trace("--from", CLIENT6, "--to", "2001:db8:2::12")
    assert t.returncode == 0 and "verdict: DELIVERED" in t.stdout, t.stdout + t.stderr


def test_v6_pair_vip_reached_routed_from_another_host(v6lab: Lab, alice: dict) -> None:
    """A single-address IPv6 allowed-address pair (a VIP) of a1 (h1) is reached from a2 (h2, the
    other subnet): the router on h2 holds a static neighbour for it (neighbour discovery does not
    cross the underlay), and h1's bridge a suppression entry with a1's MAC."""
    g, a1 = v6lab, alice["a1"]
    vip = "2001:db8:1::50"
    ns1 = topology.vm_ns("a1")
    with g.api("alice") as c:
        ok(c.put(f"/ports/{a1['id']}", json={"port": {"allowed_address_pairs": [{"ip_address": vip}]}}))
    # deprecated: the VM answers for it but never picks it as a source of its own
    assert nsexec(ns1, "ip", "-6", "addr", "add", f"{vip}/64", "dev", "eth0", "nodad", "preferred_lft", "0").returncode == 0
    try:
        rns = netns_name(alice["router"]["id"], "h2")       # the distributed router on h2
        wait_for(lambda: a1["mac_address"] in nsexec(rns, "ip", "-6", "neigh", "show", vip).stdout, timeout=15)
        assert "PERMANENT" in nsexec(rns, "ip", "-6", "neigh", "show", vip).stdout
        bridge = nsexec(topology.host_ns(1), "ip", "-6", "neigh", "show", vip).stdout
        assert a1["mac_address"] in bridge and "PERMANENT" in bridge, bridge
        wait_for(lambda: ping6(topology.vm_ns("a2"), vip, 1) == 1)
        assert ping6(topology.vm_ns("a2"), vip) == 3
    finally:
        nsexec(ns1, "ip", "-6", "addr", "del", f"{vip}/64", "dev", "eth0")
        with g.api("alice") as c:
            ok(c.put(f"/ports/{a1['id']}", json={"port": {"allowed_address_pairs": []}}))
