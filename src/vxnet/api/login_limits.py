"""Failed-login rate limits, per user and per source address (sliding window, per server).

Contract:
- `retry_after(user, source)` is None while both the user and the source have fewer than their
  limit of failures in the last `window` seconds, else the seconds until the oldest counted
  failure leaves the window (what `Retry-After` says). A limited login is refused with 429
  before its password is checked, so guessing stops even when a guess would have been right.
- `failed(user, source)` counts one failure for both. The API counts every attempt *before*
  checking the password (an awaited check: parallel guesses could otherwise all pass the limit
  check first) and takes it back on success.
- `succeeded(user, source)` takes back that attempt and forgets the failures of this user *from
  this source* only: a legitimate login elsewhere does not reset an attacker's count.

The counters live in this server's memory (not in the store): with N servers behind a balancer a
guesser gets at most N times the limit, and a restart forgets the counts. Memory is bounded:
at most `max_keys` users and sources are tracked; the least recently failed ones are forgotten.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable


class LoginLimiter:
    """See the module docstring."""

    def __init__(self, per_user: int = 5, per_source: int = 20, window: float = 60.0, max_keys: int = 50_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_user = per_user
        self.per_source = per_source
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self._users: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()
        self._sources: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _trim(self, now: float) -> None:
        edge = now - self.window
        for table in (self._users, self._sources):
            for key in list(table):
                q = table[key]
                while q and (q[0][0] if isinstance(q[0], tuple) else q[0]) <= edge:
                    q.popleft()
                if not q:
                    del table[key]

    def retry_after(self, user: str, source: str) -> int | None:
        """Seconds to wait, or None if this login may be tried."""
        now = self.clock()
        edge = now - self.window
        waits = []
        with self._lock:
            uq = self._users.get(user)
            if uq is not None:
                counted = [t for t, _ in uq if t > edge]
                if len(counted) >= self.per_user:
                    waits.append(counted[-self.per_user] + self.window - now)
            sq = self._sources.get(source)
            if sq is not None:
                counted_s = [t for t in sq if t > edge]
                if len(counted_s) >= self.per_source:
                    waits.append(counted_s[-self.per_source] + self.window - now)
        if not waits:
            return None
        return max(1, math.ceil(max(waits)))

    def failed(self, user: str, source: str) -> None:
        now = self.clock()
        with self._lock:
            uq = self._users.setdefault(user, deque(maxlen=max(self.per_user, 1) * 4))
            uq.append((now, source))
            self._users.move_to_end(user)
            sq = self._sources.setdefault(source, deque(maxlen=max(self.per_source, 1) * 4))
            sq.append(now)
            self._sources.move_to_end(source)
            if len(self._users) > self.max_keys or len(self._sources) > self.max_keys:
                self._trim(now)
                for table in (self._users, self._sources):
                    while len(table) > self.max_keys:
                        table.popitem(last=False)

    def succeeded(self, user: str, source: str) -> None:
        """Take back the attempt counted for this login, and forget this user's failures from this
        source (only: other sources keep their counts)."""
        with self._lock:
            sq = self._sources.get(source)
            if sq:
                sq.pop()
            uq = self._users.get(user)
            if uq is None:
                return
            kept = deque(((t, s) for t, s in uq if s != source), maxlen=uq.maxlen)
            if kept:
                self._users[user] = kept
            else:
                del self._users[user]
