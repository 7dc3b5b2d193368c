"""BGP speaker of a gateway host: one FRR `bgpd` per host, driven with `vtysh` (docs/gateway.md).

Contract:
- `BgpConfig`: the host's AS, router id, peers (address, remote AS) and a private state
  directory (config file, pid file, vty socket, log), so several speakers can run on one
  filesystem (lab hosts are namespaces of one machine).
- `BgpSpeaker.apply(routes)`: `routes` maps a prefix to announce to its next hop (a floating
  IP /32 -> its router's gateway address, ...). Makes sure a bgpd of this state directory runs
  (started as a detached process in the caller's network namespace, or adopted from its pid
  file after an agent restart, so announcements survive the agent), then changes only the
  `network` statements that differ from what it announces now (read back from bgpd's
  running configuration when adopted or after `invalidate()`). Each next hop is set by a
  route-map `vxnet-nh-<address>` (`set ip next-hop`), and every peer keeps it
  (`attribute-unchanged next-hop`): a third-party next hop, as in Neutron dynamic routing, so
  the upstream router forwards straight to the router's gateway address on the external
  segment. `bgpd` runs without zebra (`-Z`: it installs nothing in the host's kernel) and with
  `no bgp network import-check` (the prefixes live in gateway namespaces, not in the host's
  routing table). Returns the number of prefixes added or withdrawn.
- Raises `BgpError` (bgpd cannot start, vtysh refuses a command); the caller retries.
- `stop()` ends the bgpd (by its pid, only if its command line names this state directory):
  its peers withdraw every route at once. The agent does not call it on exit (like its
  namespaces, the announcements outlive an agent restart).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping

log = logging.getLogger("vxnet.dataplane.bgp")

BGPD = "/usr/lib/frr/bgpd"
ROUTE_MAP_PREFIX = "vxnet-nh-"
_NETWORK = re.compile(r"^\s*network (\S+) route-map " + ROUTE_MAP_PREFIX + r"(\S+)\s*$")


class BgpError(Exception):
    """bgpd or vtysh failed (message: what and why)."""


@dataclasses.dataclass(frozen=True)
class BgpConfig:
    asn: int
    router_id: str
    peers: tuple[tuple[str, int], ...]      # (address, remote AS)
    state_dir: str
    keepalive: int = 3
    hold: int = 9

    def __post_init__(self) -> None:
        if not 1 <= self.asn <= 4294967295:
            raise ValueError(f"bad AS number {self.asn}")
        ipaddress.IPv4Address(self.router_id)
        for addr, asn in self.peers:
            ipaddress.ip_address(addr)
            if not 1 <= asn <= 4294967295:
                raise ValueError(f"bad AS number {asn} of peer {addr}")

    @property
    def pid_file(self) -> str:
        return os.path.join(self.state_dir, "bgpd.pid")

    @property
    def conf_file(self) -> str:
        return os.path.join(self.state_dir, "bgpd.conf")


def parse_peer(text: str) -> tuple[str, int]:
    """`ADDRESS:AS` (IPv4) -> (address, AS); ValueError if malformed."""
    addr, sep, asn = text.rpartition(":")
    if not sep or not asn.isdigit():
        raise ValueError(f"bad BGP peer '{text}': expected ADDRESS:AS")
    ipaddress.IPv4Address(addr)
    return addr, int(asn)


def base_config(cfg: BgpConfig) -> str:
    """bgpd's start-up configuration: the peers, no announcements yet."""
    lines = [f"router bgp {cfg.asn}", f" bgp router-id {cfg.router_id}", " no bgp ebgp-requires-policy",
             " no bgp network import-check"]
    for addr, asn in cfg.peers:
        lines += [f" neighbor {addr} remote-as {asn}", f" neighbor {addr} timers {cfg.keepalive} {cfg.hold}",
                  f" neighbor {addr} timers connect 1", f" neighbor {addr} advertisement-interval 0"]
    lines.append(" address-family ipv4 unicast")
    lines += [f"  neighbor {addr} attribute-unchanged next-hop" for addr, _ in cfg.peers]
    lines += [" exit-address-family", "exit", ""]
    return "\n".join(lines)


def _route_map(nexthop: str) -> str:
    return ROUTE_MAP_PREFIX + nexthop


