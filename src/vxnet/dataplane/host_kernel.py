"""The L2 reconciler's one seam to the kernel: links, FDB and neighbour entries of a host
namespace (`RtnlKernel`), behind the small interface the reconciler uses (`agent/reconciler.py`
`Kernel`). tests/support/fake_netlink.py implements the same interface on a dict table, so the
reconciler's apply/revert logic is tested without root.
"""

from __future__ import annotations

from collections.abc import Mapping

from vxnet.compute.diff import Diff, Without
from vxnet.compute.state import Fdb, Neigh
from vxnet.dataplane.links_driver import LinksDriver, LinkSnapshot, read_links
from vxnet.dataplane.neigh_driver import apply_entries, read_fdb, read_neighs
from vxnet.dataplane.rtnl import RtnlSocket
from vxnet.dataplane.rtnl_links import RtnlLinks


class RtnlKernel:
    """The real kernel of namespace `netns` (or the caller's): raw rtnetlink for links
    (`rtnl_links`), dumps and one batch for entries."""

    def __init__(self, underlay_ip: str, netns: str | None = None) -> None:
        self.underlay_ip = underlay_ip
        self.netns = netns
        self.rtnl = RtnlSocket(netns)
        self.ipr = RtnlLinks(self.rtnl)

    def read_links(self) -> LinkSnapshot:
        return read_links(self.rtnl)

    def links(self, index: dict[str, int]) -> LinksDriver:
        return LinksDriver(self.ipr, self.underlay_ip, index, self.rtnl, self.netns)

    def read_fdb(self, index: Mapping[str, int], taps: frozenset[str],
                 expected: frozenset[Fdb] | Without[Fdb] | None = None) -> frozenset[Fdb] | Without[Fdb] | None:
        return read_fdb(self.rtnl, index, taps, expected)

    def read_neighs(self, index: Mapping[str, int], expected: frozenset[Neigh] | None = None) -> frozenset[Neigh] | None:
        return read_neighs(self.rtnl, index, expected)

    def apply_entries(self, fdb: Diff[Fdb], neighs: Diff[Neigh], index: Mapping[str, int]) -> list[Fdb | Neigh]:
        return apply_entries(self.rtnl, fdb, neighs, index)

    def close(self) -> None:
        self.rtnl.close()
