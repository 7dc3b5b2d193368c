"""Pure DHCP compute (compute/dhcp.py): view -> responders, leases, L2 part, steering; and the
responder's answers to real request frames. No kernel, no mocks."""

from __future__ import annotations

import dataclasses
import random

from vxnet.compute import dhcp_packet as pkt
from vxnet.compute import naming
from vxnet.compute.dhcp import (
    Lease,
    answer,
    compute_dhcp,
    device_name,
    nft_script,
    responder_mac,
    service_port,
)
from vxnet.compute.state import Fdb, Neigh, Plug

NET = "aaaaaaaa-0000-4000-8000-000000000001"
NET2 = "bbbbbbbb-0000-4000-8000-000000000002"
SUB = "5aaaaaaa-0000-4000-8000-000000000001"
SUB2 = "5aaaaaaa-0000-4000-8000-000000000002"
LEASE_TIME = 600


def net(nid: str = NET, mtu: int = 1450, vni: int = 1001) -> dict:
    return {"id": nid, "provider:network_type": "vxlan", "provider:segmentation_id": vni, "mtu": mtu}


def subnet(sid: str = SUB, nid: str = NET, cidr: str = "192.0.2.0/24", gateway: str | None = "192.0.2.1",
           **kw: object) -> dict:
    return {"id": sid, "network_id": nid, "ip_version": 4, "cidr": cidr, "gateway_ip": gateway,
            "enable_dhcp": True, "dns_nameservers": [], "host_routes": [], **kw}


def port(pid: str, ip: str, host: str = "h1", mac: str | None = None, sid: str = SUB, nid: str = NET,
         **kw: object) -> dict:
    return {"id": pid, "network_id": nid, "binding:host_id": host, "admin_state_up": True,
            "mac_address": mac or "02:00:00:00:01:" + ip.rsplit(".", 1)[1][-2:].zfill(2),
            "device_owner": "compute:nova", "fixed_ips": [{"subnet_id": sid, "ip_address": ip}], **kw}


def view(ports: list[dict], subnets: list[dict] | None = None, nets: list[dict] | None = None) -> dict:
    subnets = [subnet()] if subnets is None else subnets
    nets = [net()] if nets is None else nets
    return {"networks": {n["id"]: n for n in nets}, "subnets": {s["id"]: s for s in subnets},
            "ports": {p["id"]: p for p in ports}, "hosts": {}}


P1 = port("p1000000-0000-4000-8000-000000000001", "192.0.2.11")
P2 = port("p2000000-0000-4000-8000-000000000002", "192.0.2.12", host="h2")
P3 = port("p3000000-0000-4000-8000-000000000003", "192.0.2.13")
ROUTER_IF = port("r1000000-0000-4000-8000-000000000001", "192.0.2.1", host="", mac="02:00:00:00:ff:01",
                 device_owner="network:router_interface_distributed", device_id="router-1")


def only(v: dict, host: str = "h1"):
    st = compute_dhcp(v, host, LEASE_TIME)
    assert len(st.responders) == 1, st
    return st, st.responders[0]


def test_local_port_gets_its_lease_with_every_option() -> None:
    s = subnet(dns_nameservers=["203.0.113.53", "203.0.113.54"],
               host_routes=[{"destination": "100.64.0.0/10", "nexthop": "192.0.2.254"}])
    _, r = only(view([P1, P2], [s], [net(mtu=1400)]))
    assert [lease.mac for lease in r.leases] == [P1["mac_address"]]
    lease = r.leases[0]
    assert lease == Lease(P1["mac_address"], P1["id"], "192.0.2.11", 24, "192.0.2.1", LEASE_TIME, 1400,
                          "host-192-0-2-11", "192.0.2.1", ("203.0.113.53", "203.0.113.54"),
                          (("100.64.0.0/10", "192.0.2.254"), ("169.254.169.254/32", "192.0.2.1"),
                           ("0.0.0.0/0", "192.0.2.1")))
    assert lease.netmask == "255.255.255.0" and lease.broadcast == "192.0.2.255"
    assert r.taps == (naming.tap_name(P1["id"]),)
    assert (r.port, r.device, r.bridge, r.mtu) == (service_port(NET), device_name(NET), naming.bridge_name(NET), 1400)
    assert all(len(n) <= 15 for n in (r.port, r.device))


