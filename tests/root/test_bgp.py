"""BGP to the physical network, real FRR daemons: `vxnet lab up --hosts 1 --gateways 2 --external
--bgp` (h2, h3 are gateway hosts, each agent drives one bgpd of AS 64512; the outside namespace
runs the upstream router, AS 64500, which accepts them over the management network).

- Both gateway hosts peer with the upstream router.
- A floating IP's /32 is learned by the upstream router with the router's gateway address as
  next hop, from the gateway host that serves the router; disassociated: withdrawn;
  associated again: back; a router without SNAT (admin only) has its subnet in the external
  network's address scope announced too, never a subnet outside it.
- The agent restarts: its bgpd is adopted (same pid, one bgpd), the route never disappears
  (it may move to the other gateway host when the re-registration rebalances the router).
- The serving gateway host dies (its agent and bgpd SIGKILLed, its namespaces removed): the
  router moves to the other gateway host and the announcement moves with it (learned from the
  other peer, same next hop), and the floating IP answers from the outside again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.root.conftest import Lab, lab_session, needs_root
from tests.root.test_gateway import (
    OUT,
    external_network,
    gateway_ip,
    ok,
    router_ports,
    tenant_router,
    wait_for,
)
from vxnet.lab import bgp as lab_bgp
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

LEASE = 4


@pytest.fixture(scope="module")
def blab(tmp_path_factory) -> Iterator[Lab]:
    with lab_session(tmp_path_factory, "blab", 1, lease=LEASE, gateways=2, external=True, bgp=True,
                     wait_hosts={"h1", "h2", "h3"}) as g:
        scoped_public(g)
        yield g


def scoped_public(g: Lab) -> None:
    """The external network `public` with its subnet from a pool of address scope S, and a
    shared pool of tenant addresses (100.64.90.0/23) in the same scope: what an operator makes
    routable outside (what the gateways may announce for a router without SNAT)."""
    with g.api("admin") as c:
        scope = ok(c.post("/address-scopes", json={"address_scope": {"name": "S", "ip_version": 4, "shared": True}}),
                   201)["address_scope"]
        ext_pool = ok(c.post("/subnetpools", json={"subnetpool": {
            "name": "ext", "prefixes": ["203.0.113.0/24"], "address_scope_id": scope["id"]}}), 201)["subnetpool"]
        ok(c.post("/subnetpools", json={"subnetpool": {
            "name": "routable", "prefixes": ["100.64.90.0/23"], "default_prefixlen": 24, "shared": True,
            "address_scope_id": scope["id"]}}), 201)
        net = ok(c.post("/networks", json={"network": {
            "name": "public", "router:external": True, "provider:network_type": "flat",
            "provider:physical_network": "external"}}), 201)["network"]
        ok(c.post("/subnets", json={"subnet": {
            "network_id": net["id"], "ip_version": 4, "cidr": "203.0.113.0/24", "subnetpool_id": ext_pool["id"],
            "gateway_ip": topology.EXTERNAL_GATEWAY_IP,
            "allocation_pools": [{"start": "203.0.113.10", "end": "203.0.113.99"}]}}), 201)


def mgmt(host: str) -> str:
    return topology.mgmt_ip(int(host[1:]))


def learned(g: Lab, prefix: str) -> list[tuple[str, str]]:
    """(next hop, peer) of the upstream router's valid paths for `prefix`."""
    return sorted((p["nexthop"], p["peer"]) for p in lab_bgp.routes(g.state_dir).get(prefix, []))


def icmp_floating_ip(g: Lab, user: str, port: dict) -> dict:
    """A floating IP on `public` for `port`, with ICMP from the external subnet allowed in
    `user`'s default security group (a rule already there is fine), so the outside can ping it."""
    ext = external_network(g)
    with g.api(user) as c:
        sg = ok(c.get("/security-groups", params={"name": "default"}))["security_groups"][0]
        rr = c.post("/security-group-rules", json={"security_group_rule": {
            "security_group_id": sg["id"], "direction": "ingress", "ethertype": "IPv4", "protocol": "icmp",
            "remote_ip_prefix": "203.0.113.0/24"}})
        assert rr.status_code in (201, 409), rr.text
        return ok(c.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"],
                                                              "port_id": port["id"]}}), 201)["floatingip"]


