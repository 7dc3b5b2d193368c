"""The C heap under a long-running server process: one setting of glibc's malloc.

Python's small objects live in its own arenas; strings above 512 bytes (a stored port's JSON,
~900 bytes) come from glibc's malloc, which gives every thread an arena of its own (up to 8 per
core). The API's worker threads write the ports' new JSON into their arenas while the values
they replace, loaded on the main thread, are freed in another, where nothing reuses them. So the
server caps the arenas at 2 (`limit_malloc_arenas`, at start-up): measured with 20,000 ports
(docs/benchmarks.md), 6 MiB less RSS after the hosts' registration, which rewrites every port.
(Trimming the heap, `malloc_trim`, after the registration or the snapshots of a cold start gave
nothing back there: what stays is live.) After the server's load it does (`trim`): the store's
text of every resource the view hub parsed is freed then. Best effort: nothing happens where
glibc is not the C library.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (M_ARENA_MAX). Call at start-up, before threads allocate."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def trim() -> None:
    """Give the pages glibc's malloc holds free back to the kernel (`malloc_trim`): after the
    server's load, which frees the text of every resource it parsed (services/view_hub.py)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
