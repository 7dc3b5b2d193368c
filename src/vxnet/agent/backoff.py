"""Retry delays that grow while something keeps failing (pure; time is the caller's).

`Backoff.next()` returns the delay before the next attempt: `initial`, then doubling up to
`maximum`, with up to `jitter` of it added or removed (from the caller's `random.Random`, so a
test is deterministic) so that many agents failing at once do not retry in lock step.
`reset()` after a success starts over at `initial`.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial: float = 0.1, maximum: float = 30.0, factor: float = 2.0, jitter: float = 0.1,
                 rng: random.Random | None = None) -> None:
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self._rng = rng or random.Random()
        self._next = initial
        self.failures = 0           # consecutive failures since the last reset

    def next(self) -> float:
        """The delay before the next attempt (and grow the one after)."""
        base = self._next
        self._next = min(self.maximum, base * self.factor)
        self.failures += 1
        return max(0.0, base * (1 + self._rng.uniform(-self.jitter, self.jitter)))

    def reset(self) -> None:
        self._next = self.initial
        self.failures = 0
