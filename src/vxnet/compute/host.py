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
  `DhcpCache`), the firewall per changed port (`FirewallCache`), the routing, gateway, QoS and
  metadata parts when one of the view buckets they read
  is a different object (view updates replace only the buckets they touch), and the merged L2
  only when some part changed. The routing, QoS, metadata and DHCP parts are kept uncomputed when
  only their ports bucket differs and none of the ports that changed there (old or new
  version) is one their module's `reads_port` names (a VM of another host with IPv4 addresses
  only: a peer's pass for a remote port changes none of them); `recomputed` names the parts
  a call computed. A pass in which nothing changed returns the previous object.
  The L2 state's FDB and neighbour sets are not merged: they are `compute.state.Parts` of the
  per-network parts themselves and one part of the features' entries (`merge_parts`), so a pass
  in which every network changed holds the previous pass's parts (the agent's applied state,
  which its diff needs) and the new ones, and no merged copy of either.
- `HostComputer.compute_plug(view)` then `compute(view)` (the agent's port-up pass) is `compute`
  in two steps: the first gives the firewall and the L2 state of the view's overlay merged with
  the features' L2 parts of the previous `compute` (what a pass needs before it plugs a tap);
  the second the rest, reusing the first's work, and exactly `compute_host(view, spec)` (tested
  on random histories). `compute_plug(view, firewall=False)` leaves the firewall to
  `plug_firewall()` or `compute` (a pass that plugs nothing: its L2 pass on the overlay alone).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

from vxnet.compute import dhcp as dhcp_mod
from vxnet.compute import metadata as metadata_mod
from vxnet.compute import qos as qos_mod
from vxnet.compute import routing as routing_mod
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
from vxnet.model import Port, View, as_view

# The view buckets each whole-view part reads (its memo key).
FIREWALL_INPUTS = ("networks", "subnets", "ports", "security_groups", "security_group_rules")   # subnets: DHCP
ROUTING_INPUTS = ("networks", "subnets", "ports", "routers")
GATEWAY_INPUTS = ("networks", "subnets", "ports", "routers", "floatingips")
QOS_INPUTS = ("networks", "ports", "qos_policies")
METADATA_INPUTS = ("networks", "ports")
# Per whole-view part that reads the ports bucket: which ports it may read (`reads_port` of its
# module). A pass whose only changes are ports none of them reads (a VM of another host joining,
# leaving or changing: a peer's pass for a remote port) keeps the part's last value uncomputed.
READS_PORT: dict[str, Callable[[Port, str, View], bool]] = {
    "routing": lambda p, host, _: routing_mod.reads_port(p, host),
    "qos": lambda p, host, _: qos_mod.reads_port(p, host),
    "metadata": lambda p, host, _: metadata_mod.reads_port(p, host),
    "dhcp": dhcp_mod.reads_port}
