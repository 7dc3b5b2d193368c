"""`L2Cache`'s splice (a few changed ports: their entries out and in, no walk over the network)
against the full `compute_l2`, on random histories of typed views. No kernel, no mocks."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vxnet.compute.l2 import SPLICE_MAX, L2Cache, compute_l2
from vxnet.compute.view import ViewState, apply_message

NETS = ["aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"]
HOSTS = {f"h{i}": {"host": f"h{i}", "underlay_ip": f"198.51.100.{i}", "alive": True, "gateway": False}
         for i in (1, 2, 3)}
# ids 0 and 1 share their first 11 characters: the same tap name
IDS = ["p0000000000a-4000-8000-000000000000", "p0000000000b-4000-8000-000000000000",
       *(f"p{i:07d}-0000-4000-8000-000000000000" for i in range(2, 10))]
PARENT, SUB = "t0000000-0000-4000-8000-000000000000", "s0000000-0000-4000-8000-000000000000"


def net(i: int, mtu: int = 1450) -> dict[str, Any]:
    return {"id": NETS[i], "provider:network_type": "vxlan", "provider:segmentation_id": 1001 + i, "mtu": mtu}


# One random port (a draw of every field the L2 state reads, from small pools: shared MACs and
# addresses, shared taps, admin down, port security off, infra owners, pairs, IPv6, status).
port_st = st.fixed_dictionaries({
    "network_id": st.sampled_from(NETS),
    "binding:host_id": st.sampled_from(["", "h1", "h1", "h2", "h3", "h9"]),
    "mac_address": st.sampled_from(["", *(f"02:00:00:00:00:{i:02x}" for i in range(24))]),
    "fixed_ips": st.lists(st.sampled_from(["192.0.2.1", "192.0.2.2", *(f"192.0.2.{i}" for i in range(3, 6)),
                                           "2001:db8::1", "2001:db8::0:2"]), max_size=2, unique=True).map(
        lambda ips: [{"subnet_id": "s", "ip_address": ip} for ip in ips]),
    "admin_state_up": st.sampled_from([True, True, True, False]),
    "port_security_enabled": st.sampled_from([True, True, False]),
    "device_owner": st.sampled_from(["compute:nova", "compute:nova", "network:dhcp"]),
    "allowed_address_pairs": st.sampled_from([*[[]] * 7, [{"ip_address": "2001:db8::99"}]]),
    "status": st.sampled_from(["DOWN", "ACTIVE"]),
})

step_st = st.one_of(
    st.tuples(st.just("ports"), st.lists(st.tuples(st.integers(0, len(IDS) - 1), st.none() | port_st),
                                         min_size=1, max_size=3)),
    st.tuples(st.just("status"), st.integers(0, len(IDS) - 1)),
    st.tuples(st.just("host"), st.integers(1, 3)),
    st.tuples(st.just("mtu"), st.integers(0, 1)),
    st.tuples(st.just("trunk"), st.booleans()),
    st.tuples(st.just("many"), st.integers(0, 2**16)),
)


def _message(s: ViewState, step: tuple[str, Any]) -> dict[str, Any]:
    kind, arg = step
    ports = s.data.get("ports", {})
    if kind == "ports":
        put = {IDS[i]: dict(p, id=IDS[i]) for i, p in arg if p is not None}
        gone = [IDS[i] for i, p in arg if p is None and IDS[i] not in put]
        return {"put": {"ports": put}, "delete": {"ports": gone}}
    if kind == "status":
        p = ports.get(IDS[arg])
        if p is None:
            return {}
        raw = {"id": p.id, "network_id": p.network_id, "binding:host_id": p.host, "mac_address": p.mac,
               "admin_state_up": p.admin_up, "device_owner": p.device_owner,
               "port_security_enabled": p.port_security,
               "fixed_ips": [{"subnet_id": f.subnet_id, "ip_address": f.ip_address} for f in p.fixed_ips],
               "allowed_address_pairs": [{"ip_address": a.ip_address} for a in p.allowed_address_pairs],
               "status": "ACTIVE" if p.status != "ACTIVE" else "DOWN"}
        return {"put": {"ports": {p.id: raw}}}
    if kind == "host":
        return {"put": {"hosts": {f"h{arg}": dict(HOSTS[f"h{arg}"], underlay_ip=f"203.0.113.{len(ports) + arg}")}}}
    if kind == "mtu":
        return {"put": {"networks": {NETS[arg]: net(arg, 1400 + len(ports))}}}
    if kind == "trunk":       # a local trunk parent with a subport, or neither
        if not arg:
            return {"delete": {"ports": [PARENT, SUB]}}
        return {"put": {"ports": {
            PARENT: {"id": PARENT, "network_id": NETS[0], "binding:host_id": "h1", "mac_address": "02:00:00:00:09:01",
                     "trunk_details": {"trunk_id": "t", "sub_ports": [{"port_id": SUB, "segmentation_id": 10}]}},
            SUB: {"id": SUB, "network_id": NETS[1], "binding:host_id": "h1", "mac_address": "02:00:00:00:09:02",
                  "device_owner": "trunk:subport", "device_id": "t"}}}}
    # more ports at once than a splice takes
    extra = {f"m{arg + k:07d}-0000-4000-8000-000000000000": {
        "network_id": NETS[k % 2], "binding:host_id": f"h{k % 3 + 1}", "mac_address": f"02:00:00:01:{k:02x}:00",
        "fixed_ips": [{"subnet_id": "s", "ip_address": f"198.51.100.{100 + k}"}]} for k in range(SPLICE_MAX + 1)}
    return {"put": {"ports": {pid: dict(p, id=pid) for pid, p in extra.items()}}}


@settings(max_examples=300, deadline=None)
@given(st.lists(port_st, max_size=6), st.lists(step_st, min_size=1, max_size=30))
def test_the_splice_equals_the_full_recompute(start: list[dict[str, Any]], steps: list[tuple[str, Any]]) -> None:
    """After every message, each host's cache (splicing where it can) gives exactly `compute_l2`."""
    snap = {"hosts": HOSTS, "networks": {n["id"]: n for n in (net(0), net(1))},
            "ports": {IDS[i]: dict(p, id=IDS[i]) for i, p in enumerate(start)}}
    s = apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": snap})
    caches = {h: L2Cache(h, HOSTS[h]["underlay_ip"]) for h in ("h1", "h2")}
    rev = itertools.count(2)
    for step in [("status", 0), *steps]:
        for h, cache in caches.items():
            ip = HOSTS[h]["underlay_ip"]
            assert cache.compute(s.view) == compute_l2(s.view, h, ip)
            assert cache.parts(s.view) == cache.parts(s.view)
        s = apply_message(s, {"type": "update", "revision": next(rev), **_message(s, step)})
    for h, cache in caches.items():
        assert cache.compute(s.view) == compute_l2(s.view, h, HOSTS[h]["underlay_ip"])


