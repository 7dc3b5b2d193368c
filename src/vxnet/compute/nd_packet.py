"""IPv6 wire format for the host's responders: Ethernet + IPv6 + ICMPv6 (router solicitation
and advertisement, neighbour solicitation and advertisement, RFC 4861/8106) and IPv6 UDP
frames (DHCPv6 rides on them); EUI-64 addresses (RFC 4291 appendix A).

Pure (bytes in, bytes out; no sockets, no clock).

Contract:
- `decode_frame6` never raises on garbage: anything that is not an Ethernet II IPv6 frame whose
  next header is ICMPv6 or UDP, with lengths that fit, gives None. Checksums are NOT verified
  (`checksum_ok` does it): a frame a VM's stack hands to its veth/tap carries a partial
  checksum (CHECKSUM_PARTIAL, completed only by a NIC), which is how the responder's packet
  socket reads it. Extension headers are not walked (nothing a responder must read carries
  them); a truncated ND option ends option parsing.
- `ra_frame` / `udp6_frame` / `ns_frame` / `na_frame` build frames with correct ICMPv6/UDP
  checksums (the IPv6 pseudo-header); `decode_ra` is the inverse of `ra_frame` for the fields
  it sets (tests and the root test's assertions read RAs with it).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections.abc import Iterable

from vxnet.compute.dhcp_packet import mac_bytes, mac_str

ETH_P_IPV6 = 0x86DD
PROTO_ICMPV6, PROTO_UDP = 58, 17
ND_HOP_LIMIT = 255
ALL_NODES = "ff02::1"
ALL_ROUTERS = "ff02::2"
ALL_DHCP = "ff02::1:2"           # All_DHCP_Relay_Agents_and_Servers (RFC 8415)

RS, RA, NS, NA, REDIRECT = 133, 134, 135, 136, 137
OPT_SLLA, OPT_TLLA, OPT_PREFIX, OPT_MTU, OPT_RDNSS = 1, 2, 3, 5, 25
RA_MANAGED, RA_OTHER = 0x80, 0x40
PREFIX_ONLINK, PREFIX_AUTONOMOUS = 0x80, 0x40
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80, 0x40, 0x20


# ---------------------------------------------------------------------------------- addresses
def eui64_interface_id(mac: str) -> bytes:
    """The modified EUI-64 interface id of a MAC (U/L bit flipped, ff:fe in the middle)."""
    b = bytearray(mac_bytes(mac))
    b[0] ^= 0x02
    return bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])


def eui64_address(prefix: str, mac: str) -> str:
    """The SLAAC address a host with `mac` forms in /64 `prefix` (what Neutron computes)."""
    net = ipaddress.IPv6Network(prefix, strict=False)
    return str(ipaddress.IPv6Address(net.network_address.packed[:8] + eui64_interface_id(mac)))


def link_local(mac: str) -> str:
    """fe80::/64 + EUI-64 of `mac`: the link-local address a Linux interface forms by default."""
    return eui64_address("fe80::/64", mac)


def multicast_mac(ip: str) -> str:
    """The Ethernet multicast address of an IPv6 multicast address (33:33 + its last 32 bits)."""
    return mac_str(b"\x33\x33" + ipaddress.IPv6Address(ip).packed[-4:])


def solicited_node(ip: str) -> str:
    """ff02::1:ffXX:XXXX of `ip`."""
    return str(ipaddress.IPv6Address(b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + ipaddress.IPv6Address(ip).packed[-3:]))


def ip6_bytes(ip: str) -> bytes:
    return ipaddress.IPv6Address(ip).packed


def ip6_str(b: bytes) -> str:
    return str(ipaddress.IPv6Address(bytes(b[:16])))


# ---------------------------------------------------------------------------------- checksums
def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def l4_checksum(src: bytes, dst: bytes, proto: int, payload: bytes) -> int:
    """The ICMPv6/UDP checksum over the IPv6 pseudo-header and `payload` (its checksum field 0)."""
    pseudo = src + dst + struct.pack("!I3xB", len(payload), proto)
    c = ~_sum16(pseudo + payload) & 0xFFFF
    return c if c or proto != PROTO_UDP else 0xFFFF


def _frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, proto: int, hop: int, payload: bytes,
           csum_off: int) -> bytes:
    s, d = ip6_bytes(src_ip), ip6_bytes(dst_ip)
    c = l4_checksum(s, d, proto, payload)
    payload = payload[:csum_off] + struct.pack("!H", c) + payload[csum_off + 2:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(payload), proto, hop) + s + d
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ETH_P_IPV6) + ip6 + payload


def udp6_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, sport: int, dport: int, data: bytes,
               hop: int = 64) -> bytes:
    """An Ethernet/IPv6/UDP frame with a correct checksum."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    return _frame(src_mac, dst_mac, src_ip, dst_ip, PROTO_UDP, hop, udp, 6)


