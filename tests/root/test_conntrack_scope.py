"""Conntrack only where a rule needs state, on real packets: `vxnet lab` (server + 3 agents).

VMs c1@h1, c2@h2 in the default (stateful) group; n1@h1, n2@h2 with port security off. Read
from h1's conntrack table (the bridge's zone) after pings:
- c1 -> c2 (stateful both ends): tracked in the network's zone;
- n1 -> n2 (no port security either end): not tracked at all, and the `untracked` rule's
  counter grew; the pings pass;
- n1 -> c1: refused as before (n1 is not in c1's group); c1 -> n1: answered, through
  conntrack (n1's replies go to c1's MAC: tracked), and tracked on h1.
"""

from __future__ import annotations

import re

import pytest

from tests.root.conftest import Lab, needs_root
from tests.root.helpers import nsexec, ping
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]


def flows(ip: str) -> list[str]:
    out = nsexec(topology.host_ns(1), "conntrack", "-L", "-s", ip).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def untracked_packets() -> int:
    out = nsexec(topology.host_ns(1), "nft", "list", "chain", "inet", "vxnet_sg", "zone").stdout
    m = re.search(r"counter packets (\d+) bytes \d+ notrack accept comment \"vxnet:untracked#", out)
    assert m, out
    return int(m.group(1))


def test_only_frames_from_or_to_a_stateful_port_are_tracked(lab3: Lab) -> None:
    net, _ = lab3.network("alice", "192.0.2.0/24", "ct")
    ports = {}
    for name, host, ip in (("c1", "h1", "192.0.2.31"), ("c2", "h2", "192.0.2.32"),
                           ("n1", "h1", "192.0.2.41"), ("n2", "h2", "192.0.2.42")):
        ports[name] = lab3.port("alice", net["id"], ip)
        if name.startswith("n"):
            with lab3.api("alice") as c:
                r = c.put(f"/ports/{ports[name]['id']}",
                          json={"port": {"security_groups": [], "port_security_enabled": False}})
                assert r.status_code == 200, r.text
        lab3.vm(name, host, ports[name])
    for p in ports.values():
        lab3.wait_status(p["id"], "ACTIVE", timeout=30)

    assert ping("c1", "192.0.2.32", count=3, interval=0.05) == 3
    tracked = flows("192.0.2.31")
    assert any("dst=192.0.2.32" in f and "zone=" in f for f in tracked), tracked

    before = untracked_packets()
    assert ping("n1", "192.0.2.42", count=3, interval=0.05) == 3
    assert flows("192.0.2.41") == []
    assert untracked_packets() >= before + 3

    # n1 -> c1: the default group lets members in only; n1 is not a member: still refused
    # (a dropped packet's conntrack entry is never confirmed, so nothing to read there).
    assert ping("n1", "192.0.2.31", count=2, interval=0.05) == 0
    # c1 -> n1 (c1's egress is open): answered through conntrack, tracked.
    assert ping("c1", "192.0.2.41", count=2, interval=0.05) == 2
    assert any("dst=192.0.2.41" in f for f in flows("192.0.2.31")), flows("192.0.2.31")