def _lab(n: int) -> ViewState:
    ports = {f"q{i:07d}-0000-4000-8000-000000000000": {
        "network_id": NETS[0], "binding:host_id": f"h{i % 3 + 1}", "mac_address": f"02:00:00:02:{i >> 8:02x}:{i & 255:02x}",
        "fixed_ips": [{"subnet_id": "s", "ip_address": f"100.64.{i >> 8}.{i & 255}"}], "status": "ACTIVE"}
        for i in range(n)}
    snap = {"hosts": HOSTS, "networks": {NETS[0]: net(0)}, "ports": {k: dict(p, id=k) for k, p in ports.items()}}
    return apply_message(ViewState(), {"type": "snapshot", "revision": 1, "view": snap})


def test_a_port_up_splices_its_network() -> None:
    """A port created, bound here, then reported ACTIVE: each pass splices the network (no
    recompute from its ports), and the unchanged entries stay the very same objects."""
    s = _lab(30)
    cache = L2Cache("h1", "198.51.100.1")
    first = cache.compute(s.view)
    assert (cache.recomputed, cache.spliced) == (1, 0)
    pid = "r0000000-0000-4000-8000-000000000000"
    new = {"id": pid, "network_id": NETS[0], "mac_address": "02:00:00:03:00:01",
           "fixed_ips": [{"subnet_id": "s", "ip_address": "100.64.9.1"}]}
    for rev, p in enumerate([new, dict(new, **{"binding:host_id": "h1"}),
                             dict(new, **{"binding:host_id": "h1", "status": "ACTIVE"})], start=2):
        s = apply_message(s, {"type": "update", "revision": rev, "put": {"ports": {pid: p}}})
        version = cache.version
        out = cache.compute(s.view)
        assert out == compute_l2(s.view, "h1", "198.51.100.1")
        assert (cache.recomputed, cache.spliced) == (1, 1)
        # the part changes with the bind only (unbound: no entries; a status: the same entries)
        assert (cache.version != version) == (rev == 3)
    assert {lp.port_id for lp in out.local_ports} - {lp.port_id for lp in first.local_ports} == {pid}
    kept = [e for e in first.fdb if e in out.fdb]
    assert len(kept) == len(first.fdb) and all(any(e is f for f in out.fdb) for e in kept)


