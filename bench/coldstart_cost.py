"""What one cold start costs, in-process (no HTTP, no other process): the server's part (every
host's snapshot made and written out by one view hub, as a cold start's streams do) and one
agent's part (a ~400-port snapshot decoded, parsed into the typed view, computed and diffed, as
`Agent.on_message` / `run_once` do, with the recording driver of bench/sim_agents.py).

The world is the scale bench's (`scale_bench.fill`: network i on 4 of the hosts, no security
groups) in an in-memory store; the hosts' entries are put in the view index as a registration
would (the registration's port rebinding is not done: every port stays `binding_failed`,
which changes no view's membership). CPU is process time, so other work on the machine
matters less than for wall times (it still does: shared caches and SMT siblings); compare trees
run in turn, several rounds.

`python -m bench.coldstart_cost [--hosts 1000 --networks 5000 --ports 100000] [--rounds 3]
[--agents 40]`
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import time

from bench.scale_bench import add_arguments, fill
from bench.servers import underlay
from bench.sim_agents import RecordingDriver
from vxnet.compute.host import HostComputer, HostSpec
from vxnet.compute.view import ViewState, apply_message, decode_message
from vxnet.services.view_hub import Hub
from vxnet.store import open_store


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--networks", type=int, default=5000)
    p.add_argument("--ports", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3, help="server rounds (every host's snapshot each)")
    p.add_argument("--agents", type=int, default=40, help="views computed for the agent figure")
    opts = p.parse_args()
    sp = argparse.ArgumentParser()
    add_arguments(sp)
    world_opts = sp.parse_args(["--scale-hosts", str(opts.hosts), "--scale-networks", str(opts.networks),
                                "--scale-ports", str(opts.ports)])
    store = open_store("memory://")
    world = fill(store, world_opts, random.Random(9), 500)
    hub = Hub(store)
    hub.loop = asyncio.new_event_loop()
    hub._load()
    for i, h in enumerate(world.hosts):
        hub.index.hosts[h] = {"host": h, "underlay_ip": underlay(i), "alive": True, "gateway": False}
        hub.index.track(h)
    gc.freeze()   # as the server after its load
    print(f"{opts.ports} ports, {opts.networks} networks, {opts.hosts} hosts")
    for r in range(opts.rounds):
        t0 = time.process_time()
        snaps = [hub.snapshot(h) for h in world.hosts]
        t1 = time.process_time()
        size = sum(len(piece) for s in snaps for piece in s.chunks())
        t2 = time.process_time()
        del snaps
        print(f"server round {r + 1}: make {t1 - t0:.2f} s + write out {t2 - t1:.2f} s CPU for "
              f"{len(world.hosts)} snapshots ({size / 2**20:.0f} MiB)")
    lines = [bytes(hub.snapshot(h)) for h in world.hosts[:opts.agents]]
    hub.loop.close()
    store.close()
    del hub
    gc.collect()
    gc.freeze()
    parts: dict[str, list[float]] = {"decode": [], "typed parse": [], "compute": [], "diff": []}
    for rnd in range(2):      # the first round warms the caches the agent process would have
        for i, line in enumerate(lines):
            c = time.process_time
            t0 = c()
            msg = decode_message(line)
            t1 = c()
            view = apply_message(ViewState(), msg, consume=True)
            t2 = c()
            desired = HostComputer(HostSpec(world.hosts[i], underlay(i))).compute(view.view).l2
            t3 = c()
            RecordingDriver().apply(desired)
            t4 = c()
            if rnd:
                for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    parts[k].append(v * 1000)
    total = [sum(x) for x in zip(*parts.values(), strict=True)]
    print(f"agent, one view (~{statistics.median(len(x) for x in lines) / 1024:.0f} KiB), median of "
          f"{len(lines)} ms CPU: " + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in parts.items())
          + f"; total {statistics.median(total):.1f} (min {min(total):.1f}, max {max(total):.1f})")


if __name__ == "__main__":
    main()