def test_no_routes_option_without_extra_routes_and_dns_name_wins() -> None:
    p = dict(P1, dns_name="web-1")
    _, r = only(view([p, ROUTER_IF]))      # routed: no metadata route either
    assert r.leases[0].routes == () and r.leases[0].router == "192.0.2.1" and r.leases[0].hostname == "web-1"


def test_default_host_route_replaces_the_gateway_and_other_subnets_are_on_link() -> None:
    s1 = subnet(host_routes=[{"destination": "0.0.0.0/0", "nexthop": "192.0.2.254"}])
    s2 = subnet(SUB2, cidr="198.51.100.0/24", gateway="198.51.100.1")
    _, r = only(view([P1], [s1, s2]))
    lease = r.leases[0]
    assert lease.router == "192.0.2.254"
    assert lease.routes == (("198.51.100.0/24", "0.0.0.0"), ("169.254.169.254/32", "192.0.2.1"),
                            ("0.0.0.0/0", "192.0.2.254"))


def test_metadata_route_only_where_no_router_interface_is_on_the_subnet() -> None:
    """Neutron's isolated metadata: 169.254.169.254/32 via the DHCP server address."""
    _, r = only(view([P1]))                                    # isolated, gateway set: via the gateway IP
    assert r.leases[0].routes == (("169.254.169.254/32", "192.0.2.1"), ("0.0.0.0/0", "192.0.2.1"))
    _, r = only(view([P1], [subnet(gateway=None)]))            # no gateway: via the server id, no default
    assert r.leases[0].routes == (("169.254.169.254/32", "192.0.2.254"),) and r.leases[0].router is None
    _, r = only(view([P1, ROUTER_IF]))                         # a router on the subnet: none
    assert r.leases[0].routes == ()
    other = dict(ROUTER_IF, fixed_ips=[{"subnet_id": SUB2, "ip_address": "198.51.100.1"}])
    s2 = subnet(SUB2, cidr="198.51.100.0/24", gateway="198.51.100.1")
    _, r = only(view([P1, other], [subnet(), s2]))            # a router on another subnet only
    assert ("169.254.169.254/32", "192.0.2.1") in r.leases[0].routes


def test_who_gets_nothing() -> None:
    assert compute_dhcp(view([P2]), "h1", LEASE_TIME).responders == ()                      # other host
    assert compute_dhcp(view([dict(P1, admin_state_up=False)]), "h1", LEASE_TIME).responders == ()
    assert compute_dhcp(view([P1], [subnet(enable_dhcp=False)]), "h1", LEASE_TIME).responders == ()
    assert compute_dhcp(view([dict(P1, device_owner="network:router_interface")]), "h1", LEASE_TIME).responders == ()
    assert compute_dhcp(view([P1], []), "h1", LEASE_TIME).responders == ()                  # subnet not in view
    flat = dict(net(), **{"provider:network_type": "flat", "provider:segmentation_id": None})
    assert compute_dhcp(view([P1], nets=[flat]), "h1", LEASE_TIME).responders == ()
    st = compute_dhcp(view([]), "h1", LEASE_TIME)
    assert st.responders == () and st.l2.plugs == frozenset()


def test_port_with_ips_on_dhcp_and_non_dhcp_subnets_gets_the_dhcp_one() -> None:
    s1 = subnet(enable_dhcp=False)
    s2 = subnet(SUB2, cidr="198.51.100.0/24", gateway="198.51.100.1")
    p = dict(P1, fixed_ips=[{"subnet_id": SUB, "ip_address": "192.0.2.11"},
                            {"subnet_id": SUB2, "ip_address": "198.51.100.11"}])
    _, r = only(view([p], [s1, s2]))
    assert (r.leases[0].ip, r.leases[0].server_id) == ("198.51.100.11", "198.51.100.1")


def test_l2_part_plugs_service_port_pins_its_mac_and_the_server_id() -> None:
    st, r = only(view([P1, P2, P3]))
    mac = responder_mac(NET)
    assert st.l2.plugs == {Plug(service_port(NET), naming.bridge_name(NET), 1450)}
    assert st.l2.fdb == {Fdb(service_port(NET), mac)}
    assert st.l2.neighs == {Neigh(naming.bridge_name(NET), "192.0.2.1", mac)}
    assert r.arp_ips == ("192.0.2.1",)
    assert r.taps == tuple(sorted([naming.tap_name(P1["id"]), naming.tap_name(P3["id"])]))


