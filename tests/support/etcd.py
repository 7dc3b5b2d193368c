"""Real etcd for tests: members started as subprocesses on free loopback ports with their own
data directories, stopped by PID (also at interpreter exit, so a crashed test leaves nothing).

`VXNET_ETCD_ARGS` (whitespace-separated) is added to every member's command line: how a
benchmark is run against members with other settings (e.g. `--metrics extensive` for etcd's
per-method handling times, `--backend-batch-interval 1s`; docs/benchmarks.md, the etcd write
path's eleventh round) without a change of the tree.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time

import httpx

from tests.support import ports

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def _free_port() -> int:
    return ports.free_port()


def _tail(path: str, lines: int = 8) -> str:
    try:
        with open(path, "rb") as f:
            return b"".join(f.readlines()[-lines:]).decode(errors="replace")
    except OSError:
        return "(no log)"


class EtcdCluster:
    """`size` members on 127.0.0.1; `endpoints` are their client URLs."""

    def __init__(self, size: int = 1, prefix: str = "vxt", tls: tuple[str, str, str] | None = None,
                 max_txn_ops: int = 1024) -> None:
        """`tls` = (ca, cert, key): serve clients over HTTPS and require client certificates."""
        self.tls = tls
        self.max_txn_ops = max_txn_ops
        self.dir = tempfile.mkdtemp(prefix=f"{prefix}-etcd-")
        self.names = [f"{prefix}{i}" for i in range(size)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        atexit.register(self.stop)  # first, so a member that never gets healthy is still stopped
        # A member that cannot bind its port (taken by another process since we chose it) exits at
        # once: start the whole cluster again on new ports and a new data dir, at most 3 times.
        for attempt in range(3):
            self.client_ports = {n: _free_port() for n in self.names}
            self.peer_ports = {n: _free_port() for n in self.names}
            self.initial = ",".join(f"{n}=http://127.0.0.1:{self.peer_ports[n]}" for n in self.names)
            for n in self.names:
                self.start(n, new=True)
            try:
                self.wait_healthy(60)
                return
            except RuntimeError:
                self.stop(keep_dir=attempt == 2)  # the last failure keeps its logs
                if attempt == 2:
                    raise
                os.makedirs(self.dir)
            except BaseException:
                self.stop()
                raise

    @property
    def endpoints(self) -> list[str]:
        proto = "https" if self.tls else "http"
        return [f"{proto}://127.0.0.1:{self.client_ports[n]}" for n in self.names]

    def url(self) -> str:
        """A store URL for vxnet."""
        hosts = ",".join(f"127.0.0.1:{self.client_ports[n]}" for n in self.names)
        if self.tls:
            ca, cert, key = self.tls
            return f"etcds://{hosts}?ca={ca}&cert={cert}&key={key}"
        return "etcd://" + hosts

    def start(self, name: str, new: bool = False) -> None:
        cport, pport = self.client_ports[name], self.peer_ports[name]
        proto = "https" if self.tls else "http"
        tls_args = []
        if self.tls:
            ca, cert, key = self.tls
            tls_args = ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth"]
        log = open(os.path.join(self.dir, f"{name}.log"), "ab")  # noqa: SIM115 - owned by the process
        self.procs[name] = subprocess.Popen(
            [ETCD, "--name", name, "--data-dir", os.path.join(self.dir, name),
             "--listen-client-urls", f"{proto}://127.0.0.1:{cport}",
             "--advertise-client-urls", f"{proto}://127.0.0.1:{cport}", *tls_args,
             "--listen-peer-urls", f"http://127.0.0.1:{pport}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
             "--initial-cluster", self.initial, "--initial-cluster-state", "new",
             "--initial-cluster-token", os.path.basename(self.dir),
             "--max-txn-ops", str(self.max_txn_ops), *os.environ.get("VXNET_ETCD_ARGS", "").split()],
            stdout=log, stderr=log,
        )

    def kill(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)

    def wait_healthy(self, timeout: float = 60) -> None:
        """Every running member answers /health with true; else RuntimeError with their log tails
        (at once when a member has exited)."""
        deadline = time.time() + timeout
        live = [(n, self.endpoints[i]) for i, n in enumerate(self.names) if n in self.procs]
        for name, ep in live:
            while True:
                try:
                    r = httpx.get(ep + "/health", timeout=1, verify=self._ssl() if self.tls else True)
                    if r.status_code == 200 and r.json().get("health") in ("true", True):
                        break
                except httpx.HTTPError:
                    pass
                exited = self.procs[name].poll() is not None
                if exited or time.time() > deadline:
                    why = f"exited with {self.procs[name].returncode}" if exited else "not healthy"
                    logs = "".join(f"--- {n}.log\n{_tail(os.path.join(self.dir, f'{n}.log'))}" for n, _ in live)
                    raise RuntimeError(f"etcd {name} at {ep} {why}; logs in {self.dir}:\n{logs}")
                time.sleep(0.1)

    def _ssl(self) -> ssl.SSLContext:
        assert self.tls is not None
        ctx = ssl.create_default_context(cafile=self.tls[0])
        ctx.load_cert_chain(self.tls[1], self.tls[2])
        return ctx

    def stop(self, keep_dir: bool = False) -> None:
        for n in list(self.procs):
            self.kill(n)
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