def _alive(pid: int, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except OSError:
        return False
    return "bgpd" in cmd and marker in cmd


class BgpSpeaker:
    """One bgpd, its announcements kept equal to the last `apply` (see the module contract)."""

    def __init__(self, cfg: BgpConfig) -> None:
        self.cfg = cfg
        self.vtysh = shutil.which("vtysh") or "/usr/bin/vtysh"
        self._proc: subprocess.Popen[bytes] | None = None
        self._announced: dict[str, str] | None = None     # None: unknown (read it from bgpd)

    # -- the daemon -----------------------------------------------------------------------
    def pid(self) -> int | None:
        """The running bgpd of this state directory, if any."""
        try:
            with open(self.cfg.pid_file) as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return None
        return pid if pid and _alive(pid, self.cfg.state_dir) else None

    def _start(self) -> None:
        os.makedirs(self.cfg.state_dir, mode=0o700, exist_ok=True)
        with open(self.cfg.conf_file, "w") as f:
            f.write(base_config(self.cfg))
        if os.path.exists(self.cfg.pid_file):
            os.unlink(self.cfg.pid_file)
        d = self.cfg.state_dir
        cmd = [BGPD, "-Z", "-n", "-S", "-P", "0", "-f", self.cfg.conf_file, "-i", self.cfg.pid_file,
               "--vty_socket", d, "--log", f"file:{os.path.join(d, 'bgpd.log')}"]
        try:
            with open(os.path.join(d, "bgpd.out"), "ab") as out:
                # Detached: an agent restart (or its SIGTERM) leaves the announcements in place.
                self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              start_new_session=True)
        except OSError as e:
            raise BgpError(f"cannot start bgpd: {e}") from e
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BgpError(f"bgpd exited with {self._proc.returncode} (see {d}/bgpd.out)")
            if self.pid() is not None and os.path.exists(os.path.join(d, "bgpd.vty")):
                self._announced = {}
                log.info("bgpd started (pid %s, AS %s, peers %s)", self._proc.pid, self.cfg.asn,
                         [a for a, _ in self.cfg.peers])
                return
            time.sleep(0.02)
        raise BgpError("bgpd did not come up within 10 s")

    def ensure_running(self) -> bool:
        """Start bgpd unless one of this state directory runs; True if started now."""
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None                  # our child died: reaped
            self._announced = None
        if self.pid() is not None:
            return False
        self._announced = None
        self._start()
        return True

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and _alive(pid, self.cfg.state_dir):
                if self._proc is not None:
                    self._proc.poll()
                time.sleep(0.02)
        self._proc = None
        self._announced = None

    # -- announcements --------------------------------------------------------------------
    def _vtysh(self, *commands: str) -> str:
        cmd = [self.vtysh, "--vty_socket", self.cfg.state_dir]
        for c in commands:
            cmd += ["-c", c]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BgpError(f"vtysh: {e}") from e
        out = (r.stdout + r.stderr).strip()
        if r.returncode != 0 or "% " in r.stdout:
            raise BgpError(f"vtysh {commands[-1]!r}: rc={r.returncode} {out[:300]}")
        return r.stdout

    def announced(self) -> dict[str, str]:
        """prefix -> next hop, as bgpd's running configuration says."""
        text = self._vtysh("show running-config")
        return {m.group(1): m.group(2) for line in text.splitlines() if (m := _NETWORK.match(line))}

    def invalidate(self) -> None:
        self._announced = None

    def apply(self, routes: Mapping[str, str]) -> int:
        """Announce exactly `routes` (prefix -> next hop); the number of prefixes changed."""
        want = {str(ipaddress.ip_network(p, strict=False)): str(ipaddress.ip_address(h)) for p, h in routes.items()}
        self.ensure_running()
        if self._announced is None:
            self._announced = self.announced()
        have = self._announced
        gone = sorted(p for p in have if p not in want)
        new = sorted(p for p in want if have.get(p) != want[p])
        if not gone and not new:
            return 0
        cmds = ["configure terminal"]
        for hop in sorted({want[p] for p in new}):
            cmds += [f"route-map {_route_map(hop)} permit 10", f"set ip next-hop {hop}", "exit"]
        cmds += [f"router bgp {self.cfg.asn}", "address-family ipv4 unicast"]
        cmds += [f"no network {p}" for p in gone]
        cmds += [f"network {p} route-map {_route_map(want[p])}" for p in new]
        self._announced = None                 # unknown if the commands fail half-way
        self._vtysh(*cmds)
        self._announced = dict(want)
        log.info("bgp: announced %s, withdrawn %s", new, gone)
        return len(gone) + len(new)
