"""Desired (and read-back actual) host state as frozen, hashable dataclasses.

Every entry has a `key`; two entries with the same key describe the same kernel object, and
entries that differ under one key mean "this object must be changed". The dataplane drivers
read the kernel back into these same types so desired and actual compare directly.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Hashable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from typing import TypeVar

E = TypeVar("E", bound=Hashable)


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


INDEX_AFTER = 2048      # lookups in a `Parts` before it indexes its parts by device (a diff asks a few)


class Parts(AbstractSet[E]):
    """A set made of disjoint parts (frozensets) without a merged copy: the agent's FDB and
    neighbour entries, one part per network (plus one of the features' entries), as
    `compute.host` assembles them. With 10,000 ports in view a merged copy is ~1.6 MB of set
    tables, and a pass that changes any network built a new one beside the previous pass's.
    The parts must not overlap (the caller's invariant: a network's entries are on its own
    devices); the diff compares two such sets part by part (`compute.diff`)."""

    __slots__ = ("_by_dev", "_lookups", "parts")

    def __init__(self, parts: Iterable[frozenset[E]]) -> None:
        self.parts = tuple(p for p in parts if p)
        self._by_dev: dict[str, tuple[frozenset[E], ...]] | None = None
        self._lookups = 0

    def __contains__(self, e: object) -> bool:
        # A few lookups (a pass's diff) ask every part; many (a kernel read against these
        # entries: 30,000) first index the parts by the entries' device, ~3 ms once.
        if self._by_dev is None:
            self._lookups += 1
            if self._lookups <= INDEX_AFTER or not all(hasattr(x, "dev") for x in (e, *self._firsts())):
                return any(e in p for p in self.parts)
            self._by_dev = self._index()
        ps = self._by_dev.get(e.dev, ())      # type: ignore[attr-defined]
        return e in ps[0] if len(ps) == 1 else any(e in p for p in ps)

    def _firsts(self) -> Iterator[object]:
        return (next(iter(p)) for p in self.parts)

    def _index(self) -> dict[str, tuple[frozenset[E], ...]]:
        out: dict[str, tuple[frozenset[E], ...]] = {}
        for p in sorted(self.parts, key=len, reverse=True):   # a device's largest part first
            for dev in {e.dev for e in p}:        # type: ignore[attr-defined]
                out[dev] = (*out.get(dev, ()), p)
        return out

    def by_dev(self) -> dict[str, tuple[frozenset[E], ...]]:
        """The parts by the device of their entries (Fdb, Neigh), built once."""
        if self._by_dev is None:
            self._by_dev = self._index()
        return self._by_dev

    def __iter__(self) -> Iterator[E]:
        return itertools.chain.from_iterable(self.parts)

    def __len__(self) -> int:
        return sum(map(len, self.parts))

    def __repr__(self) -> str:
        return f"Parts({len(self.parts)} parts, {len(self)} entries)"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Parts):
            if len(self) != len(other):
                return False
            if len(other.parts) == len(self.parts):   # part by part: unchanged parts are the same objects
                return all(a is b or all(e in other for e in a - b) for a, b in zip(self.parts, other.parts,
                                                                                     strict=True))
            return not any(p.difference(*other.parts) for p in self.parts)
        if isinstance(other, frozenset | set):
            return len(self) == len(other) and all(p <= other for p in self.parts)
        return AbstractSet.__eq__(self, other)

    __hash__ = AbstractSet._hash

    @classmethod
    def _from_iterable(cls, it: Iterable[E]) -> frozenset[E]:
        return frozenset(it)        # the operators' results (a | b, a - b, ...) are plain sets

    def union(self, more: Iterable[E]) -> Parts[E]:
        """These entries and `more` (those not here yet: one part more)."""
        extra = frozenset(e for e in more if e not in self)
        return Parts([*self.parts, extra]) if extra else self

    def intersection(self, other: Iterable[object]) -> frozenset[E]:
        return frozenset(e for e in other if e in self)     # type: ignore[misc]

    def difference(self, *others: Iterable[object]) -> frozenset[E]:
        return frozenset().union(*(p.difference(*others) for p in self.parts))


@dataclasses.dataclass(frozen=True)
class HostState:
    """The whole L2 state of one host."""

    bridges: frozenset[Bridge] = frozenset()
    vxlans: frozenset[Vxlan] = frozenset()
    plugs: frozenset[Plug] = frozenset()
    fdb: frozenset[Fdb] | Parts[Fdb] = frozenset()        # Parts: as compute.host assembles it
    neighs: frozenset[Neigh] | Parts[Neigh] = frozenset()
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


def merge_parts(parts: Iterable[HostState], more: Iterable[HostState]) -> HostState:
    """`merge([*parts, *more])` whose FDB and neighbour sets are `Parts` (no merged copy):
    `parts` must not share an entry (one network each); `more` (the features' few entries) is
    merged into one more part without the entries `parts` already hold."""
    parts, rest = list(parts), merge(list(more))
    small = merge([*parts, rest]) if len(parts) <= 1 else None
    if small is not None:
        return small
    out = []
    for kind in ("fdb", "neighs"):
        have = [getattr(p, kind) for p in parts]
        extra = frozenset(e for e in getattr(rest, kind) if not any(e in h for h in have))
        out.append(Parts([*have, extra]))
    return HostState(*(frozenset().union(*(getattr(p, k) for p in (*parts, rest)))
                       for k in ("bridges", "vxlans", "plugs")), out[0], out[1],
                     frozenset().union(*(p.local_ports for p in (*parts, rest))))
