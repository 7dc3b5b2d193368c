"""API throughput on the embedded store (and on etcd), against a real `vxnet server` subprocess.

Measures, as a tenant (member role) over keep-alive HTTP/1.1 connections:
- port creates per second and p50/p99 latency with 1 and with 8 concurrent clients
  (`POST /v2.0/ports {"port": {"network_id": N}}`, each getting a MAC and a fixed IP on one
  /16 subnet); until the ports API exists it measures network creates with the same code;
- list latency with 10,000 ports (full list as the member and as admin, a network_id filter,
  a 100-item page) and show latency;
- server CPU per create (from /proc), and optionally (`--profile`) where the server spends its
  time during creates (py-spy, sampled in a separate run so it does not skew the figures).

The client is the standard library's `http.client` (one connection per client thread): on a
2-CPU machine the load generator shares the CPUs with the server, and httpx costs several
times more client CPU per request.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from bench.report import Report, percentile

NAME = "API throughput (embedded SQLite store and etcd)"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VXNET = os.path.join(REPO, ".venv", "bin", "vxnet")
PYSPY = os.path.join(REPO, ".venv", "bin", "py-spy")
ADMIN = ("admin", "bench-admin-pw", "admin")
MEMBER = ("bench", "bench-pw", "bench")
CIDR = "100.64.0.0/16"
LIST_PORTS = 10_000
BULK = 25  # ports per bulk create: 3 store ops each must stay under etcd's 128 ops per txn


# --- a server subprocess -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server_process(workdir: str, store_url: str | None = None) -> Iterator[tuple[int, int]]:
    """Run `vxnet server` on a fresh store (embedded SQLite in `workdir` unless `store_url`);
    yields (http port, pid). Killed (by pid) on exit."""
    port = free_port()
    cfg = os.path.join(workdir, "vxnet.toml")
    with open(cfg, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\ndata_dir = "{workdir}"\n')
        for name, pw, project, roles in (ADMIN + ('["admin"]',), MEMBER + ('["member", "reader"]',)):
            f.write(f'\n[[identity.users]]\nname = "{name}"\npassword = "{pw}"\nproject = "{project}"\n'
                    f"roles = {roles}\n")
    log = open(os.path.join(workdir, "server.log"), "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([VXNET, "server", "--config", cfg, "--store", store_url or f"sqlite://{workdir}/vxnet.db"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {open(log.name).read()[-2000:]}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/")
                c.getresponse().read()
                c.close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- HTTP ----------------------------------------------------------------------------------------


class Client:
    """One keep-alive connection with a token."""

    def __init__(self, port: int, token: str = "") -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self.headers["X-Auth-Token"] = token

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, float, http.client.HTTPResponse]:
        """(status, parsed body, seconds, response)."""
        data = json.dumps(body).encode() if body is not None else None
        t0 = time.perf_counter()
        self.conn.request(method, path, body=data, headers=self.headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        dt = time.perf_counter() - t0
        return resp.status, (json.loads(raw) if raw else None), dt, resp

    def close(self) -> None:
        self.conn.close()


def token(port: int, user: tuple[str, str, str]) -> str:
    name, pw, project = user
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": name, "domain": {"id": "default"}, "password": pw}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
    c = Client(port)
    status, _, _, resp = c.call("POST", "/identity/v3/auth/tokens", body)
    c.close()
    if status != 201:
        raise RuntimeError(f"token for {name}: HTTP {status}")
    return resp.headers["X-Subject-Token"]


# --- workload ------------------------------------------------------------------------------------


class Workload:
    """What one create is: a port on the bench network, or (before ports exist) a network."""

    def __init__(self, port: int, tok: str) -> None:
        c = Client(port, tok)
        status, body, _, _ = c.call("POST", "/v2.0/networks", {"network": {"name": "bench-net"}})
        assert status == 201, body
        self.network_id = body["network"]["id"]
        self.resource = "networks"
        status, body, _, _ = c.call("POST", "/v2.0/subnets", {"subnet": {
            "network_id": self.network_id, "cidr": CIDR, "ip_version": 4, "name": "bench-subnet"}})
        if status == 201:
            status, body, _, _ = c.call("POST", "/v2.0/ports", {"port": {"network_id": self.network_id}})
            if status == 201:
                self.resource = "ports"
        c.close()
        self.member = self.resource[:-1]

    def body(self, i: int) -> dict[str, Any]:
        if self.resource == "ports":
            return {"port": {"network_id": self.network_id, "name": f"p{i}"}}
        return {"network": {"name": f"n{i}"}}

    def bulk_body(self, start: int, n: int) -> dict[str, Any]:
        return {self.resource: [self.body(start + k)[self.member] for k in range(n)]}


def create_run(port: int, tok: str, work: Workload, clients: int, total: int) -> dict[str, float]:
    """`total` creates spread over `clients` threads; throughput and latency percentiles."""
    latencies: list[float] = []
    errors: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    counter = iter(range(total))
    start_gate = threading.Barrier(clients + 1)

    def worker() -> None:
        c = Client(port, tok)
        mine: list[float] = []
        start_gate.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            status, _, dt, _ = c.call("POST", f"/v2.0/{work.resource}", work.body(i))
            if status == 201:
                mine.append(dt)
            else:
                with lock:
                    errors[status] += 1
        c.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"n": len(latencies), "errors": sum(errors.values()), "rate": len(latencies) / wall,
            "p50": percentile(latencies, 50) * 1000, "p99": percentile(latencies, 99) * 1000,
            "max": max(latencies) * 1000, "wall": wall}


def count(port: int, tok: str, resource: str) -> int:
    c = Client(port, tok)
    status, body, _, _ = c.call("GET", f"/v2.0/{resource}?fields=id")
    c.close()
    assert status == 200, body
    return len(body[resource])


def top_up(port: int, tok: str, work: Workload, target: int) -> None:
    """Bulk-create until the member has `target` objects of the resource."""
    c = Client(port, tok)
    have = count(port, tok, work.resource)
    i = 1_000_000
    while have < target:
        n = min(BULK, target - have)
        status, body, _, _ = c.call("POST", f"/v2.0/{work.resource}", work.bulk_body(i, n))
        assert status == 201, body
        have += n
        i += n
    c.close()


def timed_gets(port: int, tok: str, path: str, reps: int) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, items in the response) over `reps` GETs (after one warm-up)."""
    c = Client(port, tok)
    status, body, _, resp = c.call("GET", path)
    assert status == 200, body
    items = next((len(v) for v in body.values() if isinstance(v, list)), 1) if isinstance(body, dict) else 0
    times = []
    for _ in range(reps):
        times.append(c.call("GET", path)[2])
    c.close()
    return percentile(times, 50) * 1000, percentile(times, 99) * 1000, items


