"""Policy evaluation cost: `Policy.enforce` over the whole rule table, as five kinds of caller.

    .venv/bin/python -m bench.policy_bench [--rounds N]

Each round evaluates every rule of vxnet.api.policy.RULES once for each caller (admin, owner
member, reader, other-project member, owner of the shared network) against a port target on a
shared network, timing each call with perf_counter_ns; a call that denies is timed up to its
403 too. Prints p50/p99/max per call in milliseconds, and the same for a port update's full
check (`update_port` plus its attribute rules), which is what one request pays; each as wall
time and as the thread's CPU time (on a loaded machine the wall-time tail is the scheduler's,
not the policy's). The target is <= 0.2 ms at p99 (issue 13). Bounded: rounds x rules x 5 calls, a few seconds at most.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from vxnet.api import policy
from vxnet.api.auth import Context
from vxnet.api.errors import ApiError

CALLERS = {
    "admin": Context("u0", "admin", "p-admin", "admin", ("admin",)),
    "owner": Context("u1", "alice", "p-a", "a", ("member", "reader")),
    "reader": Context("u2", "alice_reader", "p-a", "a", ("reader",)),
    "other": Context("u3", "bob", "p-b", "b", ("member",)),
    "netowner": Context("u4", "carol", "p-c", "c", ("member",)),
}
NETWORK = {"id": "n1", "project_id": "p-c", "shared": True, "router:external": False}
PORT = {"id": "x1", "project_id": "p-a", "network_id": "n1", "device_owner": "network:router_interface",
        "device_id": "r1", "name": "p"}
UPDATE_ATTRS = ["name", "device_owner", "fixed_ips", "fixed_ips:ip_address", "port_security_enabled",
                "allowed_address_pairs", "binding:host_id"]


def _pct(samples: list[int], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] / 1e6


def run(rounds: int) -> dict[str, tuple[float, float, float]]:
    """Percentiles of wall time (`perf_counter`) and of this thread's CPU time (`thread_time`:
    what the call costs, without the time the OS gave other processes meanwhile)."""
    pol = policy.Policy()
    tgt = policy.target("port", PORT, NETWORK)
    names = [r.name for r in policy.RULES]
    samples: dict[str, list[int]] = {k: [] for k in ("rule wall", "rule cpu", "request wall", "request cpu")}
    for _ in range(rounds):
        for ctx in CALLERS.values():
            for name in names:
                c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
                pol.check(ctx, name, tgt)
                samples["rule wall"].append(time.perf_counter_ns() - t0)
                samples["rule cpu"].append(time.thread_time_ns() - c0)
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            try:
                pol.enforce(ctx, "update_port", tgt, UPDATE_ATTRS)
            except ApiError:
                pass
            samples["request wall"].append(time.perf_counter_ns() - t0)
            samples["request cpu"].append(time.thread_time_ns() - c0)
    out = {k: (_pct(v, 0.5), _pct(v, 0.99), max(v) / 1e6) for k, v in samples.items()}
    out["_n"] = (float(len(samples["rule wall"])), float(len(samples["request wall"])),
                 statistics.mean(samples["rule wall"]) / 1e6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    res = run(args.rounds)
    n_single, n_request, _ = res.pop("_n")
    print(f"policy_bench: {len(policy.RULES)} rules x {len(CALLERS)} callers x {args.rounds} rounds "
          f"({int(n_single)} rule checks, {int(n_request)} request checks)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'what':<22}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for what, (p50, p99, mx) in res.items():
        print(f"{what:<22}{p50:>10.4f}{p99:>10.4f}{mx:>10.3f}")


if __name__ == "__main__":
    main()
