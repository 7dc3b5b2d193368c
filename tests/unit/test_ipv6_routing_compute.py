"""IPv6 in the pure routing and gateway compute (issue #16): anycast v6 legs, static v6
neighbours, the ::/0 fallback to the centralized port, the gateway's v6 leg, route, neighbours
and isolation filter. No kernel."""

from __future__ import annotations

from typing import Any

from vxnet.compute import naming
from vxnet.compute.gateway import compute_gateway, filter6_ruleset, nat_ruleset
from vxnet.compute.routing import MAIN_TABLE, NsNeigh, Route, Rule, compute_routing, iface_name

NET_A, NET_B, EXT = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002", "e" * 8 + "-ext"
R1 = "r1111111-0000-4000-8000-000000000001"
HOSTS = {f"h{i}": {"host": f"h{i}", "underlay_ip": f"198.51.100.{i}", "alive": True, "gateway": i == 3}
         for i in (1, 2, 3)}


def port(pid: str, nid: str, ips: list[tuple[str, str]], mac: str, host: str = "", owner: str = "compute:nova",
         device: str = "", up: bool = True) -> dict[str, Any]:
    return {"id": pid, "network_id": nid, "binding:host_id": host, "mac_address": mac, "device_owner": owner,
            "device_id": device, "admin_state_up": up,
            "fixed_ips": [{"subnet_id": s, "ip_address": ip} for s, ip in ips]}


IF_A = port("ia000000-0000-4000-8000-00000000000a", NET_A, [("a4", "192.0.2.1"), ("a6", "2001:db8:a::1")],
            "fa:16:3e:00:00:0a", owner="network:router_interface", device=R1)
IF_B = port("ib000000-0000-4000-8000-00000000000b", NET_B, [("b6", "2001:db8:b::1")], "fa:16:3e:00:00:0b",
            owner="network:router_interface", device=R1)
VM_A1 = port("va100000-0000-4000-8000-000000000001", NET_A, [("a4", "192.0.2.11"), ("a6", "2001:db8:a::11")],
             "02:00:00:00:0a:01", "h1")
VM_B2 = port("vb200000-0000-4000-8000-000000000002", NET_B, [("b6", "2001:db8:b::12")], "02:00:00:00:0b:02", "h2")
VM_B_UNBOUND = port("vb900000-0000-4000-8000-000000000009", NET_B, [("b6", "2001:db8:b::19")], "02:00:00:00:0b:09")
VM_B_DOWN = port("vb800000-0000-4000-8000-000000000008", NET_B, [("b6", "2001:db8:b::18")], "02:00:00:00:0b:08",
                 "h2", up=False)
SNAT_A6 = port("sn600000-0000-4000-8000-000000000006", NET_A, [("a6", "2001:db8:a::3")], "fa:16:3e:00:00:36", "h3",
               "network:router_centralized_snat", R1)
SNAT_A4 = port("sn400000-0000-4000-8000-000000000004", NET_A, [("a4", "192.0.2.3")], "fa:16:3e:00:00:34", "h3",
               "network:router_centralized_snat", R1)
GW = port("gw000000-0000-4000-8000-000000000001", EXT, [("e4", "203.0.113.10"), ("e6", "2001:db8:ff::10")],
          "fa:16:3e:00:00:01", "h3", "network:router_gateway", R1)


def view(ports: list[dict[str, Any]], routes: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "hosts": HOSTS,
        "networks": {NET_A: {"provider:network_type": "vxlan", "provider:segmentation_id": 101, "mtu": 1450},
                     NET_B: {"provider:network_type": "vxlan", "provider:segmentation_id": 102, "mtu": 1450},
                     EXT: {"router:external": True, "provider:network_type": "flat",
                           "provider:physical_network": "external", "mtu": 1500}},
        "subnets": {"a4": {"network_id": NET_A, "cidr": "192.0.2.0/24", "ip_version": 4, "gateway_ip": "192.0.2.1"},
                    "a6": {"network_id": NET_A, "cidr": "2001:db8:a::/64", "ip_version": 6,
                           "gateway_ip": "2001:db8:a::1"},
                    "b6": {"network_id": NET_B, "cidr": "2001:db8:b::/64", "ip_version": 6,
                           "gateway_ip": "2001:db8:b::1"},
                    "e4": {"network_id": EXT, "cidr": "203.0.113.0/24", "ip_version": 4, "gateway_ip": "203.0.113.1"},
                    "e6": {"network_id": EXT, "cidr": "2001:db8:ff::/64", "ip_version": 6,
                           "gateway_ip": "2001:db8:ff::1"}},
        "ports": {p["id"]: p for p in ports},
        "routers": {R1: {"id": R1, "admin_state_up": True, "routes": routes or [],
                         "external_gateway_info": {"network_id": EXT}}},
        "floatingips": {},
    }