def test_a_shared_mac_recomputes_the_network() -> None:
    """A new port whose MAC another port of the network holds: the network is recomputed (the
    lower port id keeps the MAC), and the result is still `compute_l2`'s."""
    s = _lab(5)
    cache = L2Cache("h1", "198.51.100.1")
    cache.compute(s.view)
    pid = "a0000000-0000-4000-8000-000000000000"      # sorts before every q... port
    twin = {"id": pid, "network_id": NETS[0], "binding:host_id": "h2", "mac_address": "02:00:00:02:00:01"}
    s = apply_message(s, {"type": "update", "revision": 2, "put": {"ports": {pid: twin}}})
    assert cache.compute(s.view) == compute_l2(s.view, "h1", "198.51.100.1")
    assert (cache.recomputed, cache.spliced) == (1, 0)


def test_a_shared_tap_name_recomputes_the_network() -> None:
    """Two local ports whose ids give the same tap name (one plug): one of them leaving keeps the
    plug (the network is recomputed, not spliced)."""
    s = _lab(3)
    twins = {pid: {"id": pid, "network_id": NETS[0], "binding:host_id": "h1", "mac_address": f"02:00:00:04:00:0{i}"}
             for i, pid in enumerate(IDS[:2])}
    s = apply_message(s, {"type": "update", "revision": 2, "put": {"ports": twins}})
    cache = L2Cache("h1", "198.51.100.1")
    cache.compute(s.view)
    s = apply_message(s, {"type": "update", "revision": 3, "delete": {"ports": [IDS[0]]}})
    out = cache.compute(s.view)
    assert out == compute_l2(s.view, "h1", "198.51.100.1") and len(out.plugs) == 2
    assert (cache.recomputed, cache.spliced) == (1, 0)


def test_a_shared_address_recomputes_the_network() -> None:
    """Two ports naming one address (the lower id's MAC answers for it): the lower one leaving
    gives the address to the other (the network is recomputed, not spliced)."""
    s = _lab(3)
    both = {pid: {"id": pid, "network_id": NETS[0], "binding:host_id": "h2", "mac_address": f"02:00:00:05:00:0{i}",
                  "fixed_ips": [{"subnet_id": "s", "ip_address": "100.64.7.7"}]} for i, pid in enumerate(IDS[2:4])}
    s = apply_message(s, {"type": "update", "revision": 2, "put": {"ports": both}})
    cache = L2Cache("h1", "198.51.100.1")
    cache.compute(s.view)
    s = apply_message(s, {"type": "update", "revision": 3, "delete": {"ports": [IDS[2]]}})
    out = cache.compute(s.view)
    assert out == compute_l2(s.view, "h1", "198.51.100.1")
    assert {(n.ip, n.mac) for n in out.neighs if n.ip == "100.64.7.7"} == {("100.64.7.7", "02:00:00:05:00:01")}
    assert (cache.recomputed, cache.spliced) == (1, 0)


def test_a_splice_that_does_not_find_its_ports_regroups() -> None:
    """Defensive: a network's record that lost track of a changed port (never expected) makes
    the call recompute every network instead of splicing a wrong part."""
    s = _lab(5)
    cache = L2Cache("h1", "198.51.100.1")
    cache.compute(s.view)
    (rec,) = cache._nets.values()
    del rec.ids[0], rec.ports[0]          # the record forgets the first port
    gone = next(iter(sorted(s.view.ports)))
    s = apply_message(s, {"type": "update", "revision": 2, "delete": {"ports": [gone]}})
    assert cache.compute(s.view) == compute_l2(s.view, "h1", "198.51.100.1")
    assert cache.spliced == 0
