"""DHCP answered by the agents (agent/dhcp.py) on a real `vxnet lab`, with real clients in VMs.

The lab's agents run with `--dhcp-lease-time 10` (clients renew after 5 s). Each test flushes
its VMs' static addresses and runs busybox udhcpc (private `-s` script) or ISC dhclient
(private `-cf -sf -lf -pf`, killed by its pidfile); nothing touches /etc/resolv.conf.

- udhcpc and dhclient get the port's IP, mask, router, DNS, MTU, classless routes (the
  metadata route on this router-less subnet, default
  route included), hostname and lease time; the underlay sees 0 DHCP frames; a second VM on
  the same host sees none of the first VM's DHCP frames (steering).
- A subnet option change reaches a VM (dhclient, T1 = 5 s) at its renewal, which is a unicast
  REQUEST to the server id answered by an ACK; a port IP change reaches a VM (udhcpc renewing on
  SIGUSR1, as busybox clamps leases to >= 122 s; port security on: its unicast RENEW from the
  former address is accepted, steered to the responder) through a NAK and a new DISCOVER; once a router interface owns the gateway IP the unicast RENEW goes to
  the router's MAC and is still answered (steered to the responder).
- An unknown MAC and a subnet with enable_dhcp false get no lease; no responder exists on a
  network without DHCP, and there a DHCP request from a spoofed source IP is dropped by
  anti-spoofing (no steering confines it): a peer VM sees none of it.
- Agent crash (SIGKILL): the restarted agent adopts its responder (same device) and answers;
  the responder of a network whose last local port went while the agent was dead is removed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.root.conftest import Lab, lab_session, needs_root
from tests.root.helpers import capture, nsexec, wait_for
from tests.root.test_port_security import counters as ps_counters
from tests.root.test_port_security import raw
from vxnet.compute import dhcp as cdhcp
from vxnet.compute import dhcp_packet as pkt
from vxnet.compute import naming
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

LEASE = 10
UDHCPC_SCRIPT = r"""#!/bin/sh
# Private udhcpc script: record what the server sent; configure only the address (a renewal is
# sent from a socket bound to it), never /etc/resolv.conf.
{ echo "event=$1"
  for v in ip mask subnet router dns mtu staticroutes hostname lease serverid broadcast message; do
    eval "echo $v=\$$v"
  done
  echo; } >> "$(dirname "$0")/$interface-$(ip netns identify).out"
