"""The "firewall" agent feature: port security and security groups (docs/security-groups.md).

- Its desired state is `HostDesired.firewall` (`compute_firewall`, pure). It adds nothing to
  the L2 state (it filters VM taps, it owns no bridge port).
- `apply(firewall)`: `NftDriver.apply` of the two tables in one transaction, incremental by
  chain and set element; nothing at all when the tables did not change.
- Revocation: an address that left a remote group loses its conntrack entries in the zones of
  the local ports whose rules name the group (as Neutron does), so an established connection
  it had is checked by the rules again (and dropped) instead of riding `ct established`.
- DOWN: every filtered local port when the transaction failed (its rules are not what they
  must be; retried next pass from the kernel), and ports the model could not filter
  (mark index capacity, tap name clash).
"""

from __future__ import annotations

import logging
import subprocess

from vxnet.agent.features import FeatureResult, HostContext
from vxnet.compute.firewall import Firewall
from vxnet.dataplane.nft_driver import NftDriver, NftError

log = logging.getLogger("vxnet.agent.firewall")


def revoked_flows(old: Firewall, new: Firewall) -> list[tuple[int, str]]:
    """(zone, address) whose conntrack entries must go: an address that left a remote group,
    in the zone of every local port whose rules (still) name that group."""
    zones = dict(new.zones)
    out: set[tuple[int, str]] = set()
    for gid, before in old.members.items():
        gone = before - new.members.get(gid, frozenset())
        if not gone:
            continue
        users = {g.group_id for g in new.groups if any(r.remote_group == gid for r in g.rules)}
        for p in new.ports:
            if users.intersection(p.groups) and p.bridge in zones:
                out.update((zones[p.bridge], a) for a in gone)
    return sorted(out)


class FirewallFeature:
    name = "firewall"

    def __init__(self, ctx: HostContext, driver: NftDriver | None = None) -> None:
        self.ctx = ctx
        self.driver = driver or NftDriver(ctx.netns)
        self._last: Firewall | None = None       # what the last successful apply loaded

    def apply(self, fw: Firewall) -> FeatureResult:
        try:
            res = self.driver.apply(fw.tables)
        except NftError as e:
            log.error("host=%s firewall rules not loaded: %s", self.ctx.host, e)
            return FeatureResult(failed=(f"firewall: {e}",),
                                 down=frozenset(p.port_id for p in fw.ports) | frozenset(fw.unfiltered))
        changes = {"nft_" + res.mode: 1} if res.mode not in ("noop", "unchanged") else {}
        failed: tuple[object, ...] = ()
        if self._last is not None and self._last is not fw:
            revoked = revoked_flows(self._last, fw)
            for zone, addr in revoked:
                try:
                    self.driver.forget_flows(zone, addr)
                except (NftError, OSError, subprocess.SubprocessError) as e:   # the rules are in place; log it
                    failed = (f"firewall: conntrack cleanup {addr}: {e}",)
                    log.warning("host=%s conntrack cleanup of %s in zone %s failed: %s", self.ctx.host, addr, zone, e)
            if revoked:
                changes["conntrack_revoked"] = len(revoked)
        self._last = fw
        return FeatureResult(failed=failed, down=frozenset(fw.unfiltered), changes=changes)

    def invalidate(self) -> None:
        self.driver.invalidate()

    def close(self) -> None:
        self.driver.close()
