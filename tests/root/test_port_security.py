"""Port security on real frames: `vxnet lab` (server + 3 agents), ports through the API.

A VM sends spoofed frames from raw sockets (or with a changed MAC / an extra address); we
count what leaves its host port: the rule counters of `table bridge vxnet_ps` on its host, a
capture on the underlay (remote peer) and a capture inside a VM on the same bridge (local peer).
- spoofed source MAC, source IP, ARP sender MAC, ARP sender IP: 0 frames get out; the same
  probe with the real addresses does (so the captures can see);
- an allowed address pair (IP and CIDR) passes;
- `port_security_enabled=false` lifts it (the spoofed frames do reach the underlay);
- a rogue DHCP offer (udp sport 67) from a VM never reaches another VM, unless port security
  is off on the sender (the control that shows the peer would receive it).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.root.conftest import Lab, needs_root
from tests.root.helpers import capture, nsexec, ping
from vxnet.compute import firewall_ps as fwps
from vxnet.compute import naming
from vxnet.dataplane.nft_driver import NftDriver
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

# Raw frames from inside a VM: ARP requests with chosen sender MAC/IP, a UDP datagram with
# chosen MACs/IPs/ports (checksum 0 = none, valid for UDP over IPv4).
RAW = r"""
import socket, struct, sys
kind = sys.argv[1]
src_mac, sha, spa, tpa = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
count = int(sys.argv[6]) if len(sys.argv) > 6 else 3
mac = lambda m: bytes.fromhex(m.replace(":", ""))
ip = socket.inet_aton
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
if kind == "arp":
    frame = mac("ff:ff:ff:ff:ff:ff") + mac(src_mac) + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) \
        + mac(sha) + ip(spa) + b"\x00" * 6 + ip(tpa)
else:   # udp: sha = destination MAC ("-": broadcast), spa = source IP, tpa = "sport:dport:dst_ip"
    sport, dport, dst = tpa.split(":")
    payload = b"vxnet-probe" + b"\x00" * 300
    udp = struct.pack("!HHHH", int(sport), int(dport), 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, ip(spa), ip(dst))
    csum = sum(struct.unpack("!10H", hdr)); csum = (csum & 0xFFFF) + (csum >> 16); csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
    hdr = hdr[:10] + struct.pack("!H", csum) + hdr[12:]
    frame = mac("ff:ff:ff:ff:ff:ff" if sha == "-" else sha) + mac(src_mac) + b"\x08\x00" + hdr + udp
for _ in range(count):
    s.send(frame)
"""


def raw(vm: str, *args: str) -> None:
    r = nsexec(topology.vm_ns(vm), sys.executable, "-c", RAW, *args)
    assert r.returncode == 0, r.stderr


@contextmanager
def vm_capture(vm: str, bpf: str) -> Iterator[list[str]]:
    """tcpdump on a VM's eth0; the list fills with one line per captured frame at exit."""
    proc = subprocess.Popen(["ip", "netns", "exec", topology.vm_ns(vm), "tcpdump", "-i", "eth0", "-n", "-e", "-l",
                             "--immediate-mode", bpf], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        deadline = time.time() + 5
        buf = ""
        while "listening on" not in buf and time.time() < deadline:
            buf += proc.stderr.readline() if proc.stderr else ""
        yield lines
        time.sleep(0.3)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=5)
        lines += [ln for ln in out.splitlines() if ln.strip()]


def counters(host: int, port_id: str) -> dict[str, int]:
    """Packets per rule identity of a port's anti-spoofing chain on its host: the shared chain
    `pre_ports` sends its tap to (`ps`, or `ps6` for a port with IPv6 pairs), whose counters
    count every such port of the host: callers compare before and after their own frames."""
    c = NftDriver(topology.host_ns(host)).counters("bridge", "vxnet_ps")
    pre = nsexec(topology.host_ns(host), "nft", "list", "map", "bridge", "vxnet_ps", "pre_ports").stdout
    chain = fwps.PS_SHARED6 if f'"{naming.tap_name(port_id)}" : jump {fwps.PS_SHARED6}' in pre else fwps.PS_SHARED
    return {kind: pk for (ch, kind), (pk, _) in c.items() if ch == chain}


def wait_chain(host: int, port_id: str, present: bool = True) -> None:
    """Wait until the port's tap is (or is no longer) dispatched to an anti-spoofing chain."""
    tap = f'"{naming.tap_name(port_id)}"'
    deadline = time.time() + 10
    while time.time() < deadline:
        out = nsexec(topology.host_ns(host), "nft", "list", "map", "bridge", "vxnet_ps", "pre_ports").stdout
        if (tap in out) == present:
            return
        time.sleep(0.05)
    raise AssertionError(f"{tap} {'absent from' if present else 'still in'} pre_ports on h{host}")


