"""Another tenant's latency while three clients list 20,000 ports without a limit, with the page
cap off (`max_page_size = 0`, as before it existed) and on (1000), in the same run.

`python -m bench.list_cap_bench [--ports N] [--seconds S]`:
- fills an embedded store with N ports (default 20,000), 200 per network, with the API's own record
  builders (`bench.scale_bench.fill`), before any server starts;
- for each cap: a `vxnet server` subprocess on that store; bob (a member of another project)
  times `GET /v2.0/networks/{his}` every 20 ms alone, then for S seconds while three admin client processes loop
  `GET /v2.0/ports` with no `limit`; the listers' own latency and page size too.
Prints one table row per cap. Everything runs on loopback; each server and lister process is
stopped by its PID at the end of its round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx

from bench.report import percentile, text_table
from bench.scale_bench import fill
from vxnet.config import User
from vxnet.store.sqlite_store import SqliteStore

ADMIN = User("admin", "bench-admin-pw", "admin", ("admin",))
BOB = User("bob", "bench-bob-pw", "tenant-b", ("member",))


def token(url: str, user: User) -> str:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user.name, "domain": {"id": "default"}, "password": user.password}}},
        "scope": {"project": {"name": user.project, "domain": {"id": "default"}}}}}
    r = httpx.post(url + "/identity/v3/auth/tokens", json=body, timeout=30)
    r.raise_for_status()
    return r.headers["X-Subject-Token"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(db: str, cap: int, workdir: str) -> Iterator[str]:
    """`vxnet server` (a subprocess, so that the clients' JSON parsing never shares its GIL) on
    the filled store with this page cap; yields its URL; stopped by its PID."""
    port = free_port()
    cfg = os.path.join(workdir, f"cap{cap}.toml")
    users = "".join(f'[[identity.users]]\nname = "{u.name}"\npassword = "{u.password}"\n'
                    f'project = "{u.project}"\nroles = {json.dumps(list(u.roles))}\n' for u in (ADMIN, BOB))
    with open(cfg, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\nmax_page_size = {cap}\naccess_log = false\n{users}')
    log = open(os.path.join(workdir, f"server-cap{cap}.log"), "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "vxnet.cli.main", "server", "--config", cfg,
                             "--store", f"sqlite://{db}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start (see {log.name})")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def timed_gets(c: httpx.Client, path: str, seconds: float) -> list[float]:
    """GET `path` every 20 ms (one at a time) for `seconds`: each list request is sampled over
    its whole life, whatever phase it is in."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        c.get(path).raise_for_status()
        out.append(time.perf_counter() - t)
        time.sleep(0.02)
    return out


def lister(url: str, tok: str, stop: Any, out: Any) -> None:
    """In a child process: list /v2.0/ports with no limit until `stop` is set; (seconds, objects,
    errors) into `out`."""
    times, objects, errors = [], 0, 0
    with httpx.Client(base_url=url + "/v2.0", headers={"X-Auth-Token": tok}, timeout=300) as c:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                r = c.get("/ports")
                objects = max(objects, len(r.json()["ports"]))
                times.append(time.perf_counter() - t)
            except httpx.HTTPError:
                errors += 1
    out.put((times, objects, errors))


def round_for(db: str, cap: int, seconds: float, workdir: str) -> list[str]:
    with server(db, cap, workdir) as url:
        bob = httpx.Client(base_url=url + "/v2.0", headers={"X-Auth-Token": token(url, BOB)}, timeout=300)
        admin_tok = token(url, ADMIN)
        net = bob.post("/networks", json={"network": {"name": f"victim-{cap}"}}).json()["network"]["id"]
        path = f"/networks/{net}"
        timed_gets(bob, path, 1)  # warm up
        idle = timed_gets(bob, path, seconds / 3)
        ctx = multiprocessing.get_context("spawn")
        stop, results = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=lister, args=(url, admin_tok, stop, results)) for _ in range(3)]
        for p in procs:
            p.start()
        time.sleep(3.0)  # the listers are busy
        loaded = timed_gets(bob, path, seconds)
        stop.set()
        got = [results.get(timeout=600) for _ in procs]
        for p in procs:
            p.join(60)
        bob.close()
    lists = [t for times, _, _ in got for t in times]

    def ms(x: float) -> str:
        return f"{x * 1000:.1f}"

    return [str(cap or "off"), ms(percentile(idle, 50)), ms(percentile(loaded, 50)), ms(percentile(loaded, 95)),
            ms(percentile(lists, 50)) if lists else "-", str(max(o for _, o, _ in got)), str(len(lists)),
            str(sum(e for _, _, e in got))]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.list_cap_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--ports", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=20, help="victim sampling time under load")
    opts = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vxnet-listcap-") as tmp:
        store = SqliteStore(os.path.join(tmp, "vxnet.db"))
        try:
            t = time.perf_counter()
            world = SimpleNamespace(scale_hosts=10, scale_networks=max(1, opts.ports // 200), scale_ports=opts.ports,
                                    scale_hosts_per_network=2)
            fill(store, world, random.Random(7), batch=500)
            print(f"filled {opts.ports} ports in {time.perf_counter() - t:.1f} s", flush=True)
        finally:
            store.close()
        rows = [round_for(os.path.join(tmp, "vxnet.db"), cap, opts.seconds, tmp) for cap in (0, 1000)]
    print(text_table(["max_page_size", "victim p50 idle ms", "victim p50 loaded ms", "victim p95 loaded ms",
                      "unpaginated list p50 ms", "objects per list", "lists done", "list errors"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
