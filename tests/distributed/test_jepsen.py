"""Jepsen-style test (issue 14): 3 real etcd members in their own network namespaces, 2 real
`vxnet server` processes, a workload of port and floating-IP creates, updates and deletes
recorded as a history, and a nemesis that kills the etcd leader, pauses a member (SIGSTOP 5 s),
partitions a member (its link cut) and kills an API server mid-write. The checker
(`bench/jepsen_bench.check`) must find no anomaly in 3 iterations: every acknowledged write
present, nothing twice (by unique name), no IP or MAC twice, an unknown outcome present once or
absent, all servers converged. `python -m bench.jepsen_bench --iterations 20` runs more.
"""

from __future__ import annotations

import io
import os

import pytest

from bench import jepsen_bench


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces for the etcd members")
def test_three_iterations_of_faults_leave_no_anomaly(tmp_path) -> None:
    out = io.StringIO()
    try:
        total = jepsen_bench.run(3, str(tmp_path), out=out)
    finally:
        print("\n" + out.getvalue())
    assert not total, f"anomalies: {dict(total)}\n{out.getvalue()}"
    # the history really contained every kind of outcome the checker judges
    text = out.getvalue()
    assert "create-port ok" in text and "create-fip ok" in text and "delete-port ok" in text
    for fault in ("kill -9 etcd leader", "SIGSTOP", "partition", "kill -9 API server"):
        assert text.count(fault) >= 3, fault
