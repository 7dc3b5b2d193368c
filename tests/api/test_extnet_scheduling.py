"""Scheduling by physical network, over real HTTP: a router whose external network is on
physical network P goes to a gateway host that registered an interface for P (`--external-
interface P:IF`), even when another gateway host is less loaded; hosts registered the legacy way
(one bare interface) are candidates for any network; with no candidate the router is
unscheduled until one registers. Pure part: `physnets.served`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_host_view import agent_client, start_agent_server
from tests.conftest import ServerHandle
from vxnet.services.physnets import served

GW = "network:router_gateway"


@pytest.fixture
def srv(tmp_path) -> Iterator[ServerHandle]:
    h = start_agent_server(os.path.join(tmp_path, "vxnet.db"), agent_down_time=30)
    yield h
    h.stop()


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if r.content else None


def register(c: httpx.Client, host: str, ext: str | None) -> None:
    ok(c.post(f"/hosts/{host}/register", json={"underlay_ip": "198.51.100.9", "gateway": True,
                                                "external_interface": ext}))


def external(admin: httpx.Client, name: str, phys: str, cidr: str) -> dict[str, Any]:
    net = ok(admin.post("/networks", json={"network": {"name": name, "router:external": True,
                                                       "provider:network_type": "flat",
                                                       "provider:physical_network": phys}}), 201)["network"]
    ok(admin.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4, "cidr": cidr}}), 201)
    return net


def host_of(admin: httpx.Client, rid: str) -> str:
    return ok(admin.get("/ports", params={"device_id": rid, "device_owner": GW}))["ports"][0]["binding:host_id"]


def router(c: httpx.Client, net: dict[str, Any]) -> str:
    return ok(c.post("/routers", json={"router": {"name": "r", "external_gateway_info": {"network_id": net["id"]}}}),
              201)["router"]["id"]


def test_served_physical_networks() -> None:
    assert served("external:eth1,physnet2:eth2") == {"external", "physnet2"}
    assert served("eth1") is None and served(None) is None       # legacy: any
    assert served("external:eth1,eth2") is None


def test_router_goes_to_a_host_with_its_physical_network(srv: ServerHandle) -> None:
    c, admin, alice = agent_client(srv), srv.api("admin"), srv.api("alice")
    register(c, "gw-a", "external:vxlext0")
    register(c, "gw-b", "external:vxlext0,physnet2:vxlext1")
    pub = external(admin, "public", "external", "203.0.113.0/24")
    pub2 = external(admin, "public2", "physnet2", "100.127.254.0/24")
    pub3 = external(admin, "public3", "physnet3", "100.127.253.0/24")
    # three routers on physnet2: all on gw-b (gw-a has no interface there), however loaded
    on2 = [router(alice, pub2) for _ in range(3)]
    assert {host_of(admin, r) for r in on2} == {"gw-b"}
    # on `external` both can: the least loaded, gw-a
    assert host_of(admin, router(alice, pub)) == "gw-a"
    # nobody has physnet3: unscheduled, until a host with it registers
    r3 = router(alice, pub3)
    assert host_of(admin, r3) == ""
    register(c, "gw-c", "physnet3:eth3")
    assert host_of(admin, r3) == "gw-c"
    # a legacy host (one bare interface) is a candidate for any network
    register(c, "gw-d", "vxlext0")
    assert host_of(admin, router(alice, pub2)) == "gw-d"          # least loaded, and may serve it