def vm_with_icmp_floating_ip(g: Lab, vm: str, cidr: str, router: str, ip: str) -> tuple[dict, dict, dict]:
    """Alice's VM `vm` on h1 at `ip`, in a new network `cidr` behind a new router `router`
    (gateway on `public`), its port ACTIVE, with an `icmp_floating_ip`: (router, port, floating IP)."""
    net, _, r = tenant_router(g, "alice", cidr, router)
    p = g.port("alice", net["id"], ip)
    g.vm(vm, "h1", p)
    g.wait_status(p["id"], "ACTIVE", timeout=20)
    return r, p, icmp_floating_ip(g, "alice", p)


def pings_from_outside(addr: str) -> bool:
    """One ping from the outside namespace to `addr` is answered (within 0.5 s)."""
    return subprocess.run(["ip", "netns", "exec", OUT, "ping", "-c", "1", "-W", "0.5", addr],
                          capture_output=True, check=False).returncode == 0


def test_both_gateways_peer_with_the_upstream_router(blab: Lab) -> None:
    wait_for(lambda: lab_bgp.peers(blab.state_dir) == {mgmt("h2"): "Established",
                                                       mgmt("h3"): "Established"}, timeout=30, interval=0.2)


def test_floating_ip_announced_by_its_gateway_and_withdrawn(blab: Lab) -> None:
    g = blab
    net, _, r = tenant_router(g, "alice", "100.64.92.0/24", "bgp")      # not in the external scope
    with g.api("alice") as c:                                           # and one in it
        pool = ok(c.get("/subnetpools", params={"name": "routable"}))["subnetpools"][0]
        snet = ok(c.post("/networks", json={"network": {"name": "routable"}}), 201)["network"]
        ssub = ok(c.post("/subnets", json={"subnet": {"network_id": snet["id"], "ip_version": 4,
                                                      "subnetpool_id": pool["id"]}}), 201)["subnet"]
        ok(c.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": ssub["id"]}))
    p = g.port("alice", net["id"], "100.64.92.11")
    g.vm("b1", "h1", p)
    host = router_ports(g, r["id"], "network:router_gateway")[0]["binding:host_id"]
    gw = gateway_ip(r)
    ext = external_network(g)
    with g.api("alice") as c:
        fip = ok(c.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"], "port_id": p["id"]}}),
                 201)["floatingip"]
    addr = f"{fip['floating_ip_address']}/32"
    took = wait_for(lambda: learned(g, addr) == [(gw, mgmt(host))], timeout=20)
    print(f"\nfloating IP associated -> learned by the upstream router: {took * 1000:.0f} ms")
    with g.api("alice") as c:
        ok(c.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": None}}))
    took = wait_for(lambda: learned(g, addr) == [], timeout=20)
    print(f"floating IP disassociated -> withdrawn at the upstream router: {took * 1000:.0f} ms")
    assert set(lab_bgp.routes(g.state_dir)) == set()          # nothing else
    with g.api("alice") as c:
        ok(c.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": p["id"]}}))
    wait_for(lambda: learned(g, addr) == [(gw, mgmt(host))], timeout=20)
    # a router without SNAT (admin only): its subnet in the external network's address scope is
    # announced via its gateway address, its other subnet (the tenant's own range) never
    with g.api("alice") as c:
        assert c.put(f"/routers/{r['id']}", json={"router": {"external_gateway_info": {
            "network_id": ext["id"], "enable_snat": False}}}).status_code == 403
    with g.api("admin") as c:
        ok(c.put(f"/routers/{r['id']}", json={"router": {"external_gateway_info": {
            "network_id": ext["id"], "enable_snat": False}}}))
    wait_for(lambda: learned(g, ssub["cidr"]) == [(gw, mgmt(host))], timeout=20)
    assert learned(g, "100.64.92.0/24") == []
    with g.api("admin") as c:
        ok(c.put(f"/routers/{r['id']}", json={"router": {"external_gateway_info": {
            "network_id": ext["id"], "enable_snat": True}}}))
    wait_for(lambda: learned(g, ssub["cidr"]) == [], timeout=20)
    # the upstream router's kernel is not touched (no zebra): only the BGP table changed
    routes = subprocess.run(["ip", "-n", OUT, "route"], capture_output=True, text=True, check=False).stdout
    assert fip["floating_ip_address"] not in routes


def test_agent_restart_keeps_the_announcement(blab: Lab) -> None:
    """The agent restarts (stop, start): its bgpd keeps running and is adopted (same pid, no
    second one), and the upstream router never loses the floating IP's route."""
    from vxnet.lab import lab

    g = blab
    net, _, r = tenant_router(g, "alice", "100.64.93.0/24", "rs")
    p = g.port("alice", net["id"], "100.64.93.11")
    ext = external_network(g)
    with g.api("alice") as c:
        fip = ok(c.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"], "port_id": p["id"]}}),
                 201)["floatingip"]
    host, gw = router_ports(g, r["id"], "network:router_gateway")[0]["binding:host_id"], gateway_ip(r)
    prefix = f"{fip['floating_ip_address']}/32"
    wait_for(lambda: learned(g, prefix) == [(gw, mgmt(host))], timeout=20)
    pid_file = os.path.join(lab_bgp.bgp_dir(g.state_dir, host), "bgpd.pid")
    with open(pid_file) as f:
        before = int(f.read())
    st = lab.load_state()
    with g.api("admin") as c:
        started = lambda: c.get("/agents", params={"host": host}).json()["agents"][0]["started_at"]
        old = started()
        lab.stop_agent(st, host)
        lab.start_agent(lab.load_state(), host)
        seen = []
        deadline = time.time() + 60
        while started() == old and time.time() < deadline:
            seen.append(learned(g, prefix))
        assert started() != old, "the agent did not register again"
    for _ in range(20):                      # and a while with the new agent
        seen.append(learned(g, prefix))
    # Never missing, always via the router's gateway address (a restart within the lease does
    # not rebalance: the router stays on this host).
    bad = [s for s in seen if not s or any(hop != gw for hop, _ in s)]
    assert seen and not bad, bad[:3]
    wait_for(lambda: len(learned(g, prefix)) == 1, timeout=20)     # one speaker again
    with open(pid_file) as f:
        assert int(f.read()) == before
    bgpds = subprocess.run(["ip", "netns", "pids", topology.host_ns(int(host[1:]))], capture_output=True, text=True,
                           check=False).stdout.split()
    names = []
    for q in bgpds:
        try:
            with open(f"/proc/{q}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    assert names.count("bgpd") == 1, names


def test_announcement_moves_with_the_router(blab: Lab) -> None:
    from vxnet.lab import lab

    g = blab
    r, _, fip = vm_with_icmp_floating_ip(g, "m1", "100.64.91.0/24", "mv", "100.64.91.11")
    addr, gw = fip["floating_ip_address"], gateway_ip(r)
    victim = router_ports(g, r["id"], "network:router_gateway")[0]["binding:host_id"]
    other = ({"h2", "h3"} - {victim}).pop()
    wait_for(lambda: learned(g, f"{addr}/32") == [(gw, mgmt(victim))], timeout=20)
    wait_for(lambda: pings_from_outside(addr), timeout=20)
    # the host dies: its agent and its bgpd (by their pids), and its namespaces
    st = lab.load_state()
    t0 = time.time()
    lab.stop_agent(st, victim, signal.SIGKILL)
    with open(os.path.join(lab_bgp.bgp_dir(g.state_dir, victim), "bgpd.pid")) as f:
        os.kill(int(f.read().strip()), signal.SIGKILL)
    for ns in os.listdir("/run/netns"):
        if ns.startswith("vxs-") and ns.endswith("-" + victim):
            subprocess.run(["ip", "netns", "del", ns], check=False)
    wait_for(lambda: learned(g, f"{addr}/32") == [(gw, mgmt(other))], timeout=LEASE + 30, interval=0.1)
    moved = time.time() - t0
    wait_for(lambda: pings_from_outside(addr), timeout=20)
    # (a killed bgpd's socket is closed by the kernel: the session ends at once; a host that
    # vanishes would keep its routes until the hold time, 9 s, expires)
    print(f"\ngateway {victim} killed: the upstream router learns {addr}/32 from {other} only after {moved:.1f} s "
          f"(lease {LEASE} s)")
    assert router_ports(g, r["id"], "network:router_gateway")[0]["binding:host_id"] == other
    with g.api("admin") as c:
        assert json.dumps(ok(c.get(f"/floatingips/{fip['id']}"))["floatingip"]["status"]) == '"ACTIVE"'
    lab.start_agent(lab.load_state(), victim)
