"""`FirewallCache`: the firewall incremental per changed port equals `compute_firewall` on random
histories (mark index collisions, shared tap names, remote groups with shared addresses and
prefixes, leases, groups and rules changing), and a port-up recomputes only its own port."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vxnet.compute import firewall as fwm
from vxnet.compute import firewall_model as fwmodel
from vxnet.compute import nft_table as nft
from vxnet.compute.firewall import compute_firewall
from vxnet.compute.firewall_cache import FirewallCache
from vxnet.compute.view import ViewState, apply_message
from vxnet.dataplane.nft_driver import diff_table

NET, NET2 = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"
SUB, SUB2 = "5aaaaaaa-0000-4000-8000-000000000001", "5bbbbbbb-0000-4000-8000-000000000002"
G1, G2, GS = ("11111111-0000-4000-8000-000000000001", "22222222-0000-4000-8000-000000000002",
              "33333333-0000-4000-8000-000000000003")
# c0000033 and c0000103 hash to the same mark index slot (16452), c0028128 to the next one:
# together they make the index probe past collisions. d...-a and d...-b share a tap name.
IDS = ["c0000033-0000-4000-8000-000000000000", "c0000103-0000-4000-8000-000000000000",
       "c0028128-0000-4000-8000-000000000000", "d0000001-00aa-4000-8000-000000000000",
       "d0000001-00bb-4000-8000-000000000000", *(f"e{n:07d}-0000-4000-8000-000000000000" for n in range(7))]
HOSTS = ("h1", "h1", "h2", "")
ADDRS = ["192.0.2.10", "192.0.2.11", "192.0.2.12", "198.51.100.0/28", "2001:db8::10", "2001:db8::/64"]


def port(i: int, host: str, net: int = 0, addr: int = 0, groups: tuple[str, ...] = (G1,), **kw: Any) -> dict:
    ip = f"192.0.{2 + net}.{20 + i}"
    return {"id": IDS[i], "network_id": (NET, NET2)[net], "binding:host_id": host,
            "mac_address": f"fa:16:3e:00:00:{i % 6:02x}",       # some ports share a MAC (lease order)
            "fixed_ips": [{"subnet_id": (SUB, SUB2)[net], "ip_address": ip}],
            "allowed_address_pairs": [{"ip_address": ADDRS[addr]}] if addr < len(ADDRS) else [],
            "security_groups": list(groups), "port_security_enabled": True, "device_owner": "compute:nova",
            "admin_state_up": True, "status": "DOWN", **kw}


def rule(rid: str, group: str, direction: str, **kw: Any) -> dict:
    return {"id": rid, "security_group_id": group, "direction": direction, "ethertype": "IPv4", **kw}


RULES = {r["id"]: r for r in (
    rule("r1", G1, "egress"), rule("r2", G1, "ingress", remote_group_id=G2),
    rule("r3", G1, "ingress", ethertype="IPv6", remote_group_id=G1),
    rule("r4", G2, "ingress", remote_group_id=G1, protocol="tcp", port_range_min=22, port_range_max=22),
    rule("r5", GS, "ingress", protocol="udp", port_range_min=53, port_range_max=53))}


def world() -> dict:
    return {"networks": {NET: {"id": NET, "provider:network_type": "vxlan", "provider:segmentation_id": 1001},
                         NET2: {"id": NET2, "provider:network_type": "vxlan", "provider:segmentation_id": 1002}},
            "subnets": {SUB: {"id": SUB, "network_id": NET, "cidr": "192.0.2.0/24", "ip_version": 4,
                              "enable_dhcp": True, "gateway_ip": "192.0.2.1"},
                        SUB2: {"id": SUB2, "network_id": NET2, "cidr": "192.0.3.0/24", "ip_version": 4,
                               "enable_dhcp": True, "gateway_ip": "192.0.3.1"}},
            "ports": {p["id"]: p for p in (port(0, "h1"), port(3, "h1"), port(5, "h2", groups=(G2,)))},
            "security_groups": {g: {"id": g, "stateful": g != GS} for g in (G1, G2, GS)},
            "security_group_rules": dict(RULES)}


OPS = st.lists(st.tuples(st.sampled_from(["put", "put", "put", "delete", "groups", "off", "infra", "subport",
                                          "status", "down", "dhcp", "rule", "stateful", "network"]),
                         st.integers(0, len(IDS) - 1), st.integers(0, 7)), max_size=25)


def message(op: str, i: int, k: int) -> dict:
    host, net = HOSTS[k % len(HOSTS)], k % 2
    p = port(i, host, net=net, addr=k % (len(ADDRS) + 2))
    if op == "put":
        return {"put": {"ports": {p["id"]: p}}}
    if op == "delete":
        return {"delete": {"ports": [IDS[i]]}}
    if op == "groups":
        return {"put": {"ports": {p["id"]: dict(p, security_groups=[[], [G2], [GS], [G1, G2]][k % 4])}}}
    if op == "off":
        return {"put": {"ports": {p["id"]: dict(p, port_security_enabled=False, security_groups=[])}}}
    if op == "infra":
        return {"put": {"ports": {p["id"]: dict(p, device_owner="network:router_interface")}}}
    if op == "subport":
        return {"put": {"ports": {p["id"]: dict(p, device_owner="trunk:subport")}}}
    if op == "status":
        return {"put": {"ports": {p["id"]: dict(p, status="ACTIVE")}}}
    if op == "down":
        return {"put": {"ports": {p["id"]: dict(p, admin_state_up=False)}}}
    if op == "dhcp":
        s = world()["subnets"][(SUB, SUB2)[net]]
        return {"put": {"subnets": {s["id"]: dict(s, enable_dhcp=bool(k % 3))}}}
    if op == "rule":
        r = rule(f"x{k}", (G1, G2)[k % 2], "ingress", remote_group_id=(G2, G1)[k % 2],
                 ethertype=("IPv4", "IPv6")[k % 3 == 0])
        return {"put": {"security_group_rules": {r["id"]: r}}} if k % 4 else {"delete": {"security_group_rules": ["r2"]}}
    if op == "stateful":
        return {"put": {"security_groups": {G2: {"id": G2, "stateful": bool(k % 2)}}}}
    n = world()["networks"][(NET, NET2)[net]]
    return {"put": {"networks": {n["id"]: dict(n, **{"provider:segmentation_id": 70000 + k})}}}


@settings(max_examples=120, deadline=None)
@given(OPS, st.lists(st.integers(1, 3), min_size=25, max_size=25))
def test_the_cache_equals_the_full_recompute(ops: list[tuple[str, int, int]], batch: list[int]) -> None:
    """After every batch of messages, each host's cache gives exactly `compute_firewall`, and
    the same filter objects for the ports that did not change."""
    state = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": world()})
    caches = {h: FirewallCache(h) for h in ("h1", "h2")}
    last = {h: caches[h].compute(state.view) for h in caches}
    rev = itertools.count(2)
    sizes = iter(batch)
    pending = 0
    for n, (op, i, k) in enumerate(ops):
        state = apply_message(state, {"type": "update", "revision": next(rev), **message(op, i, k)})
        pending += 1
        if pending < next(sizes) and n < len(ops) - 1:
            continue            # several messages before a pass (the agent coalesces)
        pending = 0
        for h, cache in caches.items():
            got = cache.compute(state.view)
            assert got == compute_firewall(state.view, h)
            assert got.tables == fwm.render(got)      # spliced from the last rendering, or whole
            assert all(t.chain_map() == {c.name: c for c in t.chains} for t in got.tables)
            # the diff from the last tables: the same commands as without the splice's hints
            for o, t in zip(last[h].tables, got.tables, strict=True):
                plain = (nft.NftTable(o.family, o.name, o.chains, o.sets), nft.NftTable(t.family, t.name, t.chains, t.sets))
                assert sorted(diff_table(o, t)) == sorted(diff_table(*plain))
            for f in got.ports:
                before = last[h].port(f.port_id)
                if before == f:
                    assert before is f
            last[h] = got


def test_a_port_up_recomputes_only_its_port() -> None:
    """A port bound to the host: one changed port, no full recompute; an index collision is
    exact too (the ports probing past it keep their slots)."""
    state = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": world()})
    cache = FirewallCache("h1")
    assert cache.compute(state.view).tables     # rendered, as the agent does
    assert cache.full == 1
    for n, i in enumerate((2, 6, 7, 1), 2):     # 1 hashes to 0's slot, 2 to the next one
        p = port(i, "")
        state = apply_message(state, {"type": "update", "revision": 2 * n, "put": {"ports": {p["id"]: p}}})
        before = cache.compute(state.view)
        p = port(i, "h1")
        state = apply_message(state, {"type": "update", "revision": 2 * n + 1, "put": {"ports": {p["id"]: p}}})
        got = cache.compute(state.view)
        assert cache.changed == 1
        assert got == compute_firewall(state.view, "h1")
        # the rendering: the last one's with this port's chains and entries put in, not made anew
        assert "tables" in got.__dict__ and got.tables == fwm.render(got)
        # this port, one probed past it (1), one that lost the DHCP lease of a shared MAC (1 and 7)
        moved = {f.ident for f in got.ports if before.port(f.port_id) is not f}
        assert len(moved) == (3 if i == 1 else 1)
        unchanged = [c for c in got.tables[0].chains if c.name[3:] not in moved]
        assert all(any(c is b for b in before.tables[0].chains) for c in unchanged)
    assert cache.full == 1
    ids = {f.port_id: f.index for f in got.ports}
    assert ids[IDS[0]] == 16452 and ids[IDS[1]] == 16453 and ids[IDS[2]] == 16454     # in id order, probing
    assert fwmodel.mark_indexes(ids) == ids


def test_after_an_index_collision_a_port_up_still_recomputes_only_its_filter() -> None:
    """Once two local ports collide (one index probed past the other's slot), a port that
    comes at its own free slot, or goes, recomputes only its own filter, not every local
    port's (issue 18: the pass of a host with a few hundred ports, where a collision is likely,
    would grow with its ports again); the result is the full recompute's."""
    state = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": world()})
    cache = FirewallCache("h1")
    cache.compute(state.view)
    rev = itertools.count(2)
    for i in (1, 2, 6):       # 1 collides with 0's slot, 2 probes past both
        p = port(i, "h1")
        state = apply_message(state, {"type": "update", "revision": next(rev), "put": {"ports": {p["id"]: p}}})
        cache.compute(state.view)
    local = {f.port_id: f.index for f in cache.compute(state.view).ports}
    assert local[IDS[1]] != fwm_slot(IDS[1])          # the collision is there
    for i, host in ((7, "h1"), (8, "h1"), (7, ""), (9, "h1")):
        p = port(i, host)
        state = apply_message(state, {"type": "update", "revision": next(rev), "put": {"ports": {p["id"]: p}}})
        got = cache.compute(state.view)
        assert got == compute_firewall(state.view, "h1")
        # a port that goes while an index is not its own slot: every index again, but only the
        # filters whose index changed (none here) are computed
        assert cache.refiltered == (1 if host else 0)
    assert cache.full == 1


