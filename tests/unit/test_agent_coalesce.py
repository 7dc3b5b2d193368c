"""The reconcile loop's coalescing (agent/core.py `_reconcile_loop`): an isolated change starts
its pass at once, even just after an unrelated pass (a port bind right after the pass its new tap
woke); changes that arrive while a pass runs (a burst) wait `coalesce` so that more of them go
into the next pass. Pure logic: the pass is a stub, the kernel is a fake, no timing asserted."""

from __future__ import annotations

import threading

import pytest

from tests.support.fake_netlink import FakeKernel
from vxnet.agent import core
from vxnet.agent.core import Agent, AgentConfig
from vxnet.agent.reconciler import Reconciler


class LoopProbe:
    """Drives `_reconcile_loop` one wake-up at a time and records its coalescing sleeps."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.agent = Agent(AgentConfig("h1", "192.0.2.1", coalesce=0.002, resync_interval=3600),
                           control=None, reconciler=Reconciler("192.0.2.1", kernel=FakeKernel()),  # type: ignore[arg-type]
                           features=[])
        self.events: list[str] = []
        self.passed = threading.Semaphore(0)
        self.wake_during_next_pass = False
        real_sleep = core.time.sleep

        def sleep(seconds: float) -> None:
            if seconds == self.agent.cfg.coalesce:
                self.events.append("coalesce")
            real_sleep(seconds)

        def run_once() -> None:
            self.events.append("pass")
            if self.wake_during_next_pass:      # an update arrives while this pass runs
                self.wake_during_next_pass = False
                self.agent._wake.set()
            self.passed.release()

        monkeypatch.setattr(core.time, "sleep", sleep)
        monkeypatch.setattr(self.agent, "run_once", run_once)
        self.thread = threading.Thread(target=self.agent._reconcile_loop, daemon=True)
        self.thread.start()

    def wake(self, passes: int = 1) -> None:
        self.agent._wake.set()
        for _ in range(passes):
            assert self.passed.acquire(timeout=10), "the loop ran no pass"

    def stop(self) -> None:
        self.agent._stop.set()
        self.agent._wake.set()
        self.thread.join(10)


def test_an_isolated_change_just_after_a_pass_is_not_delayed(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = LoopProbe(monkeypatch)
    try:
        probe.wake()       # e.g. the pass a new tap woke
        probe.wake()       # the bind, moments later (well within BURST_WINDOW), loop idle
        probe.wake()
    finally:
        probe.stop()
    assert probe.events == ["pass", "pass", "pass"]


def test_changes_arriving_during_a_pass_are_coalesced(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = LoopProbe(monkeypatch)
    try:
        probe.wake_during_next_pass = True
        probe.wake(passes=2)   # the first pass is woken again while it runs: a burst
        probe.wake()           # then an isolated change again
    finally:
        probe.stop()
    assert probe.events == ["pass", "coalesce", "pass", "pass"]
