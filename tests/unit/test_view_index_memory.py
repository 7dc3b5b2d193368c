"""The view index's memory (services/view_index.py, docs/benchmarks.md session 16): what it
derives is not also kept, and the sets it keeps are sized to their ids. Equivalence with the
full scan is tests/api/test_host_view.py's (random histories, holders included)."""

from __future__ import annotations

import sys
from typing import Any

from vxnet.services.host_view import full_view, host_entry
from vxnet.services.view_index import ViewIndex


def _world() -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """Two networks, 100 hosts with a port on each, 300 more ports on h0 (grown one at a time)."""
    ports = {}
    for i in range(400):
        host = f"h{i}" if i < 100 else "h0"
        ports[f"p{i}"] = {"id": f"p{i}", "network_id": f"n{i % 2}", "binding:host_id": host,
                          "device_owner": "compute:nova", "device_id": f"vm{i}", "security_groups": []}
    objects: dict[str, dict[str, dict[str, Any]]] = {
        "networks": {"n0": {"id": "n0"}, "n1": {"id": "n1"}},
        "subnets": {"s0": {"id": "s0", "network_id": "n0"}}, "ports": ports}
    agents = {f"a{i}": {"id": f"a{i}", "host": f"h{i}", "alive": True,
                        "configurations": {"underlay_ip": "192.0.2.1"}} for i in range(100)}
    return objects, agents


def _loaded() -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, Any]], ViewIndex]:
    """`_world` loaded into an index, every registered host tracked (as the hub does)."""
    objects, agents = _world()
    index = ViewIndex()
    index.load(objects, agents)
    for a in agents.values():
        index.track(a["host"])
    return objects, agents, index


def test_port_members_and_holders_are_derived_not_kept() -> None:
    objects, agents, index = _loaded()
    hosts = {a["host"]: host_entry(a) for a in agents.values()}
    for h in ("h0", "h1"):
        members = index.members[h]["ports"]
        assert not isinstance(members, set | frozenset)   # nothing per port kept per host
        want = set(full_view(objects, hosts, h)["ports"])  # type: ignore[arg-type]
        assert set(members) == want and len(members) == len(want) and "p3" in members and "nope" not in members
    assert "ports" not in index._holders._by
    assert set(index.holders("ports", "p2")) == {f"h{i}" for i in range(0, 100, 2)}   # the hosts on n0


def test_kept_sets_are_sized_to_their_ids() -> None:
    _, _, index = _loaded()
    kept = [s for idx in index._object_indexes() for s in idx.values()]
    kept += [s for mem in index.members.values() for k, s in mem.items() if k != "ports"]
    kept += list(index._n0.values()) + list(index._remote.values())
    assert any(len(s) >= 100 for s in kept)
    for s in kept:
        assert sys.getsizeof(s) == sys.getsizeof(set(s)), s


def test_a_hosts_networks_are_one_set_with_its_local_ports_networks() -> None:
    """A host without routers holds the networks of its local ports: `_n0` and its `networks`
    members are one set, also after a change that recomputes it; a host where they differ
    keeps two."""
    objects, _, index = _loaded()
    assert all(index._n0[h] is index.members[h]["networks"] for h in ("h0", "h1", "h99"))
    moved = {**objects["ports"]["p1"], "network_id": "n0"}   # h1's one port moves to n0
    index.apply([("ports", "p1", moved)])
    assert index.members["h1"]["networks"] == {"n0"} and index._n0["h1"] is index.members["h1"]["networks"]
    iface = {"id": "r0-if", "network_id": "n1", "binding:host_id": "", "device_owner": "network:router_interface",
             "device_id": "r0", "security_groups": []}
    index.apply([("ports", "r0-if", iface),
                 ("ports", "r0-if0", {**iface, "id": "r0-if0", "network_id": "n0"})])
    assert index.members["h1"]["networks"] == {"n0", "n1"} and index._n0["h1"] == {"n0"}   # the router's other net
    assert index._n0["h1"] is not index.members["h1"]["networks"]