def test_v6_legs_are_anycast_and_dual_stack() -> None:
    v = view([IF_A, IF_B, VM_A1, VM_B2])
    (r1,), (r2,) = compute_routing(v, "h1").routers, compute_routing(v, "h2").routers
    assert r1.ifaces == r2.ifaces
    a, b = r1.ifaces
    assert a.addresses == ("192.0.2.1/24", "2001:db8:a::1/64")
    assert b.addresses == ("2001:db8:b::1/64",)     # a v6-only leg is a leg
    assert r1.scope_groups == ()


def test_v6_neighbours_for_bound_enabled_ports_only() -> None:
    v = view([IF_A, IF_B, VM_A1, VM_B2, VM_B_UNBOUND, VM_B_DOWN, SNAT_A6])
    (r,) = compute_routing(v, "h1").routers
    la, lb = iface_name(IF_A["id"]), iface_name(IF_B["id"])
    assert set(r.neighs) == {NsNeigh(la, "2001:db8:a::11", "02:00:00:00:0a:01"),      # local VM too
                             NsNeigh(la, "2001:db8:a::3", "fa:16:3e:00:00:36"),        # the centralized port
                             NsNeigh(lb, "2001:db8:b::12", "02:00:00:00:0b:02")}       # remote VM
    # the bridge's suppression entries stay IPv4 (the gateway's v6 NS is answered by the local leg)
    assert {n.ip for n in compute_routing(v, "h1").l2.neighs} == {"192.0.2.1"}


def test_v6_fallback_to_the_centralized_port_and_v6_extra_routes() -> None:
    v = view([IF_A, IF_B, VM_A1, SNAT_A6, SNAT_A4],
             [{"destination": "2001:db8:c::/48", "nexthop": "2001:db8:b::50"},
              {"destination": "2001:db8:d::/48", "nexthop": "192.0.2.50"}])       # mixed families: ignored
    (r,) = compute_routing(v, "h1").routers
    la, lb = iface_name(IF_A["id"]), iface_name(IF_B["id"])
    table = next(rt.table for rt in r.routes if rt.dst == "0.0.0.0/0")
    assert Route("::/0", "2001:db8:a::3", la, table) in r.routes
    assert Route("0.0.0.0/0", "192.0.2.3", la, table) in r.routes
    assert Route("2001:db8:c::/48", "2001:db8:b::50", lb, MAIN_TABLE) in r.routes
    assert not any(rt.dst == "2001:db8:d::/48" for rt in r.routes)
    assert Rule(1000, "2001:db8:a::/64", MAIN_TABLE, 0) in r.rules
    assert Rule(2000, "2001:db8:a::/64", table) in r.rules
    # no centralized port on b6: no fallback for it
    assert not any(rule.src == "2001:db8:b::/64" for rule in r.rules)


def test_gateway_v6_leg_route_neighbours_and_no_nat() -> None:
    v = view([IF_A, IF_B, VM_A1, VM_B2, SNAT_A6, SNAT_A4, GW])
    (g,) = compute_gateway(v, "h3", "vxlext0").routers
    assert g.gw.cidrs == ("203.0.113.10/24", "2001:db8:ff::10/64")
    assert g.gateway_ip6 == "2001:db8:ff::1"
    assert g.cidrs6 == ("2001:db8:a::/64", "2001:db8:b::/64")
    legs = {leg.port_id: leg for leg in g.snat_legs}
    assert legs[SNAT_A6["id"]].cidrs == ("2001:db8:a::3/64",)     # a v6-only snat port is a leg
    assert legs[SNAT_A4["id"]].cidrs == ("192.0.2.3/24",)
    inner6 = legs[SNAT_A6["id"]].inner
    assert (inner6, "2001:db8:a::11", "02:00:00:00:0a:01") in g.neighs6
    assert not any(ip == "2001:db8:a::3" for _, ip, _ in g.neighs6)   # not its own address
    assert "ip6" not in nat_ruleset(g) and "2001:db8" not in nat_ruleset(g)   # IPv6 is never NATed
    f = filter6_ruleset(g)
    qg = g.gw.inner
    assert f'iifname "{qg}" ip6 daddr != {{ 2001:db8:a::/64, 2001:db8:b::/64 }} counter drop' in f
    assert f'oifname "{qg}" ip6 saddr != {{ 2001:db8:a::/64, 2001:db8:b::/64 }} counter drop' in f


