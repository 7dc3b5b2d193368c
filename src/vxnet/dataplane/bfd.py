"""BFD between hosts with FRR's `bfdd`: one daemon per host, driven by the agent.

Why bfdd: a proven BFD implementation (RFC 5880/5881, FRR) whose timers are in C, independent
of the agent's Python threads and passes; the agent only configures peers and listens.

Contract:
- `BfdMonitor(host, underlay_ip, run_dir, on_change, netns=None)`; `start()` makes sure one
  `bfdd` runs for this host (started in its own session from the agent's network namespace,
  or `netns`; an already running one, found by its pid file and command line, is adopted, so
  an agent restart keeps the sessions up and triggers no failover), reads the peers it
  already has, and subscribes to its control socket (`--bfdctl`, FRR's JSON protocol:
  BMT_NOTIFY with BCM_NOTIFY_PEER_STATE) in a thread: every session state change calls
  `on_change()` at once (the agent wakes and recomputes).
- `set_peers({name: underlay_ip})`: single-hop sessions from this host's underlay address,
  `INTERVAL_MS` x `MULTIPLIER` (100 ms x 3: a silent peer is down within 300 ms); added and
  removed through `vtysh` (one run per change of the set, not per pass).
- `down()`: names of peers whose session went down after having been up (a session that never
  came up is "unknown", left to the store's lease). `isolated()`: this host had sessions up
  and every one of them is down now (it is the one cut off: used for fencing).
- `close()` stops the listener thread; bfdd keeps running (a daemon of the host: a host
  failure kills it, `vxnet lab host fail`).
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("vxnet.dataplane.bfd")

BFDD = "/usr/lib/frr/bfdd"
INTERVAL_MS = 100
MULTIPLIER = 3
_HDR = struct.Struct("!IHBB")        # length, id, type, version (bfdctl.h)
BMT_NOTIFY = 4
BCM_NOTIFY_PEER_STATE = 1


def available() -> bool:
    return os.path.exists(BFDD) and shutil.which("vtysh") is not None


class BfdError(Exception):
    """bfdd could not be started or configured."""


class BfdMonitor:
    def __init__(self, host: str, underlay_ip: str, run_dir: str, on_change: Callable[[], None],
                 netns: str | None = None) -> None:
        self.host, self.local, self.dir = host, underlay_ip, run_dir
        self.on_change, self.netns = on_change, netns
        self._lock = threading.Lock()
        self._state: dict[str, str] = {}      # peer ip -> "up" / "down" / "init"...
        self._seen_up: set[str] = set()
        self._peers: dict[str, str] = {}       # name -> ip (configured)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- daemon ---------------------------------------------------------------------------
    @property
    def pidfile(self) -> str:
        return os.path.join(self.dir, "bfdd.pid")

    @property
    def ctl(self) -> str:
        return os.path.join(self.dir, "bfdd.sock")

    def pid(self) -> int | None:
        """The running bfdd of this host, if any."""
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if cmd and cmd[0].endswith(b"bfdd") and self.dir.encode() in b" ".join(cmd) else None

    def _start_daemon(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        try:
            shutil.chown(self.dir, "frr", "frr")     # bfdd drops privileges to frr
        except (LookupError, OSError):
            pass
        for name in ("bfdd.sock", "bfdd.vty"):
            try:
                os.unlink(os.path.join(self.dir, name))
            except FileNotFoundError:
                pass
        cmd = [BFDD, "-d", "--vty_socket", self.dir, "-i", self.pidfile, "--bfdctl", self.ctl,
               "-z", os.path.join(self.dir, "zserv.api"), "-A", "127.0.0.1", "-P", "0",
               "--log", "file:" + os.path.join(self.dir, "bfdd.log")]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, start_new_session=True, check=False)
        if r.returncode != 0:
            raise BfdError(f"bfdd: {r.stderr.strip() or r.returncode}")
        deadline = time.monotonic() + 5
        while not os.path.exists(self.ctl) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not os.path.exists(self.ctl):
            raise BfdError("bfdd: no control socket")

    def _vtysh(self, *commands: str) -> str:
        args = ["vtysh", "--vty_socket", self.dir]
        for c in commands:
            args += ["-c", c]
        r = subprocess.run(args, capture_output=True, text=True, check=False, timeout=10)
        if r.returncode != 0:
            raise BfdError(f"vtysh: {(r.stderr or r.stdout).strip()}")
        return r.stdout

    def start(self) -> None:
        if self.pid() is None:
            self._start_daemon()
        try:
            have = json.loads(self._vtysh("show bfd peers json") or "[]")
        except (ValueError, BfdError) as e:
            log.warning("host=%s bfd peers: %s", self.host, e)
            have = []
        with self._lock:
            for p in have:
                if p.get("local") == self.local and not p.get("multihop"):
                    self._peers[f"?{p['peer']}"] = p["peer"]
        self._thread = threading.Thread(target=self._listen, name="bfd", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    # -- peers ----------------------------------------------------------------------------
    def set_peers(self, peers: Mapping[str, str]) -> None:
        with self._lock:
            old = dict(self._peers)
        want_ips, have_ips = set(peers.values()), set(old.values())
        if want_ips == have_ips:
            if old != dict(peers):
                with self._lock:
                    self._peers = dict(peers)
            return
        cmds = ["configure terminal", "bfd"]
        for ip in sorted(have_ips - want_ips):
            cmds.append(f"no peer {ip} local-address {self.local}")
        for ip in sorted(want_ips - have_ips):
            cmds += [f"peer {ip} local-address {self.local}", f"receive-interval {INTERVAL_MS}",
                     f"transmit-interval {INTERVAL_MS}", f"detect-multiplier {MULTIPLIER}", "exit"]
        self._vtysh(*cmds)
        with self._lock:
            self._peers = dict(peers)
            for ip in have_ips - want_ips:
                self._state.pop(ip, None)
                self._seen_up.discard(ip)

    # -- state ----------------------------------------------------------------------------
    def down(self) -> frozenset[str]:
        with self._lock:
            return frozenset(n for n, ip in self._peers.items()
                             if ip in self._seen_up and self._state.get(ip) != "up")

    def isolated(self) -> bool:
        with self._lock:
            ips = [ip for ip in self._peers.values() if ip in self._seen_up]
            return bool(ips) and all(self._state.get(ip) != "up" for ip in ips)

    def states(self) -> dict[str, str]:
        with self._lock:
            return {n: self._state.get(ip, "unknown") for n, ip in self._peers.items()}

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except OSError as e:
                log.warning("host=%s bfdd control socket: %s", self.host, e)
            if self._stop.wait(0.5):
                return
            if self.pid() is None:
                try:
                    self._start_daemon()
                except BfdError as e:
                    log.warning("host=%s %s", self.host, e)

    def _session(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(self.ctl)
            data = struct.pack("=Q", BCM_NOTIFY_PEER_STATE)
            s.sendall(_HDR.pack(len(data), 1, BMT_NOTIFY, 1) + data)
            buf = b""
            while not self._stop.is_set():
                r, _, _ = select.select([s], [], [], 0.5)
                if not r:
                    continue
                chunk = s.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while len(buf) >= _HDR.size:
                    n, _, typ, _ = _HDR.unpack_from(buf)
                    if len(buf) < _HDR.size + n:
                        break
                    body, buf = buf[_HDR.size:_HDR.size + n], buf[_HDR.size + n:]
                    if typ == BMT_NOTIFY:
                        self._note(body)

    def _note(self, body: bytes) -> None:
        try:
            msg = json.loads(body.rstrip(b"\0"))
        except ValueError:
            return
        if msg.get("op") != "status" or msg.get("local-address") != self.local:
            return
        ip, state = msg.get("peer-address"), msg.get("state")
        with self._lock:
            before = self._state.get(ip)
            self._state[ip] = state
            if state == "up":
                self._seen_up.add(ip)
        if before != state:
            log.info("host=%s bfd peer %s %s", self.host, ip, state)
            self.on_change()