def test_gateway_held_by_a_router_port_is_not_claimed() -> None:
    rif = port("r0000000-0000-4000-8000-000000000001", "192.0.2.1", host="", mac="fa:16:3e:00:00:01",
               device_owner="network:router_interface", device_id="router-1")
    st, r = only(view([P1, rif]))
    assert r.leases[0].server_id == "192.0.2.1"
    assert r.arp_ips == () and st.l2.neighs == frozenset()
    assert st.l2.plugs and st.l2.fdb                         # still plugged, frames steered to it


def test_server_id_without_gateway_is_the_highest_free_address() -> None:
    s = subnet(gateway=None)
    _, r = only(view([P1], [s]))
    assert r.leases[0].server_id == "192.0.2.254" and r.leases[0].router is None
    other = port("p9000000-0000-4000-8000-000000000009", "192.0.2.254", host="h3")
    _, r = only(view([P1, other], [s]))
    assert r.leases[0].server_id == "192.0.2.253" and r.arp_ips == ("192.0.2.253",)


def test_mac_and_names_are_the_same_on_every_host_and_distinct_per_network() -> None:
    a = compute_dhcp(view([P1]), "h1", LEASE_TIME).responders[0]
    b = compute_dhcp(view([dict(P1, **{"binding:host_id": "h2"})]), "h2", LEASE_TIME).responders[0]
    assert (a.mac, a.port, a.device) == (b.mac, b.port, b.device)
    mac = bytes.fromhex(a.mac.replace(":", ""))
    assert mac[0] & 0x02 and not mac[0] & 0x01                # locally administered unicast
    assert responder_mac(NET) != responder_mac(NET2)
    assert a.mac not in {naming.bridge_mac(NET, h) for h in ("h1", "h2")}


def test_same_result_whatever_the_dict_order_and_a_reverted_change_gives_the_start() -> None:
    ports = [P1, P2, P3, port("p4000000-0000-4000-8000-000000000004", "192.0.2.14", nid=NET2, sid=SUB2)]
    subs = [subnet(), subnet(SUB2, nid=NET2, cidr="198.51.100.0/24", gateway=None)]
    nets = [net(), net(NET2, vni=1002)]
    ref = compute_dhcp(view(ports, subs, nets), "h1", LEASE_TIME)
    rng = random.Random(7)
    for _ in range(10):
        rng.shuffle(ports)
        rng.shuffle(subs)
        rng.shuffle(nets)
        assert compute_dhcp(view(ports, subs, nets), "h1", LEASE_TIME) == ref
    moved = [dict(p, fixed_ips=[{"subnet_id": SUB, "ip_address": "192.0.2.99"}]) if p["id"] == P1["id"] else p
             for p in ports]
    changed = compute_dhcp(view(moved, subs, nets), "h1", LEASE_TIME)
    assert changed != ref
    assert {lease.ip for r in changed.responders for lease in r.leases} >= {"192.0.2.99"}
    assert compute_dhcp(view(ports, subs, nets), "h1", LEASE_TIME) == ref


def test_duplicate_mac_leases_the_lowest_port_id_only() -> None:
    twin = port("p0000000-0000-4000-8000-000000000000", "192.0.2.50", mac=P1["mac_address"])
    _, r = only(view([P1, twin]))
    assert [(lease.port_id, lease.ip) for lease in r.leases] == [(twin["id"], "192.0.2.50")]


def test_nft_script_maps_each_leased_tap_to_its_responder() -> None:
    st = compute_dhcp(view([P1, P3]), "h1", LEASE_TIME)
    text = nft_script(st.responders)
    assert text.startswith("table bridge vxnet_dhcp\ndelete table bridge vxnet_dhcp\n")
    for tap in (naming.tap_name(P1["id"]), naming.tap_name(P3["id"])):
        assert f'"{tap}" : {responder_mac(NET)}' in text
    assert "udp sport 68 udp dport 67 ether daddr set iifname map @steer" in text
    assert nft_script(()) == "table bridge vxnet_dhcp\ndelete table bridge vxnet_dhcp\n"


