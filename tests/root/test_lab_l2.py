"""The whole stack on real namespaces: `vxnet lab` server + 3 agents, ports through the API.

- VMs on the same host and on other hosts ping; two projects with the same CIDR and the same
  MACs on the same hosts never exchange a packet.
- First contact across hosts: 0 ARP and 0 broadcast frames on the underlay, a ping = 2 unicast
  VXLAN frames.
- A port becomes ACTIVE only once its data path is applied (the first ping after ACTIVE works).
- VMs run with MTU 1450 (offloads on by default, off for the MTU check): a 1422-byte DF ping (1450 on the wire) crosses,
  a 1423-byte one does not.
"""

from __future__ import annotations

import pytest

from tests.root.conftest import Lab, needs_root
from tests.root.helpers import capture, nsexec, ping
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]


def test_l2_across_hosts_projects_isolated(lab3: Lab) -> None:
    na, _ = lab3.network("alice", "192.0.2.0/24", "a")
    nb, _ = lab3.network("bob", "192.0.2.0/24", "b")
    a1 = lab3.port("alice", na["id"], "192.0.2.11")
    a2 = lab3.port("alice", na["id"], "192.0.2.12")
    a3 = lab3.port("alice", na["id"], "192.0.2.13")
    # Project B: same IPs and the same MACs as a1 / a2.
    b1 = lab3.port("bob", nb["id"], "192.0.2.11", mac=a1["mac_address"], project=nb["project_id"])
    b2 = lab3.port("bob", nb["id"], "192.0.2.12", mac=a2["mac_address"], project=nb["project_id"])
    placement = {"a1": (a1, "h1"), "a2": (a2, "h2"), "a3": (a3, "h1"), "b1": (b1, "h1"), "b2": (b2, "h3")}
    for name, (p, host) in placement.items():
        lab3.vm(name, host, p)
    for name, (p, _) in placement.items():
        lab3.wait_status(p["id"], "ACTIVE")

    with capture() as frames:
        assert ping("a1", "192.0.2.12", count=1) == 1
    assert not [f for f in frames if "ARP" in f or "ff:ff:ff:ff:ff:ff" in f], "\n".join(frames)
    with lab3.api("admin") as c:
        vni = c.get(f"/networks/{na['id']}").json()["network"]["provider:segmentation_id"]
    vxlan = [f for f in frames if "VXLAN" in f and f"vni {vni}" in f]
    assert len(vxlan) == 2 and len(frames) == 2, "\n".join(frames)

    assert ping("a1", "192.0.2.13") == 2      # same host
    assert ping("a3", "192.0.2.12") == 2      # across hosts
    assert ping("b1", "192.0.2.12") == 2      # project B, h1 -> h3

    def rx(vm: str) -> int:
        return int(nsexec(topology.vm_ns(vm), "cat", "/sys/class/net/eth0/statistics/rx_packets").stdout)

    before = rx("a2")
    assert ping("b1", "192.0.2.12", count=5, interval=0.05) == 5
    assert rx("a2") == before, "a frame of project B reached project A"
    before = rx("b2")
    assert ping("a1", "192.0.2.12", count=5, interval=0.05) == 5
    assert rx("b2") == before, "a frame of project A reached project B"

    # VMs come up with guest-like offloads (TSO/GSO/GRO on, as virtio-net guests have them).
    feats = nsexec(topology.vm_ns("a1"), "ethtool", "-k", "eth0").stdout
    assert "generic-segmentation-offload: on" in feats and "tcp-segmentation-offload: on" in feats
    # MTU: 1450 on the VM NICs, offloads off (GSO would skip the MTU checks, KERNEL-NOTES §8);
    # the largest unfragmented ping crosses, one more byte does not.
    for vm in ("a1", "a2"):
        topology.vm_offloads(vm, False)
    r = nsexec(topology.vm_ns("a1"), "ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1422", "192.0.2.12")
    assert r.returncode == 0, r.stdout + r.stderr
    r = nsexec(topology.vm_ns("a1"), "ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1423", "192.0.2.12")
    assert r.returncode != 0
    feats = nsexec(topology.vm_ns("a1"), "ethtool", "-k", "eth0").stdout
    assert "generic-segmentation-offload: off" in feats and "tcp-segmentation-offload: off" in feats
    for vm in ("a1", "a2"):
        topology.vm_offloads(vm, True)


