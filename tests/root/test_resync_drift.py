"""Periodic resyncs of an unchanged host repair nothing (agent/core.py `_count_drift`), on a real
`vxnet lab` whose agents resync every `RESYNC` s, with the firewall (default security group),
DHCP (a subnet with DHCP, VMs served by it), QoS (bandwidth limits and a DSCP mark) and metadata
features in use:
- several resyncs with nothing changed (on h1 another program commits an nftables transaction
  meanwhile, so its firewall must read its tables back): no "repaired drift" log line, `vxnet
  status` reports 0 drift repairs on every host, the kernel objects are the very ones loaded at
  first (same rule handles and qdiscs: nothing was reloaded), and h2, which nobody touched,
  committed no nftables transaction at all (its ruleset generation did not move);
- one element of the security-group table deleted by another program is put back by the next
  resync (and counted), the table's rules untouched;
- real drift (the security-group table flushed, the DHCP and metadata steering tables deleted,
  the tap's shaper deleted) is repaired by the next resync and counted under each feature's kind.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator

import pytest

from tests.root.conftest import Lab, lab_session, needs_root
from tests.root.helpers import nsexec, ping, wait_for
from vxnet.compute import naming
from vxnet.compute.firewall import set_name
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

RESYNC = 1.0          # the lab's agents re-read the kernel this often


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    with lab_session(tmp_path_factory, "driftlab", 2, agent_args=["--resync", str(RESYNC)],
                     wait_hosts={"h1", "h2"}) as g:
        yield g


def log_lines(lab: Lab, host: str) -> list[str]:
    with open(os.path.join(lab.state_dir, f"agent-{host}.log")) as f:
        return f.readlines()


def repairs(lab: Lab, host: str) -> list[dict[str, int]]:
    """The agent's "repaired drift: {...}" log lines, parsed."""
    out = []
    for line in log_lines(lab, host):
        if m := re.search(r"repaired drift: (\{.*\})", line):
            out.append(json.loads(m.group(1).replace("'", '"')))
    return out


def status_drift(lab: Lab) -> dict[str, int]:
    with lab.api("admin") as c:
        r = c.get("/vxnet/status")
        assert r.status_code == 200, r.text
        return {h["host"]: int((h.get("drift") or {}).get("repaired") or 0) for h in r.json()["status"]["hosts"]}


def nft_json(host: int, family: str, table: str) -> dict:
    r = nsexec(topology.host_ns(host), "nft", "-j", "list", "table", family, table)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def rule_handles(host: int, family: str, table: str) -> list[int]:
    return sorted(int(i["rule"]["handle"]) for i in nft_json(host, family, table)["nftables"] if "rule" in i)


def genid(host: int) -> int:
    """The nftables ruleset generation of a host namespace (moves with every transaction)."""
    r = nsexec(topology.host_ns(host), sys.executable, "-c",
               "from vxnet.dataplane.nft_ledger import nft_genid; print(nft_genid())")
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def set_elements(host: int, name: str) -> set[str]:
    """The elements of a set of the security-group table, as the kernel lists them."""
    out = nft_json(host, *naming.SG_TABLE)["nftables"]
    s = next(i["set"] for i in out if "set" in i and i["set"]["name"] == name)
    return {e if isinstance(e, str) else json.dumps(e) for e in s.get("elem", [])}


def qdisc_handles(host: int, dev: str) -> list[tuple[str, str]]:
    r = nsexec(topology.host_ns(host), "tc", "-j", "qdisc", "show", "dev", dev)
    return sorted((q["kind"], q.get("handle", "")) for q in json.loads(r.stdout or "[]"))


