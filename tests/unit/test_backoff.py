"""Retry backoff: doubles while failing, capped, jittered within bounds, reset by a success."""

from __future__ import annotations

import random

from vxnet.agent.backoff import Backoff


def test_delays_double_up_to_the_cap_and_reset() -> None:
    b = Backoff(0.1, 1.0, jitter=0.0)
    assert [round(b.next(), 3) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert b.failures == 6
    b.reset()
    assert b.next() == 0.1 and b.failures == 1


def test_jitter_stays_within_its_fraction() -> None:
    b = Backoff(1.0, 1.0, jitter=0.2, rng=random.Random(3))
    delays = [b.next() for _ in range(200)]
    assert all(0.8 <= d <= 1.2 for d in delays) and len({round(d, 6) for d in delays}) > 100
