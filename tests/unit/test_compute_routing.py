"""Pure compute: a host's view -> its router namespaces and their L2 entries. No kernel."""

from __future__ import annotations

import random

from vxnet.compute import naming
from vxnet.compute.l2 import compute_l2, merge
from vxnet.compute.routing import (
    MAIN_TABLE,
    Route,
    Rule,
    compute_routing,
    iface_name,
    is_host_netns,
    netns_name,
    service_port,
)
from vxnet.compute.state import Fdb, Neigh, Plug

NET_A = "aaaaaaaa-0000-4000-8000-000000000001"
NET_B = "bbbbbbbb-0000-4000-8000-000000000002"
NET_C = "cccccccc-0000-4000-8000-000000000003"
SUB_A, SUB_B, SUB_C = "sa", "sb", "sc"
R1 = "r1111111-0000-4000-8000-000000000001"
R2 = "r2222222-0000-4000-8000-000000000002"
HOSTS = {f"h{i}": {"host": f"h{i}", "underlay_ip": f"198.51.100.{i}", "alive": True, "gateway": False}
         for i in (1, 2, 3)}


def net(nid: str, vni: int, mtu: int = 1450) -> dict:
    return {"id": nid, "provider:network_type": "vxlan", "provider:segmentation_id": vni, "mtu": mtu}


def sub(sid: str, nid: str, cidr: str) -> dict:
    return {"id": sid, "network_id": nid, "cidr": cidr, "ip_version": 4, "gateway_ip": cidr.replace("0/24", "1")}


def port(pid: str, nid: str, sid: str, ip: str, mac: str, host: str = "", owner: str = "compute:nova",
         device: str = "") -> dict:
    return {"id": pid, "network_id": nid, "binding:host_id": host, "mac_address": mac, "device_owner": owner,
            "device_id": device, "fixed_ips": [{"subnet_id": sid, "ip_address": ip}], "admin_state_up": True}


def iface(pid: str, nid: str, sid: str, ip: str, mac: str, router: str = R1) -> dict:
    return port(pid, nid, sid, ip, mac, owner="network:router_interface", device=router)


def router(rid: str = R1, routes: list | None = None, up: bool = True) -> dict:
    return {"id": rid, "admin_state_up": up, "routes": routes or []}


IF_A = iface("ia000000-0000-4000-8000-00000000000a", NET_A, SUB_A, "192.0.2.1", "fa:16:3e:00:00:0a")
IF_B = iface("ib000000-0000-4000-8000-00000000000b", NET_B, SUB_B, "100.64.1.1", "fa:16:3e:00:00:0b")
VM_A1 = port("va100000-0000-4000-8000-000000000001", NET_A, SUB_A, "192.0.2.11", "02:00:00:00:0a:01", "h1")
VM_B3 = port("vb300000-0000-4000-8000-000000000003", NET_B, SUB_B, "100.64.1.13", "02:00:00:00:0b:03", "h3")


def view(ports: list[dict], routers: list[dict] | None = None, mtu_b: int = 1450) -> dict:
    return {"hosts": HOSTS,
            "networks": {NET_A: net(NET_A, 101), NET_B: net(NET_B, 102, mtu_b), NET_C: net(NET_C, 103)},
            "subnets": {SUB_A: sub(SUB_A, NET_A, "192.0.2.0/24"), SUB_B: sub(SUB_B, NET_B, "100.64.1.0/24"),
                        SUB_C: sub(SUB_C, NET_C, "203.0.113.0/24")},
            "ports": {p["id"]: p for p in ports},
            "routers": {r["id"]: r for r in (routers if routers is not None else [router()])}}


def test_host_with_a_vm_gets_the_router_with_every_interface_anycast() -> None:
    v = view([IF_A, IF_B, VM_A1, VM_B3])
    s1, s3 = compute_routing(v, "h1"), compute_routing(v, "h3")
    assert [r.netns for r in s1.routers] == [netns_name(R1, "h1")]
    assert [r.netns for r in s3.routers] == [netns_name(R1, "h3")]
    (r1,), (r3,) = s1.routers, s3.routers
    assert r1.ifaces == r3.ifaces             # same names, MACs and addresses on every host
    a, b = r1.ifaces
    assert (a.name, a.service_port, a.mac, a.addresses, a.bridge, a.mtu) == (
        iface_name(IF_A["id"]), service_port(IF_A["id"]), "fa:16:3e:00:00:0a", ("192.0.2.1/24",),
        naming.bridge_name(NET_A), 1450)
    assert b.addresses == ("100.64.1.1/24",)
    assert all(len(n) <= 15 for i in r1.ifaces for n in (i.name, i.service_port))
    assert r1.routes == () and r1.rules == ()


