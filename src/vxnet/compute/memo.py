"""Per-key memo by input identity: the incremental half of the compute layer (pure).

`IdentityMemo.get(key, inputs, fn)` returns the value computed last time for `key` when every
input is the very same object as then (view updates replace only the objects they change, so
identity means "unchanged"); else it calls `fn()` and keeps the result, or the previous value
when the result equals it (an input changed in a field this value does not depend on, e.g. a
port's status: the value stays the same object, and so do the values built from it). `begin()` (at the start of a pass)
drops keys not asked for in the previous pass, so the memo never holds objects the view dropped (and
never answers for an id reused later). The memo holds the inputs, so they stay alive (and
their ids unique) while cached. Correctness never depends on it: a miss only recomputes, and
the tests check every cached path against the full recompute.
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
        self._new[key] = (inputs, value)
        return value

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

    @property
    def recomputed(self) -> int:
        """Parts recomputed by the last call."""
        return self._parts.recomputed

    def parts(self, parts: Iterable[Part[T]]) -> tuple[T, ...]:
        """The parts alone (each the same object while its inputs are), not combined: for a
        caller that combines them with more (one combination instead of two copies)."""
        self._parts.begin()
        return tuple(self._parts.get(key, inputs, fn) for key, inputs, fn in parts)

    def compute(self, parts: Iterable[Part[T]]) -> R:
        found = self.parts(parts)
        self._whole.begin()
        return self._whole.get("all", found, lambda: self._combine(found))
