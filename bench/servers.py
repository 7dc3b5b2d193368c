"""What the control-plane benchmarks start: `vxnet server` subprocesses on a fresh store (the
embedded SQLite store in the work directory, or an etcd cluster on loopback), their users and
tokens, the CPU time and RSS of their PIDs read from /proc, and simulated hosts registered on them.

Contract: every process started here is stopped by its own PID (SIGTERM, then SIGKILL after a
grace period) when its context exits, also when starting it or the benchmark failed; a server
that exits before it answers raises with the end of its log. Nothing else is signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VXNET = os.path.join(REPO, ".venv", "bin", "vxnet")

# A configured user: name, password, project, roles (a TOML list).
User = tuple[str, str, str, str]
ADMIN: User = ("admin", "bench-admin-pw", "admin", '["admin"]')
AGENT: User = ("vxnet-agent", "vxnet-agent-pw", "service", '["service"]')

QUOTA_RESOURCES = ("network", "subnet", "port", "router", "floatingip", "security_group", "security_group_rule")
UNLIMITED_QUOTAS = "".join(f"quota_{r} = -1\n" for r in QUOTA_RESOURCES)  # counted, never exceeded
QUOTAS_OFF = "enabled = false\n"
# Simulated agents register but never heartbeat: the server must not declare them dead mid-run.
NO_AGENT_EXPIRY = "agent_down_time = 3600\n"


def import_repo() -> None:
    """Make the repository's `tests` package importable (the etcd cluster fixture lives there)."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)


# --- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident set size of a process (VmRSS), MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def sample(pids: Iterable[int]) -> tuple[float, float]:
    """(total CPU seconds, total RSS MiB) of `pids`."""
    pids = list(pids)
    return sum(cpu_seconds(p) for p in pids), sum(rss_mib(p) for p in pids)


def mem_profile(pids: Iterable[int], label: str, timeout: float = 300.0) -> None:
    """With VXNET_MEMPROFILE set (src/vxnet/memprofile.py; the servers inherit it): ask each
    server for a memory profile (SIGUSR2) and name it `<prefix>-<pid>-<label>.txt`. Otherwise
    nothing."""
    prefix = os.environ.get("VXNET_MEMPROFILE")
    if not prefix:
        return
    for pid in pids:
        d, base = os.path.split(prefix)
        before = {f for f in os.listdir(d or ".") if f.startswith(f"{base}-{pid}-")}
        os.kill(pid, signal.SIGUSR2)
        deadline = time.time() + timeout
        while time.time() < deadline:
            new = [f for f in os.listdir(d or ".") if f.startswith(f"{base}-{pid}-") and f.endswith(".txt")
                   and f not in before]
            if new:
                os.replace(os.path.join(d, new[0]), f"{prefix}-{pid}-{label}.txt")
                break
            time.sleep(0.2)


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], sig: int = signal.SIGTERM,
                   timeout: float = 15.0) -> None:
    """Send `sig` to every process still running, then wait for each; SIGKILL after `timeout`."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(sig)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def raise_open_files_limit(want: int = 65536) -> None:
    """Raise the soft limit of open files towards `want` (thousands of streams and sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, want)), hard))


def load_averages() -> str:
    """The 1/5/15-minute load averages, as "a / b / c"."""
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


# --- servers -------------------------------------------------------------------------------------


def server_config(port: int, workdir: str, users: Iterable[User], server: str = "", quotas: str = "") -> str:
    """A server's TOML: listen on loopback `port`, data in `workdir`, the `users`; `server` and
    `quotas` are extra lines of the [server] and [quotas] tables."""
    text = f'[server]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{workdir}"\n{server}'
    if quotas:
        text += f"\n[quotas]\n{quotas}"
    return text + "".join(f'\n[[identity.users]]\nname = "{name}"\npassword = "{pw}"\nproject = "{project}"\n'
                          f"roles = {roles}\n" for name, pw, project, roles in users)


