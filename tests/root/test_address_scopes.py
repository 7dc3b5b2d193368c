"""Address scopes on real namespaces: a router does not route between subnets of different
address scopes (Neutron), proven with real pings through a `vxnet lab` host and its agent.

Topology (project alice, one host h1): scopes S1 and S2; pools P1 (100.64.0.0/16) and P3
(100.66.0.0/16) in S1, P2 (100.65.0.0/16) in S2; networks A, B, C with a /24 each from P1,
P2, P3; one router with an interface on each; VMs a1, b1, c1 on h1.

- a1 <-> c1 (same scope, through the router): replies; a1 -> b1 and b1 -> c1 (across scopes):
  no reply, and the router namespace holds the agent's `vxnet_scope` table.
- Moving P2 into S1 (`PUT /subnetpools/P2 address_scope_id=S1`) re-scopes network B: a1 <-> b1
  replies, and the table is gone.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.root.conftest import Lab, lab_session, needs_root
from tests.root.helpers import nsexec, ping, wait_for
from vxnet.compute.routing import netns_name

pytestmark = [pytest.mark.root, needs_root]


def ok(r, status: int = 201) -> dict:
    assert r.status_code == status, r.text
    return r.json()


@pytest.fixture(scope="module")
def lab1(tmp_path_factory) -> Iterator[Lab]:
    with lab_session(tmp_path_factory, "lab", 1) as g:
        yield g


@pytest.fixture(scope="module")
def topo(lab1: Lab) -> dict:
    out: dict = {}
    with lab1.api("alice") as c:
        s1 = ok(c.post("/address-scopes", json={"address_scope": {"name": "S1", "ip_version": 4}}))["address_scope"]
        s2 = ok(c.post("/address-scopes", json={"address_scope": {"name": "S2", "ip_version": 4}}))["address_scope"]
        pools = {}
        for name, prefix, scope in (("P1", "100.64.0.0/16", s1), ("P2", "100.65.0.0/16", s2),
                                    ("P3", "100.66.0.0/16", s1)):
            pools[name] = ok(c.post("/subnetpools", json={"subnetpool": {
                "name": name, "prefixes": [prefix], "default_prefixlen": 24, "address_scope_id": scope["id"]}}))[
                "subnetpool"]
        router = ok(c.post("/routers", json={"router": {"name": "r"}}))["router"]
        for vm, pool in (("a1", "P1"), ("b1", "P2"), ("c1", "P3")):
            net = ok(c.post("/networks", json={"network": {"name": vm}}))["network"]
            sub = ok(c.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                         "subnetpool_id": pools[pool]["id"]}}))["subnet"]
            ok(c.put(f"/routers/{router['id']}/add_router_interface", json={"subnet_id": sub["id"]}), 200)
            port = ok(c.post("/ports", json={"port": {"network_id": net["id"]}}))["port"]
            out[vm] = {"net": net, "subnet": sub, "port": port, "ip": port["fixed_ips"][0]["ip_address"]}
        assert c.get(f"/networks/{out['b1']['net']['id']}").json()["network"]["ipv4_address_scope"] == s2["id"]
    for vm in ("a1", "b1", "c1"):
        lab1.vm(vm, "h1", out[vm]["port"])
    for vm in ("a1", "b1", "c1"):
        lab1.wait_status(out[vm]["port"]["id"], "ACTIVE", timeout=20)
    out.update(scopes={"S1": s1, "S2": s2}, pools=pools, router=router, lab=lab1)
    return out


def scope_table(topo: dict) -> str:
    r = nsexec(netns_name(topo["router"]["id"], "h1"), "nft", "list", "table", "ip", "vxnet_scope")
    return r.stdout if r.returncode == 0 else ""


def test_same_scope_routes_and_different_scopes_do_not(topo: dict) -> None:
    a, b, c = (topo[v]["ip"] for v in ("a1", "b1", "c1"))
    wait_for(lambda: ping("a1", c, count=1) == 1, what="a1 -> c1 (same scope) through the router")
    assert ping("a1", c, count=3) == 3
    assert ping("c1", a, count=3) == 3
    assert ping("a1", b, count=3) == 0          # S1 -> S2
    assert ping("b1", a, count=3) == 0          # S2 -> S1
    assert ping("b1", c, count=3) == 0
    assert "drop" in scope_table(topo)
    # b1 does reach its own gateway: the router is there, only crossing scopes is refused
    assert ping("b1", topo["b1"]["subnet"]["gateway_ip"], count=2) == 2


def test_moving_a_pool_into_the_scope_lets_its_subnets_route(topo: dict) -> None:
    a, b = topo["a1"]["ip"], topo["b1"]["ip"]
    assert ping("a1", b, count=2) == 0
    with topo["lab"].api("alice") as c:
        r = c.put(f"/subnetpools/{topo['pools']['P2']['id']}",
                  json={"subnetpool": {"address_scope_id": topo["scopes"]["S1"]["id"]}})
        assert r.status_code == 200, r.text
        net = c.get(f"/networks/{topo['b1']['net']['id']}").json()["network"]
        assert net["ipv4_address_scope"] == topo["scopes"]["S1"]["id"]
    wait_for(lambda: ping("a1", b, count=1) == 1, what="a1 -> b1 once both are in S1")
    assert ping("b1", a, count=3) == 3
    assert scope_table(topo) == ""


def test_a_restarted_agent_converges_the_filter_changed_while_it_was_down(topo: dict) -> None:
    """The agent keeps no memory of the filter across a crash: a scope change made while it was
    down is applied (table added) and undone (table removed) by the restarted agent."""
    from vxnet.lab import lab as labmod

    a, b = topo["a1"]["ip"], topo["b1"]["ip"]
    pool_url = f"/subnetpools/{topo['pools']['P2']['id']}"
    for scope, routed in (("S2", False), ("S1", True)):
        st = labmod.load_state()
        labmod.stop_agent(st, "h1", sig=9)
        with topo["lab"].api("alice") as c:
            r = c.put(pool_url, json={"subnetpool": {"address_scope_id": topo["scopes"][scope]["id"]}})
            assert r.status_code == 200, r.text
        labmod.start_agent(st, "h1")
        wait_for(lambda routed=routed: (scope_table(topo) == "") == routed, what=f"scope table after moving to {scope}")
        if routed:
            wait_for(lambda: ping("a1", b, count=1) == 1, what="a1 -> b1 in one scope")
        else:
            assert ping("a1", b, count=3) == 0 and ping("b1", a, count=3) == 0
