"""A stateful fake of the L2 reconciler's kernel (`agent.reconciler.Kernel`): links, FDB and
neighbour entries held in dicts, with the kernel behaviours the reconciler depends on:

- a VXLAN device needs its bridge, a plug needs its tap (made by the "hypervisor":
  `add_tap`) and its bridge; a `master` FDB entry needs its device to be a bridge port, a
  `self` entry a VXLAN device, a neighbour entry a bridge (else the operation fails, ENODEV or
  EINVAL, and the entry is reported failed);
- deleting a link takes its entries with it, and a bridge's deletion detaches its ports;
- replace is keyed like the kernel (FDB: device, MAC, master/self; neighbour: device, IP);
  deleting something absent is not an error (ENOENT counts as success);
- `fail` holds entries (any desired-state object) whose create/update fails while they are in it.

`state()` is the comparable content; `snapshot()` as the reconciler would read it back.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from vxnet.compute import naming
from vxnet.compute.diff import Diff, Without, against
from vxnet.compute.state import Bridge, Fdb, Neigh, Plug, Vxlan
from vxnet.dataplane.links_driver import LinkSnapshot


@dataclasses.dataclass
class Link:
    name: str
    kind: str                                # bridge | vxlan | tap | vlan (attrs: parent, vid)
    index: int
    attrs: dict[str, Any]
    master: str | None = None


class FakeKernel:
    def __init__(self) -> None:
        self.links_by_name: dict[str, Link] = {}
        self.fdb: dict[Hashable, Fdb] = {}
        self.neighs: dict[Hashable, Neigh] = {}
        self.fail: set[object] = set()
        self.calls = 0                       # write operations (links and entries)
        self.reads = 0                       # FDB/neighbour reads (a read against `expected` that misses one is read again)
        self.link_reads = 0                  # link table dumps
        self.link_event: Callable[[], None] = lambda: None   # what a link monitor would hear (every link change)
        self._ifindex = itertools.count(10)

    # -- the hypervisor's part ---------------------------------------------------------------
    def add_tap(self, name: str, mtu: int = 1500) -> None:
        self.links_by_name[name] = Link(name, "tap", next(self._ifindex), {"mtu": mtu, "up": False})
        self.link_event()

    # -- Kernel -------------------------------------------------------------------------------
    def read_links(self) -> LinkSnapshot:
        self.link_reads += 1
        bridges, vxlans, taps = set(), set(), set()
        for ln in self.links_by_name.values():
            a = ln.attrs
            if ln.kind == "bridge":
                bridges.add(Bridge(ln.name, a["mac"], a["mtu"], a["up"], nf_call=a.get("nf_call", False)))
            elif ln.kind == "vxlan":
                vxlans.add(dataclasses.replace(a["spec"], bridge=ln.master or "", mtu=a["mtu"], up=a["up"]))
            elif ln.kind == "vlan":
                taps.add(Plug(ln.name, ln.master or "", a["mtu"], a["up"], a["parent"], a["vid"]))
            elif naming.is_plug(ln.name):
                taps.add(Plug(ln.name, ln.master or "", a["mtu"], a["up"]))
        return LinkSnapshot(frozenset(bridges), frozenset(vxlans), frozenset(taps),
                            {n: ln.index for n, ln in self.links_by_name.items()})

    def links(self, index: dict[str, int]) -> FakeLinks:
        return FakeLinks(self, dict(index))

    def read_fdb(self, index: Mapping[str, int], taps: frozenset[str],
                 expected: frozenset[Fdb] | Without[Fdb] | None = None) -> frozenset[Fdb] | Without[Fdb] | None:
        self.reads += 1
        return against((e for e in self.fdb.values() if naming.is_vxlan(e.dev) or e.dev in taps), expected)

    def read_neighs(self, index: Mapping[str, int], expected: frozenset[Neigh] | None = None) -> frozenset[Neigh] | None:
        self.reads += 1
        return against((e for e in self.neighs.values() if naming.is_bridge(e.dev)), expected)

    def apply_entries(self, fdb: Diff[Fdb], neighs: Diff[Neigh], index: Mapping[str, int]) -> list[Fdb | Neigh]:
        failed: list[Fdb | Neigh] = []
        for d in (fdb, neighs):
            for e in [*d.create, *(new for _, new in d.update)]:
                self.calls += 1
                if e in self.fail or not self._entry_ok(e):
                    failed.append(e)
                else:
                    (self.fdb if isinstance(e, Fdb) else self.neighs)[e.key] = e     # type: ignore[index]
            for e in d.delete:
                self.calls += 1
                (self.fdb if isinstance(e, Fdb) else self.neighs).pop(e.key, None)      # type: ignore[arg-type]
        return failed

    def close(self) -> None:
        pass

    # -- inspection ---------------------------------------------------------------------------
    def state(self) -> tuple[Any, ...]:
        """The agent's footprint: owned links, plugged taps, entries (an unplugged tap keeps the
        MTU and up state it had, as in the kernel: that is the hypervisor's device)."""
        links = tuple(sorted((ln.name, ln.kind, ln.master, tuple(sorted((k, repr(v)) for k, v in ln.attrs.items())))
                             for ln in self.links_by_name.values() if ln.kind != "tap" or ln.master))
        return links, frozenset(self.fdb.values()), frozenset(self.neighs.values())

    # -- internals ----------------------------------------------------------------------------
    def _entry_ok(self, e: Fdb | Neigh) -> bool:
        ln = self.links_by_name.get(e.dev)
        if ln is None:
            return False
        if isinstance(e, Neigh):
            return ln.kind == "bridge"
        if e.dst is not None:
            return ln.kind == "vxlan"
        return ln.master is not None          # `master` entries only on bridge ports

    def delete(self, name: str) -> None:
        ln = self.links_by_name.pop(name, None)
        if ln is None:
            return
        self.link_event()
        for vlan in [o.name for o in self.links_by_name.values() if o.kind == "vlan" and o.attrs["parent"] == name]:
            self.delete(vlan)                 # a VLAN device goes with its lower device
        for other in self.links_by_name.values():
            if other.master == name:
                other.master = None
        self.fdb = {k: e for k, e in self.fdb.items() if e.dev != name and not (
            e.dst is None and self.links_by_name.get(e.dev) is not None and self.links_by_name[e.dev].master is None)}
        self.neighs = {k: e for k, e in self.neighs.items() if e.dev != name}


