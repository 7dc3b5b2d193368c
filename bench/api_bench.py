"""API throughput on the embedded store and on etcd, against a real `vxnet server` subprocess.

Measures, as a tenant (member role) over keep-alive HTTP/1.1 connections:
- port creates per second and p50/p99 latency with 1 and with 8 concurrent clients
  (`POST /v2.0/ports {"port": {"network_id": N}}`, each getting a MAC and a fixed IP on one
  /16 subnet); until the ports API exists it measures network creates with the same code;
- list latency with 10,000 ports (full list as the member and as admin, a network_id filter,
  a 100-item page) and show latency;
- server CPU per create (from /proc), and optionally (`--profile`) where the server spends its
  time during creates (py-spy, sampled in a separate run so it does not skew the figures).

Backends (`--stores`, side by side in the same run): `sqlite` (embedded, one server), `etcd` (a
fresh 3-member cluster on loopback, `--etcd-members`, with the store's watch-fed read cache,
served by `--etcd-servers` API servers, default 2) and `etcd-nocache` (a fresh cluster again,
`?cache=0`: every read is a round trip to etcd). The clients of an etcd backend are spread over
its servers (client k talks to server k mod N); lists go through the first server. Ratio rows compare each etcd variant with the embedded store, and the cache with no
cache, measurement by measurement; etcd's own CPU per create (all members) is reported too.

The client is the standard library's `http.client` (one connection per client thread): on a
2-CPU machine the load generator shares the CPUs with the server, and httpx costs several
times more client CPU per request.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from bench import servers
from bench.report import Report, percentile
from bench.servers import ADMIN, QUOTAS_OFF, REPO, UNLIMITED_QUOTAS, User, cpu_seconds, token

NAME = "API throughput (embedded SQLite store and etcd)"
PYSPY = os.path.join(REPO, ".venv", "bin", "py-spy")
MEMBER: User = ("bench", "bench-pw", "bench", '["member", "reader"]')
CIDR = "100.64.0.0/16"
LIST_PORTS = 10_000
BULK = 25  # ports per bulk create: 3 store ops each must stay under etcd's 128 ops per txn


@contextlib.contextmanager
def server_process(workdir: str, store_url: str | None = None, quotas: bool = True) -> Iterator[tuple[int, int]]:
    """`vxnet server` on a fresh store (embedded SQLite in `workdir` unless `store_url`) with the
    admin and the bench member; yields (http port, pid). Quotas are counted and checked against
    unlimited limits (the bench holds 10,000 ports), or off entirely (`quotas=False`). Pages are
    not capped (`max_page_size = 0`): a list is the whole collection, as the list rows say."""
    with servers.server_process(workdir, store_url, (ADMIN, MEMBER), server="max_page_size = 0\n",
                                quotas=UNLIMITED_QUOTAS if quotas else QUOTAS_OFF) as srv:
        yield srv


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


def create_run(port: int | list[int], tok: str, work: Workload, clients: int, total: int) -> dict[str, Any]:
    """`total` creates spread over `clients` threads (client k on server k mod len(port) when
    given several); throughput and latency percentiles."""
    ports = port if isinstance(port, list) else [port]
    latencies: list[float] = []
    errors: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    counter = iter(range(total))
    start_gate = threading.Barrier(clients + 1)

    def worker(k: int) -> None:
        c = Client(ports[k % len(ports)], tok)
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

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"lat": latencies, "n": len(latencies), "errors": sum(errors.values()), "rate": len(latencies) / wall,
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


def timed_gets(port: int, tok: str, path: str, reps: int) -> tuple[list[float], int]:
    """(seconds of each of `reps` GETs, items in the response), after one warm-up GET."""
    c = Client(port, tok)
    status, body, _, _resp = c.call("GET", path)
    assert status == 200, body
    items = next((len(v) for v in body.values() if isinstance(v, list)), 1) if isinstance(body, dict) else 0
    times = []
    for _ in range(reps):
        times.append(c.call("GET", path)[2])
    c.close()
    return times, items


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
    servers.stop_processes([spy], signal.SIGINT, timeout=30)
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
    p.add_argument("--stores", default="sqlite,etcd,etcd-nocache",
                   help="store backends to measure: sqlite, sqlite-normal (synchronous=NORMAL), etcd, etcd-nocache "
                        "(default: sqlite,etcd,etcd-nocache); each may end in -noquota for a server with quotas "
                        "off (e.g. sqlite,sqlite-noquota)")
    p.add_argument("--etcd-members", type=int, default=3, help="members of the etcd cluster (default 3)")
    p.add_argument("--etcd-servers", type=int, default=2,
                   help="API servers sharing each etcd cluster; creates are spread over them (default 2)")
    p.add_argument("--api-rounds", type=int, default=4,
                   help="alternating rounds over the backends per measurement, pooled (default 4)")
    p.add_argument("--profile", action="store_true", help="also sample the server with py-spy during creates")
    p.add_argument("--profile-dir", default=None, help="keep py-spy's raw collapsed stacks in this directory")


@contextlib.contextmanager
def backend(name: str, members: int) -> Iterator[tuple[str | None, list[int]]]:
    """(store URL, etcd member pids) for a backend: (None, []) for the embedded store, else a
    fresh etcd cluster of `members` on loopback, with (`etcd`) or without (`etcd-nocache`) the
    store's read cache."""
    if name == "sqlite":
        yield None, []
        return
    if name == "sqlite-normal":  # the embedded store without fsync per commit (the old default)
        d = tempfile.mkdtemp(prefix="vxnet-bench-normal-")
        try:
            yield f"sqlite:///{d}/vxnet.db?synchronous=normal", []
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return
    if name not in ("etcd", "etcd-nocache"):
        raise ValueError(f"unknown store {name!r} (sqlite, etcd, etcd-nocache)")
    with servers.etcd_cluster(members, "vxbench") as (url, pids):
        yield url + ("?cache=0" if name == "etcd-nocache" else "?cache=1"), pids


