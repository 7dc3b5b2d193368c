"""The DHCP feature: every host answers the DHCP of its own VMs, inside the agent (docs/dhcp.md);
the same responders send their router advertisements and answer DHCPv6 (docs/ipv6-dataplane.md).

Its desired state is `HostDesired.dhcp` (`compute.dhcp`: responders per network, leases, and the
L2 part: the service ports' plugs, FDB entries and server-id neighbours). `apply`, with two
`Manager`s (desired / applied / dirty / backoff):
1. `pairs`, by responder device: the responder veth pairs (`dataplane/dhcp_driver.ResponderLinks`).
   The kernel is read (one link dump) on the first pass and after `invalidate()` (leftovers of a
   crashed agent are deleted, existing pairs adopted); otherwise only new or changed responders
   are touched;
2. `thread`, keys "table" and "steer" (no backoff: what failed is retried on the next pass): the
   responder thread (`dataplane/dhcp_driver.ResponderServer`) gets the new lease table and, when
   it changed (or after `invalidate()`), the steering table `bridge vxnet_dhcp` (`compute.dhcp.steer_script`: the whole table when its
   state is unknown, else only the map elements that changed; one atomic transaction; the
   whole table is sent only when the kernel does not hold it already, so the resync after
   `invalidate()` counts a change only for real drift); the feature waits until the thread has applied both and has its sockets open on the current
   devices: a port is reported ACTIVE only when its DHCP answers. Nothing changed: no work at
   all (no syscall).

This module holds no kernel I/O of its own: it decides what to serve.

Failures (a veth pair backs off on its own; the thread's part is retried next pass): a responder whose veth cannot be made is in `failed` and
its leased ports are DOWN (a VM there would get no address), as are those of a device whose
socket did not open; an nft failure is in `failed` only (DHCP still answers the broadcast
frames without steering).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from vxnet.agent.features import FeatureResult, HostContext
from vxnet.agent.manager import Manager
from vxnet.compute.dhcp import DhcpState, Responder, steer_elements, steer_script
from vxnet.dataplane.dhcp_driver import ResponderLinks, ResponderServer, Served

log = logging.getLogger("vxnet.agent.dhcp")


class DhcpFeature:
    """The agent feature (see module contract)."""

    name = "dhcp"

    def __init__(self, ctx: HostContext, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.clock = clock
        self.links = ResponderLinks(ctx.netns)
        self.server = ResponderServer(ctx.netns)
        self.pairs: Manager[str, tuple[str, str, int]] = Manager()   # device -> (port, device, mtu)
        self.thread: Manager[str, Any] = Manager()                   # "table" -> served, "steer" -> elements
        self._ifindex: dict[str, int] = {}                           # device -> ifindex (as created or read)

    def counters(self) -> dict[str, dict[str, int]]:
        """Per network: offers, acks, naks, ignored, releases, declines (since start)."""
        return {nid: dict(c) for nid, c in self.server.counters.items()}

    def apply(self, desired: DhcpState) -> FeatureResult:
        try:
            return self._apply(desired)
        except Exception as e:   # a DHCP bug must not turn every port of the host DOWN
            log.exception("DHCP apply failed")
            self.invalidate()
            return FeatureResult(failed=(f"dhcp: {e}",),
                                 down=frozenset(pid for r in desired.responders for pid in _served_ports(r)))

    def _apply(self, desired: DhcpState) -> FeatureResult:
        changes: collections.Counter[str] = collections.Counter()
        failed: list[object] = []
        now = self.clock()
        by_dev = {r.device: r for r in desired.responders}
        self._converge_pairs(by_dev, now, changes, failed)
        waiting = set(self.pairs.pending())
        table = {d: Served(r, self._ifindex[d], r.lease_table(), frozenset(r.arp_ips))
                 for d, r in by_dev.items() if d not in waiting}
        if not self.server.alive:
            log.warning("DHCP responder thread stopped; starting a new one")
            counters = self.server.counters
            self.server.close()
            self.server = ResponderServer(self.ctx.netns)
            self.server.counters = counters
            self.thread.invalidate()
        t = self.thread
        t.want({"table": table, "steer": steer_elements(desired.responders)})
        upserts = {k: (v, prev) for k, v, prev in t.dirty(now)[0]}
        no_socket: frozenset[str] = frozenset()
        if upserts:
            # The thread is in-process: what it failed is retried on the next pass (forgotten,
            # not backed off), so one device without a socket never delays another's leases.
            steer = upserts.get("steer")
            # Unknown state (first pass, `invalidate()`): the whole table, which the thread
            # sends only when the kernel does not hold it already (a resync is no change).
            res = self.server.serve(table, steer_script(steer[1], steer[0]) or None if steer else None,
                                    steer[0] if steer is not None and steer[1] is None else None)
            no_socket = res.no_socket
            t.ok("table", None if no_socket else table)
            if steer is not None and res.nft_error is None:
                t.ok("steer", steer[0])
                if res.nft_applied:
                    changes["steering_table"] += 1
            elif steer is not None:
                log.warning("DHCP steering table failed: %s", res.nft_error)
                t.ok("steer", None)
                failed.append("dhcp steering table")
        failed += [f"dhcp socket {dev}" for dev in sorted(no_socket)]
        bad = waiting | set(no_socket)
        down = frozenset(pid for d in bad if d in by_dev for pid in _served_ports(by_dev[d]))
        return FeatureResult(failed=tuple(failed), down=down, changes=dict(changes))

    def _converge_pairs(self, by_dev: dict[str, Responder], now: float, changes: collections.Counter[str],
                        failed: list[object]) -> None:
        m = self.pairs
        m.want({d: (r.port, d, r.mtu) for d, r in by_dev.items()})
        have: dict[str, Any] = {}
        if not m.known:
            try:
                have = self.links.read()
            except OSError as e:       # the link dump itself failed: nothing is known
                failed.append(f"dhcp links: {e}")
                for d in by_dev:
                    m.failed(d, now)
                return
            m.observe(have)
            m.mark_known()

        def ensure(dev: str, _: object, prev: object) -> None:
            pair = have.get(dev) if prev is None else self.links.read().get(dev)   # changed: read it back
            self._ifindex[dev] = self.links.ensure(by_dev[dev], pair)
            if pair is None or prev is not None:          # adopting a correct pair is no change
                changes["responder_created" if pair is None else "responder_updated"] += 1

        def delete(dev: str, _: object) -> None:
            self.links.delete(dev)
            self._ifindex.pop(dev, None)
            changes["responder_deleted"] += 1

        for dev, e in m.run(now, ensure, delete, (OSError, IndexError)):
            log.warning("DHCP responder %s: %s", dev, e)
            failed.append(f"dhcp responder {dev}")

    def invalidate(self) -> None:
        self.pairs.invalidate()
        self.thread.invalidate()

    def close(self) -> None:
        self.server.close()
        self.links.close()


def _served_ports(r: Responder) -> set[str]:
    """The ports a responder answers (DHCPv4 and DHCPv6 leases): DOWN when it cannot."""
    return {lease.port_id for lease in r.leases} | {lease.port_id for lease in r.v6.leases}


def build(ctx: HostContext) -> list[DhcpFeature]:
    """The DHCP feature (every host)."""
    return [DhcpFeature(ctx)]
