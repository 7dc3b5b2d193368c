"""Opt-in memory profile of a server or agent process: where its memory goes, on demand.

Off unless the environment names a file prefix: `VXNET_MEMPROFILE=<prefix>` makes `install()`
start `tracemalloc` (frames per trace from `VXNET_MEMPROFILE_FRAMES`, default 1; 0 traces
nothing: a cheap report of RSS and malloc's heap only) and handle
SIGUSR2: each signal writes `<prefix>-<pid>-<n>.txt` (n = 1, 2, ...) with the traced memory grouped
by source line and by file, glibc malloc's heap in use and free (`mallinfo2`), and the
garbage collector's objects counted by type (the frozen ones included), pymalloc's arenas
against their live blocks (without tracing only), the peak RSS, resident memory by kind and the
threads; with
`VXNET_MEMPROFILE_TRIM=1` it then trims the heap (`malloc_trim`) and reports again. The benchmarks send the signal at each phase (bench/servers.py `mem_profile`).

Tracing costs memory and CPU (every allocation is recorded): never for a figure of the run
itself, only to learn which structure holds what. Nothing happens without the variable.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import os
import signal
import sys
import tracemalloc

ENV = "VXNET_MEMPROFILE"
FRAMES_ENV = "VXNET_MEMPROFILE_FRAMES"
TRIM_ENV = "VXNET_MEMPROFILE_TRIM"
TOP = 40
_count = 0


def install() -> bool:
    """Start tracing and handle SIGUSR2 when `VXNET_MEMPROFILE` is set; whether it is."""
    prefix = os.environ.get(ENV)
    if not prefix:
        return False
    frames = int(os.environ.get(FRAMES_ENV, "1"))
    if frames > 0:  # 0: no tracing, the report has the RSS and malloc's heap only
        tracemalloc.start(frames)
    signal.signal(signal.SIGUSR2, lambda _sig, _frame: write(prefix))  # runs on the main thread
    return True


def _rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def process_stats() -> str:
    """The peak RSS, the resident memory by kind (anonymous: heaps and stacks; file: the
    interpreter's and the libraries' mapped code) and the threads by name."""
    rollup = {}
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if v.strip().endswith("kB"):
                    rollup[k] = int(v.split()[0])
    except OSError:
        pass
    names: collections.Counter[str] = collections.Counter()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names[f.read().strip()] += 1
        except OSError:
            pass
    return (f"peak rss (VmHWM) {_rss_kib('VmHWM') / 1024:.1f} MiB; anonymous {rollup.get('Anonymous', 0) / 1024:.1f} "
            f"MiB, file-backed {(rollup.get('Rss', 0) - rollup.get('Anonymous', 0)) / 1024:.1f} MiB; "
            f"threads {sum(names.values())}: " + ", ".join(f"{n} x{c}" for n, c in sorted(names.items())))


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_stats() -> str:
    """glibc's malloc: heap bytes in use and free (the free part is what Python let go of but the
    process keeps), and mmapped bytes; "" where mallinfo2 is missing (not glibc, or before 2.33)."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return ""
    fn.restype = _MallInfo2
    m = fn()
    mib = 2**20
    return (f"malloc: heap {m.arena / mib:.1f} MiB (in use {m.uordblks / mib:.1f}, free {m.fordblks / mib:.1f}), "
            f"mmapped {m.hblkhd / mib:.1f} MiB")


def pymalloc_stats() -> str:
    """Python's small-object allocator: its arenas (resident once touched) against the bytes
    in live blocks; the difference is free space inside arenas that cannot be given back while
    any block of theirs lives (fragmentation). From `sys._debugmallocstats`, which writes to the
    C stderr: captured through a temporary file."""
    import tempfile

    with tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    vals: dict[str, int] = {}
    for line in text.splitlines():
        k, eq, v = line.partition("=")
        if eq and v.strip().replace(",", "").isdigit():
            vals[k.strip()] = int(v.strip().replace(",", ""))
    arenas = vals.get("# arenas allocated current", 0)
    if not arenas:              # tracemalloc's hooks replace the allocator: no statistics then
        return "pymalloc: no statistics while tracemalloc traces (VXNET_MEMPROFILE_FRAMES=0 for them)"
    mib = 2**20
    return (f"pymalloc: {arenas} arenas ({sum(v for k, v in vals.items() if k.endswith('bytes/arena')) / mib:.1f} "
            f"MiB), in live blocks {vals.get('# bytes in allocated blocks', 0) / mib:.1f} MiB, free blocks "
            f"{vals.get('# bytes in available blocks', 0) / mib:.1f} MiB, unused pools "
            f"{sum(v for k, v in vals.items() if k.endswith('unused pools * 16384 bytes')) / mib:.1f} MiB")


def type_counts() -> collections.Counter[str]:
    """Objects the garbage collector tracks, by type name (frozen ones included)."""
    frozen = gc.get_freeze_count()
    if frozen:
        gc.unfreeze()
    try:
        return collections.Counter(type(o).__name__ for o in gc.get_objects())
    finally:
        if frozen:
            gc.freeze()


def report(limit: int = TOP) -> str:
    """The profile as text (see the module docstring)."""
    tracing = tracemalloc.is_tracing()
    cur, peak = tracemalloc.get_traced_memory()
    lines = [f"rss {_rss_kib() / 1024:.1f} MiB; traced {cur / 2**20:.1f} MiB (peak {peak / 2**20:.1f})",
             malloc_stats(), pymalloc_stats(), process_stats()]
    if os.environ.get(TRIM_ENV):   # what trimming the heap would give back (it does trim it)
        ctypes.CDLL(None).malloc_trim(0)
        lines.append(f"after malloc_trim: rss {_rss_kib() / 1024:.1f} MiB; {malloc_stats()}")
    lines.append("")
    keys = ("lineno", "filename") + (("traceback",) if tracemalloc.get_traceback_limit() > 1 else ())
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)]) \
        if tracing else None
    for key in keys if snap is not None else ():
        lines.append(f"== by {key}")
        for st in snap.statistics(key)[:limit]:
            where = " <- ".join(str(fr) for fr in reversed(st.traceback)) if key == "traceback" else str(st.traceback[0])
            lines.append(f"{st.size / 2**20:9.2f} MiB {st.count:9d} blocks  {where}")
        lines.append("")
    if tracing:
        lines.append("== gc objects by type")
        for name, n in type_counts().most_common(limit):
            lines.append(f"{n:10d}  {name}")
    return "\n".join(lines) + "\n"


def write(prefix: str) -> str:
    """Write the next profile file; its path."""
    global _count
    _count += 1
    path = f"{prefix}-{os.getpid()}-{_count}.txt"
    text = report()
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    print(f"memory profile written to {path}", file=sys.stderr)
    return path
