"""Agent features: data-plane functions layered on the L2 overlay (DHCP, port security and
security groups, routing, gateways).

Contract of a feature (the agent calls these from its reconcile thread, in this order, on
every pass that has a complete view):
1. `compute(view)`: pure function of the view (and the feature's fixed `HostContext`); returns
   a `FeatureDesired` whose `l2` part (plugs of its service ports, FDB and neighbour entries)
   is merged into the L2 desired state, so the L2 reconciler owns every bridge-level entry and
   never deletes a feature's entries as unknown. The rest of the desired object is the
   feature's own business.
2. `apply(desired)`: converge the feature's own kernel objects (namespaces, service-port veths,
   nftables tables, responder sockets...) and return a `FeatureResult`. Called before the L2
   pass, so a VM's filters exist before its tap is plugged and service ports exist before the
   L2 reconciler plugs them. It runs on every pass: it must be cheap when nothing changed
   (compare with what it applied last) and must read the kernel again after `invalidate()`
   (periodic drift repair, lost netlink events). It must not raise for ordinary failures:
   report them in `failed` (retried on the next pass); an exception is logged and retried too.
3. `close()`: release sockets and threads (not kernel state: a restarted agent adopts it).

A local port listed in any feature's `down` is reported DOWN even when its L2 path is applied
(e.g. its security-group rules failed to load): ACTIVE means the whole data path is in place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from vxnet.compute.state import HostState

View = Mapping[str, Mapping[str, Mapping[str, Any]]]


@dataclasses.dataclass(frozen=True)
class HostContext:
    """What a feature knows about its host besides the view (fixed for the agent's life)."""

    host: str
    underlay_ip: str
    netns: str | None = None                 # tests: the host's namespace, driven from outside
    gateway: bool = False                    # started with --gateway
    external_interface: str | None = None    # gateway hosts: the physical port of external networks
    dhcp_lease_time: int = 86400             # seconds (the VM renews at half of it)


@dataclasses.dataclass(frozen=True)
class FeatureDesired:
    """Base of a feature's desired state: its contribution to the L2 state."""

    l2: HostState = dataclasses.field(default_factory=HostState)


@dataclasses.dataclass(frozen=True)
class FeatureResult:
    failed: tuple[object, ...] = ()
    down: frozenset[str] = frozenset()           # local port ids whose feature path is not in place
    changes: Mapping[str, int] = dataclasses.field(default_factory=dict)   # kind -> count (logs/metrics)
    all_down: bool = False                       # nothing of this feature is in place (e.g. it crashed)


class Feature(Protocol):
    name: str

    def compute(self, view: View) -> FeatureDesired: ...
    def apply(self, desired: FeatureDesired) -> FeatureResult: ...
    def invalidate(self) -> None: ...
    def close(self) -> None: ...


def build_features(ctx: HostContext) -> list[Feature]:
    """The features an agent runs, in apply order. (Imported here: each feature module imports
    this one for the types above.)"""
    from vxnet.agent import gateway
    from vxnet.agent.dhcp import DhcpFeature
    from vxnet.agent.firewall import FirewallFeature
    from vxnet.agent.routing import RoutingFeature

    return [
        *gateway.build(ctx),        # SNAT and floating IPs (gateway hosts only)
        RoutingFeature(ctx),        # distributed routers
        FirewallFeature(ctx),       # port security, security groups (before any tap is plugged)
        DhcpFeature(ctx),           # DHCP for local VMs
    ]
