"""Link requests over the raw rtnetlink socket (`rtnl.RtnlSocket`): what the L2 agent does to
links. Create a bridge, VXLAN, VLAN or veth device; set a link's master, MTU, MAC, up/down flag and
IPv6 address generation; set bridge-port flags; delete a link; look one up by name; find the
device holding an address.

Contract:
- Each request is one message the kernel acknowledges (veth pairs included: one message creates
  both ends, the peer possibly in another namespace); a refusal raises `RtnlError`, an
  `OSError` whose `code` (= `errno`) is the kernel's errno (EEXIST, ENODEV, ...).
- The encoders are pure (bytes out) and match what `ip link` / pyroute2 send for the same
  request; tests/unit/test_rtnl_links.py decodes them with pyroute2 as the oracle.

Why not pyroute2's `IPRoute`: importing pyroute2 costs ~25 MB of the agent's resident memory
(its package imports every family it supports), more than the agent's whole view of 10,000
ports; the agent needs a dozen fixed message layouts.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
import socket
import struct

from vxnet.dataplane.rtnl import (
    _HDR,
    _IFI,
    IFF_UP,
    IFLA_ADDRESS,
    IFLA_AF_SPEC,
    IFLA_IFNAME,
    IFLA_INET6_ADDR_GEN_MODE,
    IFLA_LINK,
    IFLA_LINKINFO,
    IFLA_MASTER,
    IFLA_MTU,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_GETLINK,
    RTM_NEWLINK,
    LinkRecord,
    RtnlSocket,
    _attr,
    _attrs,
    _parse_link,
)

RTM_DELLINK = 17
RTM_NEWADDR = 20
RTM_GETADDR = 22
NLM_F_EXCL = 0x200
NLM_F_DUMP = 0x300

IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_INFO_SLAVE_DATA = 5
IFLA_VXLAN_ID = 1
IFLA_VXLAN_LINK = 3
IFLA_VXLAN_LOCAL = 4
IFLA_VXLAN_LEARNING = 7
IFLA_VXLAN_PORT = 15
IFLA_VLAN_ID = 1
IFLA_BRPORT_LEARNING = 8
IFLA_BRPORT_NEIGH_SUPPRESS = 32
IFLA_BR_NF_CALL_IPTABLES = 36
IFLA_BR_NF_CALL_IP6TABLES = 37
IFA_ADDRESS = 1
IFA_LOCAL = 2
ADDR_GEN_MODE_NONE = 1
IFLA_NET_NS_FD = 28
VETH_INFO_PEER = 1
IFF_NOARP = 0x80

_IFA = struct.Struct("=BBBBI")


class RtnlError(OSError):
    """The kernel refused a request (`code` is its errno, as pyroute2's NetlinkError has)."""

    @property
    def code(self) -> int:
        return self.errno or 0


@dataclasses.dataclass(frozen=True, slots=True)
class Msg:
    """One rtnetlink request (header added by `encode`, as `RtnlSocket.batch` wants)."""

    mtype: int
    flags: int
    body: bytes

    def encode(self, seq: int, ack: bool) -> bytes:
        flags = NLM_F_REQUEST | self.flags | (NLM_F_ACK if ack else 0)
        return _HDR.pack(_HDR.size + len(self.body), self.mtype, flags, seq, 0) + self.body


def _u8(kind: int, v: int) -> bytes:
    return _attr(kind, struct.pack("=B", v))


def _u16(kind: int, v: int) -> bytes:
    return _attr(kind, struct.pack("=H", v))


def _u32(kind: int, v: int) -> bytes:
    return _attr(kind, struct.pack("=I", v))


def _name(kind: int, s: str) -> bytes:
    return _attr(kind, s.encode() + b"\0")


def _mac(mac: str) -> bytes:
    return _attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))


def _info(kind: str, data: bytes = b"") -> bytes:
    return _attr(IFLA_LINKINFO, _name(IFLA_INFO_KIND, kind) + (_attr(IFLA_INFO_DATA, data) if data else b""))


def _new(body: bytes) -> Msg:
    return Msg(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, _IFI.pack(0, 0, 0, 0, 0) + body)


def _bridge_nf(on: bool) -> bytes:
    return _u8(IFLA_BR_NF_CALL_IPTABLES, int(on)) + _u8(IFLA_BR_NF_CALL_IP6TABLES, int(on))


