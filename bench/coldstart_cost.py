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

With `--peer-cache`, the server rounds also write the same snapshots with every peer port's
bytes taken from a table made beforehand (`cached_line`: what a hub that kept each port's peer
form serialised would do), and print what that table holds: the measurement that decided
against such a table (docs/benchmarks.md, session 15).

With `--memory`, the hub's load and the tracking of every host run under tracemalloc and
print what each keeps (MiB, and its largest allocation sites). With `--changes N`, N port
changes of each kind are applied to the view index as the hub's watch would (`ViewIndex.apply`,
the objects `compact`ed) and the CPU of each is printed (p50 / p99 ms): the fan-out's compute,
without the lines written or sent.

With `--sqlite PATH`, the world is in a SQLite store at PATH (filled there if the file is new,
every host then registered through `services.agents.register`, which rebinds its ports, as the
scale bench's registration; kept for the next run: a full fill takes minutes), and the hub loads
it as a restarted server does (the store's in-memory copy, `freeze_gc`, the texts dropped, the
heap trimmed): the server's memory after the load and after the snapshot rounds is printed
(RSS, glibc's heap in use, pymalloc's live blocks: vxnet/memprofile.py; not with `--memory`,
whose tracing replaces the allocator).

`python -m bench.coldstart_cost [--hosts 1000 --networks 5000 --ports 100000] [--rounds 3]
[--agents 40] [--peer-cache] [--memory] [--changes 200] [--sqlite PATH]`
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import sys
import time
import tracemalloc
from typing import Any

from bench.scale_bench import World, add_arguments, fill
from bench.servers import rss_mib, underlay
from bench.sim_agents import RecordingDriver
from vxnet import heap
from vxnet.compute.host import HostComputer, HostSpec
from vxnet.compute.view import ViewState, apply_message, decode_message
from vxnet.memprofile import malloc_stats, pymalloc_stats
from vxnet.services import agents
from vxnet.services.compact import compact
from vxnet.services.host_view import peer_copy
from vxnet.services.repo import Repo
from vxnet.services.view_hub import Hub, Snapshot, dumps
from vxnet.store import open_store
from vxnet.store.contract import Store


def peer_table(ports: dict[str, dict[str, object]]) -> dict[str, bytes]:
    """Every port's `"<id>":{peer form}`, as a snapshot writes it, copied out of orjson's buffer
    (the bytes orjson returns keep its larger allocation: ~3.8 KB a port of RSS, measured)."""
    return {i: bytes(bytearray(dumps({i: peer_copy(p)})[1:-1])) for i, p in ports.items()}


def cached_line(snap: Snapshot, table: dict[str, bytes]) -> bytes:
    """`snap`'s line with its peer ports joined from `table` (`peer_table`), the rest written
    as `Snapshot.chunks` writes it (one piece: the pieces cost little next to the objects)."""
    parts = [snap.head]
    for key, ids, objs, own in snap.sections:
        if key == "ports":
            body = list(map(table.__getitem__, ids[own:]))
            if own:
                body.insert(0, dumps(dict(zip(ids[:own], objs[:own], strict=True)))[1:-1])
            parts.append(b',"ports":{' + b",".join(body) + b"}")
        else:
            parts.append(b',"' + key.encode() + b'":' + dumps(dict(zip(ids, objs, strict=True))))
    parts.append(b"}}\n")
    return b"".join(parts)


def traced(title: str, before: tracemalloc.Snapshot, top: int = 8) -> tracemalloc.Snapshot:
    """Print what was allocated and kept since `before` (collected first), and its largest sites."""
    gc.collect()
    after = tracemalloc.take_snapshot()
    stats = after.compare_to(before, "lineno")
    print(f"memory, {title}: {sum(x.size_diff for x in stats) / 2**20:.1f} MiB kept; largest sites: " + ", ".join(
        f"{x.traceback[0].filename.rsplit('/', 2)[-1]}:{x.traceback[0].lineno} {x.size_diff / 2**20:.1f}"
        for x in stats[:top]))
    return after


def sqlite_world(path: str, world_opts: argparse.Namespace) -> tuple[Store, list[str]]:
    """The scale world in the SQLite store at `path` (filled and every host registered if the
    file is new), reopened as a server opens it; its hosts."""
    if not os.path.exists(path):
        store = open_store(f"sqlite://{path}")
        world = fill(store, world_opts, random.Random(9), 500)
        repo = Repo(store)
        for i, h in enumerate(world.hosts):   # a lease that outlives the run: liveness changes no view
            agents.register(store, repo, h, agents.Registration(underlay(i)), 10**7)
        store.close()
    return open_store(f"sqlite://{path}"), World(world_opts.scale_hosts).hosts


def memory(title: str) -> None:
    """The process's memory now (after a full collection)."""
    gc.collect()
    print(f"memory, {title}: RSS {rss_mib(os.getpid()):.1f} MiB; {malloc_stats()}; {pymalloc_stats()}")


def port_changes(hub: Hub, hosts: list[str], n: int, rng: random.Random) -> None:
    """Apply `n` port changes of each kind to the hub's view index, print the CPU of each."""
    index = hub.index
    ports = index.objects["ports"]
    ids = sorted(ports)
    nets = sorted(index.objects["networks"])

    def changed(pid: str, **fields: Any) -> dict[str, Any]:
        return compact({**ports[pid], **fields}, share_empty=True)

    kinds = {
        "status (its own host)": lambda k: ("ports", (pid := rng.choice(ids)),
                                            changed(pid, status="ACTIVE" if ports[pid]["status"] != "ACTIVE" else "DOWN")),
        "device_id (every holder)": lambda k: ("ports", (pid := rng.choice(ids)), changed(pid, device_id=f"vm-c{k}")),
        "bound to another host": lambda k: ("ports", (pid := rng.choice(ids)),
                                            changed(pid, **{"binding:host_id": rng.choice(hosts)})),
        "new port": lambda k: ("ports", f"bench-port-{k}",
                               {**ports[ids[0]], "id": f"bench-port-{k}", "network_id": rng.choice(nets),
                                "binding:host_id": rng.choice(hosts), "mac_address": f"fa:16:3e:ff:{k >> 8:02x}:{k & 255:02x}"}),
        "port deleted": lambda k: ("ports", f"bench-port-{k}", None),
    }
    for kind, make in kinds.items():
        times = []
        for k in range(n):
            change = make(k)
            t0 = time.process_time()
            index.apply([change])
            times.append((time.process_time() - t0) * 1000)
        times.sort()
        print(f"change, {kind}: p50 {statistics.median(times):.3f} ms, p99 {times[int(len(times) * 0.99)]:.3f} ms CPU "
              f"(index.apply, {n} changes)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--networks", type=int, default=5000)
    p.add_argument("--ports", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3, help="server rounds (every host's snapshot each)")
    p.add_argument("--agents", type=int, default=40, help="views computed for the agent figure")
    p.add_argument("--peer-cache", action="store_true", help="also write the snapshots from a table of peer forms")
    p.add_argument("--memory", action="store_true", help="trace what the load and the tracking keep")
    p.add_argument("--changes", type=int, default=0, help="port changes of each kind applied to the index")
    p.add_argument("--sqlite", metavar="PATH", help="the world in a SQLite store at PATH, registered (made if new)")
    opts = p.parse_args()
    sp = argparse.ArgumentParser()
    add_arguments(sp)
    world_opts = sp.parse_args(["--scale-hosts", str(opts.hosts), "--scale-networks", str(opts.networks),
                                "--scale-ports", str(opts.ports)])
    if opts.sqlite:
        heap.limit_malloc_arenas()   # as the server, at its start
        store, hosts = sqlite_world(opts.sqlite, world_opts)
        if not opts.memory:
            memory("the store loaded")
    else:
        store = open_store("memory://")
        hosts = fill(store, world_opts, random.Random(9), 500).hosts
    print(f"{opts.ports} ports, {opts.networks} networks, {opts.hosts} hosts")
    if opts.memory:
        gc.collect()
        tracemalloc.start()
        mark = tracemalloc.take_snapshot()
    hub = Hub(store)
    hub.loop = asyncio.new_event_loop()
    hub.freeze_gc = bool(opts.sqlite)   # as the server (registered hosts are tracked by the load)
    t0 = time.process_time()
    hub._load()
    print(f"hub load: {time.process_time() - t0:.2f} s CPU")
    if opts.memory:
        mark = traced("the hub's load (the store's texts dropped)", mark)
    for i, h in enumerate(hosts if not opts.sqlite else ()):
        hub.index.hosts[h] = {"host": h, "underlay_ip": underlay(i), "alive": True, "gateway": False}
        hub.index.track(h)
    if opts.memory:
        if not opts.sqlite:   # (the load tracked the registered hosts)
            traced(f"tracking {len(hosts)} hosts", mark)
        tracemalloc.stop()
    elif opts.sqlite:
        memory("the hub loaded")
    gc.freeze()   # as the server after its load
    table: dict[str, bytes] = {}
    if opts.peer_cache:
        t0 = time.process_time()
        table = peer_table(hub.index.objects["ports"])
        held = sum(map(sys.getsizeof, table.values())) + sys.getsizeof(table)
        print(f"peer table: made in {time.process_time() - t0:.2f} s CPU, holds {held / 2**20:.1f} MiB "
              f"({held / len(table):.0f} bytes a port; sys.getsizeof)")
        for h in hosts[:opts.agents]:
            snap = hub.snapshot(h)
            assert cached_line(snap, table) == bytes(snap), h
    for r in range(opts.rounds):
        t0 = time.process_time()
        snaps = [hub.snapshot(h) for h in hosts]
        t1 = time.process_time()
        size = sum(len(piece) for s in snaps for piece in s.chunks())
        t2 = time.process_time()
        del snaps
        print(f"server round {r + 1}: make {t1 - t0:.2f} s + write out {t2 - t1:.2f} s CPU for "
              f"{len(hosts)} snapshots ({size / 2**20:.0f} MiB)")
        if table:
            snaps = [hub.snapshot(h) for h in hosts]
            t1 = time.process_time()
            cached = sum(len(cached_line(s, table)) for s in snaps)
            t2 = time.process_time()
            del snaps
            assert cached == size
            print(f"server round {r + 1}, peer forms from the table: write out {t2 - t1:.2f} s CPU")
    if opts.sqlite and not opts.memory:
        memory(f"after {opts.rounds} rounds of snapshots")
    lines = [bytes(hub.snapshot(h)) for h in hosts[:opts.agents]]
    if opts.changes:
        port_changes(hub, hosts, opts.changes, random.Random(7))
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
            desired = HostComputer(HostSpec(hosts[i], underlay(i))).compute(view.view).l2
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
