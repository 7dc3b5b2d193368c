"""Trunk ports on real packets: `vxnet lab` (server + 3 agents), a trunk made through the API,
real 802.1Q frames from a lab VM.

- v1 (h1) has a trunk: its parent port on network A (untagged, eth0) and a subport on network
  B carried with VLAN 101 (inside v1: eth0.101 with the subport's MAC and IP). v2 (h2) is on B,
  v3 (h3) on A.
- v1 reaches v2 through eth0.101: tcpdump -e on v1's tap sees the ICMP frames tagged vlan 101
  in both directions; the untagged parent still reaches v3.
- The subport's port security holds on its VLAN device: a source address that is not the
  subport's is dropped.
- Removing the subport deletes its VLAN device and the tagged path stops; the parent's traffic
  is untouched. Deleting the trunk leaves no VLAN device.

Needs a kernel with 802.1Q VLAN devices (8021q): the test probes for it and is skipped, saying
so, on a kernel without (some minimal VM kernels lack it, and with it act_vlan, cls_flower and
bridge VLAN filtering, so no other in-kernel way to push or pop a tag exists there).
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.root.conftest import Lab, needs_root
from tests.root.helpers import capture, nsexec, ping, wait_for
from vxnet.compute import naming
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]


def vlan_devices_supported() -> bool:
    """Whether this kernel makes 802.1Q VLAN devices (probed on a dummy device, then removed)."""
    probe = "vxl-vlanprobe"
    subprocess.run(["ip", "link", "add", probe, "type", "dummy"], capture_output=True, check=False)
    try:
        r = subprocess.run(["ip", "link", "add", "link", probe, "name", probe[:10] + ".5", "type", "vlan", "id", "5"],
                           capture_output=True, check=False)
        return r.returncode == 0
    finally:
        subprocess.run(["ip", "link", "del", probe], capture_output=True, check=False)   # takes its VLAN device


def link_exists(host: int, dev: str) -> bool:
    return nsexec(topology.host_ns(host), "ip", "link", "show", dev).returncode == 0


def test_subport_vlan_traffic(lab3: Lab) -> None:
    if not vlan_devices_supported():
        pytest.skip("this kernel has no 802.1Q VLAN devices (8021q): subports cannot be carried")
    net_a, _ = lab3.network("alice", "192.0.2.0/24", "trunk-a")
    net_b, _ = lab3.network("alice", "100.64.30.0/24", "trunk-b")
    parent = lab3.port("alice", net_a["id"], "192.0.2.41")
    sub = lab3.port("alice", net_b["id"], "100.64.30.41")
    p2 = lab3.port("alice", net_b["id"], "100.64.30.42")
    p3 = lab3.port("alice", net_a["id"], "192.0.2.43")
    with lab3.api("alice") as c:
        r = c.post("/trunks", json={"trunk": {"name": "t1", "port_id": parent["id"], "sub_ports": [
            {"port_id": sub["id"], "segmentation_type": "vlan", "segmentation_id": 101}]}})
        assert r.status_code == 201, r.text
        trunk = r.json()["trunk"]
    lab3.vm("v1", "h1", parent)       # binds the parent to h1: the subport follows
    lab3.vm("v2", "h2", p2)
    lab3.vm("v3", "h3", p3)
    with lab3.api() as c:
        assert c.get(f"/ports/{sub['id']}").json()["port"]["binding:host_id"] == "h1"
    for p in (parent, sub, p2, p3):
        lab3.wait_status(p["id"], "ACTIVE")
    tap, dev = naming.tap_name(parent["id"]), naming.subport_device(sub["id"])
    link = nsexec(topology.host_ns(1), "ip", "-d", "link", "show", dev).stdout
    assert f"@{tap}" in link and "vlan protocol 802.1Q id 101" in link, link

    vm1 = topology.vm_ns("v1")
    for cmd in (["ip", "link", "add", "link", "eth0", "name", "eth0.101", "type", "vlan", "id", "101"],
                ["ip", "link", "set", "eth0.101", "address", sub["mac_address"], "up"],
                ["ip", "addr", "add", "100.64.30.41/24", "dev", "eth0.101"]):
        r = nsexec(vm1, *cmd)
        assert r.returncode == 0, r.stderr

    with capture(topology.host_ns(1), tap) as frames:
        assert ping("v1", "100.64.30.42", count=3) == 3         # tagged, to v2 on another host
    icmp = [f for f in frames if "ICMP echo" in f]
    assert len([f for f in icmp if "vlan 101" in f and "100.64.30.41 > 100.64.30.42" in f]) == 3, frames
    assert len([f for f in icmp if "vlan 101" in f and "100.64.30.42 > 100.64.30.41" in f]) == 3, frames
    assert ping("v1", "192.0.2.43") == 2                           # the untagged parent, to v3

    # the subport's anti-spoofing applies on its VLAN device: another source address is dropped
    assert nsexec(vm1, "ip", "addr", "add", "100.64.30.99/24", "dev", "eth0.101").returncode == 0
    r = nsexec(vm1, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-I", "100.64.30.99", "100.64.30.42")
    assert " 0 received" in r.stdout, r.stdout
    nsexec(vm1, "ip", "addr", "del", "100.64.30.99/24", "dev", "eth0.101")
    assert ping("v1", "100.64.30.42") == 2

    # removing the subport stops the tagged path (and only it)
    with lab3.api("alice") as c:
        r = c.put(f"/trunks/{trunk['id']}/remove_subports", json={"sub_ports": [{"port_id": sub["id"]}]})
        assert r.status_code == 200, r.text
    wait_for(lambda: not link_exists(1, dev), "the subport's VLAN device removed")
    assert ping("v1", "100.64.30.42") == 0
    assert ping("v1", "192.0.2.43") == 2
    lab3.wait_status(sub["id"], "DOWN")

    # added again (another VLAN id): traffic is back on the new tag; deleting the trunk cleans up
    with lab3.api("alice") as c:
        r = c.put(f"/trunks/{trunk['id']}/add_subports", json={"sub_ports": [
            {"port_id": sub["id"], "segmentation_type": "vlan", "segmentation_id": 202}]})
        assert r.status_code == 200, r.text
    lab3.wait_status(sub["id"], "ACTIVE")
    for cmd in (["ip", "link", "del", "eth0.101"],
                ["ip", "link", "add", "link", "eth0", "name", "eth0.202", "type", "vlan", "id", "202"],
                ["ip", "link", "set", "eth0.202", "address", sub["mac_address"], "up"],
                ["ip", "addr", "add", "100.64.30.41/24", "dev", "eth0.202"]):
        assert nsexec(vm1, *cmd).returncode == 0
    with capture(topology.host_ns(1), tap) as frames:
        assert ping("v1", "100.64.30.42") == 2
    assert any("vlan 202" in f and "ICMP echo reply" in f for f in frames), frames
    with lab3.api("alice") as c:
        assert c.delete(f"/trunks/{trunk['id']}").status_code == 204
    wait_for(lambda: not link_exists(1, dev), "the VLAN device removed with the trunk")
    assert ping("v1", "192.0.2.43") == 2


def test_trunk_parent_traffic_and_honest_subport_status(lab3: Lab) -> None:
    """Runs on any kernel: a trunk does not disturb its parent's untagged traffic; the subport
    is ACTIVE only when its VLAN device is in its network's bridge (on a kernel without 802.1Q
    devices it stays DOWN: the agent claims no data path it could not build); removing it and
    deleting the trunk leave no device behind."""
    supported = vlan_devices_supported()
    net_a, _ = lab3.network("alice", "192.0.2.0/24", "trunk2-a")
    net_b, _ = lab3.network("alice", "100.64.31.0/24", "trunk2-b")
    parent = lab3.port("alice", net_a["id"], "192.0.2.51")
    sub = lab3.port("alice", net_b["id"], "100.64.31.51")
    p3 = lab3.port("alice", net_a["id"], "192.0.2.53")
    with lab3.api("alice") as c:
        r = c.post("/trunks", json={"trunk": {"port_id": parent["id"], "sub_ports": [
            {"port_id": sub["id"], "segmentation_type": "vlan", "segmentation_id": 301}]}})
        assert r.status_code == 201, r.text
        trunk = r.json()["trunk"]
    lab3.vm("v51", "h1", parent)
    lab3.vm("v53", "h2", p3)
    lab3.wait_status(parent["id"], "ACTIVE")
    lab3.wait_status(p3["id"], "ACTIVE")
    assert ping("v51", "192.0.2.53") == 2
    dev = naming.subport_device(sub["id"])
    if supported:
        lab3.wait_status(sub["id"], "ACTIVE")
        assert link_exists(1, dev)
    else:
        time.sleep(2)           # several agent passes
        assert lab3.port_status(sub["id"]) == "DOWN" and not link_exists(1, dev)
    with lab3.api("alice") as c:
        assert c.get(f"/trunks/{trunk['id']}").json()["trunk"]["status"] == "ACTIVE"   # follows the parent
        r = c.put(f"/trunks/{trunk['id']}/remove_subports", json={"sub_ports": [{"port_id": sub["id"]}]})
        assert r.status_code == 200, r.text
        assert c.delete(f"/trunks/{trunk['id']}").status_code == 204
    wait_for(lambda: not link_exists(1, dev), "no VLAN device left")
    assert ping("v51", "192.0.2.53") == 2
