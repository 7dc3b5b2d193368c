"""Running a coroutine from a test whatever the calling thread holds.

Another test's library may leave an event loop running in the main thread (Playwright's sync
API does, after tests/ui), where `asyncio.run` raises; a thread of its own has none.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any


def run_in_thread(main: Callable[[], Coroutine[Any, Any, Any]], timeout: float = 60) -> Any:
    """`asyncio.run(main())` in a thread of its own; its result, or its exception re-raised."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def go() -> None:
        try:
            out.append(asyncio.run(main()))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"the event loop did not finish in {timeout} s"
    if errors:
        raise errors[0]
    return out[0]
