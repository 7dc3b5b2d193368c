"""FDB and neighbour entries: read back and converge, in one netlink batch per apply.

Owned entries (everything else is left alone, even on our devices):
- on VXLAN devices: `self` unicast entries with a remote `dst` (Fdb(dev, mac, dst)) and
  `master` entries in state NOARP, i.e. `master static` (Fdb(dev, mac));
- on plugged taps: `master static` entries (Fdb(tap, mac));
- on bridges: neighbour entries in state PERMANENT (Neigh(bridge, ip, mac)), IPv4 and IPv6
  (the bridge's ARP and ND suppression table).
Kernel-made `permanent` (local) FDB entries, learned entries, all-zero (BUM) entries and
dynamic neighbours are never read as ours, so never deleted.

A `master` entry is always sent with state NOARP: without it the kernel makes a local
(`permanent`) entry that terminates the traffic on the host (KERNEL-NOTES §2, §9).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterator, Mapping

from vxnet.compute import naming
from vxnet.compute.diff import Diff, Without, against
from vxnet.compute.state import Fdb, Neigh
from vxnet.dataplane.rtnl import (
    AF_BRIDGE,
    NTF_MASTER,
    NTF_SELF,
    NUD_NOARP,
    NUD_PERMANENT,
    NeighRequest,
    RtnlSocket,
)

log = logging.getLogger("vxnet.dataplane.neigh")

ZERO_MAC = "00:00:00:00:00:00"
_OK = {0, errno.EEXIST}
_OK_DEL = {0, errno.ENOENT, errno.ENODEV, errno.ESRCH}


def read_fdb(rtnl: RtnlSocket, index: Mapping[str, int], taps: frozenset[str],
             expected: frozenset[Fdb] | Without[Fdb] | None = None) -> frozenset[Fdb] | Without[Fdb] | None:
    """Owned FDB entries on VXLAN devices and on the given (plugged) taps; with `expected`, as
    `compute.diff.against` returns them (None: an expected entry is missing, read again)."""
    names = {i: n for n, i in index.items() if naming.is_vxlan(n) or n in taps}

    def entries() -> Iterator[Fdb]:
        for r in rtnl.dump_neigh(AF_BRIDGE):
            dev = names.get(r.ifindex)
            if dev is None or not r.lladdr or r.lladdr == ZERO_MAC:
                continue
            if r.master is not None:
                if r.state == NUD_NOARP:
                    yield Fdb(dev, r.lladdr)
            elif r.flags & NTF_SELF and r.dst is not None and naming.is_vxlan(dev):
                yield Fdb(dev, r.lladdr, r.dst)

    return against(entries(), expected)


def read_neighs(rtnl: RtnlSocket, index: Mapping[str, int],
                expected: frozenset[Neigh] | None = None) -> frozenset[Neigh] | None:
    """Permanent IPv4 and IPv6 neighbour entries on owned bridges (`expected`: as `read_fdb`)."""
    names = {i: n for n, i in index.items() if naming.is_bridge(n)}
    return against((Neigh(names[r.ifindex], r.dst, r.lladdr)
                    for family in (socket.AF_INET, socket.AF_INET6)
                    for r in rtnl.dump_neigh(family)
                    if r.ifindex in names and r.state & NUD_PERMANENT and r.dst and r.lladdr), expected)


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _fdb_request(op: str, e: Fdb, ifindex: int) -> NeighRequest:
    if e.dst is None:
        return NeighRequest(op, AF_BRIDGE, ifindex, NUD_NOARP, NTF_MASTER, e.mac, None)
    return NeighRequest(op, AF_BRIDGE, ifindex, NUD_NOARP | NUD_PERMANENT, NTF_SELF, e.mac, e.dst)


def _neigh_request(op: str, e: Neigh, ifindex: int) -> NeighRequest:
    if op == "del":
        return NeighRequest(op, _family(e.ip), ifindex, 0, 0, None, e.ip)
    return NeighRequest(op, _family(e.ip), ifindex, NUD_PERMANENT, 0, e.mac, e.ip)


def apply_entries(rtnl: RtnlSocket, fdb: Diff[Fdb], neighs: Diff[Neigh], index: Mapping[str, int]) -> list[Fdb | Neigh]:
    """Converge FDB and neighbour entries in one batch; returns the entries that failed."""
    reqs: list[NeighRequest] = []
    owners: list[tuple[Fdb | Neigh, bool]] = []
    failed: list[Fdb | Neigh] = []

    def add(entry: Fdb | Neigh, op: str) -> None:
        idx = index.get(entry.dev)
        if idx is None:
            if op != "del":          # device gone: its entries went with it
                failed.append(entry)
            return
        reqs.append(_fdb_request(op, entry, idx) if isinstance(entry, Fdb) else _neigh_request(op, entry, idx))
        owners.append((entry, op == "del"))

    for d in (fdb, neighs):
        for e in d.create:
            add(e, "replace")
        for _, e in d.update:
            add(e, "replace")
        for e in d.delete:
            add(e, "del")
    for (entry, is_del), code in zip(owners, rtnl.batch(reqs)):
        if code not in (_OK_DEL if is_del else _OK):
            log.warning("%s %s failed: %s", "delete" if is_del else "replace", entry, errno.errorcode.get(code, code))
            failed.append(entry)
    return failed
