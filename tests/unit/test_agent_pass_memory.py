"""The agent's pass over everything (the start, a resync) gives glibc's free pages back between
its steps (agent/core.py `release_freed_memory`): after the firewall, after the L2 pass and, since
December 2026, after each feature applied after it, so one feature's nftables transaction (~3 MB
of libnftables' parse with 10,000 ports in view) is not on top of the next one's. A pass that is
not over everything does not trim between its steps. Pure logic: the features are stubs, the
kernel a fake."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.fake_netlink import FakeKernel
from tests.unit.test_compute_l2 import HOSTS, NET_A, net, port
from vxnet.agent import core
from vxnet.agent.core import Agent, AgentConfig
from vxnet.agent.features import FeatureResult
from vxnet.agent.reconciler import Reconciler


class Stub:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def apply(self, desired: Any) -> FeatureResult:
        self.log.append(self.name)
        return FeatureResult()

    def invalidate(self) -> None:
        pass

    def close(self) -> None:
        pass


def _steps(monkeypatch: pytest.MonkeyPatch) -> tuple[Agent, list[str]]:
    log: list[str] = []
    monkeypatch.setattr(core, "release_freed_memory", lambda: log.append("trim"))
    agent = Agent(AgentConfig("h1", HOSTS["h1"]["underlay_ip"], resync_interval=3600), control=None,  # type: ignore[arg-type]
                  reconciler=Reconciler(HOSTS["h1"]["underlay_ip"], kernel=FakeKernel()),
                  features=[Stub(n, log) for n in ("firewall", "dhcp", "metadata", "qos")])
    ports = {p["id"]: p for p in (port(f"p{i:07d}-0000-4000-8000-000000000000", NET_A, f"h{i % 3 + 1}",
                                       f"02:00:00:00:02:{i:02x}", f"192.0.2.{20 + i}") for i in range(6))}
    agent.on_message({"type": "snapshot", "revision": 1,
                      "view": {"hosts": HOSTS, "networks": {NET_A: net(NET_A, 1001)}, "ports": ports}})
    return agent, log


def test_a_pass_over_everything_trims_after_each_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    agent, log = _steps(monkeypatch)
    log.clear()
    assert agent.run_once() is not None          # the first pass: over everything
    assert log == ["firewall", "trim", "trim", "dhcp", "trim", "metadata", "trim", "qos", "trim", "trim"]
    log.clear()
    agent.kernel_changed(True)                   # a resync: over everything again
    agent.run_once()
    assert log == ["firewall", "trim", "trim", "dhcp", "trim", "metadata", "trim", "qos", "trim", "trim"]


def test_a_pass_over_a_change_trims_once_at_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    agent, log = _steps(monkeypatch)
    agent.run_once()
    view = agent.view.view
    extra = port("p9999999-0000-4000-8000-000000000000", NET_A, "h2", "02:00:00:00:03:01", "192.0.2.99")
    agent.on_message({"type": "update", "revision": 2, "put": {"ports": {extra["id"]: extra}}})
    assert agent.view.view.ports.keys() > view.ports.keys()
    log.clear()
    agent.run_once()
    assert log.count("trim") == 1 and log[-1] == "trim"
