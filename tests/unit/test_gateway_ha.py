"""Gateway HA, pure parts: a standby gateway host prepares a router without serving it, and
`failover_view` moves a router's gateway/snat ports to its standby when BFD sees the active
down (every compute: the L2 FDB of a compute host, the role of each gateway host)."""

from __future__ import annotations

from typing import Any

from tests.unit.test_gateway_compute import TEN, view
from vxnet.compute import naming
from vxnet.compute.gateway import compute_gateway
from vxnet.compute.ha import bfd_peers, failover_view, serving_host
from vxnet.compute.l2 import compute_l2
from vxnet.model import parse_view


def ha_view() -> dict[str, Any]:
    v = view("gw1")
    for pid in ("gwport-0001", "snat-0001"):
        v["ports"][pid]["binding:vif_details"] = {"ha_standby_hosts": ["gw2"]}
    v["hosts"] = {h: {"underlay_ip": ip, "gateway": h.startswith("gw")}
                  for h, ip in (("gw1", "198.51.100.3"), ("gw2", "198.51.100.4"), ("h1", "198.51.100.1"))}
    return v


def test_standby_prepares_without_serving() -> None:
    act = compute_gateway(ha_view(), "gw1", "vxlext0")
    sb = compute_gateway(ha_view(), "gw2", "vxlext0")
    assert [r.active for r in act.routers] == [True] and [r.active for r in sb.routers] == [False]
    a, s = act.routers[0], sb.routers[0]
    # the same namespace content (legs, addresses, NAT), only the role differs
    assert (a.gw, a.snat_legs, a.fips, a.snat_cidrs) == (s.gw, s.snat_legs, s.fips, s.snat_cidrs)
    assert a.netns != s.netns
    assert {p.tap for p in act.l2.plugs} == {"tapgwport-0001"} and act.l2.local_ports != frozenset()
    assert sb.l2.plugs == frozenset() and sb.l2.local_ports == frozenset() and sb.l2.fdb == frozenset()
    assert compute_gateway(ha_view(), "gw3", "vxlext0").routers == ()


def test_failover_view_moves_ports_to_the_standby() -> None:
    v = parse_view(ha_view())
    assert failover_view(v, frozenset()) is v
    assert failover_view(v, frozenset({"h9"})) is v                      # not a gateway of ours
    moved = failover_view(v, frozenset({"gw1"}))
    assert moved.ports["gwport-0001"].host == "gw2" and moved.ports["snat-0001"].host == "gw2"
    assert moved.ports["snat-0001"].standby == ("gw1",)
    assert moved.ports["vm-0001"] is v.ports["vm-0001"]
    # the standby computes the router as active, the dead active's copy as standby
    assert [r.active for r in compute_gateway(moved, "gw2", "x").routers] == [True]
    # a compute host points the snat port's MAC at the standby's VTEP
    vx = naming.vxlan_name(TEN)
    before = {(f.mac, f.dst) for f in compute_l2(v, "h1", "198.51.100.1").fdb if f.dev == vx and f.dst}
    after = {(f.mac, f.dst) for f in compute_l2(moved, "h1", "198.51.100.1").fdb if f.dev == vx and f.dst}
    assert ("fa:16:3e:00:00:03", "198.51.100.3") in before
    assert ("fa:16:3e:00:00:03", "198.51.100.4") in after and ("fa:16:3e:00:00:03", "198.51.100.3") not in after


def test_fenced_active_serves_nothing() -> None:
    """An isolated gateway puts itself in `down`: its router is a standby there, and with its
    standby down too the port is served by nobody (never by both)."""
    v = parse_view(ha_view())
    fenced = failover_view(v, frozenset({"gw1", "gw2", "h1"}))
    assert fenced.ports["gwport-0001"].host == ""
    assert [r.active for r in compute_gateway(fenced, "gw1", "x").routers] == [False]
    assert serving_host(v.ports["gwport-0001"], frozenset({"gw2"})) == "gw1"


def test_bfd_peers() -> None:
    v = parse_view(ha_view())
    assert bfd_peers(v, "h1", gateway=False) == {"gw1": "198.51.100.3", "gw2": "198.51.100.4"}
    assert bfd_peers(v, "gw1", gateway=True) == {"gw2": "198.51.100.4", "h1": "198.51.100.1"}