def test_gateway_without_v6_subnets_forwards_no_v6() -> None:
    gw4 = port(GW["id"], EXT, [("e4", "203.0.113.10")], "fa:16:3e:00:00:01", "h3", "network:router_gateway", R1)
    if4 = port(IF_A["id"], NET_A, [("a4", "192.0.2.1")], "fa:16:3e:00:00:0a", owner="network:router_interface",
               device=R1)
    (g,) = compute_gateway(view([if4, VM_A1, SNAT_A4, gw4]), "h3", None).routers
    assert g.gateway_ip6 is None and g.cidrs6 == () and g.gw.more == ()
    f = filter6_ruleset(g)
    assert f'iifname "{g.gw.inner}" counter drop' in f and f'oifname "{g.gw.inner}" counter drop' in f
    assert naming.SNAT_IFACE_PREFIX == "sg-"


# -- vxnet trace over the same objects (the walk reads the agents' own desired state) ----------
SNAT_B6 = port("sn700000-0000-4000-8000-000000000007", NET_B, [("b6", "2001:db8:b::3")], "fa:16:3e:00:00:37", "h3",
               "network:router_centralized_snat", R1)


def snapshot(extra_ports: list[dict[str, Any]] = ()) -> Any:  # type: ignore[assignment]
    from vxnet.trace.snapshot import Snapshot

    ports = [IF_A, IF_B, VM_A1, VM_B2, SNAT_A6, SNAT_A4, SNAT_B6, GW, *extra_ports]
    for p in ports:
        p.setdefault("port_security_enabled", p["device_owner"] == "compute:nova" and False)
        p.setdefault("security_groups", [])
    v = view(ports)
    objs = {k: {i: {"id": i, **o} for i, o in v[k].items()} for k in ("networks", "subnets", "ports", "routers")}
    objs["routers"][R1]["external_gateway_info"]["external_fixed_ips"] = [
        {"subnet_id": "e6", "ip_address": "2001:db8:ff::10"}]
    return Snapshot(objs, HOSTS)


def test_trace_v6_routed_across_hosts_names_the_router_and_its_static_neighbour() -> None:
    from vxnet.trace.walk import walk

    t = walk(snapshot(), VM_A1["id"], "2001:db8:b::12")
    assert t.verdict == "delivered", [h.decision for h in t.hops]
    text = " ".join(h.decision for h in t.hops)
    assert "connected 2001:db8:b::/64" in text
    assert "static neighbour 2001:db8:b::12 -> 02:00:00:00:0b:02" in text and "to host h2" in text
    assert t.hops[-1].host == "h2"


def test_trace_v6_out_and_in_without_nat() -> None:
    from vxnet.trace.walk import walk

    out = walk(snapshot(), VM_A1["id"], "2001:db8:ff::100")
    assert out.verdict == "leaves", [h.decision for h in out.hops]
    text = " ".join(h.decision for h in out.hops)
    assert "default via 2001:db8:a::3 (the router's centralized port)" in text and "on-link on qg-" in text and "no NAT" in text
    assert "as 2001:db8:a::11" in out.summary
    back = walk(snapshot(), "2001:db8:ff::100", "2001:db8:a::11")
    assert back.verdict == "delivered", [h.decision for h in back.hops]
    assert "via 2001:db8:ff::10" in " ".join(h.decision for h in back.hops)
    assert back.hops[-1].host == "h1"
    # a source from another prefix has no way out: the fallback rule is per source subnet
    spoof = walk(snapshot(), VM_A1["id"], "2001:db8:ff::100", src_ip="2001:db8:c::11")
    assert (spoof.verdict, spoof.deciding) == ("unreachable", "no route")
    # nobody routes a prefix no router has
    assert walk(snapshot(), "2001:db8:ff::100", "2001:db8:c::11").verdict == "unreachable"


def test_v6_address_scopes_group_the_v6_legs_apart_from_v4() -> None:
    from vxnet.dataplane.router_driver import scope_ruleset

    v = view([IF_A, IF_B, VM_A1, VM_B2])
    v["networks"][NET_A]["ipv6_address_scope"] = "s6-a"
    v["networks"][NET_B]["ipv6_address_scope"] = "s6-b"
    (r,) = compute_routing(v, "h1").routers
    la, lb = iface_name(IF_A["id"]), iface_name(IF_B["id"])
    assert r.scope_groups6 == ((la,), (lb,))
    assert r.scope_groups == ()              # only A has IPv4: one IPv4 scope
    text = scope_ruleset(r.scope_groups, r.scope_groups6)
    assert 'table ip6 vxnet_scope {\n  chain forward' in text
    assert f'iifname {{ "{la}" }} oifname != {{ "{la}" }} drop' in text
    assert "table ip vxnet_scope {\n" not in text      # no IPv4 table: declared and deleted only
    v["networks"][NET_B]["ipv6_address_scope"] = "s6-a"
    assert compute_routing(v, "h1").routers[0].scope_groups6 == ()