DHCP_INPUTS = ("networks", "subnets", "ports")
KEEP_MAX = 32       # changed ports beyond which no part is kept (`reads_port` is asked of each)


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
    firewall: Firewall | None       # None until `HostComputer.plug_firewall()` (compute_plug(firewall=False))


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
        self._plug: tuple[View, dict[str, float], tuple[HostState, ...], PlugDesired] | None = None
        self._ports: Mapping[str, Port] | None = None       # the last `compute`'s ports bucket
        self.recomputed: set[str] = set()   # routing, DHCP, gateway, QoS, metadata: computed (not kept) by the last call

    def _overlay(self, v: View, t: dict[str, float]) -> tuple[HostState, ...]:
        """The start of a pass (the memo's `begin`): the overlay's per-network parts."""
        self._parts.begin()
        self.recomputed = set()
        t0 = time.perf_counter()
        overlay = self.l2.parts(v)          # per network; merged once in _assemble
        t["compute_l2"] = time.perf_counter() - t0
        return overlay

    def _firewall(self, v: View, t: dict[str, float]) -> Firewall:
        t0 = time.perf_counter()
        fw = self._parts.get("firewall", tuple(v.bucket(k) for k in FIREWALL_INPUTS),
                             lambda: self.firewall.compute(v))
        t["compute_firewall"] = time.perf_counter() - t0
        return fw

    def compute_plug(self, view: View, firewall: bool = True) -> PlugDesired:
        """The plug path's part of `compute(view)`: the overlay's L2 state of `view`, with the
        features' L2 parts (service ports, gateway and DHCP entries) of the previous `compute`
        (none before the first), and the firewall of `view` (with `firewall=False`, None until
        `plug_firewall()`). When those parts do not change, its `l2` is `compute(view).l2`. A
        `compute` of the same view object next reuses what this computed (one memo pass: call
        `compute(view)` after it, before another view)."""
        t: dict[str, float] = {}
        overlay = self._overlay(view, t)
        fw = self._firewall(view, t) if firewall else None
        last = self._last
        if last is None:
            l2 = merge_parts(overlay, [])
        elif last[0][0] == self.l2.version:
            l2 = last[1].l2                 # the same overlay parts: the last merged state
        else:
            d = last[1]
            l2 = merge_parts(overlay, [d.routing.l2, d.dhcp.l2, d.gateway.l2, d.metadata.l2])
        plug = PlugDesired(l2, fw)
        self._plug = (view, t, overlay, plug)
        self.timings = dict(t)
        return plug

    def plug_firewall(self) -> Firewall:
        """The firewall of the last `compute_plug`'s view (computed now if it was not then)."""
        assert self._plug is not None, "plug_firewall() after compute_plug()"
        v, t, overlay, plug = self._plug
        if plug.firewall is None:
            plug = PlugDesired(plug.l2, self._firewall(v, t))
            self._plug = (v, t, overlay, plug)
            self.timings = dict(t)
        assert plug.firewall is not None
        return plug.firewall

    def _port_changes(self, v: View) -> tuple[Mapping[str, Port], list[Port]] | None:
        """The previous call's ports bucket and the ports (old and new versions) that are not
        the very same objects in `v`'s; None on the first call or beyond `KEEP_MAX` of them."""
        old, new = self._ports, v.ports
        self._ports = new
        if old is None:
            return None
        if old is new:
            return old, []
        changed = [pid for pid, p in new.items() if old.get(pid) is not p]
        gone = old.keys() - new.keys() if changed or len(old) != len(new) else ()
        if len(changed) + len(gone) > KEEP_MAX:
            return None       # a snapshot, a burst: recomputing beats asking every port
        return old, [*(new[pid] for pid in changed), *(q for pid in changed if (q := old.get(pid)) is not None),
                     *(old[pid] for pid in gone)]

    def _whole(self, name: str, names: tuple[str, ...], v: View, changes: tuple[Mapping[str, Port], list[Port]] | None,
               fn: Callable[[], Any]) -> Any:
        """A whole-view part by its memo; kept uncomputed when only its ports bucket differs and
        none of the ports that changed there is one it reads (`READS_PORT`)."""
        inputs = tuple(v.bucket(k) for k in names)
        reads = READS_PORT.get(name)
        hit = self._parts.peek(name)
        if reads is not None and changes is not None and hit is not None and all(
                a is b or (k == "ports" and a is changes[0]) for k, a, b in zip(names, hit[0], inputs, strict=True)
                ) and not any(reads(p, self.spec.host, v) for p in changes[1]):
            return self._parts.keep(name, inputs)

        def made() -> Any:
            self.recomputed.add(name)
            return fn()

        return self._parts.get(name, inputs, made)

    def compute(self, view: View | Mapping[str, Mapping[str, Any]]) -> HostDesired:
        v, spec = as_view(view), self.spec
        pending, self._plug = self._plug, None
        plug: PlugDesired | None = None
        if pending is not None and pending[0] is v:
            t, overlay, plug = dict(pending[1]), pending[2], pending[3]
            fw = plug.firewall if plug.firewall is not None else self._firewall(v, t)
        else:
            t = {}
            overlay = self._overlay(v, t)
            fw = self._firewall(v, t)
        changes = self._port_changes(v)

        def timed(name: str, fn: Any) -> Any:
            t0 = time.perf_counter()
            out = fn()
            t[f"compute_{name}"] = time.perf_counter() - t0
            return out

        routing = timed("routing", lambda: self._whole("routing", ROUTING_INPUTS, v, changes,
                                                       lambda: compute_routing(v, spec.host)))
        dhcp = timed("dhcp", lambda: self._whole("dhcp", DHCP_INPUTS, v, changes, lambda: self.dhcp.compute(v)))
        gateway = timed("gateway", lambda: self._whole("gateway", GATEWAY_INPUTS, v, changes, lambda: _gateway(v, spec)))
        qos = timed("qos", lambda: self._whole("qos", QOS_INPUTS, v, changes, lambda: compute_qos(v, spec.host)))
        meta = timed("metadata", lambda: self._whole("metadata", METADATA_INPUTS, v, changes,
                                                     lambda: compute_metadata(v, spec.host)))
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
