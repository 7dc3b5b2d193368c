"""The routing feature: distributed east-west routers on this host (compute/routing.py,
dataplane/router_driver.py).

`compute` is `compute_routing(view, host)`: the router namespaces the host needs, with their
service ports, gateway FDB and neighbour entries as the L2 part. `apply` converges the
namespaces (cheap when nothing changed: the driver skips namespaces equal to what it applied
last). Router failures are reported in `failed` (retried next pass); they do not turn VM ports
DOWN: a VM's own data path (L2) does not depend on its router.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vxnet.agent.features import FeatureDesired, FeatureResult, HostContext, View
from vxnet.compute.routing import RouterNs, compute_routing
from vxnet.dataplane.router_driver import RouterDriver


@dataclasses.dataclass(frozen=True)
class RoutingDesired(FeatureDesired):
    routers: tuple[RouterNs, ...] = ()


class RoutingFeature:
    name = "routing"

    def __init__(self, ctx: HostContext, driver: Any = None) -> None:
        self.ctx = ctx
        self._driver = driver
        self._last_view: object = None
        self._last: RoutingDesired | None = None

    @property
    def driver(self) -> RouterDriver:
        if self._driver is None:     # opened lazily: a host without routers never opens sockets
            self._driver = RouterDriver(self.ctx.host, self.ctx.netns)
        return self._driver

    def compute(self, view: View) -> RoutingDesired:
        # The same view object twice (a pass woken by the kernel, not the stream) gives the
        # same answer: skip the scan.
        if view is self._last_view and self._last is not None:
            return self._last
        st = compute_routing(view, self.ctx.host)
        self._last_view, self._last = view, RoutingDesired(st.l2, st.routers)
        return self._last

    def apply(self, desired: FeatureDesired) -> FeatureResult:
        assert isinstance(desired, RoutingDesired)
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
