"""DHCPv6 wire format (RFC 8415): client/server messages and the options a server on the VM's
own link needs (client and server identifiers, IA_NA with IA addresses, status codes, option
request, rapid commit, DNS servers RFC 3646, information refresh time).

Pure (bytes in, bytes out).

Contract:
- `decode_message` never raises on garbage: a message shorter than its 4-byte header, or a
  relay message (RELAY-FORW/RELAY-REPL), gives None; options are parsed to the end of the data,
  a truncated option ends parsing (what came before is kept).
- `encode_message` is the inverse: `decode_message(encode_message(m)) == m`; the same holds for
  `decode_ia_na(encode_ia_na(...))`.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable

from vxnet.compute.dhcp_packet import mac_bytes
from vxnet.compute.nd_packet import ip6_bytes, ip6_str

SERVER_PORT, CLIENT_PORT = 547, 546

SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY, RELEASE, DECLINE = 1, 2, 3, 4, 5, 6, 7, 8, 9
RECONFIGURE, INFORMATION_REQUEST, RELAY_FORW, RELAY_REPL = 10, 11, 12, 13
TYPE_NAMES = {SOLICIT: "SOLICIT", ADVERTISE: "ADVERTISE", REQUEST: "REQUEST", CONFIRM: "CONFIRM",
              RENEW: "RENEW", REBIND: "REBIND", REPLY: "REPLY", RELEASE: "RELEASE", DECLINE: "DECLINE",
              RECONFIGURE: "RECONFIGURE", INFORMATION_REQUEST: "INFORMATION-REQUEST"}

OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IA_TA, OPT_IAADDR, OPT_ORO = 1, 2, 3, 4, 5, 6
OPT_PREFERENCE, OPT_ELAPSED_TIME, OPT_STATUS_CODE, OPT_RAPID_COMMIT = 7, 8, 13, 14
OPT_DNS_SERVERS, OPT_DOMAIN_LIST, OPT_IA_PD, OPT_INFORMATION_REFRESH_TIME = 23, 24, 25, 32

STATUS_SUCCESS, STATUS_UNSPEC_FAIL, STATUS_NO_ADDRS_AVAIL, STATUS_NO_BINDING = 0, 1, 2, 3
STATUS_NOT_ON_LINK, STATUS_USE_MULTICAST = 4, 5

DUID_LLT, DUID_EN, DUID_LL = 1, 2, 3
HW_ETHERNET = 1


@dataclasses.dataclass(frozen=True)
class Dhcp6Message:
    """A client/server message: type, 24-bit transaction id, options in order."""

    msg_type: int
    xid: int
    options: tuple[tuple[int, bytes], ...] = ()

    def opt(self, code: int) -> bytes | None:
        """The first option `code`, None if absent."""
        return next((v for c, v in self.options if c == code), None)

    def all(self, code: int) -> list[bytes]:
        return [v for c, v in self.options if c == code]


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    return b"".join(struct.pack("!HH", c, len(v)) + v for c, v in options)


def decode_options(data: bytes) -> tuple[tuple[int, bytes], ...]:
    out, off = [], 0
    while off + 4 <= len(data):
        code, length = struct.unpack_from("!HH", data, off)
        if off + 4 + length > len(data):
            break
        out.append((code, bytes(data[off + 4: off + 4 + length])))
        off += 4 + length
    return tuple(out)


def encode_message(m: Dhcp6Message) -> bytes:
    return struct.pack("!I", (m.msg_type << 24) | (m.xid & 0xFFFFFF)) + encode_options(m.options)


def decode_message(data: bytes) -> Dhcp6Message | None:
    if len(data) < 4 or data[0] in (RELAY_FORW, RELAY_REPL):
        return None
    (head,) = struct.unpack_from("!I", data, 0)
    return Dhcp6Message(head >> 24, head & 0xFFFFFF, decode_options(data[4:]))


def duid_ll(mac: str) -> bytes:
    """DUID-LL of an Ethernet MAC (the server id: the same wherever the responder MAC is)."""
    return struct.pack("!HH", DUID_LL, HW_ETHERNET) + mac_bytes(mac)


def status(code: int, message: str = "") -> tuple[int, bytes]:
    return OPT_STATUS_CODE, struct.pack("!H", code) + message.encode()


def decode_status(value: bytes) -> tuple[int, str]:
    if len(value) < 2:
        return STATUS_UNSPEC_FAIL, ""
    return struct.unpack_from("!H", value, 0)[0], value[2:].decode(errors="replace")


@dataclasses.dataclass(frozen=True)
class IaAddress:
    address: str
    preferred: int
    valid: int
    options: tuple[tuple[int, bytes], ...] = ()


@dataclasses.dataclass(frozen=True)
class IaNa:
    iaid: int
    t1: int = 0
    t2: int = 0
    addresses: tuple[IaAddress, ...] = ()
    options: tuple[tuple[int, bytes], ...] = ()     # other sub-options (status code)


def encode_ia_na(ia: IaNa) -> bytes:
    subs = [(OPT_IAADDR, ip6_bytes(a.address) + struct.pack("!II", a.preferred, a.valid) + encode_options(a.options))
            for a in ia.addresses]
    return struct.pack("!III", ia.iaid, ia.t1, ia.t2) + encode_options([*subs, *ia.options])


def decode_ia_na(value: bytes) -> IaNa | None:
    if len(value) < 12:
        return None
    iaid, t1, t2 = struct.unpack_from("!III", value, 0)
    addrs, others = [], []
    for code, v in decode_options(value[12:]):
        if code == OPT_IAADDR and len(v) >= 24:
            pref, valid = struct.unpack_from("!II", v, 16)
            addrs.append(IaAddress(ip6_str(v[:16]), pref, valid, decode_options(v[24:])))
        else:
            others.append((code, v))
    return IaNa(iaid, t1, t2, tuple(addrs), tuple(others))


def dns_servers(addrs: Iterable[str]) -> bytes:
    return b"".join(ip6_bytes(a) for a in addrs)


def decode_dns_servers(value: bytes) -> tuple[str, ...]:
    return tuple(ip6_str(value[i:i + 16]) for i in range(0, len(value) - 15, 16))


def u32(v: int) -> bytes:
    return struct.pack("!I", v)
