"""A child process whose output is read line by line as it comes (tests and bench/).

`LineStream(argv, pattern)` starts `argv` and reads its stdout (stderr joined) in a thread:
every line matching `pattern` (group 1: an epoch timestamp, group 2: a sequence number) is an
answer, recorded in `stamps` and `seqs`; every line is kept in `output`. A test waits for
answers (`wait_replies`, an event) instead of sleeping, and `stop()`s the process (a signal,
then a kill if it does not end) when its own events are done. Used by
`tests.root.helpers.PingStream` (ping -D) and `tests.support.tcpstream.TcpStream`.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading


class LineStream:
    """`argv`'s output lines read as they come; with `ready`, its first line must be that
    (read before anything else); `stop_signal` ends it; `noun` names the answers in failures."""

    def __init__(self, argv: list[str], pattern: re.Pattern[str], *, ready: str | None = None,
                 stop_signal: signal.Signals = signal.SIGINT, noun: str = "replies") -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if ready is not None:
            assert self.proc.stdout is not None
            first = self.proc.stdout.readline().strip()
            assert first == ready, first
        self.seqs: list[int] = []
        self.stamps: list[float] = []
        self.output: list[str] = []
        self._pattern = pattern
        self._stop_signal = stop_signal
        self._noun = noun
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = self._pattern.match(line)
            with self._cond:
                self.output.append(line)
                if m:
                    self.stamps.append(float(m.group(1)))
                    self.seqs.append(int(m.group(2)))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def replies(self) -> int:
        with self._cond:
            return len(self.seqs)

    def wait_replies(self, n: int, timeout: float = 60) -> None:
        """Until `n` answers have come (the timeout only bounds a stream that stopped answering)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.seqs) >= n or self.proc.poll() is not None, timeout)
            assert ok and len(self.seqs) >= n, f"{len(self.seqs)} of {n} {self._noun}; output tail {self.output[-5:]}"

    def stop(self) -> None:
        """Signal the process (if still running), wait for it (kill it after 10 s), and for the reader."""
        if self.proc.poll() is None:
            self.proc.send_signal(self._stop_signal)
        try:
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            self._reader.join(10)
