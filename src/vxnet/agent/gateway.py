"""The "gateway" agent feature: external bridges, SNAT namespaces and floating IPs on a
gateway host (`vxnet agent --gateway --external-interface IF`). See compute/gateway.py for
what is built and dataplane/gateway_driver.py for how.

Contract (agent/features.py):
- Its desired state is `HostDesired.gateway` (`compute_gateway`, pure).
- `apply(desired)` converges only what changed since the last pass: the SNAT namespaces are a
  `Manager` keyed by router (desired / applied / dirty, exponential backoff per failing
  router, the other routers going on); after `invalidate()` every router is converged again
  from the kernel. Namespaces of this host's routers that are no longer desired are deleted
  (all leftovers at the first pass and after `invalidate()`), but nothing is deleted before the
  first apply (the agent calls features only with a complete view).
- With HA (`ctx.ha_dir`, agent `--bfd`) and conntrackd installed, every router with a peer
  copy runs conntrackd in its namespace (dataplane/ctsync.py), started after the namespace
  converged and stopped when it goes.
- An external network whose port cannot be made (interface missing, no 802.1Q for a VLAN
  network) is reported in `failed` with the reason (`vxnet status` shows it), retried on later
  passes; its routers' ports and floating IPs are DOWN.
- With BGP configured (`--bgp-as`, `--bgp-peer`), the host's one bgpd (dataplane/bgp.py)
  announces `bgp_routes` of the routers served here and converged (so the announcement is
  where the router is served, and moves when it moves); a bgpd/vtysh failure is in `failed`.
- A router whose namespace failed to converge is reported in `failed` and its gateway and snat
  ports in `down` (DOWN until a later pass succeeds); its floating IPs are DOWN in the result's
  `floatingips`, the other routers' ACTIVE (the agent reports them, services/fip_status.py).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from vxnet.agent.features import FeatureResult, HostContext
from vxnet.agent.manager import Manager
from vxnet.compute.gateway import GatewayDesired, GatewayRouter, bgp_routes
from vxnet.dataplane.bgp import BgpError, BgpSpeaker
from vxnet.dataplane.ctsync import ConntrackSync
from vxnet.dataplane.ctsync import available as ctsync_available
from vxnet.dataplane.gateway_driver import GatewayDriver, GatewayError

log = logging.getLogger("vxnet.agent.gateway")


class GatewayFeature:
    name = "gateway"

    def __init__(self, ctx: HostContext, driver: GatewayDriver | None = None,
                 clock: Callable[[], float] = time.monotonic, bgp: BgpSpeaker | None = None) -> None:
        self.ctx = ctx
        self.driver = driver or GatewayDriver(ctx.netns, ctx.underlay_ip)
        self.ctsync = ConntrackSync(ctx.ha_dir) if ctx.ha_dir and ctsync_available() else None
        self.bgp = bgp or (BgpSpeaker(ctx.bgp) if ctx.bgp is not None else None)
        self.clock = clock
        self.routers: Manager[str, GatewayRouter] = Manager()
        self._externals_ok: set[object] = set()

    def invalidate(self) -> None:
        self.routers.invalidate()
        self._externals_ok = set()
        if self.bgp is not None:
            self.bgp.invalidate()

    def close(self) -> None:
        self.driver.close()

    def apply(self, desired: GatewayDesired) -> FeatureResult:
        failed: list[object] = []
        down: set[str] = set()
        changes = {"externals": 0, "routers": 0, "namespaces_created": 0, "namespaces_deleted": 0}
        bridges = {b.name: b for b in desired.l2.bridges}
        self._externals_ok &= set(desired.externals)
        bad_nets: set[str] = set()
        for ext in desired.externals:
            if ext in self._externals_ok:
                continue
            try:
                self.driver.ensure_external(ext, bridges[ext.bridge])
                self._externals_ok.add(ext)
                changes["externals"] += 1
            except GatewayError as e:
                log.warning("host=%s external network %s: %s", self.ctx.host, ext.network_id, e)
                failed.append(f"external network {ext.network_id}: {e}")
                bad_nets.add(ext.network_id)
        m, now = self.routers, self.clock()
        routers = desired.routers if self.ctsync is not None else tuple(
            dataclasses.replace(r, sync_ip="", sync_peer="") for r in desired.routers)   # no sync leg
        m.want({r.router_id: r for r in routers})
        if not m.known or m.dirty(now)[1]:
            # Namespaces are found by name in the kernel: this also removes leftovers.
            keep = {r.netns for r in routers}
            if self.ctsync is not None:
                self.ctsync.stop_in(self.driver.namespaces(self.ctx.host) - keep)
            gone = self.driver.delete_stale(self.ctx.host, keep)
            changes["namespaces_deleted"] = len(gone)
            m.observe(m.desired)              # what is not desired is gone now
            m.mark_known()

        def upsert(_: str, r: GatewayRouter, previous: GatewayRouter | None) -> None:
            changes["namespaces_created"] += self.driver.apply_router(r, previous)
            changes["routers"] += 1
            if self.ctsync is not None:
                try:
                    self.ctsync.ensure(r)
                except OSError as e:   # the router serves anyway; its flows are not synced
                    log.warning("host=%s conntrackd for %s: %s", self.ctx.host, r.router_id, e)

        for rid, e in m.run(now, upsert, lambda *_: None, (GatewayError,)):
            log.warning("host=%s gateway router %s: %s", self.ctx.host, rid, e)
        pending = set(m.pending())
        for rid in sorted(pending):           # failed now or earlier, waiting for its retry
            failed.append(f"gateway router {rid}")
            down |= m.desired[rid].port_ids
        for r in desired.routers:             # its external network cannot be served here
            if r.network_id in bad_nets:
                pending.add(r.router_id)
                down |= r.port_ids
        serving = [r for r in desired.routers if serves(r)]
        fips = {fid: "DOWN" if r.router_id in pending else "ACTIVE" for r in serving for fid in r.fip_ids}
        if self.bgp is not None:
            # Only what is served: a router whose namespace fails is withdrawn meanwhile.
            try:
                changes["bgp"] = self.bgp.apply(bgp_routes(r for r in serving if r.router_id not in pending))
            except BgpError as e:
                log.warning("host=%s bgp: %s", self.ctx.host, e)
                failed.append(f"bgp: {e}")
        return FeatureResult(failed=tuple(failed), down=frozenset(down), changes=changes, floatingips=fips)


def serves(r: GatewayRouter) -> bool:
    """The router is served from this host, not a prepared standby copy (`active` False): only
    the serving host reports its floating IPs and announces them."""
    return r.active


def build(ctx: HostContext) -> list[GatewayFeature]:
    """The feature on gateway hosts only (for `build_features`)."""
    return [GatewayFeature(ctx)] if ctx.gateway else []