def test_l2_part_plugs_the_service_port_pins_the_gateway_mac_and_its_arp_entry() -> None:
    s = compute_routing(view([IF_A, IF_B, VM_A1]), "h1")
    spa, spb = service_port(IF_A["id"]), service_port(IF_B["id"])
    assert s.l2.plugs == {Plug(spa, naming.bridge_name(NET_A), 1450), Plug(spb, naming.bridge_name(NET_B), 1450)}
    assert s.l2.fdb == {Fdb(spa, "fa:16:3e:00:00:0a"), Fdb(spb, "fa:16:3e:00:00:0b")}
    assert all(f.master for f in s.l2.fdb)      # `master static` on the service port, never a VXLAN entry
    assert s.l2.neighs == {Neigh(naming.bridge_name(NET_A), "192.0.2.1", "fa:16:3e:00:00:0a"),
                           Neigh(naming.bridge_name(NET_B), "100.64.1.1", "fa:16:3e:00:00:0b")}


def test_l2_part_merges_with_the_l2_state_without_key_clashes() -> None:
    v = view([IF_A, IF_B, VM_A1, VM_B3])
    l2 = compute_l2(v, "h1", "198.51.100.1")
    r = compute_routing(v, "h1").l2
    merged = merge([l2, r])
    for kind in ("plugs", "fdb", "neighs"):
        keys = [e.key for e in getattr(merged, kind)]
        assert len(keys) == len(set(keys)), kind
    # the interface ports are unbound: L2 alone gives them nothing
    assert not any(e.mac.startswith("fa:16:3e:00:00:0") for e in l2.fdb)


def test_no_router_without_a_vm_on_one_of_its_networks() -> None:
    assert compute_routing(view([IF_A, IF_B, VM_B3]), "h1").routers == ()
    assert compute_routing(view([IF_A, IF_B]), "h1").routers == ()
    # a router's own ports bound here (the SNAT port on the gateway host) are not VMs
    snat = port("sn000000-0000-4000-8000-000000000001", NET_A, SUB_A, "192.0.2.3", "fa:16:3e:00:00:99", "h1",
                "network:router_centralized_snat", R1)
    dhcp = port("dh000000-0000-4000-8000-000000000001", NET_A, SUB_A, "192.0.2.2", "fa:16:3e:00:00:98", "h1",
                "network:dhcp", "x")
    assert compute_routing(view([IF_A, IF_B, snat, dhcp]), "h1").routers == ()
    s = compute_routing(view([IF_A, IF_B, snat, dhcp, VM_A1]), "h1")
    assert len(s.routers) == 1


def test_router_admin_down_or_missing_gives_nothing() -> None:
    assert compute_routing(view([IF_A, IF_B, VM_A1], [router(up=False)]), "h1").routers == ()
    s = compute_routing(view([IF_A, IF_B, VM_A1], []), "h1")
    assert s.routers == () and not s.l2.plugs and not s.l2.fdb and not s.l2.neighs


def test_removing_an_interface_removes_its_leg_and_entries() -> None:
    full = compute_routing(view([IF_A, IF_B, VM_A1]), "h1")
    less = compute_routing(view([IF_A, VM_A1]), "h1")
    assert [i.port_id for i in less.routers[0].ifaces] == [IF_A["id"]]
    assert {p.tap for p in full.l2.plugs} - {p.tap for p in less.l2.plugs} == {service_port(IF_B["id"])}
    assert not any(n.ip == "100.64.1.1" for n in less.l2.neighs)


def test_network_mtu_is_the_leg_mtu() -> None:
    s = compute_routing(view([IF_A, IF_B, VM_A1], mtu_b=1400), "h1")
    assert {i.network_id: i.mtu for i in s.routers[0].ifaces} == {NET_A: 1450, NET_B: 1400}
    assert Plug(service_port(IF_B["id"]), naming.bridge_name(NET_B), 1400) in s.l2.plugs


def test_extra_routes_go_on_the_leg_that_reaches_the_nexthop() -> None:
    routes = [{"destination": "203.0.113.0/24", "nexthop": "100.64.1.13"},
              {"destination": "198.51.100.128/25", "nexthop": "192.0.2.50"},
              {"destination": "10.0.0.0/8", "nexthop": "172.16.0.1"}]        # unreachable nexthop: left out
    r = compute_routing(view([IF_A, IF_B, VM_A1], [router(routes=routes)]), "h1").routers[0]
    assert set(r.routes) == {Route("203.0.113.0/24", "100.64.1.13", iface_name(IF_B["id"])),
                             Route("198.51.100.128/25", "192.0.2.50", iface_name(IF_A["id"]))}
    assert all(rt.table == MAIN_TABLE for rt in r.routes)


def test_snat_port_gives_suppress_rule_source_rule_and_default_in_the_interface_table() -> None:
    snat_a = port("sn00000a-0000-4000-8000-000000000001", NET_A, SUB_A, "192.0.2.3", "fa:16:3e:00:01:0a", "h3",
                  "network:router_centralized_snat", R1)
    r = compute_routing(view([IF_A, IF_B, VM_A1, snat_a]), "h1").routers[0]
    (table,) = {rt.table for rt in r.routes}
    assert table not in (253, 254, 255)
    assert r.rules == (Rule(1000, "192.0.2.0/24", MAIN_TABLE, 0), Rule(2000, "192.0.2.0/24", table))
    assert r.routes == (Route("0.0.0.0/0", "192.0.2.3", iface_name(IF_A["id"]), table),)
    # subnet B has no SNAT port: no rule for it
    assert not any(rule.src == "100.64.1.0/24" for rule in r.rules)
    # another router's SNAT port does not count
    other = dict(snat_a, device_id=R2)
    assert compute_routing(view([IF_A, IF_B, VM_A1, other]), "h1").routers[0].rules == ()


