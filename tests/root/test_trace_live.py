"""`vxnet trace --live` against a real lab: on a healthy data plane every checked hop is "ok"
and the verdict matches a real ping; a hand-broken data plane (an FDB entry deleted, the
security-group table flushed, while the agents are stopped so they cannot repair it) is
reported as drift on the exact hop, and the real packet is indeed lost. Restarted agents repair
it and the trace is clean again."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.root.conftest import needs_root
from tests.root.helpers import nsexec, ping
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
