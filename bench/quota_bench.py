"""What quota enforcement costs a port create, measured where it happens: in the store transaction.

One embedded store, one network with a /16 subnet, then port creates two ways, each on a
variant with quotas on and one with quotas off over that same store:
- `transaction`: `Repo.transact(services.ports.new_port_record ...)`, the store transaction
  `POST /v2.0/ports` runs, on two repositories: one with the quota stage hook installed
  (services/quotas.py: owner read, usage counter read + write, limit read, per-port checks),
  one without. This isolates the cost; it is the pessimistic ratio (no HTTP, validation or
  response around it, which cost the same either way).
- `API request`: `POST /v2.0/ports {"port": {"network_id": N}}` through the whole application
  (ASGI, in-process test client, no socket), two apps over the store: `[quotas]` with
  finite limits (every check runs) and `enabled = false`.
Blocks of creates alternate between on and off (the order flips every block), so background
load on a shared machine falls on both alike; each figure is pooled over all blocks. CPU is the
process's CPU time (`time.process_time`, client included for the API rows), wall is
`perf_counter`. (`bench/api_bench.py --stores sqlite,sqlite-noquota` compares whole server
processes over HTTP, but on a busy 2-CPU machine its throughput moves by more than the effect.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

from bench.report import Report, percentile

NAME = "Quota enforcement: port create transaction with and without quotas"
BLOCK = 100


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quota-creates", type=int, default=6000,
                   help="port creates per variant (default 6000; --quick: a tenth)")


Figures = tuple[dict[str, list[float]], dict[str, float], dict[str, float]]


def alternate(create: Callable[[str], None], total: int) -> Figures:
    """`total` creates per variant ("on", "off") in alternating blocks: (latencies, CPU s, wall s)."""
    for name in ("on", "off"):  # warm-up
        for _ in range(50):
            create(name)
    lat: dict[str, list[float]] = {"on": [], "off": []}
    cpu = {"on": 0.0, "off": 0.0}
    wall = {"on": 0.0, "off": 0.0}
    for block in range(total // BLOCK):
        for name in ("on", "off") if block % 2 == 0 else ("off", "on"):
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(BLOCK):
                t0 = time.perf_counter()
                create(name)
                lat[name].append(time.perf_counter() - t0)
            cpu[name] += time.process_time() - c0
            wall[name] += time.perf_counter() - w0
    return lat, cpu, wall


def run(opts: argparse.Namespace) -> Report:
    from fastapi.testclient import TestClient

    from vxnet.api.app import create_app
    from vxnet.config import QUOTA_DEFAULTS, Config, QuotaSettings, User, project_id_for
    from vxnet.services.ports import new_port_record
    from vxnet.services.quotas import QuotaEngine
    from vxnet.services.repo import Repo
    from vxnet.store.sqlite_store import SqliteStore

    load0 = os.getloadavg()
    total = max(2 * BLOCK, opts.quota_creates // (10 if getattr(opts, "quick", False) else 1))
    workdir = tempfile.mkdtemp(prefix="vxnet-quota-bench-")
    try:
        store = SqliteStore(os.path.join(workdir, "vxnet.db"))
        settings = QuotaSettings(defaults=tuple((r, 10**9) for r in QUOTA_DEFAULTS))  # finite: every check runs
        user = User("bench", "bench-pw", "bench", ("member",))
        app = create_app(Config(users=(user,), quotas=settings), store)
        app_off = create_app(Config(users=(user,), quotas=QuotaSettings(enabled=False)), store)
        with TestClient(app) as client, TestClient(app_off) as client_off:
            r = client.post("/identity/v3/auth/tokens", json={"auth": {"identity": {"methods": ["password"], "password": {
                "user": {"name": "bench", "domain": {"id": "default"}, "password": "bench-pw"}}},
                "scope": {"project": {"name": "bench", "domain": {"id": "default"}}}}})
            headers = {"X-Auth-Token": r.headers["X-Subject-Token"]}
            net = client.post("/v2.0/networks", json={"network": {"name": "qb"}}, headers=headers).json()["network"]
            client.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                          "cidr": "100.64.0.0/16"}}, headers=headers)
            client.post("/v2.0/ports", json={"port": {"network_id": net["id"]}}, headers=headers)  # default group
            api = {"on": client, "off": client_off}

            def api_create(name: str) -> None:
                r = api[name].post("/v2.0/ports", json={"port": {"network_id": net["id"]}}, headers=headers)
                assert r.status_code == 201, r.text

            api_fig = alternate(api_create, total)
        project = project_id_for("bench")
        on, off = Repo(store), Repo(store)
        QuotaEngine(settings).install(on)
        assert on.stage_hook is not None and off.stage_hook is None

        repos = {"on": on, "off": off}

        def create(name: str) -> None:
            repos[name].transact(lambda uow: new_port_record(uow, network=uow.get("networks", net["id"]) or {},
                                                             project_id=project))

        txn_fig = alternate(create, total)
        store.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    for what, fig in (("transaction", txn_fig), ("API request", api_fig)):
        lat, cpu, wall = fig
        for name in ("on", "off"):
            n = len(lat[name])
            rows.append([what, f"quotas {name}", f"{n / wall[name]:.0f}/s", f"{1000 * cpu[name] / n:.3f}",
                         f"{percentile(lat[name], 50) * 1000:.2f}", f"{percentile(lat[name], 99) * 1000:.2f}", str(n)])
        tput = (len(lat["on"]) / wall["on"]) / (len(lat["off"]) / wall["off"])
        cpu_ratio = (cpu["off"] / len(lat["off"])) / (cpu["on"] / len(lat["on"]))
        rows.append([what, "on / off", f"{tput:.2f}x", f"{cpu_ratio:.2f}x (off/on)", "", "", ""])
    return Report(NAME, ["path", "variant", "creates/s", "CPU ms/create", "p50 ms", "p99 ms", "creates"], rows,
                  notes=[(f"{total // BLOCK} alternating blocks of {BLOCK} creates per variant and path, one "
                          "embedded store (every variant adds to the same /16 and the same project)."),
                         "`CPU ms/create` ratio is off/on, i.e. the throughput a CPU-bound server keeps with quotas.",
                         "Load average (1/5/15 min) at start: " + " / ".join(f"{x:.1f}" for x in load0)
                         + "; at the end: " + " / ".join(f"{x:.1f}" for x in os.getloadavg())
                         + f" on {os.cpu_count()} CPUs shared with other sessions."],
                  goals=["Goal (issue 13): port create throughput with quotas on >= 0.9x of quotas off."])


if __name__ == "__main__":
    from bench.__main__ import main

    sys.exit(main(["--only", "quota_bench", *sys.argv[1:]]))
