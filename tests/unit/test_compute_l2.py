"""Pure compute: a host's view -> desired L2 state. No kernel, no mocks."""

from __future__ import annotations

import dataclasses
import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from vxnet.compute import naming
from vxnet.compute.diff import apply_host, diff_host
from vxnet.compute.l2 import L2Cache, compute_l2
from vxnet.compute.state import Bridge, Fdb, HostState, Neigh, Plug, Vxlan
from vxnet.compute.view import ViewState, apply_message

NET_A = "aaaaaaaa-0000-4000-8000-000000000001"
NET_B = "bbbbbbbb-0000-4000-8000-000000000002"
HOSTS = {f"h{i}": {"host": f"h{i}", "underlay_ip": f"198.51.100.{i}", "alive": True, "gateway": False}
         for i in (1, 2, 3)}


def net(nid: str, vni: int, mtu: int = 1450) -> dict:
    return {"id": nid, "provider:network_type": "vxlan", "provider:segmentation_id": vni, "mtu": mtu}


def port(pid: str, nid: str, host: str, mac: str, ip: str) -> dict:
    return {"id": pid, "network_id": nid, "binding:host_id": host, "mac_address": mac,
            "fixed_ips": [{"subnet_id": "s", "ip_address": ip}], "status": "DOWN"}


def view(ports: list[dict], nets: list[dict] | None = None) -> dict:
    nets = nets if nets is not None else [net(NET_A, 1001)]
    return {"hosts": HOSTS, "networks": {n["id"]: n for n in nets}, "ports": {p["id"]: p for p in ports}}


P1 = port("p1000000-0000-4000-8000-000000000001", NET_A, "h1", "02:00:00:00:01:01", "192.0.2.11")
P2 = port("p2000000-0000-4000-8000-000000000002", NET_A, "h2", "02:00:00:00:01:02", "192.0.2.12")
P3 = port("p3000000-0000-4000-8000-000000000003", NET_A, "h3", "02:00:00:00:01:03", "192.0.2.13")


def test_network_gets_bridge_and_vxlan_with_its_vni_and_mtu() -> None:
    s = compute_l2(view([P1], [net(NET_A, 1001, 1400)]), "h1", "198.51.100.1")
    br, vx = naming.bridge_name(NET_A), naming.vxlan_name(NET_A)
    assert s.bridges == {Bridge(br, naming.bridge_mac(NET_A, "h1"), 1400, nf_call=True)}
    assert s.vxlans == {Vxlan(vx, 1001, "198.51.100.1", br, 1400)}
    assert all(len(n) <= 15 for n in (br, vx, naming.tap_name(P1["id"])))


def test_br_netfilter_only_on_bridges_with_a_local_filtered_port() -> None:
    """A bridge passes br_netfilter (the inet hooks the security groups live in) when a port
    bound to this host on its network has port security; not for ports of other hosts, ports
    with port security off, or infrastructure ports (routers, DHCP)."""
    off = dict(P1, port_security_enabled=False)
    router = dict(P1, device_owner="network:router_interface_distributed")

    def nf(ports: list[dict], host: str = "h1") -> bool | None:
        (b,) = compute_l2(view(ports), host, "198.51.100.1").bridges
        return b.nf_call

    assert nf([P1]) is True
    assert nf([off]) is False
    assert nf([router]) is False
    assert nf([off, P2]) is False           # the filtered port is on h2
    assert nf([P1, P2], "h2") is True
    assert nf([off, dict(P3, **{"binding:host_id": "h1"})]) is True   # one filtered local port is enough


def test_local_port_plugged_remote_ports_pointed_at_their_vtep() -> None:
    s = compute_l2(view([P1, P2, P3]), "h1", "198.51.100.1")
    br, vx = naming.bridge_name(NET_A), naming.vxlan_name(NET_A)
    tap = naming.tap_name(P1["id"])
    assert s.plugs == {Plug(tap, br, 1450)}
    assert s.fdb == {
        Fdb(tap, P1["mac_address"]),
        Fdb(vx, P2["mac_address"], "198.51.100.2"), Fdb(vx, P2["mac_address"]),
        Fdb(vx, P3["mac_address"], "198.51.100.3"), Fdb(vx, P3["mac_address"]),
    }
    assert s.neighs == {Neigh(br, "192.0.2.11", P1["mac_address"]), Neigh(br, "192.0.2.12", P2["mac_address"]),
                        Neigh(br, "192.0.2.13", P3["mac_address"])}
    assert {lp.port_id for lp in s.local_ports} == {P1["id"]}


