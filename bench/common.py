"""Pieces the data-plane benchmarks share: a `vxnet lab` on a fresh store, waiting for a first
ping, and per-round ratios of two rows measured in the same run.

Contract: `lab()` always runs `lab down` (its namespaces and processes, by PID) when it exits;
the benches call these helpers inside their own sandbox (bench.port_up_bench.in_sandbox).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

from bench.kernel_lab import nsx
from bench.port_up_bench import _import_repo
from bench.report import percentile


@contextlib.contextmanager
def lab(workdir: str, gateway: bool = False) -> Iterator[Any]:
    """`vxnet lab up --hosts 3` (+ one gateway host and an outside client with `gateway`) on a
    fresh store in `workdir`; always `lab down` afterwards. Yields a tests.root.conftest.Lab."""
    _import_repo()
    from tests.conftest import free_port
    from tests.root.conftest import USERS_TOML, Lab
    from vxnet.lab import lab as vxlab

    cfg = os.path.join(workdir, "lab.toml")
    with open(cfg, "w") as f:
        f.write(USERS_TOML.format(port=free_port(), db=os.path.join(workdir, "vxnet.db")))
    os.environ["VXNET_LAB_DIR"] = os.path.join(workdir, "state")
    try:
        st = vxlab.up(3, cfg, gateways=1, external=True) if gateway else vxlab.up(3, cfg)
        yield Lab(st)
    finally:
        vxlab.down()


def wait_ping(ns: str, ip: str, timeout: float) -> bool:
    """Whether `ip` answers a ping from namespace `ns` within `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if nsx(ns, "ping", "-n", "-q", "-c", "1", "-W", "1", ip, check=False).returncode == 0:
            return True
    return False


def paired_ratio(a: dict[str, Any], b: dict[str, Any], what: str) -> float | None:
    """Median over rounds of row a's figure / row b's figure in the same round; `what` is
    "gbps" (iperf3 throughput) or "p50" (ping latency). None when no round has both."""
    ratios = []
    for ra, rb in zip(a["rounds"], b["rounds"], strict=False):
        if what == "gbps":
            if "gbps" in ra["iperf"] and "gbps" in rb["iperf"] and rb["iperf"]["gbps"] > 0:
                ratios.append(ra["iperf"]["gbps"] / rb["iperf"]["gbps"])
        elif ra["ping"]["rtts"] and rb["ping"]["rtts"]:
            ratios.append(percentile(ra["ping"]["rtts"], 50) / percentile(rb["ping"]["rtts"], 50))
    return statistics.median(ratios) if ratios else None
