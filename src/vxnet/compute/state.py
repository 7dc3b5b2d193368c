"""Desired (and read-back actual) host state as frozen, hashable dataclasses.

Every entry has a `key`; two entries with the same key describe the same kernel object, and
entries that differ under one key mean "this object must be changed". The dataplane drivers
read the kernel back into these same types so desired and actual compare directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable


@dataclasses.dataclass(frozen=True, order=True, slots=True)
class Bridge:
    """One Linux bridge per network present on the host."""

    name: str
    mac: str
    mtu: int
    up: bool = True
    ipv6_quiet: bool = True     # IPv6 on (the ND suppression table lives there), no address of its own
    # Its own br_netfilter switches (nf_call_iptables/ip6tables; the namespace-wide sysctls are
    # 0): on only where a local port is filtered (`compute.l2`), so bridged frames of other
    # networks skip the inet hooks. Read back: None when the two switches differ.
    nf_call: bool | None = False

    @property
    def key(self) -> Hashable:
        return self.name


@dataclasses.dataclass(frozen=True, order=True, slots=True)
class Vxlan:
    """The VXLAN device of a network: no learning, port of its bridge with neigh_suppress on."""

    name: str
    vni: int
    local_ip: str
    bridge: str
    mtu: int
    dstport: int = 4789
    learning: bool = False          # vxlan-level learning of remote VTEPs
    port_learning: bool = False     # bridge-port learning on the vxlan port
    neigh_suppress: bool = True     # ARP answered from the bridge's neighbour table
    up: bool = True

    @property
    def key(self) -> Hashable:
        return self.name


@dataclasses.dataclass(frozen=True, order=True, slots=True)
class Plug:
    """A VM-facing device (created by the hypervisor) attached to a bridge with the network MTU."""

    tap: str
    bridge: str
    mtu: int
    up: bool = True
    parent: str = ""      # a trunk subport's VLAN device: the parent tap it is created on...
    vid: int = 0          # ...and its 802.1Q VLAN id (the agent creates and deletes such a device)

    @property
    def key(self) -> Hashable:
        return self.tap


@dataclasses.dataclass(frozen=True, order=True, slots=True)
class Fdb:
    """A forwarding entry.

    `dst` set: a `self` entry on a VXLAN device (MAC -> remote VTEP).
    `dst` None: a `master static` entry on a bridge port (the port this MAC lives behind).
    """

    dev: str
    mac: str
    dst: str | None = None

    @property
    def master(self) -> bool:
        return self.dst is None

    @property
    def key(self) -> Hashable:
        return (self.dev, self.mac, self.dst is None)


@dataclasses.dataclass(frozen=True, order=True, slots=True)
class Neigh:
    """A permanent neighbour entry on a bridge: the table ARP suppression answers from."""

    dev: str
    ip: str
    mac: str

    @property
    def key(self) -> Hashable:
        return (self.dev, self.ip)


@dataclasses.dataclass(frozen=True, order=True, slots=True)
class LocalPort:
    """A port bound to this host: where its VM device is expected and what it needs."""

    port_id: str
    tap: str
    network_id: str
    bridge: str
    mac: str


@dataclasses.dataclass(frozen=True)
class HostState:
    """The whole L2 state of one host."""

    bridges: frozenset[Bridge] = frozenset()
    vxlans: frozenset[Vxlan] = frozenset()
    plugs: frozenset[Plug] = frozenset()
    fdb: frozenset[Fdb] = frozenset()
    neighs: frozenset[Neigh] = frozenset()
    local_ports: frozenset[LocalPort] = frozenset()

    def size(self) -> dict[str, int]:
        """Entry counts per kind (for metrics and logs)."""
        return {f.name: len(getattr(self, f.name)) for f in dataclasses.fields(self)}


def index(entries: Iterable[object]) -> dict[Hashable, object]:
    """Entries by key."""
    return {e.key: e for e in entries}  # type: ignore[attr-defined]


def merge(parts: Iterable[HostState]) -> HostState:
    """The union of partial host states (per network, per feature)."""
    parts = list(parts)
    if not parts:
        return HostState()
    if len(parts) == 1:
        return parts[0]
    return HostState(*(frozenset().union(*(getattr(p, f.name) for p in parts))
                       for f in dataclasses.fields(HostState)))
