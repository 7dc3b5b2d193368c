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
    line = next(x for x in guard.splitlines() if "host-guard" in x)
    assert "drop" in line and "packets 0 " not in line, guard   # the drops were counted there


def _arp_answers(vm: str, ip: str) -> bool:
    out = nsexec(topology.vm_ns(vm), "busybox", "arping", "-c", "3", "-w", "2", "-I", "eth0", ip).stdout
    assert "Received" in out, out
    return "Received 0 response" not in out


def test_a_tap_on_no_bridge_cannot_reach_its_host(lab3) -> None:
    """Nova creates a VM's tap before the agent plugs it (a port not bound here yet, or held until
    its filters are loaded); until then the VM's frames enter the host's own stack through it.
    ARP and IP from a `tap` device to the host are dropped (the `tap-guard` rules). The control:
    the same VM on an interface of another name is answered by its host, as the kernel does by
    default, so the drop is the guard's."""
    host_ns = topology.host_ns(1)
    host_ip = topology.underlay_ip(1)                                   # h1's own address, 198.51.100.1
    topology.add_vm("tgtap", host_ns, "tap0123456789a", "fa:16:3e:12:34:56", "198.51.100.71/24", 1450)
    topology.add_vm("tgctl", host_ns, "tgc0123456789a", "fa:16:3e:12:34:57", "198.51.100.72/24", 1450)
    try:
        assert _arp_answers("tgctl", host_ip)                           # the control: answered
        assert not _arp_answers("tgtap", host_ip)
        # With the host's MAC known (no ARP needed), IP from the tap reaches no host service either.
        mac = nsexec(host_ns, "cat", "/sys/class/net/tap0123456789a/address").stdout.strip()
        nsexec(topology.vm_ns("tgtap"), "ip", "neigh", "replace", host_ip, "lladdr", mac, "dev", "eth0", "nud", "permanent")
        nsexec(topology.vm_ns("tgtap"), "ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", host_ip)
        for family, table, chain in (("inet", "vxnet_sg", "host"), ("arp", "vxnet_host", "in")):
            listing = nsexec(host_ns, "nft", "list", "chain", family, table, chain).stdout
            line = next(x for x in listing.splitlines() if "tap-guard" in x)
            assert 'iifname "tap*"' in line and "drop" in line and "packets 0 " not in line, listing   # counted there
    finally:
        topology.del_vm("tgtap")
        topology.del_vm("tgctl")
