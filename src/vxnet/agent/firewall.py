"""The "firewall" agent feature: port security and security groups (docs/security-groups.md).

- Its desired state is `HostDesired.firewall` (`compute_firewall`, pure). It adds nothing to
  the L2 state (it filters VM taps, it owns no bridge port).
- `apply(firewall)`: a `Manager` keyed by table holds what was applied; the tables that changed
  go to `NftDriver.apply` in one transaction, incremental by chain and set element (with their
  previous state; None after `invalidate()` or a failure: the driver reads the kernel);
  nothing at all when no table changed. A failed transaction backs off exponentially.
- Revocation: an address that left a remote group loses its conntrack entries in the zones of
  the local ports whose rules name the group (as Neutron does), so an established connection
  it had is checked by the rules again (and dropped) instead of riding `ct established`. The
  `conntrack -D` runs happen in a background thread once the rules are loaded, not in the pass
  (they cost tens of ms each: every other port's and feature's work would wait for them, e.g.
  a DHCP lease change of the same port).
- DOWN: every filtered local port while the tables are not loaded (failed, or waiting for
  the retry: its rules are not what they must be; they are also held: a tap not plugged yet
  is not plugged until its rules are loaded), and ports the model could not filter
  (mark index capacity, tap name clash).
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable

from vxnet.agent.features import FeatureResult, HostContext
from vxnet.agent.manager import Manager
from vxnet.compute.firewall import Firewall
from vxnet.compute.nft_table import NftTable
from vxnet.dataplane.nft_driver import NftDriver, NftError

log = logging.getLogger("vxnet.agent.firewall")


def revoked_flows(old: Firewall, new: Firewall) -> list[tuple[int, str]]:
    """(zone, address) whose conntrack entries must go: an address that left a remote group,
    in the zone of every local port whose rules (still) name that group."""
    zones = dict(new.zones)
    out: set[tuple[int, str]] = set()
    for gid, before, after in [*((g, b, new.members.get(g, frozenset())) for g, b in old.members.items()),
                               *((g, b, new.members6.get(g, frozenset())) for g, b in old.members6.items())]:
        gone = before - after
        if not gone:
            continue
        users = {g.group_id for g in new.groups if any(r.remote_group == gid for r in g.rules)}
        for p in new.ports:
            if users.intersection(p.groups) and p.bridge in zones:
                out.update((zones[p.bridge], a) for a in gone)
    return sorted(out)


class FirewallFeature:
    name = "firewall"

    def __init__(self, ctx: HostContext, driver: NftDriver | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.driver = driver or NftDriver(ctx.netns)
        self.clock = clock
        self.tables: Manager[tuple[str, str], NftTable] = Manager()
        self._last: Firewall | None = None    # membership of the last load (revocation; survives invalidate)

    def apply(self, fw: Firewall) -> FeatureResult:
        m, now = self.tables, self.clock()
        m.want({(t.family, t.name): t for t in fw.tables})
        upserts, _ = m.dirty(now)         # the tables are always desired: nothing to delete
        changes: dict[str, int] = {}
        if upserts:
            try:
                res = self.driver.apply([(t, previous) for _, t, previous in upserts])
                for key, t, _ in upserts:
                    m.ok(key, t)
                if res.mode not in ("noop", "unchanged", "verified"):   # only what changed the kernel
                    changes["nft_" + res.mode] = 1
                elif res.mode == "verified" and self._last is None:
                    log.info("host=%s firewall rules adopted from the kernel (nothing reloaded)", self.ctx.host)
            except NftError as e:
                log.error("host=%s firewall rules not loaded: %s", self.ctx.host, e)
                for key, _, _ in upserts:
                    m.failed(key, now)
        if m.pending():                   # failed now, or waiting for its retry
            filtered = frozenset(p.port_id for p in fw.ports)
            return FeatureResult(failed=("firewall: rules not loaded",), down=filtered | frozenset(fw.unfiltered),
                                 hold=filtered)
        if self._last is not None and self._last is not fw and (revoked := revoked_flows(self._last, fw)):
            changes["conntrack_revoked"] = len(revoked)
            threading.Thread(target=self._forget, args=(revoked,), name="vxnet-conntrack", daemon=True).start()
        self._last = fw
        return FeatureResult(down=frozenset(fw.unfiltered), changes=changes)

    def _forget(self, flows: list[tuple[int, str]]) -> None:
        """Off the pass (a `conntrack -D` run costs tens of ms and the rules are in place)."""
        for zone, addr in flows:
            try:
                self.driver.forget_flows(zone, addr)
            except (NftError, OSError, subprocess.SubprocessError) as e:
                log.warning("host=%s conntrack cleanup of %s in zone %s failed: %s", self.ctx.host, addr, zone, e)

    def invalidate(self) -> None:
        self.tables.invalidate()
        self.driver.invalidate()

    def close(self) -> None:
        self.driver.close()