def test_interface_tables_are_distinct_and_stable() -> None:
    # two interfaces whose ids share the first 4 hex digits
    i1 = iface("abcd0001-0000-4000-8000-000000000001", NET_A, SUB_A, "192.0.2.1", "fa:16:3e:00:00:01")
    i2 = iface("abcd0002-0000-4000-8000-000000000002", NET_B, SUB_B, "100.64.1.1", "fa:16:3e:00:00:02")
    sn = [port(f"sn00000{k}-0000-4000-8000-000000000001", n, s, ip, f"fa:16:3e:00:01:0{k}", "h3",
               "network:router_centralized_snat", R1)
          for k, n, s, ip in ((1, NET_A, SUB_A, "192.0.2.3"), (2, NET_B, SUB_B, "100.64.1.3"))]
    r = compute_routing(view([i1, i2, VM_A1, *sn]), "h1").routers[0]
    tables = {rt.dev: rt.table for rt in r.routes}
    assert len(set(tables.values())) == 2
    # i1's table does not move when i2 goes away
    r1 = compute_routing(view([i1, VM_A1, *sn]), "h1").routers[0]
    assert {rt.dev: rt.table for rt in r1.routes} == {iface_name(i1["id"]): tables[iface_name(i1["id"])]}


def test_two_routers_with_identical_cidrs_stay_apart() -> None:
    if_a2 = iface("ia200000-0000-4000-8000-00000000000a", NET_C, SUB_C, "192.0.2.1", "fa:16:3e:00:02:0a", R2)
    v = view([IF_A, IF_B, VM_A1, if_a2,
              port("vc100000-0000-4000-8000-000000000001", NET_C, SUB_C, "192.0.2.11", "02:00:00:00:0c:01", "h1")],
             [router(R1), router(R2)])
    v["subnets"][SUB_C]["cidr"] = "192.0.2.0/24"
    s = compute_routing(v, "h1")
    assert [r.router_id for r in s.routers] == sorted([R1, R2])
    assert len({r.netns for r in s.routers}) == 2
    br = {n.dev for n in s.l2.neighs if n.ip == "192.0.2.1"}
    assert br == {naming.bridge_name(NET_A), naming.bridge_name(NET_C)}   # one entry per bridge


def test_namespace_names_carry_the_host_and_match_only_it() -> None:
    n1 = netns_name(R1, "h1")
    assert n1 == "vxr-" + R1[:11] + "-h1"
    assert is_host_netns(n1, "h1")
    assert not is_host_netns(n1, "h11") and not is_host_netns(netns_name(R1, "h11"), "h1")
    assert not is_host_netns("vxr-x-h1", "h1") and not is_host_netns("vxl-h1", "h1")
    weird = netns_name(R1, "host/with spaces")
    assert "/" not in weird and " " not in weird and is_host_netns(weird, "host/with spaces")


def test_result_does_not_depend_on_dict_order() -> None:
    ports = [IF_A, IF_B, VM_A1, VM_B3]
    ref = compute_routing(view(ports), "h1")
    rng = random.Random(5)
    for _ in range(10):
        rng.shuffle(ports)
        assert compute_routing(view(ports), "h1") == ref


IF_C = iface("ic000000-0000-4000-8000-00000000000c", NET_C, SUB_C, "203.0.113.1", "fa:16:3e:00:00:0c")


def scoped_view(scopes: dict[str, str | None]) -> dict:
    v = view([IF_A, IF_B, IF_C, VM_A1])
    for nid, scope in scopes.items():
        v["networks"][nid]["ipv4_address_scope"] = scope
    return v


def test_address_scopes_group_the_legs_and_one_scope_needs_no_filter() -> None:
    a, b, c = (iface_name(p["id"]) for p in (IF_A, IF_B, IF_C))
    (same,) = compute_routing(scoped_view({NET_A: "s1", NET_B: "s1", NET_C: "s1"}), "h1").routers
    assert same.scope_groups == ()
    (none,) = compute_routing(scoped_view({}), "h1").routers
    assert none.scope_groups == ()                       # no scope anywhere: one (implicit) scope
    (two,) = compute_routing(scoped_view({NET_A: "s1", NET_B: "s2", NET_C: "s1"}), "h1").routers
    assert two.scope_groups == ((a, c), (b,))
    (mixed,) = compute_routing(scoped_view({NET_A: "s1"}), "h1").routers
    assert mixed.scope_groups == ((a,), (b, c))          # no scope is a scope of its own, as in Neutron
    assert mixed.ifaces == two.ifaces and mixed.routes == two.routes   # only the filter differs
