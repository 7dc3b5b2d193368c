"""A fixed-rate TCP stream for failover measurements (tests and bench/): ONE connection that
carries a numbered line every INTERVAL seconds, echoed back by the server; every echo is
timestamped, so the longest time between two echoes is the outage this connection saw, and
"the connection survived" means the same socket never failed.

Script (run inside a network namespace):
  tcpstream.py serve PORT            echo server (one thread per connection); prints `ready`
  tcpstream.py client IP PORT INTERVAL
prints `ready` once connected, then `[EPOCH] seq=N` per echoed line; sends on an absolute
schedule (a late send does not push the next ones back). A socket error prints `ERR ...` and
exits 1; SIGTERM/SIGINT prints `closed` and exits 0.

`TcpStream(ns, ip, port, interval)` runs a client in a namespace and reads its echoes as
they come (like `tests.root.helpers.PingStream`); `serve(ns, port)` starts a server.
"""

from __future__ import annotations

import itertools
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

_LINE = re.compile(r"^\[(\d+\.\d+)\] seq=(\d+)")


def _serve(port: int) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    print("ready", flush=True)

    def echo(c: socket.socket) -> None:
        with c:
            while data := c.recv(4096):
                c.sendall(data)

    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()


def _client(ip: str, port: int, interval: float) -> int:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    try:
        s = socket.create_connection((ip, port), timeout=5)
    except OSError as e:
        print(f"ERR connect {e}", flush=True)
        return 1
    s.setblocking(False)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    print("ready", flush=True)
    t0, seq, buf = time.monotonic(), 0, b""
    while not stop:
        now = time.monotonic()
        nxt = t0 + seq * interval
        if now >= nxt:
            seq += 1
            try:
                s.send(f"{seq}\n".encode())
            except BlockingIOError:
                pass
            except OSError as e:
                print(f"ERR send {e}", flush=True)
                return 1
            continue
        try:
            r, _, _ = select.select([s], [], [], nxt - now)
        except InterruptedError:
            continue
        if not r:
            continue
        try:
            data = s.recv(65536)
        except BlockingIOError:
            continue
        except OSError as e:
            print(f"ERR recv {e}", flush=True)
            return 1
        if not data:
            print("ERR closed by peer", flush=True)
            return 1
        stamp = time.time()
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            print(f"[{stamp:.6f}] seq={int(line)}", flush=True)
    print("closed", flush=True)
    return 0


class TcpStream:
    """A client in namespace `ns`, its echoes read as they come (see the module docstring)."""

    def __init__(self, ns: str, ip: str, port: int, interval: float) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), "client",
                                      ip, str(port), str(interval)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().strip()
        assert first == "ready", first
        self.stamps: list[float] = []
        self.seqs: list[int] = []
        self.output: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = _LINE.match(line)
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
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.seqs) >= n or self.proc.poll() is not None, timeout)
            assert ok and len(self.seqs) >= n, f"{len(self.seqs)} of {n} echoes; tail {self.output[-5:]}"

    @property
    def alive(self) -> bool:
        """The connection has not failed (the client is still running)."""
        return self.proc.poll() is None

    def max_gap(self, since: float = 0.0) -> float:
        with self._cond:
            st = [t for t in self.stamps if t >= since]
        return max((b - a for a, b in itertools.pairwise(st)), default=0.0)

    def stop(self) -> str:
        """Stop the client; its status line (`closed`, or the `ERR ...` it died with)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            self._reader.join(10)
        return next((ln.strip() for ln in reversed(self.output) if ln.startswith(("closed", "ERR"))), "")


def serve(ns: str, port: int) -> subprocess.Popen[str]:
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), "serve", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        _serve(int(sys.argv[2]))
    else:
        sys.exit(_client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
