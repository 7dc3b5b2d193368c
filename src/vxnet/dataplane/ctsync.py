"""Connection-state sync between a router's gateway copies: one `conntrackd` per gateway
namespace, FTFW mode, UDP over the namespace's sync leg (docs/gateway.md "High availability").

Why one per namespace: conntrackd reads and writes the conntrack table of the network
namespace it runs in, and every router namespace has its own table; one daemon per host
could not see them. Its cost is one small process per router copy (a few MB, idle without
traffic); a standby's daemon only receives.

Contract:
- `ConntrackSync(run_dir)`; `ensure(r)` makes the namespace `r.netns` run conntrackd with the
  config `config(r, dir)` (in `<run_dir>/ct-<router 11>/`): FTFW (reliable: acknowledged,
  resent), `DisableExternalCache On` so what the peer sends goes straight into this
  namespace's kernel table (a standby holds the active's flows before it takes over; nothing
  to commit at takeover), UDP between `r.sync_ip` and `r.sync_peer` on `r.sync_dev`. A running
  daemon with the same config is left alone (found by the namespace's PIDs and its command
  line); a changed config (or a duplicate) restarts it. A router without a peer (`sync_ip` "") runs none.
- `stop_in(namespaces)`: stops our daemons in those namespaces (SIGTERM by PID) before they
  are deleted (a process would keep a deleted namespace alive).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from vxnet.compute.gateway import GatewayRouter

PORT = 3780


def available() -> bool:
    return shutil.which("conntrackd") is not None


def config(r: GatewayRouter, d: str) -> str:
    return f"""Sync {{
  Mode FTFW {{
    DisableExternalCache On
  }}
  UDP {{
    IPv6_address {r.sync_ip}
    IPv6_Destination_Address {r.sync_peer}
    Port {PORT}
    Interface {r.sync_dev}
    Checksum on
  }}
}}
General {{
  LogFile {d}/conntrackd.log
  Syslog off
  LockFile {d}/lock
  UNIX {{
    Path {d}/ctl
  }}
  NetlinkBufferSize 2097152
  NetlinkBufferSizeMaxGrowth 8388608
  Filter From Kernelspace {{
    Protocol Accept {{
      TCP
      UDP
      ICMP
    }}
  }}
}}
"""


def _netns_pids(ns: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


class ConntrackSync:
    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def _dir(self, r: GatewayRouter) -> str:
        return os.path.join(self.run_dir, f"ct-{r.netns}")

    def _pids(self, ns: str, conf: str) -> list[int]:
        return [p for p in _netns_pids(ns) if b"conntrackd" in _cmdline(p) and conf.encode() in _cmdline(p)]

    def ensure(self, r: GatewayRouter) -> None:
        d = self._dir(r)
        conf = os.path.join(d, "conntrackd.conf")
        if not r.sync_ip:
            self._stop(r.netns, conf)
            return
        text = config(r, d)
        try:
            with open(conf) as f:
                same = f.read() == text
        except FileNotFoundError:
            same = False
        running = self._pids(r.netns, conf)
        if same and len(running) == 1:
            return
        self._stop(r.netns, conf)
        os.makedirs(d, exist_ok=True)
        with open(conf, "w") as f:
            f.write(text)
        try:
            os.unlink(os.path.join(d, "lock"))
        except FileNotFoundError:
            pass
        res = subprocess.run(["ip", "netns", "exec", r.netns, "conntrackd", "-d", "-C", conf], capture_output=True,
                             text=True, check=False, start_new_session=True)
        if res.returncode != 0:
            raise OSError(f"conntrackd: {(res.stderr or res.stdout).strip()}")

    def _stop(self, ns: str, conf: str) -> None:
        """SIGTERM our daemons of this namespace and config, then wait (up to 1 s) until they are
        gone (a new one must not start beside them)."""
        if not os.path.exists(f"/run/netns/{ns}"):
            return
        pids = self._pids(ns, conf)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 1.0
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if b"conntrackd" in _cmdline(p)]
            time.sleep(0.02)

    def stop_in(self, namespaces: set[str]) -> None:
        """Stop our conntrackd in each of these namespaces (about to be deleted)."""
        for ns in namespaces:
            for pid in _netns_pids(ns):
                if b"conntrackd" in _cmdline(pid) and self.run_dir.encode() in _cmdline(pid):
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
