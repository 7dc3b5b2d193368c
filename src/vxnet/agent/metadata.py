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
   VM's request is steered only once its way to the listener exists. The whole table when its
   state is unknown (start, `invalidate()`, a failure), else only the map elements that changed;
   the whole table is sent only when the kernel does not hold it already (its listing: the rules
   as nft printed them after our own last whole-table transaction, the elements as sets,
   dataplane/nft_image.py), so a resync rewrites nothing, and a replace is a change (drift).
Nothing changed: no work at all. With no served port, the table, the service ports and the
namespace go.

Failures are in `failed` and retried on the next pass; they do not turn ports DOWN (a VM
without metadata still has its network; cloud-init retries).
"""

from __future__ import annotations

import logging

from vxnet.agent.features import FeatureResult, HostContext
from vxnet.agent.metadata_proxy import MetadataProxy
from vxnet.compute.metadata import Elements, MetadataState, netns_name, nft_script, steer_elements, steer_script
from vxnet.dataplane import nft_image
from vxnet.dataplane.metadata_driver import MetadataLinks, NsWorker, listen_socket
from vxnet.dataplane.nft_exec import NftExecutor

log = logging.getLogger("vxnet.agent.metadata")


class MetadataFeature:
    """The agent feature (see module contract)."""

    name = "metadata"

    def __init__(self, ctx: HostContext) -> None:
        self.ctx = ctx
        self.links = MetadataLinks(ctx.netns)
        self.proxy = MetadataProxy(ctx.metadata)
        self._worker: NsWorker | None = None
        self._executor: NftExecutor | None = None
        self._applied: MetadataState | None = None
        self._steered: Elements | None = None         # the steering maps as applied (None: unknown)
        self._cleaned = False
        self._skeleton: tuple[str, ...] | None = None  # the table's rules as nft listed them (ours)

    def _nft(self, script: str) -> str | None:
        """One transaction in the host namespace: in the calling thread when the agent runs in it
        (passes are serialized), else through a worker thread that entered it."""
        if self.ctx.netns is None:
            if self._executor is None:
                self._executor = NftExecutor(ledger=True)
            return self._executor.run(script)
        if self._worker is None:
            self._worker = NsWorker(self.ctx.netns, "vxnet-agent-metadata-nft")
        return self._worker.nft(script)

    def _listing(self) -> nft_image.TableImage | None:
        """The steering table as the kernel holds it (None: absent or unreadable)."""
        from vxnet.compute.metadata import NFT_TABLE

        cmd = f"list table bridge {NFT_TABLE}"
        try:
            if self.ctx.netns is None:
                if self._executor is None:
                    self._executor = NftExecutor(ledger=True)
                return nft_image.parse(self._executor.output(cmd, 0))
            if self._worker is None:
                self._worker = NsWorker(self.ctx.netns, "vxnet-agent-metadata-nft")
            return nft_image.parse(self._worker.nft_output(cmd))
        except OSError:
            return None

    def _holds(self, wanted: Elements) -> bool:
        """Whether the kernel's steering table is exactly the one holding `wanted`."""
        if self._skeleton is None:
            return False
        image = self._listing()
        want = {name: nft_image.norm_elements(f"{k} : {v}" for k, v in els) for name, els in wanted.items()}
        return image is not None and image.skeleton == self._skeleton and image.elements == want

    def apply(self, desired: MetadataState) -> FeatureResult:
        if desired == self._applied and (not desired.ports or self.proxy.running):
            return FeatureResult()
        try:
            changes = self._apply(desired)
        except (OSError, RuntimeError) as e:
            log.warning("metadata apply failed: %s", e)
            self.invalidate()
            return FeatureResult(failed=(f"metadata: {e}",))
        except Exception as e:   # a metadata bug must not turn every port of the host DOWN
            log.exception("metadata apply failed")
            self.invalidate()
            return FeatureResult(failed=(f"metadata: {e}",))
        self._applied = desired
        return FeatureResult(changes=changes)

    def _apply(self, desired: MetadataState) -> dict[str, int]:
        if not desired.ports:
            changes = {}
            if self._applied is None or self._applied.ports or not self._cleaned:
                self._steered = None
                if self._listing() is not None:         # absent (the usual case): no transaction at all
                    err = self._nft(nft_script(desired))
                    if err:
                        raise RuntimeError(f"steering table: {err}")
                    changes["steering_elements"] = 1
                self._steered = steer_elements(desired)
                self.proxy.set_table({})
                self.proxy.stop()
                if self.links.remove(netns_name(self.ctx.host)):
                    changes["removed"] = 1
                self._cleaned = True
            return changes
        self._cleaned = False
        changes = self.links.converge(desired)
        self.proxy.set_table(desired.by_proxy_ip())
        if changes.get("namespace"):       # a new namespace: the old listener is in the old one
            self.proxy.stop()
        if not self.proxy.running:
            self.proxy.start(listen_socket(desired.netns))
            changes["listener"] = 1
        wanted = steer_elements(desired)
        known, self._steered = self._steered, None       # unknown until the transaction has applied
        script = steer_script(known, wanted)
        if script and not (known is None and self._holds(wanted)):    # a resync of an unchanged table: nothing
            err = self._nft(script)
            if err:
                raise RuntimeError(f"steering table: {err}")
            changes["steering_elements"] = 1
            if known is None or self._skeleton is None:
                image = self._listing()
                self._skeleton = image.skeleton if image is not None else None
        self._steered = wanted
        return changes

    def invalidate(self) -> None:
        self._applied = None
        self._steered = None
        self.links.drop_sockets()

    def close(self) -> None:
        self.proxy.stop()
        self.links.close()
        if self._worker is not None:
            self._worker.close()
        if self._executor is not None:
            self._executor.close()
