"""Batched FDB programming on a real namespace: 1,000 remote ports (1,000 `self` + 1,000
`master static` FDB entries + 1,000 neighbour entries) in one reconcile pass, then 1,000 FDB
changes (every MAC moved to another VTEP), then removal; the kernel is read back each time."""

from __future__ import annotations

import time

import pytest

from tests.root.conftest import needs_root
from tests.root.helpers import nsexec
from vxnet.agent.reconciler import Reconciler
from vxnet.compute import naming
from vxnet.compute.l2 import compute_l2
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

NET = "fdbfdbfd-0000-4000-8000-000000000001"


def _view(n: int, host_of: str) -> dict:
    ports = {f"p{i:07d}": {"id": f"p{i:07d}", "network_id": NET, "binding:host_id": host_of,
                           "mac_address": f"02:00:01:00:{i >> 8:02x}:{i & 255:02x}",
                           "fixed_ips": [{"ip_address": f"100.64.{i >> 8}.{i & 255}"}]} for i in range(n)}
    return {"hosts": {f"h{i}": {"underlay_ip": topology.underlay_ip(i)} for i in (1, 2, 3)},
            "networks": {NET: {"id": NET, "provider:network_type": "vxlan", "provider:segmentation_id": 4000,
                               "mtu": 1450}},
            "ports": ports}


def test_thousand_fdb_entries_batched(underlay3: list[str]) -> None:
    rec = Reconciler(topology.underlay_ip(1), netns=topology.host_ns(1))
    try:
        rec.reconcile(compute_l2(_view(0, "h2"), "h1", topology.underlay_ip(1)))   # bridge + vxlan only
        t = time.perf_counter()
        res = rec.reconcile(compute_l2(_view(1000, "h2"), "h1", topology.underlay_ip(1)))
        add = time.perf_counter() - t
        assert not res.failed and res.diff.counts()["fdb"] == 2000 and res.diff.counts()["neighs"] == 1000
        t = time.perf_counter()
        res = rec.reconcile(compute_l2(_view(1000, "h3"), "h1", topology.underlay_ip(1)))
        move = time.perf_counter() - t
        assert not res.failed and len(res.diff.fdb.update) == 1000
        # Read back from the kernel: every entry points at h3.
        rec.invalidate()
        t = time.perf_counter()
        res = rec.reconcile(compute_l2(_view(1000, "h3"), "h1", topology.underlay_ip(1)))
        read = time.perf_counter() - t
        assert res.diff.empty and res.full_read
        out = nsexec(topology.host_ns(1), "bridge", "fdb", "show", "dev", naming.vxlan_name(NET)).stdout
        assert out.count("dst 198.51.100.3") == 1000 and "dst 198.51.100.2" not in out
        t = time.perf_counter()
        res = rec.reconcile(compute_l2(_view(0, "h3"), "h1", topology.underlay_ip(1)))
        remove = time.perf_counter() - t
        assert not res.failed and len(res.diff.fdb.delete) == 2000
        out = nsexec(topology.host_ns(1), "bridge", "fdb", "show", "dev", naming.vxlan_name(NET)).stdout
        assert "dst 198.51.100" not in out
        # The netlink batch alone: 1000 FDB replaces (self entries moved back to h2) in one write.
        from vxnet.dataplane.rtnl import AF_BRIDGE, NTF_SELF, NUD_NOARP, NUD_PERMANENT, NeighRequest

        idx = rec.kernel.ipr.index(naming.vxlan_name(NET))
        reqs = [NeighRequest("replace", AF_BRIDGE, idx, NUD_NOARP | NUD_PERMANENT, NTF_SELF,
                             f"02:00:01:00:{i >> 8:02x}:{i & 255:02x}", topology.underlay_ip(2)) for i in range(1000)]
        t = time.perf_counter()
        errors = rec.kernel.rtnl.batch(reqs)
        batch = time.perf_counter() - t
        assert errors == [0] * 1000
        out = nsexec(topology.host_ns(1), "bridge", "fdb", "show", "dev", naming.vxlan_name(NET)).stdout
        assert out.count("dst 198.51.100.2") == 1000
        print(f"\n1000 FDB replaces in one netlink batch (encode + send + final ACK): {batch * 1e3:.1f} ms")
        print(f"1000 remote ports: add (2000 fdb + 1000 neigh) {add * 1e3:.1f} ms, move 1000 fdb "
              f"{move * 1e3:.1f} ms, full read-back pass {read * 1e3:.1f} ms, remove {remove * 1e3:.1f} ms")
        assert move < 1.0
    finally:
        rec.close()