def test_unbound_and_unknown_host_ports_are_not_programmed() -> None:
    unbound = port("p4", NET_A, "", "02:00:00:00:01:04", "192.0.2.14")
    nowhere = port("p5", NET_A, "h9", "02:00:00:00:01:05", "192.0.2.15")
    s = compute_l2(view([P1, unbound, nowhere]), "h1", "198.51.100.1")
    macs = {f.mac for f in s.fdb} | {n.mac for n in s.neighs}
    assert macs == {P1["mac_address"]}


def test_same_cidr_and_macs_in_two_networks_stay_apart() -> None:
    b1 = dict(P1, id="q1000000-0000-4000-8000-000000000001", network_id=NET_B)
    b2 = dict(P2, id="q2000000-0000-4000-8000-000000000002", network_id=NET_B)
    s = compute_l2(view([P1, P2, b1, b2], [net(NET_A, 1001), net(NET_B, 1002)]), "h1", "198.51.100.1")
    assert {v.vni for v in s.vxlans} == {1001, 1002}
    by_dev: dict[str, set[str]] = {}
    for f in s.fdb:
        by_dev.setdefault(f.dev, set()).add(f.mac)
    assert by_dev[naming.vxlan_name(NET_A)] == by_dev[naming.vxlan_name(NET_B)] == {P2["mac_address"]}
    assert {n.dev for n in s.neighs} == {naming.bridge_name(NET_A), naming.bridge_name(NET_B)}
    assert len(s.neighs) == 4   # same IPs, but one entry per bridge


def test_migration_repoints_fdb_only() -> None:
    before = compute_l2(view([P1, P2]), "h1", "198.51.100.1")
    after = compute_l2(view([P1, dict(P2, **{"binding:host_id": "h3"})]), "h1", "198.51.100.1")
    d = diff_host(after, before)
    assert d.counts() == {"bridges": 0, "vxlans": 0, "plugs": 0, "fdb": 1, "neighs": 0}
    assert [(old.dst, new.dst) for old, new in d.fdb.update] == [("198.51.100.2", "198.51.100.3")]
    # The new host plugs it locally and drops its remote entries.
    h3 = compute_l2(view([P1, dict(P2, **{"binding:host_id": "h3"})]), "h3", "198.51.100.3")
    assert naming.tap_name(P2["id"]) in {p.tap for p in h3.plugs}


def test_apply_revert_back_to_start() -> None:
    start = ViewState()
    start = apply_message(start, {"type": "snapshot", "revision": 10, "view": view([P1, P2])})
    kernel = apply_host(HostState(), diff_host(compute_l2(start.data, "h1", "198.51.100.1"), HostState()))
    original = kernel
    changed = apply_message(start, {"type": "update", "revision": 11,
                                    "put": {"ports": {P3["id"]: P3}, "networks": {NET_B: net(NET_B, 1002)}}})
    want = compute_l2(changed.data, "h1", "198.51.100.1")
    kernel = apply_host(kernel, diff_host(want, kernel))
    assert kernel == dataclasses.replace(want, local_ports=frozenset()) and kernel != original
    reverted = apply_message(changed, {"type": "update", "revision": 12,
                                       "delete": {"ports": [P3["id"]], "networks": [NET_B]}})
    kernel = apply_host(kernel, diff_host(compute_l2(reverted.data, "h1", "198.51.100.1"), kernel))
    assert kernel == original


def test_replayed_old_update_is_ignored() -> None:
    s = apply_message(ViewState(), {"type": "snapshot", "revision": 10, "view": view([P1])})
    s2 = apply_message(s, {"type": "update", "revision": 9, "put": {"ports": {P2["id"]: P2}}})
    assert s2 == s
    s3 = apply_message(s, {"type": "ping", "revision": 15})
    assert s3.revision == 15 and s3.data == s.data


_ports = [port(f"p{i:07d}-0000-4000-8000-000000000000", NET_A if i % 2 else NET_B, f"h{i % 3 + 1}",
               f"02:00:00:00:02:{i:02x}", f"192.0.2.{20 + i}") for i in range(8)]


