"""The address, route, neighbour and veth requests the DHCP and metadata drivers send over raw
rtnetlink (dataplane/rtnl_routes.py, rtnl_links.new_veth/set_link, rtnl.NeighRequest) are the
messages pyroute2 sends for the same call.

Oracle: pyroute2's `IPBatch` (compiles `IPRoute` calls to bytes without a socket); both sides are
decoded with pyroute2's own message classes and compared field by field (attribute order is not
part of the contract). pyroute2 is used in tests only. Dump parsing is checked against the
kernel in tests/root/test_rtnl_links.py.
"""

from __future__ import annotations

import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pyroute2 import IPBatch
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from vxnet.dataplane import rtnl_links as L
from vxnet.dataplane import rtnl_routes as R
from vxnet.dataplane.rtnl import NUD_PERMANENT, NeighRequest

CLASSES = {"route": rtmsg, "addr": ifaddrmsg, "link": ifinfmsg, "neigh": ndmsg}


def _norm(v: Any) -> Any:
    """A decoded message as plain dicts (nested attributes recursively, in any order)."""
    if isinstance(v, dict):
        out = {k: _norm(x) for k, x in v.items() if k not in ("header", "attrs", "__align", "__pad")}
        if "attrs" in v:
            out["attrs"] = {a[0]: _norm(a[1]) for a in v["attrs"]}
        return out
    return v


def _decode(kind: str, data: bytes) -> dict[str, Any]:
    (length,) = struct.unpack_from("=I", data, 0)
    assert length == len(data)        # one message
    m = CLASSES[kind](data)
    m.decode()
    h = m["header"]
    return {"type": h["type"], "flags": h["flags"], "length": h["length"], "msg": _norm(dict(m))}


def _pyroute2_bytes(kind: str, op: str, kw: dict[str, Any]) -> bytes:
    b = IPBatch()
    getattr(b, kind)(op, **kw)
    return bytes(b.batch)


def _pyroute2(kind: str, op: str, kw: dict[str, Any]) -> dict[str, Any]:
    # In a thread of its own (see tests/unit/test_rtnl_links.py: a running loop in the main thread).
    with ThreadPoolExecutor(1) as pool:
        return _decode(kind, pool.submit(_pyroute2_bytes, kind, op, kw).result())


CASES: list[tuple[Any, str, str, dict[str, Any]]] = [
    (R.route("replace", "100.64.0.5", 32, 3, 99, R.RT_SCOPE_LINK),
     "route", "replace", {"dst": "100.64.0.5/32", "oif": 3, "proto": 99, "scope": 253}),
    # A delete matches any scope (RT_SCOPE_NOWHERE, as `ip route del`): pyroute2's default (0)
    # would match only scope-universe routes; the oracle is given the scope explicitly.
    (R.route("del", "100.64.0.5", 32, 3, 99),
     "route", "del", {"dst": "100.64.0.5/32", "oif": 3, "proto": 99, "scope": 255}),
    (R.route("del", "100.64.0.5", 32, 3, 99, R.RT_SCOPE_LINK),
     "route", "del", {"dst": "100.64.0.5/32", "oif": 3, "proto": 99, "scope": 253}),
    (R.route("replace", "2001:db8::", 64, 4, 99),
     "route", "replace", {"dst": "2001:db8::/64", "oif": 4, "proto": 99}),
    (R.route("replace", "198.51.100.0", 24, 5, 99, table=1000),
     "route", "replace", {"dst": "198.51.100.0/24", "oif": 5, "proto": 99, "table": 1000}),
    (R.new_addr(3, "169.254.169.254", 32),
     "addr", "add", {"index": 3, "address": "169.254.169.254", "prefixlen": 32}),
    (R.new_addr(3, "2001:db8::1", 64),
     "addr", "add", {"index": 3, "address": "2001:db8::1", "prefixlen": 64}),
    (L.new_veth("vxpd1", "vxdr1", 1450),
     "link", "add", {"ifname": "vxpd1", "kind": "veth", "mtu": 1450, "peer": {"ifname": "vxdr1", "mtu": 1450}}),
    (L.new_veth("vxpm1", "vxmd1", 1400, peer_mac="02:00:00:00:00:01", peer_netns_fd=7),
     "link", "add", {"ifname": "vxpm1", "kind": "veth", "mtu": 1400,
                     "peer": {"ifname": "vxmd1", "net_ns_fd": 7, "address": "02:00:00:00:00:01", "mtu": 1400}}),
    (L.set_link(4, mtu=1450, up=True, noarp=True),
     "link", "set", {"index": 4, "mtu": 1450, "flags": 0x81, "change": 0x81}),
    (L.set_link(4, noarp=False),
     "link", "set", {"index": 4, "flags": 0, "change": 0x80}),
    (NeighRequest("replace", socket.AF_INET, 3, NUD_PERMANENT, 0, "02:00:00:00:00:01", "100.64.0.5"),
     "neigh", "replace", {"dst": "100.64.0.5", "ifindex": 3, "lladdr": "02:00:00:00:00:01", "state": NUD_PERMANENT}),
    (NeighRequest("del", socket.AF_INET, 3, NUD_PERMANENT, 0, None, "100.64.0.5"),
     "neigh", "del", {"dst": "100.64.0.5", "ifindex": 3}),
]


@pytest.mark.parametrize(("ours", "kind", "op", "kw"), CASES, ids=[f"{c[1]}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_request_matches_pyroute2(ours: Any, kind: str, op: str, kw: dict[str, Any]) -> None:
    assert _decode(kind, ours.encode(0, True)) == _pyroute2(kind, op, kw)


def test_route_rejects_an_unknown_operation() -> None:
    with pytest.raises(ValueError):
        R.route("add", "100.64.0.5", 32, 3, 99)
