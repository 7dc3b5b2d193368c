"""IPv6 on the VM's host (docs/ipv6-dataplane.md), on a real 2-host `vxnet lab` with real
clients: the VMs' own kernels (accept_ra=1) and ISC `dhclient -6`.

- SLAAC: a VM's kernel forms its port's EUI-64 address from vxnet's RA (flags, prefix, MTU,
  default router from the RA); ping6 on the same host and across hosts; the underlay carries no
  IPv6 multicast at all (0 ND multicast, 0 RS/RA, 0 MLD) while this happens.
- DHCPv6: `dhclient -6` gets the port's fixed address and the DNS servers (stateful), the DNS
  servers with `-S` (stateless); 0 DHCPv6 frames on the underlay.
- Bridges keep IPv6 on with no address (the ND suppression table); IPv6 turned off on one by
  hand is turned back on and its entries restored.
- Guards: an RA and a DHCPv6 ADVERTISE sent by a VM reach no other VM (same host, other host);
  a spoofed IPv6 source and a forged neighbour advertisement never leave the host; an allowed
  address pair with an IPv6 prefix lets that source (and the VM's NA for it) through; a DAD
  probe for another port's address, an NS/NA/RS whose link-layer option names another MAC
  are dropped while the VM's own ND passes.
- Security groups for IPv6: an ICMPv6 rule allows ping6, a TCP port without a rule is blocked,
  and an egress connection's replies pass by conntrack with no ingress rule.
- Two projects with the same IPv6 prefix (and addresses) are isolated.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.root.conftest import Lab, lab_session, needs_root
from tests.root.helpers import capture, nsexec, wait_for
from tests.root.test_port_security import counters, vm_capture
from vxnet.compute import naming
from vxnet.compute import nd_packet as nd
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

LEASE = 60


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    with lab_session(tmp_path_factory, "v6lab", 2, agent_args=["--dhcp-lease-time", str(LEASE)]) as g:
        yield g


# ---------------------------------------------------------------------------------- helpers
def dual_stack_net(lab: Lab, user: str, name: str, v6cidr: str, mode: str | None, address_mode: str | None = None,
                   router: bool = True, dns: tuple[str, ...] = ("2001:db8::53",)) -> tuple[dict, dict]:
    """A network with an IPv4 subnet (DHCP off) and an IPv6 subnet; with `router`, a router
    interface port on the IPv6 subnet's gateway (what makes vxnet advertise it)."""
    with lab.api(user) as c:
        n = c.post("/networks", json={"network": {"name": name}})
        assert n.status_code == 201, n.text
        net = n.json()["network"]
        s4 = c.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "192.0.2.0/24", "ip_version": 4,
                                                 "enable_dhcp": False}})
        assert s4.status_code == 201, s4.text
        body = {"network_id": net["id"], "cidr": v6cidr, "ip_version": 6, "dns_nameservers": list(dns)}
        if mode:
            body["ipv6_ra_mode"] = mode
        if address_mode or mode:
            body["ipv6_address_mode"] = address_mode or mode
        s6 = c.post("/subnets", json={"subnet": body})
        assert s6.status_code == 201, s6.text
        sub6 = s6.json()["subnet"]
    if router:
        with lab.api(user) as c:
            r = c.post("/routers", json={"router": {"name": name + "-r"}})
            assert r.status_code == 201, r.text
            rid = r.json()["router"]["id"]
            ri = c.put(f"/routers/{rid}/add_router_interface", json={"subnet_id": sub6["id"]})
        if ri.status_code != 200:
            # The API does not take IPv6 router interfaces yet: the port Neutron would make.
            with lab.api("admin") as c:
                p = c.post("/ports", json={"port": {
                    "network_id": net["id"], "device_owner": "network:router_interface", "device_id": rid,
                    "project_id": net["project_id"],
                    "fixed_ips": [{"subnet_id": sub6["id"], "ip_address": sub6["gateway_ip"]}]}})
                assert p.status_code == 201, p.text
    return net, sub6


def v6_of(port: dict) -> str:
    return next(f["ip_address"] for f in port["fixed_ips"] if ":" in f["ip_address"])


def enable_ipv6(vm: str) -> None:
    """IPv6 on in a lab VM (the lab turns it off), accepting RAs as a VM's kernel does."""
    r = nsexec(topology.vm_ns(vm), "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0",
               "net.ipv6.conf.default.disable_ipv6=0", "net.ipv6.conf.eth0.accept_ra=1",
               "net.ipv6.conf.eth0.autoconf=1", "net.ipv6.conf.eth0.disable_ipv6=0")
    assert r.returncode == 0, r.stderr


