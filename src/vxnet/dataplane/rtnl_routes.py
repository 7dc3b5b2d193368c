"""Address and route requests over the raw rtnetlink socket (`rtnl_links.RtnlLinks`), and their
dumps: what the DHCP and metadata drivers do to addresses and routes (neighbours are
`rtnl.NeighRequest` / `RtnlSocket.dump_neigh`).

Contract:
- The encoders are pure (a `rtnl_links.Msg`, sent with `RtnlLinks.call`) and match what
  `ip addr` / `ip route` / pyroute2 send for the same request; tests/unit/test_rtnl_routes.py
  decodes them with pyroute2 as the oracle. A refusal raises `rtnl_links.RtnlError` (an OSError).
- `addrs(links, family)` and `routes(links, family, table)` dump the namespace and parse the
  few fields the drivers compare.
Only unicast routes through one device (`dst/len dev OIF`) are encoded.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import struct

from vxnet.dataplane.rtnl import NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, _attr, _attrs
from vxnet.dataplane.rtnl_links import NLM_F_EXCL, Msg, RtnlLinks

RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
IFA_ADDRESS = 1
IFA_LOCAL = 2
RTA_DST = 1
RTA_OIF = 4
RTA_TABLE = 15
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255

_IFA = struct.Struct("=BBBBI")          # struct ifaddrmsg
_RTM = struct.Struct("=BBBBBBBBI")      # struct rtmsg


@dataclasses.dataclass(frozen=True, slots=True)
class AddrRecord:
    index: int
    address: str
    prefixlen: int


@dataclasses.dataclass(frozen=True, slots=True)
class RouteRecord:
    dst: str | None         # None: the default route
    dst_len: int
    oif: int
    proto: int
    scope: int
    table: int


def _family(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def new_addr(index: int, address: str, prefixlen: int) -> Msg:
    """`ip addr add ADDRESS/PREFIXLEN dev INDEX` (EEXIST if the device has it)."""
    ip = ipaddress.ip_address(address)
    body = _IFA.pack(_family(ip), prefixlen, 0, 0, index)
    if ip.version == 4:
        body += _attr(IFA_LOCAL, ip.packed)
    return Msg(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body + _attr(IFA_ADDRESS, ip.packed))


def route(op: str, dst: str, dst_len: int, oif: int, proto: int, scope: int | None = None,
          table: int = RT_TABLE_MAIN) -> Msg:
    """`ip route replace|del DST/LEN dev OIF proto PROTO [scope SCOPE] table TABLE`.

    A replace without `scope` is scope universe. A delete matches any type, and any scope
    unless one is given (RT_SCOPE_NOWHERE, as `ip route del` sends: the kernel matches a
    delete's scope exactly otherwise, so pyroute2's default scope 0 never deletes a scope-link
    route: ESRCH)."""
    ip = ipaddress.ip_address(dst)
    rtype = RTN_UNICAST if op == "replace" else 0
    if scope is None:
        scope = RT_SCOPE_UNIVERSE if op == "replace" else RT_SCOPE_NOWHERE
    body = _RTM.pack(_family(ip), dst_len, 0, 0, table if table < 256 else RT_TABLE_MAIN, proto, scope, rtype, 0)
    body += _attr(RTA_DST, ip.packed) + _attr(RTA_OIF, struct.pack("=I", oif))
    if table >= 256:
        body += _attr(RTA_TABLE, struct.pack("=I", table))
    if op == "replace":
        return Msg(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body)
    if op == "del":
        return Msg(RTM_DELROUTE, 0, body)
    raise ValueError(op)


def addrs(links: RtnlLinks, family: int, index: int | None = None) -> list[AddrRecord]:
    """The addresses of `family` in the namespace (of device `index` only, if given)."""
    out = []
    for mtype, payload in links.request(RTM_GETADDR, NLM_F_DUMP, _IFA.pack(family, 0, 0, 0, 0)):
        if mtype != RTM_NEWADDR:
            continue
        fam, plen, _flags, _scope, idx = _IFA.unpack_from(payload, 0)
        a = _attrs(payload, _IFA.size)
        raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS)
        if fam == family and raw and (index is None or idx == index):
            out.append(AddrRecord(idx, str(ipaddress.ip_address(raw)), plen))
    return out


def routes(links: RtnlLinks, family: int, table: int = RT_TABLE_MAIN) -> list[RouteRecord]:
    """The routes of `family` in routing table `table` of the namespace."""
    out = []
    for mtype, payload in links.request(RTM_GETROUTE, NLM_F_DUMP, _RTM.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
        if mtype != RTM_NEWROUTE:
            continue
        fam, dst_len, _src_len, _tos, tbl, proto, scope, _type, _flags = _RTM.unpack_from(payload, 0)
        a = _attrs(payload, _RTM.size)
        if len(a.get(RTA_TABLE, b"")) == 4:
            (tbl,) = struct.unpack("=I", a[RTA_TABLE])
        if fam != family or tbl != table:
            continue
        dst = str(ipaddress.ip_address(a[RTA_DST])) if a.get(RTA_DST) else None
        oif = struct.unpack("=I", a[RTA_OIF])[0] if len(a.get(RTA_OIF, b"")) == 4 else 0
        out.append(RouteRecord(dst, dst_len, oif, proto, scope, tbl))
    return out
