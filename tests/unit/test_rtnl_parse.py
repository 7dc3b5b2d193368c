"""dataplane/rtnl.py `_parse_nd`: a neighbour/FDB message's addresses as the agent's entries spell
them (IPv4 dotted quad, IPv6 as `ipaddress` prints it, MACs lower-case), and equal destinations
of one dump shared as one string."""

from __future__ import annotations

import ipaddress
import socket

from vxnet.dataplane.rtnl import _ATTR, _ND, AF_BRIDGE, NDA_DST, NDA_LLADDR, _parse_nd


def _msg(family: int, dst: bytes, mac: bytes) -> bytes:
    def attr(kind: int, data: bytes) -> bytes:
        raw = _ATTR.pack(_ATTR.size + len(data), kind) + data
        return raw + b"\0" * (-len(raw) % 4)
    return _ND.pack(family, 0, 0, 7, 0x80, 0x2, 0) + attr(NDA_DST, dst) + attr(NDA_LLADDR, mac)


def test_addresses_and_macs() -> None:
    mac = bytes([0x02, 0xAB, 0, 0, 0x0B, 0x01])
    r = _parse_nd(_msg(socket.AF_INET, socket.inet_pton(socket.AF_INET, "198.51.100.2"), mac))
    assert (r.ifindex, r.dst, r.lladdr) == (7, "198.51.100.2", "02:ab:00:00:0b:01")
    for v6 in ("2001:db8::1", "fe80::ab:ff:fe00:b01", "::ffff:192.0.2.1", "2001:db8:0:0:1::1"):
        r = _parse_nd(_msg(socket.AF_INET6, ipaddress.IPv6Address(v6).packed, mac))
        assert r.dst == str(ipaddress.IPv6Address(v6))


def test_equal_destinations_of_a_dump_are_one_string() -> None:
    shared: dict[str, str] = {}
    vtep = socket.inet_pton(socket.AF_INET, "198.51.100.3")
    a = _parse_nd(_msg(AF_BRIDGE, vtep, bytes(6)), shared)
    b = _parse_nd(_msg(AF_BRIDGE, vtep, bytes([2, 0, 0, 0, 0, 1])), shared)
    assert a.dst == b.dst == "198.51.100.3" and a.dst is b.dst


def test_a_bridge_reads_back_its_br_netfilter_switches() -> None:
    """`_parse_link` of a bridge's link message: `br_nf_call` True/False when its IPv4 and IPv6
    switches agree, None when they differ (the links driver then repairs them); a link message
    is the request's layout, so the request encoder makes the input."""
    from vxnet.dataplane import rtnl_links as L
    from vxnet.dataplane.rtnl import _HDR, _parse_link

    def parsed(msg: L.Msg):
        return _parse_link(msg.encode(seq=0, ack=False)[_HDR.size:])

    assert parsed(L.new_bridge("vxb-1", "02:00:00:00:00:01", 1450, True)).br_nf_call is True
    assert parsed(L.new_bridge("vxb-1", "02:00:00:00:00:01", 1450, False)).br_nf_call is False
    assert parsed(L.new_bridge("vxb-1", "02:00:00:00:00:01", 1450)).br_nf_call is None
    mixed = L.Msg(L.RTM_NEWLINK, 0, L._IFI.pack(0, 0, 3, 0, 0) + L._info(
        "bridge", L._u8(L.IFLA_BR_NF_CALL_IPTABLES, 1) + L._u8(L.IFLA_BR_NF_CALL_IP6TABLES, 0)))
    assert parsed(mixed).br_nf_call is None
