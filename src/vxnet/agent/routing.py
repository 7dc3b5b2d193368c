"""The routing feature: distributed east-west routers on this host (compute/routing.py,
dataplane/router_driver.py).

Its desired state is `HostDesired.routing` (`compute_routing`): the router namespaces the host
needs (their service ports, gateway FDB and neighbour entries are its L2 part). `apply` runs a
`Manager` keyed by namespace: one listdir per pass (`observe`: a vanished namespace is made
again, a leftover of a crashed agent deleted), only changed namespaces are converged, a failing
one backs off alone. After `invalidate()` every namespace is converged again and orphan service
ports are removed. Failures are in `failed`; they do not turn VM ports DOWN (a VM's own data
path does not depend on its router). The driver (which uses pyroute2) is imported only once the
host has, or had, a router namespace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vxnet.agent.features import FeatureResult, HostContext
from vxnet.agent.manager import Manager
from vxnet.compute.routing import RouterNs, RoutingState, is_host_netns
from vxnet.dataplane.netns import list_netns

if TYPE_CHECKING:
    from vxnet.dataplane.router_driver import RouterDriver

log = logging.getLogger("vxnet.agent.routing")


class RoutingFeature:
    name = "routing"

    def __init__(self, ctx: HostContext, driver: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx, self._driver, self.clock = ctx, driver, clock
        self.routers: Manager[str, RouterNs] = Manager()

    @property
    def driver(self) -> RouterDriver:
        if self._driver is None:     # opened lazily: a host without routers never opens sockets
            from vxnet.dataplane.router_driver import RouterDriver

            self._driver = RouterDriver(self.ctx.host, self.ctx.netns)
        return self._driver

    def apply(self, desired: RoutingState) -> FeatureResult:
        m = self.routers
        m.want({r.netns: r for r in desired.routers})
        present = list_netns(lambda n: is_host_netns(n, self.ctx.host))
        if not m.desired and not present and self._driver is None:
            return FeatureResult()      # nothing wanted, nothing left over: never open a socket
        # The router driver (and pyroute2, ~12 MB) is loaded only on a host that has routers.
        from pyroute2.netlink.exceptions import NetlinkError

        from vxnet.dataplane.router_driver import ApplyResult

        m.observe(present)
        res = ApplyResult()
        errors = m.run(self.clock(), lambda _, r, __: self.driver.converge(r, res),
                       lambda name, _: self.driver.delete(name, res), (OSError, NetlinkError))
        for name, e in errors:
            log.warning("host=%s router namespace %s: %s", self.ctx.host, name, e)
        if not m.known and not m.pending():
            self.driver.delete_orphan_ports({i.service_port for r in m.desired.values() for i in r.ifaces}, res)
            m.mark_known()
        return FeatureResult(failed=tuple(f"router {n}" for n in {*(n for n, _ in errors), *m.pending()}),
                             changes=res.changes)

    def invalidate(self) -> None:
        self.routers.invalidate()

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()
