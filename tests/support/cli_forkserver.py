"""A fork server for an unmodified Python console script (the `openstack` CLI in tests/clients).

The `openstack` CLI costs ~2.7 s wall / 1.7 s CPU per invocation on the 2-core CI VM, almost all
of it imports, and tests/clients run hundreds of invocations. `ForkServerCli.start` runs this file
as a server process that imports the console script's module ONCE, plus the modules a first
command pulls in (learned from a throwaway child that runs `PROBE_ARGS`, a command without auth
or network, so the server itself never runs a command). Each `run()` then forks a child that is
what a fresh `subprocess.run([script, *args], env=..., cwd=..., capture_output=True, text=True,
timeout=...)` process would be: exactly the given environment (cleared, then set: nothing
inherited), cwd, `sys.argv`, stdout/stderr into the caller's files, and the console script's own
call `sys.exit(main())`. The answer is a `subprocess.CompletedProcess[str]` decoded as
`text=True` does, with the child's exit status (a signal gives a negative code).

Invariants:
- The server runs no command and holds no state a command could leave (tokens, sessions,
  logging set-up, caches filled by a run): every child authenticates as a fresh process does.
  The server is single-threaded and, apart from its listening socket, holds no socket when it
  forks; it refuses to fork otherwise.
- A timed-out call SIGKILLs its own child, by the PID the server reported, and raises
  `subprocess.TimeoutExpired` as `subprocess.run` does.
- The server dies with the process that started it, and each child with the server
  (PR_SET_PDEATHSIG, checked against a parent that died before the call). `stop()` signals the
  server by its PID only.
- What the CLI reads while it is imported, it reads in the server: its environment (the calls'
  environments differ only in OS_* variables here, which the CLI reads when it runs) and its
  cwd: openstack.config puts `os.getcwd()` at import into its clouds.yaml search path. So every
  call runs in the server's cwd (`run()` refuses another), where a fresh process would have
  seen the same path.
- Differences from a real process, on purpose: stdin is /dev/null (a CLI that would prompt fails
  instead of hanging), and the children share the server's str hash seed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib
import json
import locale
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import IO, Any, Protocol

PR_SET_PDEATHSIG = 1
PROBE_ARGS = ("network", "list", "--help")  # loads a command plugin and its client; no auth, no network
START_TIMEOUT = 60.0


class CliRunner(Protocol):
    """How a test runs a CLI: the signature of `subprocess.run(..., capture_output=True, text=True)`."""

    def run(self, argv: list[str], *, env: dict[str, str], cwd: Path,
            timeout: float) -> subprocess.CompletedProcess[str]: ...


class SubprocessCli:
    """The plain way: one `subprocess.run` per call (the console script with its full start-up)."""

    def run(self, argv: list[str], *, env: dict[str, str], cwd: Path,
            timeout: float) -> subprocess.CompletedProcess[str]:
        """Run `argv` as a subprocess and capture its output."""
        return subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies; exit now if the parent is already gone."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _text(data: bytes) -> str:
    """Bytes as `subprocess.run(text=True)` decodes them: locale encoding, universal newlines."""
    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


class ForkServerCli:
    """Client of a running fork server: `run()` is `SubprocessCli.run` at the cost of a fork."""

    def __init__(self, proc: subprocess.Popen[bytes], cwd: Path, sock_path: Path, log_file: Path) -> None:
        self.proc = proc
        self.cwd = cwd
        self.sock_path = sock_path
        self.log_file = log_file

    @classmethod
    def start(cls, script: Path, workdir: Path, env: dict[str, str]) -> ForkServerCli:
        """Start the server for console `script` (its `main`, as the script calls it) in `workdir`,
        the cwd of every call.

        `env` is the environment the interpreter starts with (PYTHONWARNINGS and the like are
        read then); each call still sets its own complete environment."""
        sock_path = workdir / "cli.sock"
        log_file = workdir / "cli-forkserver.log"
        with open(log_file, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, __file__, str(sock_path), str(script), str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env, cwd=workdir,
                preexec_fn=_preexec_die_with_parent,  # noqa: PLW1509 - one prctl call, no locks
            )
        server = cls(proc, workdir, sock_path, log_file)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        line = proc.stdout.readline() if ready else b""
        proc.stdout.close()
        if line.strip() != b"ready":
            server.stop()
            raise RuntimeError(f"the CLI fork server did not start:\n{log_file.read_text(errors='replace')[-3000:]}")
        return server

    def run(self, argv: list[str], *, env: dict[str, str], cwd: Path,
            timeout: float) -> subprocess.CompletedProcess[str]:
        """Run console-script `argv` in a forked child; on timeout kill that child and raise."""
        if Path(cwd) != self.cwd:
            raise ValueError(f"the CLI imported its search paths in {self.cwd}: a call in {cwd} would not be a fresh run")
        deadline = time.monotonic() + timeout
        with (socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn, tempfile.TemporaryFile() as out,
              tempfile.TemporaryFile() as err):
            conn.connect(str(self.sock_path))
            request = json.dumps({"argv": argv, "env": env, "cwd": str(cwd)}).encode() + b"\n"
            socket.send_fds(conn, [request], [out.fileno(), err.fileno()])
            lines = _Lines(conn)
            first = lines.next(deadline)
            if not first.isdigit():
                why = first.decode(errors="replace") or "no answer"
                raise RuntimeError(f"the CLI fork server refused {argv}: {why}\n{self.log_tail()}")
            pid = int(first)
            try:
                status = lines.next(deadline)
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)  # the child the server forked for this call, nothing else
                with contextlib.suppress(TimeoutError):
                    lines.next(time.monotonic() + 10)  # the server has reaped it
                raise subprocess.TimeoutExpired(argv, timeout, output=_read(out), stderr=_read(err)) from None
            if not status:
                raise RuntimeError(f"the CLI fork server died during {argv}\n{self.log_tail()}")
            return subprocess.CompletedProcess(argv, int(status), _text(_read(out)), _text(_read(err)))

    def log_tail(self) -> str:
        """The end of the server's stderr."""
        try:
            return self.log_file.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server by its PID (its running children die with it)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