class Ports:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.net, _ = lab.network("alice", "192.0.2.0/24", "ps")
        self.ports: dict[str, dict] = {}

    def add(self, name: str, host: str, ip: str, **extra: object) -> dict:
        with self.lab.api("alice") as c:
            r = c.post("/ports", json={"port": {"network_id": self.net["id"], "fixed_ips": [{"ip_address": ip}],
                                                **extra}})
            assert r.status_code == 201, r.text
            p = r.json()["port"]
        self.lab.vm(name, host, p)
        self.lab.wait_status(p["id"], "ACTIVE")
        self.ports[name] = p
        return p


@pytest.fixture(scope="module")
def vms(lab3: Lab) -> Ports:
    """s1 (h1) sends; s2 (h2) is its remote peer, s3 (h1) its local peer; all in the default group."""
    v = Ports(lab3)
    v.add("s1", "h1", "192.0.2.21")
    v.add("s2", "h2", "192.0.2.22")
    v.add("s3", "h1", "192.0.2.23")
    assert ping("s1", "192.0.2.22") == 2 and ping("s1", "192.0.2.23") == 2
    return v


def test_spoofed_source_ip_and_mac_never_leave(vms: Ports) -> None:
    s1 = vms.ports["s1"]
    ns = topology.vm_ns("s1")
    before = counters(1, s1["id"])
    # Spoofed source IP; the peer's MAC is pinned so no ARP with that sender IP is needed.
    nsexec(ns, "ip", "addr", "add", "192.0.2.99/32", "dev", "eth0")
    nsexec(ns, "ip", "neigh", "replace", "192.0.2.22", "lladdr", vms.ports["s2"]["mac_address"], "dev", "eth0",
           "nud", "permanent")
    with capture() as frames:
        assert ping("s1", "192.0.2.22", count=3, interval=0.1, wait=0.5) == 3      # control: real source
        r = nsexec(ns, "ping", "-n", "-c", "3", "-i", "0.1", "-W", "0.5", "-I", "192.0.2.99", "192.0.2.22")
        assert " 0 received" in r.stdout, r.stdout
    assert not [f for f in frames if "192.0.2.99" in f], "\n".join(frames)
    assert len([f for f in frames if "192.0.2.21 > 192.0.2.22" in f and "echo request" in f]) == 3
    after = counters(1, s1["id"])
    assert after["spoof-ip"] - before.get("spoof-ip", 0) == 3
    nsexec(ns, "ip", "addr", "del", "192.0.2.99/32", "dev", "eth0")

    # Spoofed source MAC: raw frames with a forged MAC (and a control with the real one), then
    # the VM changes its MAC: nothing it sends gets out.
    s2_mac = vms.ports["s2"]["mac_address"]
    with capture() as frames:
        raw("s1", "udp", "02:00:00:00:99:99", s2_mac, "192.0.2.21", "5000:5001:192.0.2.22")
        raw("s1", "udp", s1["mac_address"], s2_mac, "192.0.2.21", "5000:5002:192.0.2.22")
        nsexec(ns, "ip", "link", "set", "eth0", "address", "02:00:00:00:99:99")
        assert ping("s1", "192.0.2.22", count=3, interval=0.1, wait=0.5) == 0
        nsexec(ns, "ip", "link", "set", "eth0", "address", s1["mac_address"])
    assert not [f for f in frames if "02:00:00:00:99:99" in f], "\n".join(frames)
    sent = [f for f in frames if "192.0.2.21.5000 > 192.0.2.22.5002" in f and "unreachable" not in f]
    assert len(sent) == 3, "\n".join(frames)
    assert counters(1, s1["id"])["spoof-mac"] - after.get("spoof-mac", 0) >= 4
    assert ping("s1", "192.0.2.22") == 2
    nsexec(ns, "ip", "neigh", "del", "192.0.2.22", "dev", "eth0")


def test_forged_arp_never_leaves(vms: Ports) -> None:
    s1 = vms.ports["s1"]
    mac = s1["mac_address"]
    before = counters(1, s1["id"])
    with vm_capture("s3", "arp") as seen:
        raw("s1", "arp", mac, mac, "192.0.2.21", "192.0.2.23")                 # control: the truth
        raw("s1", "arp", mac, "02:00:00:00:66:66", "192.0.2.21", "192.0.2.23")  # forged sender MAC
        raw("s1", "arp", mac, mac, "192.0.2.66", "192.0.2.23")                  # forged sender IP
    req = [ln for ln in seen if "Request who-has 192.0.2.23" in ln]
    assert len([ln for ln in req if "tell 192.0.2.21" in ln and mac in ln]) == 3, "\n".join(seen)
    assert not [ln for ln in seen if "192.0.2.66" in ln or "02:00:00:00:66:66" in ln], "\n".join(seen)
    after = counters(1, s1["id"])
    assert after["spoof-arp"] - before.get("spoof-arp", 0) == 6


