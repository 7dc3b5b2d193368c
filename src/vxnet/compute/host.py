"""One host's whole desired state from its view: `compute_host(view, spec) -> HostDesired` (pure).

This is the one function the agent (`agent/core.py`), `vxnet trace` (`trace/snapshot.py`) and
the benchmarks use; nothing else assembles a host's desired state.

Contract:
- `compute_host(view, spec)` is a pure function of the typed view (`vxnet.model.View`; a raw
  view is parsed) and the host's fixed `HostSpec`. It returns `HostDesired`: the L2 state of
  the host with every feature's L2 part merged in (`l2`: what the L2 reconciler converges, so it
  owns every bridge-level entry), and each feature's own desired state (`firewall`, `routing`,
  `dhcp`, `gateway`, `qos`, `metadata`; the gateway part is empty on hosts started without `--gateway`).
- `HostComputer(spec).compute(view)` returns exactly `compute_host(view, spec)` (tested on random
  histories) while recomputing only what changed: L2 and DHCP per network (`L2Cache`,
  `DhcpCache`), the firewall per changed port (`FirewallCache`), the routing, gateway and QoS
  parts when one of the view buckets they read
  is a different object (view updates replace only the buckets they touch), and the merged L2
  only when some part changed. A pass in which nothing changed returns the previous object.
  The L2 state's FDB and neighbour sets are not merged: they are `compute.state.Parts` of the
  per-network parts themselves and one part of the features' entries (`merge_parts`), so a pass
  in which every network changed holds the previous pass's parts (the agent's applied state,
  which its diff needs) and the new ones, and no merged copy of either.
- `HostComputer.compute_plug(view)` then `compute(view)` (the agent's port-up pass) is `compute`
  in two steps: the first gives the firewall and the L2 state of the view's overlay merged with
  the features' L2 parts of the previous `compute` (what a pass needs before it plugs a tap);
  the second the rest, reusing the first's work, and exactly `compute_host(view, spec)` (tested
  on random histories).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from vxnet.compute.dhcp import DhcpCache, DhcpState, compute_dhcp
from vxnet.compute.firewall import Firewall, compute_firewall
from vxnet.compute.firewall_cache import FirewallCache
from vxnet.compute.gateway import GatewayDesired, compute_gateway
from vxnet.compute.l2 import L2Cache, compute_l2
from vxnet.compute.memo import IdentityMemo
from vxnet.compute.metadata import MetadataState, compute_metadata
from vxnet.compute.qos import QosState, compute_qos
from vxnet.compute.routing import RoutingState, compute_routing
from vxnet.compute.state import HostState, merge_parts
from vxnet.model import View, as_view

# The view buckets each whole-view part reads (its memo key).
FIREWALL_INPUTS = ("networks", "subnets", "ports", "security_groups", "security_group_rules")   # subnets: DHCP
ROUTING_INPUTS = ("networks", "subnets", "ports", "routers")
GATEWAY_INPUTS = ("networks", "subnets", "ports", "routers", "floatingips")
QOS_INPUTS = ("networks", "ports", "qos_policies")
METADATA_INPUTS = ("networks", "ports")


@dataclasses.dataclass(frozen=True)
class HostSpec:
    """What the compute layer knows about a host besides its view (fixed for an agent's life)."""

    host: str
    underlay_ip: str
    gateway: bool = False                    # started with --gateway
    external_interface: str | None = None    # gateway hosts: the physical port of external networks
    dhcp_lease_time: int = 86400             # seconds (the VM renews at half of it)


@dataclasses.dataclass(frozen=True)
class HostDesired:
    """The whole desired state of one host."""

    l2: HostState = dataclasses.field(default_factory=HostState)   # overlay L2 + every feature's L2 part
    firewall: Firewall = dataclasses.field(default_factory=Firewall)
    routing: RoutingState = dataclasses.field(default_factory=RoutingState)
    dhcp: DhcpState = dataclasses.field(default_factory=DhcpState)
    gateway: GatewayDesired = dataclasses.field(default_factory=GatewayDesired)
    qos: QosState = dataclasses.field(default_factory=QosState)
    metadata: MetadataState = dataclasses.field(default_factory=MetadataState)

    @property
    def features(self) -> dict[str, Any]:
        """Feature name -> its desired state (the agent's features are named like the fields)."""
        return {"gateway": self.gateway, "routing": self.routing, "firewall": self.firewall, "dhcp": self.dhcp,
                "qos": self.qos, "metadata": self.metadata}


def _gateway(v: View, spec: HostSpec) -> GatewayDesired:
    return compute_gateway(v, spec.host, spec.external_interface) if spec.gateway else GatewayDesired()


def _assemble(overlay: HostState | tuple[HostState, ...], fw: Firewall, routing: RoutingState, dhcp: DhcpState,
              gateway: GatewayDesired, qos: QosState, metadata: MetadataState | None = None) -> HostDesired:
    # The firewall and QoS act on taps and own no bridge port: no L2 part. `overlay`: the L2
    # state, or its per-network parts (combined here with the features' parts, their 30,000
    # FDB/neighbour entries without a merged copy: `merge_parts`).
    meta = metadata or MetadataState()
    parts = overlay if isinstance(overlay, tuple) else (overlay,)
    return HostDesired(merge_parts(parts, [routing.l2, dhcp.l2, gateway.l2, meta.l2]), fw, routing, dhcp, gateway,
                       qos, meta)


def compute_host(view: View | Mapping[str, Mapping[str, Any]], spec: HostSpec) -> HostDesired:
    """The desired state of `spec.host` from its view (the reference `HostComputer` equals)."""
    v = as_view(view)
    return _assemble(compute_l2(v, spec.host, spec.underlay_ip), compute_firewall(v, spec.host),
                     compute_routing(v, spec.host), compute_dhcp(v, spec.host, spec.dhcp_lease_time),
                     _gateway(v, spec), compute_qos(v, spec.host), compute_metadata(v, spec.host))


@dataclasses.dataclass(frozen=True)
class PlugDesired:
    """What a pass needs before it plugs a tap (`HostComputer.compute_plug`): the firewall, and
    the L2 state of the view's overlay with the features' L2 parts as the previous `compute`
    made them (their parts of this view are computed after the plug)."""

    l2: HostState
    firewall: Firewall


class HostComputer:
    """`compute_host`, incremental (see the module contract)."""

    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self.l2 = L2Cache(spec.host, spec.underlay_ip)
        self.dhcp = DhcpCache(spec.host, spec.dhcp_lease_time)
        self.firewall = FirewallCache(spec.host)
        self._parts: IdentityMemo[Any] = IdentityMemo()
        # the last result and what it was made of: the L2 parts' version (not the parts: holding
        # them would keep every old part alive beside the new ones) and the features' objects
        self._last: tuple[tuple[object, ...], HostDesired] | None = None
        self.timings: dict[str, float] = {}       # part -> seconds of the last call (metrics)
        # `compute_plug`'s view and what it computed of it, for the `compute` of the same view
        self._plug: tuple[View, dict[str, float], tuple[HostState, ...], Firewall, PlugDesired] | None = None

    def _plug_parts(self, v: View, t: dict[str, float]) -> tuple[tuple[HostState, ...], Firewall]:
        """The start of a pass (the memo's `begin`): the overlay's per-network parts, the firewall."""
        self._parts.begin()
        t0 = time.perf_counter()
        overlay = self.l2.parts(v)          # per network; merged once in _assemble
        t1 = time.perf_counter()
        fw = self._parts.get("firewall", tuple(v.bucket(k) for k in FIREWALL_INPUTS),
                             lambda: self.firewall.compute(v))
        t["compute_l2"], t["compute_firewall"] = t1 - t0, time.perf_counter() - t1
        return overlay, fw

    def compute_plug(self, view: View) -> PlugDesired:
        """The plug path's part of `compute(view)`: the firewall and the overlay's L2 state of
        `view`, with the features' L2 parts (service ports, gateway and DHCP entries) of the
        previous `compute` (none before the first). When those parts do not change, its `l2` is
        `compute(view).l2`. A `compute` of the same view object next reuses what this computed
        (one memo pass: call `compute(view)` after it, before another view)."""
        t: dict[str, float] = {}
        overlay, fw = self._plug_parts(view, t)
        last = self._last
        if last is None:
            l2 = merge_parts(overlay, [])
        elif last[0][0] == self.l2.version:
            l2 = last[1].l2                 # the same overlay parts: the last merged state
        else:
            d = last[1]
            l2 = merge_parts(overlay, [d.routing.l2, d.dhcp.l2, d.gateway.l2, d.metadata.l2])
        plug = PlugDesired(l2, fw)
        self._plug = (view, t, overlay, fw, plug)
        self.timings = dict(t)
        return plug

    def compute(self, view: View | Mapping[str, Mapping[str, Any]]) -> HostDesired:
        v, spec = as_view(view), self.spec
        pending, self._plug = self._plug, None
        plug: PlugDesired | None = None
        if pending is not None and pending[0] is v:
            t, overlay, fw, plug = dict(pending[1]), pending[2], pending[3], pending[4]
        else:
            t = {}
            overlay, fw = self._plug_parts(v, t)

        def timed(name: str, fn: Any) -> Any:
            t0 = time.perf_counter()
            out = fn()
            t[f"compute_{name}"] = time.perf_counter() - t0
            return out

        routing = timed("routing", lambda: self._parts.get(
            "routing", tuple(v.bucket(k) for k in ROUTING_INPUTS), lambda: compute_routing(v, spec.host)))
        dhcp = timed("dhcp", lambda: self.dhcp.compute(v))
        gateway = timed("gateway", lambda: self._parts.get(
            "gateway", tuple(v.bucket(k) for k in GATEWAY_INPUTS), lambda: _gateway(v, spec)))
        qos = timed("qos", lambda: self._parts.get(
            "qos", tuple(v.bucket(k) for k in QOS_INPUTS), lambda: compute_qos(v, spec.host)))
        meta = timed("metadata", lambda: self._parts.get(
            "metadata", tuple(v.bucket(k) for k in METADATA_INPUTS), lambda: compute_metadata(v, spec.host)))
        self.timings = t
        inputs = (fw, routing, dhcp, gateway, qos, meta)
        last = self._last
        if last is not None and last[0][0] == self.l2.version and all(
                a is b for a, b in zip(last[0][1:], inputs, strict=True)):
            return last[1]
        if plug is not None and last is not None and all(
                (a := getattr(last[1], k).l2) is p.l2 or a == p.l2
                for k, p in (("routing", routing), ("dhcp", dhcp), ("gateway", gateway), ("metadata", meta))):
            # the features' L2 parts did not change: the plug path's L2 state is the whole one
            out = HostDesired(plug.l2, fw, routing, dhcp, gateway, qos, meta)
        else:
            out = _assemble(overlay, fw, routing, dhcp, gateway, qos, meta)
        if last is not None and last[1] == out:
            out = last[1]         # equal: the same object, so the agent sees "unchanged"
        self._last = ((self.l2.version, *inputs), out)
        return out
