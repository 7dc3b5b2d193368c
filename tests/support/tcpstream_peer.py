"""The two ends of a fixed-rate TCP stream (see tests/support/tcpstream.py), a standalone
script (standard library only) run inside a network namespace:
  tcpstream_peer.py serve PORT            echo server (one thread per connection); prints `ready`
  tcpstream_peer.py client IP PORT INTERVAL
prints `ready` once connected, then `[EPOCH] seq=N` per echoed line; sends on an absolute
schedule (a late send does not push the next ones back). A socket error prints `ERR ...` and
exits 1; SIGTERM/SIGINT prints `closed` and exits 0.
"""

from __future__ import annotations

import select
import signal
import socket
import sys
import threading
import time


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


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        _serve(int(sys.argv[2]))
    else:
        sys.exit(_client(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
