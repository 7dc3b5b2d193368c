"""The fixed-rate prober (tests/support/probe.py) against a real namespace: every request of
its schedule is answered and reported with a kernel timestamp, in order; `--first` stops at
the first reply; an unreachable target exits 1."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.root.conftest import needs_root
from tests.support import probe

pytestmark = [pytest.mark.root, needs_root]


@pytest.fixture
def netns() -> str:
    name = "vxt-probe"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def test_every_request_is_answered_and_stamped(netns: str) -> None:
    t0 = time.time()
    proc = probe.start_probe(netns, "127.0.0.1", 0.002, 40, first=False)
    out = proc.communicate(timeout=30)[0].decode()
    stamps = probe.replies(out)
    seqs = [int(line.rsplit("=", 1)[1]) for line in out.splitlines() if "icmp_seq" in line]
    assert proc.returncode == 0 and len(stamps) == 40, (seqs, out[-300:])
    assert stamps == sorted(stamps) and t0 <= stamps[0] <= time.time()
    seqs = [int(line.rsplit("=", 1)[1]) for line in out.splitlines() if "icmp_seq" in line]
    assert seqs == list(range(1, 41))


def test_first_stops_at_the_first_reply_and_silence_exits_1(netns: str) -> None:
    proc = probe.start_probe(netns, "127.0.0.1", 0.002, 1000)
    assert probe.first_reply(proc, time.time() + 5) is not None
    assert proc.wait(5) == 0
    # 192.0.2.1 has no route in the namespace: nothing answers (send errors aside, exit 1).
    subprocess.run(["ip", "-n", netns, "addr", "add", "192.0.2.9/32", "dev", "lo"], check=True)
    r = subprocess.run(["ip", "netns", "exec", netns, sys.executable, probe.__file__, "192.0.2.10", "0.002", "5",
                        "--first"], capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 1 and "icmp_seq" not in r.stdout
