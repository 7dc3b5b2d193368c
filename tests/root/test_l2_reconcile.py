"""Drivers + reconciler on real namespaces (no server): 3 hosts, two projects with the same CIDR
and MACs, VMs ping on the same and other hosts and never across projects; the underlay carries
no ARP and no broadcast, and a ping is 2 unicast VXLAN frames; drift is repaired; a second
pass changes nothing."""

from __future__ import annotations

import pytest

from tests.root.conftest import needs_root
from tests.root.helpers import capture, nsexec, ping
from vxnet.agent.reconciler import Reconciler
from vxnet.compute import naming
from vxnet.compute.l2 import compute_l2
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

NET_A = "aaaaaaaa-1111-4000-8000-000000000001"
NET_B = "bbbbbbbb-2222-4000-8000-000000000002"


def _port(pid: str, nid: str, host: str, n: int) -> dict:
    return {"id": pid, "network_id": nid, "binding:host_id": host, "mac_address": f"02:00:00:00:01:{n:02x}",
            "fixed_ips": [{"subnet_id": "s", "ip_address": f"192.0.2.{n}"}], "status": "DOWN"}


# VM name -> (port, host index). Project B reuses A's IPs and MACs.
VMS = {
    "a1": (_port("a1000000-0000-4000-8000-000000000001", NET_A, "h1", 11), 1),
    "a2": (_port("a2000000-0000-4000-8000-000000000002", NET_A, "h2", 12), 2),
    "a3": (_port("a3000000-0000-4000-8000-000000000003", NET_A, "h1", 13), 1),
    "b1": (_port("b1000000-0000-4000-8000-000000000001", NET_B, "h1", 11), 1),
    "b2": (_port("b2000000-0000-4000-8000-000000000002", NET_B, "h3", 12), 3),
}


def _view(ports: list[dict]) -> dict:
    return {
        "hosts": {f"h{i}": {"host": f"h{i}", "underlay_ip": topology.underlay_ip(i)} for i in (1, 2, 3)},
        "networks": {NET_A: {"id": NET_A, "provider:network_type": "vxlan", "provider:segmentation_id": 1001, "mtu": 1450},
                     NET_B: {"id": NET_B, "provider:network_type": "vxlan", "provider:segmentation_id": 1002, "mtu": 1450}},
        "ports": {p["id"]: p for p in ports},
    }


def test_two_projects_same_addresses_isolated_and_quiet_underlay(underlay3: list[str]) -> None:
    for name, (p, h) in VMS.items():
        topology.add_vm(name, topology.host_ns(h), naming.tap_name(p["id"]), p["mac_address"],
                        p["fixed_ips"][0]["ip_address"] + "/24", 1450)
    view = _view([p for p, _ in VMS.values()])
    recs = {h: Reconciler(topology.underlay_ip(h), netns=topology.host_ns(h)) for h in (1, 2, 3)}
    try:
        for h, rec in recs.items():
            res = rec.reconcile(compute_l2(view, f"h{h}", topology.underlay_ip(h)))
            assert not res.failed
            local = {p["id"] for p, hh in VMS.values() if hh == h}
            assert res.active == local and not res.down
        # Idempotent: a second pass (fresh kernel read) finds nothing to do.
        for h, rec in recs.items():
            rec.invalidate()
            res = rec.reconcile(compute_l2(view, f"h{h}", topology.underlay_ip(h)))
            assert res.diff.empty and res.full_read

        # First contact across hosts: no ARP, no broadcast on the underlay; 1 ping = 2 frames.
        with capture() as frames:
            assert ping("a1", "192.0.2.12", count=1) == 1
        assert frames, "capture saw nothing"
        assert not [f for f in frames if "ARP" in f or "ff:ff:ff:ff:ff:ff" in f], frames
        vxlan = [f for f in frames if "VXLAN" in f or "4789" in f]
        assert len(vxlan) == 2 and len(frames) == 2, "\n".join(frames)

        assert ping("a1", "192.0.2.13") == 2          # same host
        assert ping("a3", "192.0.2.12") == 2          # other host
        assert ping("b1", "192.0.2.12") == 2          # project B, same addresses, h1 -> h3
        # Isolation: a2 (A, h2) and b2 (B, h3) share IP and MAC; b1's pings reach b2 only. Counted
        # on both VMs' taps by kind (an rx counter also counts a2's own neighbour probes' replies).
        tap_a2, tap_b2 = (naming.tap_name(VMS[v][0]["id"]) for v in ("a2", "b2"))
        with capture(topology.host_ns(2), tap_a2) as at_a2, capture(topology.host_ns(3), tap_b2) as at_b2:
            assert ping("b1", "192.0.2.12", count=3) == 3
        requests = lambda frames: [f for f in frames if "ICMP echo request" in f]
        assert len(requests(at_b2)) == 3, at_b2
        assert requests(at_a2) == [], "a packet of project B reached project A"

        # Drift repair: delete a bridge by hand on h2; the next pass rebuilds it and a2 is back.
        nsexec(topology.host_ns(2), "ip", "link", "del", naming.bridge_name(NET_A))
        assert ping("a1", "192.0.2.12", count=1, wait=0.5) == 0
        recs[2].invalidate()
        res = recs[2].reconcile(compute_l2(view, "h2", topology.underlay_ip(2)))
        assert not res.failed and res.changes > 0
        assert ping("a1", "192.0.2.12") == 2
        # A remote FDB entry deleted by hand comes back.
        mac2 = VMS["a2"][0]["mac_address"]
        nsexec(topology.host_ns(1), "bridge", "fdb", "del", mac2, "dev", naming.vxlan_name(NET_A), "self")
        recs[1].invalidate()
        res = recs[1].reconcile(compute_l2(view, "h1", topology.underlay_ip(1)))
        assert [e.mac for e in res.diff.fdb.create] == [mac2]
        assert ping("a1", "192.0.2.12") == 2

        # Removing a port removes its entries everywhere; removing network B removes its devices.
        view2 = _view([p for n, (p, _) in VMS.items() if n not in ("a2", "b1", "b2")])
        del view2["networks"][NET_B]
        for h, rec in recs.items():
            res = rec.reconcile(compute_l2(view2, f"h{h}", topology.underlay_ip(h)))
            assert not res.failed
        links = nsexec(topology.host_ns(1), "ip", "-o", "link").stdout
        assert naming.bridge_name(NET_B) not in links and naming.vxlan_name(NET_B) not in links
        fdb = nsexec(topology.host_ns(1), "bridge", "fdb", "show", "dev", naming.vxlan_name(NET_A)).stdout
        assert mac2 not in fdb
        assert ping("a1", "192.0.2.12", count=1, wait=0.5) == 0
        assert ping("a1", "192.0.2.13") == 2
    finally:
        for rec in recs.values():
            rec.close()
