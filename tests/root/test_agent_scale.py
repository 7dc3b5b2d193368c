"""Agent memory and apply time with 10,000 ports in its view (20 networks, ~30,000 FDB/neighbour
entries), measured in a child process (peak RSS, the issue's goal is <= 80 MB)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.root.conftest import needs_root

pytestmark = [pytest.mark.root, needs_root]


def test_rss_and_apply_time_with_10k_ports(underlay3: list[str]) -> None:
    probe = os.path.join(os.path.dirname(__file__), "rss_probe.py")
    r = subprocess.run([sys.executable, probe, underlay3[0], "10000", "20"], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    rss, rest = r.stdout.split(" ", 1)
    seconds = float(rest.rsplit(" ", 1)[1])
    print(f"\n10k ports in view: peak RSS {rss} MB, first full apply {seconds:.2f} s ({rest.rsplit(' ', 1)[0]})")
    assert "'fdb': 19960" in rest and "'neighs': 10000" in rest
    assert float(rss) <= 80.0
