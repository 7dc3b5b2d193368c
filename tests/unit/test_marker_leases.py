"""Attempt-marker leases (services/repo.py `_MarkerLeases`): no attempt waits for a lease grant
while the current lease is usable; the next one is granted in the background; a lease too old
to use, or none, is granted in line. Pure logic: a store whose grants a test holds and releases."""

from __future__ import annotations

import threading
import time

from vxnet.services.repo import Repo


class _Grants:
    """A store that only grants leases: ids 1, 2, ...; a grant waits for `gate` while it is clear
    (then `waiting` is set), and raises while `fail` is set."""

    may_lose_answers = True

    def __init__(self) -> None:
        self.n = 0
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()
        self.fail = False

    def grant_lease(self, ttl: int) -> int:
        assert ttl > 0
        if not self.gate.is_set():
            self.waiting.set()
            assert self.gate.wait(10)
        if self.fail:
            raise RuntimeError("no leader")
        self.n += 1
        return self.n


def _until(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_stale_lease_is_used_while_the_next_one_is_granted_in_the_background() -> None:
    store = _Grants()
    leases = Repo(store)._markers  # type: ignore[arg-type]
    lease, at = leases.current()
    assert (lease, store.n, leases.grants_inline) == (1, 1, 1)   # none yet: granted in line
    assert leases.current() == (1, at)                            # fresh: reused, no grant

    leases._granted_at -= 3.5                                     # older than the 3 s rotation
    store.gate.clear()
    t = time.monotonic()
    assert leases.current()[0] == 1                               # the old lease, at once ...
    assert time.monotonic() - t < 1.0
    assert store.waiting.wait(5)                                  # ... while the grant waits
    assert leases.current()[0] == 1 and store.n == 1              # one grant in flight, not two
    store.gate.set()
    _until(lambda: leases.current()[0] == 2)
    lease, at2 = leases.current()
    assert lease == 2 and at2 > at - 3.5 and leases.grants_inline == 1


def test_a_lease_too_old_or_dropped_is_granted_in_line() -> None:
    store = _Grants()
    leases = Repo(store)._markers  # type: ignore[arg-type]
    leases.current()
    leases._granted_at -= leases.max_age + 1                      # nothing written for 20 s
    assert leases.current()[0] == 2 and leases.grants_inline == 2
    leases.drop()                                                 # e.g. LeaseNotFound: expired early
    assert leases.current()[0] == 3 and leases.grants_inline == 3


def test_a_failed_background_grant_keeps_the_lease_and_is_tried_again() -> None:
    store = _Grants()
    leases = Repo(store)._markers  # type: ignore[arg-type]
    leases.current()
    leases._granted_at -= 3.5
    store.fail = True
    assert leases.current()[0] == 1
    _until(lambda: not leases._granting)
    assert leases.current()[0] == 1                               # still usable; a new try started
    _until(lambda: not leases._granting)
    store.fail = False
    _until(lambda: leases.current()[0] == 2)
    assert leases.grants_inline == 1


def test_a_short_ttl_shortens_how_old_a_lease_may_be_used() -> None:
    store = _Grants()
    repo = Repo(store)  # type: ignore[arg-type]
    repo.marker_ttl = 60
    leases = repo._markers
    leases.current()
    leases._granted_at -= 10.0                                    # usable with a 60 s TTL ...
    store.gate.clear()
    assert leases.current()[0] == 1
    store.gate.set()
    _until(lambda: not leases._granting)
    repo2 = Repo(_Grants())  # type: ignore[arg-type]
    repo2.marker_ttl = 15                                          # ... not with 15 s: a third of it is 5 s
    repo2._markers.current()
    repo2._markers._granted_at -= 6.0
    assert repo2._markers.current()[0] == 2 and repo2._markers.grants_inline == 2