def test_a_port_up_keeps_the_sets_it_adds_nothing_to() -> None:
    """The spliced rendering of a port-up keeps every set and map the port has no element in
    as the same object (`diff_table` skips it without comparing its elements): here the
    interval twins of a port without an address pair's CIDR."""
    state = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": world()})
    cache = FirewallCache("h1")
    before = cache.compute(state.view)
    assert before.tables
    p = port(6, "h1", addr=len(ADDRS))            # one exact address, no pair
    state = apply_message(state, {"type": "update", "revision": 2, "put": {"ports": {p["id"]: p}}})
    got = cache.compute(state.view)
    assert got.tables == fwm.render(got) and "changed_from" in got.tables[0].__dict__
    old, new = ({s.name: s for s in t.sets} for t in (before.tables[0], got.tables[0]))
    assert new["ps_mark_net"] is old["ps_mark_net"] and new["ps_arp_net"] is old["ps_arp_net"]
    assert new["ps_mark"] is not old["ps_mark"]
    cmds = diff_table(before.tables[0], got.tables[0])
    assert not any("ps_mark_net" in c or "ps_arp_net" in c for c in cmds) and any("ps_mark " in c for c in cmds)


def fwm_slot(pid: str) -> int:
    return fwmodel.mark_indexes([pid])[pid]


