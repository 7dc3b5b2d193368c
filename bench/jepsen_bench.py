"""Jepsen-style check of vxnet on etcd: real etcd members, real `vxnet server`s, faults, a history.

- Cluster: 3 etcd members, each in its own network namespace (`vxj<pid>-<i>`) with a veth to a
  bridge in the caller's namespace (100.126.<n>.0/24); 2 `vxnet server` processes on it.
- Workload: client threads through both servers doing port creates (each with a unique name),
  port updates (description) and deletes, floating-IP creates (unique description), updates
  and deletes. Every operation is recorded as invoke -> ok / fail / unknown. Unknown: the answer
  was a 5xx or the connection broke after sending; a request that never connected is a fail.
  Nothing is retried: a retry of an unknown create would be a second logical create.
- Nemesis (one iteration runs each fault once, in a rotating order): kill -9 the etcd leader
  and restart it; SIGSTOP a member for 5 s; partition a member (its veth cut) for a few
  seconds; kill -9 an API server mid-write and restart it.
- Change feeds, recorded during all of it, on every server: the UI's change feed (`/ui/events`,
  kept as a page keeps it: reload on `ready`, then apply each notification) and an agent's view
  stream for host `jhost` (`/v2.0/vxnet/hosts/jhost/view`, resumed with `since` like an agent;
  a third of the port creates bind to that host, so its view holds every port of the
  iterations' networks). Within a stream a revision never comes twice
  or backwards, and after healing each feed's state equals the store's (within 20 s): a missed
  notification or update leaves it different.
- Checker, after healing: every server lists the same ports and floating IPs (within 20 s);
  every acknowledged create is present with its acknowledged id unless a delete of it was
  acknowledged or unknown; no name twice; nothing present whose create failed; an unknown
  create present at most once; an acknowledged delete is absent; no IP and no MAC twice; no 5xx
  but 503 (the API's "outcome unknown").

`python -m bench.jepsen_bench --iterations 20` (as root) prints the anomaly counts per
iteration and in total. `tests/distributed/test_jepsen.py` runs 3 iterations and requires zero.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import httpx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests.distributed.conftest import ServerProc, token, vxnet_server, write_config
from tests.support.etcd import ETCD

NAME = "Jepsen-style faults on etcd (kills, pauses, partitions, server kills)"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class NetnsEtcd:
    """`size` etcd members, member i in netns `<tag>-<i>` at 100.126.<net>.<10+i>, linked to
    bridge `<tag>b` (100.126.<net>.1) by veth `<tag>h<i>`. Stopped by PID; namespaces removed."""

    def __init__(self, size: int = 3) -> None:
        pid = os.getpid() % 100000
        self.tag = f"vxj{pid}"
        self.net = 1 + pid % 250
        self.dir = tempfile.mkdtemp(prefix="vxjepsen-etcd-")
        self.names = [f"m{i}" for i in range(size)]
        self.ips = {n: f"100.126.{self.net}.{10 + i}" for i, n in enumerate(self.names)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stopped: set[str] = set()
        self.bridge = f"{self.tag}b"
        self._made: list[str] = []
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append("bridge")
            _ip("addr", "add", f"100.126.{self.net}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, n in enumerate(self.names):
                ns, veth = self.ns(n), self.veth(n)
                _ip("netns", "add", ns)
                self._made.append(ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", veth, "master", self.bridge, "up")
                _ip("-n", ns, "addr", "add", f"{self.ips[n]}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
            for n in self.names:
                self.start(n)
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def ns(self, name: str) -> str:
        return f"{self.tag}-{self.names.index(name)}"

    def veth(self, name: str) -> str:
        return f"{self.tag}h{self.names.index(name)}"

    def endpoint(self, name: str) -> str:
        return f"http://{self.ips[name]}:2379"

    def url(self) -> str:
        return "etcd://" + ",".join(f"{self.ips[n]}:2379" for n in self.names)

    def start(self, name: str) -> None:
        ip = self.ips[name]
        initial = ",".join(f"{n}=http://{self.ips[n]}:2380" for n in self.names)
        log = open(os.path.join(self.dir, f"{name}.log"), "ab")  # noqa: SIM115 - owned by the process
        self.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(name), ETCD, "--name", name,
             "--data-dir", os.path.join(self.dir, name),
             "--listen-client-urls", f"http://{ip}:2379", "--advertise-client-urls", f"http://{ip}:2379",
             "--listen-peer-urls", f"http://{ip}:2380", "--initial-advertise-peer-urls", f"http://{ip}:2380",
             "--initial-cluster", initial, "--initial-cluster-state", "new",
             "--initial-cluster-token", self.tag],
            stdout=log, stderr=log)

    def kill(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p is not None and p.poll() is None:
            if name in self.stopped:
                p.send_signal(signal.SIGCONT)
                self.stopped.discard(name)
            p.send_signal(signal.SIGKILL)
            p.wait(10)

    def pause(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGSTOP)
        self.stopped.add(name)

    def resume(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGCONT)
        self.stopped.discard(name)

    def cut(self, name: str, cut: bool) -> None:
        _ip("link", "set", self.veth(name), "down" if cut else "up")

    def status(self, name: str) -> dict[str, Any]:
        return httpx.post(self.endpoint(name) + "/v3/maintenance/status", json={}, timeout=1).json()

    def leader(self) -> str | None:
        ids: dict[str, str] = {}
        leader = None
        for n in self.names:
            if n not in self.procs or n in self.stopped:
                continue
            try:
                st = self.status(n)
            except (httpx.HTTPError, ValueError):
                continue
            ids[st["header"]["member_id"]] = n
            leader = st.get("leader") or leader
        return ids.get(leader) if leader else None

    def wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        for n in self.names:
            while True:
                try:
                    r = httpx.get(self.endpoint(n) + "/health", timeout=1)
                    if r.status_code == 200 and r.json().get("health") in ("true", True):
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if time.time() > deadline:
                    raise RuntimeError(f"etcd {n} not healthy; logs in {self.dir}")
                time.sleep(0.1)

    def stop(self) -> None:
        for n in list(self.procs):
            self.kill(n)
        for ns in [m for m in self._made if m != "bridge"]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        if "bridge" in self._made:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        self._made.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclasses.dataclass
class Op:
    """One history entry."""

    thread: int
    kind: str          # create-port, update-port, delete-port, create-fip, update-fip, delete-fip
    key: str           # the unique name (port) or description (floating IP)
    id: str | None     # the resource id (known for updates/deletes, and for acknowledged creates)
    t0: float
    t1: float = 0.0
    outcome: str = ""  # ok | fail | unknown
    body: dict[str, Any] | None = None
    status: int = 0


class Env:
    """A cluster, servers, and the networks one iteration works on."""

    def __init__(self, directory: str, servers: int = 2) -> None:
        self.dir = directory
        self.etcd = NetnsEtcd(3)
        try:
            config = write_config(directory)
            from tests.conftest import free_port

            self.servers: list[ServerProc] = [
                vxnet_server(config, f"127.0.0.1:{free_port()}", self.etcd.url(),
                             os.path.join(directory, f"server{i}.log")) for i in range(servers)]
            for s in self.servers:
                s.start(60)
            self.tok = token(self.servers[0].url)
        except BaseException:
            self.stop()
            raise

    def client(self, url: str, timeout: float = 10) -> httpx.Client:
        return httpx.Client(base_url=url + "/v2.0", headers={"X-Auth-Token": self.tok}, timeout=timeout)

    def networks(self, it: int) -> tuple[str, str]:
        """(tenant network, external network) for iteration `it`, with their subnets."""
        for attempt in range(60):
            try:
                with self.client(self.servers[0].url, 30) as c:
                    net = c.post("/networks", json={"network": {"name": f"j{it}"}}).raise_for_status().json()
                    nid = net["network"]["id"]
                    c.post("/subnets", json={"subnet": {"network_id": nid, "cidr": f"100.{64 + it % 32}.0.0/16",
                                                        "ip_version": 4}}).raise_for_status()
                    ext = c.post("/networks", json={"network": {"name": f"jx{it}", "router:external": True}})
                    eid = ext.raise_for_status().json()["network"]["id"]
                    c.post("/subnets", json={"subnet": {"network_id": eid, "cidr": f"100.{96 + it % 16}.0.0/16",
                                                        "ip_version": 4}}).raise_for_status()
                    return nid, eid
            except httpx.HTTPError:
                if attempt == 59:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def stop(self) -> None:
        for s in getattr(self, "servers", []):
            s.kill()
        self.etcd.stop()


class Workload:
    def __init__(self, env: Env, net: str, ext: str, threads: int = 4) -> None:
        self.env, self.net, self.ext, self.threads = env, net, ext, threads
        self.history: list[Op] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.seq = itertools.count()
        self.live: dict[str, list[str]] = {"port": [], "fip": []}  # acknowledged ids (for updates/deletes)
        self.keys: dict[str, str] = {}  # id -> unique name / description

    def _call(self, c: httpx.Client, op: Op, method: str, path: str, body: Any = None) -> None:
        try:
            r = c.request(method, path, json=body)
        except httpx.ConnectError:       # never reached the server
            op.outcome = "fail"
        except httpx.TransportError:     # sent; the answer is lost
            op.outcome = "unknown"
        else:
            op.status = r.status_code
            if r.status_code < 300:
                op.outcome = "ok"
                op.body = r.json() if r.content else None
            elif r.status_code >= 500:
                op.outcome = "unknown"
            else:
                op.outcome = "fail"
        op.t1 = time.time()

    def run_thread(self, t: int) -> None:
        rnd = random.Random(t * 7919 + os.getpid())
        url = self.env.servers[t % len(self.env.servers)].url
        with self.env.client(url) as c:
            while not self.stop.is_set():
                x = rnd.random()
                kind = ("create-port" if x < 0.45 else "update-port" if x < 0.6 else "delete-port" if x < 0.7
                        else "create-fip" if x < 0.85 else "update-fip" if x < 0.93 else "delete-fip")
                res = kind.split("-")[1]
                target = None
                if not kind.startswith("create"):
                    with self.lock:
                        if not self.live[res]:
                            continue
                        target = rnd.choice(self.live[res])
                        if kind.startswith("delete"):
                            self.live[res].remove(target)
                op = Op(t, kind, f"{res}{next(self.seq)}" if target is None else "", target, time.time())
                with self.lock:
                    self.history.append(op)
                if kind == "create-port":
                    port: dict[str, Any] = {"network_id": self.net, "name": op.key}
                    if rnd.random() < 1 / 3:
                        port["binding:host_id"] = VIEW_HOST
                    self._call(c, op, "POST", "/ports", {"port": port})
                elif kind == "update-port":
                    self._call(c, op, "PUT", f"/ports/{target}", {"port": {"description": f"d{op.t0}"}})
                elif kind == "delete-port":
                    self._call(c, op, "DELETE", f"/ports/{target}")
                elif kind == "create-fip":
                    self._call(c, op, "POST", "/floatingips",
                               {"floatingip": {"floating_network_id": self.ext, "description": op.key}})
                elif kind == "update-fip":
                    self._call(c, op, "PUT", f"/floatingips/{target}",  # same value: a write all the same
                               {"floatingip": {"description": self.keys[target or ""]}})
                else:
                    self._call(c, op, "DELETE", f"/floatingips/{target}")
                if kind.startswith("create") and op.outcome == "ok" and op.body:
                    op.id = op.body[res if res == "port" else "floatingip"]["id"]
                    with self.lock:
                        self.live[res].append(op.id)
                        self.keys[op.id] = op.key
                if op.outcome == "unknown" or (op.outcome == "fail" and not op.status):
                    time.sleep(0.1)  # the server is down or busy failing over: do not spin


VIEW_HOST = "jhost"  # the host some port creates bind to; its view stream is recorded


class _Recorder(threading.Thread):
    """One server's feed, recorded in the background until `halt` (see the module docstring):
    `state()` is what the feed says exists; `anomalies` counts revisions doubled or backwards."""

    def __init__(self, env: Env, url: str) -> None:
        super().__init__(daemon=True)
        self.env, self.url = env, url
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.anomalies: collections.Counter[str] = collections.Counter()
        self.messages = 0
        self.connects = 0

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.follow()
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            self.halt.wait(0.2)

    def _lines(self, path: str, params: dict[str, str]) -> Any:
        with httpx.Client(base_url=self.url, headers={"X-Auth-Token": self.env.tok},
                          timeout=httpx.Timeout(10, read=20)) as c, c.stream("GET", path, params=params) as r:
            # read=20: longer than the UI's keepalive (15 s) and the views' pings, so only a dead
            # server or a stuck stream ends it; `halt` is noticed at the next line
            r.raise_for_status()
            self.connects += 1
            for line in r.iter_lines():
                if self.halt.is_set():
                    return
                yield line

    def follow(self) -> None:
        raise NotImplementedError


class UiFeed(_Recorder):
    """`/ui/events` as the page keeps it: on `ready`, list every port and floating IP, then
    apply each notification (put: present, delete: absent)."""

    def __init__(self, env: Env, url: str) -> None:
        super().__init__(env, url)
        self.objs: dict[str, set[str]] = {"ports": set(), "floatingips": set()}
        self.last = -1   # the revision of the last `ready` or `change`

    def state(self) -> dict[str, set[str]]:
        with self.lock:
            return {k: set(v) for k, v in self.objs.items()}

    def follow(self) -> None:
        event, data = "", ""
        for line in self._lines("/ui/events", {}):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif not line and data:
                self.handle(event, json.loads(data))
                event, data = "", ""

    def handle(self, event: str, msg: dict[str, Any]) -> None:
        if event == "ready":
            objs = self.reload()
            with self.lock:
                self.objs = objs
                self.last = msg["revision"]
        elif event == "change":
            self.messages += 1
            with self.lock:
                if msg["revision"] <= self.last:
                    self.anomalies["ui-feed-revision-doubled-or-backwards"] += 1
                self.last = max(self.last, msg["revision"])
                for ch in msg["changes"]:
                    if ch["collection"] in self.objs:
                        (self.objs[ch["collection"]].add if ch["type"] == "put"
                         else self.objs[ch["collection"]].discard)(ch["id"])

    def reload(self) -> dict[str, set[str]]:
        """What the page reloads after `ready`: every port and floating IP (all projects)."""
        with self.env.client(self.url, 30) as c:
            ports = _all_pages(c, "/ports", "ports", {})
            fips = _all_pages(c, "/floatingips", "floatingips", {})
        return {"ports": {p["id"] for p in ports}, "floatingips": {f["id"] for f in fips}}


class ViewFeed(_Recorder):
    """Host VIEW_HOST's view stream as an agent follows it: a snapshot, then updates, resumed
    after a broken stream with `since` = the last revision it was told."""

    def __init__(self, env: Env, url: str) -> None:
        super().__init__(env, url)
        from vxnet.compute.view import ViewState
        self.view = ViewState()

    def state(self) -> dict[str, set[str]]:
        with self.lock:
            return {"ports": set(self.view.data.get("ports", {}))}

    def follow(self) -> None:
        params = {"since": str(self.view.revision)} if self.view.complete else {}
        for line in self._lines(f"/v2.0/vxnet/hosts/{VIEW_HOST}/view", params):
            if line:
                self.handle(json.loads(line))

    def handle(self, msg: dict[str, Any]) -> None:
        from vxnet.compute.view import apply_message
        rev = int(msg.get("revision") or 0)
        with self.lock:
            if msg.get("type") == "update":
                self.messages += 1
                if self.view.complete and rev <= self.view.revision:
                    self.anomalies["view-update-doubled-or-backwards"] += 1
            self.view = apply_message(self.view, msg)


def check_feeds(env: Env, feeds: list[_Recorder]) -> tuple[collections.Counter[str], dict[str, Any]]:
    """Each feed's final state against the store's (as server 0 lists it, all projects), within
    20 s; plus the revision anomalies the feeds counted."""
    anomalies: collections.Counter[str] = collections.Counter()
    deadline = time.time() + 20
    while True:
        try:
            with env.client(env.servers[0].url, 30) as c:
                ports = _all_pages(c, "/ports", "ports", {})
                fips = _all_pages(c, "/floatingips", "floatingips", {})
        except httpx.HTTPError:
            time.sleep(0.5)
            continue
        truth = {"ports": {p["id"] for p in ports}, "floatingips": {f["id"] for f in fips}}
        # a host's view holds every port of every network it has a port on (its FDB and ARP)
        nets = {p["network_id"] for p in ports if p.get("binding:host_id") == VIEW_HOST}
        bound = {"ports": {p["id"] for p in ports if p["network_id"] in nets}}
        wrong = {f: sum(len(want ^ f.state()[k]) for k, want in (bound if isinstance(f, ViewFeed) else truth).items())
                 for f in feeds}
        if not any(wrong.values()) or time.time() > deadline:
            break
        time.sleep(0.5)
    for f in feeds:
        anomalies.update(f.anomalies)
        if wrong[f]:
            anomalies["ui-feed-missed" if isinstance(f, UiFeed) else "view-missed"] += wrong[f]
    stats = {"ui notifications": sum(f.messages for f in feeds if isinstance(f, UiFeed)),
             "view updates": sum(f.messages for f in feeds if isinstance(f, ViewFeed)),
             "feed connects": sum(f.connects for f in feeds),
             f"ports in {VIEW_HOST}'s view": len(bound["ports"])}
    return +anomalies, stats


class Nemesis:
    FAULTS = ("kill-leader", "pause-member", "partition-member", "kill-server")

    def __init__(self, env: Env, log: list[str]) -> None:
        self.env, self.log = env, log

    def _say(self, text: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')} {text}")

    def leader(self) -> str:
        for _ in range(100):
            n = self.env.etcd.leader()
            if n:
                return n
            time.sleep(0.1)
        raise RuntimeError("no etcd leader")

    def run(self, fault: str, rnd: random.Random) -> None:
        etcd = self.env.etcd
        if fault == "kill-leader":
            victim = self.leader()
            self._say(f"kill -9 etcd leader {victim}")
            etcd.kill(victim)
            time.sleep(1.0)
            etcd.start(victim)
            self._say(f"restarted {victim}")
        elif fault == "pause-member":
            victim = self.leader() if rnd.random() < 0.5 else rnd.choice(etcd.names)
            self._say(f"SIGSTOP {victim} for 5 s")
            etcd.pause(victim)
            time.sleep(5.0)
            etcd.resume(victim)
        elif fault == "partition-member":
            victim = self.leader() if rnd.random() < 0.5 else rnd.choice(etcd.names)
            self._say(f"partition {victim} for 3 s")
            etcd.cut(victim, True)
            time.sleep(3.0)
            etcd.cut(victim, False)
        elif fault == "kill-server":
            s = rnd.choice(self.env.servers)
            self._say(f"kill -9 API server {s.url}")
            s.kill()
            time.sleep(0.5)
            s.start(60)
            self._say(f"restarted API server {s.url}")
        etcd.wait_healthy(60)


def _all_pages(c: httpx.Client, path: str, key: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """Every object of a listing: the server caps a page (`max_page_size`), so follow `next`."""
    body = c.get(path, params=params).raise_for_status().json()
    out = list(body[key])
    while body[key]:
        nxt = [link["href"] for link in body.get(f"{key}_links", []) if link.get("rel") == "next"]
        if not nxt:
            break
        body = c.get(nxt[0]).raise_for_status().json()
        out += body[key]
    return out


def _listing(env: Env, url: str, net: str, ext: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with env.client(url, 30) as c:
        ports = _all_pages(c, "/ports", "ports", {"network_id": net})
        fips = _all_pages(c, "/floatingips", "floatingips", {"floating_network_id": ext})
    return ports, fips


def check(env: Env, wl: Workload) -> tuple[collections.Counter[str], dict[str, Any]]:
    """Anomaly counts (all must be 0) and statistics of one iteration's history."""
    anomalies: collections.Counter[str] = collections.Counter()
    deadline = time.time() + 20
    while True:
        try:
            views = [_listing(env, s.url, wl.net, wl.ext) for s in env.servers]
        except httpx.HTTPError:
            views = []
        def ids(v: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> tuple[set[str], set[str]]:
            return {p["id"] for p in v[0]}, {f["id"] for f in v[1]}
        if views and all(ids(v) == ids(views[0]) for v in views):
            break
        if time.time() > deadline:
            anomalies["servers-diverged"] += 1
            if not views:
                return anomalies, {}
            break
        time.sleep(0.5)
    ports, fips = views[0]
    present = {"port": collections.Counter(p["name"] for p in ports),
               "fip": collections.Counter(f["description"] for f in fips if f["description"].startswith("fip"))}
    by_id = {"port": {p["id"]: p for p in ports}, "fip": {f["id"]: f for f in fips}}
    deleted_ok: set[str] = set()
    deleted_maybe: set[str] = set()
    for op in wl.history:
        if op.kind.startswith("delete") and op.id:
            (deleted_ok if op.outcome == "ok" else deleted_maybe if op.outcome == "unknown" else set()).add(op.id)
    stats: collections.Counter[str] = collections.Counter()
    invoked: dict[str, set[str]] = {"port": set(), "fip": set()}
    for op in wl.history:
        stats[f"{op.kind} {op.outcome}" + (f" {op.status or 'conn'}" if op.outcome != "ok" else "")] += 1
        if op.status >= 500 and op.status != 503:
            anomalies[f"http-{op.status}"] += 1  # only 503 (outcome unknown) is a legal 5xx
        if not op.kind.startswith("create"):
            continue
        res = op.kind.split("-")[1]
        invoked[res].add(op.key)
        n = present[res].get(op.key, 0)
        if n > 1:
            anomalies[f"{res}-twice"] += 1
        if op.outcome == "ok":
            if op.id in deleted_ok:
                if op.id in by_id[res]:
                    anomalies[f"{res}-deleted-but-present"] += 1
            elif op.id not in by_id[res] and op.id not in deleted_maybe:
                anomalies[f"{res}-acknowledged-create-lost"] += 1
        elif op.outcome == "fail" and n:
            anomalies[f"{res}-failed-create-present"] += 1
        elif op.outcome == "unknown":
            stats[f"unknown {res} create present" if n else f"unknown {res} create absent"] += 1
    for res in ("port", "fip"):
        for key in present[res]:
            if key not in invoked[res]:
                anomalies[f"{res}-never-invoked"] += 1
    ips = [ip["ip_address"] for p in ports for ip in p["fixed_ips"]] + [f["floating_ip_address"] for f in fips]
    macs = [p["mac_address"] for p in ports]
    anomalies["ip-twice"] += len(ips) - len(set(ips))
    anomalies["mac-twice"] += len(macs) - len(set(macs))
    stats["ports present"] = len(ports)
    stats["fips present"] = len(fips)
    return +anomalies, dict(stats)


def iteration(env: Env, it: int, rnd: random.Random, log: list[str]) -> tuple[collections.Counter[str], dict[str, Any]]:
    net, ext = env.networks(it)
    feeds: list[_Recorder] = [cls(env, s.url) for s in env.servers for cls in (UiFeed, ViewFeed)]
    for f in feeds:
        f.start()
    wl = Workload(env, net, ext)
    threads = [threading.Thread(target=wl.run_thread, args=(t,), daemon=True) for t in range(wl.threads)]
    for t in threads:
        t.start()
    faults = list(Nemesis.FAULTS)
    k = it % len(faults)
    nemesis = Nemesis(env, log)
    try:
        time.sleep(1.0)
        for fault in faults[k:] + faults[:k]:
            nemesis.run(fault, rnd)
            time.sleep(0.5)
    finally:
        wl.stop.set()
        for t in threads:
            t.join(60)
    for s in env.servers:  # a server killed and restarted by the nemesis must be up again
        if s.pid is None:
            s.start(60)
    try:
        anomalies, stats = check(env, wl)
        feed_anomalies, feed_stats = check_feeds(env, feeds)
    finally:
        for f in feeds:
            f.halt.set()
        for f in feeds:
            f.join(10)
    anomalies.update(feed_anomalies)
    stats.update(feed_stats)
    return anomalies, stats


def resolved(env: Env) -> collections.Counter[str]:
    """Lost store answers the servers resolved so far (their logs): applied / fenced."""
    n: collections.Counter[str] = collections.Counter()
    for s in env.servers:
        try:
            with open(s.log, errors="replace") as f:
                for line in f:
                    if "lost store answer resolved" in line:
                        n["lost answer: " + line.rsplit(" ", 1)[-1].strip()] += 1
        except FileNotFoundError:
            pass
    return n


def run(iterations: int, directory: str | None = None, out: Any = sys.stdout) -> collections.Counter[str]:
    d = directory or tempfile.mkdtemp(prefix="vxjepsen-")
    env = Env(d)
    total: collections.Counter[str] = collections.Counter()
    rnd = random.Random(os.getpid())
    try:
        for it in range(iterations):
            log: list[str] = []
            t0 = time.time()
            before = resolved(env)
            anomalies, stats = iteration(env, it, rnd, log)
            stats.update(resolved(env) - before)
            total.update(anomalies)
            print(f"iteration {it + 1}/{iterations} ({time.time() - t0:.0f} s): anomalies {dict(anomalies) or 0}; "
                  f"{stats}; nemesis: {'; '.join(log)}", file=out, flush=True)
        print(f"lost store answers resolved by the servers: {dict(resolved(env)) or 0}", file=out, flush=True)
    finally:
        env.stop()
        if directory is None:
            shutil.rmtree(d, ignore_errors=True)
    print(f"total anomalies over {iterations} iterations: {dict(total) or 0}", file=out, flush=True)
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=20)
    opts = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces for the etcd members)")
    total = run(opts.iterations)
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    main()
