"""dataplane/bfd.py with a real FRR bfdd per "host" (two namespaces on a veth): sessions come
up, a peer that goes silent is reported down (and this host isolated), it comes back up, and
a restarted monitor adopts the running daemon and its sessions (an agent restart flaps
nothing). The detection time is printed (timings are not asserted: bench/ measures them)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from tests.root.conftest import needs_root
from vxnet.dataplane import bfd
from vxnet.dataplane.bfd import BfdMonitor

pytestmark = [pytest.mark.root, needs_root,
              pytest.mark.skipif(not bfd.available(), reason="FRR bfdd/vtysh not installed (etc/apt-packages.txt)")]

A, B = "198.51.100.1", "198.51.100.2"


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def pair(tmp_path) -> Iterator[tuple[str, str]]:
    for ns in ("vxtbfd-a", "vxtbfd-b"):
        sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", "vxtbfda", "netns", "vxtbfd-a", "type", "veth", "peer", "name", "vxtbfdb", "netns", "vxtbfd-b")
    for ns, dev, ip in (("vxtbfd-a", "vxtbfda", A), ("vxtbfd-b", "vxtbfdb", B)):
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
    dirs = ("/run/vxnet-lab/test-bfd-a", "/run/vxnet-lab/test-bfd-b")   # traversable by FRR's user
    try:
        yield dirs
    finally:
        for d in dirs:
            try:
                with open(os.path.join(d, "bfdd.pid")) as f:
                    os.kill(int(f.read()), 15)
            except (OSError, ValueError):
                pass
        for ns in ("vxtbfd-a", "vxtbfd-b"):
            subprocess.run(["ip", "netns", "del", ns], check=False)


class Changes:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.n = 0

    def __call__(self) -> None:
        with self.cond:
            self.n += 1
            self.cond.notify_all()

    def wait(self, pred, timeout: float = 15) -> None:  # type: ignore[no-untyped-def]
        with self.cond:
            assert self.cond.wait_for(pred, timeout), "condition not reached"


def test_down_up_isolated_and_adopted(pair: tuple[str, str]) -> None:
    ca, cb = Changes(), Changes()
    a = BfdMonitor("a", A, pair[0], ca, "vxtbfd-a")
    b = BfdMonitor("b", B, pair[1], cb, "vxtbfd-b")
    a.start()
    b.start()
    try:
        a.set_peers({"b": B})
        b.set_peers({"a": A})
        ca.wait(lambda: a.states() == {"b": "up"})
        assert a.down() == frozenset() and not a.isolated()
        pid = a.pid()
        t0 = time.time()
        sh("ip", "-n", "vxtbfd-b", "link", "set", "vxtbfdb", "down")     # b goes silent
        ca.wait(lambda: a.down() == {"b"})
        print(f"down detected after {time.time() - t0:.3f} s")
        assert a.isolated()                                     # its only session is down
        sh("ip", "-n", "vxtbfd-b", "link", "set", "vxtbfdb", "up")
        ca.wait(lambda: a.down() == frozenset())
        # an agent restart: a new monitor adopts the same bfdd, its session stays up
        a.close()
        a2 = BfdMonitor("a", A, pair[0], ca, "vxtbfd-a")
        a2.start()
        try:
            assert a2.pid() == pid
            ca.wait(lambda: a2.states().get("?" + B) == "up")
            a2.set_peers({"b": B})               # same address: no reconfiguration, no flap
            assert a2.states() == {"b": "up"} and a2.down() == frozenset()
            a2.set_peers({})                     # removed
            assert a2.states() == {}
        finally:
            a2.close()
    finally:
        a.close()
        b.close()
