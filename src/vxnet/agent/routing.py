"""The routing feature: distributed east-west routers on this host (compute/routing.py,
dataplane/router_driver.py).

Its desired state is `HostDesired.routing` (`compute_routing`): the router namespaces the host
needs, with their service ports, gateway FDB and neighbour entries as the L2 part. `apply` converges the
namespaces (cheap when nothing changed: the driver skips namespaces equal to what it applied
last). Router failures are reported in `failed` (retried next pass); they do not turn VM ports
DOWN: a VM's own data path (L2) does not depend on its router.
"""

from __future__ import annotations

from typing import Any

from vxnet.agent.features import FeatureResult, HostContext
from vxnet.compute.routing import RoutingState
from vxnet.dataplane.router_driver import RouterDriver


class RoutingFeature:
    name = "routing"

    def __init__(self, ctx: HostContext, driver: Any = None) -> None:
        self.ctx = ctx
        self._driver = driver

    @property
    def driver(self) -> RouterDriver:
        if self._driver is None:     # opened lazily: a host without routers never opens sockets
            self._driver = RouterDriver(self.ctx.host, self.ctx.netns)
        return self._driver

    def apply(self, desired: RoutingState) -> FeatureResult:
        if not desired.routers and self._driver is None:
            # Nothing wanted and never opened: still remove leftovers of an earlier run once.
            from vxnet.dataplane.router_driver import list_host_netns
            if not list_host_netns(self.ctx.host):
                return FeatureResult()
        res = self.driver.apply(desired.routers)
        return FeatureResult(failed=tuple(f"router {n}" for n in res.failed), changes=res.changes)

    def invalidate(self) -> None:
        if self._driver is not None:
            self._driver.invalidate()

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()
