"""The sorted set of every key a store holds in memory (the embedded store, the etcd read
mirror): what `range` and prefix compares walk.

A plain sorted list made every insert and delete move the keys after it (a `/vxnet/binding-
failed/` key sits before the 300,000 `/vxnet/res/` keys of 100,000 ports: ~0.3 ms of memmove
each, 100 of them per registration), and a prefix range copied the list's whole tail before
walking it. `KeySet` keeps the keys in a `sortedcontainers.SortedList` (sorted chunks of ~1,000
keys): an insert or delete costs O(log n) plus a move within one chunk, and `under(prefix)`
finds the block of keys starting with `prefix` by bisection: O(log n + k) for k keys.

Not thread-safe: the owner holds its lock around every call, as it did for the list.
"""

from __future__ import annotations

from collections.abc import Iterable

from sortedcontainers import SortedList

_MAX_CHAR = 0x10FFFF


class KeySet:
    """Keys in code-point order (Python's `str` order, as the stores' lists were)."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys = SortedList(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def add(self, key: str) -> None:
        """Insert `key` (the caller knows it is not there yet)."""
        self._keys.add(key)

    def discard(self, key: str) -> None:
        """Remove `key` if present."""
        self._keys.discard(key)

    def under(self, prefix: str) -> list[str]:
        """Every key starting with `prefix`, in order."""
        if not prefix:
            return list(self._keys)
        last = ord(prefix[-1])
        if last < _MAX_CHAR:
            # keys >= prefix that do not start with it are >= the prefix with its last character
            # bumped (they differ from it at some position, by a greater character)
            end = prefix[:-1] + chr(last + 1)
            return list(self._keys.irange(prefix, end, inclusive=(True, False)))
        out = []
        for k in self._keys.irange(prefix):
            if not k.startswith(prefix):
                break
            out.append(k)
        return out