# ---------------------------------------------------------------------------------- answers
def _leases(**kw: object) -> tuple[str, dict[str, Lease]]:
    s = subnet(dns_nameservers=["203.0.113.53"], host_routes=[{"destination": "100.64.0.0/10",
                                                                "nexthop": "192.0.2.254"}], **kw)
    _, r = only(view([P1], [s]))
    return r.mac, r.lease_table()


def _reply(frame: bytes) -> tuple[pkt.UdpFrame, pkt.Bootp]:
    u = pkt.decode_udp(frame)
    assert u is not None and (u.sport, u.dport) == (67, 68)
    m = pkt.decode_bootp(u.payload)
    assert m is not None and m.op == pkt.BOOTREPLY
    return u, m


def _req(msg_type: int, mac: str = P1["mac_address"], **kw: object) -> pkt.DhcpFrame:
    d = pkt.decode_frame(pkt.dhcp_request_frame(mac, msg_type, 0xABCD, **kw))
    assert isinstance(d, pkt.DhcpFrame)
    return d


def test_discover_gets_an_offer_unicast_to_the_client_with_all_options() -> None:
    rmac, leases = _leases()
    a = answer(_req(pkt.DISCOVER), rmac, leases)
    assert a.kind == "offers"
    u, m = _reply(a.frame)
    assert (u.src_mac, u.dst_mac, u.src_ip, u.dst_ip) == (rmac, P1["mac_address"], "192.0.2.1", "192.0.2.11")
    assert (m.xid, m.yiaddr, m.chaddr, m.msg_type) == (0xABCD, "192.0.2.11", P1["mac_address"], pkt.OFFER)
    o = dict(m.options)
    assert o[pkt.OPT_SERVER_ID] == pkt.ip_bytes("192.0.2.1")
    assert o[pkt.OPT_SUBNET_MASK] == pkt.ip_bytes("255.255.255.0")
    assert o[pkt.OPT_ROUTER] == pkt.ip_bytes("192.0.2.1")
    assert o[pkt.OPT_DNS] == pkt.ip_bytes("203.0.113.53")
    assert o[pkt.OPT_MTU] == pkt.opt_u16(1450)
    assert o[pkt.OPT_HOSTNAME] == b"host-192-0-2-11"
    assert o[pkt.OPT_LEASE_TIME] == pkt.opt_u32(LEASE_TIME)
    assert (o[pkt.OPT_T1], o[pkt.OPT_T2]) == (pkt.opt_u32(300), pkt.opt_u32(525))
    assert pkt.parse_classless_routes(o[pkt.OPT_CLASSLESS_ROUTES]) == [("100.64.0.0/10", "192.0.2.254"),
                                                                        ("169.254.169.254/32", "192.0.2.1"),
                                                                        ("0.0.0.0/0", "192.0.2.1")]


def test_broadcast_flag_sends_to_the_broadcast_ip_but_only_to_the_client_mac() -> None:
    rmac, leases = _leases()
    u, _ = _reply(answer(_req(pkt.DISCOVER, flags=pkt.FLAG_BROADCAST), rmac, leases).frame)
    assert (u.dst_ip, u.dst_mac) == ("255.255.255.255", P1["mac_address"])


