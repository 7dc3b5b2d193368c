"""The physical network side of gateways, real packets: `vxnet lab up --hosts 2 --gateways 1
--external --external2` (h3 is the gateway host; vxl-x is the outside of physical network
`external` on its vxlext0, vxl-x2 the outside of `external2` on its vxlext1).

- Hairpin: a VM reaches another VM's floating IP of the same router, and its own, through the
  gateway namespace (DNAT + hairpin SNAT); a VM behind another router reaches it too (out on the
  external segment and back in). The server VM sees the sender's floating IP (or the router's
  gateway address when the sender has none), and the answer comes back from the floating IP.
- Floating IP status: DOWN when created, ACTIVE once the serving gateway programmed it (the
  agent reports it), DOWN when disassociated.
- Two external networks on different physical networks served by one gateway host: a router
  on each, each VM reaches its own outside (and is seen with its router's address there), a
  floating IP on the second network answers from the second outside only. A VLAN external
  network is accepted by the API and refused by the agent (no 802.1Q in this kernel): its
  router's gateway port stays DOWN and `vxnet status` says why.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.root.conftest import Lab, lab_session, needs_root
from tests.root.test_gateway import (
    CLIENT,
    OUT,
    allow_outside,
    ask,
    external_network,
    gateway_ip,
    ok,
    outside_vm,
    serve,
    tenant_router,
    vm_behind,
    wait_for,
)
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

PHYS2, OUT2, CLIENT2, GW2 = topology.SEGMENTS[1]


@pytest.fixture(scope="module")
def xlab(tmp_path_factory) -> Iterator[Lab]:
    with lab_session(tmp_path_factory, "xlab", 2, gateways=1, external=True, external2=True,
                     wait_hosts={"h1", "h2", "h3"}) as g:
        g.servers.append(serve(OUT, 8080, "outside"))
        g.servers.append(serve(OUT2, 8080, "outside2"))
        yield g


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
        g.servers.append(serve(topology.vm_ns(vm), 8081, vm))
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
                          fb["floating_ip_address"]], capture_output=True, text=True, check=False)
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
    _, p = outside_vm(g, "s1", "h1", "100.64.72.0/24", "st", "100.64.72.11")
    ext = external_network(g)
    with g.api("alice") as c:
        fip = ok(c.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"]}}), 201)["floatingip"]
        assert fip["status"] == "DOWN"
        up = ok(c.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": p["id"]}}))["floatingip"]
    assert up["status"] == "DOWN"                 # not the API's to say
    took = wait_for(lambda: fip_status(g, fip["id"]) == "ACTIVE", timeout=20)
    print(f"\nfloating IP associated -> ACTIVE (reported by the gateway): {took * 1000:.0f} ms")
    assert subprocess.run(["ip", "netns", "exec", OUT, "ping", "-c", "1", "-W", "2", fip["floating_ip_address"]],
                          capture_output=True, check=False).returncode == 0
    with g.api("alice") as c:
        ok(c.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": None}}))
    assert fip_status(g, fip["id"]) == "DOWN"
    time.sleep(1)                                 # and no agent report turns it ACTIVE again
    assert fip_status(g, fip["id"]) == "DOWN"


def second_external(g: Lab) -> dict:
    with g.api("admin") as c:
        net = ok(c.post("/networks", json={"network": {
            "name": "public2", "router:external": True, "provider:network_type": "flat",
            "provider:physical_network": PHYS2}}), 201)["network"]
        ok(c.post("/subnets", json={"subnet": {
            "network_id": net["id"], "ip_version": 4, "cidr": "100.127.254.0/24", "gateway_ip": GW2,
            "allocation_pools": [{"start": "100.127.254.10", "end": "100.127.254.99"}]}}), 201)
    return net


def test_two_external_networks_on_two_physical_networks(xlab: Lab) -> None:
    g = xlab
    # a tenant may not choose the physical network (Neutron: admin only)
    with g.api("alice") as c:
        r = c.post("/networks", json={"network": {"name": "mine", "router:external": False,
                                                  "provider:network_type": "flat", "provider:physical_network": PHYS2}})
        assert r.status_code == 403, r.text
    ext2 = second_external(g)
    n1, _, r1 = tenant_router(g, "alice", "100.64.80.0/24", "x1")          # on `public` (external)
    n2, _, _ = tenant_router(g, "bob", "100.64.81.0/24", "x2")
    with g.api("bob") as c:                                                # bob's router: on public2
        rid2 = ok(c.get("/routers", params={"name": "x2"}))["routers"][0]["id"]
        r2 = ok(c.put(f"/routers/{rid2}", json={"router": {"external_gateway_info": {"network_id": ext2["id"]}}}))[
            "router"]
    assert gateway_ip(r2).startswith("100.127.254.")
    p1 = g.port("alice", n1["id"], "100.64.80.11")
    p2 = g.port("bob", n2["id"], "100.64.81.11")
    vm_behind(g, "x1", "h1", p1, r1["id"], via_snat=False)
    vm_behind(g, "x2", "h2", p2, r2["id"], via_snat=False)
    # each reaches its own outside, seen there with its own router's address
    wait_for(lambda: ask(topology.vm_ns("x1"), CLIENT, 8080, 0.5) == f"outside {gateway_ip(r1)}", timeout=20)
    wait_for(lambda: ask(topology.vm_ns("x2"), CLIENT2, 8080, 0.5) == f"outside2 {gateway_ip(r2)}", timeout=20)
    # and not the other one (different physical networks: no path between them)
    assert ask(topology.vm_ns("x2"), CLIENT, 8080, 1).startswith("ERR")
    assert ask(topology.vm_ns("x1"), CLIENT2, 8080, 1).startswith("ERR")
    # a floating IP on the second network answers from the second outside only
    with g.api("bob") as c:
        sg = ok(c.get("/security-groups", params={"name": "default"}))["security_groups"][0]
        rr = c.post("/security-group-rules", json={"security_group_rule": {
            "security_group_id": sg["id"], "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
            "port_range_min": 8081, "port_range_max": 8081, "remote_ip_prefix": "100.127.254.0/24"}})
        assert rr.status_code in (201, 409), rr.text
        fip = ok(c.post("/floatingips", json={"floatingip": {"floating_network_id": ext2["id"],
                                                             "port_id": p2["id"]}}), 201)["floatingip"]
    g.servers.append(serve(topology.vm_ns("x2"), 8081, "x2"))
    addr = fip["floating_ip_address"]
    assert addr.startswith("100.127.254.")
    wait_for(lambda: ask(OUT2, addr, 8081, 0.5) == f"x2 {CLIENT2}", timeout=20)
    wait_for(lambda: fip_status(g, fip["id"]) == "ACTIVE", timeout=20)
    assert ask(topology.vm_ns("x2"), CLIENT2, 8080) == f"outside2 {addr}"
    assert ask(OUT, addr, 8081, 1).startswith("ERR")
    # one gateway host serves both, each interface in its own network's bridge
    links = subprocess.run(["ip", "-n", topology.host_ns(3), "-o", "link"], capture_output=True, text=True, check=False).stdout
    masters = {ln.split(":")[1].strip().split("@")[0]: ln.split(" master ")[1].split()[0]
               for ln in links.splitlines() if " master " in ln and "vxlext" in ln}
    from vxnet.compute import naming
    ext1 = external_network(g)
    assert masters == {"vxlext0": naming.bridge_name(ext1["id"]), "vxlext1": naming.bridge_name(ext2["id"])}, masters


def test_vlan_external_network_refused_by_the_agent_with_its_reason(xlab: Lab) -> None:
    g = xlab
    with g.api("admin") as c:
        net = ok(c.post("/networks", json={"network": {
            "name": "public-vlan", "router:external": True, "provider:network_type": "vlan",
            "provider:physical_network": PHYS2, "provider:segmentation_id": 101}}), 201)["network"]
        ok(c.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                               "cidr": "100.127.253.0/24"}}), 201)
        rtr = ok(c.post("/routers", json={"router": {"name": "vl", "external_gateway_info": {
            "network_id": net["id"]}}}), 201)["router"]
        gw = ok(c.get("/ports", params={"device_id": rtr["id"], "device_owner": "network:router_gateway"}))["ports"][0]
    assert gw["binding:host_id"] == "h3"

    def reason() -> str:
        with g.api("admin") as c:
            hosts = ok(c.get("/vxnet/status"))["status"]["hosts"]
        h3 = next(h for h in hosts if h["host"] == "h3")
        return " ".join(h3.get("failing") or [])
    wait_for(lambda: "802.1Q" in reason(), timeout=20)
    assert f"external network {net['id']}" in reason() and "VLAN 101 on physical network external2" in reason()
    with g.api("admin") as c:
        assert ok(c.get(f"/ports/{gw['id']}"))["port"]["status"] == "DOWN"
        # the other external networks keep working: remove it and the host is clean again
        ok(c.put(f"/routers/{rtr['id']}", json={"router": {"external_gateway_info": {}}}))
        assert c.delete(f"/routers/{rtr['id']}").status_code == 204
        assert c.delete(f"/networks/{net['id']}").status_code == 204
    wait_for(lambda: "802.1Q" not in reason(), timeout=40)
