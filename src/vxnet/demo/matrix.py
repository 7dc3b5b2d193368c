"""The demo's connectivity matrix, proven with real packets.

Every VM (and the outside client) runs a tiny TCP service that answers each connection with
`<who> saw <peer address>`: a reply therefore proves which VM answered (so a tenant reaching its
own 192.0.2.12 and never the other tenant's is visible) and which source address the server saw
(SNAT and floating IPs are visible). Pings give the RTT. A cell is right when what happened is
what it expects (a blocked cell is right when nothing answers in time).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import time

SERVICE = r"""
import socket, sys, threading
who, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
def serve(s):
    while True:
        c, addr = s.accept()
        try: c.sendall(f"{who} saw {addr[0]}\n".encode())
        finally: c.close()
for p in ports:
    for fam, any_ in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((any_, p)); s.listen(16)
        except OSError:
            if fam == socket.AF_INET: raise
            continue      # IPv6 off in this namespace
        threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True); threading.Event().wait()
"""

CONNECT = r"""
import socket, sys, time
t = time.perf_counter()
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
data = s.recv(200).decode().strip()
print(f"{(time.perf_counter() - t) * 1000:.2f} {data}")
"""


@dataclasses.dataclass
class Cell:
    """One row of the matrix."""

    tenant: str
    what: str                 # e.g. "east-west: web1 -> web2 (same network, other host)"
    expect: str               # "open" or "blocked"
    got: str = ""             # "open" / "blocked"
    evidence: str = ""        # RTT and who answered, or why it is blocked
    trace: tuple[str, str, str, int | None] = ("", "", "icmp", None)   # (from, to, proto, dport)
    traced: str = ""          # `vxnet trace`'s verdict and deciding entry for the same packet

    @property
    def ok(self) -> bool:
        return self.got == self.expect and not self.evidence.startswith("WRONG") and not self.traced.startswith("WRONG")


def start_service(netns: str, who: str, ports: list[int]) -> subprocess.Popen[str]:
    """Start the answering service in a namespace; returns once it listens."""
    p = subprocess.Popen(["ip", "netns", "exec", netns, "python3", "-c", SERVICE, who, *map(str, ports)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill()
        raise RuntimeError(f"service in {netns} did not start")
    return p


def ping(netns: str, ip: str, count: int = 3, wait: float = 1.0) -> float | None:
    """Average RTT in ms, or None when no reply came."""
    r = subprocess.run(["ip", "netns", "exec", netns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2",
                        "-W", str(wait), ip], capture_output=True, text=True, check=False)
    m = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
    return float(m.group(1)) if r.returncode == 0 and m else None


def connect(netns: str, ip: str, port: int, timeout: float = 1.5) -> tuple[float, str] | None:
    """(connect+reply ms, reply) or None when the connection failed or timed out."""
    r = subprocess.run(["ip", "netns", "exec", netns, "python3", "-c", CONNECT, ip, str(port), str(timeout)],
                       capture_output=True, text=True, check=False, timeout=timeout + 10)
    if r.returncode != 0 or not r.stdout.strip():
        return None
    ms, _, reply = r.stdout.strip().partition(" ")
    return float(ms), reply


def probe_tcp(cell: Cell, netns: str, ip: str, port: int, want_who: str | None = None,
              want_peer: str | None = None, retries: int = 3) -> Cell:
    """Fill `cell` from a TCP probe (retried a little: the data plane converges in ms, but the
    first packets of a freshly built topology may race an agent's pass)."""
    got = None
    for _ in range(retries if cell.expect == "open" else 1):
        got = connect(netns, ip, port)
        if got:
            break
        time.sleep(0.5)
    if got is None:
        cell.got, cell.evidence = "blocked", f"no answer from {ip}:{port}/tcp"
        return cell
    ms, reply = got
    cell.got = "open"
    who, _, peer = reply.partition(" saw ")
    cell.evidence = f"{reply} ({ms:.1f} ms)"
    wrong = []
    if want_who and who != want_who:
        wrong.append(f"expected {want_who}")
    if want_peer and peer != want_peer:
        wrong.append(f"expected the server to see {want_peer}")
    if wrong:
        cell.evidence = "WRONG: " + cell.evidence + "; " + ", ".join(wrong)
    return cell


DHCP_SCRIPT = """#!/bin/sh
# udhcpc event script for the demo: report what the lease says, change nothing in the VM.
[ "$1" = bound ] && echo "lease ip=$ip mask=$mask router=$router mtu=$mtu dns=$dns"
exit 0
"""


def probe_dhcp(cell: Cell, netns: str, script: str, want_ip: str, want_router: str, want_mtu: int) -> Cell:
    """A real DHCP client (busybox udhcpc) in the VM asks for a lease; the VM's own host answers.
    The script only reports the lease, so the VM's configuration is left as it is."""
    r = subprocess.run(["ip", "netns", "exec", netns, "busybox", "udhcpc", "-f", "-q", "-n", "-t", "4", "-T", "1",
                        "-i", "eth0", "-O", "mtu", "-s", script], capture_output=True, text=True, check=False,
                       timeout=30)
    lease = next((line for line in r.stdout.splitlines() if line.startswith("lease ")), "")
    if not lease:
        cell.got, cell.evidence = "blocked", "no lease: " + (r.stdout + r.stderr).strip().replace("\n", " ")[-120:]
        return cell
    cell.got = "open"
    got = dict(kv.split("=", 1) for kv in lease.split()[1:] if "=" in kv)
    cell.evidence = f"{got.get('ip')}/{got.get('mask')} router {got.get('router')} mtu {got.get('mtu')}"
    if (got.get("ip"), got.get("router"), got.get("mtu")) != (want_ip, want_router, str(want_mtu)):
        cell.evidence = f"WRONG: {cell.evidence}; expected {want_ip} router {want_router} mtu {want_mtu}"
    return cell


def probe_ping(cell: Cell, netns: str, ip: str) -> Cell:
    rtt = None
    for _ in range(3 if cell.expect == "open" else 1):
        rtt = ping(netns, ip)
        if rtt is not None:
            break
    cell.got = "open" if rtt is not None else "blocked"
    cell.evidence = f"ping rtt {rtt:.3f} ms" if rtt is not None else f"no echo reply from {ip}"
    return cell
