"""The DHCP feature: every host answers the DHCP of its own VMs, inside the agent (docs/dhcp.md).

Its desired state is `HostDesired.dhcp` (`compute.dhcp`: responders per network, leases, and the
L2 part: the service ports' plugs, FDB entries and server-id neighbours). `apply`:
1. converges the responder veth pairs (`dataplane/dhcp_driver.ResponderLinks`);
2. hands the responder thread (`dataplane/dhcp_driver.ResponderServer`) the new lease table and,
   when it changed (or after `invalidate()`), the steering table `bridge vxnet_dhcp`
   (`compute.dhcp.steer_script`: the whole table when its state is unknown, else only the map
   elements that changed; one atomic transaction), and waits until the thread has applied
   both and has its sockets open on the current devices: a port is reported ACTIVE only when
   its DHCP answers. Nothing changed: no work at all (no syscall).

This module holds no kernel I/O of its own: it decides what to serve and keeps what it applied.

Failures: a responder whose veth cannot be made is in `failed` and its leased ports are DOWN
(a VM there would get no address); an nft failure is in `failed` only (DHCP still answers the
broadcast frames without steering).
"""

from __future__ import annotations

import collections
import logging

from pyroute2.netlink.exceptions import NetlinkError

from vxnet.agent.features import FeatureResult, HostContext
from vxnet.compute.dhcp import DhcpState, steer_elements, steer_script
from vxnet.dataplane.dhcp_driver import ResponderLinks, ResponderServer, Served

log = logging.getLogger("vxnet.agent.dhcp")

# ---------------------------------------------------------------------------------- feature
class DhcpFeature:
    """The agent feature (see module contract)."""

    name = "dhcp"

    def __init__(self, ctx: HostContext) -> None:
        self.ctx = ctx
        self.links = ResponderLinks(ctx.netns)
        self.server = ResponderServer(ctx.netns)
        self._steer: frozenset[str] | None = None            # steering map elements applied (None: unknown)
        self._served: dict[str, Served] | None = None

    def counters(self) -> dict[str, dict[str, int]]:
        """Per network: offers, acks, naks, ignored, releases, declines (since start)."""
        return {nid: dict(c) for nid, c in self.server.counters.items()}

    # -- apply ----------------------------------------------------------------------------
    def apply(self, desired: DhcpState) -> FeatureResult:
        try:
            return self._apply(desired)
        except Exception as e:   # a DHCP bug must not turn every port of the host DOWN
            log.exception("DHCP apply failed")
            self.invalidate()
            self._served = None
            return FeatureResult(failed=(f"dhcp: {e}",),
                                 down=frozenset(lease.port_id for r in desired.responders for lease in r.leases))

    def _apply(self, desired: DhcpState) -> FeatureResult:
        changes: collections.Counter[str] = collections.Counter()
        failed: list[object] = []
        bad: set[str] = set()
        try:
            links = self.links.converge(desired.responders, changes, failed, bad)
        except (NetlinkError, OSError) as e:     # the link dump itself failed: nothing is known
            log.warning("DHCP links: %s", e)
            links, bad = {}, {r.network_id for r in desired.responders}
            failed.append(f"dhcp links: {e}")
        table = {r.device: Served(r, links[r.device].index, r.lease_table(), frozenset(r.arp_ips))
                 for r in desired.responders if r.network_id not in bad and r.device in links}
        steer = steer_elements(desired.responders)
        nft = steer_script(self._steer, steer) or None
        if not self.server.alive:
            log.warning("DHCP responder thread stopped; starting a new one")
            counters = self.server.counters
            self.server.close()
            self.server = ResponderServer(self.ctx.netns)
            self.server.counters = counters
            self._served = None
        if table != self._served or nft is not None:
            res = self.server.serve(table, nft)
            for dev in res.no_socket:
                bad.add(table[dev].responder.network_id)
                failed.append(f"dhcp socket {dev}")
            self._served = None if res.no_socket else table
            if nft is not None:
                if res.nft_error is None:
                    self._steer = steer
                    changes["steering_table"] += 1
                else:
                    log.warning("DHCP steering table failed: %s", res.nft_error)
                    failed.append("dhcp steering table")
                    self._steer = None
        if failed:
            self.links.invalidate()       # read the kernel again next pass
        down = frozenset(lease.port_id for r in desired.responders if r.network_id in bad for lease in r.leases)
        return FeatureResult(failed=tuple(failed), down=down, changes=dict(changes))

    def invalidate(self) -> None:
        self.links.invalidate()
        if self._steer:
            self._steer = None    # re-applied (atomic replace); an absent table stays absent

    def close(self) -> None:
        self.server.close()
        self.links.close()


def build(ctx: HostContext) -> list[DhcpFeature]:
    """The DHCP feature (every host)."""
    return [DhcpFeature(ctx)]
