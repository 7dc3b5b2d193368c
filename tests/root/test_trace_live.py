"""`vxnet trace --live` against a real lab: on a healthy data plane every checked hop is "ok"
and the verdict matches a real ping; a hand-broken data plane (an FDB entry deleted, the
security-group table flushed, while the agents are stopped so they cannot repair it) is
reported as drift on the exact hop, and the real packet is indeed lost. Restarted agents repair
it and the trace is clean again. IPv6: the anti-spoofing hop names the chain's own IPv6 rules
(`mark6`, `spoof-ip6`, `dhcp6-server`), each found in the kernel, and agrees with real ping6
from each source."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.root.conftest import needs_root
from tests.root.helpers import nsexec, ping, wait_for
from tests.root.test_ipv6_host import enable_ipv6, ping6, ping6_from, v6_of
from vxnet.compute import naming
from vxnet.lab import lab, topology

pytestmark = needs_root
BIN = os.path.dirname(sys.executable)


def _trace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.path.join(BIN, "vxnet"), "trace", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_live_trace_ok_then_drift_then_repaired(lab3) -> None:
    net, _ = lab3.network("alice", "192.0.2.0/24")
    p1 = lab3.port("alice", net["id"], ip="192.0.2.21")
    p2 = lab3.port("alice", net["id"], ip="192.0.2.22")
    lab3.vm("tr1", "h1", p1)
    lab3.vm("tr2", "h2", p2)
    lab3.wait_status(p1["id"], "ACTIVE")
    lab3.wait_status(p2["id"], "ACTIVE")
    assert ping("tr1", "192.0.2.22", count=3) == 3

    ok = _trace("--from", "tr1", "--to", "192.0.2.22", "--live")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verdict: DELIVERED" in ok.stdout
    assert "DRIFT" not in ok.stdout
    assert ok.stdout.count("live: ok") >= 3, ok.stdout          # port security, FDB, SG rule
    assert f"dst {topology.underlay_ip(2)}" in ok.stdout         # the VXLAN hop names the VTEP

    # Break h1's FDB entry for tr2 with h1's agent stopped (it would repair it in milliseconds).
    lab.stop_agent(lab3.state, "h1")
    vx = naming.vxlan_name(net["id"])
    nsexec(topology.host_ns(1), "bridge", "fdb", "del", p2["mac_address"], "dev", vx, "dst", topology.underlay_ip(2))
    assert ping("tr1", "192.0.2.22", count=2) == 0
    broken = _trace("--from", "tr1", "--to", "192.0.2.22", "--live")
    assert broken.returncode == 3, broken.stdout
    assert f"DRIFT: fdb {p2['mac_address']} dev {vx} dst {topology.underlay_ip(2)} missing" in broken.stdout

    # Flush h2's security-group table (its agent stopped too): the ingress hop reports drift.
    lab.stop_agent(lab3.state, "h2")
    nsexec(topology.host_ns(2), "nft", "flush", "table", "inet", "vxnet_sg")
    flushed = _trace("--from", "tr2", "--to", "192.0.2.21", "--live")
    assert flushed.returncode == 3, flushed.stdout
    assert "DRIFT: no rule for security-group rule" in flushed.stdout, flushed.stdout

    # Agents back: the first pass reads the kernel and repairs both.
    st = lab.load_state()       # the current state (it holds the VMs added since lab3 started)
    lab.start_agent(st, "h1")
    lab.start_agent(st, "h2")
    for _ in range(50):
        if ping("tr1", "192.0.2.22", count=1, wait=0.5) == 1:
            break
    again = _trace("--from", "tr1", "--to", "192.0.2.22", "--live")
    back = _trace("--from", "tr2", "--to", "192.0.2.21", "--live")
    assert again.returncode == 0 and back.returncode == 0, again.stdout + back.stdout
    assert ping("tr2", "192.0.2.21", count=2) == 2


def test_live_trace_ipv6_port_security(lab3) -> None:
    net, _ = lab3.network("alice", "198.51.100.0/24", name="v6trace")
    with lab3.api("alice") as c:
        s6 = c.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "2001:db8:7::/64", "ip_version": 6,
                                                 "ipv6_address_mode": "dhcpv6-stateful"}})
        assert s6.status_code == 201, s6.text
    p5 = lab3.port("alice", net["id"])
    p6 = lab3.port("alice", net["id"])
    with lab3.api("alice") as c:       # a pair with an IPv6 prefix
        r = c.put(f"/ports/{p5['id']}", json={"port": {"allowed_address_pairs": [{"ip_address": "2001:db8:7::90/124"}]}})
        assert r.status_code == 200, r.text
    for name, host, p in (("tr5", "h1", p5), ("tr6", "h2", p6)):
        lab3.vm(name, host, p)
        lab3.wait_status(p["id"], "ACTIVE")
        enable_ipv6(name)
        assert nsexec(topology.vm_ns(name), "ip", "-6", "addr", "add", v6_of(p) + "/64", "dev", "eth0",
                      "nodad").returncode == 0
    ns5 = topology.vm_ns("tr5")
    for extra in ("2001:db8:7::91", "2001:db8:7::a1"):     # in the pair; outside it (deprecated: never
        assert nsexec(ns5, "ip", "-6", "addr", "add", extra + "/64", "dev", "eth0", "nodad",   # a default source)
                      "preferred_lft", "0").returncode == 0
    # tr6 knows tr5's MAC for both extra sources: a reply never waits on neighbour discovery for
    # an address in a prefix pair (no suppression entry; it does not cross hosts), so a lost
    # ping can only be port security's doing.
    for extra in ("2001:db8:7::91", "2001:db8:7::a1"):
        assert nsexec(topology.vm_ns("tr6"), "ip", "-6", "neigh", "replace", extra, "lladdr", p5["mac_address"],
                      "dev", "eth0", "nud", "permanent").returncode == 0
    dst = v6_of(p6)
    wait_for(lambda: ping6("tr5", dst, 1) == 1, "ping6 tr5 -> tr6", timeout=20)
    own = _trace("--from", "tr5", "--to", dst, "--live")
    assert own.returncode == 0, own.stdout + own.stderr
    assert "verdict: DELIVERED" in own.stdout and "rule mark6" in own.stdout and "DRIFT" not in own.stdout, own.stdout
    pair = _trace("--from", "tr5", "--to", dst, "--src-ip", "2001:db8:7::91", "--live")
    assert pair.returncode == 0 and "rule mark6" in pair.stdout, pair.stdout
    assert ping6_from("tr5", "2001:db8:7::91", dst) == 1
    spoofed = _trace("--from", "tr5", "--to", dst, "--src-ip", "2001:db8:7::a1", "--live")
    assert "verdict: DROPPED" in spoofed.stdout and "rule spoof-ip6" in spoofed.stdout, spoofed.stdout
    assert "DRIFT" not in spoofed.stdout and spoofed.stdout.count("live: ok") >= 1, spoofed.stdout
    assert ping6_from("tr5", "2001:db8:7::a1", dst) == 0
    server = _trace("--from", "tr5", "--to", dst, "--proto", "udp", "--sport", "547", "--dport", "546", "--live")
    assert "verdict: DROPPED" in server.stdout and "rule dhcp6-server" in server.stdout, server.stdout
    assert "DRIFT" not in server.stdout, server.stdout
