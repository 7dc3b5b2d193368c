"""Per-key memo by input identity: the incremental half of the compute layer (pure).

`IdentityMemo.get(key, inputs, fn)` returns the value computed last time for `key` when every
input is the very same object as then (view updates replace only the objects they change, so
identity means "unchanged"); else it calls `fn()` and keeps the result, or the previous value
when the result equals it (an input changed in a field this value does not depend on, e.g. a
port's status: the value stays the same object, and so do the values built from it). `begin()` (at the start of a pass)
drops keys not asked for in the previous pass, so the memo never holds objects the view dropped (and
never answers for an id reused later). The memo holds the inputs, so they stay alive (and
their ids unique) while cached; a key's previous entry is let go as soon as its new value is
computed (not at the next pass), so a pass that rebuilds every part never holds all the old
parts beside the new ones (peak memory). Correctness never depends on it: a miss only
recomputes, and the tests check every cached path against the full recompute.

`PartsMemo.version` moves whenever the parts it returns are not the very same objects (in the
same keys) as the last call's: a caller combining the parts with more keys its own memo on it
instead of holding the old parts (`compute/host.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
Part = tuple[Hashable, tuple[object, ...], Callable[[], T]]    # key, inputs, how to compute


class IdentityMemo(Generic[T]):
    def __init__(self) -> None:
        self._old: dict[Hashable, tuple[tuple[object, ...], T]] = {}
        self._new: dict[Hashable, tuple[tuple[object, ...], T]] = {}
        self.recomputed = 0      # misses in the current pass (observability, tests)
        self.replaced = 0        # values returned that are not the previous value of their key (ever)

    def get(self, key: Hashable, inputs: tuple[object, ...], fn: Callable[[], T]) -> T:
        hit = self._new.get(key) or self._old.get(key)
        if hit is not None and len(hit[0]) == len(inputs) and all(
                a is b for a, b in zip(hit[0], inputs, strict=True)):
            self._new[key] = hit
            return hit[1]
        self.recomputed += 1
        value = fn()
        if hit is not None and hit[1] == value:
            value = hit[1]      # equal: keep the old object, so "unchanged" stays cheap downstream
        else:
            self.replaced += 1
        self._new[key] = (inputs, value)
        self._old.pop(key, None)    # the old value and inputs go now, not after the whole pass
        return value

    def peek(self, key: Hashable) -> tuple[tuple[object, ...], T] | None:
        """The inputs and value `key` has now (this pass's, else the previous pass's), if any."""
        return self._new.get(key) or self._old.get(key)

    def keep(self, key: Hashable, inputs: tuple[object, ...]) -> T:
        """`key`'s current value (`peek` must have found one), now held for `inputs`: for a
        caller that knows the value does not depend on what differs between its inputs and these
        (e.g. a port this value never reads changed)."""
        hit = self.peek(key)
        assert hit is not None
        self._new[key] = (inputs, hit[1])
        self._old.pop(key, None)
        return hit[1]

    def begin(self) -> None:
        """Start of a pass: forget keys the previous pass did not use; reset the miss counter."""
        self._old, self._new = self._new, {}
        self.recomputed = 0


class PartsMemo(Generic[T, R]):
    """A whole-view value made of per-key parts (e.g. one per network): each part recomputed
    only when its inputs changed, the whole only when a part did (the same object otherwise)."""

    def __init__(self, combine: Callable[[tuple[T, ...]], R]) -> None:
        self._combine = combine
        self._parts: IdentityMemo[T] = IdentityMemo()
        self._whole: IdentityMemo[R] = IdentityMemo()
        self.version = 0                        # moves when `parts` returns other objects
        self._keys: tuple[Hashable, ...] = ()

    @property
    def recomputed(self) -> int:
        """Parts recomputed by the last call."""
        return self._parts.recomputed

    def parts(self, parts: Iterable[Part[T]]) -> tuple[T, ...]:
        """The parts alone (each the same object while its inputs are), not combined: for a
        caller that combines them with more (one combination instead of two copies)."""
        self._parts.begin()
        replaced = self._parts.replaced
        keys: list[Hashable] = []
        found: list[T] = []
        for key, inputs, fn in parts:
            keys.append(key)
            found.append(self._parts.get(key, inputs, fn))
        if self._parts.replaced != replaced or tuple(keys) != self._keys:
            self.version += 1
            self._keys = tuple(keys)
        return tuple(found)

    def compute(self, parts: Iterable[Part[T]]) -> R:
        found = self.parts(parts)
        self._whole.begin()
        return self._whole.get("all", found, lambda: self._combine(found))