def test_unchanged_host_repairs_nothing_then_real_drift_is_repaired(lab: Lab) -> None:
    net, _ = lab.network("alice", "192.0.2.0/24", "drift")
    p1 = lab.port("alice", net["id"], "192.0.2.31")
    p2 = lab.port("alice", net["id"], "192.0.2.32")
    with lab.api("admin") as admin:
        pol = admin.post("/qos/policies", json={"policy": {"name": "gold", "project_id": net["project_id"]}})
        assert pol.status_code == 201, pol.text
        pid = pol.json()["policy"]["id"]
        for direction, kbps in (("egress", 20000), ("ingress", 30000)):
            r = admin.post(f"/qos/policies/{pid}/bandwidth_limit_rules", json={"bandwidth_limit_rule": {
                "max_kbps": kbps, "max_burst_kbps": 2000, "direction": direction}})
            assert r.status_code == 201, r.text
        r = admin.post(f"/qos/policies/{pid}/dscp_marking_rules", json={"dscp_marking_rule": {"dscp_mark": 26}})
        assert r.status_code == 201, r.text
    with lab.api("alice") as c:
        r = c.put(f"/ports/{p1['id']}", json={"port": {"qos_policy_id": pid}})
        assert r.status_code == 200, r.text
    lab.vm("d1", "h1", p1)
    lab.vm("d2", "h2", p2)
    lab.wait_status(p1["id"], "ACTIVE", timeout=30)
    lab.wait_status(p2["id"], "ACTIVE", timeout=30)
    tap = naming.tap_name(p1["id"])
    wait_for(lambda: ("tbf", naming.QOS_QDISC_HANDLE) in qdisc_handles(1, tap), "d1's shaper", timeout=30)
    assert ping("d1", "192.0.2.32") == 2          # the data path (filters included) is in place

    # A DHCP exchange on d1 (busybox udhcpc): the responder answers (its state is in use).
    r = nsexec(topology.vm_ns("d1"), "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-s", "/bin/true",
               "-t", "3", "-T", "1")
    assert r.returncode == 0, r.stdout + r.stderr

    # Several resyncs with nothing changed.
    sg = rule_handles(1, *naming.SG_TABLE)
    ps = rule_handles(1, *naming.PS_TABLE)
    steer = rule_handles(1, *naming.DHCP_TABLE)
    dscp = rule_handles(1, *naming.QOS_TABLE)
    meta = rule_handles(1, *naming.METADATA_TABLE)
    shaper = qdisc_handles(1, tap)
    # Someone else's nftables transaction on h1 (an operator's own table): the ruleset generation
    # moves, so h1's firewall reads its tables back instead of trusting it; they are unchanged.
    assert nsexec(topology.host_ns(1), "nft", "add", "table", "inet", "operator_own").returncode == 0
    gen2 = genid(2)
    time.sleep(5 * RESYNC + 1)
    assert genid(2) == gen2              # h2 committed no nftables transaction at all in its resyncs
    applied = [line for h in ("h1", "h2") for line in log_lines(lab, h) if "feature" in line and "applied" in line]
    assert {h: repairs(lab, h) for h in ("h1", "h2")} == {"h1": [], "h2": []}, applied[-6:]
    assert status_drift(lab) == {"h1": 0, "h2": 0}
    # ... and nothing was reloaded: the same rules (handles) and qdiscs as before
    assert rule_handles(1, *naming.SG_TABLE) == sg and rule_handles(1, *naming.PS_TABLE) == ps
    assert rule_handles(1, *naming.DHCP_TABLE) == steer and rule_handles(1, *naming.QOS_TABLE) == dscp
    assert rule_handles(1, *naming.METADATA_TABLE) == meta
    assert qdisc_handles(1, tap) == shaper

    # One element of the security-group table deleted by another program (d2's address in the
    # default group's member set): the ruleset generation moved past the agent's own commits
    # (dataplane/nft_ledger.py), so the next resync reads the table back and puts it back.
    h1 = topology.host_ns(1)
    members = set_name(p2["security_groups"][0])
    assert "192.0.2.32" in set_elements(1, members)
    assert nsexec(h1, "nft", "delete", "element", *naming.SG_TABLE, members, "{ 192.0.2.32 }").returncode == 0
    wait_for(lambda: any("firewall" in r for r in repairs(lab, "h1")), "h1's firewall repair", timeout=30)
    assert "192.0.2.32" in set_elements(1, members)
    assert rule_handles(1, *naming.SG_TABLE) == sg      # the element only: no rule was reloaded

    # Real drift on h1: each is repaired by the next resync and counted under its feature.
    assert nsexec(h1, "nft", "flush", "table", *naming.SG_TABLE).returncode == 0
    assert nsexec(h1, "nft", "delete", "table", *naming.DHCP_TABLE).returncode == 0
    assert nsexec(h1, "tc", "qdisc", "del", "dev", tap, "root").returncode == 0
    assert nsexec(h1, "nft", "delete", "table", *naming.METADATA_TABLE).returncode == 0
    wait_for(lambda: {k for r in repairs(lab, "h1") for k in r} >= {"firewall", "dhcp", "qos", "metadata"},
             "the drift repairs of h1", timeout=30)
    assert rule_handles(1, *naming.SG_TABLE) and rule_handles(1, *naming.DHCP_TABLE)
    assert rule_handles(1, *naming.METADATA_TABLE)
    assert ("tbf", naming.QOS_QDISC_HANDLE) in qdisc_handles(1, tap)
    assert ping("d1", "192.0.2.32") == 2
    wait_for(lambda: status_drift(lab)["h1"] >= 4, "h1's drift repairs in vxnet status", timeout=30)
    assert status_drift(lab)["h2"] == 0
    assert repairs(lab, "h2") == []
