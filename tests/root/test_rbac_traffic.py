"""Network RBAC on real namespaces: a VM of the project a network is shared with talks to the
owner's VM on it.

Alice's network S (100.64.20.0/24) is not shared: bob may not put a port on it (404). Alice
shares S with bob's project only (`access_as_shared`); bob's port on S then plugs into a VM
b1@h2, alice's a1@h1: both go ACTIVE (h2's agent gets S through bob's port alone) and, with
each project's default group admitting ICMP from S, ping each other across hosts. The policy cannot be removed while bob's port uses it (409); once his port
is gone it can, and bob cannot plug into S again.
"""

from __future__ import annotations

import pytest

from tests.root.conftest import Lab, needs_root
from tests.root.helpers import ping, wait_for
from vxnet.config import project_id_for

pytestmark = [pytest.mark.root, needs_root]

S_CIDR = "100.64.20.0/24"
A1 = "100.64.20.11"


def test_vm_of_the_target_project_reaches_the_owners_vm(lab3: Lab) -> None:
    net, sub = lab3.network("alice", S_CIDR, "S")
    with lab3.api("bob") as bob:
        r = bob.post("/ports", json={"port": {"network_id": net["id"]}})
        assert r.status_code == 404, r.text
    with lab3.api("alice") as alice:
        target = project_id_for("tenant-b")
        r = alice.post("/rbac-policies", json={"rbac_policy": {"object_type": "network", "object_id": net["id"],
                                                               "action": "access_as_shared", "target_tenant": target}})
        assert r.status_code == 201, r.text
        policy = r.json()["rbac_policy"]
    pa = lab3.port("alice", net["id"], A1)
    pb = lab3.port("bob", net["id"])
    for user, p in (("alice", pa), ("bob", pb)):  # each default group admits only its own members
        with lab3.api(user) as c:
            r = c.post("/security-group-rules", json={"security_group_rule": {
                "security_group_id": p["security_groups"][0], "direction": "ingress", "protocol": "icmp",
                "remote_ip_prefix": S_CIDR}})
            assert r.status_code == 201, r.text
    assert pb["project_id"] != pa["project_id"]
    b1 = pb["fixed_ips"][0]["ip_address"]
    lab3.vm("a1", "h1", pa)
    lab3.vm("b1", "h2", pb)
    lab3.wait_status(pa["id"], "ACTIVE", timeout=30)
    lab3.wait_status(pb["id"], "ACTIVE", timeout=30)
    wait_for(lambda: ping("b1", A1, count=1, wait=1) == 1, timeout=20, what="b1 reaches a1")
    assert ping("a1", b1, count=3, wait=1) == 3
    assert ping("b1", A1, count=3, wait=1) == 3
    with lab3.api("alice") as alice:
        r = alice.delete(f"/rbac-policies/{policy['id']}")
        assert r.status_code == 409 and r.json()["NeutronError"]["type"] == "RbacPolicyInUse", r.text
        with lab3.api("admin") as admin:
            assert admin.delete(f"/ports/{pb['id']}").status_code == 204
        assert alice.delete(f"/rbac-policies/{policy['id']}").status_code == 204
    with lab3.api("bob") as bob:
        assert bob.post("/ports", json={"port": {"network_id": net["id"]}}).status_code == 404
        assert bob.get(f"/networks/{net['id']}").status_code == 404
    assert sub["network_id"] == net["id"]
