"""Named network namespaces without pyroute2: create, remove, and run a function inside one.

Contract:
- `create(name)` makes the namespace `/run/netns/<name>` as `ip netns add` does (the run
  directory made a shared mount first, then an empty file bind-mounted over a fresh network
  namespace); EEXIST if the file exists. The new namespace is entered by a short-lived thread
  only (`unshare(CLONE_NEWNET)` is per thread), so no thread of the caller moves.
- `remove(name)` detaches and unlinks it (FileNotFoundError if there is none), as `ip netns del`.
- `list_netns(pred)` lists the namespace names in the run directory that `pred` accepts.
- `in_netns(name, fn)` runs `fn()` in a short-lived thread that entered `name` (setns is per
  thread) and returns its value or re-raises its exception. The namespace must exist.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from vxnet.dataplane.rtnl import CLONE_NEWNET, NETNS_RUN_DIR, setns

T = TypeVar("T")

MNT_DETACH = 0x2
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def list_netns(pred: Callable[[str], bool], run_dir: str = NETNS_RUN_DIR) -> list[str]:
    """The namespace names in `run_dir` that `pred` accepts, sorted ([] without the directory)."""
    try:
        return sorted(n for n in os.listdir(run_dir) if pred(n))
    except FileNotFoundError:
        return []


def in_thread(fn: Callable[[], T], name: str) -> T:
    """`fn()` in a short-lived thread named `name`; its value, or its exception re-raised here
    (for per-thread state: a namespace entered with setns or made with unshare)."""
    out: list[T] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            err.append(e)

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """`fn()` in a short-lived thread inside network namespace `name`."""

    def entered() -> T:
        setns(name)
        return fn()

    return in_thread(entered, f"vxnet-netns-{name}")


def _share_run_dir(libc: ctypes.CDLL, run_dir: bytes) -> None:
    """Make the run directory a shared mount (bind-mount it on itself first if it is none), so
    namespaces mounted there are seen in every mount namespace that shares it (as iproute2)."""
    if libc.mount(b"", run_dir, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    _check(libc.mount(run_dir, run_dir, b"none", MS_BIND | MS_REC, None), "bind-mount the netns run directory")
    _check(libc.mount(b"", run_dir, b"none", MS_SHARED | MS_REC, None), "share the netns run directory")


def create(name: str, run_dir: str = NETNS_RUN_DIR) -> None:
    """Create the named network namespace (see the module contract)."""
    libc = _libc()
    os.makedirs(run_dir, exist_ok=True)
    _share_run_dir(libc, run_dir.encode())
    path = os.path.join(run_dir, name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))

    def bind() -> None:
        _check(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        _check(libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND, None),
               f"bind-mount namespace {name}")

    try:
        in_thread(bind, f"vxnet-netns-create-{name}")
    except BaseException:
        os.unlink(path)
        raise


def remove(name: str, run_dir: str = NETNS_RUN_DIR) -> None:
    """Remove the named network namespace (FileNotFoundError when there is none)."""
    path = os.path.join(run_dir, name)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "no such network namespace", name)
    _libc().umount2(path.encode(), MNT_DETACH)     # not a mount point: EINVAL, the unlink still goes
    os.unlink(path)