@dataclasses.dataclass
class Target:
    """One backend under test: its server and what the workload needs."""

    store: str
    port: int
    pid: int
    etcd_pids: list[int]
    ports: list[int]  # every server of this backend (the first is `port`)
    pids: list[int]
    tok: str
    admin_tok: str
    work: Workload
    etcd_url: str | None = None


def etcd_requests(url: str | None) -> collections.Counter[str]:
    """gRPC requests every member of the cluster behind `url` has answered so far, by method
    (Range, Txn, LeaseGrant, Watch streams, ...), from the members' own /metrics. Each one is a
    round trip of some server to etcd (vxnet calls the members' gRPC API), so the difference over a run, divided by its creates, is the requests per create."""
    out: collections.Counter[str] = collections.Counter()
    if not url or not url.startswith("etcd://"):
        return out
    for host in url.removeprefix("etcd://").split("?")[0].split(","):
        conn = http.client.HTTPConnection(host, timeout=10)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        for line in text.splitlines():
            if line.startswith(("grpc_server_handled_total{", "grpc_server_started_total{")):
                labels, value = line.rsplit(" ", 1)
                method = labels.split('grpc_method="', 1)[1].split('"', 1)[0]
                kind = "handled" if line.startswith("grpc_server_handled") else "started"
                out[f"{kind}:{method}"] += int(float(value))
    return out


def per_create(before: collections.Counter[str], after: collections.Counter[str], n: int) -> str:
    """`Txn 1.02, Range 0.00, ...`: requests per create by method (unary calls, handled), plus
    watch streams opened, over a run of `n` creates."""
    diff = {k: after[k] - before[k] for k in after if after[k] - before[k] > 0}
    parts = [f"{k.split(':', 1)[1]} {v / max(1, n):.2f}" for k, v in sorted(diff.items())
             if k.startswith("handled:") and k != "handled:Watch"]
    return "etcd requests/create: " + (", ".join(parts) or "none")


def start_targets(opts: argparse.Namespace, stores: list[str], stack: contextlib.ExitStack,
                  notes: list[str]) -> list[Target]:
    """A server per backend, all running side by side for the whole run (idle ones cost little),
    so every measurement can alternate between them."""
    out = []
    for store in stores:
        workdir = tempfile.mkdtemp(prefix="vxnet-bench-")
        stack.callback(shutil.rmtree, workdir, True)
        url, etcd_pids = stack.enter_context(backend(store.removesuffix("-noquota"), opts.etcd_members))
        quotas = not store.endswith("-noquota")
        started = [stack.enter_context(server_process(workdir, url, quotas=quotas))]
        for _ in range(1, max(1, opts.etcd_servers) if url else 1):
            other = tempfile.mkdtemp(prefix="vxnet-bench-")
            stack.callback(shutil.rmtree, other, True)
            started.append(stack.enter_context(server_process(other, url, quotas=quotas)))
        port, pid = started[0]
        tok = token(port, MEMBER)
        work = Workload(port, tok)
        if work.resource != "ports":
            notes.append(f"{store}: POST /v2.0/ports did not work on this build: network creates were measured "
                         "instead.")
        out.append(Target(store, port, pid, etcd_pids, [p for p, _ in started], [q for _, q in started], tok,
                          token(port, ADMIN), work, url))
    return out


