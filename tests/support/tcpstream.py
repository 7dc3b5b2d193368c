"""A fixed-rate TCP stream for failover measurements (tests and bench/): ONE connection that
carries a numbered line every INTERVAL seconds, echoed back by the server; every echo is
timestamped, so the longest time between two echoes is the outage this connection saw, and
"the connection survived" means the same socket never failed.

`TcpStream(ns, ip, port, interval)` runs a client (tests/support/tcpstream_peer.py) in a
namespace and reads its echoes as they come (a `tests.support.linestream.LineStream`, like
`tests.root.helpers.PingStream`); `serve(ns, port)` starts a server.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys

from tests.support.linestream import LineStream

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tcpstream_peer.py")
_LINE = re.compile(r"^\[(\d+\.\d+)\] seq=(\d+)")


class TcpStream(LineStream):
    """A client in namespace `ns`, its echoes read as they come (see the module docstring)."""

    def __init__(self, ns: str, ip: str, port: int, interval: float) -> None:
        super().__init__(["ip", "netns", "exec", ns, sys.executable, PEER, "client", ip, str(port), str(interval)],
                         _LINE, ready="ready", stop_signal=signal.SIGTERM, noun="echoes")

    @property
    def alive(self) -> bool:
        """The connection has not failed (the client is still running)."""
        return self.proc.poll() is None

    def max_gap(self, since: float = 0.0) -> float:
        with self._cond:
            st = [t for t in self.stamps if t >= since]
        return max((b - a for a, b in itertools.pairwise(st)), default=0.0)

    def stop(self) -> str:  # type: ignore[override]
        """Stop the client; its status line (`closed`, or the `ERR ...` it died with)."""
        super().stop()
        return next((ln.strip() for ln in reversed(self.output) if ln.startswith(("closed", "ERR"))), "")


def serve(ns: str, port: int) -> subprocess.Popen[str]:
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, PEER, "serve", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p