def icmp6_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, icmp: bytes, hop: int = ND_HOP_LIMIT) -> bytes:
    """An Ethernet/IPv6/ICMPv6 frame (`icmp`: type, code, 2 checksum bytes (ignored), body)."""
    return _frame(src_mac, dst_mac, src_ip, dst_ip, PROTO_ICMPV6, hop, icmp, 2)


# ---------------------------------------------------------------------------------- ND messages
@dataclasses.dataclass(frozen=True, order=True)
class Prefix:
    """A prefix information option."""

    prefix: str                     # CIDR
    onlink: bool = True
    autonomous: bool = True
    valid: int = 86400
    preferred: int = 14400


@dataclasses.dataclass(frozen=True)
class RouterAdvert:
    """The content of a router advertisement."""

    managed: bool = False           # M: addresses by DHCPv6
    other: bool = False             # O: other configuration by DHCPv6
    router_lifetime: int = 1800     # seconds as a default router (0: not a default router)
    hop_limit: int = 64
    reachable: int = 0
    retrans: int = 0
    prefixes: tuple[Prefix, ...] = ()
    mtu: int | None = None
    rdnss: tuple[str, ...] = ()
    rdnss_lifetime: int = 300
    source_lladdr: str | None = None


def _opt(kind: int, body: bytes) -> bytes:
    """An ND option: type, length in 8-byte units, body padded to it."""
    raw = bytes((kind, 0)) + body
    raw += b"\0" * (-len(raw) % 8)
    return bytes((kind, len(raw) // 8)) + raw[2:]


def encode_ra(ra: RouterAdvert) -> bytes:
    """The ICMPv6 message of `ra` (checksum 0)."""
    flags = (RA_MANAGED if ra.managed else 0) | (RA_OTHER if ra.other else 0)
    out = struct.pack("!BBHBBHII", RA, 0, 0, ra.hop_limit, flags, ra.router_lifetime, ra.reachable, ra.retrans)
    if ra.source_lladdr:
        out += _opt(OPT_SLLA, mac_bytes(ra.source_lladdr))
    if ra.mtu is not None:
        out += _opt(OPT_MTU, struct.pack("!HI", 0, ra.mtu))
    for p in ra.prefixes:
        net = ipaddress.IPv6Network(p.prefix, strict=False)
        pflags = (PREFIX_ONLINK if p.onlink else 0) | (PREFIX_AUTONOMOUS if p.autonomous else 0)
        out += _opt(OPT_PREFIX, struct.pack("!BBIII", net.prefixlen, pflags, p.valid, p.preferred, 0)
                    + net.network_address.packed)
    if ra.rdnss:
        out += _opt(OPT_RDNSS, struct.pack("!HI", 0, ra.rdnss_lifetime) + b"".join(ip6_bytes(a) for a in ra.rdnss))
    return out


def ra_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, ra: RouterAdvert) -> bytes:
    """A router advertisement frame (IPv6 source: a link-local address, hop limit 255)."""
    return icmp6_frame(src_mac, dst_mac, src_ip, dst_ip, encode_ra(ra))


def decode_options(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """ND options as (type, body after the 2 header bytes); a zero length or truncated option ends."""
    out, off = [], 0
    while off + 2 <= len(data):
        kind, units = data[off], data[off + 1]
        if units == 0 or off + units * 8 > len(data):
            break
        out.append((kind, data[off + 2: off + units * 8]))
        off += units * 8
    return tuple(out)


def decode_ra(icmp: bytes) -> RouterAdvert | None:
    """The content of an ICMPv6 router advertisement message (None if it is not one)."""
    if len(icmp) < 16 or icmp[0] != RA or icmp[1] != 0:
        return None
    _, _, _, hop, flags, life, reach, retrans = struct.unpack_from("!BBHBBHII", icmp, 0)
    prefixes, mtu, rdnss, rdnss_life, slla = [], None, (), 300, None
    for kind, body in decode_options(icmp[16:]):
        if kind == OPT_SLLA and len(body) >= 6:
            slla = mac_str(body)
        elif kind == OPT_MTU and len(body) >= 6:
            mtu = struct.unpack_from("!I", body, 2)[0]
        elif kind == OPT_PREFIX and len(body) >= 30:
            plen, pflags, valid, pref = struct.unpack_from("!BBII", body, 0)
            prefixes.append(Prefix(f"{ip6_str(body[14:30])}/{plen}", bool(pflags & PREFIX_ONLINK),
                                   bool(pflags & PREFIX_AUTONOMOUS), valid, pref))
        elif kind == OPT_RDNSS and len(body) >= 6:
            rdnss_life = struct.unpack_from("!I", body, 2)[0]
            rdnss = tuple(ip6_str(body[i:i + 16]) for i in range(6, len(body) - 15, 16))
    return RouterAdvert(bool(flags & RA_MANAGED), bool(flags & RA_OTHER), life, hop, reach, retrans,
                        tuple(prefixes), mtu, rdnss, rdnss_life, slla)


def rs_message(source_lladdr: str | None = None) -> bytes:
    """An ICMPv6 router solicitation (checksum 0)."""
    return struct.pack("!BBHI", RS, 0, 0, 0) + (_opt(OPT_SLLA, mac_bytes(source_lladdr)) if source_lladdr else b"")


def ns_message(target: str, source_lladdr: str | None = None) -> bytes:
    """An ICMPv6 neighbour solicitation (checksum 0)."""
    return (struct.pack("!BBHI", NS, 0, 0, 0) + ip6_bytes(target)
            + (_opt(OPT_SLLA, mac_bytes(source_lladdr)) if source_lladdr else b""))


def na_message(target: str, target_lladdr: str | None, flags: int = NA_SOLICITED | NA_OVERRIDE) -> bytes:
    """An ICMPv6 neighbour advertisement (checksum 0)."""
    return (struct.pack("!BBHB3x", NA, 0, 0, flags) + ip6_bytes(target)
            + (_opt(OPT_TLLA, mac_bytes(target_lladdr)) if target_lladdr else b""))


# ---------------------------------------------------------------------------------- decode
@dataclasses.dataclass(frozen=True)
class Ip6Frame:
    """What a responder reads of an IPv6 frame: addresses, and the ICMPv6 message or UDP data."""

    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str
    proto: int
    hop_limit: int
    icmp: bytes = b""               # ICMPv6: the whole message
    sport: int = 0                  # UDP
    dport: int = 0
    data: bytes = b""               # UDP payload

    @property
    def icmp_type(self) -> int | None:
        return self.icmp[0] if self.proto == PROTO_ICMPV6 and self.icmp else None

    def option_lladdr(self, kind: int) -> str | None:
        """The link-layer address option `kind` of an RS (options at 8) or NS/NA (at 24)."""
        start = {RS: 8, NS: 24, NA: 24, RA: 16}.get(self.icmp_type or 0)
        if start is None:
            return None
        for k, body in decode_options(self.icmp[start:]):
            if k == kind and len(body) >= 6:
                return mac_str(body)
        return None


def decode_frame6(frame: bytes) -> Ip6Frame | None:
    """An IPv6 ICMPv6 or UDP frame (see module contract), else None."""
    if len(frame) < 14 + 40 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IPV6:
        return None
    vtc, plen, nxt, hop = struct.unpack_from("!IHBB", frame, 14)
    if vtc >> 28 != 6 or 54 + plen > len(frame):
        return None
    src, dst = frame[22:38], frame[38:54]
    payload = frame[54:54 + plen]
    if nxt == PROTO_ICMPV6:
        if len(payload) < 4:
            return None
        return Ip6Frame(mac_str(frame[6:12]), mac_str(frame[0:6]), ip6_str(src), ip6_str(dst), nxt, hop, icmp=payload)
    if nxt == PROTO_UDP:
        if len(payload) < 8:
            return None
        sport, dport, ulen, _ = struct.unpack_from("!HHHH", payload, 0)
        if ulen < 8 or ulen > len(payload):
            return None
        return Ip6Frame(mac_str(frame[6:12]), mac_str(frame[0:6]), ip6_str(src), ip6_str(dst), nxt, hop,
                        sport=sport, dport=dport, data=payload[8:ulen])
    return None


def checksum_ok(frame: bytes) -> bool:
    """True when an Ethernet/IPv6 ICMPv6 or UDP frame's checksum is complete and right (a zero
    UDP checksum is invalid over IPv6, RFC 8200)."""
    if len(frame) < 54 + 4:
        return False
    plen, nxt = struct.unpack_from("!HB", frame, 18)
    payload = frame[54:54 + plen]
    if nxt == PROTO_UDP and payload[6:8] == b"\0\0":
        return False
    return _sum16(frame[22:54] + struct.pack("!I3xB", len(payload), nxt) + payload) == 0xFFFF


def is_valid_rs(f: Ip6Frame) -> bool:
    """A router solicitation a router must process (RFC 4861 6.1.1): hop limit 255, code 0,
    8 bytes or more, and no source link-layer option when sent from the unspecified address."""
    if f.icmp_type != RS or f.hop_limit != ND_HOP_LIMIT or len(f.icmp) < 8 or f.icmp[1] != 0:
        return False
    return not (f.src_ip == "::" and f.option_lladdr(OPT_SLLA) is not None)


def addresses(items: Iterable[str]) -> tuple[str, ...]:
    """The IPv6 addresses among `items`, canonical, in order, without duplicates."""
    out: list[str] = []
    for a in items:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        if ip.version == 6 and str(ip) not in out:
            out.append(str(ip))
    return tuple(out)