@settings(max_examples=40, deadline=None)
@given(st.permutations(list(range(8))), st.integers(0, 2**31))
def test_same_result_whatever_the_event_order(order: list[int], seed: int) -> None:
    """Each object arrives in its own update, in any order, with deletes of others interleaved."""
    base = {"type": "snapshot", "revision": 1, "view": view([], [net(NET_A, 1001), net(NET_B, 1002)])}
    rng = random.Random(seed)
    s = apply_message(ViewState(), base)
    rev = itertools.count(2)
    doomed = set(rng.sample(range(8), 3))
    for i in order:
        s = apply_message(s, {"type": "update", "revision": next(rev), "put": {"ports": {_ports[i]["id"]: _ports[i]}}})
    for i in sorted(doomed, key=lambda _: rng.random()):
        s = apply_message(s, {"type": "update", "revision": next(rev), "delete": {"ports": [_ports[i]["id"]]}})
    expected = view([p for i, p in enumerate(_ports) if i not in doomed], [net(NET_A, 1001), net(NET_B, 1002)])
    for h in ("h1", "h2", "h3"):
        ip = HOSTS[h]["underlay_ip"]
        assert compute_l2(s.data, h, ip) == compute_l2(expected, h, ip)


def test_admin_down_port_is_detached_and_unknown_to_peers() -> None:
    down2 = dict(P2, admin_state_up=False)
    h1 = compute_l2(view([P1, down2]), "h1", "198.51.100.1")
    assert P2["mac_address"] not in {f.mac for f in h1.fdb} | {n.mac for n in h1.neighs}
    h2 = compute_l2(view([P1, down2]), "h2", "198.51.100.2")
    assert not h2.plugs and {lp.port_id for lp in h2.local_ports} == {P2["id"]}
    assert P2["mac_address"] not in {f.mac for f in h2.fdb}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["put", "delete", "move", "host"]), st.integers(0, 7)), max_size=25))
def test_incremental_cache_equals_full_recompute(ops: list[tuple[str, int]]) -> None:
    """After every message, the per-network cache gives exactly `compute_l2` of the same view."""
    nets = [net(NET_A, 1001), net(NET_B, 1002)]
    s = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": view(_ports[:3], nets)})
    caches = {h: L2Cache(h, HOSTS[h]["underlay_ip"]) for h in HOSTS}
    rev = itertools.count(2)
    for op, i in ops:
        p = _ports[i]
        if op == "put":
            msg = {"put": {"ports": {p["id"]: p}}}
        elif op == "delete":
            msg = {"delete": {"ports": [p["id"]]}}
        elif op == "move":
            msg = {"put": {"ports": {p["id"]: dict(p, **{"binding:host_id": f"h{i % 3 + 1}" if i % 2 else "h1"})}}}
        else:
            msg = {"put": {"hosts": {f"h{i % 3 + 1}": {"underlay_ip": f"198.51.100.{50 + i}"}}}}
        s = apply_message(s, {"type": "update", "revision": next(rev), **msg})
        for h, cache in caches.items():
            ip = HOSTS[h]["underlay_ip"]
            assert cache.compute(s.data) == compute_l2(s.data, h, ip)


def test_incremental_cache_recomputes_only_the_touched_network() -> None:
    nets = [net(NET_A, 1001), net(NET_B, 1002)]
    s = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": view(_ports[:4], nets)})
    cache = L2Cache("h1", "198.51.100.1")
    first = cache.compute(s.data)
    assert cache.recomputed == 2
    again = cache.compute(s.data)
    assert cache.recomputed == 0 and again == first
    s = apply_message(s, {"type": "update", "revision": 2, "put": {"ports": {_ports[5]["id"]: _ports[5]}}})
    cache.compute(s.data)
    assert cache.recomputed == 1     # _ports[5] is on NET_A only


def test_the_cache_keeps_its_ports_entries_itself_and_only_for_ports_in_view() -> None:
    # L2Cache memoizes each network's port entries in a PortMemo of its own (not in the global
    # lru cache of the reference compute_l2, whose keys cost ~1.3 MB more with 10,000 ports); an
    # unchanged port's entries are the same objects next time; a deleted port's are let go.
    from vxnet.compute.l2 import _port_l2

    nets = [net(NET_A, 1001), net(NET_B, 1002)]
    s = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": view(_ports[:4], nets)})
    _port_l2.cache_clear()
    cache = L2Cache("h1", "198.51.100.1")
    first = cache.compute(s.data)
    assert _port_l2.cache_info().currsize == 0
    held = {pid for m in cache._ports.values() for pid in m._old}
    assert held == {p["id"] for p in _ports[:4]}
    gone = _ports[0]
    s = apply_message(s, {"type": "update", "revision": 2, "delete": {"ports": [gone["id"]]},
                          "put": {"ports": {_ports[5]["id"]: _ports[5]}}})
    again = cache.compute(s.data)
    assert again == compute_l2(s.data, "h1", "198.51.100.1")
    assert gone["id"] not in {pid for m in cache._ports.values() for pid in m._old}
    kept = {e for e in first.fdb if e in again.fdb}
    assert kept and all(any(e is f for f in again.fdb) for e in kept)      # the same entry objects
