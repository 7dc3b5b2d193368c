"""`compute_host`: one pure function for a host's whole desired state (L2 and every feature);
its incremental form equals it on random histories; the agent and `vxnet trace` both use it."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vxnet.agent.core import Agent, AgentConfig
from vxnet.agent.reconciler import ReconcileResult
from vxnet.compute.dhcp import DhcpCache, compute_dhcp
from vxnet.compute.diff import diff_host
from vxnet.compute.host import HostComputer, HostSpec, compute_host
from vxnet.compute.l2 import compute_l2
from vxnet.compute.state import HostState, merge
from vxnet.compute.view import ViewState, apply_message
from vxnet.services.host_view import full_view
from vxnet.trace.snapshot import Snapshot

NETS = [f"{c * 8}-0000-4000-8000-00000000000{i}" for i, c in enumerate("ab", 1)]
SUBS = {nid: f"5{i}aaaaaa-0000-4000-8000-000000000001" for i, nid in enumerate(NETS)}
RTR = "r0000000-0000-4000-8000-000000000001"
SG = "g0000000-0000-4000-8000-000000000001"
HOSTS = {f"h{i}": {"host": f"h{i}", "underlay_ip": f"198.51.100.{i}", "alive": True, "gateway": False}
         for i in (1, 2, 3)}
SPECS = {h: HostSpec(h, e["underlay_ip"]) for h, e in HOSTS.items()}


def network(i: int) -> dict:
    return {"id": NETS[i], "provider:network_type": "vxlan", "provider:segmentation_id": 1001 + i, "mtu": 1450,
            "subnets": [SUBS[NETS[i]]]}


def subnet(i: int, **kw: Any) -> dict:
    return {"id": SUBS[NETS[i]], "network_id": NETS[i], "cidr": f"192.0.{2 + i}.0/24" if i == 0 else "100.64.1.0/24",
            "ip_version": 4, "gateway_ip": "192.0.2.1" if i == 0 else "100.64.1.1", "enable_dhcp": True,
            "dns_nameservers": [], "host_routes": [], **kw}


def vm(n: int, host: str, net: int = 0, **kw: Any) -> dict:
    ip = f"192.0.2.{10 + n}" if net == 0 else f"100.64.1.{10 + n}"
    return {"id": f"p{n:07d}-0000-4000-8000-000000000000", "network_id": NETS[net], "binding:host_id": host,
            "mac_address": f"fa:16:3e:00:00:{n:02x}", "device_owner": "compute:nova", "device_id": f"vm{n}",
            "admin_state_up": True, "fixed_ips": [{"subnet_id": SUBS[NETS[net]], "ip_address": ip}],
            "security_groups": [SG], "port_security_enabled": True, "allowed_address_pairs": [], "status": "DOWN",
            "revision_number": 1, **kw}


def iface(net: int) -> dict:
    ip = "192.0.2.1" if net == 0 else "100.64.1.1"
    return {"id": f"i{net:07d}-0000-4000-8000-000000000000", "network_id": NETS[net], "binding:host_id": "",
            "mac_address": f"fa:16:3e:00:ff:{net:02x}", "device_owner": "network:router_interface",
            "device_id": RTR, "admin_state_up": True, "fixed_ips": [{"subnet_id": SUBS[NETS[net]], "ip_address": ip}],
            "security_groups": [], "status": "ACTIVE"}


RULES = {
    "r1": {"id": "r1", "security_group_id": SG, "direction": "egress", "ethertype": "IPv4"},
    "r2": {"id": "r2", "security_group_id": SG, "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
           "port_range_min": 22, "port_range_max": 22, "remote_group_id": SG},
}


def world(ports: list[dict]) -> dict[str, dict[str, dict]]:
    return {"networks": {n["id"]: n for n in (network(0), network(1))},
            "subnets": {s["id"]: s for s in (subnet(0), subnet(1))},
            "ports": {p["id"]: p for p in [*ports, iface(0), iface(1)]},
            "routers": {RTR: {"id": RTR, "admin_state_up": True, "routes": []}},
            "floatingips": {}, "security_groups": {SG: {"id": SG, "stateful": True}},
            "security_group_rules": dict(RULES)}


BASE = [vm(1, "h1"), vm(2, "h2"), vm(3, "h3", net=1), vm(4, "h1", net=1)]


def test_compute_host_is_the_sum_of_its_parts() -> None:
    objs = world(BASE)
    d = compute_host(full_view(objs, HOSTS, "h1"), SPECS["h1"])
    # h1 has VMs on both networks: two bridges, its two taps, the router's legs, a responder per network.
    from vxnet.compute import naming

    assert len(d.l2.bridges) == 2
    assert {naming.tap_name(BASE[0]["id"]), naming.tap_name(BASE[3]["id"])} <= {p.tap for p in d.l2.plugs}
    assert {r.network_id for r in d.dhcp.responders} == set(NETS)
    assert [r.router_id for r in d.routing.routers] == [RTR]
    assert {p.port_id for p in d.firewall.ports} == {BASE[0]["id"], BASE[3]["id"]}
    assert d.dhcp.l2.plugs <= d.l2.plugs and d.routing.l2.plugs <= d.l2.plugs and d.routing.l2.neighs <= d.l2.neighs
    assert not d.gateway.routers and not d.gateway.l2.bridges      # not a gateway host


OPS = st.lists(st.tuples(st.sampled_from(["put", "delete", "move", "status", "dhcp_off", "rule", "host", "down",
                                          "qos"]),
                         st.integers(0, 7)), max_size=20)


@settings(max_examples=40, deadline=None)
@given(OPS)
def test_incremental_host_computer_equals_the_full_recompute(ops: list[tuple[str, int]]) -> None:
    """After every message, each host's `HostComputer` gives exactly `compute_host` of its view."""
    objs = world(BASE)
    views = {h: apply_message(ViewState(), {"type": "snapshot", "revision": 1,
                                            "view": full_view(objs, HOSTS, h)}) for h in HOSTS}
    computers = {h: HostComputer(SPECS[h]) for h in HOSTS}
    rev = itertools.count(2)
    for op, i in ops:
        p = vm(i, f"h{i % 3 + 1}", net=i % 2)
        if op == "put":
            msg = {"put": {"ports": {p["id"]: p}}}
        elif op == "delete":
            msg = {"delete": {"ports": [p["id"]]}}
        elif op == "move":
            msg = {"put": {"ports": {p["id"]: dict(p, **{"binding:host_id": f"h{(i + 1) % 3 + 1}"})}}}
        elif op == "status":
            msg = {"put": {"ports": {p["id"]: dict(p, status="ACTIVE", revision_number=2)}}}
        elif op == "down":
            msg = {"put": {"ports": {p["id"]: dict(p, admin_state_up=False)}}}
        elif op == "dhcp_off":
            s = subnet(i % 2, enable_dhcp=bool(i % 4 < 2), dns_nameservers=[f"192.0.2.{50 + i}"])
            msg = {"put": {"subnets": {s["id"]: s}}}
        elif op == "rule":
            r = {"id": f"x{i}", "security_group_id": SG, "direction": "ingress", "ethertype": "IPv4",
                 "protocol": "udp", "port_range_min": 1000 + i, "port_range_max": 1000 + i}
            msg = {"put": {"security_group_rules": {r["id"]: r}}} if i % 2 else {"delete": {"security_group_rules": ["r2"]}}
        elif op == "qos":   # a policy's rules change, a port or a network names it
            qp = {"id": "q1", "rules": [{"type": "bandwidth_limit", "max_kbps": 1000 * (i + 1), "direction": "egress"}]}
            msg = ({"put": {"qos_policies": {"q1": qp}}} if i % 3 == 0 else
                   {"put": {"ports": {p["id"]: dict(p, qos_policy_id="q1")}}} if i % 3 == 1 else
                   {"put": {"networks": {NETS[i % 2]: dict(network(i % 2), qos_policy_id="q1")}}})
        else:
            msg = {"put": {"hosts": {f"h{i % 3 + 1}": {"underlay_ip": f"198.51.100.{50 + i}"}}}}
        for h in HOSTS:
            views[h] = apply_message(views[h], {"type": "update", "revision": next(rev), **msg})
            got = computers[h].compute(views[h].view)
            assert got == compute_host(views[h].view, SPECS[h])
            assert got.firewall.tables == compute_host(views[h].data, SPECS[h]).firewall.tables   # raw == typed


