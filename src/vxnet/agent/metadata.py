"""The metadata feature: 169.254.169.254 answered on every VM's own host, inside the agent
(docs/metadata.md).

Its desired state is `HostDesired.metadata` (`compute.metadata`: the served ports with their
proxy addresses, one veth per network into the host's metadata namespace, the steering table,
and the L2 part: the service ports' plugs, FDB entries and the 169.254.169.254 neighbours).
`apply`, when the desired state changed (or after `invalidate()`, or a failure):
1. the namespace and its links, routes and neighbours (`dataplane/metadata_driver.MetadataLinks`,
   which reads the kernel back: level-triggered);
2. the listening socket in the namespace and the proxy thread (`agent/metadata_proxy`), started
   once and restarted if it died; the proxy's port table (proxy address -> port) is swapped;
3. the steering table `bridge vxnet_meta` in the host namespace, in one transaction, last: a
   VM's request is steered only once its way to the listener exists.
Nothing changed: no work at all. With no served port, the table, the service ports and the
namespace go.

Failures are in `failed` and retried on the next pass; they do not turn ports DOWN (a VM
without metadata still has its network; cloud-init retries).
"""

from __future__ import annotations

import logging

from pyroute2.netlink.exceptions import NetlinkError

from vxnet.agent.features import FeatureResult, HostContext
from vxnet.agent.metadata_proxy import MetadataProxy
from vxnet.compute.metadata import MetadataState, netns_name, nft_script
from vxnet.dataplane.metadata_driver import MetadataLinks, NsWorker, listen_socket

log = logging.getLogger("vxnet.agent.metadata")


class MetadataFeature:
    """The agent feature (see module contract)."""

    name = "metadata"

    def __init__(self, ctx: HostContext) -> None:
        self.ctx = ctx
        self.links = MetadataLinks(ctx.netns)
        self.proxy = MetadataProxy(ctx.metadata)
        self._worker: NsWorker | None = None
        self._applied: MetadataState | None = None
        self._cleaned = False

    @property
    def worker(self) -> NsWorker:
        if self._worker is None:
            self._worker = NsWorker(self.ctx.netns, "vxnet-agent-metadata-nft")
        return self._worker

    def apply(self, desired: MetadataState) -> FeatureResult:
        if desired == self._applied and (not desired.ports or self.proxy.running):
            return FeatureResult()
        try:
            changes = self._apply(desired)
        except (OSError, NetlinkError, RuntimeError) as e:
            log.warning("metadata apply failed: %s", e)
            self.invalidate()
            return FeatureResult(failed=(f"metadata: {e}",))
        self._applied = desired
        return FeatureResult(changes=changes)

    def _apply(self, desired: MetadataState) -> dict[str, int]:
        if not desired.ports:
            changes = {}
            if self._applied is None or self._applied.ports or not self._cleaned:
                err = self.worker.nft(nft_script(desired))
                if err:
                    raise RuntimeError(f"steering table: {err}")
                self.proxy.set_table({})
                self.proxy.stop()
                self.links.remove(netns_name(self.ctx.host))
                self._cleaned = True
                changes["cleaned"] = 1
            return changes
        self._cleaned = False
        changes = self.links.converge(desired)
        self.proxy.set_table(desired.by_proxy_ip())
        if changes.get("namespace"):       # a new namespace: the old listener is in the old one
            self.proxy.stop()
        if not self.proxy.running:
            self.proxy.start(listen_socket(desired.netns))
            changes["listener"] = 1
        if self._applied is None or (self._applied.ports, self._applied.networks) != (desired.ports, desired.networks):
            err = self.worker.nft(nft_script(desired))
            if err:
                raise RuntimeError(f"steering table: {err}")
            changes["steering_table"] = 1
        return changes

    def invalidate(self) -> None:
        self._applied = None
        self.links.drop_sockets()

    def close(self) -> None:
        self.proxy.stop()
        self.links.close()
        if self._worker is not None:
            self._worker.close()
