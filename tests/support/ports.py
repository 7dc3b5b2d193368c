"""Free loopback ports for the servers tests start, chosen below the kernel's ephemeral range.

`bind(port 0)` hands out a port from the ephemeral range (`ip_local_port_range`, 32768-60999 here):
the range the kernel also draws every outgoing connection's source port from. Between our close
and the server's own bind, any client connection elsewhere in the suite (a server's store
watch, an agent's stream) may take that port; a clean-clone CI run lost a 3-member etcd that way
("not healthy" for 20 s). Ports below the range are never taken implicitly, only by another
explicit bind, and this process never hands the same one out twice.
"""

from __future__ import annotations

import random
import socket
import threading

LOW = 20000
_lock = threading.Lock()
_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on, below the ephemeral range."""
    high = max(LOW + 1000, min(_ephemeral_low(), 32768)) - 1
    rnd = random.SystemRandom()
    with _lock:
        for _ in range(2000):
            port = rnd.randint(LOW, high)
            if port in _given:
                continue
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _given.add(port)
            return port
    raise RuntimeError(f"no free port on {host} in {LOW}-{high}")