class FakeLinks:
    """`LinksDriver` on the fake (see `agent.reconciler.LinkOps`)."""

    def __init__(self, k: FakeKernel, index: dict[str, int]) -> None:
        self.k, self.index = k, index
        self.failed: list[object] = []

    def _do(self, entry: object, ok: bool) -> bool:
        self.k.calls += 1
        if entry in self.k.fail or not ok:
            self.failed.append(entry)
            return False
        if isinstance(entry, (Bridge, Vxlan, Plug)):
            self.k.link_event()               # a link write is a link event (ours too)
        return True

    def _bridge(self, b: Bridge) -> None:
        ln = self.k.links_by_name.get(b.name)
        if ln is None:
            ln = self.k.links_by_name[b.name] = Link(b.name, "bridge", next(self.k._ifindex), {})
        ln.attrs.update(mac=b.mac, mtu=b.mtu, up=b.up, nf_call=b.nf_call)
        self.index[b.name] = ln.index

    def _vxlan(self, v: Vxlan) -> None:
        ln = self.k.links_by_name.get(v.name)
        if ln is None:
            ln = self.k.links_by_name[v.name] = Link(v.name, "vxlan", next(self.k._ifindex), {})
        ln.attrs.update(spec=v, mtu=v.mtu, up=v.up)
        ln.master = v.bridge
        self.index[v.name] = ln.index

    def apply_up(self, bridges: Diff[Bridge], vxlans: Diff[Vxlan]) -> None:
        for b in [*bridges.create, *(n for _, n in bridges.update)]:
            if self._do(b, True):
                self._bridge(b)
        for v in vxlans.create:
            if self._do(v, v.bridge in self.k.links_by_name):
                self._vxlan(v)
        for old, v in vxlans.update:
            immutable = ("vni", "local_ip", "dstport", "learning")
            if any(getattr(old, f) != getattr(v, f) for f in immutable):
                self.k.delete(v.name)
            if self._do(v, v.bridge in self.k.links_by_name):
                self._vxlan(v)

    def apply_plugs(self, plugs: Diff[Plug]) -> None:
        for p in [*plugs.create, *(n for _, n in plugs.update)]:
            ln = self.k.links_by_name.get(p.tap)
            if p.parent:                      # a subport's VLAN device: made (or remade) on its parent
                if ln is not None and (ln.attrs["parent"], ln.attrs["vid"]) != (p.parent, p.vid):
                    self.k.delete(p.tap)
                    ln = None
                if ln is None and p.parent in self.k.links_by_name:
                    ln = self.k.links_by_name[p.tap] = Link(p.tap, "vlan", next(self.k._ifindex), {
                        "mtu": p.mtu, "up": False, "parent": p.parent, "vid": p.vid})
                    self.index[p.tap] = ln.index
            if self._do(p, ln is not None and p.bridge in self.k.links_by_name) and ln is not None:
                ln.master = p.bridge
                ln.attrs.update(mtu=p.mtu, up=p.up)

    def apply_down(self, bridges: Diff[Bridge], vxlans: Diff[Vxlan], plugs: Diff[Plug]) -> None:
        for p in plugs.delete:
            ln = self.k.links_by_name.get(p.tap)
            if not self._do(p, True) or ln is None:
                continue
            if ln.kind == "vlan":             # ours: deleted on unplug
                self.k.delete(p.tap)
                self.index.pop(p.tap, None)
            else:
                ln.master = None
                self.k.fdb = {k: e for k, e in self.k.fdb.items() if not (e.dev == p.tap and e.dst is None)}
        for entry in [*vxlans.delete, *bridges.delete]:
            assert naming.is_owned(entry.name), entry
            if self._do(entry, True):
                self.k.delete(entry.name)
                self.index.pop(entry.name, None)
