"""The security property of the plug path (agent/core.py `PLUG_FIRST`, docs/security-groups.md):
a VM's tap is plugged into its bridge only once its port's anti-spoofing and security-group state
is in the kernel. A real agent (all its features, the nftables driver) on a real host namespace,
fed by a fake control plane; every plug the L2 pass makes is checked against the kernel's
nftables tables at that very moment (the links driver's `apply_plugs`, wrapped)."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pytest

from tests.root.conftest import needs_root
from tests.root.helpers import nsexec
from vxnet.agent.core import Agent, AgentConfig
from vxnet.compute import naming
from vxnet.dataplane.links_driver import LinksDriver
from vxnet.lab import topology

pytestmark = [pytest.mark.root, needs_root]

NET = "cccccccc-0000-4000-8000-000000000017"
SG = "5c000000-0000-4000-8000-000000000017"
PORTS = [f"c17{i:05d}-0000-4000-8000-000000000017" for i in range(4)]


class FakeControl:
    def __init__(self) -> None:
        self.q: queue.Queue[Mapping[str, Any] | None] = queue.Queue()

    def register(self) -> Mapping[str, Any]:
        return {"heartbeat_interval": 3}

    def heartbeat(self, report: Mapping[str, Any] | None = None) -> bool:
        return True

    def stream(self, since: int | None) -> Iterator[Mapping[str, Any]]:
        while (msg := self.q.get()) is not None:
            yield msg

    def report_status(self, active: Iterable[str], down: Iterable[str]) -> None:
        pass


def _port(i: int) -> dict:
    return {"id": PORTS[i], "network_id": NET, "binding:host_id": "h1", "mac_address": f"02:00:00:17:00:{i + 1:02x}",
            "fixed_ips": [{"ip_address": f"192.0.2.{170 + i}"}], "security_groups": [SG],
            "port_security_enabled": True, "device_owner": "compute:nova", "admin_state_up": True,
            "status": "DOWN", "revision_number": 1}


def test_a_tap_is_plugged_only_once_its_filters_are_in_the_kernel(underlay3: list[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ns = underlay3[0]
    seen: list[tuple[str, bool, bool]] = []      # (tap, its pre_ports element there, its eg_ports element there)
    original = LinksDriver.apply_plugs

    def checked(self: LinksDriver, plugs: Any) -> None:
        for p in [*plugs.create, *(new for _, new in plugs.update)]:
            if naming.is_plug(p.tap) and p.bridge:
                pre = nsexec(ns, "nft", "list", "map", "bridge", "vxnet_ps", "pre_ports").stdout
                eg = nsexec(ns, "nft", "list", "map", "inet", "vxnet_sg", "eg_ports").stdout
                seen.append((p.tap, f'"{p.tap}"' in pre, "jump eg_" in eg))
        original(self, plugs)

    monkeypatch.setattr(LinksDriver, "apply_plugs", checked)
    ctl = FakeControl()
    agent = Agent(AgentConfig(host="h1", underlay_ip=topology.underlay_ip(1), netns=ns, resync_interval=3600), ctl)
    agent.start()
    try:
        view = {"host": {"host": "h1"}, "hosts": {"h1": {"underlay_ip": topology.underlay_ip(1)}},
                "networks": {NET: {"id": NET, "provider:network_type": "vxlan", "provider:segmentation_id": 1717,
                                   "mtu": 1450}},
                "security_groups": {SG: {"id": SG, "stateful": True}},
                "security_group_rules": {"r17": {"id": "r17", "security_group_id": SG, "direction": "ingress",
                                                 "ethertype": "IPv4", "protocol": "icmp"}},
                "ports": {}}
        ctl.q.put({"type": "snapshot", "revision": 1, "view": view})
        assert agent.wait_applied(1, 10)
        # Port-ups as Nova makes them: the tap first (not bound here yet: never plugged), then
        # the bind; and a bind whose tap comes later. Each must be plugged with its filters loaded.
        for i in range(len(PORTS)):
            tap = naming.tap_name(PORTS[i])
            if i % 2 == 0:
                topology.add_vm(f"pf{i}", ns, tap, f"02:00:00:17:00:{i + 1:02x}", f"192.0.2.{170 + i}/24", 1450)
                time.sleep(0.05)
            ctl.q.put({"type": "update", "revision": 2 + i, "put": {"ports": {PORTS[i]: _port(i)}}})
            assert agent.wait_applied(2 + i, 10)
            if i % 2 == 1:
                topology.add_vm(f"pf{i}", ns, tap, f"02:00:00:17:00:{i + 1:02x}", f"192.0.2.{170 + i}/24", 1450)
            deadline = time.time() + 5
            while time.time() < deadline and f"master {naming.bridge_name(NET)}" not in nsexec(
                    ns, "ip", "-o", "link", "show", tap).stdout:
                time.sleep(0.01)
            assert f"master {naming.bridge_name(NET)}" in nsexec(ns, "ip", "-o", "link", "show", tap).stdout
        plugged = [s for s in seen if s[0] in {naming.tap_name(p) for p in PORTS}]
        assert {s[0] for s in plugged} == {naming.tap_name(p) for p in PORTS}
        assert all(pre and eg for _, pre, eg in plugged), plugged
    finally:
        ctl.q.put(None)
        agent.stop()
        for i in range(len(PORTS)):
            topology.del_vm(f"pf{i}")