def test_a_port_up_of_a_profile_on_the_host_adds_no_rule_to_the_sg_table() -> None:
    """A port bound to the host with the security profile of a local port: the spliced
    rendering changes no chain of `inet vxnet_sg` (its two map elements only, so the kernel has
    no new rule to validate); a group change moves a port to another profile's chain, and a
    profile's chains go with its last port and come with its first, in the splice too."""
    state = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": world()})
    p = port(6, "h1", groups=(G1, G2))       # G1 and G2 both used on h1 from now on
    state = apply_message(state, {"type": "update", "revision": 2, "put": {"ports": {p["id"]: p}}})
    cache = FirewallCache("h1")
    before = cache.compute(state.view)
    assert before.tables
    p = port(7, "h1")                         # the profile of ports 0 and 3
    state = apply_message(state, {"type": "update", "revision": 3, "put": {"ports": {p["id"]: p}}})
    got = cache.compute(state.view)
    sg = got.tables[1]
    assert sg.__dict__["changed_from"][1] == () and sg.chains is before.tables[1].chains
    cmds = diff_table(before.tables[1], sg)
    assert cmds and all(c.split()[1] in ("map", "set") for c in cmds), cmds
    # its `eg_ports` element (`in_ports` holds one element per profile: the mark's high half
    # names the profile, not the port)
    assert sum("jump eg_" in c or "jump in_" in c for c in cmds) == 1
    ps = got.tables[0]
    assert ps.__dict__["changed_from"][1] == ()
    cmds = diff_table(before.tables[0], ps)
    assert cmds and all(c.split()[1] in ("map", "set") for c in cmds), cmds      # the bridge table: elements too
    assert got.tables == fwm.render(got)
    g1, g12 = got.port(IDS[0]).profile, got.port(IDS[6]).profile
    rev = 4
    for i in (0, 3, 7):                       # G1's ports move to (G1, G2): G1's profile goes with the last
        p = port(i, "h1", groups=(G1, G2))
        state = apply_message(state, {"type": "update", "revision": rev, "put": {"ports": {p["id"]: p}}})
        rev += 1
        last, got = got, cache.compute(state.view)
        assert got.tables == fwm.render(got) and "changed_from" in got.tables[1].__dict__
        assert got.port(IDS[i]).profile == g12
        assert f"{got.port(IDS[i]).index:#010x} : jump eg_{g12}" in next(
            s for s in got.tables[1].sets if s.name == "eg_ports").elements
        cmds = diff_table(last.tables[1], got.tables[1])
        assert not any(c.startswith(("add chain", "add rule")) for c in cmds), cmds
        assert (f"delete chain inet vxnet_sg eg_{g1}" in cmds) == (i == 7)
    p = port(3, "h1")                         # back: G1's profile comes with its first port
    state = apply_message(state, {"type": "update", "revision": rev, "put": {"ports": {p["id"]: p}}})
    last, got = got, cache.compute(state.view)
    assert got.tables == fwm.render(got) and got.tables[1].__dict__["changed_from"][1] == (f"eg_{g1}", f"in_{g1}")
    assert f"add chain inet vxnet_sg eg_{g1}" in diff_table(last.tables[1], got.tables[1])