# --- profiling -----------------------------------------------------------------------------------


def profile(pid: int, action: Any, name: str, keep_dir: str | None) -> str:
    """Sample the server with py-spy while `action()` runs; a markdown summary. The raw
    collapsed stacks are kept in `keep_dir` (`--profile-dir`) when given."""
    pyspy = shutil.which("py-spy") or (PYSPY if os.path.exists(PYSPY) else None)
    if pyspy is None:
        return "py-spy is not installed (`.venv/bin/pip install py-spy`); no profile."
    out = os.path.join(keep_dir or tempfile.mkdtemp(prefix="vxnet-prof-"), f"api-bench-profile-{name}.txt")
    spy = subprocess.Popen([pyspy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                            "--output", out, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    action()
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()
    if not os.path.exists(out):
        return f"py-spy failed: {spy.stderr.read().decode()[-500:] if spy.stderr else ''}"
    summary = summarize_profile(out)
    if keep_dir:
        return summary + f"\n\nRaw collapsed stacks: `{out}`."
    shutil.rmtree(os.path.dirname(out), ignore_errors=True)
    return summary


def summarize_profile(path: str, top: int = 20) -> str:
    """Top functions by self and by inclusive samples, from py-spy's collapsed stacks."""
    self_n: collections.Counter[str] = collections.Counter()
    incl_n: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n_s = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(n_s)
            frames = [fr for fr in stack.split(";") if fr]
            if frames and frames[0].startswith("process ") or frames and frames[0].startswith("thread "):
                frames = [fr for fr in frames if not fr.startswith(("process ", "thread "))]
            if not frames:
                continue
            total += n
            self_n[_short(frames[-1])] += n
            for fr in {_short(fr) for fr in frames}:
                incl_n[fr] += n
    lines = [f"{total} samples at 250 Hz over all server threads (idle threads included).", "",
             "| self % | function |", "|---|---|"]
    lines += [f"| {100 * n / total:.1f} | `{fn}` |" for fn, n in self_n.most_common(top)]
    lines += ["", "| inclusive % | vxnet function (with everything it calls) |", "|---|---|"]
    interesting = [(fn, n) for fn, n in incl_n.most_common(400) if "vxnet/" in fn and "vxnet/cli/" not in fn]
    lines += [f"| {100 * n / total:.1f} | `{fn}` |" for fn, n in interesting[:top]]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """`func (path/to/site-packages/pkg/mod.py:12)` -> `func (pkg/mod.py)`."""
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    file = loc.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/src/", "/lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{name} ({file})"


# --- the benchmark -------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--creates", type=int, default=2000, help="creates per concurrency level (default 2000)")
    p.add_argument("--stores", default="sqlite,etcd", help="store backends to measure (default sqlite,etcd)")
    p.add_argument("--profile", action="store_true", help="also sample the server with py-spy during creates")
    p.add_argument("--profile-dir", default=None, help="keep py-spy's raw collapsed stacks in this directory")


@contextlib.contextmanager
def backend(name: str, workdir: str) -> Iterator[str | None]:
    """The store URL for a backend: None (embedded) or a fresh single etcd member."""
    if name == "sqlite":
        yield None
        return
    sys.path.insert(0, REPO)
    from tests.support.etcd import EtcdCluster  # a member on free ports, stopped by PID

    cluster = EtcdCluster(1, prefix="vxbench")
    try:
        yield cluster.url()
    finally:
        cluster.stop()


def run_backend(opts: argparse.Namespace, store: str, rows: list[list[str]], notes: list[str]) -> str:
    """Measure one backend into `rows`; returns profile markdown (if asked)."""
    creates = max(100, opts.creates // (10 if opts.quick else 1))
    workdir = tempfile.mkdtemp(prefix="vxnet-bench-")
    extra = ""
    try:
        with backend(store, workdir) as url, server_process(workdir, url) as (port, pid):
            tok, admin_tok = token(port, MEMBER), token(port, ADMIN)
            work = Workload(port, tok)
            if work.resource != "ports":
                notes.append("POST /v2.0/ports did not work on this build: network creates were measured instead.")
            create_run(port, tok, work, 8, min(200, creates))  # warm-up (imports, caches, WAL)
            for clients in (1, 8):
                cpu0 = cpu_seconds(pid)
                r = create_run(port, tok, work, clients, creates)
                cpu = cpu_seconds(pid) - cpu0
                rows.append([store, f"{work.resource[:-1]} create, {clients} client{'s' if clients > 1 else ''}",
                             f"{r['rate']:.0f}/s", f"{r['p50']:.1f}", f"{r['p99']:.1f}", f"{r['max']:.1f}",
                             f"{r['n']} ok, {r['errors']} failed; server CPU {1000 * cpu / max(1, r['n']):.2f} ms/create"])
            target = LIST_PORTS // (10 if opts.quick else 1)
            top_up(port, tok, work, target)
            n_items = count(port, tok, work.resource)
            reps = 5 if opts.quick else 20
            for label, tk, path in (
                (f"list all {work.resource} (member)", tok, f"/v2.0/{work.resource}"),
                (f"list all {work.resource} (admin)", admin_tok, f"/v2.0/{work.resource}"),
                (f"list {work.resource}, network_id filter", tok, f"/v2.0/{work.resource}?network_id={work.network_id}"
                 if work.resource == "ports" else f"/v2.0/{work.resource}?name=n5"),
                (f"list {work.resource}, fields=id,name", tok, f"/v2.0/{work.resource}?fields=id&fields=name"),
                (f"list {work.resource}, limit=100", tok, f"/v2.0/{work.resource}?limit=100"),
                (f"show one {work.member}", tok, None),
            ):
                if path is None:
                    c = Client(port, tok)
                    _, body, _, _ = c.call("GET", f"/v2.0/{work.resource}?limit=1")
                    c.close()
                    path = f"/v2.0/{work.resource}/{body[work.resource][0]['id']}"
                p50, p99, items = timed_gets(port, tk, path, reps)
                rows.append([store, label, "", f"{p50:.1f}", f"{p99:.1f}", "",
                             f"{items} items returned; {n_items} in store"])
            if opts.profile:
                extra = f"### Where the server's time goes: 8 clients creating ({store})\n\n" + profile(
                    pid, lambda: create_run(port, tok, work, 8, creates), f"create-{store}", opts.profile_dir)
                extra += f"\n\n### Where the server's time goes: listing all ports, member ({store})\n\n" + profile(
                    pid, lambda: timed_gets(port, tok, f"/v2.0/{work.resource}", 10), f"list-{store}",
                    opts.profile_dir) + "\n\n"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return extra


def run(opts: argparse.Namespace) -> Report:
    load0 = os.getloadavg()
    rows: list[list[str]] = []
    notes: list[str] = []
    extra = ""
    stores = [b for b in opts.stores.split(",") if b]
    if "etcd" in stores and not shutil.which("etcd") and not os.path.exists("/usr/bin/etcd"):
        notes.append("etcd is not installed: the etcd backend was not measured.")
        stores.remove("etcd")
    for store in stores:
        extra += run_backend(opts, store, rows, notes)
    goals = ["Goal (issue 2): >= 500 creates/s and p99 <= 50 ms with the embedded store."]
    notes.append("Load average (1/5/15 min) at the start of the run: " + " / ".join(f"{x:.1f}" for x in load0))
    notes.append("Load average (1/5/15 min) at the end of the run: " + " / ".join(
        f"{x:.1f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs (client and server share them).")
    if "etcd" in stores:
        notes.append("etcd: one member on loopback (Debian's etcd), started fresh for the run; the server talks "
                     "to it over its JSON gateway (`vxnet.store.etcd_store`).")
    return Report(NAME, ["store", "measurement", "throughput", "p50 ms", "p99 ms", "max ms", "notes"], rows,
                  notes=notes, goals=goals, extra_markdown=extra)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    add_arguments(parser)
    rep = run(parser.parse_args())
    from bench.report import text_table

    print(text_table(rep.columns, rep.rows))
    sys.exit(0)
