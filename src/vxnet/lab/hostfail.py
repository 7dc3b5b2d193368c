"""Lab host failure and recovery: `vxnet lab host fail hN` / `vxnet lab host recover hN`.

Contract:
- `fail(st, host)`: the host dies. Its cables are pulled first (the underlay, management and
  external veths' ends in the "physical" namespace go down, so no frame leaves or reaches it
  any more), then every process running in its namespaces (the host namespace and the
  `vxs-*/vxr-*` namespaces its agent made: the agent, bfdd, conntrackd...) is killed with
  SIGKILL by PID. Nothing is cleaned up: its kernel state stays as it was at the crash.
- `fail(st, host, partition=True)`: the host is cut off the underlay only (its underlay
  cable down); its agent and daemons go on running and still reach the server over the
  management network: the split-brain case that fencing must handle.
- `recover(st, host)`: the host comes back like a reboot: the namespaces its agent made are
  gone (kernel state of a crashed host does not survive it), the cables go up, and its agent is
  started again (it registers, the scheduler rebalances). After a partition only the cable goes
  up (the processes never stopped).
Processes are found by network namespace (`ip netns pids`), so only the lab's own processes
of that host are touched.
"""

from __future__ import annotations

import os
import re
import signal
from typing import Any

from vxnet.lab import topology


def _cables(i: int, partition: bool) -> list[str]:
    names = [f"vxlul-h{i}"]
    if not partition:
        names += [f"vxlmg-h{i}", f"vxlx-h{i}"]
    return names


def _set_cables(i: int, up: bool, partition: bool) -> None:
    for name in _cables(i, partition):
        topology.sh(["ip", "-n", topology.UNDERLAY_NS, "link", "set", name, "up" if up else "down"], check=False)


def host_namespaces(host: str) -> list[str]:
    """The router/gateway namespaces a host's agent made (`vxr-<id>-hN`, `vxs-<id>-hN`)."""
    r = topology.sh(["ip", "netns", "list"], check=False)
    pat = re.compile(rf"vx[rs]-[0-9a-f-]{{11}}-{re.escape(host)}")
    return [n for line in r.stdout.splitlines() if (n := (line.split() or [""])[0]) and pat.fullmatch(n)]


def _pids(ns: str) -> list[int]:
    r = topology.sh(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def fail(st: dict[str, Any], host: str, partition: bool = False) -> list[int]:
    """Kill `host` (see the module contract); the PIDs killed."""
    from vxnet.lab.lab import _host_index

    i = _host_index(st, host)
    _set_cables(i, False, partition)
    if partition:
        return []
    killed = []
    for ns in [topology.host_ns(i), *host_namespaces(host)]:
        for pid in _pids(ns):
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    return killed


def recover(st: dict[str, Any], host: str, partition: bool = False) -> int | None:
    """Bring `host` back (see the module contract); the new agent's PID (None after a partition)."""
    from vxnet.lab.lab import _host_index, start_agent

    i = _host_index(st, host)
    if partition:
        _set_cables(i, True, True)
        return None
    for ns in host_namespaces(host):
        topology.sh(["ip", "netns", "del", ns], check=False)
    _set_cables(i, True, False)
    return start_agent(st, host)
