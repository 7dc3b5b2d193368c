"""Heartbeats for registered hosts, sent from a thread every 0.3 s as running agents send them.

API tests that register hosts by hand on a server with a short agent_down_time use it so that
the steps between registration and the step that lets a host die never race the down time,
however loaded the machine: a host dies only when the test stops beating for it (`discard`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

import httpx


class Heartbeats:
    def __init__(self, client: Callable[[], httpx.Client], interval: float = 0.3) -> None:
        """`client` makes the agents' (service role) client the thread posts with."""
        self._hosts: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client = client
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="test-heartbeats", daemon=True)
        self._thread.start()

    def add(self, *hosts: str) -> None:
        with self._lock:
            self._hosts.update(hosts)

    def discard(self, *hosts: str) -> None:
        """Stop beating for `hosts` (after the post in flight, if any)."""
        with self._lock:
            self._hosts.difference_update(hosts)

    def _run(self) -> None:
        with self._client() as c:
            while not self._stop.wait(self._interval):
                with self._lock:
                    hosts = sorted(self._hosts)
                for host in hosts:
                    with self._lock:
                        if host not in self._hosts:
                            continue
                    try:
                        c.post(f"/hosts/{host}/heartbeat")
                    except httpx.HTTPError:
                        pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
