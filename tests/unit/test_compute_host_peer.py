"""A peer's pass: `HostComputer` keeps the routing, QoS, metadata and DHCP parts uncomputed when only
ports they never read changed (`reads_port` of each module), equal to `compute_host` on random
histories; the agent runs a pass that plugs nothing with its L2 pass first (the overlay's compute
alone before it), and converges to the whole desired state in the same pass."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_compute_host import RecordingFeature, RecordingReconciler
from vxnet.agent.core import Agent, AgentConfig
from vxnet.agent.reconciler import ReconcileResult
from vxnet.compute.host import KEEP_MAX, HostComputer, HostSpec, compute_host
from vxnet.compute.state import HostState
from vxnet.compute.view import ViewState, apply_message
from vxnet.services.host_view import full_view

NET = "a0000000-0000-4000-8000-000000000001"
SUB4 = "5aaaaaaa-0000-4000-8000-000000000001"
SUB6 = "5aaaaaaa-0000-4000-8000-000000000006"
RTR = "r0000000-0000-4000-8000-000000000001"
SG = "g0000000-0000-4000-8000-000000000001"
HOSTS = {f"h{i}": {"host": f"h{i}", "underlay_ip": f"198.51.100.{i}", "alive": True, "gateway": False}
         for i in (1, 2, 3)}
SPECS = {h: HostSpec(h, e["underlay_ip"]) for h, e in HOSTS.items()}
OWNERS = ("compute:nova", "compute:nova", "compute:nova", "network:router_interface",
          "network:router_centralized_snat", "network:dhcp")


def port(n: int, host: str, owner: str = "compute:nova", v6: bool = False, pairs: str = "", **kw: Any) -> dict:
    ips = [{"subnet_id": SUB4, "ip_address": f"192.0.2.{10 + n}"}]
    if v6:
        ips.append({"subnet_id": SUB6, "ip_address": f"2001:db8::{10 + n:x}"})
    return {"id": f"p{n:07d}-0000-4000-8000-000000000000", "network_id": NET, "binding:host_id": host,
            "mac_address": f"fa:16:3e:00:00:{n:02x}", "device_owner": owner,
            "device_id": RTR if owner.startswith("network:router") else f"vm{n}", "admin_state_up": True,
            "fixed_ips": ips, "security_groups": [SG], "port_security_enabled": True,
            "allowed_address_pairs": [{"ip_address": pairs}] if pairs else [], "status": "DOWN",
            "revision_number": 1, **kw}


LEG = port(99, "", "network:router_interface", v6=True)
LEG["fixed_ips"] = [{"subnet_id": SUB4, "ip_address": "192.0.2.1"}, {"subnet_id": SUB6, "ip_address": "2001:db8::1"}]


def world(ports: list[dict]) -> dict[str, dict[str, dict]]:
    return {"networks": {NET: {"id": NET, "provider:network_type": "vxlan", "provider:segmentation_id": 1001,
                               "mtu": 1450, "subnets": [SUB4, SUB6]}},
            "subnets": {SUB4: {"id": SUB4, "network_id": NET, "cidr": "192.0.2.0/24", "ip_version": 4,
                               "gateway_ip": "192.0.2.1", "enable_dhcp": True},
                        SUB6: {"id": SUB6, "network_id": NET, "cidr": "2001:db8::/64", "ip_version": 6,
                               "gateway_ip": "2001:db8::1", "enable_dhcp": False}},
            "ports": {p["id"]: p for p in [*ports, LEG]},
            "routers": {RTR: {"id": RTR, "admin_state_up": True, "routes": []}},
            "qos_policies": {"q1": {"id": "q1", "rules": [{"type": "bandwidth_limit", "max_kbps": 1000,
                                                          "direction": "egress"}]}},
            "floatingips": {}, "security_groups": {SG: {"id": SG, "stateful": True}},
            "security_group_rules": {"r1": {"id": "r1", "security_group_id": SG, "direction": "ingress",
                                            "ethertype": "IPv4", "remote_group_id": SG}}}


BASE = [port(1, "h1"), port(2, "h2"), port(3, "h3")]

PORT_OPS = st.tuples(st.integers(0, 7),                            # which port
                     st.sampled_from(["", "h1", "h2", "h3", "h2"]),  # bound where (peers' ports most)
                     st.sampled_from(OWNERS),
                     st.booleans(),                                 # an IPv6 fixed IP
                     st.sampled_from(["", "", "2001:db8::77/128", "2001:db8::78", "192.0.2.200"]),  # a pair
                     st.sampled_from(["put", "put", "put", "delete", "status", "down", "qos", "other", "gateway_ip",
                                      "highest", "subnet", "leg"]))


def message(op: tuple[int, str, str, bool, str, str]) -> dict:
    i, host, owner, v6, pair, kind = op
    p = port(i, host, owner, v6, pair)
    if kind == "delete":
        return {"delete": {"ports": [p["id"]]}}
    if kind == "status":
        return {"put": {"ports": {p["id"]: dict(p, status="ACTIVE", revision_number=2)}}}
    if kind == "down":
        return {"put": {"ports": {p["id"]: dict(p, admin_state_up=False)}}}
    if kind == "qos":
        return {"put": {"ports": {p["id"]: dict(p, qos_policy_id="q1")}}}
    if kind in ("gateway_ip", "highest"):    # a VM holding the gateway's address, or the highest one
        ip = "192.0.2.1" if kind == "gateway_ip" else "192.0.2.254"
        return {"put": {"ports": {p["id"]: dict(p, fixed_ips=[{"subnet_id": SUB4, "ip_address": ip}])}}}
    if kind == "leg":       # the router's leg (it holds the gateway's address) goes or comes back
        return {"delete": {"ports": [LEG["id"]]}} if i % 2 else {"put": {"ports": {LEG["id"]: LEG}}}
    if kind == "subnet":    # the DHCP subnet without a gateway (the server id: the highest free address)
        sub = world([])["subnets"][SUB4]
        return {"put": {"subnets": {SUB4: dict(sub, gateway_ip="" if i % 2 else "192.0.2.1")}}}
    if kind == "other":    # a bucket besides ports: the routes of the router, the QoS policy
        return ({"put": {"routers": {RTR: {"id": RTR, "admin_state_up": True,
                                           "routes": [{"destination": "203.0.113.0/24", "nexthop": f"192.0.2.{10 + i}"}]}}}}
                if i % 2 else
                {"put": {"qos_policies": {"q1": {"id": "q1", "rules": [{"type": "bandwidth_limit",
                                                                       "max_kbps": 1000 * (i + 1),
                                                                       "direction": "egress"}]}}}})
    return {"put": {"ports": {p["id"]: p}}}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(PORT_OPS, min_size=1, max_size=3), max_size=25), st.lists(st.booleans(), min_size=25,
                                                                                   max_size=25))
def test_parts_kept_for_ports_they_do_not_read_equal_the_full_recompute(batches: list[list[tuple]],
                                                                         plug_first: list[bool]) -> None:
    """After every pass (1-3 messages each, of local and remote VMs, router interfaces, SNAT and
    DHCP ports, IPv6 addresses, pairs, admin down, status, QoS, routes, a VM holding the gateway's
    or the highest address, the DHCP subnet without a gateway), each host's computer
    gives exactly `compute_host` of its view, the agent's two-step form (`compute_plug` without
    the firewall, then `compute`) included."""
    objs = world(BASE)
    views = {h: apply_message(ViewState(), {"type": "snapshot", "revision": 1,
                                            "view": full_view(objs, HOSTS, h)}) for h in HOSTS}
    computers = {h: HostComputer(SPECS[h]) for h in HOSTS}
    for h in HOSTS:
        computers[h].compute(views[h].view)
    rev = itertools.count(2)
    for n, batch in enumerate(batches):
        for op in batch:
            msg = message(op)
            for h in HOSTS:
                views[h] = apply_message(views[h], {"type": "update", "revision": next(rev), **msg})
        for h in HOSTS:
            v = views[h].view
            ref = compute_host(v, SPECS[h])
            if plug_first[n]:
                computers[h].compute_plug(v, firewall=False)
            got = computers[h].compute(v)
            assert got == ref
            for k in ("routing", "qos", "metadata", "dhcp"):
                assert getattr(got, k) == getattr(ref, k), k


def test_a_remote_vm_recomputes_no_routing_qos_or_metadata_on_a_peer() -> None:
    """A VM of another host (IPv4 only) created, bound, ACTIVE: the peer's routing, QoS and
    metadata parts are kept (the same objects, not computed); its own VM, a remote port with an
    IPv6 address or a pair, or a router interface recompute the parts that read them."""
    objs = world([*BASE, dict(port(4, "h2"), qos_policy_id="q1")])
    s = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": full_view(objs, HOSTS, "h2")})
    comp = HostComputer(SPECS["h2"])
    first = comp.compute(s.view)
    assert first.routing.routers and first.qos.taps and first.metadata.ports   # all three in use on h2
    rev = itertools.count(2)

    def update(p: dict, status: str = "DOWN") -> set[str]:
        nonlocal s
        s = apply_message(s, {"type": "update", "revision": next(rev), "put": {"ports": {p["id"]: dict(p, status=status)}}})
        got = comp.compute(s.view)
        assert got == compute_host(s.view, SPECS["h2"])
        return comp.recomputed & {"routing", "qos", "metadata", "dhcp"}

    remote = port(5, "")
    for p, status in ((remote, "DOWN"), (dict(remote, **{"binding:host_id": "h1"}), "DOWN"),
                      (dict(remote, **{"binding:host_id": "h1"}), "ACTIVE")):
        assert update(p, status) == set()
    now = comp.compute(s.view)
    assert now.routing is first.routing and now.qos is first.qos and now.metadata is first.metadata
    assert now.dhcp is first.dhcp and first.dhcp.responders
    assert update(port(6, "h2")) == {"routing", "qos", "metadata", "dhcp"}   # a VM of this host
    assert update(port(7, "h3", v6=True)) == {"routing"}                      # its IPv6 address: a neighbour
    assert update(port(8, "h3", pairs="2001:db8::99")) == {"routing"}         # a pair VIP
    assert update(port(9, "h3", owner="network:router_interface")) == {"routing", "dhcp"}
    gw = dict(port(10, "h3"), fixed_ips=[{"subnet_id": SUB4, "ip_address": "192.0.2.1"}])
    assert update(gw) == {"dhcp"}                                             # it holds the server id
    s = apply_message(s, {"type": "update", "revision": next(rev), "delete": {"ports": [port(3, "h3")["id"]]}})
    assert comp.compute(s.view) == compute_host(s.view, SPECS["h2"])
    assert not comp.recomputed & {"routing", "metadata", "dhcp"}
    many = {p["id"]: p for p in (port(20 + k, "h1") for k in range(KEEP_MAX + 1))}   # a burst: no port asked
    s = apply_message(s, {"type": "update", "revision": next(rev), "put": {"ports": many}})
    assert comp.compute(s.view) == compute_host(s.view, SPECS["h2"])
    assert {"routing", "metadata", "dhcp"} <= comp.recomputed


def test_a_remote_vm_holding_the_dhcp_server_id_recomputes_dhcp() -> None:
    """DHCP reads another host's VM through the addresses ports hold: the gateway's address (the
    server id, answered by ARP while no port holds it) and, on a subnet without a gateway, the
    highest free address (the server id then)."""
    objs = world(BASE)
    del objs["ports"][LEG["id"]]             # no port holds the gateway's address
    s = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": full_view(objs, HOSTS, "h2")})
    comp = HostComputer(SPECS["h2"])
    before = comp.compute(s.view).dhcp
    assert before.responders[0].arp_ips == ("192.0.2.1",)
    rev = itertools.count(2)

    def update(msg: dict) -> Any:
        nonlocal s
        s = apply_message(s, {"type": "update", "revision": next(rev), **msg})
        got = comp.compute(s.view)
        assert got == compute_host(s.view, SPECS["h2"])
        return got.dhcp

    gw = dict(port(5, "h1"), fixed_ips=[{"subnet_id": SUB4, "ip_address": "192.0.2.1"}])
    assert update({"put": {"ports": {gw["id"]: gw}}}).responders[0].arp_ips == ()
    sub = dict(objs["subnets"][SUB4], gateway_ip="")
    assert update({"put": {"subnets": {SUB4: sub}}}).responders[0].leases[0].server_id == "192.0.2.254"
    top = dict(port(6, "h3"), fixed_ips=[{"subnet_id": SUB4, "ip_address": "192.0.2.254"}])
    assert update({"put": {"ports": {top["id"]: top}}}).responders[0].leases[0].server_id == "192.0.2.253"
    assert update({"delete": {"ports": [top["id"]]}}).responders[0].leases[0].server_id == "192.0.2.254"


def test_a_peer_pass_runs_its_l2_pass_before_computing_the_features() -> None:
    """A pass that plugs nothing (a remote port joins) computes only the overlay before its L2
    pass (the new FDB entry first), then the firewall and the rest; when the features' L2 parts
    changed (a router interface arrives), a second L2 pass converges to the whole desired state."""
    seen: list[set[str]] = []

    class Rec(RecordingReconciler):
        def reconcile(self, desired: HostState, hold: frozenset[str] = frozenset()) -> ReconcileResult:
            seen.append(set(agent.computer.timings))
            return super().reconcile(desired, hold)

    rec = Rec()
    feats = [RecordingFeature(n) for n in ("routing", "firewall", "dhcp")]
    agent = Agent(AgentConfig("h2", HOSTS["h2"]["underlay_ip"]), control=None, reconciler=rec,  # type: ignore[arg-type]
                  features=feats)  # type: ignore[arg-type]
    agent.on_message({"type": "snapshot", "revision": 1, "view": full_view(world(BASE), HOSTS, "h2")})
    agent.run_once()
    agent.run_once()                     # settled: the start's devices are all there
    rev = itertools.count(2)

    def update(p: dict) -> None:
        seen.clear()
        rec.desired.clear()
        agent.on_message({"type": "update", "revision": next(rev), "put": {"ports": {p["id"]: p}}})
        assert agent.run_once() is not None
        ref = compute_host(agent.view.view, SPECS["h2"])
        assert rec.desired[-1] == ref.l2
        assert [f.applied[-1] for f in feats] == [ref.routing, ref.firewall, ref.dhcp]

    update(port(5, "h1"))                                       # a remote VM: its FDB entry first
    assert seen == [{"compute_l2"}] and agent.last_timings["compute_rest"] >= 0
    assert "compute_firewall" in agent.last_timings and "l2_rest" not in agent.last_timings
    update(port(6, "h3", owner="network:router_centralized_snat"))   # routing's parts change: 2 passes
    update(port(7, "h1", owner="network:router_interface"))
    assert seen[0] == {"compute_l2"} and len(seen) == 2 and "l2_rest" in agent.last_timings
    update(port(8, "h2"))                                       # its own VM: the firewall before the plug
    assert seen[0] == {"compute_l2", "compute_firewall"}
