"""The agent loop in-process on a real host namespace, fed by a fake control plane (no server):

- nothing in the kernel is touched before the first complete view (a stale owned bridge survives);
- after the snapshot, owned leftovers are removed and foreign objects are left alone;
- hand-made drift (deleted FDB / neighbour entries) is repaired at once, and counted in
  vxnet_agent_drift_repairs_total;
- a tap that appears later is plugged at once (netlink event, not the resync timer), and the
  port is reported ACTIVE only when the kernel really has it plugged; a vanished tap -> DOWN.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.root.conftest import needs_root
from tests.root.helpers import nsexec
from vxnet.agent.core import Agent, AgentConfig
from vxnet.compute import naming
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

NET = "cccccccc-0000-4000-8000-000000000001"
STALE = "dddddddd-0000-4000-8000-000000000001"
PORT = "c1000000-0000-4000-8000-000000000001"


class FakeControl:
    """A control plane whose stream is a queue; records status reports with the kernel's truth."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.q: queue.Queue[Mapping[str, Any] | None] = queue.Queue()
        self.reports: list[tuple[float, list[str], list[str], str]] = []
        self.reported = threading.Event()

    def register(self) -> Mapping[str, Any]:
        return {"heartbeat_interval": 3}

    def heartbeat(self, report: Mapping[str, Any] | None = None) -> bool:
        return True

    def stream(self, since: int | None) -> Iterator[Mapping[str, Any]]:
        while True:
            msg = self.q.get()
            if msg is None:
                return
            yield msg

    def report_status(self, active: Iterable[str], down: Iterable[str]) -> None:
        master = nsexec(self.ns, "ip", "-o", "link", "show", naming.tap_name(PORT)).stdout
        self.reports.append((time.time(), list(active), list(down), master))
        self.reported.set()


def drift_repairs(kind: str) -> float:
    return REGISTRY.get_sample_value("vxnet_agent_drift_repairs_total", {"kind": kind}) or 0.0


def _wait(cond: Any, timeout: float = 5) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return False


def test_agent_loop_adopts_plugs_on_events_and_reports_after_apply(underlay3: list[str]) -> None:
    ns = topology.host_ns(1)
    # Leftovers: an owned bridge of a network that no longer exists, and a foreign bridge.
    topology.ip_batch([f"link add {naming.bridge_name(STALE)} type bridge", "link add br-foreign type bridge"], ns)
    ctl = FakeControl(ns)
    agent = Agent(AgentConfig(host="h1", underlay_ip=topology.underlay_ip(1), netns=ns, resync_interval=3600), ctl)
    agent.start()
    try:
        time.sleep(0.5)
        links = nsexec(ns, "ip", "-o", "link").stdout
        assert naming.bridge_name(STALE) in links, "deleted something before the first complete view"
        assert agent.passes == 0

        port = {"id": PORT, "network_id": NET, "binding:host_id": "h1", "mac_address": "02:00:00:00:07:01",
                "fixed_ips": [{"ip_address": "192.0.2.71"}], "status": "DOWN", "revision_number": 1}
        remote = {"id": "c2", "network_id": NET, "binding:host_id": "h2", "mac_address": "02:00:00:00:07:02",
                  "fixed_ips": [{"ip_address": "192.0.2.72"}], "status": "ACTIVE", "revision_number": 1}
        ctl.q.put({"type": "snapshot", "revision": 5, "view": {
            "host": {"host": "h1"},
            "hosts": {"h1": {"underlay_ip": topology.underlay_ip(1)}, "h2": {"underlay_ip": topology.underlay_ip(2)}},
            "networks": {NET: {"id": NET, "provider:network_type": "vxlan", "provider:segmentation_id": 1077,
                               "mtu": 1450}},
            "ports": {PORT: port, "c2": remote}}})
        assert agent.wait_applied(5)
        links = nsexec(ns, "ip", "-o", "link").stdout
        assert naming.bridge_name(STALE) not in links and "br-foreign" in links
        assert naming.bridge_name(NET) in links and naming.vxlan_name(NET) in links
        assert not ctl.reports            # port DOWN in the view and no tap: nothing to report

        # The tap appears (as Nova creates it): plugged at once, then reported ACTIVE.
        t0 = time.time()
        topology.add_vm("lp1", ns, naming.tap_name(PORT), port["mac_address"], "192.0.2.71/24", 1450)
        assert ctl.reported.wait(5)
        when, active, down, master = ctl.reports[-1]
        assert active == [PORT] and down == []
        assert f"master {naming.bridge_name(NET)}" in master and "mtu 1450" in master and ",UP" in master
        print(f"\ntap appeared -> plugged and reported ACTIVE in {(when - t0) * 1e3:.1f} ms "
              f"(includes creating the VM namespace)")
        assert when - t0 < 2.0

        # Drift: a remote FDB entry and the bridge's neighbour entry deleted by hand come back
        # (the deletion events invalidate the agent's cache; no waiting for the resync timer).
        vx = naming.vxlan_name(NET)
        repairs = {k: drift_repairs(k) for k in ("fdb", "neighs")}
        nsexec(ns, "bridge", "fdb", "del", remote["mac_address"], "dev", vx, "self")
        nsexec(ns, "ip", "neigh", "del", "192.0.2.72", "dev", naming.bridge_name(NET))
        assert _wait(lambda: "dst 198.51.100.2" in nsexec(ns, "bridge", "fdb", "show", "dev", vx).stdout
                     and "192.0.2.72" in nsexec(ns, "ip", "neigh", "show", "dev", naming.bridge_name(NET)).stdout)
        # ... and are counted as drift repairs (the desired state did not change)
        assert _wait(lambda: all(drift_repairs(k) > repairs[k] for k in repairs)), repairs
        assert REGISTRY.get_sample_value("vxnet_agent_update_revision") == 5

        # The server records ACTIVE (the view's port changes); the tap vanishes -> DOWN.
        ctl.reported.clear()
        ctl.q.put({"type": "update", "revision": 6, "put": {"ports": {PORT: dict(port, status="ACTIVE", revision_number=2)}}})
        assert agent.wait_applied(6)
        assert REGISTRY.get_sample_value("vxnet_agent_update_revision") == 6
        assert REGISTRY.get_sample_value("vxnet_agent_applied_revision") == 6
        topology.del_vm("lp1")
        assert ctl.reported.wait(5)
        assert ctl.reports[-1][1:3] == ([], [PORT])
    finally:
        ctl.q.put(None)
        agent.stop()