def new_bridge(name: str, mac: str | None, mtu: int | None, nf_call: bool | None = None) -> Msg:
    """`ip link add NAME [address MAC] [mtu MTU] type bridge [nf_call_iptables B nf_call_ip6tables B]`
    (fails with EEXIST if it exists): the bridge's br_netfilter switches are set in the message
    that creates it, so no frame crosses it before they hold."""
    return _new(_name(IFLA_IFNAME, name) + (_mac(mac) if mac else b"") + (_u32(IFLA_MTU, mtu) if mtu else b"")
                + _info("bridge", _bridge_nf(nf_call) if nf_call is not None else b""))


def set_bridge_nf(index: int, on: bool) -> Msg:
    """`ip link set dev INDEX type bridge nf_call_iptables B nf_call_ip6tables B`: whether bridged
    IPv4/IPv6 frames of this bridge pass the inet hooks (br_netfilter) when the namespace-wide
    sysctls are 0."""
    return Msg(RTM_NEWLINK, 0, _IFI.pack(0, 0, index, 0, 0) + _info("bridge", _bridge_nf(on)))


def new_vxlan(name: str, vni: int, local: str, port: int, learning: bool, mtu: int | None,
              lower: int | None = None) -> Msg:
    """`ip link add NAME type vxlan id VNI local IP dstport PORT [no]learning [dev LOWER]` (IPv4)."""
    data = (_u32(IFLA_VXLAN_ID, vni) + (_u32(IFLA_VXLAN_LINK, lower) if lower is not None else b"")
            + _attr(IFLA_VXLAN_LOCAL, ipaddress.IPv4Address(local).packed) + _u8(IFLA_VXLAN_LEARNING, int(learning))
            + _attr(IFLA_VXLAN_PORT, struct.pack("!H", port)))
    return _new(_name(IFLA_IFNAME, name) + (_u32(IFLA_MTU, mtu) if mtu else b"") + _info("vxlan", data))


def new_vlan(name: str, lower: int, vid: int, mtu: int | None) -> Msg:
    """`ip link add NAME link LOWER type vlan id VID [mtu MTU]`."""
    return _new(_name(IFLA_IFNAME, name) + _u32(IFLA_LINK, lower) + (_u32(IFLA_MTU, mtu) if mtu else b"")
                + _info("vlan", _u16(IFLA_VLAN_ID, vid)))


def new_veth(name: str, peer: str, mtu: int | None, *, peer_mac: str | None = None,
             peer_netns_fd: int | None = None) -> Msg:
    """`ip link add NAME [mtu MTU] type veth peer name PEER [address MAC] [mtu MTU] [netns FD]`
    (the peer is created in the namespace of `peer_netns_fd`, an open namespace file)."""
    mtu_attr = _u32(IFLA_MTU, mtu) if mtu else b""
    peer_body = (_IFI.pack(0, 0, 0, 0, 0) + _name(IFLA_IFNAME, peer) + (_mac(peer_mac) if peer_mac else b"")
                 + mtu_attr + (_u32(IFLA_NET_NS_FD, peer_netns_fd) if peer_netns_fd is not None else b""))
    return _new(_name(IFLA_IFNAME, name) + mtu_attr + _info("veth", _attr(VETH_INFO_PEER, peer_body)))


def set_link(index: int, *, mac: str | None = None, mtu: int | None = None, master: int | None = None,
             up: bool | None = None, addr_gen_none: bool = False, noarp: bool | None = None) -> Msg:
    """`ip link set` of an existing link: only the given attributes change (`master=0`: none;
    `up`, `noarp` None: that flag left alone)."""
    flags = (IFF_UP if up else 0) | (IFF_NOARP if noarp else 0)
    change = (IFF_UP if up is not None else 0) | (IFF_NOARP if noarp is not None else 0)
    body = _IFI.pack(0, 0, index, flags, change)
    if mac is not None:
        body += _mac(mac)
    if mtu is not None:
        body += _u32(IFLA_MTU, mtu)
    if master is not None:
        body += _u32(IFLA_MASTER, master)
    if addr_gen_none:
        body += _attr(IFLA_AF_SPEC, _attr(socket.AF_INET6, _u8(IFLA_INET6_ADDR_GEN_MODE, ADDR_GEN_MODE_NONE)))
    return Msg(RTM_NEWLINK, 0, body)