def addrs6(vm: str) -> str:
    return nsexec(topology.vm_ns(vm), "ip", "-6", "addr", "show", "dev", "eth0").stdout


def has_addr(vm: str, ip: str) -> bool:
    out = addrs6(vm)
    return any(ip + "/" in line and "tentative" not in line for line in out.splitlines())


def ping6(vm: str, ip: str, count: int = 2) -> int:
    r = nsexec(topology.vm_ns(vm), "ping", "-6", "-n", "-c", str(count), "-i", "0.2", "-W", "1", ip)
    m = re.search(r"(\d+) received", r.stdout)
    return int(m.group(1)) if m else 0


def boot(lab: Lab, name: str, host: str, port: dict) -> None:
    lab.vm(name, host, port)
    lab.wait_status(port["id"], "ACTIVE")


def port(lab: Lab, user: str, net: dict, **extra: object) -> dict:
    with lab.api(user) as c:
        r = c.post("/ports", json={"port": {"network_id": net["id"], **extra}})
        assert r.status_code == 201, r.text
        return r.json()["port"]


def v6_multicast(frames: list[str]) -> list[str]:
    """Underlay frames carrying IPv6 multicast, ND, RS/RA or MLD."""
    return [f for f in frames if re.search(r"ff02::|router (solicitation|advertisement)|multicast listener", f)]


RAW6 = r"""
import socket, sys
sys.path[:0] = [p for p in sys.argv[1].split(":") if p]
from vxnet.compute import nd_packet as nd
from vxnet.compute import dhcp6_packet as d6
kind, src_mac, dst_mac, src_ip, dst_ip = sys.argv[2:7]
if kind == "ra":
    ra = nd.RouterAdvert(prefixes=(nd.Prefix("2001:db8:66::/64"),), source_lladdr=src_mac)
    frame = nd.ra_frame(src_mac, dst_mac, src_ip, dst_ip, ra)
elif kind == "advertise":
    msg = d6.Dhcp6Message(d6.ADVERTISE, 1, ((d6.OPT_SERVERID, d6.duid_ll(src_mac)),))
    frame = nd.udp6_frame(src_mac, dst_mac, src_ip, dst_ip, 547, 546, d6.encode_message(msg))
elif kind == "na":      # unsolicited NA claiming sys.argv[7] for src_mac (or the MAC sys.argv[8])
    lladdr = sys.argv[8] if len(sys.argv) > 8 else src_mac
    frame = nd.icmp6_frame(src_mac, dst_mac, src_ip, dst_ip, nd.na_message(sys.argv[7], lladdr, nd.NA_OVERRIDE))
elif kind == "ns":      # NS for sys.argv[7], with the source link-layer option sys.argv[8] if given
    lladdr = sys.argv[8] if len(sys.argv) > 8 else None
    frame = nd.icmp6_frame(src_mac, dst_mac, src_ip, dst_ip, nd.ns_message(sys.argv[7], lladdr))
elif kind == "rs":      # RS with the source link-layer option sys.argv[7]
    frame = nd.icmp6_frame(src_mac, dst_mac, src_ip, dst_ip, nd.rs_message(sys.argv[7]))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for _ in range(3):
    s.send(frame)
"""


def raw6(vm: str, *args: str) -> None:
    r = nsexec(topology.vm_ns(vm), sys.executable, "-c", RAW6, os.environ.get("PYTHONPATH", ""), *args)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------- SLAAC
@pytest.fixture(scope="module")
def slaac(lab: Lab) -> dict[str, dict]:
    net, sub6 = dual_stack_net(lab, "alice", "v6-slaac", "2001:db8:1::/64", "slaac")
    ports = {name: port(lab, "alice", net) for name in ("a1", "a2", "a3")}
    for name, host in (("a1", "h1"), ("a2", "h1"), ("a3", "h2")):
        boot(lab, name, host, ports[name])
    return {"net": net, "sub6": sub6, **ports}