def measure(opts: argparse.Namespace, targets: list[Target], rows: list[list[str]],
            figures: dict[str, dict[str, tuple[float, float, float]]]) -> None:
    """Every measurement in `rounds` alternating rounds over the backends (the order rotates each
    round), pooled: load from elsewhere on the machine falls on every backend alike."""
    creates = max(100, opts.creates // (10 if opts.quick else 1))
    rounds = max(1, opts.api_rounds)
    for t in targets:
        create_run(t.ports, t.tok, t.work, 8, min(200, creates))  # warm-up (imports, caches, WAL)

    def order(rnd: int) -> list[Target]:
        k = rnd % len(targets)
        return targets[k:] + targets[:k]

    for clients in (1, 8):
        lat: dict[str, list[float]] = {t.store: [] for t in targets}
        acc = {t.store: {"wall": 0.0, "errors": 0, "cpu": 0.0, "ecpu": 0.0} for t in targets}
        reqs = {t.store: (collections.Counter[str](), collections.Counter[str]()) for t in targets}
        for rnd in range(rounds):
            for t in order(rnd):
                cpu0, ecpu0 = sum(cpu_seconds(p) for p in t.pids), sum(cpu_seconds(p) for p in t.etcd_pids)
                req0 = etcd_requests(t.etcd_url)
                r = create_run(t.ports, t.tok, t.work, clients, creates // rounds)
                reqs[t.store][0].update(req0)
                reqs[t.store][1].update(etcd_requests(t.etcd_url))
                a = acc[t.store]
                a["cpu"] += sum(cpu_seconds(p) for p in t.pids) - cpu0
                a["ecpu"] += sum(cpu_seconds(p) for p in t.etcd_pids) - ecpu0
                a["wall"] += r["wall"]
                a["errors"] += r["errors"]
                lat[t.store] += r["lat"]
        for t in targets:
            xs, a = lat[t.store], acc[t.store]
            n = len(xs)
            via = f" via {len(t.ports)} servers" if len(t.ports) > 1 else ""
            label = f"{t.work.resource[:-1]} create, {clients} client{'s' if clients > 1 else ''}"
            rate, p50, p99 = n / a["wall"], percentile(xs, 50) * 1000, percentile(xs, 99) * 1000
            figures[t.store][label] = (rate, p50, p99)
            rows.append([t.store, label, f"{rate:.0f}/s", f"{p50:.1f}", f"{p99:.1f}", f"{max(xs) * 1000:.1f}",
                         f"{n} ok, {a['errors']:.0f} failed{via}; server CPU {1000 * a['cpu'] / max(1, n):.2f} ms/create"
                         + (f"; etcd CPU {1000 * a['ecpu'] / max(1, n):.2f} ms/create" if t.etcd_pids else "")
                         + (f"; {per_create(*reqs[t.store], n)}" if t.etcd_url else "")])
    target = LIST_PORTS // (10 if opts.quick else 1)
    for t in targets:
        top_up(t.port, t.tok, t.work, target)
    reps = max(1, (5 if opts.quick else 20) // rounds)
    for kind in ("member", "admin", "filter", "fields", "limit", "show"):
        times: dict[str, list[float]] = {t.store: [] for t in targets}
        info: dict[str, tuple[str, int, int]] = {}
        for rnd in range(rounds):
            for t in order(rnd):
                label, tk, path = list_case(t, kind)
                xs, items = timed_gets(t.port, tk, path, reps)
                times[t.store] += xs
                info[t.store] = (label, items, count(t.port, t.tok, t.work.resource) if rnd == 0 else
                                 info[t.store][2])
        for t in targets:
            label, items, n_items = info[t.store]
            xs = times[t.store]
            p50, p99 = percentile(xs, 50) * 1000, percentile(xs, 99) * 1000
            figures[t.store][label] = (0.0, p50, p99)
            rows.append([t.store, label, "", f"{p50:.1f}", f"{p99:.1f}", f"{max(xs) * 1000:.1f}",
                         f"{items} items returned; {n_items} in store; {len(xs)} requests"])


def list_case(t: Target, kind: str) -> tuple[str, str, str]:
    """(label, token, path) of one read measurement."""
    res, w = t.work.resource, t.work
    if kind == "member":
        return f"list all {res} (member)", t.tok, f"/v2.0/{res}"
    if kind == "admin":
        return f"list all {res} (admin)", t.admin_tok, f"/v2.0/{res}"
    if kind == "filter":
        return (f"list {res}, network_id filter", t.tok,
                f"/v2.0/{res}?network_id={w.network_id}" if res == "ports" else f"/v2.0/{res}?name=n5")
    if kind == "fields":
        return f"list {res}, fields=id,name", t.tok, f"/v2.0/{res}?fields=id&fields=name"
    if kind == "limit":
        return f"list {res}, limit=100", t.tok, f"/v2.0/{res}?limit=100"
    c = Client(t.port, t.tok)
    _, body, _, _ = c.call("GET", f"/v2.0/{res}?limit=1")
    c.close()
    return f"show one {w.member}", t.tok, f"/v2.0/{res}/{body[res][0]['id']}"


def profiles(opts: argparse.Namespace, targets: list[Target]) -> str:
    """py-spy profiles of creates and of a full list, per backend (after the measurements)."""
    creates = max(100, opts.creates // (10 if opts.quick else 1))
    extra = ""
    for t in targets:
        extra += f"### Where the server's time goes: 8 clients creating ({t.store})\n\n" + profile(
            t.pid, lambda t=t: create_run(t.ports, t.tok, t.work, 8, creates), f"create-{t.store}", opts.profile_dir)
        extra += f"\n\n### Where the server's time goes: listing all ports, member ({t.store})\n\n" + profile(
            t.pid, lambda t=t: timed_gets(t.port, t.tok, f"/v2.0/{t.work.resource}", 10), f"list-{t.store}",
            opts.profile_dir) + "\n\n"
    return extra


def ratio_rows(a: dict[str, tuple[float, float, float]], b: dict[str, tuple[float, float, float]],
               what: str) -> list[list[str]]:
    """One row per measurement both backends have: throughput a/b, p50 a/b, p99 a/b."""
    out = []
    for label, (ra, p50a, p99a) in a.items():
        if label not in b:
            continue
        rb, p50b, p99b = b[label]
        out.append([what, label, f"{ra / rb:.2f}x" if ra and rb else "",
                    f"{p50a / p50b:.2f}x" if p50b else "", f"{p99a / p99b:.2f}x" if p99b else "", "", "ratio"])
    return out


def run(opts: argparse.Namespace) -> Report:
    load0 = os.getloadavg()
    rows: list[list[str]] = []
    notes: list[str] = []
    extra = ""
    stores = [b for b in opts.stores.split(",") if b]
    if any(s.startswith("etcd") for s in stores) and not shutil.which("etcd") and not os.path.exists("/usr/bin/etcd"):
        notes.append("etcd is not installed: the etcd backends were not measured.")
        stores = [s for s in stores if not s.startswith("etcd")]
    figures: dict[str, dict[str, tuple[float, float, float]]] = {s: {} for s in stores}
    with contextlib.ExitStack() as stack:
        targets = start_targets(opts, stores, stack, notes)
        measure(opts, targets, rows, figures)
        if opts.profile:
            extra = profiles(opts, targets)
    rows.sort(key=lambda r: stores.index(r[0]))  # group by backend, measurements in order
    for a, b, what in (("etcd", "sqlite", "etcd / embedded"), ("etcd-nocache", "sqlite", "etcd no cache / embedded"),
                       ("etcd", "etcd-nocache", "etcd cache / no cache"),
                       ("sqlite", "sqlite-noquota", "quotas on / off (embedded)"),
                       ("etcd", "etcd-noquota", "quotas on / off (etcd)")):
        rows += ratio_rows(figures.get(a, {}), figures.get(b, {}), what)
    cached, uncached = figures.get("etcd", {}), figures.get("etcd-nocache", {})
    gains = [f"{label}: {uncached[label][0]:.0f}/s -> {cached[label][0]:.0f}/s, p99 {uncached[label][2]:.0f} -> "
             f"{cached[label][2]:.0f} ms" for label in cached if label in uncached and cached[label][0]]
    gains += [f"{label}: p50 {uncached[label][1]:.1f} -> {cached[label][1]:.1f} ms" for label in cached
              if label in uncached and not cached[label][0] and label.startswith("list all")]
    if gains:
        notes.append("What the etcd read cache buys in this run (no cache -> cache): " + "; ".join(gains) + ".")
    goals = ["Goal (issue 2): >= 500 creates/s and p99 <= 50 ms with the embedded store."]
    notes.append("Load average (1/5/15 min) at the start of the run: " + " / ".join(f"{x:.1f}" for x in load0))
    notes.append("Load average (1/5/15 min) at the end of the run: " + " / ".join(
        f"{x:.1f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs (client and server share them).")
    if any(s.startswith("etcd") for s in stores):
        notes.append(f"etcd: {opts.etcd_members} members on loopback (Debian's etcd), a fresh cluster per etcd "
                     "backend with `--etcd-servers` API servers on it (creates spread over them, CPU summed); each server talks to it over gRPC (`vxnet.store.etcd_grpc`). `etcd` "
                     "serves reads from the store's watch-fed mirror (`vxnet.store.cache`); `etcd-nocache` "
                     "(`?cache=0`) reads etcd on every read, as before the cache. Ratio rows: throughput as a / b, "
                     "latencies as a / b (so < 1 means a is faster).")
    return Report(NAME, ["store", "measurement", "throughput", "p50 ms", "p99 ms", "max ms", "notes"], rows,
                  notes=notes, goals=goals, extra_markdown=extra)


if __name__ == "__main__":
    from bench.__main__ import main

    sys.exit(main(["--only", "api_bench", *sys.argv[1:]]))
