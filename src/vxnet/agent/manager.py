"""The one shape of an agent-side manager: desired / applied / dirty per key, with exponential
backoff per failing key (pure: the caller passes the time; no I/O).

A feature keeps one `Manager` per kind of kernel object it converges (e.g. a gateway host's
SNAT namespaces, by router). Each pass: `want(desired)`, then `dirty(now)` gives the keys to
apply (desired and different from what was applied) and to delete (applied, no longer desired)
whose retry time has come; the caller applies them and reports each with `ok()` or `failed()`.
A key that failed waits `initial` seconds, doubling while it keeps failing (up to `maximum`),
while the other keys go on; success forgets its backoff. `invalidate()` forgets what was
applied (drift repair: every desired key is applied again, the caller reads the kernel) and
`known` is False until the caller has done its full read (`mark_known()`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

from vxnet.agent.backoff import Backoff

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Manager(Generic[K, V]):
    def __init__(self, initial: float = 0.1, maximum: float = 30.0) -> None:
        self.initial, self.maximum = initial, maximum
        self.desired: dict[K, V] = {}
        self.applied: dict[K, V] = {}
        self._retry: dict[K, tuple[float, Backoff]] = {}
        self.known = False

    def want(self, desired: Mapping[K, V]) -> None:
        self.desired = dict(desired)

    def _due(self, key: K, now: float) -> bool:
        r = self._retry.get(key)
        return r is None or now >= r[0]

    def dirty(self, now: float) -> tuple[list[tuple[K, V, V | None]], list[tuple[K, V]]]:
        """(key, desired, applied-or-None) to apply and (key, applied) to delete, now due."""
        upserts = [(k, v, self.applied.get(k)) for k, v in self.desired.items()
                   if (k not in self.applied or self.applied[k] != v) and self._due(k, now)]
        deletes = [(k, v) for k, v in self.applied.items() if k not in self.desired and self._due(k, now)]
        return upserts, deletes

    def ok(self, key: K, value: V | None) -> None:
        """`key` now holds `value` in the kernel (None: deleted)."""
        if value is None:
            self.applied.pop(key, None)
        else:
            self.applied[key] = value
        self._retry.pop(key, None)

    def failed(self, key: K, now: float) -> float:
        """`key` failed: what it holds is unknown; returns the delay before its retry."""
        self.applied.pop(key, None)
        _, b = self._retry.get(key, (0.0, Backoff(self.initial, self.maximum)))
        delay = b.next()
        self._retry[key] = (now + delay, b)
        return delay

    def next_retry(self) -> float | None:
        """When the earliest waiting retry is due (None: nothing waits)."""
        return min((t for t, _ in self._retry.values()), default=None)

    def invalidate(self) -> None:
        self.applied.clear()
        self.known = False

    def mark_known(self) -> None:
        self.known = True
