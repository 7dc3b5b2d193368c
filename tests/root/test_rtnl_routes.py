"""dataplane/netns.py and the requests of dataplane/rtnl_routes.py (plus veth pairs and
neighbours) against the real kernel: a namespace made and removed without pyroute2 is one
`ip netns` sees; a veth pair created across two namespaces, addresses, routes and permanent
neighbours are applied and read back both with iproute2 (`ip -json`) and with our own dumps;
the kernel's refusals come back as `RtnlError` with its errno."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.root.conftest import needs_root
from tests.root.helpers import nsexec
from vxnet.compute import naming
from vxnet.dataplane import netns
from vxnet.dataplane.rtnl import NUD_PERMANENT, NeighRequest, RtnlSocket
from vxnet.dataplane.rtnl_links import RtnlError, RtnlLinks, new_veth, set_link
from vxnet.dataplane.rtnl_routes import RT_SCOPE_LINK, AddrRecord, addrs, new_addr, route, routes

pytestmark = [pytest.mark.root, needs_root]

HOST, INNER = "vxl-rtnl-rt-host", "vxl-rtnl-rt-inner"
PROTO = 99
ROUTE_PROTO_META = naming.ROUTER_ROUTE_PROTO     # the metadata namespace's routes


def _names() -> list[str]:
    out = subprocess.run(["ip", "-json", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [n["name"] for n in json.loads(out or "[]")]


@pytest.fixture
def two() -> Iterator[tuple[RtnlLinks, RtnlLinks]]:
    for ns in (HOST, INNER):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    socks: list[RtnlSocket] = []
    try:
        netns.create(HOST)
        netns.create(INNER)
        socks = [RtnlSocket(HOST), RtnlSocket(INNER)]
        yield RtnlLinks(socks[0]), RtnlLinks(socks[1])
    finally:
        for s in socks:
            s.close()
        for ns in (HOST, INNER):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def test_create_moves_no_thread_of_the_caller() -> None:
    before = os.stat("/proc/thread-self/ns/net").st_ino
    subprocess.run(["ip", "netns", "del", INNER], capture_output=True, check=False)
    try:
        netns.create(INNER)
        assert os.stat("/proc/thread-self/ns/net").st_ino == before
        assert os.stat(f"/run/netns/{INNER}").st_ino != before
    finally:
        subprocess.run(["ip", "netns", "del", INNER], capture_output=True, check=False)


def test_namespace_create_is_seen_by_ip_and_remove_removes_it(two: tuple[RtnlLinks, RtnlLinks]) -> None:
    assert {HOST, INNER} <= set(_names())
    assert os.path.ismount(f"/run/netns/{HOST}")
    # A fresh namespace holding only lo, and not the caller's.
    assert [ln["ifname"] for ln in json.loads(nsexec(HOST, "ip", "-json", "link").stdout)] == ["lo"]
    assert os.stat(f"/run/netns/{HOST}").st_ino != os.stat("/proc/thread-self/ns/net").st_ino
    with pytest.raises(FileExistsError):
        netns.create(HOST)
    assert netns.in_netns(HOST, lambda: socket.if_nameindex()) == [(1, "lo")]
    assert netns.list_netns(lambda n: n.startswith("vxl-rtnl-rt-")) == sorted([HOST, INNER])
    netns.remove(INNER)
    assert INNER not in _names() and not os.path.exists(f"/run/netns/{INNER}")
    with pytest.raises(FileNotFoundError):
        netns.remove(INNER)


def test_veth_across_namespaces_addresses_routes_neighbours(two: tuple[RtnlLinks, RtnlLinks]) -> None:
    host, inner = two
    fd = os.open(f"/run/netns/{INNER}", os.O_RDONLY)
    try:
        host.call(new_veth("vxl-a", "vxl-b", 1400, peer_mac="02:00:5e:00:00:0b", peer_netns_fd=fd))
        with pytest.raises(RtnlError) as e:
            host.call(new_veth("vxl-a", "vxl-b", 1400, peer_mac="02:00:5e:00:00:0b", peer_netns_fd=fd))
        assert e.value.code == errno.EEXIST
    finally:
        os.close(fd)
    assert host.index("vxl-b") is None and inner.index("vxl-a") is None
    a = json.loads(nsexec(HOST, "ip", "-d", "-json", "link", "show", "vxl-a").stdout)[0]
    assert (a["mtu"], a["linkinfo"]["info_kind"]) == (1400, "veth")
    b = inner.get("vxl-b")
    assert b is not None and (b.address, b.mtu, b.kind) == ("02:00:5e:00:00:0b", 1400, "veth")

    inner.call(set_link(b.index, up=True, noarp=True))
    flags = json.loads(nsexec(INNER, "ip", "-json", "link", "show", "vxl-b").stdout)[0]["flags"]
    assert "NOARP" in flags and "UP" in flags
    inner.call(set_link(b.index, noarp=False))
    flags = json.loads(nsexec(INNER, "ip", "-json", "link", "show", "vxl-b").stdout)[0]["flags"]
    assert "NOARP" not in flags and "UP" in flags

    inner.call(new_addr(b.index, "169.254.169.254", 32))
    inner.call(new_addr(b.index, "2001:db8::5", 64))
    with pytest.raises(RtnlError) as e:
        inner.call(new_addr(b.index, "169.254.169.254", 32))
    assert e.value.code == errno.EEXIST
    assert addrs(inner, socket.AF_INET, b.index) == [AddrRecord(b.index, "169.254.169.254", 32)]
    assert AddrRecord(b.index, "2001:db8::5", 64) in addrs(inner, socket.AF_INET6)
    shown = json.loads(nsexec(INNER, "ip", "-4", "-json", "addr", "show", "vxl-b").stdout)[0]["addr_info"]
    assert [(x["local"], x["prefixlen"]) for x in shown] == [("169.254.169.254", 32)]

    inner.call(route("replace", "100.64.0.5", 32, b.index, PROTO, RT_SCOPE_LINK))
    inner.call(route("replace", "100.64.0.5", 32, b.index, PROTO, RT_SCOPE_LINK))     # replace: no EEXIST
    inner.call(route("replace", "198.51.100.0", 24, b.index, PROTO, table=1000))
    r = json.loads(nsexec(INNER, "ip", "-json", "route", "show", "proto", str(PROTO)).stdout)
    assert [(x["dst"], x["dev"], x["scope"]) for x in r] == [("100.64.0.5", "vxl-b", "link")]
    mine = [x for x in routes(inner, socket.AF_INET) if x.proto == PROTO]
    assert [(x.dst, x.dst_len, x.oif, x.scope) for x in mine] == [("100.64.0.5", 32, b.index, RT_SCOPE_LINK)]
    assert [(x.dst, x.dst_len, x.table) for x in routes(inner, socket.AF_INET, 1000)] == [("198.51.100.0", 24, 1000)]

    (code,) = inner.sock.batch([NeighRequest("replace", socket.AF_INET, b.index, NUD_PERMANENT, 0,
                                             "02:00:5e:00:00:99", "100.64.0.5")])
    assert code == 0
    n = json.loads(nsexec(INNER, "ip", "-json", "neigh", "show", "dev", "vxl-b").stdout)
    assert [(x["dst"], x["lladdr"], x["state"]) for x in n] == [("100.64.0.5", "02:00:5e:00:00:99", ["PERMANENT"])]

    inner.call(route("del", "100.64.0.5", 32, b.index, PROTO))
    with pytest.raises(RtnlError) as e:
        inner.call(route("del", "100.64.0.5", 32, b.index, PROTO))
    assert e.value.code == errno.ESRCH
    (code,) = inner.sock.batch([NeighRequest("del", socket.AF_INET, b.index, NUD_PERMANENT, 0, None, "100.64.0.5")])
    assert code == 0
    assert [x for x in routes(inner, socket.AF_INET) if x.proto == PROTO] == []
    assert json.loads(nsexec(INNER, "ip", "-json", "neigh", "show", "dev", "vxl-b").stdout or "[]") == []


def test_metadata_links_remove_a_ports_route_and_neighbour(two: tuple[RtnlLinks, RtnlLinks]) -> None:
    """MetadataLinks (dataplane/metadata_driver.py) on raw netlink: a port that leaves loses its
    scope-link route and neighbour, both on the port-only path and on a full read-back (a route
    delete sent with scope 0, as pyroute2 did, matched no scope-link route: ESRCH, swallowed)."""
    from vxnet.compute.metadata import MetadataState, MetaNetwork, MetaPort, device_name, metadata_mac, service_port
    from vxnet.dataplane.metadata_driver import MetadataLinks

    net_id = "0123456789ab-net"
    meta_ns = "vxl-rtnl-rt-meta"
    net = MetaNetwork(net_id, service_port(net_id), device_name(net_id), metadata_mac(net_id), "vxb-x", 1400)
    ports = [MetaPort(f"p{i}", net_id, f"tap{i}", f"02:00:5e:00:01:0{i}", f"192.0.2.{10 + i}", f"100.64.0.{10 + i}")
             for i in (1, 2)]
    links = MetadataLinks(HOST)
    try:
        both = MetadataState(meta_ns, (net,), tuple(ports))
        links.converge(both)

        def kernel() -> tuple[set[str], set[str]]:
            r = json.loads(nsexec(meta_ns, "ip", "-json", "route", "show", "proto", str(ROUTE_PROTO_META)).stdout)
            n = json.loads(nsexec(meta_ns, "ip", "-json", "neigh", "show", "nud", "permanent").stdout or "[]")
            return {x["dst"] for x in r}, {x["dst"] for x in n}

        assert kernel() == ({"100.64.0.11", "100.64.0.12"}, {"100.64.0.11", "100.64.0.12"})
        assert links.host.index(net.port) is not None
        one = MetadataState(meta_ns, (net,), (ports[0],))
        assert links.converge(one) == {"route_deleted": 1}          # the port-only path
        assert kernel() == ({"100.64.0.11"}, {"100.64.0.11"})
        links.converge(both)
        links.drop_sockets()                                         # next converge reads the kernel
        changes = links.converge(one)
        assert changes.get("route_deleted") == 1 and changes.get("neigh_deleted") == 1, changes
        assert kernel() == ({"100.64.0.11"}, {"100.64.0.11"})
        assert links.remove(meta_ns)
        assert meta_ns not in _names() and links.host.index(net.port) is None
    finally:
        links.close()
        subprocess.run(["ip", "netns", "del", meta_ns], capture_output=True, check=False)