def test_allowed_address_pairs_pass(vms: Ports) -> None:
    p = vms.add("s4", "h1", "192.0.2.24", allowed_address_pairs=[
        {"ip_address": "192.0.2.200"}, {"ip_address": "203.0.113.0/28"}])
    ns = topology.vm_ns("s4")
    nsexec(ns, "ip", "addr", "add", "192.0.2.200/32", "dev", "eth0")
    nsexec(ns, "ip", "addr", "add", "203.0.113.5/32", "dev", "eth0")
    # The peer learns where the pair addresses live (no neighbour entry is published for them).
    for ip in ("192.0.2.200", "203.0.113.5"):
        nsexec(topology.vm_ns("s2"), "ip", "neigh", "replace", ip, "lladdr", p["mac_address"], "dev", "eth0",
               "nud", "permanent")
    nsexec(topology.vm_ns("s2"), "ip", "route", "add", "203.0.113.0/28", "dev", "eth0")
    nsexec(ns, "ip", "neigh", "replace", "192.0.2.22", "lladdr", vms.ports["s2"]["mac_address"], "dev", "eth0",
           "nud", "permanent")
    for src in ("192.0.2.200", "203.0.113.5"):
        r = nsexec(ns, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-I", src, "192.0.2.22")
        assert " 2 received" in r.stdout, (src, r.stdout)
    r = nsexec(ns, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "0.5", "-I", "192.0.2.24", "192.0.2.22")
    assert " 2 received" in r.stdout
    nsexec(ns, "ip", "addr", "add", "203.0.113.99/32", "dev", "eth0")     # outside the /28
    r = nsexec(ns, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "0.5", "-I", "203.0.113.99", "192.0.2.22")
    assert " 0 received" in r.stdout


def test_rogue_dhcp_server_is_dropped(vms: Ports) -> None:
    s1 = vms.ports["s1"]
    before = counters(1, s1["id"])
    with vm_capture("s3", "udp port 68") as seen:
        raw("s1", "udp", s1["mac_address"], "-", "192.0.2.21", "67:68:255.255.255.255")   # an offer
        # Control: the same broadcast to port 68 from source port 69 reaches s3 (so the capture sees).
        raw("s1", "udp", s1["mac_address"], "-", "192.0.2.21", "69:68:255.255.255.255")
    assert len(seen) == 3 and all("192.0.2.21.69 > 255.255.255.255.68" in ln for ln in seen), "\n".join(seen)
    assert counters(1, s1["id"])["dhcp-server"] - before.get("dhcp-server", 0) == 3


def test_port_security_off_lifts_it(vms: Ports) -> None:
    # s5 starts with port security and its group, then both are removed (the API refuses to
    # disable port security while groups are set).
    p = vms.add("s5", "h1", "192.0.2.25")
    with vms.lab.api("alice") as c:
        r = c.put(f"/ports/{p['id']}", json={"port": {"port_security_enabled": False}})
        assert r.status_code == 409, r.text                         # groups still set
        r = c.put(f"/ports/{p['id']}", json={"port": {"security_groups": [], "port_security_enabled": False}})
        assert r.status_code == 200, r.text
    wait_chain(1, p["id"], present=False)
    mac, s2_mac = p["mac_address"], vms.ports["s2"]["mac_address"]
    spoofed = "192.0.2.99.5000 > 192.0.2.22.5001"
    with vm_capture("s3", "udp port 68 or arp") as seen, capture() as frames:
        raw("s5", "udp", mac, "-", "192.0.2.25", "67:68:255.255.255.255")             # DHCP offer: reaches s3
        raw("s5", "arp", mac, "02:00:00:00:66:66", "192.0.2.66", "192.0.2.23")          # forged ARP: reaches s3
        raw("s5", "udp", mac, s2_mac, "192.0.2.99", "5000:5001:192.0.2.22")             # spoofed source IP to s2
    assert len([ln for ln in seen if "192.0.2.25.67 > 255.255.255.255.68" in ln]) == 3, "\n".join(seen)
    assert len([ln for ln in seen if "tell 192.0.2.66" in ln]) == 3, "\n".join(seen)
    assert len([f for f in frames if spoofed in f and "unreachable" not in f]) == 3, "\n".join(frames)
    # Port security back on: the same frames are dropped again.
    with vms.lab.api("alice") as c:
        r = c.put(f"/ports/{p['id']}", json={"port": {"port_security_enabled": True}})
        assert r.status_code == 200, r.text
    wait_chain(1, p["id"], present=True)
    with vm_capture("s3", "udp port 68 or arp") as seen, capture() as frames:
        raw("s5", "udp", mac, "-", "192.0.2.25", "67:68:255.255.255.255")
        raw("s5", "arp", mac, "02:00:00:00:66:66", "192.0.2.66", "192.0.2.23")
        raw("s5", "udp", mac, s2_mac, "192.0.2.99", "5000:5001:192.0.2.22")
    assert seen == [], "\n".join(seen)
    assert not [f for f in frames if spoofed in f], "\n".join(frames)
