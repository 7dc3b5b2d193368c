"""What finding a request's route costs the API server: FastAPI's matching over the real
application's routers, with each router's one-regex filter (api/routing.py `Routes`) and
without it (the same application, the filter switched off), alternating in one process.

The figure is CPU time (`time.process_time`) per matched path, so a busy machine inflates it
less than wall time; nothing but the matching runs (no handler, no store). The paths are the hot
ones: an agent's status report, a bind and a list of ports, a network list, a floating-IP create
and a token.

`python -m bench.route_bench [--rounds 5] [--n 2000]`
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from starlette.routing import Match

from vxnet.api.app import create_app
from vxnet.api.routing import Routes
from vxnet.config import Config
from vxnet.store import open_store

PATHS = [("POST", "/v2.0/vxnet/hosts/h1/ports-status"), ("PUT", "/v2.0/ports/0b6a3e2c-8a39-4f71-9b0e-5a0e0a0e0a0e"),
         ("GET", "/v2.0/ports"), ("GET", "/v2.0/networks"), ("POST", "/v2.0/floatingips"),
         ("POST", "/identity/v3/auth/tokens")]


def match_cpu(routes: list, method: str, path: str, n: int) -> float:
    """CPU microseconds to find the route of one request (the app router's loop)."""
    scope = {"type": "http", "path": path, "method": method, "root_path": "", "headers": []}
    t0 = time.process_time()
    for _ in range(n):
        for route in routes:
            if route.matches(scope)[0] == Match.FULL:
                break
        else:
            raise AssertionError(f"no route for {method} {path}")
    return (time.process_time() - t0) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--n", type=int, default=2000, help="matches per path, round and variant")
    opts = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="vxnet-route-bench-") as d:
        store = open_store(f"sqlite://{d}/x.db")
        try:
            routes = create_app(Config(), store).router.routes
        finally:
            store.close()
    real = Routes._pattern
    got: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(opts.rounds):
        for variant in ("filter", "fastapi"):
            Routes._pattern = real if variant == "filter" else (lambda self: None)  # type: ignore[method-assign]
            try:
                for method, path in PATHS:
                    got.setdefault((variant, method, path), []).append(match_cpu(routes, method, path, opts.n))
            finally:
                Routes._pattern = real  # type: ignore[method-assign]
    print(f"load average {os.getloadavg()[0]:.1f}; CPU us per match, median of {opts.rounds} rounds")
    print(f"{'request':<58} {'fastapi':>8} {'filter':>8} {'ratio':>6}")
    for method, path in PATHS:
        a = statistics.median(got[("fastapi", method, path)])
        b = statistics.median(got[("filter", method, path)])
        print(f"{method + ' ' + path:<58} {a:>8.0f} {b:>8.0f} {b / a:>6.2f}")


if __name__ == "__main__":
    main()
