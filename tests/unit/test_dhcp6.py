"""IPv6 responder logic without a kernel: RA/ND and DHCPv6 wire formats (compute/nd_packet.py,
compute/dhcp6_packet.py), the per-network IPv6 service (compute/dhcp6.py) and the answers.

Frames built here are checked against an independent decoder where one exists (the
checksums are recomputed by `decode_frame6`, which rejects a wrong one)."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from vxnet.compute import dhcp, naming
from vxnet.compute import dhcp6 as c6
from vxnet.compute import dhcp6_packet as d6
from vxnet.compute import nd_packet as nd
from vxnet.model import parse_view

NET = "aaaaaaaa-0000-4000-8000-000000000001"
S4, S6 = "s4000000-0000-4000-8000-000000000004", "s6000000-0000-4000-8000-000000000006"
R = "r0000000-0000-4000-8000-00000000000r"
VM_MAC, ROUTER_MAC = "fa:16:3e:00:00:11", "fa:16:3e:00:00:01"
RMAC = dhcp.responder_mac(NET)


# ---------------------------------------------------------------------------------- addresses
def test_eui64_addresses_match_the_rfc_example_and_python() -> None:
    # RFC 4291 appendix A: 00:1b:21:... -> 021b:21ff:fe..; U/L bit flipped
    assert nd.eui64_interface_id("00:1b:21:3a:4c:5d") == bytes.fromhex("021b21fffe3a4c5d")
    assert nd.link_local("02:00:00:00:01:11") == "fe80::ff:fe00:111"
    assert nd.eui64_address("2001:db8:1::/64", VM_MAC) == "2001:db8:1:0:f816:3eff:fe00:11"
    assert nd.solicited_node("2001:db8::1:2345") == "ff02::1:ff01:2345"
    assert nd.multicast_mac("ff02::1:2") == "33:33:00:01:00:02"


# ---------------------------------------------------------------------------------- RA
def test_router_advertisement_round_trips_with_a_valid_checksum() -> None:
    ra = nd.RouterAdvert(managed=True, other=True, router_lifetime=1800,
                         prefixes=(nd.Prefix("2001:db8:1::/64", True, False, 86400, 14400),),
                         mtu=1450, rdnss=("2001:db8::53", "2001:db8::54"), rdnss_lifetime=300,
                         source_lladdr=ROUTER_MAC)
    frame = nd.ra_frame(RMAC, VM_MAC, nd.link_local(ROUTER_MAC), nd.ALL_NODES, ra)
    f = nd.decode_frame6(frame)
    assert f is not None and f.icmp_type == nd.RA and f.hop_limit == 255
    assert (f.src_mac, f.dst_mac, f.src_ip, f.dst_ip) == (RMAC, VM_MAC, "fe80::f816:3eff:fe00:1", "ff02::1")
    assert nd.decode_ra(f.icmp) == ra
    assert nd.checksum_ok(frame)
    bad = bytearray(frame)
    bad[-1] ^= 1                             # one bit of the last option flipped: checksum fails
    assert not nd.checksum_ok(bytes(bad))


def test_rs_validity_follows_rfc4861() -> None:
    def rs(src: str, hop: int = 255, slla: str | None = VM_MAC) -> nd.Ip6Frame:
        f = nd.decode_frame6(nd.icmp6_frame(VM_MAC, "33:33:00:00:00:02", src, nd.ALL_ROUTERS, nd.rs_message(slla), hop))
        assert f is not None
        return f
    assert nd.is_valid_rs(rs("fe80::1"))
    assert rs("fe80::1").option_lladdr(nd.OPT_SLLA) == VM_MAC
    assert not nd.is_valid_rs(rs("fe80::1", hop=64))          # forwarded from elsewhere
    assert not nd.is_valid_rs(rs("::"))                       # unspecified source with SLLA
    assert nd.is_valid_rs(rs("::", slla=None))


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 13, b"\xff" * 60,
                                     bytes(12) + b"\x86\xdd" + bytes(40),            # IPv6 version 0
                                     bytes(12) + b"\x86\xdd" + b"\x60" + bytes(3) + b"\xff\xff" + bytes(34)])
def test_decode_never_raises_on_garbage(garbage: bytes) -> None:
    assert nd.decode_frame6(garbage) is None
    d6.decode_message(garbage)


def test_udp6_checksums_built_right_and_partial_ones_still_decoded() -> None:
    frame = nd.udp6_frame(VM_MAC, RMAC, "fe80::1", nd.ALL_DHCP, 546, 547, b"\x01abc")
    f = nd.decode_frame6(frame)
    assert f is not None and (f.sport, f.dport, f.data) == (546, 547, b"\x01abc")
    assert nd.checksum_ok(frame)
    zero = bytearray(frame)
    zero[14 + 40 + 6: 14 + 40 + 8] = b"\0\0"
    assert not nd.checksum_ok(bytes(zero))
    # what a VM's stack puts on its veth (checksum offloaded: partial) is read all the same
    assert nd.decode_frame6(bytes(zero)) == f


# ---------------------------------------------------------------------------------- DHCPv6 wire
def test_dhcp6_message_and_ia_na_round_trip() -> None:
    ia = d6.IaNa(7, 100, 160, (d6.IaAddress("2001:db8::11", 200, 300),), (d6.status(0, "ok"),))
    m = d6.Dhcp6Message(d6.REPLY, 0xABCDEF, ((d6.OPT_CLIENTID, b"\x00\x03\x00\x01" + bytes(6)),
                                             (d6.OPT_IA_NA, d6.encode_ia_na(ia))))
    got = d6.decode_message(d6.encode_message(m))
    assert got == m and got.xid == 0xABCDEF
    assert d6.decode_ia_na(got.opt(d6.OPT_IA_NA)) == ia
    assert d6.decode_message(bytes((d6.RELAY_FORW, 0, 0, 0))) is None
    assert d6.decode_message(b"\x01\x00\x00\x01\x00\x01\x00\x09ab") == d6.Dhcp6Message(1, 1, ())  # truncated option
    assert d6.duid_ll(RMAC)[:4] == b"\x00\x03\x00\x01"


# ---------------------------------------------------------------------------------- service
def _view(mode: str | None, address_mode: str | None = None, router: bool = True, dns: tuple[str, ...] = ("2001:db8::53",),
          vm_host: str = "h1", enable_dhcp: bool = True) -> object:
    v6_ip = nd.eui64_address("2001:db8:1::/64", VM_MAC) if (address_mode or mode) != c6.STATEFUL else "2001:db8:1::11"
    ports = {
        "p1": {"id": "p1", "network_id": NET, "mac_address": VM_MAC, "binding:host_id": vm_host,
               "device_owner": "compute:nova",
               "fixed_ips": [{"subnet_id": S4, "ip_address": "192.0.2.11"}, {"subnet_id": S6, "ip_address": v6_ip}]},
        "p2": {"id": "p2", "network_id": NET, "mac_address": "fa:16:3e:00:00:12", "binding:host_id": "h2",
               "device_owner": "compute:nova", "fixed_ips": [{"subnet_id": S6, "ip_address": "2001:db8:1::12"}]},
    }
    if router:
        ports["pr"] = {"id": "pr", "network_id": NET, "mac_address": ROUTER_MAC, "device_owner": "network:router_interface",
                       "device_id": R, "fixed_ips": [{"subnet_id": S6, "ip_address": "2001:db8:1::1"}]}
    return parse_view({
        "hosts": {"h1": {"underlay_ip": "198.51.100.1"}, "h2": {"underlay_ip": "198.51.100.2"}},
        "networks": {NET: {"id": NET, "provider:network_type": "vxlan", "provider:segmentation_id": 1001, "mtu": 1450}},
        "subnets": {S4: {"id": S4, "network_id": NET, "cidr": "192.0.2.0/24", "ip_version": 4, "enable_dhcp": False},
                    S6: {"id": S6, "network_id": NET, "cidr": "2001:db8:1::/64", "ip_version": 6, "gateway_ip": "2001:db8:1::1",
                         "enable_dhcp": enable_dhcp, "ipv6_ra_mode": mode, "ipv6_address_mode": address_mode or mode,
                         "dns_nameservers": list(dns)}},
        "ports": ports,
    })


@pytest.mark.parametrize(("mode", "flags", "autonomous"), [
    (c6.SLAAC, (False, False), True), (c6.STATELESS, (False, True), True), (c6.STATEFUL, (True, True), False)])
def test_ra_flags_per_mode(mode: str, flags: tuple[bool, bool], autonomous: bool) -> None:
    st = dhcp.compute_dhcp(_view(mode), "h1", 3600)
    (r,) = st.responders
    assert r.leases == ()                               # the IPv4 subnet has DHCP off: IPv6 alone makes it
    (a,) = r.v6.adverts
    assert (a.ra.managed, a.ra.other) == flags
    assert a.ra.prefixes == (nd.Prefix("2001:db8:1::/64", True, autonomous, c6.PREFIX_VALID, c6.PREFIX_PREFERRED),)
    assert a.ra.mtu == 1450 and a.ra.rdnss == ("2001:db8::53",) and a.ra.source_lladdr == ROUTER_MAC
    assert a.source_ip == nd.link_local(ROUTER_MAC)
    assert r.v6.targets == (VM_MAC,)                    # the local VM only (p2 is on h2)
    assert r.v6.taps == (naming.tap_name("p1"),)
    assert (mode == c6.SLAAC) == (r.v6.leases == ())


def test_no_ra_without_a_router_or_without_ra_mode_and_nothing_on_other_hosts() -> None:
    assert dhcp.compute_dhcp(_view(c6.SLAAC, router=False), "h1", 3600).responders == ()
    assert dhcp.compute_dhcp(_view(None, c6.SLAAC), "h1", 3600).responders == ()    # an outside router advertises
    assert dhcp.compute_dhcp(_view(c6.SLAAC), "h3", 3600).responders == ()          # no local VM
    # address-mode only, stateful: DHCPv6 without RA
    (r,) = dhcp.compute_dhcp(_view(None, c6.STATEFUL, router=False), "h1", 3600).responders
    assert r.v6.adverts == () and r.v6.targets == () and r.v6.leases[0].address == "2001:db8:1::11"
    assert dhcp.compute_dhcp(_view(None, c6.STATEFUL, router=False, enable_dhcp=False), "h1", 3600).responders == ()


def test_steering_has_an_ipv6_map() -> None:
    st = dhcp.compute_dhcp(_view(c6.STATEFUL), "h1", 3600)
    els = dhcp.steer_elements(st.responders)
    assert els == {f'steer6:"{naming.tap_name("p1")}" : {RMAC}'}
    script = dhcp.steer_script(None, els)
    assert "map steer6" in script and f'elements = {{ "{naming.tap_name("p1")}" : {RMAC} }}' in script
    assert "icmpv6 type nd-router-solicit ether daddr set iifname map @steer6" in script
    assert "udp sport 546 udp dport 547 ether daddr set iifname map @steer6" in script
    assert "map steer {\n    type ifname : ether_addr\n  }" in script          # an empty v4 map
    assert dhcp.steer_script(els, els) == ""


# ---------------------------------------------------------------------------------- answers
def _service(mode: str) -> c6.V6Service:
    (r,) = dhcp.compute_dhcp(_view(mode), "h1", 3600).responders
    return r.v6


def _client(msg_type: int, *opts: tuple[int, bytes], src_mac: str = VM_MAC, xid: int = 0x123456) -> nd.Ip6Frame:
    m = d6.Dhcp6Message(msg_type, xid, opts)
    f = nd.decode_frame6(nd.udp6_frame(src_mac, RMAC, nd.link_local(src_mac), nd.ALL_DHCP, 546, 547,
                                       d6.encode_message(m)))
    assert f is not None
    return f


def _reply(ans: c6.Answer6) -> tuple[nd.Ip6Frame, d6.Dhcp6Message]:
    (frame,) = ans.frames
    assert nd.checksum_ok(frame)
    f = nd.decode_frame6(frame)
    assert f is not None and (f.sport, f.dport) == (547, 546)
    m = d6.decode_message(f.data)
    assert m is not None
    return f, m


CID = (d6.OPT_CLIENTID, b"\x00\x03\x00\x01" + bytes.fromhex(VM_MAC.replace(":", "")))


def test_stateful_solicit_request_renew() -> None:
    s = _service(c6.STATEFUL)
    ans = c6.answer_dhcp6(_client(d6.SOLICIT, CID, (d6.OPT_IA_NA, d6.encode_ia_na(d6.IaNa(9)))), RMAC, s)
    f, m = _reply(ans)
    assert ans.kind == "advertises" and m.msg_type == d6.ADVERTISE and m.xid == 0x123456
    assert (f.dst_mac, f.dst_ip, f.src_mac, f.src_ip) == (VM_MAC, nd.link_local(VM_MAC), RMAC, nd.link_local(RMAC))
    assert m.opt(d6.OPT_CLIENTID) == CID[1] and m.opt(d6.OPT_SERVERID) == d6.duid_ll(RMAC)
    ia = d6.decode_ia_na(m.opt(d6.OPT_IA_NA))
    assert ia is not None and ia.iaid == 9 and [a.address for a in ia.addresses] == ["2001:db8:1::11"]
    assert ia.t1 == 1800 and ia.t2 == 2880
    assert d6.decode_dns_servers(m.opt(d6.OPT_DNS_SERVERS)) == ("2001:db8::53",)
    sid = (d6.OPT_SERVERID, d6.duid_ll(RMAC))
    held = d6.encode_ia_na(d6.IaNa(9, 0, 0, (d6.IaAddress("2001:db8:1::99", 1, 2),)))
    for t in (d6.REQUEST, d6.RENEW):
        _, m = _reply(c6.answer_dhcp6(_client(t, CID, sid, (d6.OPT_IA_NA, held)), RMAC, s))
        ia = d6.decode_ia_na(m.opt(d6.OPT_IA_NA))
        assert m.msg_type == d6.REPLY
        # the port's address, and the one the client held (no longer the port's) with zero lifetimes
        assert [(a.address, a.valid) for a in ia.addresses] == [("2001:db8:1::11", 3600), ("2001:db8:1::99", 0)]
    other = (d6.OPT_SERVERID, d6.duid_ll("02:00:00:00:00:99"))
    assert c6.answer_dhcp6(_client(d6.REQUEST, CID, other), RMAC, s).kind == "ignored"
    assert c6.answer_dhcp6(_client(d6.REQUEST, CID), RMAC, s).kind == "ignored"        # no server id
    assert c6.answer_dhcp6(_client(d6.SOLICIT), RMAC, s).kind == "ignored"             # no client id
    assert c6.answer_dhcp6(_client(d6.SOLICIT, CID, src_mac="fa:16:3e:00:00:99"), RMAC, s).kind == "ignored"
    rapid = c6.answer_dhcp6(_client(d6.SOLICIT, CID, (d6.OPT_RAPID_COMMIT, b""),
                                    (d6.OPT_IA_NA, d6.encode_ia_na(d6.IaNa(9)))), RMAC, s)
    assert rapid.kind == "replies" and _reply(rapid)[1].opt(d6.OPT_RAPID_COMMIT) == b""


def test_stateless_information_request_gets_dns_and_solicit_gets_no_address() -> None:
    s = _service(c6.STATELESS)
    ans = c6.answer_dhcp6(_client(d6.INFORMATION_REQUEST, CID, (d6.OPT_ORO, struct.pack("!H", 23))), RMAC, s)
    _, m = _reply(ans)
    assert ans.kind == "informs" and m.msg_type == d6.REPLY
    assert d6.decode_dns_servers(m.opt(d6.OPT_DNS_SERVERS)) == ("2001:db8::53",)
    assert m.opt(d6.OPT_IA_NA) is None
    _, adv = _reply(c6.answer_dhcp6(_client(d6.SOLICIT, CID, (d6.OPT_IA_NA, d6.encode_ia_na(d6.IaNa(1)))), RMAC, s))
    assert d6.decode_status(adv.opt(d6.OPT_STATUS_CODE))[0] == d6.STATUS_NO_ADDRS_AVAIL
    assert d6.decode_ia_na(adv.opt(d6.OPT_IA_NA)).addresses == ()
    # SLAAC: no DHCPv6 at all
    assert c6.answer_dhcp6(_client(d6.INFORMATION_REQUEST, CID), RMAC, _service(c6.SLAAC)).kind == "ignored"


def test_rs_is_answered_with_a_unicast_ra_to_the_soliciting_vm_only() -> None:
    s = _service(c6.SLAAC)
    rs = nd.decode_frame6(nd.icmp6_frame(VM_MAC, "33:33:00:00:00:02", nd.link_local(VM_MAC), nd.ALL_ROUTERS,
                                         nd.rs_message(VM_MAC)))
    ans = c6.answer_rs(rs, RMAC, s)
    (frame,) = ans.frames
    f = nd.decode_frame6(frame)
    assert ans.kind == "ra" and f.dst_mac == VM_MAC and f.dst_ip == "ff02::1"
    assert nd.decode_ra(f.icmp).prefixes[0].prefix == "2001:db8:1::/64"
    stranger = nd.decode_frame6(nd.icmp6_frame("fa:16:3e:00:00:99", "33:33:00:00:00:02", "fe80::99", nd.ALL_ROUTERS,
                                               nd.rs_message()))
    assert c6.answer_rs(stranger, RMAC, s).kind == "ignored"


def test_ipv6_neighbour_entries_include_link_local() -> None:
    from vxnet.compute.l2 import compute_l2
    st = compute_l2(_view(c6.SLAAC), "h1", "198.51.100.1")
    ips = {n.ip: n.mac for n in st.neighs}
    assert ips[nd.eui64_address("2001:db8:1::/64", VM_MAC)] == VM_MAC
    assert ips[nd.link_local(VM_MAC)] == VM_MAC
    assert ips["2001:db8:1::12"] == "fa:16:3e:00:00:12" and ips[nd.link_local("fa:16:3e:00:00:12")] == "fa:16:3e:00:00:12"
    assert all(str(ipaddress.ip_address(ip)) == ip for ip in ips)      # canonical, as the kernel reads back


def test_unsolicited_ra_schedule_bursts_for_new_vms_and_changes_then_settles() -> None:
    from vxnet.dataplane.dhcp_driver import RA_BURST, RA_INTERVAL, Served, _RaSchedule

    (r,) = dhcp.compute_dhcp(_view(c6.SLAAC), "h1", 3600).responders
    table = {r.device: Served(r, 7, {}, frozenset())}
    s = _RaSchedule()
    s.sync(table, 100.0)
    sent = [t for t in (100.0, 100.5, 101.0, 102.9, 103.0, 108.0) if s.due(t)]
    assert sent == [100.0 + b for b in RA_BURST]                 # the burst
    assert s.due(108.0 + RA_INTERVAL[0] - 0.01) == []            # then no earlier than the interval
    assert s.due(108.0 + RA_INTERVAL[1]) == [(r.device, VM_MAC)]
    assert s.due(499.0) == [(r.device, VM_MAC)]                  # (periodic rounds since)
    s.sync(table, 500.0)                                          # same content: no new burst
    assert s.due(500.0) == []
    (r2,) = dhcp.compute_dhcp(_view(c6.STATEFUL), "h1", 3600).responders    # the advertisement changed
    s.sync({r2.device: Served(r2, 7, {}, frozenset())}, 600.0)
    assert s.due(600.0) == [(r2.device, VM_MAC)]
    s.sync({}, 700.0)                                             # the VM went
    assert s.due(10_000.0) == [] and s.timeout(700.0, 1.0) == 1.0