def test_port_delete_removes_its_entries_everywhere(lab3: Lab) -> None:
    n, _ = lab3.network("alice", "198.51.100.0/24", "del")   # overlay may reuse any documentation range
    p1 = lab3.port("alice", n["id"], "198.51.100.21")
    p2 = lab3.port("alice", n["id"], "198.51.100.22")
    lab3.vm("d1", "h1", p1)
    lab3.vm("d2", "h2", p2)
    lab3.wait_status(p1["id"], "ACTIVE")
    lab3.wait_status(p2["id"], "ACTIVE")
    assert ping("d1", "198.51.100.22") == 2
    with lab3.api("alice") as c:
        assert c.delete(f"/ports/{p2['id']}").status_code == 204
    from vxnet.compute import naming

    vx = naming.vxlan_name(n["id"])
    import time
    deadline = time.time() + 5
    while time.time() < deadline:
        fdb = nsexec(topology.host_ns(1), "bridge", "fdb", "show", "dev", vx).stdout
        if p2["mac_address"] not in fdb:
            break
        time.sleep(0.02)
    assert p2["mac_address"] not in fdb
    neigh = nsexec(topology.host_ns(1), "ip", "neigh", "show", "dev", naming.bridge_name(n["id"])).stdout
    assert "198.51.100.22" not in neigh
    assert ping("d1", "198.51.100.22", count=1, wait=0.5) == 0


def test_network_delete_removes_its_devices_on_every_host(lab3: Lab) -> None:
    import time

    from vxnet.compute import naming

    n, _ = lab3.network("alice", "203.0.113.0/24", "gone")
    ports = [lab3.port("alice", n["id"], f"203.0.113.{31 + i}") for i in range(2)]
    lab3.vm("g1", "h1", ports[0])
    lab3.vm("g2", "h3", ports[1])
    for p in ports:
        lab3.wait_status(p["id"], "ACTIVE")
    assert ping("g1", "203.0.113.32") == 2
    with lab3.api("alice") as c:
        for p in ports:
            assert c.delete(f"/ports/{p['id']}").status_code == 204
        assert c.delete(f"/networks/{n['id']}").status_code == 204
    names = (naming.bridge_name(n["id"]), naming.vxlan_name(n["id"]))

    def gone() -> bool:
        return all(not any(x in nsexec(topology.host_ns(h), "ip", "-o", "link").stdout for x in names)
                   for h in (1, 2, 3))
    deadline = time.time() + 5
    while time.time() < deadline and not gone():
        time.sleep(0.02)
    assert gone()
    # The VMs' taps still exist (Nova's, not ours) but belong to no bridge.
    tap = naming.tap_name(ports[0]["id"])
    assert "master" not in nsexec(topology.host_ns(1), "ip", "-o", "link", "show", tap).stdout


def test_admin_down_port_is_cut_off_and_down(lab3: Lab) -> None:
    n, _ = lab3.network("alice", "100.64.30.0/24", "adm")
    ports = [lab3.port("alice", n["id"], f"100.64.30.{11 + i}") for i in range(2)]
    lab3.vm("ad1", "h1", ports[0])
    lab3.vm("ad2", "h2", ports[1])
    for p in ports:
        lab3.wait_status(p["id"], "ACTIVE")
    assert ping("ad1", "100.64.30.12") == 2
    with lab3.api("alice") as c:
        assert c.put(f"/ports/{ports[1]['id']}", json={"port": {"admin_state_up": False}}).status_code == 200
    lab3.wait_status(ports[1]["id"], "DOWN")
    assert ping("ad1", "100.64.30.12", count=1, wait=0.5) == 0
    with lab3.api("alice") as c:
        assert c.put(f"/ports/{ports[1]['id']}", json={"port": {"admin_state_up": True}}).status_code == 200
    lab3.wait_status(ports[1]["id"], "ACTIVE")
    assert ping("ad1", "100.64.30.12") == 2