def test_request_states() -> None:
    rmac, leases = _leases()
    sid, ip = pkt.ip_bytes("192.0.2.1"), pkt.ip_bytes("192.0.2.11")
    # SELECTING: our server id + the offered IP -> ACK; another server's id -> silence.
    a = answer(_req(pkt.REQUEST, options={pkt.OPT_SERVER_ID: sid, pkt.OPT_REQUESTED_IP: ip}), rmac, leases)
    assert a.kind == "acks" and _reply(a.frame)[1].yiaddr == "192.0.2.11"
    a = answer(_req(pkt.REQUEST, options={pkt.OPT_SERVER_ID: pkt.ip_bytes("192.0.2.2"), pkt.OPT_REQUESTED_IP: ip}),
               rmac, leases)
    assert (a.kind, a.frame) == ("ignored", None)
    # INIT-REBOOT with a stale address -> NAK, broadcast IP, client MAC.
    a = answer(_req(pkt.REQUEST, options={pkt.OPT_REQUESTED_IP: pkt.ip_bytes("192.0.2.77")}), rmac, leases)
    assert a.kind == "naks"
    u, m = _reply(a.frame)
    assert (u.dst_ip, u.dst_mac, m.msg_type, m.yiaddr, m.ciaddr) == (
        "255.255.255.255", P1["mac_address"], pkt.NAK, "0.0.0.0", "0.0.0.0")
    assert pkt.OPT_LEASE_TIME not in dict(m.options)
    # RENEWING (unicast, ciaddr) -> ACK unicast to ciaddr.
    a = answer(_req(pkt.REQUEST, ciaddr="192.0.2.11", src_ip="192.0.2.11", dst_ip="192.0.2.1",
                    dst_mac=rmac), rmac, leases)
    u, m = _reply(a.frame)
    assert a.kind == "acks" and (u.dst_ip, u.dst_mac, m.ciaddr, m.yiaddr) == (
        "192.0.2.11", P1["mac_address"], "192.0.2.11", "192.0.2.11")
    # RENEWING an address the port no longer has (its IP changed) -> NAK.
    a = answer(_req(pkt.REQUEST, ciaddr="192.0.2.10", src_ip="192.0.2.10", dst_ip="192.0.2.1"), rmac, leases)
    assert a.kind == "naks" and _reply(a.frame)[0].dst_ip == "255.255.255.255"
    # A REQUEST with no address at all is not answerable.
    assert answer(_req(pkt.REQUEST), rmac, leases).kind == "ignored"


def test_inform_release_decline() -> None:
    rmac, leases = _leases()
    a = answer(_req(pkt.INFORM, ciaddr="192.0.2.11", src_ip="192.0.2.11"), rmac, leases)
    u, m = _reply(a.frame)
    assert a.kind == "acks" and u.dst_ip == "192.0.2.11" and m.yiaddr == "0.0.0.0"
    assert pkt.OPT_LEASE_TIME not in dict(m.options) and dict(m.options)[pkt.OPT_ROUTER]
    released = answer(_req(pkt.RELEASE, ciaddr="192.0.2.11", src_ip="192.0.2.11"), rmac, leases)
    assert (released.kind, released.frame) == ("releases", None)
    assert answer(_req(pkt.DECLINE), rmac, leases).kind == "declines"


def test_unknown_relayed_and_spoofed_requests_get_silence() -> None:
    rmac, leases = _leases()
    assert answer(_req(pkt.DISCOVER, mac="02:00:00:00:09:99"), rmac, leases).frame is None
    relayed = _req(pkt.DISCOVER)
    relayed = dataclasses.replace(relayed, msg=dataclasses.replace(relayed.msg, giaddr="203.0.113.1"))
    assert answer(relayed, rmac, leases).kind == "ignored"
    spoofed = dataclasses.replace(_req(pkt.DISCOVER), src_mac="02:00:00:00:09:99")
    assert answer(spoofed, rmac, leases).kind == "ignored"


def test_steering_changes_are_map_elements_once_the_table_is_known() -> None:
    """Unknown state: the whole table; then a port-up or port-down is one element; the table
    goes with its last element and comes back whole."""
    from vxnet.compute.dhcp import steer_elements, steer_script

    one = steer_elements(compute_dhcp(view([P1]), "h1", LEASE_TIME).responders)
    two = steer_elements(compute_dhcp(view([P1, P3]), "h1", LEASE_TIME).responders)
    assert steer_script(None, two) == nft_script(compute_dhcp(view([P1, P3]), "h1", LEASE_TIME).responders)
    add = steer_script(one, two)
    # as the map's declaration with the element: libnftables needs no cache of the ruleset
    assert add.startswith("add map bridge vxnet_dhcp steer { type ifname : ether_addr; elements = {")
    assert add.count("\n") == 1
    assert len(two - one) == 1 and next(iter(two - one)) in add
    gone = steer_script(two, one)
    tap = next(iter(two - one)).split(" : ")[0]
    assert gone == f"delete element bridge vxnet_dhcp steer {{ {tap} }}\n"
    assert steer_script(two, two) == "" and steer_script(frozenset(), frozenset()) == ""
    assert steer_script(one, frozenset()) == nft_script(())          # the table goes
    assert steer_script(frozenset(), one).startswith(nft_script(()))  # and comes back whole