class _Lines:
    """Lines from a socket, each read by a deadline (a timed-out read leaves the reader usable)."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buf = b""

    def next(self, deadline: float) -> bytes:
        """The next line without its newline; b"" if the server closed the connection first."""
        while b"\n" not in self.buf:
            self.conn.settimeout(max(deadline - time.monotonic(), 0.001))
            data = self.conn.recv(4096)
            if not data:
                return b""
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line


def _preexec_die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _read(f: IO[bytes]) -> bytes:
    f.seek(0)
    return f.read()


# --- the server process ----------------------------------------------------------------------


def _load_main(script: Path) -> Any:
    """`main` as the console script imports it (`from pkg.mod import main`), with the script's sys.path."""
    sys.path[0] = str(script.parent)  # what the interpreter sets for `python SCRIPT`
    sys.argv = [str(script)]  # read at import time too (cliff's App.NAME, the program's name)
    for line in script.read_text().splitlines():
        if line.startswith("from ") and line.endswith(" import main"):
            return importlib.import_module(line.split()[1]).main
    raise RuntimeError(f"{script} is not a console script calling main()")


def _exit_code(code: object) -> int:
    """What the interpreter makes of `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _run_console_script(main: Any, argv: list[str]) -> int:
    """`sys.exit(main())` in this process, then the interpreter's exit: atexit, flush; the exit code."""
    sys.argv = list(argv)
    try:
        rc = _exit_code(main(argv[1:]))
    except SystemExit as e:
        rc = _exit_code(e.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        rc = 1
    except BaseException:  # noqa: BLE001 - an uncaught exception: traceback on stderr, status 1
        sys.excepthook(*sys.exc_info())
        rc = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return rc


def _probe_modules(main: Any, script: Path) -> list[str]:
    """Modules a first command imports, from a throwaway child that runs PROBE_ARGS."""
    before = set(sys.modules)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 1)
        os.dup2(null, 2)
        _run_console_script(main, [str(script), *PROBE_ARGS])
        os.write(w, "\n".join(sorted(set(sys.modules) - before)).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        names = f.read().decode().split()
    os.waitpid(pid, 0)
    return names


def _unsafe_to_fork(own_sockets: set[int]) -> str:
    """Why forking now would be unsafe (a second thread, or a socket not in `own_sockets`); '' if safe."""
    if len(os.listdir("/proc/self/task")) != 1:
        return "the server has more than one thread"
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") and int(fd) not in own_sockets:
                return f"the server holds a socket it did not make (fd {fd})"
    return ""


class _Server:
    """Accepts calls on a Unix socket, forks one child per call, reports its PID then its exit code."""

    def __init__(self, sock_path: str, script: Path) -> None:
        self.script = script
        self.main = _load_main(script)
        for name in _probe_modules(self.main, script):
            with contextlib.suppress(Exception):
                importlib.import_module(name)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(sock_path)
        self.listener.listen(64)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.running: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, connection)
        if why := _unsafe_to_fork({self.listener.fileno()}):
            raise RuntimeError(why)

    def serve(self) -> None:
        """Serve until killed."""
        while True:
            for key, _ in self.sel.select():
                if key.data is None:
                    self._accept()
                else:
                    self._reap(key.fd)

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        try:
            data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 2)
            while not data.endswith(b"\n"):
                more = conn.recv(1 << 20)
                if not more:
                    raise ConnectionError("request cut short")
                data += more
            request = json.loads(data)
            if len(fds) != 2:
                raise ConnectionError(f"expected stdout and stderr descriptors, got {len(fds)}")
        except (OSError, ValueError) as e:
            print(f"bad request: {e}", file=sys.stderr)
            conn.close()
            return
        # the child closes the server's own sockets; any other one (a library's) would leak into it
        own = {self.listener.fileno(), conn.fileno(), *(c.fileno() for _, c in self.running.values())}
        if why := _unsafe_to_fork(own):
            conn.sendall(why.encode() + b"\n")
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        server_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            self._child(server_pid, conn, fds, request)  # never returns
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.running[pidfd] = (pid, conn)
        self.sel.register(pidfd, selectors.EVENT_READ, pid)
        with contextlib.suppress(OSError):
            conn.sendall(b"%d\n" % pid)

    def _reap(self, pidfd: int) -> None:
        pid, conn = self.running.pop(pidfd)
        self.sel.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        with contextlib.suppress(OSError):
            conn.sendall(b"%d\n" % os.waitstatus_to_exitcode(status))
        conn.close()

    def _child(self, server_pid: int, conn: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
        """In the forked child: become the fresh CLI process `request` describes, run it, exit."""
        rc = 1
        try:
            _die_with_parent(server_pid)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self.sel.close()
            self.listener.close()
            for pidfd, (_, other) in self.running.items():
                os.close(pidfd)
                other.close()
            conn.close()  # the server answers for this child; it keeps no descriptor of the call
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(fds[0], 1)
            os.dup2(fds[1], 2)
            for fd in (null, *fds):
                os.close(fd)
            os.chdir(request["cwd"])
            os.environ.clear()
            os.environ.update(request["env"])
            rc = _run_console_script(self.main, request["argv"])
        finally:
            os._exit(rc)


def _serve_main() -> None:
    sock_path, script, parent = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if os.getppid() != parent:
        sys.exit("the process that started the fork server is gone")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server = _Server(sock_path, script)
    os.write(1, b"ready\n")
    server.serve()


if __name__ == "__main__":
    _serve_main()
