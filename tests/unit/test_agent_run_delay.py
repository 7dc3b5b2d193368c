"""agent/core.py `run_delay`: a pass reads its thread's run-queue wait three times (twice
before its plug, for the `trace` line): the thread's schedstat file stays open, each call is one
`pread`, not an open, a read and a close. Same value as the plain read."""

from __future__ import annotations

import builtins
import threading

import pytest

from vxnet.agent import core


def test_run_delay_reads_its_threads_schedstat_without_opening_it_each_time(monkeypatch: pytest.MonkeyPatch
                                                                            ) -> None:
    out: list[object] = []

    def worker() -> None:
        try:
            with open(f"/proc/self/task/{threading.get_native_id()}/schedstat", "rb") as f:
                plain = int(f.read().split()[1]) / 1e9
            first = core.run_delay()

            def no_open(*_a: object, **_k: object) -> None:
                raise AssertionError("schedstat opened again")

            monkeypatch.setattr(builtins, "open", no_open)
            try:
                values = [core.run_delay() for _ in range(50)]
            finally:
                monkeypatch.undo()
            out.extend([plain, first, *values])
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            out.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert out and not isinstance(out[-1], BaseException), out[-1:]
    plain, first, *values = out
    assert isinstance(plain, float)
    assert first >= plain and values == sorted(values) and values[0] >= first     # the same counter, monotonic


def test_a_finished_threads_schedstat_file_is_closed() -> None:
    """The kept-open file goes with its thread (agents restart passes and reporters' threads:
    an fd a thread would leak)."""
    import gc
    import os

    def schedstat_fds() -> int:
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{fd}").endswith("/schedstat")
            except OSError:
                pass
        return n

    before = schedstat_fds()
    threads = [threading.Thread(target=core.run_delay) for _ in range(5)]
    for t in threads:
        t.start()
        t.join(10)
    gc.collect()
    assert schedstat_fds() == before