case "$1" in
  deconfig) ip -4 addr flush dev "$interface" ;;
  bound|renew) ip -4 addr show dev "$interface" | grep -q "inet $ip/$mask " ||
               { ip -4 addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface"; } ;;
esac
"""
DHCLIENT_SCRIPT = r"""#!/bin/sh
# Private dhclient script: record, and configure only the address (unicast renewals need it).
{ echo "reason=$reason"; env | grep '^new_' | sort; echo; } >> "$(dirname "$0")/dhclient.out"
case "$reason" in
  BOUND|RENEW|REBIND|REBOOT) ip -4 addr show dev "$interface" | grep -q "inet $new_ip_address/" ||
      { ip -4 addr flush dev "$interface"; ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface"; } ;;
esac
"""
DHCLIENT_CONF = """option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
request subnet-mask, broadcast-address, routers, domain-name-servers, host-name, interface-mtu,
        rfc3442-classless-static-routes;
timeout 10;
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    """`vxnet lab up --hosts 2` with a short DHCP lease; always torn down."""
    with lab_session(tmp_path_factory, "dhcplab", 2, agent_args=["--dhcp-lease-time", str(LEASE)]) as g:
        yield g


@pytest.fixture
def scripts(tmp_path) -> str:
    for name, text in (("udhcpc.sh", UDHCPC_SCRIPT), ("dhclient.sh", DHCLIENT_SCRIPT), ("dhclient.conf", DHCLIENT_CONF)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    return str(tmp_path)


# ---------------------------------------------------------------------------------- helpers
def make_net(lab: Lab, cidr: str, name: str, **subnet: object) -> tuple[dict, dict]:
    with lab.api("alice") as c:
        n = c.post("/networks", json={"network": {"name": name}})
        assert n.status_code == 201, n.text
        net = n.json()["network"]
        s = c.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": cidr, "ip_version": 4, **subnet}})
        assert s.status_code == 201, s.text
        return net, s.json()["subnet"]


def make_port(lab: Lab, net: dict, ip: str, **extra: object) -> dict:
    with lab.api("alice") as c:
        r = c.post("/ports", json={"port": {"network_id": net["id"], "fixed_ips": [{"ip_address": ip}], **extra}})
        assert r.status_code == 201, r.text
        return r.json()["port"]


def boot(lab: Lab, name: str, host: str, port: dict) -> None:
    """A lab VM for `port`, its static address removed (the DHCP client must configure it)."""
    lab.vm(name, host, port)
    lab.wait_status(port["id"], "ACTIVE")
    r = nsexec(topology.vm_ns(name), "ip", "-4", "addr", "flush", "dev", "eth0")
    assert r.returncode == 0, r.stderr


def records(path: str) -> list[dict[str, str]]:
    """The blocks a client script appended (one dict per event)."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    out = []
    for block in text.split("\n\n"):
        rec = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if rec:
            out.append(rec)
    return out


def out_file(scripts: str, vm: str) -> str:
    return os.path.join(scripts, f"eth0-{topology.vm_ns(vm)}.out")


def udhcpc(scripts: str, vm: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """One-shot udhcpc (-q: exit once bound) asking for MTU and classless routes."""
    return nsexec(topology.vm_ns(vm), "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "3", "-T", "1",
                  "-O", "mtu", "-O", "staticroutes", "-s", os.path.join(scripts, "udhcpc.sh"), *args, timeout=timeout)


def dhcp_frames(frames: list[str]) -> list[str]:
    return [f for f in frames if "BOOTP" in f or re.search(r"\.6[78]\b", f)]


# ---------------------------------------------------------------------------------- tests
def test_real_clients_get_their_port_config_and_dhcp_stays_on_the_host(lab: Lab, scripts: str) -> None:
    net, _ = make_net(lab, "192.0.2.0/24", "dhcp-a", dns_nameservers=["203.0.113.53", "203.0.113.54"],
                        host_routes=[{"destination": "100.64.0.0/10", "nexthop": "192.0.2.254"}])
    p1, p3 = (make_port(lab, net, ip) for ip in ("192.0.2.11", "192.0.2.13"))
    # c2 without port security: its own filter would drop c1's broadcast, hiding a steering bug.
    p2 = make_port(lab, net, "192.0.2.12", port_security_enabled=False)
    for name, host, p in (("c1", "h1", p1), ("c2", "h1", p2), ("c3", "h2", p3)):
        boot(lab, name, host, p)
    mtu = net["mtu"]
    assert mtu == 1450

    # udhcpc on h1, while the underlay and the second VM on h1 are captured.
    with capture() as underlay, capture(topology.vm_ns("c2"), "eth0") as neighbour:
        r = udhcpc(scripts, "c1")
    assert r.returncode == 0, r.stdout + r.stderr
    bound = [x for x in records(out_file(scripts, "c1")) if x["event"] == "bound"]
    assert len(bound) == 1, records(out_file(scripts, "c1"))
    got = bound[0]
    assert got == {"event": "bound", "ip": "192.0.2.11", "mask": "24", "subnet": "255.255.255.0",
                   "router": "192.0.2.1", "dns": "203.0.113.53 203.0.113.54", "mtu": str(mtu),
                   "staticroutes": "100.64.0.0/10 192.0.2.254 169.254.169.254/32 192.0.2.1 0.0.0.0/0 192.0.2.1",
                   "hostname": "host-192-0-2-11", "lease": str(LEASE), "serverid": "192.0.2.1",
                   "broadcast": "192.0.2.255", "message": ""}, got
    assert "192.0.2.11/24" in nsexec(topology.vm_ns("c1"), "ip", "-4", "addr", "show", "dev", "eth0").stdout
    dev = nsexec(topology.host_ns(1), "ip", "-d", "addr", "show", cdhcp.device_name(net["id"])).stdout
    assert "NOARP" in dev and "inet" not in dev, dev          # no IPv4, no IPv6, never answers ARP
    assert dhcp_frames(underlay) == [], "\n".join(underlay)
    assert dhcp_frames(neighbour) == [], "\n".join(neighbour)

    # ISC dhclient on h2 (requests interface-mtu and classless routes in its private config).
    lf, pf = os.path.join(scripts, "dhclient.leases"), os.path.join(scripts, "dhclient.pid")
    with capture() as underlay:
        r = nsexec(topology.vm_ns("c3"), "dhclient", "-1", "-cf", os.path.join(scripts, "dhclient.conf"),
                   "-sf", os.path.join(scripts, "dhclient.sh"), "-lf", lf, "-pf", pf, "eth0", timeout=30)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        bound = [x for x in records(os.path.join(scripts, "dhclient.out")) if x["reason"] == "BOUND"]
        assert len(bound) == 1, records(os.path.join(scripts, "dhclient.out"))
        got = bound[0]
        routes = " ".join(str(b) for b in pkt.classless_routes([("100.64.0.0/10", "192.0.2.254"),
                                                                 ("169.254.169.254/32", "192.0.2.1"),
                                                                 ("0.0.0.0/0", "192.0.2.1")]))
        assert {k: got.get(k) for k in ("new_ip_address", "new_subnet_mask", "new_routers",
                                        "new_domain_name_servers", "new_interface_mtu", "new_host_name",
                                        "new_dhcp_lease_time", "new_dhcp_server_identifier",
                                        "new_rfc3442_classless_static_routes")} == {
            "new_ip_address": "192.0.2.13", "new_subnet_mask": "255.255.255.0", "new_routers": "192.0.2.1",
            "new_domain_name_servers": "203.0.113.53 203.0.113.54", "new_interface_mtu": str(mtu),
            "new_host_name": "host-192-0-2-13", "new_dhcp_lease_time": str(LEASE),
            "new_dhcp_server_identifier": "192.0.2.1", "new_rfc3442_classless_static_routes": routes}, got
    finally:
        with open(pf) as f:
            os.kill(int(f.read().strip()), signal.SIGTERM)
    assert dhcp_frames(underlay) == [], "\n".join(underlay)


def test_changes_reach_vms_at_renewal_unicast_even_through_a_router_mac(lab: Lab, scripts: str) -> None:
    net, sub = make_net(lab, "100.64.30.0/24", "dhcp-b", dns_nameservers=["203.0.113.53"])
    pa = make_port(lab, net, "100.64.30.11")                                # port security on (default)
    pb = make_port(lab, net, "100.64.30.12")                                # port security on too
    boot(lab, "r1", "h1", pa)
    boot(lab, "r2", "h1", pb)
    # r1: dhclient, which renews at T1 = lease / 2 = 5 s. r2: udhcpc, which clamps leases to
    # >= 122 s, so its renewal is triggered with SIGUSR1 (the same unicast RENEW as at T1).
    dh_out, lf, pf = (os.path.join(scripts, n) for n in ("dhclient.out", "r1.leases", "r1.pid"))
    r = nsexec(topology.vm_ns("r1"), "dhclient", "-1", "-cf", os.path.join(scripts, "dhclient.conf"),
               "-sf", os.path.join(scripts, "dhclient.sh"), "-lf", lf, "-pf", pf, "eth0", timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    ud = subprocess.Popen(["ip", "netns", "exec", topology.vm_ns("r2"), "busybox", "udhcpc", "-i", "eth0", "-f",
                           "-t", "3", "-T", "1", "-s", os.path.join(scripts, "udhcpc.sh")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    fb = out_file(scripts, "r2")
    try:
        wait_for(lambda: any(x["event"] == "bound" for x in records(fb)), "r2 bound", timeout=10)
        assert [x["new_ip_address"] for x in records(dh_out) if x["reason"] == "BOUND"] == ["100.64.30.11"]

        # An option change reaches r1 at its next renewal: a unicast REQUEST to the server id.
        with lab.api("alice") as c:
            assert c.put(f"/subnets/{sub['id']}", json={"subnet": {"dns_nameservers": ["203.0.113.99"]}}
                         ).status_code == 200
        with capture(topology.vm_ns("r1"), "eth0") as frames:
            wait_for(lambda: any(
                x["reason"] == "RENEW" and x.get("new_domain_name_servers") == "203.0.113.99"
                for x in records(dh_out)), "r1 renewal with the new DNS", timeout=LEASE)
        assert [f for f in frames if "Request" in f and p_ip(f) == ("100.64.30.11", "100.64.30.1")], \
            "no unicast RENEW to the server id:\n" + "\n".join(frames)
        assert not [f for f in frames if "255.255.255.255.67" in f], "the renewal was broadcast (REBIND)"

        # An IP change reaches r2 at its renewal: its unicast RENEW from the address the port no
        # longer holds passes anti-spoofing (rule dhcp-renew: steered to the responder), NAK,
        # then DISCOVER/REQUEST for the new IP. r2 has the server's neighbour entry, as a VM in
        # use has its gateway's (its ARP from the old address would be dropped, rightly).
        nsexec(topology.vm_ns("r2"), "ping", "-c1", "-W1", sub["gateway_ip"])
        assert "lladdr" in nsexec(topology.vm_ns("r2"), "ip", "neigh", "show", sub["gateway_ip"]).stdout
        with lab.api("alice") as c:
            assert c.put(f"/ports/{pb['id']}", json={"port": {"fixed_ips": [{"ip_address": "100.64.30.22"}]}}
                         ).status_code == 200
        wait_for(lambda: "100.64.30.12" not in nsexec(
            topology.host_ns(1), "nft", "list", "map", "bridge", "vxnet_ps", "ps_mark").stdout,
            "the old address out of r2's allowed pairs", timeout=10)
        before = ps_counters(1, pb["id"])
        with capture(topology.vm_ns("r2"), "eth0") as frames2:
            ud.send_signal(signal.SIGUSR1)
            # 30 s bounds the event (seen past 10 s once at load 13); the lease is >= 122 s, so a
            # bind within it is still "at renewal, not at expiry".
            wait_for(lambda: any(x["event"] == "bound" and x["ip"] == "100.64.30.22" for x in records(fb)),
                     "r2 bound to its new IP", timeout=30)
        assert [x["event"] for x in records(fb)][-3:] == ["nak", "deconfig", "bound"], records(fb)
        assert ps_counters(1, pb["id"]).get("dhcp-renew", 0) > before.get("dhcp-renew", 0)
        # At its renewal: the first request after the change is the unicast RENEW from the old
        # address to the server id, and no REBIND (broadcast from the old address) was needed.
        requests = [p_ip(f) for f in frames2 if "Request" in f]
        assert requests and requests[0] == ("100.64.30.12", "100.64.30.1"), "\n".join(frames2)
        assert ("100.64.30.12", "255.255.255.255") not in requests, "\n".join(frames2)
        # `vxnet trace` names the same rules as the kernel, and finds them in h1's ps chain.
        renew = trace("--from", "r2", "--to", "100.64.30.1", "--proto", "udp", "--dport", "67", "--sport", "68",
                      "--src-ip", "100.64.30.12", "--live")
        assert "(rule dhcp-renew" in renew and "live: ok: nft rule dhcp-renew present" in renew, renew
        assert "verdict: DELIVERED" in renew and "responder" in renew, renew
        spoof = trace("--from", "r2", "--to", "100.64.30.1", "--proto", "udp", "--dport", "53",
                      "--src-ip", "100.64.30.12", "--live", status=1)
        assert "verdict: DROPPED" in spoof and "live: ok: nft rule spoof-ip present" in spoof, spoof
        # The client script records "bound" before it sets the address: wait for the address.
        wait_for(lambda: "100.64.30.22/24" in nsexec(
            topology.vm_ns("r2"), "ip", "-4", "addr", "show", "dev", "eth0").stdout,
            "r2 configured with its new IP", timeout=5)

        # A router interface takes the gateway IP: r1's RENEW now goes to the router's MAC and
        # is still answered by the responder (steered at the bridge).
        with lab.api("alice") as c:
            router = c.post("/routers", json={"router": {"name": "dhcp-r"}}).json()["router"]
            r = c.put(f"/routers/{router['id']}/add_router_interface", json={"subnet_id": sub["id"]})
            assert r.status_code == 200, r.text
            rmac = c.get(f"/ports/{r.json()['port_id']}").json()["port"]["mac_address"]
        wait_for(lambda: rmac in nsexec(
            topology.vm_ns("r1"), "sh", "-c", "ip neigh flush dev eth0; ping -c1 -W1 100.64.30.1 >/dev/null;"
            " ip neigh show 100.64.30.1").stdout, "the router answering ARP for the gateway on h1", timeout=15)
        n_renew = sum(x["reason"] == "RENEW" for x in records(dh_out))
        with capture(topology.vm_ns("r1"), "eth0") as frames:
            wait_for(lambda: sum(x["reason"] == "RENEW" for x in records(dh_out)) > n_renew,
                     "r1 renewal through the router's MAC", timeout=LEASE)
        assert [f for f in frames if "Request" in f and f"> {rmac}" in f], "\n".join(frames)
        assert [f for f in frames if "Reply" in f and p_ip(f) == ("100.64.30.1", "100.64.30.11")], \
            "\n".join(frames)
    finally:
        ud.kill()
        ud.wait(5)
        with open(pf) as f:
            os.kill(int(f.read().strip()), signal.SIGTERM)


def trace(*args: str, status: int = 0) -> str:
    """`vxnet trace` against this lab; its output. `status`: its expected exit status (0 the
    packet arrives, 1 it does not; 3 would be drift, 2 an error)."""
    r = subprocess.run([os.path.join(os.path.dirname(sys.executable), "vxnet"), "trace", *args], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == status, r.stdout + r.stderr
    return r.stdout


def p_ip(frame: str) -> tuple[str, str] | None:
    """(source IP, destination IP) of a decoded DHCP frame line."""
    m = re.search(r"(\d+\.\d+\.\d+\.\d+)\.6[78] > (\d+\.\d+\.\d+\.\d+)\.6[78]", frame)
    return (m.group(1), m.group(2)) if m else None


def test_unknown_mac_and_disabled_subnet_get_nothing(lab: Lab, scripts: str) -> None:
    net, _ = make_net(lab, "203.0.113.0/24", "dhcp-c")
    off, _ = make_net(lab, "100.64.10.0/24", "dhcp-off", enable_dhcp=False)
    known = make_port(lab, net, "203.0.113.11", port_security_enabled=False)
    nodhcp = make_port(lab, off, "100.64.10.11")
    peer = make_port(lab, off, "100.64.10.12", port_security_enabled=False)
    boot(lab, "u1", "h1", known)
    boot(lab, "u2", "h1", nodhcp)
    boot(lab, "u3", "h1", peer)
    # u1 changes its MAC: its tap is steered to the responder, which has no lease for that MAC.
    assert nsexec(topology.vm_ns("u1"), "ip", "link", "set", "eth0", "address", "02:00:00:0e:ee:01").returncode == 0
    procs = [subprocess.Popen(["ip", "netns", "exec", topology.vm_ns(vm), "busybox", "udhcpc", "-i", "eth0", "-f",
                               "-q", "-n", "-t", "2", "-T", "1", "-s", os.path.join(scripts, "udhcpc.sh")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for vm in ("u1", "u2")]
    with capture() as underlay:
        outs = [p.communicate(timeout=20)[0] for p in procs]
    assert [p.returncode for p in procs] == [1, 1], outs
    for vm in ("u1", "u2"):
        assert not [x for x in records(out_file(scripts, vm)) if x["event"] == "bound"]
    links = nsexec(topology.host_ns(1), "ip", "-o", "link").stdout
    assert cdhcp.service_port(net["id"]) in links
    assert cdhcp.service_port(off["id"]) not in links and cdhcp.device_name(off["id"]) not in links
    assert dhcp_frames(underlay) == [], "\n".join(underlay)
    # No DHCP on u2's network, so no steering: a client->server frame from a spoofed source IP
    # (broadcast, or to the responder MAC it would have) is dropped; from its own IP it passes.
    before = ps_counters(1, nodhcp["id"])
    with capture(topology.vm_ns("u3"), "eth0") as seen:
        for dst_mac in ("-", cdhcp.responder_mac(off["id"])):
            raw("u2", "udp", nodhcp["mac_address"], dst_mac, "100.64.10.99", "68:67:255.255.255.255")
        raw("u2", "udp", nodhcp["mac_address"], "-", "100.64.10.11", "68:67:255.255.255.255")    # control
        time.sleep(1)       # over VXLAN to h2
    assert ps_counters(1, nodhcp["id"]).get("spoof-ip", 0) - before.get("spoof-ip", 0) == 6
    # not leased: its tap has no renew exemption (no element in the shared chain's `ps_dhcp`)
    listed = nsexec(topology.host_ns(1), "nft", "list", "set", "bridge", "vxnet_ps", "ps_dhcp").stdout
    assert "set ps_dhcp" in listed
    assert f'"{naming.tap_name(nodhcp["id"])}"' not in listed
    udp = [f for f in seen if ".68 > 255.255.255.255.67" in f]
    assert len(udp) == 3 and all("100.64.10.11.68 >" in f for f in udp), "\n".join(seen)
    # Sanity: the same VM with its port's MAC back gets its lease from the same responder.
    assert nsexec(topology.vm_ns("u1"), "ip", "link", "set", "eth0", "address", known["mac_address"]).returncode == 0
    r = udhcpc(scripts, "u1")
    assert r.returncode == 0 and "lease of 203.0.113.11 obtained" in r.stderr, r.stdout + r.stderr


def test_agent_crash_adopts_responders_and_removes_unwanted_ones(lab: Lab, scripts: str) -> None:
    from vxnet.lab import lab as vlab

    net, _ = make_net(lab, "100.64.20.0/24", "dhcp-d")
    k1 = make_port(lab, net, "100.64.20.11")
    k2 = make_port(lab, net, "100.64.20.12")
    boot(lab, "k1", "h1", k1)
    boot(lab, "k2", "h2", k2)
    dev = cdhcp.device_name(net["id"])

    def ifindex(host: int, name: str) -> str | None:
        m = re.match(r"(\d+):", nsexec(topology.host_ns(host), "ip", "-o", "link", "show", name).stdout)
        return m.group(1) if m else None

    before = ifindex(1, dev)
    assert before and ifindex(2, dev)
    st = vlab.load_state()
    for host in ("h1", "h2"):
        vlab.stop_agent(st, host, signal.SIGKILL)
    # While the agents are dead, k2's port goes: h2 no longer needs the network's responder.
    with lab.api("alice") as c:
        assert c.delete(f"/ports/{k2['id']}").status_code == 204
    for host in ("h1", "h2"):
        vlab.start_agent(st, host)
    wait_for(lambda: ifindex(2, dev) is None, "h2's responder removed", timeout=20)
    assert ifindex(1, dev) == before, "h1's responder was recreated instead of adopted"
    r = udhcpc(scripts, "k1")
    assert r.returncode == 0 and "lease of 100.64.20.11 obtained" in r.stderr, r.stdout + r.stderr
    rules = nsexec(topology.host_ns(1), "nft", "list", "table", "bridge", cdhcp.NFT_TABLE).stdout
    assert naming.tap_name(k1["id"]) in rules and rules.count("ether daddr set") == 3, rules   # DHCPv4, DHCPv6, RS


def test_in_process_agent_driving_a_host_namespace_counts_what_it_answers(lab: Lab, scripts: str) -> None:
    """The `netns=` path (agent outside its host namespace, as in the in-process tests): the
    responder thread enters the namespace; counters per network."""
    from tests.root.test_agent_loop import FakeControl
    from vxnet.agent.core import Agent, AgentConfig
    from vxnet.agent.dhcp import DhcpFeature

    topology.add_host(9)
    ns = topology.host_ns(9)
    nid, sid, pid = ("eeeeeeee-0000-4000-8000-00000000000" + c for c in "123")
    mac = "02:00:00:00:09:11"
    view = {"hosts": {"h9": {"host": "h9", "underlay_ip": topology.underlay_ip(9), "alive": True}},
            "networks": {nid: {"id": nid, "provider:network_type": "vxlan", "provider:segmentation_id": 4999,
                               "mtu": 1400}},
            "subnets": {sid: {"id": sid, "network_id": nid, "ip_version": 4, "cidr": "203.0.113.0/25",
                              "gateway_ip": None, "enable_dhcp": True}},
            "ports": {pid: {"id": pid, "network_id": nid, "binding:host_id": "h9", "mac_address": mac,
                            "device_owner": "compute:nova",
                            "fixed_ips": [{"subnet_id": sid, "ip_address": "203.0.113.9"}]}}}
    cfg = AgentConfig(host="h9", underlay_ip=topology.underlay_ip(9), netns=ns, resync_interval=3600)
    feature = DhcpFeature(cfg.context)
    agent = Agent(cfg, FakeControl(ns), features=[feature])
    try:
        topology.add_vm("n1", ns, naming.tap_name(pid), mac, None, 1500)
        agent.start()
        agent.on_message({"type": "snapshot", "revision": 1, "view": view})
        assert agent.wait_applied(1)
        r = udhcpc(scripts, "n1")
        assert r.returncode == 0 and "lease of 203.0.113.9 obtained from 203.0.113.126" in r.stderr, r.stderr
        got = [x for x in records(out_file(scripts, "n1")) if x["event"] == "bound"][-1]
        assert (got["mtu"], got["router"], got["serverid"]) == ("1400", "", "203.0.113.126")
        nsexec(topology.vm_ns("n1"), "ip", "link", "set", "eth0", "address", "02:00:00:00:09:99")
        assert udhcpc(scripts, "n1", "-t", "1").returncode != 0            # unknown MAC: silence
        assert feature.counters()[nid] == {"offers": 1, "acks": 1, "ignored": 1}
    finally:
        agent.stop()
        agent.control.q.put(None)   # type: ignore[attr-defined]
        topology.del_vm("n1")
        subprocess.run(["ip", "netns", "del", ns], check=False)
