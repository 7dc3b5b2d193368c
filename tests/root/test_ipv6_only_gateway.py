"""A router whose external network has only an IPv6 subnet (no IPv4 anywhere on the path):
`vxnet lab up --hosts 1 --gateways 1 --external`, an external flat network with only
2001:db8:ffff::/64, a tenant network with only 2001:db8:5::/64. The gateway host builds the
router's namespace (its qg- leg holds the IPv6 gateway address only, ::/0 via the external
subnet's gateway, no SNAT), and real ping6 and TCP go VM -> outside and back, routed, without
NAT; `vxnet doctor` reports a deleted static IPv6 neighbour of the namespace and repairs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.root.conftest import Lab, lab_session, needs_root
from tests.root.helpers import nsexec, wait_for
from tests.root.test_ipv6_routing import CLIENT6, OUT, ask, ok, ping6, serve, wait_router_ports
from vxnet.compute.gateway import router_netns
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]


def _doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "vxnet"), "doctor", *args],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def lab6(tmp_path_factory) -> Iterator[Lab]:
    with lab_session(tmp_path_factory, "v6gw", 1, wait_hosts={"h1", "h2"}, gateways=1, external=True) as g:
        yield g


def test_ipv6_only_external_network_routes_north_south(lab6: Lab) -> None:
    g = lab6
    with g.api("admin") as c:
        ext = ok(c.post("/networks", json={"network": {
            "name": "public6", "router:external": True, "provider:network_type": "flat",
            "provider:physical_network": "external"}}), 201)["network"]
        ok(c.post("/subnets", json={"subnet": {
            "network_id": ext["id"], "ip_version": 6, "cidr": topology.EXTERNAL_CIDR6, "enable_dhcp": False,
            "gateway_ip": topology.EXTERNAL_GATEWAY_IP6,
            "allocation_pools": [{"start": "2001:db8:ffff::10", "end": "2001:db8:ffff::99"}]}}), 201)
    with g.api("alice") as c:
        net = ok(c.post("/networks", json={"network": {"name": "v6only"}}), 201)["network"]
        s6 = ok(c.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 6,
                                                    "cidr": "2001:db8:5::/64", "enable_dhcp": False}}), 201)["subnet"]
        r = ok(c.post("/routers", json={"router": {"name": "r6", "external_gateway_info": {"network_id": ext["id"]}}}),
               201)["router"]
        ok(c.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": s6["id"]}))
        r = ok(c.get(f"/routers/{r['id']}"))["router"]
        gw = [f["ip_address"] for f in r["external_gateway_info"]["external_fixed_ips"]]
        assert len(gw) == 1 and ":" in gw[0], gw
        port = ok(c.post("/ports", json={"port": {"network_id": net["id"], "name": "v1",
                                                  "fixed_ips": [{"subnet_id": s6["id"], "ip_address": "2001:db8:5::11"}]}}),
                  201)["port"]
        sg = ok(c.get("/security-groups", params={"name": "default"}))["security_groups"][0]
        for rule in ({"protocol": "ipv6-icmp"}, {"protocol": "tcp", "port_range_min": 8081, "port_range_max": 8081}):
            rr = c.post("/security-group-rules", json={"security_group_rule": {
                "security_group_id": sg["id"], "direction": "ingress", "ethertype": "IPv6",
                "remote_ip_prefix": "::/0", **rule}})
            assert rr.status_code in (201, 409), rr.text
    g.vm("v1", "h1", port)
    topology.vm_ipv6("v1", "2001:db8:5::11/64", s6["gateway_ip"])
    g.wait_status(port["id"], "ACTIVE")
    wait_router_ports(g, r["id"])
    topology.outside_route6("2001:db8:5::/64", gw[0])

    servers = [serve(OUT, 8080, "outside")]
    try:
        wait_for(lambda: ping6(topology.vm_ns("v1"), CLIENT6, 1) == 1, timeout=20)
        assert ping6(topology.vm_ns("v1"), CLIENT6) == 3
        assert ping6(OUT, "2001:db8:5::11") == 3
        assert ask(topology.vm_ns("v1"), CLIENT6, 8080) == "outside 2001:db8:5::11"       # not NATed
        servers.append(serve(topology.vm_ns("v1"), 8081, "v1"))
        assert ask(OUT, "2001:db8:5::11") == f"v1 {CLIENT6}"
        # the namespace: the IPv6 gateway address only, ::/0 and no IPv4 default, no SNAT rule
        with g.api("admin") as c:
            host = next(p["binding:host_id"] for p in ok(c.get("/ports", params={"device_id": r["id"]}))["ports"]
                        if p["device_owner"] == "network:router_gateway")
        ns = router_netns(r["id"], host)
        qg = "qg-" + r["id"][:11]
        assert f"inet6 {gw[0]}/64" in nsexec(ns, "ip", "-6", "addr", "show", "dev", qg).stdout
        assert "inet " not in nsexec(ns, "ip", "-4", "addr", "show", "dev", qg).stdout
        assert f"default via {topology.EXTERNAL_GATEWAY_IP6}" in nsexec(ns, "ip", "-6", "route").stdout
        assert "default" not in nsexec(ns, "ip", "-4", "route").stdout
        assert "snat" not in nsexec(ns, "nft", "list", "table", "ip", "vxnet_nat").stdout
        # `vxnet doctor` checks the gateway's static IPv6 neighbours: one deleted is reported
        # (a namespace's neighbour table is not watched: only the 30 s resync would see it), and
        # --repair puts it back.
        assert _doctor().returncode == 0
        leg = next(e["dev"] for e in json.loads(nsexec(ns, "ip", "-j", "-6", "neigh", "show", "2001:db8:5::11").stdout)
                   if e["dev"].startswith("sg-"))
        assert nsexec(ns, "ip", "-6", "neigh", "del", "2001:db8:5::11", "dev", leg).returncode == 0
        seen = _doctor("--json")
        assert seen.returncode == 1, seen.stdout + seen.stderr
        drift = json.loads(seen.stdout)["results"][host]["drift"]
        assert [(d["kind"], d["object"], d["found"]) for d in drift] == [("ns-neighs", f"{ns} {leg} 2001:db8:5::11", None)]
        fixed = _doctor("--repair", "--json")
        assert fixed.returncode == 0 and json.loads(fixed.stdout)["results"][host]["after_repair"] == [], fixed.stdout
        assert "PERMANENT" in nsexec(ns, "ip", "-6", "neigh", "show", "2001:db8:5::11").stdout
    finally:
        for p in servers:
            p.kill()
            p.wait()