def test_v6_pair_vips_get_static_neighbours_when_one_port_holds_them() -> None:
    # A single-address IPv6 pair (no prefix or /128) of one bound port: a static neighbour on
    # the router's leg and the gateway's snat leg (pair MAC, else the port's). A prefix pair, a
    # VIP two ports list (VRRP), an unbound port's pair: none.
    vip_a = dict(VM_A1, allowed_address_pairs=[{"ip_address": "2001:db8:a::50"},
                                               {"ip_address": "2001:db8:a::51/128", "mac_address": "02:00:00:00:0a:51"},
                                               {"ip_address": "2001:db8:a::60/124"},
                                               {"ip_address": "2001:db8:a::70"}, {"ip_address": "192.0.2.50"}])
    other = port("va200000-0000-4000-8000-000000000002", NET_A, [("a6", "2001:db8:a::12")], "02:00:00:00:0a:02", "h2")
    other["allowed_address_pairs"] = [{"ip_address": "2001:db8:a::70"}]
    idle = port("va300000-0000-4000-8000-000000000003", NET_A, [("a6", "2001:db8:a::13")], "02:00:00:00:0a:03")
    idle["allowed_address_pairs"] = [{"ip_address": "2001:db8:a::80"}]
    v = view([IF_A, IF_B, vip_a, other, idle, VM_B2, SNAT_A6, GW])
    (r,) = compute_routing(v, "h1").routers
    la = iface_name(IF_A["id"])
    vips = {(n.ip, n.mac) for n in r.neighs if n.dev == la and n.ip.startswith("2001:db8:a::") and
            n.ip not in ("2001:db8:a::11", "2001:db8:a::12", "2001:db8:a::3")}
    assert vips == {("2001:db8:a::50", "02:00:00:00:0a:01"), ("2001:db8:a::51", "02:00:00:00:0a:51")}
    (g,) = compute_gateway(v, "h3", None).routers
    gvips = {(ip, mac) for _, ip, mac in g.neighs6 if ip in ("2001:db8:a::50", "2001:db8:a::51", "2001:db8:a::70")}
    assert gvips == {("2001:db8:a::50", "02:00:00:00:0a:01"), ("2001:db8:a::51", "02:00:00:00:0a:51")}
    # The bridge answers for the VIP with the port's own MAC on every host (a pair MAC has no FDB entry).
    from vxnet.compute.l2 import compute_l2
    for h in ("h1", "h2"):
        sup = {(n.ip, n.mac) for n in compute_l2(v, h, "198.51.100.9").neighs if n.ip.startswith("2001:db8:a::")}
        assert ("2001:db8:a::50", "02:00:00:00:0a:01") in sup
        assert not {ip for ip, _ in sup} & {"2001:db8:a::51", "2001:db8:a::70", "2001:db8:a::80", "2001:db8:a::60"}


def test_gateway_on_an_ipv6_only_external_network() -> None:
    # The gateway port has only an IPv6 address: the namespace is built all the same, with the
    # v6 address on qg-, the ::/0 route, no IPv4 default route and no SNAT (the router has an
    # IPv4 interface subnet too: it has nothing to be translated to).
    gw6only = port(GW["id"], EXT, [("e6", "2001:db8:ff::10")], "fa:16:3e:00:00:01", "h3", "network:router_gateway", R1)
    v = view([IF_A, IF_B, VM_A1, SNAT_A6, SNAT_A4, gw6only])
    (g,) = compute_gateway(v, "h3", "vxlext0").routers
    assert g.gw.cidrs == ("2001:db8:ff::10/64",)
    assert (g.gateway_ip, g.gateway_ip6, g.gw_ip4) == (None, "2001:db8:ff::1", "")
    assert g.cidrs6 == ("2001:db8:a::/64", "2001:db8:b::/64")
    assert "snat to" not in nat_ruleset(g) and "2001:db8" not in nat_ruleset(g)
    assert f'iifname "{g.gw.inner}" ip6 daddr != {{ 2001:db8:a::/64, 2001:db8:b::/64 }} counter drop' in \
        filter6_ruleset(g)
    # a port without any address on a known subnet is still nothing to build
    bare = port(GW["id"], EXT, [], "fa:16:3e:00:00:01", "h3", "network:router_gateway", R1)
    assert compute_gateway(view([IF_A, bare]), "h3", "vxlext0").routers == ()
