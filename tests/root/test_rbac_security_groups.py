"""Security group RBAC on real packets: a group of alice's, shared with bob's project by an RBAC
policy, filters bob's VM on a host that has no port of alice's at all.

Bob's network N (100.64.30.0/24): his server VM s (h1) is in alice's group `ssh` only (ingress
TCP 22 from N), his client VM c (h2) in his own default group. Before the policy bob cannot
name alice's group (404). Once shared: TCP 22 from c to s passes, TCP 23 and 80 are dropped
(the host's nft table has the group's rule, reached through bob's port); alice adds TCP 23 to her
group and bob's VM follows (h1 is sent the rule of a group it knows only through bob's port);
bob's own rule naming alice's group as its remote group admits s's traffic to c on TCP 80
(a remote group shared with him). The policy cannot be removed while bob's port is in the
group (409 RbacPolicyInUse); bob takes his port out of it, then it can.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.root.conftest import Lab, needs_root
from tests.root.helpers import nsexec, wait_for
from tests.root.test_security_groups import ECHO_SERVER, probe
from vxnet.config import project_id_for
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

N_CIDR = "100.64.30.0/24"
S_IP, C_IP = "100.64.30.10", "100.64.30.20"


def rule_loaded(host: int, rule_id: str) -> Callable[[], bool]:
    return lambda: f"vxnet:sg:{rule_id}#" in nsexec(topology.host_ns(host), "nft", "-t", "list", "table", "inet",
                                                     "vxnet_sg").stdout


def created(r: object, member: str) -> dict:
    assert r.status_code == 201, r.text  # type: ignore[attr-defined]
    return r.json()[member]  # type: ignore[attr-defined,no-any-return]


def test_shared_group_filters_the_target_projects_vm(lab3: Lab) -> None:
    with lab3.api("alice") as alice:
        sg = created(alice.post("/security-groups", json={"security_group": {"name": "ssh"}}), "security_group")
        ssh = created(alice.post("/security-group-rules", json={"security_group_rule": {
            "security_group_id": sg["id"], "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
            "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": N_CIDR}}), "security_group_rule")
    net, _ = lab3.network("bob", N_CIDR, "N")
    with lab3.api("bob") as bob:
        body = {"network_id": net["id"], "fixed_ips": [{"ip_address": S_IP}], "security_groups": [sg["id"]]}
        r = bob.post("/ports", json={"port": body})
        assert r.status_code == 404 and r.json()["NeutronError"]["type"] == "SecurityGroupNotFound", r.text
    with lab3.api("alice") as alice:
        policy = created(alice.post("/rbac-policies", json={"rbac_policy": {
            "object_type": "security_group", "object_id": sg["id"], "action": "access_as_shared",
            "target_tenant": project_id_for("tenant-b")}}), "rbac_policy")
    with lab3.api("bob") as bob:
        ps = created(bob.post("/ports", json={"port": body}), "port")
        pc = created(bob.post("/ports", json={"port": {"network_id": net["id"],
                                                        "fixed_ips": [{"ip_address": C_IP}]}}), "port")
    assert ps["security_groups"] == [sg["id"]] and ps["project_id"] == project_id_for("tenant-b")
    lab3.vm("s", "h1", ps)
    lab3.vm("c", "h2", pc)
    lab3.wait_status(ps["id"], "ACTIVE", timeout=30)
    lab3.wait_status(pc["id"], "ACTIVE", timeout=30)
    procs: list[subprocess.Popen[str]] = []
    try:
        for vm, tcp in (("s", "22,23,80"), ("c", "80")):
            p = subprocess.Popen(["ip", "netns", "exec", topology.vm_ns(vm), sys.executable, "-c", ECHO_SERVER, tcp],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        wait_for(rule_loaded(1, ssh["id"]), timeout=20, what="alice's shared rule on h1 (bob's port only)")
        wait_for(lambda: probe("c", "tcp", S_IP, 22), timeout=20, what="TCP 22 from c to s")
        assert not probe("c", "tcp", S_IP, 23)
        assert not probe("c", "tcp", S_IP, 80)
        # the owner changes her group: bob's VM follows
        with lab3.api("alice") as alice:
            telnet = created(alice.post("/security-group-rules", json={"security_group_rule": {
                "security_group_id": sg["id"], "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
                "port_range_min": 23, "port_range_max": 23}}), "security_group_rule")
        wait_for(rule_loaded(1, telnet["id"]), timeout=20, what="alice's new rule on h1")
        assert probe("c", "tcp", S_IP, 23)
        assert not probe("c", "tcp", S_IP, 80)
        # bob's own group admits members of alice's shared group (a remote group) on TCP 80
        assert not probe("s", "tcp", C_IP, 80)
        with lab3.api("bob") as bob:
            remote = created(bob.post("/security-group-rules", json={"security_group_rule": {
                "security_group_id": pc["security_groups"][0], "direction": "ingress", "ethertype": "IPv4",
                "protocol": "tcp", "port_range_min": 80, "port_range_max": 80, "remote_group_id": sg["id"]}}),
                "security_group_rule")
        wait_for(rule_loaded(2, remote["id"]), timeout=20, what="bob's remote-group rule on h2")
        wait_for(lambda: probe("s", "tcp", C_IP, 80), timeout=20, what="TCP 80 from s (member of alice's group) to c")
        # in use by bob's port: the policy stays
        with lab3.api("alice") as alice:
            r = alice.delete(f"/rbac-policies/{policy['id']}")
            assert r.status_code == 409 and r.json()["NeutronError"]["type"] == "RbacPolicyInUse", r.text
            with lab3.api("bob") as bob:
                r = bob.put(f"/ports/{ps['id']}", json={"port": {"security_groups": []}})
                assert r.status_code == 200, r.text
            assert alice.delete(f"/rbac-policies/{policy['id']}").status_code == 204
    finally:
        for p in procs:
            p.kill()
            p.wait(5)