def test_slaac_address_from_vxnet_ra_and_no_ipv6_multicast_on_the_underlay(lab: Lab, slaac: dict) -> None:
    a1, a2, a3 = slaac["a1"], slaac["a2"], slaac["a3"]
    assert v6_of(a1) == nd.eui64_address("2001:db8:1::/64", a1["mac_address"])     # the API's EUI-64
    with capture() as underlay:
        for vm in ("a1", "a2", "a3"):
            enable_ipv6(vm)
        for vm, p in (("a1", a1), ("a2", a2), ("a3", a3)):
            wait_for(lambda vm=vm, p=p: has_addr(vm, v6_of(p)), f"{vm}'s SLAAC address", timeout=30)
        ns = topology.vm_ns("a1")
        # The RA's MTU and default router (the router interface's link-local) were taken.
        assert nsexec(ns, "sysctl", "-n", "net.ipv6.conf.eth0.mtu").stdout.strip() == str(slaac["net"]["mtu"])
        router_port = next(p for p in lab.api("admin").get("/ports", params={"network_id": slaac["net"]["id"]})
                           .json()["ports"] if p["device_owner"].startswith("network:router_interface"))
        route = nsexec(ns, "ip", "-6", "route", "show", "default").stdout
        assert f"via {nd.link_local(router_port['mac_address'])} dev eth0 proto ra" in route, route
        assert ping6("a1", v6_of(a2)) == 2           # same host
        assert ping6("a1", v6_of(a3)) == 2           # across hosts
        # The neighbour entries were answered by the bridge (a3 never saw a1's solicitation).
        neigh = nsexec(topology.vm_ns("a3"), "ip", "-6", "neigh", "show", v6_of(a1)).stdout
        assert a1["mac_address"] in neigh, neigh
    assert v6_multicast(underlay) == [], "\n".join(v6_multicast(underlay))
    echoes = [f for f in underlay if "ICMP6, echo" in f]
    assert len(echoes) >= 4, "\n".join(underlay)      # the unicast traffic did cross
    # The VMs' multicast ND/MLD that the bridge would flood to the VXLAN port was dropped
    # before it (by the firewall's `nd-underlay` rule, not only for want of a BUM entry).
    from vxnet.dataplane.nft_driver import NftDriver
    c = NftDriver(topology.host_ns(1)).counters("bridge", "vxnet_ps")
    assert sum(pk for (ch, kind), (pk, _) in c.items() if ch == "out" and kind == "nd-underlay") > 0, c


def test_bridges_hold_ipv6_entries_without_an_address_and_drift_is_repaired(lab: Lab, slaac: dict) -> None:
    from vxnet.compute import naming

    br, h1 = naming.bridge_name(slaac["net"]["id"]), topology.host_ns(1)
    sysctl = f"/proc/sys/net/ipv6/conf/{br}/disable_ipv6"

    def entries() -> str:
        return nsexec(h1, "ip", "-6", "neigh", "show", "dev", br, "nud", "permanent").stdout

    assert nsexec(h1, "cat", sysctl).stdout.strip() == "0"
    assert "inet6" not in nsexec(h1, "ip", "-6", "addr", "show", "dev", br).stdout     # the host has no address there
    assert v6_of(slaac["a3"]) in entries() and nd.link_local(slaac["a3"]["mac_address"]) in entries()
    # Someone turns IPv6 off on the bridge: the kernel flushes its IPv6 neighbours; the agent
    # turns it back on and puts them back.
    assert nsexec(h1, "sysctl", "-qw", f"net.ipv6.conf.{br}.disable_ipv6=1").returncode == 0
    wait_for(lambda: nsexec(h1, "cat", sysctl).stdout.strip() == "0"
             and v6_of(slaac["a3"]) in entries(), "bridge IPv6 back on with its entries", timeout=45)
    assert "inet6" not in nsexec(h1, "ip", "-6", "addr", "show", "dev", br).stdout