def test_a_pass_with_nothing_changed_returns_the_same_object_and_dhcp_is_per_network() -> None:
    s = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": full_view(world(BASE), HOSTS, "h1")})
    comp = HostComputer(SPECS["h1"])
    first = comp.compute(s.view)
    assert comp.compute(s.view) is first
    cache = DhcpCache("h1", 86400)
    cache.compute(s.view)
    assert cache.recomputed == 2
    p = vm(9, "h1", net=1)        # a new VM on the second network only
    s = apply_message(s, {"type": "update", "revision": 2, "put": {"ports": {p["id"]: p}}})
    assert cache.compute(s.view) == compute_dhcp(s.view, "h1", 86400)
    assert cache.recomputed == 1
    # A routers-only change recomputes neither the firewall nor DHCP: same objects.
    s2 = apply_message(s, {"type": "update", "revision": 3,
                           "put": {"routers": {RTR: {"id": RTR, "admin_state_up": True,
                                                     "routes": [{"destination": "203.0.113.0/24",
                                                                 "nexthop": "192.0.2.254"}]}}}})
    a, b = comp.compute(s.view), comp.compute(s2.view)
    assert b.firewall is a.firewall and b.dhcp is a.dhcp and b.routing != a.routing


@settings(max_examples=30, deadline=None)
@given(OPS, st.lists(st.booleans(), min_size=20, max_size=20))
def test_the_plug_part_then_the_rest_equals_the_full_recompute(ops: list[tuple[str, int]], plug_first: list[bool]
                                                               ) -> None:
    """`compute_plug` then `compute` of the same view (the agent's port-up pass) gives exactly
    `compute_host`, mixed with passes that call `compute` alone; the plug part is the
    firewall of the view and its overlay with the features' L2 parts of the previous pass."""
    objs = world(BASE)
    s = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": full_view(objs, HOSTS, "h1")})
    comp = HostComputer(SPECS["h1"])
    prev = comp.compute(s.view)
    for n, (op, i) in enumerate(ops):
        p = vm(i, f"h{i % 3 + 1}", net=i % 2)
        msg = ({"put": {"ports": {p["id"]: p}}} if op in ("put", "status", "qos") else
               {"delete": {"ports": [p["id"]]}} if op in ("delete", "down") else
               {"delete": {"ports": [iface(i % 2)["id"]]}} if op == "rule" else
               {"put": {"ports": {iface(i % 2)["id"]: iface(i % 2)}}} if op == "move" else
               {"put": {"subnets": {SUBS[NETS[i % 2]]: subnet(i % 2, enable_dhcp=bool(i % 4 < 2))}}})
        s = apply_message(s, {"type": "update", "revision": n + 2, **msg})
        ref = compute_host(s.view, SPECS["h1"])
        if plug_first[n]:
            plug = comp.compute_plug(s.view)
            assert plug.firewall == ref.firewall
            assert plug.l2 == merge([compute_l2(s.view, "h1", SPECS["h1"].underlay_ip), prev.routing.l2,
                                     prev.dhcp.l2, prev.gateway.l2, prev.metadata.l2])
            if all(getattr(prev, k).l2 == getattr(ref, k).l2 for k in ("routing", "dhcp", "gateway", "metadata")):
                assert plug.l2 == ref.l2
        prev = comp.compute(s.view)
        assert prev == ref


