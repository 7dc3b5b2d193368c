"""The one diff structure: desired vs actual entries, keyed, reused by every driver.

`diff(desired, actual)` splits keys into create (only desired), update (both, entries differ)
and delete (only actual). Applying a diff to `actual` (`apply`) yields `desired` exactly: that
is the contract every driver implements against the kernel, and the fake table in tests.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable, Hashable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from typing import Generic, Protocol, TypeVar

from vxnet.compute.state import HostState, Parts


class Keyed(Protocol):
    @property
    def key(self) -> Hashable: ...


T = TypeVar("T", bound=Keyed)


@dataclasses.dataclass(frozen=True)
class Diff(Generic[T]):
    """What must change so that `actual` becomes `desired`."""

    create: tuple[T, ...] = ()
    update: tuple[tuple[T, T], ...] = ()   # (actual, desired) pairs with the same key
    delete: tuple[T, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)

    def __len__(self) -> int:
        return len(self.create) + len(self.update) + len(self.delete)

    def without(self, drop: Callable[[T], bool]) -> Diff[T]:
        """The same diff minus the entries `drop` selects (e.g. deletes implied by a link deletion)."""
        return Diff(
            tuple(e for e in self.create if not drop(e)),
            tuple(p for p in self.update if not drop(p[1])),
            tuple(e for e in self.delete if not drop(e)),
        )


class Without(AbstractSet[T]):
    """A set given as `base` minus a few of its entries (`out`), without a copy of the rest: the
    L2 pass's wanted FDB entries are the desired ones minus those on taps not plugged yet (a
    handful of 20,000), and the kernel's, after the pass, that same set. A frozen value;
    `diff` and `against` work on it by set operations on `base` and `out` (done in C)."""

    __slots__ = ("base", "out")

    def __init__(self, base: frozenset[T] | Parts[T], out: Iterable[T] = ()) -> None:
        self.base = base
        self.out = base.intersection(out)

    def __contains__(self, e: object) -> bool:
        return e in self.base and not (self.out and e in self.out)

    def __iter__(self) -> Iterator[T]:
        out = self.out
        return iter(self.base) if not out else (e for e in self.base if e not in out)

    def __len__(self) -> int:
        return len(self.base) - len(self.out)

    def __repr__(self) -> str:
        return f"Without({len(self.base)} entries, out={set(self.out)!r})"

    __hash__ = AbstractSet._hash

    def union(self, more: Iterable[T]) -> Without[T]:
        """This set and `more` (whatever of `more` is in `out` is no longer left out)."""
        more = frozenset(more)
        return Without(frozenset(self.base).union(more), self.out - more)


Entries = frozenset[T] | set[T] | Parts[T]


def _parts(s: Entries[T] | Without[T]) -> tuple[Entries[T], frozenset[T]]:
    return (s.base, s.out) if isinstance(s, Without) else (s, frozenset())


def _minus(a: Entries[T], b: Entries[T]) -> set[T] | frozenset[T]:
    """The entries of `a` not in `b`, in C set operations: two `Parts` part by part (only the
    parts that are not the same object hold candidates), else each part of `a` against all of `b`."""
    if a is b:
        return frozenset()
    pa = a.parts if isinstance(a, Parts) else (a,)
    pb = b.parts if isinstance(b, Parts) else (b,)
    if len(pa) == len(pb) and len(pa) > 1:
        return {e for x, y in zip(pa, pb, strict=True) if x is not y for e in x - y if e not in b}
    return frozenset().union(*(x.difference(*pb) for x in pa))


def _changed(want: Entries[T] | Without[T], have: Entries[T] | Without[T]) -> tuple[Iterable[T], Iterable[T]]:
    """(entries only in `want`, entries only in `have`) without a copy of either side: with A
    minus X wanted and B minus Y held, A - B and B - A (a few entries) and the small X, Y."""
    if isinstance(want, frozenset | set) and isinstance(have, frozenset | set):
        return want - have, have - want
    (a, x), (b, y) = _parts(want), _parts(have)
    new = {e for e in _minus(a, b) if e not in x}
    new.update(e for e in y if e in a and e not in x)
    old = {e for e in _minus(b, a) if e not in y}
    old.update(e for e in x if e in b and e not in y)
    return new, old


def diff(desired: Iterable[T], actual: Iterable[T]) -> Diff[T]:
    """Keyed difference; output is sorted by key repr so it is deterministic.

    Entries are hashable values, so the set differences (done in C) find what changed; only
    those few entries are then split by key. With 30,000 entries and one change this costs a
    few milliseconds instead of indexing both sides. Either side may be a `Without`.
    """
    want = desired if isinstance(desired, frozenset | set | Without | Parts) else frozenset(desired)
    have = actual if isinstance(actual, frozenset | set | Without | Parts) else frozenset(actual)
    if want is have or (isinstance(want, frozenset | set) and isinstance(have, frozenset | set) and want == have):
        return Diff()           # the same set (the agent's applied cache): no walk
    if not have:                # an empty kernel (a host's first pass): everything is created, want not copied
        return Diff(_by_key(want))
    only_want, only_have = _changed(want, have)
    if not only_have:           # only creates (or only deletes): no entries to pair up by key
        return Diff(_by_key(only_want))
    if not only_want:
        return Diff(delete=_by_key(only_have))
    new = {e.key: e for e in only_want}
    old = {e.key: e for e in only_have}
    create = tuple(sorted((new[k] for k in new.keys() - old.keys()), key=lambda e: repr(e.key)))
    update = tuple(sorted(((old[k], new[k]) for k in new.keys() & old.keys()), key=lambda p: repr(p[0].key)))
    delete = tuple(sorted((old[k] for k in old.keys() - new.keys()), key=lambda e: repr(e.key)))
    return Diff(create, update, delete)


def _repr_key(e: Keyed) -> str:
    return repr(e.key)


def _sorted(entries: Iterable[T]) -> list[T]:
    """The entries sorted by key repr; a `Parts` (or a `Without` of one) part by part, then
    merged (the same order), so only one part's sort keys (a string per entry) exist at a time."""
    base, out = _parts(entries) if isinstance(entries, Without) else (entries, frozenset())
    if isinstance(base, Parts) and len(base.parts) > 1:
        runs = [sorted([e for e in p if e not in out] if out else p, key=_repr_key) for p in base.parts]
        return list(heapq.merge(*runs, key=_repr_key))
    return sorted(entries, key=_repr_key)


