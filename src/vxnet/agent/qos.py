"""The "qos" agent feature: bandwidth limits and DSCP marks of local VM ports (compute/qos.py
says what, dataplane/qos_driver.py how).

Contract (agent/features.py):
- Its desired state is `HostDesired.qos` (`compute_qos`, pure).
- The taps are a `Manager` keyed by tap name (desired / applied / dirty, exponential backoff
  per failing tap while the others go on): a rule change, a policy attached or detached, or a
  port moving converges only the taps it changes; a tap no longer desired has our qdiscs,
  filter and IFB removed.
- A tap that does not exist yet (the VM is not plugged) is not a failure: it stays dirty with
  no backoff, and the pass the tap's appearance wakes applies it; its port is DOWN meanwhile.
- First pass and after `invalidate()` (agent restart, drift repair): the kernel is read and QoS
  objects of ours on taps that are not desired, and IFBs of ours no longer needed, are removed;
  desired taps are converged by reading each object and writing only what differs, so a
  restarted agent adopts the limits in place without disturbing traffic, and a resync of an
  unchanged host writes nothing and reports no change (no drift repair).
- The DSCP table is replaced (one nftables transaction) when its ruleset text changes, or after
  `invalidate()` when the kernel's table is not the one last written.
- A tap that failed is reported in `failed` and its port in `down`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from vxnet.agent.features import FeatureResult, HostContext
from vxnet.agent.manager import Manager
from vxnet.compute import naming
from vxnet.compute.qos import QosState, TapQos, dscp_ruleset
from vxnet.dataplane.qos_driver import QosDriver, QosError

log = logging.getLogger("vxnet.agent.qos")


class QosFeature:
    name = "qos"

    def __init__(self, ctx: HostContext, driver: QosDriver | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.driver = driver or QosDriver(ctx.netns)
        self.clock = clock
        self.taps: Manager[str, TapQos] = Manager()
        self._dscp_ok: str | None = None

    def invalidate(self) -> None:
        self.taps.invalidate()
        self._dscp_ok = None

    def close(self) -> None:
        self.driver.close()

    def _cleanup(self, desired: QosState) -> int:
        """Remove our objects from taps that are not desired, and unneeded IFBs (kernel read)."""
        marked, ifbs = self.driver.owned()
        wanted = set(self.taps.desired)
        n = 0
        for tap in sorted(marked - wanted):
            self.driver.clear_tap(tap, tap[len(naming.TAP_PREFIX):])
            n += 1
        for ifb in sorted(ifbs - {t.ifb for t in desired.taps if t.egress is not None}):
            self.driver.delete_ifb(ifb)
            n += 1
        return n

    def apply(self, desired: QosState) -> FeatureResult:
        m, now = self.taps, self.clock()
        m.want(desired.by_tap)
        upserts, deletes = m.dirty(now)
        failed: list[object] = []
        down: set[str] = set()
        changes = {"taps": 0, "taps_cleared": 0, "dscp": 0}
        if (not upserts and not deletes and m.known and len(m.applied) == len(m.desired)
                and dscp_ruleset(desired) == self._dscp_ok):
            return FeatureResult(changes=changes)
        if not m.known:
            try:
                changes["taps_cleared"] += self._cleanup(desired)
                m.mark_known()
            except QosError as e:
                log.warning("host=%s qos cleanup: %s", self.ctx.host, e)
                failed.append("qos cleanup")
        links = self.driver.links() if upserts or len(m.applied) != len(m.desired) else set()
        for tap, t, _ in upserts:
            if tap not in links:          # not plugged yet: its appearance wakes the next pass
                down.add(t.port_id)
                continue
            try:
                if self.driver.apply_tap(t):  # an unchanged tap (e.g. after a resync) is no change
                    changes["taps"] += 1
                m.ok(tap, t)
            except QosError as e:
                log.warning("host=%s qos %s: %s", self.ctx.host, tap, e)
                m.failed(tap, now)
        for tap, prev in deletes:
            try:
                self.driver.clear_tap(tap, prev.port_id)
                m.ok(tap, None)
                changes["taps_cleared"] += 1
            except QosError as e:
                log.warning("host=%s qos clear %s: %s", self.ctx.host, tap, e)
                m.failed(tap, now)
                m.known = False           # what is left on it is unknown: the next pass reads the kernel
                failed.append(f"qos clear {tap}")
        ruleset = dscp_ruleset(desired)
        if ruleset != self._dscp_ok:
            try:
                # unknown state (first pass, resync): written only when the kernel's table differs
                if self.driver.apply_dscp(ruleset, any(t.dscp is not None for t in desired.taps),
                                          verify=self._dscp_ok is None):
                    changes["dscp"] = 1
                self._dscp_ok = ruleset
            except QosError as e:
                log.warning("host=%s qos dscp table: %s", self.ctx.host, e)
                failed.append("qos dscp")
                down |= {t.port_id for t in desired.taps if t.dscp is not None}
        for tap, t in m.desired.items():
            if tap not in m.applied:
                if tap in links:          # failed now or earlier, waiting for its retry
                    failed.append(f"qos {tap}")
                down.add(t.port_id)
        return FeatureResult(failed=tuple(failed), down=frozenset(down), changes=changes)
