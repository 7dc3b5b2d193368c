"""Agent features: data-plane functions layered on the L2 overlay (DHCP, port security and
security groups, routing, gateways, QoS).

Contract of a feature (the agent calls these from its reconcile thread, on every pass that
has a complete view):
- A feature computes nothing: the agent computes the whole host once
  (`compute.host.HostComputer`, equal to the pure `compute_host`), and hands each feature its
  part, `HostDesired.features[feature.name]`. Each part's `l2` (plugs of its service ports,
  FDB and neighbour entries) is already merged into `HostDesired.l2`, so the L2 reconciler owns
  every bridge-level entry and never deletes a feature's entries as unknown.
- `apply(desired)`: converge the feature's own kernel objects (namespaces, service-port veths,
  nftables tables, responder sockets...) and return a `FeatureResult`. The plug path comes
  first (agent/core.py `PLUG_FIRST`): the firewall is applied before any L2 pass that may plug
  a new tap, so a VM's filters are loaded before its tap is plugged (otherwise the L2 pass goes
  first); the other features are applied (in a port-up pass, and in a pass that plugs nothing, also computed) after the L2 pass, and when one of them reports
  changes while a desired device was absent, a second L2 pass plugs its service ports. It runs on
  every pass: it must be
  cheap when nothing changed (compare with what it applied last) and must read the kernel
  again after `invalidate()` (periodic drift repair, lost netlink events). It must not raise
  for ordinary failures: report them in `failed` (retried on the next pass); an exception is
  logged and retried too.
- `close()`: release sockets and threads (not kernel state: a restarted agent adopts it).

A plug-first feature (the firewall) lists in `hold` the local ports whose filters are not
loaded: the L2 pass does not plug their taps (a tap already plugged stays, filtered by the rules
it had), so no port passes traffic unfiltered.

A feature that serves floating IPs (the gateway) gives their status in `floatingips`; the agent
reports the ones whose stored status differs, like port status.

A local port listed in any feature's `down` is reported DOWN even when its L2 path is applied
(e.g. its security-group rules failed to load): ACTIVE means the whole data path is in place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from vxnet.compute.host import HostSpec
from vxnet.config import MetadataSettings

if TYPE_CHECKING:
    from vxnet.dataplane.bgp import BgpConfig


@dataclasses.dataclass(frozen=True)
class HostContext:
    """What a feature knows about its host besides the view (fixed for the agent's life)."""

    host: str
    underlay_ip: str
    netns: str | None = None                 # tests: the host's namespace, driven from outside
    gateway: bool = False                    # started with --gateway
    external_interface: str | None = None    # gateway hosts: the physical port of external networks
    dhcp_lease_time: int = 86400             # seconds (the VM renews at half of it)
    metadata: MetadataSettings | None = None  # [metadata]: None -> the proxy answers 503
    ha_dir: str | None = None                # with --bfd: bfdd's and conntrackd's run directory
    bgp: BgpConfig | None = None             # gateway hosts: announce to upstream routers

    @property
    def spec(self) -> HostSpec:
        """What the compute layer needs of this context."""
        return HostSpec(self.host, self.underlay_ip, self.gateway, self.external_interface, self.dhcp_lease_time)


@dataclasses.dataclass(frozen=True)
class FeatureResult:
    failed: tuple[object, ...] = ()
    down: frozenset[str] = frozenset()           # local port ids whose feature path is not in place
    changes: Mapping[str, int] = dataclasses.field(default_factory=dict)   # kind -> count (logs/metrics)
    all_down: bool = False                       # nothing of this feature is in place (e.g. it crashed)
    hold: frozenset[str] = frozenset()           # local port ids whose taps must not be plugged yet
    floatingips: Mapping[str, str] = dataclasses.field(default_factory=dict)   # served here: id -> ACTIVE/DOWN


class Feature(Protocol):
    name: str

    def apply(self, desired: Any) -> FeatureResult: ...
    def invalidate(self) -> None: ...
    def close(self) -> None: ...