def _by_key(entries: Iterable[T]) -> tuple[T, ...]:
    """The entries sorted by key repr, one per key: of entries with equal keys the last in
    iteration order (the sort is stable), the one a dict by key keeps, so the result is the
    general path's. Without that path's two dicts and key set: a first pass creating 30,000
    FDB/neighbour entries held ~6 MB more for them (10,000 ports in view, December 2026)."""
    ordered = _sorted(entries)
    if not ordered:
        return ()
    keys = iter(ordered)
    next(keys)
    out = [e for e, after in zip(ordered, keys) if e.key != after.key]     # type: ignore[attr-defined]
    out.append(ordered[-1])
    return tuple(out)


def against(entries: Iterable[T], expected: frozenset[T] | Without[T] | None
            ) -> frozenset[T] | Without[T] | None:
    """Entries read from the kernel as a set, without a second copy of the ones `expected` (the
    desired set the read will be compared with): when every expected entry was read, `expected`
    itself (with the other entries read added, if any); None when one was not (the caller reads
    again without `expected`). `expected` None: all the entries. A resync of a host whose kernel
    is right then holds no kernel-read copy of its 30,000 FDB/neighbour entries, and the diff
    that follows is an identity check.

    "Every expected entry was read" without a set of what was seen (20,000 hashes as Python
    ints: ~2 MB of a resync's peak): the entries read that are expected must be as many as
    `expected` and their hashes must sum (mod 2**64) to the sum of `expected`'s, so an entry read
    twice (two kernel entries that map to one, e.g. an FDB entry per VLAN) cannot stand in for
    one that is missing. Hashes are salted per process (PYTHONHASHSEED), so only a chance
    collision of the sums, 2**-64, could hide a missing entry. `expected` may be a `Without`
    (an entry it leaves out that is read counts as not expected: an extra entry)."""
    if expected is None:
        return frozenset(entries)
    n, total = 0, 0
    others: set[T] = set()
    # A Without's two sets, and a Parts' part by the entry's device, asked here (not through
    # their __contains__: a Python call less per entry, 30,000 at a resync).
    base, out = (expected.base, expected.out) if isinstance(expected, Without) else (expected, frozenset())
    by_dev = base.by_dev() if isinstance(base, Parts) else None
    for e in entries:
        if by_dev is None:
            hit = e in base
        else:
            ps = by_dev.get(e.dev, ())      # type: ignore[attr-defined]
            hit = bool(ps) and (e in ps[0] or (len(ps) > 1 and any(e in p for p in ps[1:])))
        if hit and not (out and e in out):
            n += 1
            total += hash(e)
        else:
            others.add(e)
    if n != len(expected) or total & _MASK != _hash_sum(expected):
        return None
    return expected.union(others) if others else expected


_MASK = (1 << 64) - 1


def _hash_sum(entries: Entries[T] | Without[T]) -> int:
    """The sum of the entries' hashes, mod 2**64 (~0.4 us an entry: ~12 ms a resync at 30,000)."""
    if isinstance(entries, Without):
        return (_hash_sum(entries.base) - _hash_sum(entries.out)) & _MASK
    return sum(map(hash, entries)) & _MASK


def apply(actual: Iterable[T], d: Diff[T], failed: Iterable[T] = ()) -> frozenset[T]:
    """`actual` after `d` was applied, except for the entries in `failed` (left as they were)."""
    failed_keys = {e.key for e in failed}
    out = {e.key: e for e in actual}
    for e in d.delete:
        if e.key not in failed_keys:
            out.pop(e.key, None)
    for _, e in d.update:
        if e.key not in failed_keys:
            out[e.key] = e
    for e in d.create:
        if e.key not in failed_keys:
            out[e.key] = e
    return frozenset(out.values())


@dataclasses.dataclass(frozen=True)
class HostDiff:
    """One `Diff` per kind of host state entry."""

    bridges: Diff
    vxlans: Diff
    plugs: Diff
    fdb: Diff
    neighs: Diff

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name).empty for f in dataclasses.fields(self))

    def counts(self) -> dict[str, int]:
        return {f.name: len(getattr(self, f.name)) for f in dataclasses.fields(self)}


def diff_host(desired: HostState, actual: HostState) -> HostDiff:
    """Diff of every kind (local_ports is bookkeeping, not kernel state, and is not diffed)."""
    return HostDiff(
        diff(desired.bridges, actual.bridges),
        diff(desired.vxlans, actual.vxlans),
        diff(desired.plugs, actual.plugs),
        diff(desired.fdb, actual.fdb),
        diff(desired.neighs, actual.neighs),
    )


def apply_host(actual: HostState, d: HostDiff) -> HostState:
    """`actual` after applying `d` completely (the fake kernel used by pure tests)."""
    return dataclasses.replace(
        actual,
        bridges=apply(actual.bridges, d.bridges),
        vxlans=apply(actual.vxlans, d.vxlans),
        plugs=apply(actual.plugs, d.plugs),
        fdb=apply(actual.fdb, d.fdb),
        neighs=apply(actual.neighs, d.neighs),
    )
