"""DHCP/ARP wire format (compute/dhcp_packet.py): round trips, RFC examples, checksums, garbage."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from vxnet.compute import dhcp_packet as pkt

CLIENT = "02:00:00:00:01:31"


def test_bootp_round_trip_keeps_every_field_and_option() -> None:
    m = pkt.Bootp(pkt.BOOTREQUEST, 0xDEADBEEF, CLIENT, flags=pkt.FLAG_BROADCAST, secs=3, hops=0,
                  ciaddr="192.0.2.31", yiaddr="0.0.0.0", siaddr="0.0.0.0", giaddr="0.0.0.0",
                  options=((pkt.OPT_MSG_TYPE, b"\x03"), (pkt.OPT_REQUESTED_IP, pkt.ip_bytes("192.0.2.31")),
                           (pkt.OPT_PARAM_LIST, bytes([1, 3, 6, 26, 121])), (pkt.OPT_HOSTNAME, b"vm31")))
    raw = pkt.encode_bootp(m)
    assert len(raw) >= pkt.MIN_REPLY_LEN
    back = pkt.decode_bootp(raw)
    assert back == m
    assert back.msg_type == pkt.REQUEST and back.broadcast
    assert back.opt_ip(pkt.OPT_REQUESTED_IP) == "192.0.2.31"


def test_long_option_is_split_and_concatenated_back() -> None:
    value = bytes(range(256)) + bytes(100)       # 356 bytes: two instances on the wire (RFC 3396)
    raw = pkt.encode_options([(pkt.OPT_CLASSLESS_ROUTES, value)])
    assert raw[0] == pkt.OPT_CLASSLESS_ROUTES and raw[1] == 255
    assert raw[2 + 255] == pkt.OPT_CLASSLESS_ROUTES and raw[3 + 255] == 101
    assert dict(pkt.decode_options(raw)) == {pkt.OPT_CLASSLESS_ROUTES: value}


def test_options_padding_truncation_and_end() -> None:
    assert pkt.decode_options(b"\x00\x00\x35\x01\x01\xff\x03\x04\x01\x02\x03\x04") == ((53, b"\x01"),)
    # A truncated option ends parsing; what came before is kept.
    assert pkt.decode_options(b"\x35\x01\x05\x03\x04\x01\x02") == ((53, b"\x05"),)


def test_overloaded_file_field_is_read() -> None:
    m = pkt.Bootp(pkt.BOOTREQUEST, 1, CLIENT, options=((pkt.OPT_MSG_TYPE, b"\x01"), (pkt.OPT_OVERLOAD, b"\x01")))
    raw = bytearray(pkt.encode_bootp(m))
    raw[108:108 + 7] = bytes([12, 4]) + b"vm31" + bytes([255])
    back = pkt.decode_bootp(bytes(raw))
    assert back is not None and back.opt(pkt.OPT_HOSTNAME) == b"vm31"


def test_classless_routes_rfc3442_examples() -> None:
    gw = "192.0.2.1"
    cases = [("0.0.0.0/0", b"\x00"), ("10.0.0.0/8", b"\x08\x0a"), ("10.17.0.0/16", b"\x10\x0a\x11"),
             ("10.27.129.0/24", b"\x18\x0a\x1b\x81"), ("10.229.0.128/25", b"\x19\x0a\xe5\x00\x80"),
             ("10.198.122.47/32", b"\x20\x0a\xc6\x7a\x2f")]
    for dest, head in cases:
        assert pkt.classless_routes([(dest, gw)]) == head + pkt.ip_bytes(gw)
    routes = [(d, gw) for d, _ in cases]
    assert pkt.parse_classless_routes(pkt.classless_routes(routes)) == routes


def test_udp_frame_checksums_verify_and_decode() -> None:
    payload = pkt.encode_bootp(pkt.Bootp(pkt.BOOTREPLY, 7, CLIENT, yiaddr="192.0.2.31",
                                         options=((pkt.OPT_MSG_TYPE, b"\x02"),)))
    f = pkt.udp_frame("0a:00:00:00:00:01", CLIENT, "192.0.2.1", "192.0.2.31", 67, 68, payload)
    ip = f[14:34]
    assert pkt.checksum(ip) == 0                                  # header checksum verifies
    udp = f[34:]
    pseudo = pkt.ip_bytes("192.0.2.1") + pkt.ip_bytes("192.0.2.31") + struct.pack("!BBH", 0, 17, len(udp))
    assert pkt.checksum(pseudo + udp) == 0                        # UDP checksum verifies
    u = pkt.decode_udp(f)
    assert u is not None and (u.src_mac, u.dst_mac, u.src_ip, u.dst_ip, u.sport, u.dport) == (
        "0a:00:00:00:00:01", CLIENT, "192.0.2.1", "192.0.2.31", 67, 68)
    assert pkt.decode_bootp(u.payload).yiaddr == "192.0.2.31"
    assert pkt.decode_frame(f) is None        # a reply to port 68 is not a request for the responder


def test_client_frame_decodes_as_request() -> None:
    f = pkt.dhcp_request_frame(CLIENT, pkt.DISCOVER, 0x1234, {pkt.OPT_PARAM_LIST: b"\x01\x03"})
    d = pkt.decode_frame(f)
    assert isinstance(d, pkt.DhcpFrame)
    assert (d.src_mac, d.dst_mac, d.src_ip, d.dst_ip) == (CLIENT, pkt.BROADCAST_MAC, "0.0.0.0", "255.255.255.255")
    assert d.msg.msg_type == pkt.DISCOVER and d.msg.xid == 0x1234 and d.msg.chaddr == CLIENT


def test_bad_frames_are_rejected() -> None:
    good = bytearray(pkt.dhcp_request_frame(CLIENT, pkt.DISCOVER, 1))
    bad_csum = bytearray(good)
    bad_csum[14 + 10] ^= 0xFF
    frag = bytearray(good)
    frag[14 + 6] = 0x20                       # more fragments
    other_port = bytearray(good)
    other_port[14 + 22:14 + 24] = struct.pack("!H", 68)
    no_magic = bytearray(good)
    no_magic[14 + 28 + 236] = 0
    for f in (bad_csum, frag, other_port, no_magic, good[:60], good[:13], b""):
        assert pkt.decode_frame(bytes(f)) is None


def test_arp_request_decodes_and_reply_answers_it() -> None:
    req = (pkt.mac_bytes(pkt.BROADCAST_MAC) + pkt.mac_bytes(CLIENT) + b"\x08\x06"
           + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + pkt.mac_bytes(CLIENT) + pkt.ip_bytes("192.0.2.31")
           + bytes(6) + pkt.ip_bytes("192.0.2.1"))
    a = pkt.decode_frame(req)
    assert a == pkt.ArpFrame(CLIENT, pkt.BROADCAST_MAC, 1, CLIENT, "192.0.2.31", "00:00:00:00:00:00", "192.0.2.1")
    rep = pkt.decode_frame(pkt.arp_reply_frame("0a:00:00:00:00:01", "192.0.2.1", CLIENT, "192.0.2.31"))
    assert rep == pkt.ArpFrame("0a:00:00:00:00:01", CLIENT, 2, "0a:00:00:00:00:01", "192.0.2.1", CLIENT, "192.0.2.31")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_never_raises(data: bytes) -> None:
    pkt.decode_frame(data)
    pkt.decode_bootp(data)
    pkt.decode_options(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=400), st.integers(0, 2**32 - 1))
def test_mutated_request_never_raises(tail: bytes, xid: int) -> None:
    f = pkt.dhcp_request_frame(CLIENT, pkt.REQUEST, xid)
    pkt.decode_frame(f[:-len(tail) or None] + tail)
