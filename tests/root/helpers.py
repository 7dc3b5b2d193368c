"""Helpers for root tests: commands in namespaces, ping parsing and ping streams read as they
run (PingStream), underlay captures."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Self

from tests.support.linestream import LineStream
from vxnet.lab import topology

_PING_LINE = re.compile(r"\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+)")


def nsexec(ns: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout, check=False)


def ping(vm: str, ip: str, count: int = 2, interval: float = 0.2, wait: float = 1) -> int:
    """Replies received by `count` pings from VM `vm`."""
    r = nsexec(topology.vm_ns(vm), "ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(wait), ip)
    m = re.search(r"(\d+) received", r.stdout)
    return int(m.group(1)) if m else 0


@contextmanager
def capture(ns: str = topology.UNDERLAY_NS, dev: str = topology.UNDERLAY_BR) -> Iterator[list[str]]:
    """tcpdump (immediate mode) on the underlay bridge; the list fills with one decoded line per frame at exit."""
    fd, path = tempfile.mkstemp(prefix="vxl-cap-", suffix=".pcap")
    os.close(fd)
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", dev, "--immediate-mode", "-n", "-U",
                             "-w", path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: list[str] = []
    try:
        # tcpdump prints "listening on" once the capture is armed.
        deadline = time.time() + 5
        buf = b""
        while b"listening on" not in buf and time.time() < deadline:
            buf += proc.stderr.read1(4096) if proc.stderr else b""  # type: ignore[attr-defined]
        yield lines
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(5)
        r = subprocess.run(["tcpdump", "-r", path, "-n", "-e", "-v"], capture_output=True, text=True, check=False)
        for line in r.stdout.splitlines():     # one entry per frame, continuation lines joined
            if lines and not re.match(r"\d\d:\d\d:\d\d\.", line):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line)
        os.unlink(path)


def start_ping(vm: str, ip: str, interval: float, count: int) -> subprocess.Popen[str]:
    """A background `ping -D` from VM `vm` (timestamps let outages be measured from gaps)."""
    return subprocess.Popen(["ip", "netns", "exec", topology.vm_ns(vm), "ping", "-n", "-D", "-i", str(interval),
                             "-c", str(count), "-W", "1", ip], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def ping_result(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, int, list[float]]:
    """(transmitted, received, reply timestamps) of a finished `start_ping`."""
    out, _ = proc.communicate(timeout=timeout)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    stamps = [float(x) for x in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.MULTILINE)]
    return int(m.group(1)), int(m.group(2)), stamps


def max_gap(stamps: list[float]) -> float:
    """Longest time between two consecutive replies (seconds)."""
    return max((b - a for a, b in itertools.pairwise(stamps)), default=0.0)


class PingStream(LineStream):
    """`ping -D -i INTERVAL` from namespace `ns` with no count, its replies read as they come, so a test
    waits for replies (events) instead of sleeping, and stops it when its own events are done.
    Requests are numbered in the order sent: a gap in the answered sequence numbers is a lost
    request; the ones still in flight when the stream is stopped come after every answered one."""

    def __init__(self, ns: str, ip: str, interval: float) -> None:
        super().__init__(["ip", "netns", "exec", ns, "ping", "-n", "-D", "-i", str(interval), "-W", "1", ip],
                         _PING_LINE)

    def last_seq(self) -> int:
        return max(self.seqs, default=0)

    def unanswered(self) -> list[int]:
        """Sequence numbers sent before the last answered one that got no reply."""
        return sorted(set(range(1, self.last_seq() + 1)) - set(self.seqs))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for(cond: Callable[[], object], what: str = "", timeout: float = 20, interval: float = 0.05) -> float:
    """Poll `cond` until it holds; the seconds it took. AssertionError naming `what` after
    `timeout` seconds."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or 'the condition'}")