class RecordingReconciler:
    """Stands in for the kernel: records what the agent asked it to converge."""

    owned_ifindexes: frozenset[int] = frozenset()

    def __init__(self) -> None:
        self.desired: list[HostState] = []

    def reconcile(self, desired: HostState, hold: frozenset[str] = frozenset()) -> ReconcileResult:
        self.desired.append(desired)
        local = frozenset(lp.port_id for lp in desired.local_ports)
        return ReconcileResult(diff_host(desired, HostState()), (), local, frozenset(), 0.0, False)

    def invalidate(self) -> None:
        pass

    def close(self) -> None:
        pass


class RecordingFeature:
    def __init__(self, name: str) -> None:
        self.name = name
        self.applied: list[Any] = []

    def apply(self, desired: Any) -> Any:
        from vxnet.agent.features import FeatureResult

        self.applied.append(desired)
        return FeatureResult()

    def invalidate(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_agent_and_the_trace_apply_the_same_compute_host() -> None:
    """One world: what an agent's pass hands its reconciler and features is exactly what
    `vxnet trace`'s snapshot walks, and both are `compute_host` (DHCP included)."""
    objs = world(BASE)
    for host in HOSTS:
        rec = RecordingReconciler()
        feats = [RecordingFeature(n) for n in ("routing", "firewall", "dhcp")]
        agent = Agent(AgentConfig(host, HOSTS[host]["underlay_ip"]), control=None, reconciler=rec,  # type: ignore[arg-type]
                      features=feats)  # type: ignore[arg-type]
        agent.on_message({"type": "snapshot", "revision": 3, "view": full_view(objs, HOSTS, host)})
        assert agent.run_once() is not None
        snap = Snapshot(objs, HOSTS)
        reference = compute_host(full_view(objs, HOSTS, host), SPECS[host])
        assert snap.desired(host) == reference
        assert rec.desired == [reference.l2] == [snap.l2(host)]
        assert [f.applied for f in feats] == [[snap.routing(host)], [snap.firewall(host)], [snap.dhcp(host)]]
        assert snap.dhcp(host).responders, "the trace sees the DHCP responders the agent serves"


def test_the_plug_path_comes_first_and_a_port_without_its_filters_is_held() -> None:
    """The firewall is applied before the L2 pass, the other features after it; while the
    firewall's rules are not loaded, the L2 pass is told to hold every filtered port."""
    from vxnet.agent.features import FeatureResult

    order: list[str] = []

    class Rec(RecordingReconciler):
        def reconcile(self, desired: HostState, hold: frozenset[str] = frozenset()) -> ReconcileResult:
            order.append("l2")
            self.holds = [*getattr(self, "holds", []), hold]
            res = super().reconcile(desired, hold)
            return dataclasses.replace(res, absent=frozenset({"vxpdnotyet"})) if self.absent else res

        absent = True

    class Feat(RecordingFeature):
        fail = False

        def apply(self, desired: Any) -> Any:
            order.append(self.name)
            if self.fail:
                ports = frozenset(p.port_id for p in desired.ports)
                return FeatureResult(failed=("x",), down=ports, hold=ports)
            return FeatureResult(changes={"made": 1} if self.name == "dhcp" else {})

    rec = Rec()
    feats = [Feat(n) for n in ("routing", "firewall", "dhcp")]
    agent = Agent(AgentConfig("h1", HOSTS["h1"]["underlay_ip"]), control=None, reconciler=rec,  # type: ignore[arg-type]
                  features=feats)  # type: ignore[arg-type]
    agent.on_message({"type": "snapshot", "revision": 3, "view": full_view(world(BASE), HOSTS, "h1")})
    assert agent.run_once() is not None
    assert order == ["firewall", "l2", "routing", "dhcp", "l2"]      # a device was absent, dhcp changed something
    assert "plug_path" in agent.last_timings and rec.holds == [frozenset(), frozenset()]
    rec.absent = False
    order.clear()
    agent.run_once()
    assert order == ["firewall", "l2", "routing", "dhcp"]            # a device was absent last pass: one L2 pass
    order.clear()
    agent.run_once()
    assert order == ["l2", "routing", "firewall", "dhcp"]            # nothing to plug: L2 entries first of all
    feats[1].fail = True
    agent.run_once()                                                  # the rules fail to load ...
    order.clear()
    res = agent.run_once()
    assert order[:2] == ["firewall", "l2"] and res is not None        # ... so the next pass guards the plugs again
    local = {lp.port_id for lp in rec.desired[-1].local_ports if lp.port_id.startswith("p")}
    assert local and local <= rec.holds[-1] and local <= res.down and not local & res.active
    feats[1].fail = False
    agent.run_once()
    agent.run_once()
    order.clear()
    agent.run_once()
    assert order[0] == "l2"                                           # settled: nothing to plug
    new = vm(9, "h1")
    agent.on_message({"type": "update", "revision": 4, "put": {"ports": {new["id"]: new}}})
    order.clear()
    agent.run_once()
    assert order[:2] == ["firewall", "l2"]                            # a new local port: its filters first


def test_a_port_up_computes_only_its_plug_path_before_the_plug() -> None:
    """A pass that may plug a tap of a network the host has already computes the firewall and
    the overlay, loads the firewall and runs the L2 pass before it computes the other features
    (DHCP, metadata, routing...); its L2 state is the whole desired state when their L2 parts
    did not change, else a second L2 pass converges to it. A new network on the host, the start
    and a resync compute everything first (the network's features' entries before its first tap)."""
    seen: list[set[str]] = []

    class Rec(RecordingReconciler):
        def reconcile(self, desired: HostState, hold: frozenset[str] = frozenset()) -> ReconcileResult:
            seen.append(set(agent.computer.timings))     # what the pass had computed by then
            return super().reconcile(desired, hold)

    objs = world(BASE)
    rec = Rec()
    feats = [RecordingFeature(n) for n in ("routing", "firewall", "dhcp")]
    agent = Agent(AgentConfig("h2", HOSTS["h2"]["underlay_ip"]), control=None, reconciler=rec,  # type: ignore[arg-type]
                  features=feats)  # type: ignore[arg-type]
    agent.on_message({"type": "snapshot", "revision": 3, "view": full_view(objs, HOSTS, "h2")})
    agent.run_once()
    assert "compute_dhcp" in seen[-1]                                 # the start: everything first
    rev = itertools.count(4)

    def update(msg: dict) -> None:
        seen.clear()
        rec.desired.clear()
        agent.on_message({"type": "update", "revision": next(rev), **msg})
        assert agent.run_once() is not None
        v = agent.view.view
        assert rec.desired[-1] == compute_host(v, SPECS["h2"]).l2 == agent.computer.compute(v).l2
        assert feats[2].applied[-1] == compute_host(v, SPECS["h2"]).dhcp

    a = vm(9, "h2")
    update({"put": {"ports": {a["id"]: a}}})                         # a port-up on net 0 (h2 has it)
    assert seen == [{"compute_l2", "compute_firewall"}] and "compute_rest" in agent.last_timings
    b = vm(10, "h2")                                                  # ... with a router leg going
    update({"put": {"ports": {b["id"]: b}}, "delete": {"ports": [iface(1)["id"]]}})
    assert seen[0] == {"compute_l2", "compute_firewall"} and len(seen) == 2   # routing's L2 changed
    c = vm(11, "h2", net=1)                                           # net 1: no bridge on h2 any more
    update({"put": {"ports": {c["id"]: c}}})
    assert "compute_dhcp" in seen[0]


def test_the_computer_holds_no_merged_copy_of_the_per_network_entries() -> None:
    # compute.state.Parts: the host's FDB and neighbour sets are the L2 cache's per-network
    # parts themselves (plus the features' few entries), not a merged copy built every pass;
    # they equal the full recompute's merged sets.
    from vxnet.compute.state import Parts

    s = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": full_view(world(BASE), HOSTS, "h1")})
    comp = HostComputer(SPECS["h1"])
    got = comp.compute(s.view)
    ref = compute_host(s.view, SPECS["h1"])
    parts = comp.l2.parts(s.view)
    for kind in ("fdb", "neighs"):
        mine = getattr(got.l2, kind)
        assert isinstance(mine, Parts) and mine == getattr(ref.l2, kind) and len(mine) == len(getattr(ref.l2, kind))
        assert {id(getattr(p, kind)) for p in parts if getattr(p, kind)} <= {id(p) for p in mine.parts}
        assert set(mine) == set(getattr(ref.l2, kind))
