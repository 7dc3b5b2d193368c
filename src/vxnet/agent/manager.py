"""The one shape of an agent-side manager: desired / applied / dirty per key, with exponential
backoff per failing key (pure: the caller passes the time; no I/O).

Every agent feature keeps one `Manager` per kind of kernel object it converges (a gateway
host's SNAT namespaces by router, router namespaces by name, the firewall's nftables tables,
the DHCP responders' veth pairs by device...). Each pass:
1. `want(desired)`;
2. optionally `observe(present)`: the keys the kernel holds now (a cheap listing). A key held
   but never applied by us (a leftover of a crashed agent, or a desired object that exists
   already) counts as applied with an unknown value, so it is deleted when not desired and
   converged (with `previous` None) when desired; an applied key the kernel no longer holds is
   forgotten, so it is created again;
3. `dirty(now)` gives the keys to apply (desired and different from what was applied: `(key,
   desired, previous-or-None)`) and to delete (applied or observed, no longer desired: `(key,
   applied-or-None)`), whose retry time has come;
4. the caller applies them and reports each with `ok(key, value)` (value None: deleted) or
   `failed(key, now)`. `run(now, upsert, delete, errors)` does 3 and 4 with one callable each.
A key that failed waits `initial` seconds, doubling while it keeps failing (up to `maximum`),
while the other keys go on; success forgets its backoff. `invalidate()` forgets what was
applied (drift repair: every desired key is applied again, the caller reads the kernel) and
`known` is False until the caller has done its full read (`mark_known()`). `pending()` lists
the desired keys not (yet) applied: failed now, or waiting for their retry.

Values are compared with `is` first, then `==`: a desired value that is the very object applied
last (compute memoises unchanged parts) costs no deep comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from vxnet.agent.backoff import Backoff

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_UNKNOWN: Any = object()      # applied value of a key observed in the kernel, never applied by us


class Manager(Generic[K, V]):
    def __init__(self, initial: float = 0.1, maximum: float = 30.0) -> None:
        self.initial, self.maximum = initial, maximum
        self.desired: dict[K, V] = {}
        self.applied: dict[K, V] = {}
        self._retry: dict[K, tuple[float, Backoff]] = {}
        self.known = False

    def want(self, desired: Mapping[K, V]) -> None:
        self.desired = dict(desired)

    def observe(self, present: Iterable[K]) -> None:
        """The keys the kernel holds now (see the module docstring, step 2)."""
        present = set(present)
        for k in [k for k in self.applied if k not in present]:
            del self.applied[k]
        for k in present:
            self.applied.setdefault(k, _UNKNOWN)

    def due(self, key: K, now: float) -> bool:
        """True unless `key` failed and waits for its retry."""
        r = self._retry.get(key)
        return r is None or now >= r[0]

    def _prev(self, key: K) -> V | None:
        v = self.applied.get(key)
        return None if v is _UNKNOWN else v

    def dirty(self, now: float) -> tuple[list[tuple[K, V, V | None]], list[tuple[K, V]]]:
        """(key, desired, applied-or-None) to apply and (key, applied-or-None) to delete, now due."""
        applied, missing = self.applied, _UNKNOWN
        upserts = [(k, v, self._prev(k)) for k, v in self.desired.items()
                   if (a := applied.get(k, missing)) is not v and (a is missing or a != v) and self.due(k, now)]
        deletes = [(k, self._prev(k)) for k in applied if k not in self.desired and self.due(k, now)]
        return upserts, deletes  # type: ignore[return-value]

    def ok(self, key: K, value: V | None) -> None:
        """`key` now holds `value` in the kernel (None: deleted)."""
        if value is None:
            self.applied.pop(key, None)
        else:
            self.applied[key] = value
        self._retry.pop(key, None)

    def failed(self, key: K, now: float) -> float:
        """`key` failed: what it holds is unknown; returns the delay before its retry."""
        if self.applied.pop(key, None) is not None and key not in self.desired:
            self.applied[key] = _UNKNOWN        # still to delete
        _, b = self._retry.get(key, (0.0, Backoff(self.initial, self.maximum)))
        delay = b.next()
        self._retry[key] = (now + delay, b)
        return delay

    def run(self, now: float, upsert: Callable[[K, V, V | None], object], delete: Callable[[K, V | None], object],
            errors: tuple[type[Exception], ...]) -> list[tuple[K, Exception]]:
        """Steps 3 and 4 in one: `delete(key, applied)` then `upsert(key, desired, previous)` for
        every due key, each reported `ok` or, when it raises one of `errors`, `failed`;
        returns the failures (other exceptions propagate)."""
        upserts, deletes = self.dirty(now)
        out: list[tuple[K, Exception]] = []
        for key, value, fn in [*((k, None, lambda k=k, a=a: delete(k, a)) for k, a in deletes),
                               *((k, v, lambda k=k, v=v, p=p: upsert(k, v, p)) for k, v, p in upserts)]:
            try:
                fn()
                self.ok(key, value)
            except errors as e:
                self.failed(key, now)
                out.append((key, e))
        return out

    def pending(self) -> list[K]:
        """Desired keys not applied (failed, or waiting for their retry)."""
        return [k for k in self.desired if k not in self.applied or self.applied[k] is _UNKNOWN]

    def next_retry(self) -> float | None:
        """When the earliest waiting retry is due (None: nothing waits)."""
        return min((t for t, _ in self._retry.values()), default=None)

    def invalidate(self) -> None:
        self.applied.clear()
        self.known = False

    def mark_known(self) -> None:
        self.known = True
