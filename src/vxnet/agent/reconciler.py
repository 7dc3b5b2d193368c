"""Host reconciler: desired `HostState` -> read the kernel -> diff -> apply, level-triggered.

Contract:
- `reconcile(desired)` converges the kernel to `desired` and returns which local ports have
  their data path fully applied (ACTIVE) and which do not (DOWN: tap absent or a failure).
  Calling it again with the same `desired` changes nothing (idempotent); a failed entry is
  simply still different next time (retried by the caller's next pass).
- Links are read from the kernel (one dump) on every pass, except while a link monitor is
  subscribed (`watch_links`, the agent's monitor thread): then a pass reuses the previous pass's
  link table if no link event came since it was read and that pass changed no link (parsing the
  dump is ~1 ms of Python with 50 links, on the port-up path). FDB and neighbour entries are
  read on the first pass and after `invalidate()` (drift repair, link deletions, kernel events),
  and otherwise taken from the cache of what the previous pass applied, so a port coming up
  costs one netlink batch, not a dump of every entry.
- Desired plugs (and their tap FDB entries) count only for taps present in the kernel: the
  hypervisor creates taps, the agent plugs them when they appear. A tap the caller holds
  (`hold`: its port's filters are not loaded) is not plugged until it is released; one already
  plugged stays (the filters it had are still in force: nftables transactions are all or
  nothing).
- Only owned objects are touched (see `vxnet.dataplane`). The caller must not call this before
  it has a complete view: an incomplete desired state would delete live entries.
- All kernel access goes through one `Kernel` (`dataplane/host_kernel.RtnlKernel`; the tests'
  `tests/support/fake_netlink.FakeKernel` is a stateful fake of it).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from typing import Protocol

from vxnet.compute import naming
from vxnet.compute.diff import Diff, HostDiff, Without, apply, diff
from vxnet.compute.state import Bridge, Fdb, HostState, Neigh, Plug, Vxlan
from vxnet.dataplane.links_driver import LinkSnapshot

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
    absent: frozenset[str] = frozenset()   # taps of desired plugs not in the kernel (yet)
    phases: tuple[tuple[str, float], ...] = ()   # (phase, seconds since the pass started), in order

    @property
    def changes(self) -> int:
        return sum(self.diff.counts().values())


class LinkOps(Protocol):
    """Applies link diffs of one pass; `failed` collects what failed, `index` names -> ifindex."""

    index: dict[str, int]
    failed: list[object]

    def apply_up(self, bridges: Diff[Bridge], vxlans: Diff[Vxlan]) -> None: ...
    def apply_plugs(self, plugs: Diff[Plug]) -> None: ...
    def apply_down(self, bridges: Diff[Bridge], vxlans: Diff[Vxlan], plugs: Diff[Plug]) -> None: ...


class Kernel(Protocol):
    """What the reconciler reads and writes (dataplane/host_kernel.py)."""

    def read_links(self) -> LinkSnapshot: ...
    def links(self, index: dict[str, int]) -> LinkOps: ...
    # With `expected` (the desired entries): `compute.diff.against` (None: read again without).
    def read_fdb(self, index: Mapping[str, int], taps: frozenset[str],
                 expected: frozenset[Fdb] | Without[Fdb] | None = None) -> frozenset[Fdb] | Without[Fdb] | None: ...
    def read_neighs(self, index: Mapping[str, int], expected: frozenset[Neigh] | None = None
                    ) -> frozenset[Neigh] | None: ...
    def apply_entries(self, fdb: Diff[Fdb], neighs: Diff[Neigh], index: Mapping[str, int]) -> list[Fdb | Neigh]: ...
    def close(self) -> None: ...


APPLY_CHUNK = 4000     # entries handed to the kernel at a time (two of its netlink writes)


def _apply_entries(k: Kernel, fdb: Diff[Fdb], neighs: Diff[Neigh], index: Mapping[str, int]) -> list[Fdb | Neigh]:
    """`k.apply_entries` on at most APPLY_CHUNK entries at a time, in the same order (FDB, then
    neighbours; creates, updates, deletes): the driver holds a request object and its encoding
    per entry, ~5 MB for the 30,000 entries of a first pass with 10,000 ports in view. The
    netlink writes are the same (the socket writes 2,000 messages at a time anyway)."""
    if len(fdb) + len(neighs) <= APPLY_CHUNK:
        return k.apply_entries(fdb, neighs, index)
    failed: list[Fdb | Neigh] = []
    for d, as_fdb in ((fdb, True), (neighs, False)):
        for field in ("create", "update", "delete"):
            items: tuple = getattr(d, field)     # type: ignore[type-arg]
            for i in range(0, len(items), APPLY_CHUNK):
                part = Diff(**{field: items[i:i + APPLY_CHUNK]})
                failed += k.apply_entries(part, Diff(), index) if as_fdb else k.apply_entries(Diff(), part, index)
    return failed


class Reconciler:
    """Owns the kernel access of one host (namespace `netns`, or the caller's)."""

    def __init__(self, underlay_ip: str, netns: str | None = None, kernel: Kernel | None = None) -> None:
        if kernel is None:
            from vxnet.dataplane.host_kernel import RtnlKernel
            kernel = RtnlKernel(underlay_ip, netns)
        self.underlay_ip = underlay_ip
        self.kernel = kernel
        # what the kernel holds: the previous pass's wanted sets (or a full read's)
        self._entries: tuple[frozenset[Fdb] | Without[Fdb], frozenset[Neigh]] | None = None
        # after `invalidate()`: what the kernel held after the last pass, to read it against
        self._hint: tuple[frozenset[Fdb] | Without[Fdb], frozenset[Neigh]] | None = None
        self.owned_ifindexes: frozenset[int] = frozenset()   # read by the event monitor thread
        # The link table of the last pass, reused while no link event came since it was read
        # (see `watch_links`); None: read the kernel.
        self._links: LinkSnapshot | None = None
        self._links_lock = threading.Lock()
        self._links_gen = 0             # bumped by every link event (and by watch_links)
        self._links_at = -1             # the generation `_links` was read at
        self._watched = False           # a link monitor is subscribed: events reach links_changed

    def watch_links(self, on: bool) -> None:
        """A netlink link monitor of this host's namespace has subscribed (`on`) or stopped.
        While one is subscribed, every RTM_NEWLINK/RTM_DELLINK it receives must reach
        `links_changed`; a pass then reuses the previous pass's link table when no link event
        came since it was read and that pass changed no link (its own writes are events the
        monitor may not have seen yet). Without a monitor every pass reads the kernel."""
        with self._links_lock:
            self._watched = on
            self._links_gen += 1
            self._links = None

    def links_changed(self) -> None:
        """A link was added, changed or removed (a monitor event): the next pass reads the kernel."""
        with self._links_lock:
            self._links_gen += 1

    def close(self) -> None:
        self.kernel.close()

    def invalidate(self) -> None:
        """Forget the cached FDB/neighbour state and link table: the next pass reads the kernel
        (against what it held after the last pass: see `reconcile`)."""
        if self._entries is not None:
            self._hint = self._entries
        self._entries = None
        self._links = None

    def _read_links(self) -> tuple[LinkSnapshot, int]:
        """The link table (the previous pass's while it is still true, see `watch_links`) and the
        event generation it is valid at."""
        with self._links_lock:
            gen, cached = self._links_gen, self._links if self._links_at == self._links_gen else None
        return (cached if cached is not None else self.kernel.read_links()), gen

    def reconcile(self, desired: HostState, hold: frozenset[str] = frozenset()) -> ReconcileResult:
        """Converge the kernel to `desired` (see module contract); the taps of the local ports
        in `hold` are not plugged if they are not plugged already (their filters are not loaded)."""
        t0 = time.perf_counter()
        k = self.kernel
        links, links_gen = self._read_links()
        phases = [("read_links", time.perf_counter() - t0)]
        present = links.tap_names
        wanted_taps = {p.tap for p in desired.plugs}
        have_plugs = frozenset(p for p in links.taps if naming.is_bridge(p.bridge) or p.tap in wanted_taps)
        held = {lp.tap for lp in desired.local_ports if lp.port_id in hold} if hold else set()
        # a subport's VLAN device is made on its parent's tap (links driver): wanted once that is
        want_plugs = frozenset(p for p in desired.plugs if (p.tap in present or (p.parent and p.parent in present))
                               and (p.tap not in held or p in have_plugs))
        d_br = diff(desired.bridges, links.bridges)
        d_vx = diff(desired.vxlans, links.vxlans)
        d_pl = diff(want_plugs, have_plugs)

        # Order matters for the first packets: a VM's device is attached (and brought up) only
        # after its network's FDB and neighbour entries are in place; otherwise its first ARP
        # can miss the suppression table and the VM retries only a second later.
        drv = k.links(links.index)
        drv.apply_up(d_br, d_vx)
        phases.append(("up", time.perf_counter() - t0))
        self.owned_ifindexes = frozenset(i for n, i in drv.index.items() if naming.is_owned(n))
        if not (d_br.empty and d_vx.empty) or d_pl.delete:
            self.invalidate()       # entries went with deleted/recreated links
            if d_br.update or d_br.delete or d_vx.update or d_vx.delete or d_pl.delete:
                self._hint = None   # ... so the kernel no longer holds what the last pass left

        full_read = self._entries is None
        plugged_before = frozenset(p.tap for p in have_plugs if naming.is_bridge(p.bridge))
        plugged = frozenset(p.tap for p in want_plugs)
        unplugged = [e for e in desired.fdb if naming.is_plug(e.dev) and e.dev not in plugged]
        # The entries on taps not plugged (yet) are not wanted: the desired set minus those few,
        # not a copy of its 20,000 others (held as the cache below: a copy per pass was ~1 MB
        # of the agent's peak and of its resident memory with 10,000 ports in view).
        want_fdb: frozenset[Fdb] | Without[Fdb] = Without(desired.fdb, unplugged) if unplugged else desired.fdb
        if self._entries is None:
            index = k.read_links().index if not (d_br.empty and d_vx.empty) else links.index
            # Read against what the kernel held after the last pass (a resync in a burst of
            # changes: the new entries are not there yet) or else what is wanted: a kernel that
            # holds it costs no copy of its entries (compute.diff.against); a tap plugged only
            # now has no entries to read yet. Drift makes it read again without (a copy).
            hint_fdb, hint_neighs = self._hint or (want_fdb, desired.neighs)
            self._hint = None
            fdb = k.read_fdb(index, plugged_before, hint_fdb if plugged <= plugged_before else None)
            neighs = k.read_neighs(index, hint_neighs)
            self._entries = (fdb if fdb is not None else k.read_fdb(index, plugged_before),
                             neighs if neighs is not None else k.read_neighs(index))   # type: ignore[assignment]
        have_fdb, have_neigh = self._entries
        d_fdb = diff(want_fdb, have_fdb)
        d_nb = diff(desired.neighs, have_neigh)
        on_tap = lambda e: naming.is_plug(e.dev)
        failed_entries = _apply_entries(k, d_fdb.without(on_tap), d_nb, drv.index)
        phases.append(("entries", time.perf_counter() - t0))
        drv.apply_plugs(d_pl)
        phases.append(("plugs", time.perf_counter() - t0))
        failed_entries += _apply_entries(k, d_fdb.without(lambda e: not on_tap(e)), Diff(), drv.index)
        phases.append(("tap_entries", time.perf_counter() - t0))
        if failed_entries:
            self._entries = (apply(have_fdb, d_fdb, failed_entries), apply(have_neigh, d_nb, failed_entries))
        else:
            # The kernel now holds exactly what was wanted (the diff's contract): the cache is the
            # desired sets themselves, not a rebuilt copy of their 30,000 entries (and a full
            # read's kernel objects are let go at once).
            self._entries = (want_fdb, desired.neighs)

        drv.apply_down(d_br, d_vx, d_pl)
        failed = tuple(drv.failed) + tuple(failed_entries)
        if failed:
            self.invalidate()
        with self._links_lock:     # kept only if this pass changed no link (see watch_links)
            keep = self._watched and not failed and d_br.empty and d_vx.empty and d_pl.empty
            self._links, self._links_at = (links, links_gen) if keep else (None, -1)

        bad_devs = {getattr(f, "name", None) or getattr(f, "tap", None) or getattr(f, "dev", None) for f in failed}
        active, down = set(), set()
        for lp in desired.local_ports:
            vx = naming.vxlan_name(lp.network_id)
            ok = lp.tap in plugged and not bad_devs & {lp.tap, lp.bridge, vx}
            (active if ok else down).add(lp.port_id)
        hd = HostDiff(d_br, d_vx, d_pl, d_fdb, d_nb)
        return ReconcileResult(hd, failed, frozenset(active), frozenset(down), time.perf_counter() - t0, full_read,
                               frozenset(wanted_taps - present), tuple(phases))
