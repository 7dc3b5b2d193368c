"""`run_store` (api/state.py), the hop of every request's store work to a worker thread: the
work sees the caller's context (the request id a store write carries), at most STORE_THREADS
run at once while the loop stays free, and the hop adds no loop pass before the work is handed
over (anyio's `run_sync` did: its checkpoint; counted here as loop steps, not timed)."""

from __future__ import annotations

import asyncio
import contextvars
import threading

from tests.support.aio import run_in_thread
from vxnet.api import state
from vxnet.api.state import STORE_THREADS, run_store

_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("_VAR", default="unset")


def test_the_work_runs_in_the_callers_context_on_another_thread() -> None:
    async def main() -> tuple[str, bool]:
        _VAR.set("req-1")
        loop_thread = threading.get_ident()
        return await run_store(lambda: (_VAR.get(), threading.get_ident() != loop_thread))

    assert run_in_thread(main) == ("req-1", True)


def test_errors_propagate_as_if_called_directly() -> None:
    def fail() -> None:
        raise KeyError("x")

    async def main() -> str:
        try:
            await run_store(fail)
        except KeyError as e:
            return repr(e)
        return "no error"

    assert run_in_thread(main) == "KeyError('x')"


def test_at_most_store_threads_at_once_and_the_loop_stays_free() -> None:
    async def main() -> tuple[int, int]:
        running = peak = 0
        lock = threading.Lock()
        release = threading.Event()

        def work() -> None:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            release.wait(10)
            with lock:
                running -= 1

        calls = [asyncio.ensure_future(run_store(work)) for _ in range(STORE_THREADS + 8)]
        ticks = 0
        for _ in range(200):   # the loop goes on while every thread is taken
            await asyncio.sleep(0.005)
            ticks += 1
            if running == STORE_THREADS:
                break
        release.set()
        await asyncio.gather(*calls)
        return peak, ticks

    peak, ticks = run_in_thread(main)
    assert peak == STORE_THREADS
    assert ticks >= 1


def test_the_work_is_handed_over_in_the_callers_loop_step() -> None:
    """The work is queued to its thread before the caller first yields to the loop: no loop
    pass in between (a bind waits for every step on its way to the commit)."""
    async def main() -> bool:
        queued_before_yield = threading.Event()
        gate = threading.Event()

        def work() -> None:
            queued_before_yield.set()
            gate.wait(5)

        call = asyncio.ensure_future(run_store(work))
        await asyncio.sleep(0)    # one loop pass: the call starts and hands the work over
        seen = queued_before_yield.wait(2)
        gate.set()
        await call
        return seen

    assert run_in_thread(main)


def test_each_loop_has_its_own_pool() -> None:
    async def main() -> object:
        await run_store(lambda: None)
        return state._pools.get(asyncio.get_running_loop())

    first, second = run_in_thread(main), run_in_thread(main)
    assert first is not None and second is not None and first is not second
