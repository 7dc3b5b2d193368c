"""br_netfilter per bridge, on real packets: `vxnet lab` (server + 2 agents).

Network "open": n1@h1, n2@h2 with port security off. Network "sg": c1@h1, c2@h2 in the default
(stateful) group, d1@h1 in a group of its own with only the default egress rules.
- Both hosts: the namespace-wide `bridge-nf-call-iptables`/`-ip6tables` are 0; the "open"
  bridge's own nf_call_iptables/ip6tables are off, the "sg" bridge's on.
- "open" traffic flows and never reaches the inet hooks (the `untracked` rule's counter, which
  every frame through br_netfilter that no stateful port sends or receives hits, does not move).
- The groups still filter on "sg": c1 <-> c2 answered (members), d1 -> c1 and d1 -> c2 refused.
- Port security switched on for n1 (default group): h1's "open" bridge turns br_netfilter on
  (h2's stays off: n2 there is unfiltered), and n2 -> n1 is then refused, n1 -> n2 answered.
- Drift: with the agents stopped, h1's "sg" bridge switched off by hand is reported by `vxnet
  doctor --local` (kind `bridges`); the restarted agent switches it on again, and d1 is still
  refused.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.root.conftest import Lab, lab_session, needs_root
from tests.root.helpers import nsexec, ping, wait_for
from vxnet.compute import naming
from vxnet.lab import lab, topology

pytestmark = [pytest.mark.root, needs_root]
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def brlab(tmp_path_factory) -> Iterator[Lab]:
    with lab_session(tmp_path_factory, "brnflab", 2, wait_hosts={"h1", "h2"}) as g:
        yield g


def sysctl(host: int, key: str) -> str:
    return nsexec(topology.host_ns(host), "sysctl", "-n", key).stdout.strip()


def nf_call(host: int, bridge: str) -> tuple[int, int]:
    """(nf_call_iptables, nf_call_ip6tables) of `bridge` on host `host`, read with `ip -d -j`."""
    out = nsexec(topology.host_ns(host), "ip", "-d", "-j", "link", "show", "dev", bridge).stdout
    data = json.loads(out)[0]["linkinfo"]["info_data"]
    return int(data["nf_call_iptables"]), int(data["nf_call_ip6tables"])


def untracked_packets(host: int = 1) -> int:
    out = nsexec(topology.host_ns(host), "nft", "list", "chain", "inet", "vxnet_sg", "zone").stdout
    m = re.search(r"counter packets (\d+) bytes \d+ notrack accept comment \"vxnet:untracked#", out)
    assert m, out
    return int(m.group(1))


def test_br_netfilter_only_on_bridges_with_a_filtered_port(brlab: Lab) -> None:
    open_net, _ = brlab.network("alice", "192.0.2.0/25", "open")
    sg_net, _ = brlab.network("alice", "192.0.2.128/25", "sg")
    with brlab.api("alice") as c:
        r = c.post("/security-groups", json={"security_group": {"name": "other"}})
        assert r.status_code == 201, r.text
        other = r.json()["security_group"]["id"]
    ports = {}
    for name, host, net, ip in (("n1", "h1", open_net, "192.0.2.41"), ("n2", "h2", open_net, "192.0.2.42"),
                                ("c1", "h1", sg_net, "192.0.2.131"), ("c2", "h2", sg_net, "192.0.2.132"),
                                ("d1", "h1", sg_net, "192.0.2.141")):
        ports[name] = brlab.port("alice", net["id"], ip)
        body = ({"security_groups": [], "port_security_enabled": False} if name.startswith("n")
                else {"security_groups": [other]} if name == "d1" else None)
        if body:
            with brlab.api("alice") as c:
                r = c.put(f"/ports/{ports[name]['id']}", json={"port": body})
                assert r.status_code == 200, r.text
        brlab.vm(name, host, ports[name])
    for p in ports.values():
        brlab.wait_status(p["id"], "ACTIVE", timeout=30)
    br_open, br_sg = naming.bridge_name(open_net["id"]), naming.bridge_name(sg_net["id"])

    for h in (1, 2):
        assert sysctl(h, "net.bridge.bridge-nf-call-iptables") == "0"
        assert sysctl(h, "net.bridge.bridge-nf-call-ip6tables") == "0"
        assert nf_call(h, br_open) == (0, 0)
        assert nf_call(h, br_sg) == (1, 1)

    before = untracked_packets()
    assert ping("n1", "192.0.2.42", count=3, interval=0.05) == 3
    assert untracked_packets() < before + 3         # the inet hooks never saw those frames (else +6 on h1)

    assert ping("c1", "192.0.2.132", count=2, interval=0.05) == 2
    assert ping("c2", "192.0.2.131", count=2, interval=0.05) == 2
    assert ping("d1", "192.0.2.132", count=2, interval=0.05) == 0      # c2's ingress: members only
    assert ping("d1", "192.0.2.131", count=2, interval=0.05) == 0      # same host, same bridge
    assert ping("c1", "192.0.2.141", count=2, interval=0.05) == 0      # d1's group: no ingress rule

    # Port security on for n1 (default group): h1's "open" bridge needs br_netfilter now.
    with brlab.api("alice") as c:
        r = c.put(f"/ports/{ports['n1']['id']}", json={"port": {"port_security_enabled": True}})
        assert r.status_code == 200, r.text
        sg_default = c.get("/security-groups", params={"name": "default"}).json()["security_groups"][0]["id"]
        r = c.put(f"/ports/{ports['n1']['id']}", json={"port": {"security_groups": [sg_default]}})
        assert r.status_code == 200, r.text
    wait_for(lambda: nf_call(1, br_open) == (1, 1), "h1's open bridge passes br_netfilter")
    assert nf_call(2, br_open) == (0, 0)
    wait_for(lambda: ping("n1", "192.0.2.42", count=1) == 1, "n1 -> n2 answered (n1's egress is open)")
    assert ping("n2", "192.0.2.41", count=2, interval=0.05) == 0      # n2 is no member of n1's group

    # Drift: the agents stopped, the "sg" bridge's switch turned off by hand: the doctor sees it.
    st = lab.load_state()
    for h in ("h1", "h2"):
        lab.stop_agent(st, h)
    try:
        nsexec(topology.host_ns(1), "ip", "link", "set", "dev", br_sg, "type", "bridge",
               "nf_call_iptables", "0", "nf_call_ip6tables", "0")
        assert nf_call(1, br_sg) == (0, 0)
        found = subprocess.run([os.path.join(BIN, "vxnet"), "doctor", "--local", "--json"], capture_output=True,
                               text=True, timeout=120, check=False)
        assert found.returncode == 1, found.stdout + found.stderr
        res = json.loads(found.stdout)["results"]
        drift = res["h1"]["drift"]
        assert [d["kind"] for d in drift] == ["bridges"] and br_sg in drift[0]["object"], drift
        assert res["h2"]["drift"] == [], res["h2"]
    finally:
        st = lab.load_state()
        for h in ("h1", "h2"):
            lab.start_agent(st, h)
    wait_for(lambda: nf_call(1, br_sg) == (1, 1), "h1's sg bridge repaired", timeout=30)
    assert ping("d1", "192.0.2.131", count=2, interval=0.05) == 0
    assert ping("c2", "192.0.2.131", count=2, interval=0.05) == 2


def test_the_namespace_switches_stay_on_for_a_bridge_that_is_not_ours(brlab: Lab) -> None:
    # Another program's bridge without a switch of its own (docker0, libvirt's) may rely on the
    # namespace-wide sysctls: the agent must not turn them off under it.
    ns2 = topology.host_ns(2)
    nsexec(ns2, "ip", "link", "add", "vxtforeign0", "type", "bridge")
    try:
        for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
            nsexec(ns2, "sysctl", "-qw", f"{key}=1")      # as that program would have set them
        log_path = os.path.join(lab.state_dir(), "agent-h2.log")

        def bridge_on_h2(name: str, cidr: str, ip: str) -> str:
            """A new network with an unfiltered port on h2 (a bridge created there): its bridge."""
            net, _ = brlab.network("alice", cidr, name)
            p = brlab.port("alice", net["id"], ip)
            with brlab.api("alice") as c:
                r = c.put(f"/ports/{p['id']}", json={"port": {"security_groups": [], "port_security_enabled": False}})
                assert r.status_code == 200, r.text
            brlab.vm(name, "h2", p)
            brlab.wait_status(p["id"], "ACTIVE", timeout=30)
            return naming.bridge_name(net["id"])

        bridge_on_h2("t3", "198.51.100.0/25", "198.51.100.10")
        assert sysctl(2, "net.bridge.bridge-nf-call-iptables") == "1"
        assert sysctl(2, "net.bridge.bridge-nf-call-ip6tables") == "1"
        with open(log_path) as f:
            assert "bridge-nf-call sysctls left as they are: bridge(s) vxtforeign0" in f.read()
        # with a switch of its own the foreign bridge no longer needs them: the next bridge turns them off
        nsexec(ns2, "ip", "link", "set", "dev", "vxtforeign0", "type", "bridge",
               "nf_call_iptables", "1", "nf_call_ip6tables", "1")
        bridge_on_h2("t4", "198.51.100.128/25", "198.51.100.140")
        assert sysctl(2, "net.bridge.bridge-nf-call-iptables") == "0"
        assert sysctl(2, "net.bridge.bridge-nf-call-ip6tables") == "0"
    finally:
        nsexec(ns2, "ip", "link", "del", "vxtforeign0")
