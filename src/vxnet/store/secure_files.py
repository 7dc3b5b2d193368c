"""Files that hold secrets (the embedded store holds the token signing keys): owner-only modes.

Contract:
- `private_dir(path)` creates a missing directory 0700 (existing directories are left alone;
  `check_private(dir)` says whether one is safe).
- `create_private(path)` makes sure a file exists with mode 0600 *before* anything writes
  secrets into it (SQLite creates its -wal and -shm files with the database file's mode, so a
  0600 database gets 0600 companions).
- `check_private(path)` raises `InsecureFile` when a file or directory can be read or written by
  its group or others, naming the file and the `chmod` that fixes it. The server refuses to start
  on such a store rather than serve tokens anyone on the host can forge.
- `write_private(path, text)` writes a file that is 0600 from its first byte.
"""

from __future__ import annotations

import os
import stat

from vxnet.store.contract import StoreError


class InsecureFile(StoreError):
    """A secret-holding file or directory is readable by others."""


def private_dir(path: str) -> None:
    """Create `path` (and missing parents) with mode 0700."""
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # makedirs' mode is filtered by the umask


def create_private(path: str) -> None:
    """Create `path` empty with mode 0600 if missing (O_EXCL-free: an existing file is kept)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    os.close(fd)


def check_private(path: str, what: str = "store file") -> None:
    """Raise InsecureFile if `path` is accessible by its group or others (missing is fine)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if st.st_mode & 0o077:
        want = "700" if stat.S_ISDIR(st.st_mode) else "600"
        raise InsecureFile(
            f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}: it holds the token signing key, so anyone "
            f"who can read it can forge tokens. Run `chmod {want} {path}` (and check who read it; "
            f"`vxnet keys rotate --revoke` makes the old key useless)."
        )


def write_private(path: str, text: str) -> None:
    """Write `text` to `path`, mode 0600 from creation on (an existing file is tightened first)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


def prepare_sqlite(path: str) -> None:
    """Before SQLite opens `path`: its directory exists (made 0700 if new), no existing store file
    is readable by others (InsecureFile otherwise), and the database file exists as 0600 so the
    -wal/-shm SQLite creates later inherit 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    private_dir(directory)
    for suffix in SQLITE_COMPANIONS:
        check_private(path + suffix)
    create_private(path)
    create_private(path + ".lock")  # holds no secret; kept private anyway
    os.chmod(path + ".lock", 0o600)


def verify_sqlite(path: str) -> None:
    """After SQLite opened `path` (WAL mode): every store file is still owner-only."""
    for suffix in SQLITE_COMPANIONS:
        check_private(path + suffix)
