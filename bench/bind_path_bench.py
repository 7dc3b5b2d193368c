"""The server's share of port-up: a bind's PUT and its way to the target agent's view stream,
without agents or a data plane (the port-up lab's first two stage rows, server only).

One `vxnet server` on the embedded store (subprocess, bench/servers.py), three hosts registered
with their view streams open (raw asyncio HTTP/1.1, as the fan-out benchmark reads them), N
ports created unbound; then, one at a time, each port is bound (`PUT /v2.0/ports/{id}` with
`binding:host_id` and `device_owner`, as the lab's `bind_port`) to host i mod 3, and the client
records when the PUT's answer came and when the target host's stream delivered the update that
shows the binding. With `--poll` the client also polls the port (a GET every ~1 ms from the
PUT's answer until the update arrived), as the port-up benchmark's ACTIVE poll does. Between
binds it waits `--gap` ms, so each bind finds the server idle. httpx writes a request's headers
and its body in two writes (two segments on loopback), so the server parses the headers, runs
its middlewares and routing, then waits a loop round for the body. Nova's client
(keystoneauth -> requests -> urllib3 -> http.client) writes twice too on this stack (checked in
session 14, docs/benchmarks.md), so the default is what a deployment sees. With `--one-write`
the PUT's headers and body go in one write over a raw keep-alive connection: a server-side view
of the path without the client's second write, not any real client's.

Printed: p50 / p90 / p99 ms of bind -> PUT answered, bind -> update at the target stream and
their difference per bind (negative: the stream had the update first), and the server's CPU time (user + system, /proc) per bind over the bind phase.

`PYTHONPATH=$PWD/src .venv/bin/python -m bench.bind_path_bench [--ports 200] [--poll] [--gap 20] [--one-write]`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from typing import Any

import httpx

from bench.fanout_bench import read_view
from bench.report import percentile
from bench.servers import (
    ADMIN,
    AGENT,
    UNLIMITED_QUOTAS,
    cpu_seconds,
    load_averages,
    register_hosts,
    server_process,
    token,
)

HOSTS = ("h1", "h2", "h3")


class Streams:
    """The three hosts' view streams: when each port's binding to its host arrived."""

    def __init__(self) -> None:
        self.bound: dict[str, float] = {}
        self.waiting: dict[str, asyncio.Event] = {}
        self.writer: asyncio.StreamWriter | None = None

    async def read(self, port: int, host: str, tok: str) -> None:
        holder = Streams()  # read_view sets .writer on it
        async for now, msg in read_view(holder, port, host, tok, 1 << 24, time.perf_counter):
            if msg.get("type") != "update":
                continue
            for pid, obj in msg.get("put", {}).get("ports", {}).items():
                if obj.get("binding:host_id") == host and pid in self.waiting and pid not in self.bound:
                    self.bound[pid] = now
                    self.waiting[pid].set()


class OneWrite:
    """PUTs over one raw HTTP/1.1 keep-alive connection, each request (headers and body) in one
    write, as http.client sends a small body."""

    def __init__(self, port: int, tok: str) -> None:
        self.port, self.tok = port, tok
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def put(self, path: str, doc: dict[str, Any]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        body = json.dumps(doc).encode()
        self.writer.write(f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nX-Auth-Token: {self.tok}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def measure(port: int, pid: int, opts: argparse.Namespace) -> dict[str, Any]:
    admin_tok, agent_tok = token(port, ADMIN), token(port, AGENT)
    await register_hosts([port], agent_tok, list(HOSTS))
    streams = Streams()
    readers = [asyncio.create_task(streams.read(port, h, agent_tok)) for h in HOSTS]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v2.0",
                                 headers={"X-Auth-Token": admin_tok}, timeout=30) as api:
        net = (await api.post("/networks", json={"network": {"name": "bind-bench"}})).json()["network"]
        r = await api.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.64.0.0/16",
                                                       "ip_version": 4}})
        assert r.status_code == 201, r.text
        ids = []
        for i in range(opts.ports):
            r = await api.post("/ports", json={"port": {"network_id": net["id"], "name": f"p{i}"}})
            assert r.status_code == 201, r.text
            ids.append(r.json()["port"]["id"])
        await asyncio.sleep(0.5)
        print(f"binding {len(ids)} ports (server pid {pid})", file=sys.stderr, flush=True)
        put_ms: list[float] = []
        recv_ms: list[float] = []
        one = OneWrite(port, admin_tok) if opts.one_write else None
        if one is not None:   # connected before the first bind is timed
            assert (await one.put("/v2.0/ports/" + ids[0], {"port": {"name": "p0"}}))[0] == 200
        cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
        for i, port_id in enumerate(ids):
            host = HOSTS[i % 3]
            done = streams.waiting[port_id] = asyncio.Event()
            body = {"port": {"binding:host_id": host, "device_owner": "compute:nova"}}
            t0 = time.perf_counter()
            if one is not None:
                status, text = await one.put(f"/v2.0/ports/{port_id}", body)
            else:
                r = await api.put(f"/ports/{port_id}", json=body)
                status, text = r.status_code, r.content
            t_put = time.perf_counter()
            assert status == 200, text
            if opts.poll:
                while not done.is_set():
                    await api.get(f"/ports/{port_id}")
                    await asyncio.sleep(0.001)
            await asyncio.wait_for(done.wait(), 10)
            put_ms.append((t_put - t0) * 1000)
            recv_ms.append((streams.bound[port_id] - t0) * 1000)
            await asyncio.sleep(opts.gap / 1000)
        cpu = cpu_seconds(pid) - cpu0
        wall = time.perf_counter() - wall0
        if one is not None:
            one.close()
    for t in readers:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    return {"put": put_ms, "recv": recv_ms, "cpu_ms": cpu * 1000 / len(ids), "wall": wall}


def row(name: str, xs: list[float]) -> str:
    xs = sorted(xs)
    return f"{name:<44} " + " / ".join(f"{percentile(xs, q):5.2f}" for q in (50, 90, 99))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ports", type=int, default=200)
    p.add_argument("--poll", action="store_true", help="poll the port with GETs until the update arrived")
    p.add_argument("--gap", type=float, default=20.0, help="ms between binds (20)")
    p.add_argument("--one-write", action="store_true",
                   help="send each PUT's headers and body in one write (a server-side view: real clients write twice)")
    opts = p.parse_args()
    start_load = load_averages()
    with tempfile.TemporaryDirectory(prefix="vxnet-bind-bench-") as d, \
            server_process(d, quotas=UNLIMITED_QUOTAS) as (port, pid):
        got = asyncio.run(measure(port, pid, opts))
    print(f"{opts.ports} binds, poll {'on' if opts.poll else 'off'}, PUT in {'one write' if opts.one_write else 'two writes (httpx)'}, load {start_load} -> {load_averages()}; "
          f"ms p50 / p90 / p99")
    print(row("bind -> PUT answered", got["put"]))
    print(row("bind -> update at the target host's stream", got["recv"]))
    print(row("PUT answered -> update at the target", [b - a for a, b in zip(got["put"], got["recv"], strict=True)]))
    print(f"{'server CPU per bind (ms)':<44} {got['cpu_ms']:.2f}")


if __name__ == "__main__":
    main()