def _wait_answering(proc: subprocess.Popen[bytes], port: int, log: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {Path(log).read_text()[-2000:]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
            return
        except httpx.HTTPError:
            if time.time() > deadline:
                raise RuntimeError(f"server did not answer within {timeout:.0f} s") from None
            time.sleep(0.1)


@contextlib.contextmanager
def servers(workdir: str, store_url: str | None, count: int = 1, users: Iterable[User] = (ADMIN, AGENT),
            server: str = "", quotas: str = "", start_timeout: float = 30.0) -> Iterator[list[tuple[int, int]]]:
    """`count` servers on one store (embedded SQLite in `workdir` unless `store_url`), started one
    after the other, each once it answers HTTP; yields [(http port, pid)]. Config and log files
    are `server<i>.toml` / `server<i>.log` in `workdir`. All are stopped by PID on exit."""
    users = list(users)
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    out: list[tuple[int, int]] = []
    try:
        for i in range(count):
            port = free_port()
            cfg = os.path.join(workdir, f"server{i}.toml")
            with open(cfg, "w") as f:
                f.write(server_config(port, workdir, users, server, quotas))
            log = open(os.path.join(workdir, f"server{i}.log"), "w")  # noqa: SIM115 - closed below
            logs.append(log)
            proc = subprocess.Popen([VXNET, "server", "--config", cfg, "--store",
                                     store_url or f"sqlite://{workdir}/vxnet.db"], stdout=log, stderr=subprocess.STDOUT)
            procs.append(proc)
            _wait_answering(proc, port, log.name, start_timeout)
            out.append((port, proc.pid))
        yield out
    finally:
        stop_processes(procs)
        for log in logs:
            log.close()


@contextlib.contextmanager
def server_process(workdir: str, store_url: str | None = None, users: Iterable[User] = (ADMIN, AGENT),
                   server: str = "", quotas: str = "", start_timeout: float = 30.0) -> Iterator[tuple[int, int]]:
    """One server (see `servers`); yields (http port, pid)."""
    with servers(workdir, store_url, 1, users, server, quotas, start_timeout) as out:
        yield out[0]


def token(port: int, user: User) -> str:
    """A project-scoped Keystone token of `user` from the server on `port`."""
    name, pw, project, _ = user
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": name, "domain": {"id": "default"}, "password": pw}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
    r = httpx.post(f"http://127.0.0.1:{port}/identity/v3/auth/tokens", json=body, timeout=30)
    if r.status_code != 201:
        raise RuntimeError(f"token for {name}: HTTP {r.status_code} {r.text[:200]}")
    return r.headers["X-Subject-Token"]


# --- simulated hosts -----------------------------------------------------------------------------


def underlay(i: int) -> str:
    """Simulated host i's underlay address (unique for i < 2**24)."""
    return f"100.{100 + i // 65536}.{i // 256 % 256}.{i % 256}"


async def register_hosts(ports: list[int], agent_tok: str, hosts: list[str]) -> None:
    """Register host i (underlay(i)) on server i mod S (ports), 16 requests at a time."""
    sem = asyncio.Semaphore(16)
    clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}/v2.0/vxnet", headers={"X-Auth-Token": agent_tok},
                                 timeout=120) for p in ports]

    async def one(i: int, h: str) -> None:
        async with sem:
            r = await clients[i % len(clients)].post(f"/hosts/{h}/register", json={"underlay_ip": underlay(i)})
            assert r.status_code == 200, r.text

    try:
        await asyncio.gather(*(one(i, h) for i, h in enumerate(hosts)))
    finally:
        for c in clients:
            await c.aclose()


# --- stores --------------------------------------------------------------------------------------


def etcd_installed() -> bool:
    return shutil.which("etcd") is not None or os.path.exists("/usr/bin/etcd")


def backends(spec: str, notes: list[str]) -> list[str]:
    """The store backends of a comma list ("etcd,sqlite"), without the etcd ones when etcd is
    not installed (said in `notes`)."""
    names = [b for b in spec.split(",") if b]
    if not etcd_installed() and any(b.startswith("etcd") for b in names):
        notes.append("etcd is not installed: the etcd backend was not measured.")
        names = [b for b in names if not b.startswith("etcd")]
    return names


@contextlib.contextmanager
def etcd_cluster(members: int, prefix: str) -> Iterator[tuple[str, list[int]]]:
    """A fresh etcd cluster of `members` on loopback (tests/support/etcd.py), members named
    after `prefix`; yields (store URL, member PIDs). Stopped by PID on exit."""
    import_repo()
    from tests.support.etcd import EtcdCluster

    cluster = EtcdCluster(members, prefix=prefix)
    try:
        yield cluster.url(), [p.pid for p in cluster.procs.values()]
    finally:
        cluster.stop()


async def open_view(port: int, host: str, token: str, limit: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """`host`'s view stream opened over raw asyncio HTTP/1.1, its answer's headers read: the
    reader is at the first chunk (chunked NDJSON)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=limit)
    try:
        writer.write((f"GET /v2.0/vxnet/hosts/{host}/view HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"X-Auth-Token: {token}\r\nAccept: application/x-ndjson\r\n\r\n").encode())
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(status.decode(errors="replace").strip())
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
    except BaseException:
        writer.close()
        raise
    return reader, writer
