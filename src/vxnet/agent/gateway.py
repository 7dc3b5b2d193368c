"""The "gateway" agent feature: external bridges, SNAT namespaces and floating IPs on a
gateway host (`vxnet agent --gateway --external-interface IF`). See compute/gateway.py for
what is built and dataplane/gateway_driver.py for how.

Contract (agent/features.py):
- Its desired state is `HostDesired.gateway` (`compute_gateway`, pure).
- `apply(desired)` converges only what changed since the last pass (per router, by equality
  of its desired object); after `invalidate()` every router is converged again from the kernel.
  Namespaces of this host's routers that are no longer desired are deleted, but nothing is
  deleted before the first apply (the agent calls features only with a complete view).
- A router whose namespace failed to converge is reported in `failed` and its gateway and snat
  ports in `down` (DOWN until a later pass succeeds).
"""

from __future__ import annotations

import logging

from vxnet.agent.features import FeatureResult, HostContext
from vxnet.compute.gateway import GatewayDesired, GatewayRouter
from vxnet.dataplane.gateway_driver import GatewayDriver, GatewayError

log = logging.getLogger("vxnet.agent.gateway")


class GatewayFeature:
    name = "gateway"

    def __init__(self, ctx: HostContext, driver: GatewayDriver | None = None) -> None:
        self.ctx = ctx
        self.driver = driver or GatewayDriver(ctx.netns)
        self._applied: dict[str, GatewayRouter] = {}
        self._externals_ok: tuple[object, ...] | None = None
        self._valid = False

    def invalidate(self) -> None:
        self._valid = False

    def close(self) -> None:
        self.driver.close()

    def apply(self, desired: GatewayDesired) -> FeatureResult:
        failed: list[object] = []
        down: set[str] = set()
        changes = {"externals": 0, "routers": 0, "namespaces_created": 0, "namespaces_deleted": 0}
        if not self._valid:
            self._applied = {}
            self._externals_ok = None
        if desired.externals != self._externals_ok:
            bridges = {b.name: b for b in desired.l2.bridges}
            try:
                for ext in desired.externals:
                    self.driver.ensure_external(ext, bridges[ext.bridge])
                self._externals_ok = desired.externals
                changes["externals"] = len(desired.externals)
            except GatewayError as e:
                log.warning("host=%s external bridge: %s", self.ctx.host, e)
                failed.append("external")
        wanted = {r.router_id: r for r in desired.routers}
        if not self._valid or set(self._applied) != set(wanted):
            gone = self.driver.delete_stale(self.ctx.host, {r.netns for r in desired.routers})
            changes["namespaces_deleted"] = len(gone)
            for rid in [rid for rid in self._applied if rid not in wanted]:
                del self._applied[rid]
        for rid, r in wanted.items():
            if self._applied.get(rid) == r:
                continue
            try:
                if self.driver.apply_router(r, self._applied.get(rid)):
                    changes["namespaces_created"] += 1
                self._applied[rid] = r
                changes["routers"] += 1
            except GatewayError as e:
                log.warning("host=%s gateway router %s: %s", self.ctx.host, rid, e)
                self._applied.pop(rid, None)
                failed.append(f"gateway router {rid}")
                down |= r.port_ids
        self._valid = True
        return FeatureResult(failed=tuple(failed), down=frozenset(down), changes=changes)


def build(ctx: HostContext) -> list[GatewayFeature]:
    """The feature on gateway hosts only (for `build_features`)."""
    return [GatewayFeature(ctx)] if ctx.gateway else []
