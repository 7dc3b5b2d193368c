"""DHCPv4 and ARP wire format: decode frames a responder receives, encode the frames it sends.

Pure (bytes in, bytes out; no sockets, no clock). Scope is what a DHCP server on the VM's own
link needs: Ethernet II + IPv4 + UDP + BOOTP (RFC 951/2131) with options (RFC 2132), classless
static routes (RFC 3442), and ARP requests/replies (RFC 826) for the server id.

Contract:
- `decode_frame` never raises on garbage: anything that is not a well-formed IPv4/UDP BOOTP
  request to port 67 or an Ethernet/IPv4 ARP packet gives None. IP options, fragments and a
  bad IPv4 header checksum are rejected; options are parsed to the end option or the end of
  the data, ignoring padding; a truncated option ends parsing (what came before is kept).
- `encode_*` are the inverse for the fields they set: `decode_bootp(encode_bootp(m)) == m`.
- Frames built here carry correct IPv4 header and UDP checksums.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections.abc import Iterable, Mapping

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
SERVER_PORT, CLIENT_PORT = 67, 68
MAGIC = b"\x63\x82\x53\x63"
BOOTREQUEST, BOOTREPLY = 1, 2
FLAG_BROADCAST = 0x8000
MIN_BOOTP = 236 + 4          # fixed header + magic cookie
MIN_REPLY_LEN = 300          # BOOTP payload padded to this size (RFC 951 clients expect >= 300)

# Message types (option 53)
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
TYPE_NAMES = {DISCOVER: "DISCOVER", OFFER: "OFFER", REQUEST: "REQUEST", DECLINE: "DECLINE", ACK: "ACK",
              NAK: "NAK", RELEASE: "RELEASE", INFORM: "INFORM"}

# Options
OPT_PAD, OPT_END = 0, 255
OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_DOMAIN = 1, 3, 6, 12, 15
OPT_MTU, OPT_BROADCAST = 26, 28
OPT_REQUESTED_IP, OPT_LEASE_TIME, OPT_OVERLOAD, OPT_MSG_TYPE, OPT_SERVER_ID = 50, 51, 52, 53, 54
OPT_PARAM_LIST, OPT_MESSAGE, OPT_MAX_SIZE, OPT_T1, OPT_T2, OPT_CLIENT_ID = 55, 56, 57, 58, 59, 61
OPT_CLASSLESS_ROUTES = 121


def mac_bytes(mac: str) -> bytes:
    """'02:00:..' -> 6 bytes."""
    b = bytes.fromhex(mac.replace(":", ""))
    if len(b) != 6:
        raise ValueError(f"bad MAC {mac!r}")
    return b


def mac_str(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b[:6])


def ip_bytes(ip: str) -> bytes:
    return ipaddress.IPv4Address(ip).packed


def ip_str(b: bytes) -> str:
    return str(ipaddress.IPv4Address(b[:4]))


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# ---------------------------------------------------------------------------------- BOOTP
@dataclasses.dataclass(frozen=True)
class Bootp:
    """A BOOTP/DHCP message. `options` maps code -> raw value (order kept for encoding)."""

    op: int
    xid: int
    chaddr: str                       # client MAC (htype 1, hlen 6)
    flags: int = 0
    secs: int = 0
    hops: int = 0
    ciaddr: str = "0.0.0.0"
    yiaddr: str = "0.0.0.0"
    siaddr: str = "0.0.0.0"
    giaddr: str = "0.0.0.0"
    options: tuple[tuple[int, bytes], ...] = ()

    def opt(self, code: int) -> bytes | None:
        for c, v in self.options:
            if c == code:
                return v
        return None

    @property
    def msg_type(self) -> int | None:
        v = self.opt(OPT_MSG_TYPE)
        return v[0] if v else None

    def opt_ip(self, code: int) -> str | None:
        v = self.opt(code)
        return ip_str(v) if v is not None and len(v) == 4 else None

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)


def decode_options(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """Options as (code, value) pairs; values of a code split over several instances are
    concatenated (RFC 3396)."""
    out: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        code = data[i]
        if code == OPT_END:
            break
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= len(data) or i + 2 + data[i + 1] > len(data):
            break                        # truncated: keep what we have
        n = data[i + 1]
        out[code] = out.get(code, b"") + data[i + 2:i + 2 + n]
        i += 2 + n
    return tuple(out.items())


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    """Options, each split in 255-byte instances (RFC 3396), then the end option."""
    out = bytearray()
    for code, value in options:
        if not value:
            out += bytes((code, 0))
        for k in range(0, len(value), 255):
            chunk = value[k:k + 255]
            out += bytes((code, len(chunk))) + chunk
    out.append(OPT_END)
    return bytes(out)


def decode_bootp(data: bytes) -> Bootp | None:
    """A BOOTP message with Ethernet hardware addresses and the DHCP magic, else None."""
    if len(data) < MIN_BOOTP or data[236:240] != MAGIC:
        return None
    op, htype, hlen, hops, xid, secs, flags = struct.unpack_from("!BBBBIHH", data, 0)
    if htype != 1 or hlen != 6:
        return None
    ci, yi, si, gi = (ip_str(data[o:o + 4]) for o in (12, 16, 20, 24))
    options = decode_options(data[240:])
    overload = dict(options).get(OPT_OVERLOAD)
    if overload:                          # options continued in file and/or sname (RFC 2132 9.3)
        extra: tuple[tuple[int, bytes], ...] = ()
        if overload[0] & 1:
            extra += decode_options(data[108:236])
        if overload[0] & 2:
            extra += decode_options(data[44:108])
        merged = dict(options)
        for c, v in extra:
            merged[c] = merged.get(c, b"") + v
        options = tuple(merged.items())
    return Bootp(op, xid, mac_str(data[28:34]), flags, secs, hops, ci, yi, si, gi, options)


def encode_bootp(m: Bootp, min_len: int = MIN_REPLY_LEN) -> bytes:
    """The BOOTP payload (padded to `min_len`)."""
    head = struct.pack("!BBBBIHH", m.op, 1, 6, m.hops, m.xid, m.secs, m.flags)
    addrs = b"".join(ip_bytes(a) for a in (m.ciaddr, m.yiaddr, m.siaddr, m.giaddr))
    chaddr = mac_bytes(m.chaddr) + bytes(10)
    body = head + addrs + chaddr + bytes(64 + 128) + MAGIC + encode_options(m.options)
    return body + bytes(max(0, min_len - len(body)))


# ---------------------------------------------------------------------------------- options
def opt_u32(v: int) -> bytes:
    return struct.pack("!I", v)


def opt_u16(v: int) -> bytes:
    return struct.pack("!H", v)


def opt_ips(ips: Iterable[str]) -> bytes:
    return b"".join(ip_bytes(i) for i in ips)


def classless_routes(routes: Iterable[tuple[str, str]]) -> bytes:
    """Option 121 value (RFC 3442): (destination CIDR, next hop) pairs, each encoded as
    prefix length, the significant octets of the destination, then the router."""
    out = bytearray()
    for dest, nexthop in routes:
        net = ipaddress.IPv4Network(dest, strict=False)
        octets = (net.prefixlen + 7) // 8
        out.append(net.prefixlen)
        out += net.network_address.packed[:octets]
        out += ip_bytes(nexthop)
    return bytes(out)


def parse_classless_routes(data: bytes) -> list[tuple[str, str]]:
    """Inverse of `classless_routes` (raises ValueError on malformed data)."""
    out = []
    i = 0
    while i < len(data):
        plen = data[i]
        if plen > 32:
            raise ValueError("prefix length > 32")
        octets = (plen + 7) // 8
        if i + 1 + octets + 4 > len(data):
            raise ValueError("truncated route")
        dest = data[i + 1:i + 1 + octets] + bytes(4 - octets)
        out.append((f"{ip_str(dest)}/{plen}", ip_str(data[i + 1 + octets:i + 5 + octets])))
        i += 5 + octets
    return out


# ---------------------------------------------------------------------------------- frames
@dataclasses.dataclass(frozen=True)
class DhcpFrame:
    """A received BOOTP request with its link and IP addressing."""

    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str
    msg: Bootp


@dataclasses.dataclass(frozen=True)
class ArpFrame:
    """A received ARP packet (Ethernet/IPv4 only)."""

    src_mac: str
    dst_mac: str
    op: int                 # 1 request, 2 reply
    sha: str
    spa: str
    tha: str
    tpa: str


@dataclasses.dataclass(frozen=True)
class UdpFrame:
    """An Ethernet + IPv4 + UDP frame, decoded."""

    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str
    sport: int
    dport: int
    payload: bytes


def decode_udp(frame: bytes) -> UdpFrame | None:
    """A plain IPv4/UDP frame (no IP options, no fragment, valid header checksum), else None."""
    if len(frame) < 14 + 20 + 8 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ip = frame[14:]
    ver_ihl, _tos, total, _id, frag, _ttl, proto = struct.unpack_from("!BBHHHBB", ip, 0)
    if ver_ihl != 0x45 or proto != 17 or frag & 0x3FFF or total > len(ip) or total < 28:
        return None
    if checksum(ip[:20]) != 0:
        return None
    sport, dport, ulen = struct.unpack_from("!HHH", ip, 20)
    if ulen < 8 or 20 + ulen > total:
        return None
    return UdpFrame(mac_str(frame[6:12]), mac_str(frame[0:6]), ip_str(ip[12:16]), ip_str(ip[16:20]), sport, dport,
                    bytes(ip[28:20 + ulen]))


def decode_frame(frame: bytes) -> DhcpFrame | ArpFrame | None:
    """A BOOTP request to UDP port 67 or an ARP packet, from an Ethernet frame; else None."""
    if len(frame) < 14:
        return None
    (etype,) = struct.unpack_from("!H", frame, 12)
    if etype == ETH_P_ARP:
        if len(frame) < 42:
            return None
        htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, 14)
        if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
            return None
        return ArpFrame(mac_str(frame[6:12]), mac_str(frame[0:6]), op, mac_str(frame[22:28]), ip_str(frame[28:32]),
                        mac_str(frame[32:38]), ip_str(frame[38:42]))
    udp = decode_udp(frame)
    if udp is None or udp.dport != SERVER_PORT:
        return None
    msg = decode_bootp(udp.payload)
    if msg is None or msg.op != BOOTREQUEST:
        return None
    return DhcpFrame(udp.src_mac, udp.dst_mac, udp.src_ip, udp.dst_ip, msg)


def udp_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, sport: int, dport: int,
              payload: bytes, ttl: int = 64) -> bytes:
    """An Ethernet + IPv4 + UDP frame with both checksums."""
    ulen = 8 + len(payload)
    s, d = ip_bytes(src_ip), ip_bytes(dst_ip)
    pseudo = s + d + struct.pack("!BBH", 0, 17, ulen)
    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    csum = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0x10, 20 + ulen, 0, 0, ttl, 17, 0, s, d)
    iph = iph[:10] + struct.pack("!H", checksum(iph)) + iph[12:]
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ETH_P_IP) + iph + udp


def arp_reply_frame(src_mac: str, src_ip: str, dst_mac: str, dst_ip: str) -> bytes:
    """An ARP reply "src_ip is at src_mac", sent to the asker."""
    return (mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ETH_P_ARP)
            + struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 2) + mac_bytes(src_mac) + ip_bytes(src_ip)
            + mac_bytes(dst_mac) + ip_bytes(dst_ip) + bytes(18))


def dhcp_request_frame(client_mac: str, msg_type: int, xid: int, options: Mapping[int, bytes] | None = None,
                       ciaddr: str = "0.0.0.0", src_ip: str = "0.0.0.0", dst_ip: str = "255.255.255.255",
                       dst_mac: str = BROADCAST_MAC, flags: int = 0) -> bytes:
    """A client's frame (tests and tools): message type first, then `options`."""
    opts = ((OPT_MSG_TYPE, bytes((msg_type,))), *((options or {}).items()))
    msg = Bootp(BOOTREQUEST, xid, client_mac, flags=flags, ciaddr=ciaddr, options=opts)
    return udp_frame(client_mac, dst_mac, src_ip, dst_ip, CLIENT_PORT, SERVER_PORT, encode_bootp(msg))
