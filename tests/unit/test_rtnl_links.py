"""The link requests of dataplane/rtnl_links.py are the messages pyroute2 sends for the same call.

Oracle: pyroute2's `IPBatch` (it compiles `IPRoute` calls to bytes without a socket); both
sides are decoded with pyroute2's `ifinfmsg` and compared field by field (attribute order is not
part of the contract; every attribute and nested value is). pyroute2 is used in tests only.
"""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pyroute2 import IPBatch
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from vxnet.dataplane import rtnl_links as L


def _decode(data: bytes) -> dict[str, Any]:
    m = ifinfmsg(data)
    m.decode()
    h = m["header"]
    return {"type": h["type"], "flags": h["flags"], "length": h["length"], "family": m["family"],
            "index": m["index"], "ifflags": m["flags"], "change": m["change"], "attrs": _norm(m["attrs"])}


def _norm(attrs: Any) -> Any:
    """Attributes as a dict (nested ones recursively), whatever order they were encoded in."""
    out = {}
    for a in attrs:
        name, value = a[0], a[1]
        out[name] = _norm(value["attrs"]) if isinstance(value, dict) and "attrs" in value else value
    return out


def _pyroute2(call: str, *args: Any, **kw: Any) -> dict[str, Any]:
    # In a thread of its own: pyroute2's synchronous API runs its own asyncio loop to completion,
    # which fails in a thread where another loop is running (after tests/ui, Playwright's sync
    # API leaves one running in the main thread).
    with ThreadPoolExecutor(1) as pool:
        data = pool.submit(_pyroute2_bytes, call, *args, **kw).result()
    (length,) = struct.unpack_from("=I", data, 0)
    assert length == len(data)        # one message
    return _decode(data)


def _pyroute2_bytes(call: str, *args: Any, **kw: Any) -> bytes:
    b = IPBatch()
    getattr(b, call)(*args, **kw)
    return bytes(b.batch)


def _ours(msg: L.Msg) -> dict[str, Any]:
    return _decode(msg.encode(seq=0, ack=True))


CASES = [
    (L.new_bridge("vxb-1", "02:00:00:00:00:01", 1450),
     ("link", "add"), {"ifname": "vxb-1", "kind": "bridge", "address": "02:00:00:00:00:01", "mtu": 1450}),
    (L.new_bridge("vxb-2", "02:00:00:00:00:02", 1450, True),
     ("link", "add"), {"ifname": "vxb-2", "kind": "bridge", "address": "02:00:00:00:00:02", "mtu": 1450,
                       "br_nf_call_iptables": 1, "br_nf_call_ip6tables": 1}),
    (L.new_bridge("vxb-3", None, None, False),
     ("link", "add"), {"ifname": "vxb-3", "kind": "bridge", "br_nf_call_iptables": 0, "br_nf_call_ip6tables": 0}),
    (L.set_bridge_nf(7, True),
     ("link", "set"), {"index": 7, "kind": "bridge", "br_nf_call_iptables": 1, "br_nf_call_ip6tables": 1}),
    (L.set_bridge_nf(7, False),
     ("link", "set"), {"index": 7, "kind": "bridge", "br_nf_call_iptables": 0, "br_nf_call_ip6tables": 0}),
    (L.new_vxlan("vxl-1", 42, "198.51.100.1", 4789, False, 1450, 3),
     ("link", "add"), {"ifname": "vxl-1", "kind": "vxlan", "vxlan_id": 42, "vxlan_local": "198.51.100.1",
                       "vxlan_port": 4789, "vxlan_learning": 0, "mtu": 1450, "vxlan_link": 3}),
    (L.new_vxlan("vxl-2", 16777215, "203.0.113.9", 8472, True, 9000),
     ("link", "add"), {"ifname": "vxl-2", "kind": "vxlan", "vxlan_id": 16777215, "vxlan_local": "203.0.113.9",
                       "vxlan_port": 8472, "vxlan_learning": 1, "mtu": 9000}),
    (L.new_vlan("vxt-1", 4, 100, 1400),
     ("link", "add"), {"ifname": "vxt-1", "kind": "vlan", "link": 4, "vlan_id": 100, "mtu": 1400}),
    (L.set_link(5, mac="02:00:00:00:00:01", mtu=1400, up=True),
     ("link", "set"), {"index": 5, "address": "02:00:00:00:00:01", "mtu": 1400, "state": "up"}),
    (L.set_link(5, up=False),
     ("link", "set"), {"index": 5, "state": "down"}),
    (L.set_link(7, master=3, mtu=1450),
     ("link", "set"), {"index": 7, "master": 3, "mtu": 1450}),
    (L.set_link(7, master=0),
     ("link", "set"), {"index": 7, "master": 0}),
    (L.set_link(5, addr_gen_none=True),
     ("link", "set"), {"index": 5, "af_spec": {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", 1]]}]]}}),
    (L.set_brport(9, learning=False, neigh_suppress=True),
     ("brport", "set"), {"index": 9, "learning": 0, "neigh_suppress": 1}),
    (L.set_brport(9, learning=True, neigh_suppress=False),
     ("brport", "set"), {"index": 9, "learning": 1, "neigh_suppress": 0}),
    (L.del_link(11),
     ("link", "del"), {"index": 11}),
]


@pytest.mark.parametrize(("ours", "call", "kw"), CASES, ids=[f"{c[1][0]}-{c[1][1]}-{i}" for i, c in enumerate(CASES)])
def test_request_matches_pyroute2(ours: L.Msg, call: tuple[str, str], kw: dict[str, Any]) -> None:
    assert _ours(ours) == _pyroute2(call[0], call[1], **kw)


def test_ack_flag_only_when_asked_and_sequence_is_the_callers() -> None:
    msg = L.set_link(5, up=True)
    with_ack, without = msg.encode(seq=41, ack=True), msg.encode(seq=42, ack=False)
    assert struct.unpack_from("=IHHI", with_ack)[2:] == (0x5, 41)
    assert struct.unpack_from("=IHHI", without)[2:] == (0x1, 42)
    assert with_ack[16:] == without[16:]


def test_rtnl_error_is_an_oserror_with_the_kernel_errno() -> None:
    e = L.RtnlError(17, "RTM_NEWLINK: File exists")
    assert isinstance(e, OSError) and e.code == e.errno == 17


def test_vxlan_rejects_an_ipv6_local_address() -> None:
    # Only IFLA_VXLAN_LOCAL (IPv4) is encoded: an IPv6 underlay must fail loudly, not send garbage.
    with pytest.raises(ValueError):
        L.new_vxlan("vxl-3", 1, "2001:db8::1", 4789, False, 1450)