def test_vm_router_advertisement_and_dhcpv6_server_reach_no_other_vm(lab: Lab, slaac: dict) -> None:
    a1, a2 = slaac["a1"], slaac["a2"]
    for vm in ("a1", "a2", "a3"):
        enable_ipv6(vm)
    wait_for(lambda: has_addr("a1", nd.link_local(a1["mac_address"])), "a1 link-local", timeout=10)
    before = counters(1, a1["id"])
    src = nd.link_local(a1["mac_address"])
    with vm_capture("a2", "icmp6 or udp port 546") as near, vm_capture("a3", "icmp6 or udp port 546") as far, \
            capture() as underlay:
        raw6("a1", "ra", a1["mac_address"], "33:33:00:00:00:01", src, "ff02::1")
        raw6("a1", "advertise", a1["mac_address"], a2["mac_address"], src, nd.link_local(a2["mac_address"]))
        raw6("a1", "advertise", a1["mac_address"], "33:33:00:01:00:02", src, "ff02::1:2")
    def rogue(lines: list[str]) -> list[str]:
        return [ln for ln in lines if src in ln and ("router advertisement" in ln or ".547 >" in ln)]

    assert rogue(near) == [] and rogue(far) == [], near + far
    assert [f for f in underlay if src in f] == []
    after = counters(1, a1["id"])
    assert after["ra-guard"] - before.get("ra-guard", 0) == 3
    assert after["dhcp6-server"] - before.get("dhcp6-server", 0) == 6
    # the VMs still have only vxnet's prefix (the rogue 2001:db8:66::/64 was never heard)
    assert "2001:db8:66:" not in addrs6("a2") and "2001:db8:66:" not in addrs6("a3")


