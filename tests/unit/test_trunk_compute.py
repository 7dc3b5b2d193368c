"""Pure compute for trunks: a local parent's `trunk_details` -> each subport's VLAN plug on the
parent's tap, in the subport network's bridge; the firewall names the subport by that device.
No kernel, no mocks."""

from __future__ import annotations

from vxnet.compute import naming
from vxnet.compute.firewall import compute_firewall
from vxnet.compute.l2 import L2Cache, compute_l2
from vxnet.compute.state import Fdb, Plug

NET_A = "aaaaaaaa-0000-4000-8000-000000000001"
NET_B = "bbbbbbbb-0000-4000-8000-000000000002"
PARENT = "p1000000-0000-4000-8000-000000000001"
SUB = "s2000000-0000-4000-8000-000000000002"
HOSTS = {f"h{i}": {"host": f"h{i}", "underlay_ip": f"198.51.100.{i}"} for i in (1, 2)}


def net(nid: str, vni: int, mtu: int = 1450) -> dict:
    return {"id": nid, "provider:network_type": "vxlan", "provider:segmentation_id": vni, "mtu": mtu}


def ports(host: str = "h1", vid: int = 101, parent_up: bool = True, with_sub: bool = True) -> dict:
    parent = {"id": PARENT, "network_id": NET_A, "binding:host_id": host, "mac_address": "02:00:00:00:01:01",
              "admin_state_up": parent_up, "fixed_ips": [{"subnet_id": "sa", "ip_address": "192.0.2.11"}],
              "trunk_details": {"trunk_id": "t", "sub_ports": [
                  {"port_id": SUB, "segmentation_type": "vlan", "segmentation_id": vid}] if with_sub else []}}
    sub = {"id": SUB, "network_id": NET_B, "binding:host_id": host, "mac_address": "02:00:00:00:02:02",
           "device_owner": "trunk:subport", "device_id": "t",
           "fixed_ips": [{"subnet_id": "sb", "ip_address": "198.51.100.22"}]}
    return {PARENT: parent, SUB: sub}


def view(mtu_b: int = 1450, **kw) -> dict:
    return {"hosts": HOSTS, "networks": {NET_A: net(NET_A, 1001, 1400), NET_B: net(NET_B, 1002, mtu_b)},
            "ports": ports(**kw)}


def test_subport_gets_a_vlan_plug_on_the_parent_tap() -> None:
    s = compute_l2(view(), "h1", "198.51.100.1")
    dev, tap = naming.subport_device(SUB), naming.tap_name(PARENT)
    assert len(dev) <= 15 and dev != tap
    assert s.plugs == {Plug(tap, naming.bridge_name(NET_A), 1400),
                       Plug(dev, naming.bridge_name(NET_B), 1400, parent=tap, vid=101)}   # MTU <= the parent's
    assert Fdb(dev, "02:00:00:00:02:02") in s.fdb
    assert {lp.tap for lp in s.local_ports} == {tap, dev}


def test_subport_mtu_is_its_network_when_smaller() -> None:
    s = compute_l2(view(mtu_b=1300), "h1", "198.51.100.1")
    assert Plug(naming.subport_device(SUB), naming.bridge_name(NET_B), 1300, parent=naming.tap_name(PARENT),
                vid=101) in s.plugs


def test_no_plug_without_an_enabled_local_parent() -> None:
    for kw in ({"parent_up": False}, {"with_sub": False}):
        s = compute_l2(view(**kw), "h1", "198.51.100.1")
        assert not any(p.parent for p in s.plugs), kw
        assert naming.subport_device(SUB) in {lp.tap for lp in s.local_ports}   # known, reported DOWN


def test_remote_trunk_is_reached_over_vxlan() -> None:
    s = compute_l2(view(host="h2"), "h1", "198.51.100.1")
    assert not s.plugs
    assert Fdb(naming.vxlan_name(NET_B), "02:00:00:00:02:02", "198.51.100.2") in s.fdb


def test_cache_follows_vlan_changes() -> None:
    cache = L2Cache("h1", "198.51.100.1")
    for kw in ({}, {"vid": 102}, {"with_sub": False}, {}):
        assert cache.compute(view(**kw)) == compute_l2(view(**kw), "h1", "198.51.100.1"), kw


def test_firewall_filters_the_subport_on_its_device() -> None:
    fw = compute_firewall(view(), "h1")
    by_port = {p.port_id: p for p in fw.ports}
    assert by_port[SUB].tap == naming.subport_device(SUB)
    assert by_port[SUB].bridge == naming.bridge_name(NET_B)
    assert by_port[PARENT].tap == naming.tap_name(PARENT)


def test_reconciler_makes_follows_and_removes_the_vlan_device() -> None:
    """Through the reconciler on the stateful fake kernel: no device before the parent's tap
    exists (subport DOWN), made with it (ACTIVE), remade on a VLAN change, deleted with the
    subport, gone with the tap and remade when the tap returns."""
    from tests.support.fake_netlink import FakeKernel
    from vxnet.agent.reconciler import Reconciler

    k = FakeKernel()
    rec = Reconciler("198.51.100.1", kernel=k)
    dev, tap = naming.subport_device(SUB), naming.tap_name(PARENT)

    def vlan() -> tuple[str, int] | None:
        ln = k.links_by_name.get(dev)
        return (ln.attrs["parent"], ln.attrs["vid"]) if ln is not None and ln.master else None

    res = rec.reconcile(compute_l2(view(), "h1", "198.51.100.1"))
    assert SUB in res.down and dev not in k.links_by_name
    k.add_tap(tap)
    res = rec.reconcile(compute_l2(view(), "h1", "198.51.100.1"))
    assert {PARENT, SUB} <= res.active and vlan() == (tap, 101)
    assert k.links_by_name[dev].master == naming.bridge_name(NET_B)
    res = rec.reconcile(compute_l2(view(vid=202), "h1", "198.51.100.1"))
    assert SUB in res.active and vlan() == (tap, 202)
    rec.reconcile(compute_l2(view(with_sub=False), "h1", "198.51.100.1"))
    assert dev not in k.links_by_name and k.links_by_name[tap].master == naming.bridge_name(NET_A)
    rec.reconcile(compute_l2(view(), "h1", "198.51.100.1"))
    assert vlan() == (tap, 101)
    k.delete(tap)                              # the VM goes: its VLAN devices with it
    assert dev not in k.links_by_name
    res = rec.reconcile(compute_l2(view(), "h1", "198.51.100.1"))
    assert SUB in res.down
    k.add_tap(tap)
    res = rec.reconcile(compute_l2(view(), "h1", "198.51.100.1"))
    assert SUB in res.active and vlan() == (tap, 101)