def set_brport(index: int, *, learning: bool, neigh_suppress: bool) -> Msg:
    """`ip link set dev INDEX type bridge_slave learning on|off neigh_suppress on|off` (the link
    must be a bridge port)."""
    data = _u8(IFLA_BRPORT_LEARNING, int(learning)) + _u8(IFLA_BRPORT_NEIGH_SUPPRESS, int(neigh_suppress))
    info = _name(IFLA_INFO_KIND, "bridge_slave") + _attr(IFLA_INFO_SLAVE_DATA, data)   # as `ip link` sends it
    return Msg(RTM_NEWLINK, 0, _IFI.pack(0, 0, index, 0, 0) + _attr(IFLA_LINKINFO, info))


def del_link(index: int) -> Msg:
    """`ip link del INDEX`."""
    return Msg(RTM_DELLINK, 0, _IFI.pack(0, 0, index, 0, 0))


class RtnlLinks:
    """Link requests on one `RtnlSocket` (the namespace it was opened in)."""

    def __init__(self, sock: RtnlSocket) -> None:
        self.sock = sock

    def call(self, msg: Msg) -> None:
        """Send one request and wait for its ACK; `RtnlError` if the kernel refused it."""
        (code,) = self.sock.batch([msg])
        if code:
            raise RtnlError(code, f"{_NAMES.get(msg.mtype, msg.mtype)}: {os.strerror(code)}")

    def index(self, name: str) -> int | None:
        """The index of link `name` (one RTM_GETLINK, not a dump); None if there is none."""
        body = _IFI.pack(0, 0, 0, 0, 0) + _name(IFLA_IFNAME, name)
        for mtype, payload in self.request(RTM_GETLINK, 0, body):
            if mtype == RTM_NEWLINK:
                return int(_IFI.unpack_from(payload, 0)[2])
        return None

    def get(self, name: str) -> LinkRecord | None:
        """Link `name` as `rtnl.dump_links` reports links (one RTM_GETLINK); None if there is none."""
        body = _IFI.pack(0, 0, 0, 0, 0) + _name(IFLA_IFNAME, name)
        for mtype, payload in self.request(RTM_GETLINK, 0, body):
            if mtype == RTM_NEWLINK:
                return _parse_link(payload)
        return None

    def addr_index(self, address: str) -> int | None:
        """The index of the first device holding `address` (an RTM_GETADDR dump); None if none."""
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        found = None
        for mtype, payload in self.request(RTM_GETADDR, NLM_F_DUMP, _IFA.pack(family, 0, 0, 0, 0)):
            if mtype != RTM_NEWADDR or found is not None:
                continue
            fam, _plen, _flags, _scope, index = _IFA.unpack_from(payload, 0)
            a = _attrs(payload, _IFA.size)
            if fam == family and ip.packed in (a.get(IFA_ADDRESS), a.get(IFA_LOCAL)):
                found = index
        return found

    def request(self, mtype: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """The replies to one request (until NLMSG_DONE for a dump, else the first reply);
        ENODEV/ENOENT end it with no reply, any other error raises `RtnlError`."""
        s = self.sock
        out: list[tuple[int, bytes]] = []
        with s._lock:
            s._seq += 1
            seq = s._seq
            s._sock.sendto(_HDR.pack(_HDR.size + len(body), mtype, NLM_F_REQUEST | flags, seq, 0) + body, (0, 0))
            while True:
                for rtype, rseq, payload in s._recv():
                    if rseq != seq:
                        continue
                    if rtype == NLMSG_DONE:
                        return out
                    if rtype == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", payload, 0)
                        if -code in (errno.ENODEV, errno.ENOENT):     # nothing by that name
                            return out
                        if code:
                            raise RtnlError(-code, f"{_NAMES.get(mtype, mtype)}: {os.strerror(-code)}")
                        return out
                    out.append((rtype, payload))
                    if not flags & NLM_F_DUMP:
                        return out


_NAMES = {RTM_NEWLINK: "RTM_NEWLINK", RTM_DELLINK: "RTM_DELLINK", RTM_GETLINK: "RTM_GETLINK", RTM_GETADDR: "RTM_GETADDR"}