def test_a_failed_call_recomputes_everything_next_time(monkeypatch) -> None:
    """An exception half-way (a bug, a surprise in the view) leaves no half-updated state."""
    state = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": world()})
    cache = FirewallCache("h1")
    cache.compute(state.view)
    p = port(6, "h1")
    state = apply_message(state, {"type": "update", "revision": 2, "put": {"ports": {p["id"]: p}}})
    import vxnet.compute.firewall_cache as fc

    def broken(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(fc, "port_filter", broken)
        try:
            cache.compute(state.view)
        except RuntimeError:
            pass
    assert cache.compute(state.view) == compute_firewall(state.view, "h1")
    assert cache.full == 2


def test_the_renderings_of_past_passes_are_not_kept() -> None:
    """A spliced rendering names the one it came from weakly: past tables are freed."""
    import gc
    import weakref

    state = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": world()})
    cache = FirewallCache("h1")
    first = weakref.ref(cache.compute(state.view).tables[0])
    for n, i in enumerate((2, 6, 7, 8), 2):
        p = port(i, "h1")
        state = apply_message(state, {"type": "update", "revision": n, "put": {"ports": {p["id"]: p}}})
        got = cache.compute(state.view)
        assert "tables" in got.__dict__ and got.tables == fwm.render(got)
    gc.collect()
    assert first() is None