def test_spoofed_ipv6_source_and_forged_na_never_leave(lab: Lab, slaac: dict) -> None:
    a1, a2, a3 = slaac["a1"], slaac["a2"], slaac["a3"]
    for vm in ("a1", "a2", "a3"):
        enable_ipv6(vm)
    wait_for(lambda: has_addr("a1", v6_of(a1)), "a1 SLAAC", timeout=30)
    ns = topology.vm_ns("a1")
    spoofed = "2001:db8:1::99"
    assert nsexec(ns, "ip", "-6", "addr", "add", spoofed + "/64", "dev", "eth0", "nodad").returncode == 0
    before = counters(1, a1["id"])
    try:
        with capture() as underlay, vm_capture("a2", f"ip6 src {spoofed}") as near:
            r = nsexec(ns, "ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "1", "-I", spoofed, v6_of(a3))
            assert " 0 received" in r.stdout, r.stdout
            nsexec(ns, "ping", "-6", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-I", spoofed, v6_of(a2))
            # a forged NA: a1's MAC for a2's address (to all nodes)
            raw6("a1", "na", a1["mac_address"], "33:33:00:00:00:01", nd.link_local(a1["mac_address"]), "ff02::1",
                 v6_of(a2))
        assert [f for f in underlay if spoofed in f] == []
        assert near == []
        after = counters(1, a1["id"])
        assert after["spoof-ip6"] - before.get("spoof-ip6", 0) >= 5
        assert after["spoof-na-target"] - before.get("spoof-na-target", 0) == 3
        # nobody learnt a1's MAC for a2's address
        for vm in ("a2", "a3"):
            assert a1["mac_address"] not in nsexec(topology.vm_ns(vm), "ip", "-6", "neigh", "show", v6_of(a2)).stdout
        # An allowed address pair with an IPv6 prefix lets the same source (and the VM's NA for
        # it, whose target is now inside its pairs) through: a2 on the same host resolves it.
        with lab.api("alice") as c:
            r = c.put(f"/ports/{a1['id']}", json={"port": {"allowed_address_pairs": [
                {"ip_address": "2001:db8:1::90/124"}]}})
            assert r.status_code == 200, r.text
        wait_for(lambda: ping6_from("a1", spoofed, v6_of(a2)) > 0, "the pair allowed", timeout=15)
        # a2 forgets the address and solicits it again: a1's NA for it passes (none dropped)
        mid = counters(1, a1["id"])
        nsexec(topology.vm_ns("a2"), "ip", "-6", "neigh", "flush", "to", spoofed)
        assert ping6_from("a1", spoofed, v6_of(a2)) > 0
        assert counters(1, a1["id"])["spoof-na-target"] == mid["spoof-na-target"]
    finally:
        nsexec(ns, "ip", "-6", "addr", "del", spoofed + "/64", "dev", "eth0")
        with lab.api("alice") as c:
            c.put(f"/ports/{a1['id']}", json={"port": {"allowed_address_pairs": []}})


_ND_LINE = re.compile(r"(\S+) > \S+: ICMP6, (?:neighbor (solicitation), who has|neighbor (advertisement), tgt is) (\S+?),")


def nd_seen(lines: list[str]) -> set[tuple[str, str, str]]:
    """(source, "solicitation" | "advertisement", target) of the NS/NA in tcpdump lines."""
    return {(m.group(1), m.group(2) or m.group(3), m.group(4)) for ln in lines if (m := _ND_LINE.search(ln))}


def test_forged_neighbour_discovery_never_leaves_and_own_nd_works(lab: Lab, slaac: dict) -> None:
    """A VM on a dual-stack port (in the shared `ps6`) cannot send an NA for another port's
    address, a DAD probe for it, an NS or NA whose link-layer option names another MAC, or an
    RS with another MAC; its own DAD probe, NS, NA and RS pass, and its kernel's ND works."""
    a1, a2, a3 = slaac["a1"], slaac["a2"], slaac["a3"]
    for vm in ("a1", "a2", "a3"):
        enable_ipv6(vm)
    wait_for(lambda: has_addr("a1", v6_of(a1)) and has_addr("a2", v6_of(a2)), "a1, a2 SLAAC", timeout=30)
    m1, m2 = a1["mac_address"], a2["mac_address"]
    mine, ll, other, far = v6_of(a1), nd.link_local(m1), v6_of(a2), v6_of(a3)
    all_nodes = "33:33:00:00:00:01"
    pre = nsexec(topology.host_ns(1), "nft", "list", "map", "bridge", "vxnet_ps", "pre_ports").stdout
    assert f'"{naming.tap_name(a1["id"])}" : jump ps6' in pre, pre
    before = counters(1, a1["id"])
    with vm_capture("a2", f"icmp6 and ether src {m1}") as near, capture() as underlay:
        # forged: each sent 3 times
        raw6("a1", "na", m1, all_nodes, ll, "ff02::1", other)                       # a2's address
        raw6("a1", "ns", m1, nd.multicast_mac(nd.solicited_node(other)), "::", nd.solicited_node(other), other)  # DAD
        raw6("a1", "ns", m1, all_nodes, ll, "ff02::1", far, m2)                     # NS, a2's MAC as lladdr
        raw6("a1", "na", m1, all_nodes, mine, "ff02::1", mine, m2)                  # NA, a2's MAC as lladdr
        raw6("a1", "rs", m1, "33:33:00:00:00:02", ll, "ff02::2", m2)                # RS, a2's MAC as lladdr
        # its own: a DAD probe for its address, an NS with its MAC, an NA for its address
        raw6("a1", "ns", m1, nd.multicast_mac(nd.solicited_node(mine)), "::", nd.solicited_node(mine), mine)
        raw6("a1", "ns", m1, all_nodes, mine, "ff02::1", far, m1)
        raw6("a1", "na", m1, all_nodes, ll, "ff02::1", mine)
    after = counters(1, a1["id"])
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert (delta["spoof-na-target"], delta["spoof-dad-target"], delta["spoof-nd-lladdr"], delta["spoof-rs-lladdr"]) == \
        (3, 3, 6, 3), delta
    assert delta["spoof-nd-layout"] == delta["spoof-rs-layout"] == 0
    seen = nd_seen(near)
    assert {("::", "solicitation", mine), (mine, "solicitation", far), (ll, "advertisement", mine)} <= seen, near
    assert not seen & {(ll, "advertisement", other), ("::", "solicitation", other), (ll, "solicitation", far),
                       (mine, "advertisement", mine)}, near
    assert [f for f in underlay if m2 in f and m1 in f] == []
    # its own RS (its MAC) is answered by the host's responder: an RA reaches a1
    with vm_capture("a1", "icmp6 and ip6[40] == 134") as ras:
        raw6("a1", "rs", m1, "33:33:00:00:00:02", ll, "ff02::2", m1)
    assert ras, "no RA answered a1's own RS"
    assert counters(1, a1["id"])["spoof-rs-lladdr"] == after["spoof-rs-lladdr"]
    # and its kernel's neighbour discovery (NS/NA with link-layer options) works both ways
    for vm in ("a1", "a2"):
        nsexec(topology.vm_ns(vm), "ip", "-6", "neigh", "flush", "dev", "eth0")
    assert ping6("a1", other) > 0 and ping6("a2", mine) > 0
    assert counters(1, a1["id"])["spoof-nd-lladdr"] == after["spoof-nd-lladdr"]


def ping6_from(vm: str, src: str, ip: str) -> int:
    r = nsexec(topology.vm_ns(vm), "ping", "-6", "-n", "-c", "1", "-W", "1", "-I", src, ip)
    m = re.search(r"(\d+) received", r.stdout)
    return int(m.group(1)) if m else 0


# ---------------------------------------------------------------------------------- DHCPv6
DHCLIENT6_SCRIPT = r"""#!/bin/sh
{ echo "reason=$reason"; env | grep -E '^(new_|old_)' | sort; echo; } >> "$(dirname "$0")/dhclient6-$(ip netns identify).out"
case "$reason" in
  BOUND6|RENEW6|REBIND6|REBOOT6) [ -n "$new_ip6_address" ] && ip -6 addr replace "$new_ip6_address/128" dev "$interface" nodad ;;
esac
exit 0
"""
DHCLIENT6_CONF = "request dhcp6.name-servers;\ntimeout 15;\n"


def dhclient6(tmp: str, vm: str, *args: str) -> list[dict[str, str]]:
    script, conf = os.path.join(tmp, "dh6.sh"), os.path.join(tmp, "dh6.conf")
    with open(script, "w") as f:
        f.write(DHCLIENT6_SCRIPT)
    os.chmod(script, 0o755)
    with open(conf, "w") as f:
        f.write(DHCLIENT6_CONF)
    pid = os.path.join(tmp, f"{vm}.pid")
    r = nsexec(topology.vm_ns(vm), "dhclient", "-6", "-1", "-v", *args, "-cf", conf, "-sf", script,
               "-lf", os.path.join(tmp, f"{vm}.leases"), "-pf", pid, "eth0", timeout=40)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        try:
            with open(pid) as f:
                os.kill(int(f.read().strip()), 15)
        except (OSError, ValueError):
            pass
    path = os.path.join(tmp, f"dhclient6-{topology.vm_ns(vm)}.out")
    with open(path) as f:
        return [dict(line.split("=", 1) for line in b.splitlines() if "=" in line) for b in f.read().split("\n\n") if b.strip()]


def test_dhcpv6_stateful_and_stateless_answered_on_the_host(lab: Lab, tmp_path) -> None:
    net, _ = dual_stack_net(lab, "alice", "v6-stateful", "2001:db8:2::/64", "dhcpv6-stateful",
                            dns=("2001:db8::53", "2001:db8::54"))
    p = port(lab, "alice", net, fixed_ips=[{"ip_address": "192.0.2.21"}, {"ip_address": "2001:db8:2::21"}])
    boot(lab, "d1", "h1", p)
    enable_ipv6("d1")
    wait_for(lambda: has_addr("d1", nd.link_local(p["mac_address"])), "d1 link-local", timeout=10)
    with capture() as underlay:
        got = dhclient6(str(tmp_path), "d1")
    bound = [x for x in got if x.get("reason") == "BOUND6"]
    assert bound, got
    assert bound[0]["new_ip6_address"] == "2001:db8:2::21"
    assert bound[0]["new_dhcp6_name_servers"] == "2001:db8::53 2001:db8::54"
    assert has_addr("d1", "2001:db8:2::21")
    assert [f for f in underlay if re.search(r"\.54[67]\b|dhcp6", f)] == [], "\n".join(underlay)

    net2, _ = dual_stack_net(lab, "alice", "v6-stateless", "2001:db8:3::/64", "dhcpv6-stateless", dns=("2001:db8::35",))
    q = port(lab, "alice", net2)
    boot(lab, "d2", "h2", q)
    enable_ipv6("d2")
    wait_for(lambda: has_addr("d2", v6_of(q)), "d2 SLAAC", timeout=30)
    tmp2 = tmp_path / "s"
    tmp2.mkdir()
    got = dhclient6(str(tmp2), "d2", "-S")
    # dhclient 4.4 reports an Information-request's Reply as RENEW6 (INFORM6 in older versions)
    info = [x for x in got if x.get("reason") in ("INFORM6", "RENEW6")]
    assert info and info[0]["new_dhcp6_name_servers"] == "2001:db8::35", got
    assert "new_ip6_address" not in info[0] and info[0]["new_dhcp6_info_refresh_time"] == str(LEASE)


# ---------------------------------------------------------------------------------- groups
ECHO6 = r"""
import socket, sys, threading
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1]))); s.listen(8); print("ready", flush=True)
while True:
    c, _ = s.accept()
    with c:
        while (d := c.recv(100)):
            c.sendall(d)
"""
PROBE6 = r"""
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)
    c.settimeout(1.5); c.sendall(b"hi"); print("open" if c.recv(10) == b"hi" else "closed")
except OSError:
    print("closed")
"""


def probe6(vm: str, ip: str, port_no: int) -> bool:
    return nsexec(topology.vm_ns(vm), sys.executable, "-c", PROBE6, ip, str(port_no)).stdout.strip() == "open"


def test_ipv6_security_group_rules_and_stateful_replies(lab: Lab, slaac: dict) -> None:
    net = slaac["net"]
    with lab.api("alice") as c:
        g = c.post("/security-groups", json={"security_group": {"name": "v6-only-ping"}}).json()["security_group"]
        for r in g["security_group_rules"]:
            assert c.delete(f"/security-group-rules/{r['id']}").status_code == 204
        for body in ({"direction": "ingress", "ethertype": "IPv6", "protocol": "ipv6-icmp", "port_range_min": 128,
                      "remote_ip_prefix": "2001:db8:1::/64"},
                     {"direction": "egress", "ethertype": "IPv6"}):
            r = c.post("/security-group-rules", json={"security_group_rule": {"security_group_id": g["id"], **body}})
            assert r.status_code == 201, r.text
    s1 = port(lab, "alice", net, security_groups=[g["id"]])
    boot(lab, "s1", "h2", s1)
    for vm in ("s1", "a1"):
        enable_ipv6(vm)
    wait_for(lambda: has_addr("s1", v6_of(s1)), "s1 SLAAC", timeout=30)
    wait_for(lambda: has_addr("a1", v6_of(slaac["a1"])), "a1 SLAAC", timeout=30)
    server = subprocess.Popen(["ip", "netns", "exec", topology.vm_ns("a1"), sys.executable, "-c", ECHO6, "2222"],
                              stdout=subprocess.PIPE, text=True)
    server2 = subprocess.Popen(["ip", "netns", "exec", topology.vm_ns("s1"), sys.executable, "-c", ECHO6, "2223"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready" and server2.stdout.readline().strip() == "ready"
        assert ping6("a1", v6_of(s1)) == 2                       # ICMPv6 echo allowed by the rule
        assert not probe6("a1", v6_of(s1), 2223)                  # no TCP rule: blocked
        # s1's egress connection to a1 (the default group allows ingress from its members
        # only; s1 is not one, so a1 allows... the reply direction is what matters here): the
        # replies reach s1 with no ingress TCP rule, by conntrack.
        with lab.api("alice") as c:
            dg = next(x for x in c.get("/security-groups").json()["security_groups"] if x["name"] == "default")
            r = c.post("/security-group-rules", json={"security_group_rule": {
                "security_group_id": dg["id"], "direction": "ingress", "ethertype": "IPv6", "protocol": "tcp",
                "port_range_min": 2222, "port_range_max": 2222}})
            assert r.status_code == 201, r.text
        wait_for(lambda: probe6("s1", v6_of(slaac["a1"]), 2222), "a1 open from s1", timeout=15)
    finally:
        server.kill()
        server2.kill()


# ---------------------------------------------------------------------------------- tenants
def test_two_projects_with_the_same_ipv6_prefix_are_isolated(lab: Lab) -> None:
    nets = {}
    for user in ("alice", "bob"):
        net, _ = dual_stack_net(lab, user, f"same-{user}", "2001:db8:9::/64", "dhcpv6-stateful", router=False)
        nets[user] = net
    names = {}
    for user, tag in (("alice", "x"), ("bob", "y")):
        pa = port(lab, user, nets[user], fixed_ips=[{"ip_address": "192.0.2.31"}, {"ip_address": "2001:db8:9::31"}])
        pb = port(lab, user, nets[user], fixed_ips=[{"ip_address": "192.0.2.32"}, {"ip_address": "2001:db8:9::32"}])
        boot(lab, f"{tag}1", "h1", pa)
        boot(lab, f"{tag}2", "h2", pb)
        names[user] = (f"{tag}1", f"{tag}2")
        for vm, p in ((f"{tag}1", pa), (f"{tag}2", pb)):
            enable_ipv6(vm)
            assert nsexec(topology.vm_ns(vm), "ip", "-6", "addr", "add", v6_of(p) + "/64", "dev", "eth0",
                          "nodad").returncode == 0
    with vm_capture("y2", "icmp6 and ip6[40] == 128") as bob_side:
        assert ping6("x1", "2001:db8:9::32", 3) == 3
    assert bob_side == [], bob_side
    with vm_capture("x2", "icmp6 and ip6[40] == 128") as alice_side:
        assert ping6("y1", "2001:db8:9::32", 2) == 2
    assert alice_side == [], alice_side
