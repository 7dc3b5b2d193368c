"""vxnet/memprofile.py, the opt-in memory profile of a server: nothing without the variable; with
it, SIGUSR2 writes a profile naming the line that holds the memory."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

GLIBC_STATS = hasattr(ctypes.CDLL(None), "mallinfo2")  # glibc >= 2.33
SCRIPT = """
import os, signal, time
from vxnet import memprofile
print(memprofile.install())
held = [str(i) * 1000 for i in range(20000)]  # ~20 MB held by this line
os.kill(os.getpid(), signal.SIGUSR2)
time.sleep(0.2)
"""


def _run(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", SCRIPT], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout.strip()


def test_off_without_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VXNET_MEMPROFILE")}
    out = subprocess.run([sys.executable, "-c", SCRIPT.replace("os.kill(os.getpid(), signal.SIGUSR2)", "")],
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_sigusr2_writes_where_memory_goes(tmp_path: Path) -> None:
    assert _run({"VXNET_MEMPROFILE": str(tmp_path / "p")}) == "True"
    (f,) = tmp_path.glob("p-*-1.txt")
    text = f.read_text()
    top = text.split("== by lineno")[1].splitlines()[1]
    assert "<string>:5" in top and float(top.split()[0]) > 15, text[:800]
    assert "== gc objects by type" in text and ("malloc: heap" in text or not GLIBC_STATS)
    # the process view (agent or server): the peak, memory by kind, the threads; pymalloc's
    # statistics only without tracing (tracemalloc replaces the allocator)
    assert "peak rss (VmHWM)" in text and "file-backed" in text and "threads 1: " in text
    assert "pymalloc: no statistics while tracemalloc traces" in text


def test_frames_zero_traces_nothing(tmp_path: Path) -> None:
    assert _run({"VXNET_MEMPROFILE": str(tmp_path / "p"), "VXNET_MEMPROFILE_FRAMES": "0"}) == "True"
    (f,) = tmp_path.glob("p-*-1.txt")
    text = f.read_text()
    assert text.startswith("rss ") and "== by lineno" not in text and "== gc objects" not in text
    pym = next(line for line in text.splitlines() if line.startswith("pymalloc: "))
    assert int(pym.split()[1]) > 0 and float(pym.split("in live blocks ")[1].split()[0]) > 0.5, pym
    assert "malloc: heap" in text or not GLIBC_STATS
