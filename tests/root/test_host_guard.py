"""The host never talks to tenants through their bridges: a VM whose subnet overlaps the
underlay (a tenant may pick any range) asks for its host's underlay address by ARP and by IP
and gets nothing, while its neighbour VM at an address of the same range still answers."""

from __future__ import annotations

from tests.root.conftest import needs_root
from tests.root.helpers import nsexec, ping
from vxnet.lab import topology

pytestmark = needs_root


def test_vm_cannot_reach_its_host_through_the_bridge(lab3) -> None:
    with lab3.api("alice") as c:
        net = c.post("/networks", json={"network": {"name": "overlaps-underlay"}}).json()["network"]
        # The gateway elsewhere: the DHCP responder answers ARP for its server id (the gateway).
        r = c.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "198.51.100.0/24", "ip_version": 4,
                                                "gateway_ip": "198.51.100.254"}})
        assert r.status_code == 201, r.text
    p1 = lab3.port("alice", net["id"], ip="198.51.100.50")
    p2 = lab3.port("alice", net["id"], ip="198.51.100.51")
    lab3.vm("hg1", "h1", p1)
    lab3.vm("hg2", "h1", p2)
    lab3.wait_status(p1["id"], "ACTIVE")
    lab3.wait_status(p2["id"], "ACTIVE")
    vm = topology.vm_ns("hg1")
    assert ping("hg1", "198.51.100.51", count=2) == 2                  # the control: a real neighbour
    host_ip = topology.underlay_ip(1)                                   # h1's own address, 198.51.100.1
    arp = nsexec(vm, "busybox", "arping", "-c", "3", "-w", "2", "-I", "eth0", host_ip)
    assert "Received 0 response" in arp.stdout, arp.stdout
    assert ping("hg1", host_ip, count=2) == 0
    # Even with the bridge's MAC known (no ARP needed), IP to the host is dropped.
    out = nsexec(topology.host_ns(1), "ip", "-o", "link", "show", "master", "vxb-" + net["id"][:11]).stdout
    assert out  # the VM taps are on the bridge
    br_mac = nsexec(topology.host_ns(1), "cat", f"/sys/class/net/vxb-{net['id'][:11]}/address").stdout.strip()
    nsexec(vm, "ip", "neigh", "replace", host_ip, "lladdr", br_mac, "dev", "eth0", "nud", "permanent")
    assert ping("hg1", host_ip, count=2) == 0
    guard = nsexec(topology.host_ns(1), "nft", "list", "chain", "inet", "vxnet_sg", "host").stdout
    assert "drop" in guard and "packets 0 " not in guard, guard   # the drops were counted there
