"""The router hijack (issue 13, item 1) on real namespaces: refused by the API, absent from every host.

Alice has network A 192.0.2.0/24 behind her router r, VM a1@h1 on it. Bob has his own network
X 100.64.1.0/24 and VM x1@h2 on it. Bob tries to put X's gateway address on alice's router:

- a port on X with `device_owner: network:router_interface` (and the other router owners) and
  `device_id: <r>` -> 409 DeviceIDNotOwnedByTenant; the same through a port update -> 409;
- `add_router_interface` on r with his subnet -> 404 (he cannot see r).

Then, with both VMs ACTIVE and r's namespace on h1 holding A's leg (so the agents have applied
everything the store holds), no router namespace on any host has an address in X, r has only
A's interface, and x1 cannot reach a1 nor A's gateway (real pings), while a1 reaches its own
gateway (the router is up: the negative results are not a dead lab).
"""

from __future__ import annotations

import ipaddress
import os

import pytest

from tests.root.conftest import Lab, needs_root
from tests.root.helpers import nsexec, ping, wait_for
from vxnet.compute import naming
from vxnet.compute.routing import netns_name, service_port
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

A_CIDR, X_CIDR = "192.0.2.0/24", "100.64.1.0/24"
A1, X1 = "192.0.2.11", "100.64.1.11"
HOSTS = ("h1", "h2", "h3")


def router_namespaces() -> list[str]:
    return sorted(n for n in os.listdir("/run/netns") if n.startswith("vxr-"))


def addresses(ns: str) -> list[str]:
    out = nsexec(ns, "ip", "-o", "addr").stdout
    return [line.split()[3] for line in out.splitlines() if " inet " in line]


def test_bob_cannot_put_his_subnet_on_alices_router(lab3: Lab) -> None:
    na, sa = lab3.network("alice", A_CIDR, "A")
    nx, sx = lab3.network("bob", X_CIDR, "X")
    with lab3.api("alice") as alice:
        r = alice.post("/routers", json={"router": {"name": "r"}})
        assert r.status_code == 201, r.text
        router = r.json()["router"]
        r = alice.put(f"/routers/{router['id']}/add_router_interface", json={"subnet_id": sa["id"]})
        assert r.status_code == 200, r.text
        iface_a = r.json()["port_id"]

    with lab3.api("bob") as bob:
        for owner in ("network:router_interface", "network:router_interface_distributed", "network:router_gateway"):
            r = bob.post("/ports", json={"port": {"network_id": nx["id"], "device_owner": owner,
                                                  "device_id": router["id"],
                                                  "fixed_ips": [{"ip_address": sx["gateway_ip"]}]}})
            assert r.status_code == 409, r.text
            assert r.json()["NeutronError"]["type"] == "DeviceIDNotOwnedByTenant"
        r = bob.post("/ports", json={"port": {"network_id": nx["id"], "fixed_ips": [{"ip_address": sx["gateway_ip"]}]}})
        assert r.status_code == 201, r.text
        leg = r.json()["port"]
        r = bob.put(f"/ports/{leg['id']}", json={"port": {"device_owner": "network:router_interface",
                                                          "device_id": router["id"]}})
        assert r.status_code == 409, r.text
        assert r.json()["NeutronError"]["type"] == "DeviceIDNotOwnedByTenant"
        r = bob.put(f"/routers/{router['id']}/add_router_interface", json={"subnet_id": sx["id"]})
        assert r.status_code == 404, r.text
        # the address stays his plain port's: free it so nothing but r could answer there
        assert bob.delete(f"/ports/{leg['id']}").status_code == 204

    with lab3.api("admin") as admin:
        legs = admin.get("/ports", params={"device_id": router["id"]}).json()["ports"]
    assert [p["id"] for p in legs] == [iface_a]

    pa = lab3.port("alice", na["id"], A1)
    px = lab3.port("bob", nx["id"], X1)
    lab3.vm("a1", "h1", pa)
    lab3.vm("x1", "h2", px)
    lab3.wait_status(pa["id"], "ACTIVE")
    lab3.wait_status(px["id"], "ACTIVE")
    ns_h1 = netns_name(router["id"], "h1")
    wait_for(lambda: ns_h1 in router_namespaces(), what=f"{ns_h1} (have {router_namespaces()})")
    wait_for(lambda: f"master {naming.bridge_name(na['id'])}" in nsexec(
        topology.host_ns(1), "ip", "-o", "link", "show", service_port(iface_a)).stdout,
        what="A's leg of r plugged on h1")
    wait_for(lambda: ping("a1", sa["gateway_ip"], count=1, wait=1) == 1, what="a1 reaches its gateway")

    x = ipaddress.ip_network(X_CIDR)
    seen = {}
    for ns in router_namespaces():
        addrs = addresses(ns)
        seen[ns] = addrs
        assert not [a for a in addrs if ipaddress.ip_interface(a).ip in x], f"{ns} holds a leg of X: {addrs}"
    assert any(sa["gateway_ip"] + "/24" in a for a in seen.values()), seen
    assert ping("x1", A1, count=2, wait=1) == 0
    assert ping("x1", sa["gateway_ip"], count=2, wait=1) == 0
