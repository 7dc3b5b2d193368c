"""The routing feature: distributed east-west routers on this host (compute/routing.py,
dataplane/router_driver.py).

Its desired state is `HostDesired.routing` (`compute_routing`): the router namespaces the host
needs, with their service ports, gateway FDB and neighbour entries as the L2 part. `apply`
converges the namespaces through a `Manager` keyed by namespace name: one listdir of the host's
namespaces per pass (`observe`: a namespace that vanished is made again, a leftover of a crashed
agent is deleted), only namespaces whose desired state changed are converged, a failing one
backs off on its own while the others go on. After `invalidate()` every namespace is read back
and converged, and orphan service ports in the host namespace are removed. Router failures are
reported in `failed`; they do not turn VM ports DOWN: a VM's own data path (L2) does not depend
on its router.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from vxnet.agent.features import FeatureResult, HostContext
from vxnet.agent.manager import Manager
from vxnet.compute.routing import RouterNs, RoutingState
from vxnet.dataplane.router_driver import ApplyResult, RouterDriver, list_host_netns

log = logging.getLogger("vxnet.agent.routing")


class RoutingFeature:
    name = "routing"

    def __init__(self, ctx: HostContext, driver: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self._driver = driver
        self.clock = clock
        self.routers: Manager[str, RouterNs] = Manager()

    @property
    def driver(self) -> RouterDriver:
        if self._driver is None:     # opened lazily: a host without routers never opens sockets
            self._driver = RouterDriver(self.ctx.host, self.ctx.netns)
        return self._driver

    def apply(self, desired: RoutingState) -> FeatureResult:
        m, now = self.routers, self.clock()
        m.want({r.netns: r for r in desired.routers})
        present = self.driver.present() if self._driver is not None else list_host_netns(self.ctx.host)
        if not m.desired and not present and self._driver is None:
            return FeatureResult()      # nothing wanted, nothing left over: never open a socket
        m.observe(present)
        res = ApplyResult()
        upserts, deletes = m.dirty(now)
        for name, _ in deletes:
            self._do(name, None, res, now)
        for name, r, _ in sorted(upserts, key=lambda u: u[0]):
            self._do(name, r, res, now)
        if not m.known and not m.pending():
            self.driver.delete_orphan_ports({i.service_port for r in m.desired.values() for i in r.ifaces}, res)
            m.mark_known()
        failed = [*res.failed, *m.pending()]
        return FeatureResult(failed=tuple(f"router {n}" for n in failed), changes=res.changes)

    def _do(self, name: str, r: RouterNs | None, res: ApplyResult, now: float) -> None:
        try:
            if r is None:
                self.driver.delete(name, res)
            else:
                self.driver.converge(r, res)
            self.routers.ok(name, r)
        except (OSError, NetlinkError) as e:
            log.warning("host=%s router namespace %s: %s", self.ctx.host, name, e)
            self.routers.failed(name, now)
            if r is None:
                res.failed.append(name)

    def invalidate(self) -> None:
        self.routers.invalidate()

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()
