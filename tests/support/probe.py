"""A fixed-rate ICMP prober for port-up and outage measurements (tests and bench/).

Why not `ping -i 0.002`: iputils ping sends at most one request per 10 ms while a request is
unanswered (its main loop polls with a 10 ms timeout, 1000 / sysconf(_SC_CLK_TCK)), so a "first
reply" after a port comes up, or the end of an outage, lands on a 10 ms grid. This prober sends
an echo request every INTERVAL seconds on an absolute schedule (a late send does not push the
next ones back) and timestamps every reply with the kernel's receive time (SO_TIMESTAMPNS).

Script (run inside the sender's network namespace, as root):
  probe.py IP INTERVAL COUNT [--first]        (IP: IPv4, or IPv6 for ICMPv6 echo)
prints `ready` once its socket is open, then one line per reply, `[EPOCH] icmp_seq=N` (like
`ping -D`); with `--first` it exits after the first reply. Exit status 1 when no reply came
within COUNT requests (plus a grace of max(1 s, 50 intervals)).

Helpers (`start_probe`, `first_reply`, `replies`) run it in a lab VM's namespace.
"""

from __future__ import annotations

import os
import re
import select
import socket
import struct
import subprocess
import sys
import time

SO_TIMESTAMPNS = 35
_LINE = re.compile(r"^\[(\d+\.\d+)\] icmp_seq=(\d+)")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, v6: bool = False) -> bytes:
    payload = bytes(range(56))
    if v6:      # ICMPv6 echo: the kernel fills the checksum of a raw ICMPv6 socket (RFC 3542)
        return struct.pack("!BBHHH", 128, 0, 0, ident, seq) + payload
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> float:
    for level, typ, raw in ancillary:
        if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS:
            sec, nsec = struct.unpack("qq", raw[:16])
            return sec + nsec / 1e9
    return time.time()


def run(ip: str, interval: float, count: int, first_only: bool) -> int:
    """The prober's main loop (see the module docstring)."""
    v6 = ":" in ip
    sock = (socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) if v6
            else socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setblocking(False)
    ident = os.getpid() & 0xFFFF
    print("ready", flush=True)
    sent, due, got = 0, time.monotonic(), 0
    deadline: float | None = None
    while True:
        now = time.monotonic()
        if sent < count and now >= due:
            sent += 1
            sock.sendto(echo_request(ident, sent & 0xFFFF, v6), (ip, 0))
            due += interval                      # absolute schedule
            if sent == count:
                deadline = now + max(1.0, 50 * interval)
            continue
        if deadline is not None and now >= deadline:
            return 0 if got else 1
        wait = (due - now) if sent < count else (deadline or now) - now
        ready, _, _ = select.select([sock], [], [], max(0.0, wait))
        while ready:
            try:
                data, ancillary, _, addr = sock.recvmsg(2048, 256)
            except BlockingIOError:
                break
            ihl = 0 if v6 else (data[0] & 0x0F) * 4      # a raw ICMPv6 socket reads no IP header
            if len(data) < ihl + 8:
                continue
            kind, _, _, pid, seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if kind != (129 if v6 else 0) or pid != ident or addr[0].split("%")[0] != ip:
                continue
            got += 1
            print(f"[{_stamp(ancillary):.6f}] icmp_seq={seq}", flush=True)
            if first_only:
                return 0


# --- helpers for tests and benchmarks -----------------------------------------------------------

def _readline(proc: subprocess.Popen[bytes], deadline: float) -> str | None:
    """One output line of the prober, read byte by byte from the pipe (no Python-side buffer:
    a buffered line would be invisible to `select`, and a reply would be seen late)."""
    assert proc.stdout is not None
    fd, line = proc.stdout.fileno(), b""
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
        if not ready:
            return None
        c = os.read(fd, 1)
        if not c:
            return None
        if c == b"\n":
            return line.decode()
        line += c


def start_probe(netns: str, ip: str, interval: float = 0.002, count: int = 2500, first: bool = True,
                ready_timeout: float = 5.0) -> subprocess.Popen[bytes]:
    """Start the prober in namespace `netns` toward `ip`; returns once it is sending."""
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, os.path.abspath(__file__), ip,
                             str(interval), str(count), *(["--first"] if first else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    line = _readline(proc, time.time() + ready_timeout)
    if line != "ready":
        proc.kill()
        out = (line or "") + (proc.communicate()[0] or b"").decode()
        raise RuntimeError(f"prober did not start in {netns}: {out.strip()[:300]}")
    return proc


def first_reply(proc: subprocess.Popen[bytes], deadline: float) -> float | None:
    """Kernel receive time (epoch seconds) of the prober's first reply, or None by `deadline`."""
    while (line := _readline(proc, deadline)) is not None:
        if m := _LINE.match(line):
            return float(m.group(1))
    return None


def replies(output: str) -> list[float]:
    """Reply timestamps from a finished prober's output (outages: the gaps between them)."""
    return [float(m.group(1)) for line in output.splitlines() if (m := _LINE.match(line))]


def stop(proc: subprocess.Popen[bytes]) -> str:
    """Stop a prober; its remaining output."""
    if proc.poll() is None:
        proc.terminate()
    try:
        out = proc.communicate(timeout=5)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
    return (out or b"").decode()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--first"]
    sys.exit(run(args[0], float(args[1]), int(args[2]), "--first" in sys.argv[1:]))
