"""agent/gateway.py against a stateful fake driver: only changed routers are converged,
failures report the router's ports DOWN and are retried, invalidate() re-converges everything,
namespaces of routers no longer scheduled here are deleted."""

from __future__ import annotations

import dataclasses

from tests.unit.test_gateway_compute import RID, view
from vxnet.agent.features import HostContext
from vxnet.agent.gateway import GatewayFeature, build
from vxnet.compute.gateway import ExternalBridge, GatewayDesired, GatewayRouter, compute_gateway
from vxnet.compute.state import Bridge
from vxnet.dataplane.gateway_driver import GatewayError


class FakeDriver:
    def __init__(self) -> None:
        self.namespaces: dict[str, GatewayRouter] = {}
        self.externals: set[str] = set()
        self.calls = 0
        self.fail = False

    def ensure_external(self, ext: ExternalBridge, bridge: Bridge) -> None:
        self.externals.add(f"{ext.interface}@{bridge.name}")

    def apply_router(self, r: GatewayRouter, previous: GatewayRouter | None) -> bool:
        self.calls += 1
        if self.fail:
            raise GatewayError("nft: boom")
        created = r.netns not in self.namespaces
        self.namespaces[r.netns] = r
        return created

    def delete_stale(self, host: str, keep: set[str]) -> list[str]:
        gone = sorted(n for n in self.namespaces if n not in keep)
        for n in gone:
            del self.namespaces[n]
        return gone

    def close(self) -> None:
        pass


def _desired(f: GatewayFeature, view: dict) -> GatewayDesired:
    return compute_gateway(view, f.ctx.host, f.ctx.external_interface)


def test_apply_converges_only_changes_and_retries_failures() -> None:
    drv = FakeDriver()
    now = [0.0]
    f = GatewayFeature(HostContext("gw1", "198.51.100.9", gateway=True, external_interface="ext0"), drv,  # type: ignore[arg-type]
                       clock=lambda: now[0])
    d = _desired(f, view())
    res = f.apply(d)
    assert not res.failed and res.changes["namespaces_created"] == 1 and drv.calls == 1
    assert len(drv.externals) == 1
    f.apply(_desired(f, view()))
    assert drv.calls == 1                                   # nothing changed: nothing done
    drv.fail = True
    res = f.apply(_desired(f, view(fip=False)))               # the floating IP went away, the kernel refuses
    assert res.failed and res.down == {"gwport-0001", "snat-0001"}
    drv.fail = False
    calls = drv.calls
    res = f.apply(_desired(f, view(fip=False)))               # not yet: the router waits for its backoff
    assert res.failed and drv.calls == calls
    now[0] += 1.0
    res = f.apply(_desired(f, view(fip=False)))               # retried once its backoff is over
    assert not res.failed and drv.namespaces[d.routers[0].netns].fips == ()
    calls = drv.calls
    f.invalidate()
    f.apply(_desired(f, view(fip=False)))
    assert drv.calls == calls + 1                           # drift repair: converged again
    res = f.apply(_desired(f, view(host="gw2")))              # rescheduled elsewhere: namespace deleted
    assert drv.namespaces == {} and res.changes["namespaces_deleted"] == 1
    assert RID[:11] in d.routers[0].netns


def test_only_on_gateway_hosts() -> None:
    assert build(HostContext("h1", "198.51.100.1")) == []
    assert [x.name for x in build(dataclasses.replace(HostContext("g", "198.51.100.2"), gateway=True))] == ["gateway"]


def test_floating_ip_status_follows_the_router_namespace() -> None:
    drv = FakeDriver()
    now = [0.0]
    f = GatewayFeature(HostContext("gw1", "198.51.100.9", gateway=True, external_interface="ext0"), drv,  # type: ignore[arg-type]
                       clock=lambda: now[0])
    assert f.apply(_desired(f, view())).floatingips == {"f1": "ACTIVE"}
    drv.fail = True
    f.invalidate()
    assert f.apply(_desired(f, view())).floatingips == {"f1": "DOWN"}     # not programmed: DOWN
    drv.fail = False
    now[0] += 1.0
    assert f.apply(_desired(f, view())).floatingips == {"f1": "ACTIVE"}
    assert f.apply(_desired(f, view(host="gw2"))).floatingips == {}       # served elsewhere: not ours to say


def test_standby_copies_report_and_announce_nothing() -> None:
    class Bgp:
        def __init__(self) -> None:
            self.routes: dict = {}

        def apply(self, routes: dict) -> int:
            self.routes = dict(routes)
            return 0

        def invalidate(self) -> None:
            pass

    drv, bgp = FakeDriver(), Bgp()
    f = GatewayFeature(HostContext("gw1", "198.51.100.9", gateway=True, external_interface="ext0"), drv,  # type: ignore[arg-type]
                       bgp=bgp)  # type: ignore[arg-type]
    d = _desired(f, view())
    r = d.routers[0]
    res = f.apply(d)
    assert res.floatingips == {"f1": "ACTIVE"} and bgp.routes == {"203.0.113.20/32": "203.0.113.10"}
    res = f.apply(dataclasses.replace(d, routers=(dataclasses.replace(r, active=False),)))  # a prepared standby
    assert res.floatingips == {} and bgp.routes == {}
