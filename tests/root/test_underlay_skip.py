"""The underlay's own VXLAN skips `inet vxnet_sg`'s prerouting `zone` chain at its first rule
(issue 18), and nothing a VM sends does, on real packets: `vxnet lab` (server + 3 agents).

VMs u1@h1, u2@h2 in the default (stateful) group, on one network:
- u1 pings u2: every request reaches h2 as a VXLAN packet on the underlay and is counted by the
  `underlay-skip` rule there; h2 still tracks that underlay flow, in zone 0 (the skip accepts,
  it does not untrack: the host's own conntrack is what it was);
- u1 sends UDP to port 4789 of u2 (bridged through br_netfilter on h1): tracked on h1 in the
  network's zone, i.e. it walked the zone chain to its `ct zone set` rule;
- u1 sends UDP to port 4789 of its host's underlay address (the bridge's MAC known, a route
  to it): dropped by the host guard (the input `host` chain), and not counted by the skip.
"""

from __future__ import annotations

import re

import pytest

from tests.root.conftest import Lab, needs_root
from tests.root.helpers import nsexec, ping
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

SENDS = 20


def counter(host: int, chain: str, kind: str) -> int:
    """Packets counted by the rule of `vxnet_sg`'s `chain` on host `host` whose comment is `vxnet:<kind>#...`."""
    out = nsexec(topology.host_ns(host), "nft", "list", "chain", "inet", "vxnet_sg", chain).stdout
    m = re.search(rf"counter packets (\d+) bytes \d+ .*comment \"vxnet:{kind}#", out)
    assert m, out
    return int(m.group(1))


def send_udp(vm: str, ip: str, port: int, count: int) -> None:
    """`count` UDP datagrams from VM `vm` to `ip`:`port`."""
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for _ in range({count}): s.sendto(b'x' * 64, ('{ip}', {port}))")
    r = nsexec(topology.vm_ns(vm), "python3", "-c", code)
    assert r.returncode == 0, r.stderr


def conntrack(host: int, *match: str) -> list[str]:
    out = nsexec(topology.host_ns(host), "conntrack", "-L", "-p", "udp", *match).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def test_underlay_vxlan_skips_the_zone_chain_and_a_vm_sending_to_4789_does_not(lab3: Lab) -> None:
    net, _ = lab3.network("alice", "192.0.2.0/24", "uskip")
    u1 = lab3.port("alice", net["id"], "192.0.2.61")
    u2 = lab3.port("alice", net["id"], "192.0.2.62")
    lab3.vm("u1", "h1", u1)
    lab3.vm("u2", "h2", u2)
    for p in (u1, u2):
        lab3.wait_status(p["id"], "ACTIVE", timeout=30)
    ul1, ul2 = topology.underlay_ip(1), topology.underlay_ip(2)

    # The underlay's VXLAN: skipped on the receiving host, still tracked there in zone 0.
    before = counter(2, "zone", "underlay-skip")
    assert ping("u1", "192.0.2.62", count=5, interval=0.05) == 5
    assert counter(2, "zone", "underlay-skip") >= before + 5
    underlay = conntrack(2, "-s", ul1, "-d", ul2, "--dport", "4789")
    assert underlay and not any("zone=" in f for f in underlay), underlay

    # A VM's UDP to port 4789 of another VM: the zone chain set its network's zone on h1.
    send_udp("u1", "192.0.2.62", 4789, SENDS)
    flows = conntrack(1, "-s", "192.0.2.61", "-d", "192.0.2.62", "--dport", "4789")
    zone = re.search(r'"vxb-' + net["id"][:11] + r'" : (\d+)',
                     nsexec(topology.host_ns(1), "nft", "list", "chain", "inet", "vxnet_sg", "zone").stdout)
    assert zone and flows and all(f"zone={zone.group(1)}" in f for f in flows), (zone, flows)

    # A VM's UDP to port 4789 of its host (the bridge's MAC known: no ARP needed): the host
    # guard drops every datagram; the skip (which would end only the zone chain) took none of
    # them (a few underlay packets may cross meanwhile: NUD probes are unicast ARP over VXLAN).
    vm = topology.vm_ns("u1")
    br_mac = nsexec(topology.host_ns(1), "cat", f"/sys/class/net/vxb-{net['id'][:11]}/address").stdout.strip()
    nsexec(vm, "ip", "route", "replace", ul1, "dev", "eth0")
    nsexec(vm, "ip", "neigh", "replace", ul1, "lladdr", br_mac, "dev", "eth0", "nud", "permanent")
    guard0, skip0 = counter(1, "host", "host-guard"), counter(1, "zone", "underlay-skip")
    send_udp("u1", ul1, 4789, SENDS)
    assert counter(1, "host", "host-guard") >= guard0 + SENDS
    assert counter(1, "zone", "underlay-skip") < skip0 + SENDS
