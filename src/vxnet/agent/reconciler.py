"""Host reconciler: desired `HostState` -> read the kernel -> diff -> apply, level-triggered.

Contract:
- `reconcile(desired)` converges the kernel to `desired` and returns which local ports have
  their data path fully applied (ACTIVE) and which do not (DOWN: tap absent or a failure).
  Calling it again with the same `desired` changes nothing (idempotent); a failed entry is
  simply still different next time (retried by the caller's next pass).
- Links are read from the kernel on every pass (one dump). FDB and neighbour entries are read
  on the first pass and after `invalidate()` (drift repair, link deletions, kernel events), and
  otherwise taken from the cache of what the previous pass applied, so a port coming up costs
  one link dump and one netlink batch, not a dump of every entry.
- Desired plugs (and their tap FDB entries) count only for taps present in the kernel: the
  hypervisor creates taps, the agent plugs them when they appear.
- Only owned objects are touched (see `vxnet.dataplane`). The caller must not call this before
  it has a complete view: an incomplete desired state would delete live entries.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from pyroute2 import IPRoute

from vxnet.compute import naming
from vxnet.compute.diff import Diff, HostDiff, apply, diff
from vxnet.compute.state import Fdb, HostState, Neigh
from vxnet.dataplane.links_driver import LinksDriver, read_links
from vxnet.dataplane.neigh_driver import apply_entries, read_fdb, read_neighs
from vxnet.dataplane.rtnl import RtnlSocket

log = logging.getLogger("vxnet.agent.reconciler")


@dataclasses.dataclass(frozen=True)
class ReconcileResult:
    """Outcome of one pass."""

    diff: HostDiff
    failed: tuple[object, ...]
    active: frozenset[str]      # local port ids whose data path is applied
    down: frozenset[str]        # local port ids without a data path (no tap yet, or failed)
    seconds: float
    full_read: bool

    @property
    def changes(self) -> int:
        return sum(self.diff.counts().values())


class Reconciler:
    """Owns the netlink sockets of one host (namespace `netns`, or the caller's)."""

    def __init__(self, underlay_ip: str, netns: str | None = None) -> None:
        self.underlay_ip = underlay_ip
        self.ipr = IPRoute(netns=netns) if netns else IPRoute()
        self.rtnl = RtnlSocket(netns)
        self._entries: tuple[frozenset[Fdb], frozenset[Neigh]] | None = None
        self.owned_ifindexes: frozenset[int] = frozenset()   # read by the event monitor thread

    def close(self) -> None:
        self.ipr.close()
        self.rtnl.close()

    def invalidate(self) -> None:
        """Forget the cached FDB/neighbour state: the next pass reads the kernel."""
        self._entries = None

    def reconcile(self, desired: HostState) -> ReconcileResult:
        """Converge the kernel to `desired` (see module contract)."""
        t0 = time.perf_counter()
        links = read_links(self.rtnl)
        present = links.tap_names
        wanted_taps = {p.tap for p in desired.plugs}
        want_plugs = frozenset(p for p in desired.plugs if p.tap in present)
        have_plugs = frozenset(p for p in links.taps if naming.is_bridge(p.bridge) or p.tap in wanted_taps)
        d_br = diff(desired.bridges, links.bridges)
        d_vx = diff(desired.vxlans, links.vxlans)
        d_pl = diff(want_plugs, have_plugs)

        # Order matters for the first packets: a VM's device is attached (and brought up) only
        # after its network's FDB and neighbour entries are in place; otherwise its first ARP
        # can miss the suppression table and the VM retries only a second later.
        drv = LinksDriver(self.ipr, self.underlay_ip, links.index)
        drv.apply_up(d_br, d_vx)
        self.owned_ifindexes = frozenset(i for n, i in drv.index.items() if naming.is_owned(n))
        if not (d_br.empty and d_vx.empty) or d_pl.delete:
            self.invalidate()       # entries went with deleted/recreated links

        full_read = self._entries is None
        plugged_before = frozenset(p.tap for p in have_plugs if naming.is_bridge(p.bridge))
        if self._entries is None:
            index = read_links(self.rtnl).index if not (d_br.empty and d_vx.empty) else links.index
            self._entries = (read_fdb(self.rtnl, index, plugged_before), read_neighs(self.rtnl, index))
        have_fdb, have_neigh = self._entries
        plugged = frozenset(p.tap for p in want_plugs)
        want_fdb = frozenset(e for e in desired.fdb if not naming.is_plug(e.dev) or e.dev in plugged)
        d_fdb = diff(want_fdb, have_fdb)
        d_nb = diff(desired.neighs, have_neigh)
        on_tap = lambda e: naming.is_plug(e.dev)
        failed_entries = apply_entries(self.rtnl, d_fdb.without(on_tap), d_nb, drv.index)
        drv.apply_plugs(d_pl)
        failed_entries += apply_entries(self.rtnl, d_fdb.without(lambda e: not on_tap(e)), Diff(), drv.index)
        self._entries = (apply(have_fdb, d_fdb, failed_entries), apply(have_neigh, d_nb, failed_entries))

        drv.apply_down(d_br, d_vx, d_pl)
        failed = tuple(drv.failed) + tuple(failed_entries)
        if failed:
            self.invalidate()

        bad_devs = {getattr(f, "name", None) or getattr(f, "tap", None) or getattr(f, "dev", None) for f in failed}
        active, down = set(), set()
        for lp in desired.local_ports:
            vx = naming.vxlan_name(lp.network_id)
            ok = lp.tap in plugged and not bad_devs & {lp.tap, lp.bridge, vx}
            (active if ok else down).add(lp.port_id)
        hd = HostDiff(d_br, d_vx, d_pl, d_fdb, d_nb)
        return ReconcileResult(hd, failed, frozenset(active), frozenset(down), time.perf_counter() - t0, full_read)
