"""Host views: the incremental index against the full scan, then the stream over HTTP.

Part 1 (pure): random histories of networks, subnets, ports, routers, floating IPs, groups,
rules and agents are applied to `ViewIndex`; after every revision, for every tracked host, the
view an agent holds (snapshot + every message) equals `full_view` of the same objects, and
every message a host receives changes its view (no host hears of a change it does not care
about).

Part 2 (HTTP): the `/v2.0/vxnet/hosts/{host}/view` stream of a real server: snapshot, updates
for the owning host only, resume with `since`, snapshot when `since` is too old, latency.
"""

from __future__ import annotations

import copy
import json
import os
import random
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import USERS, ServerHandle, free_port, get_token, start_server
from tests.support import http
from vxnet.config import Config, User
from vxnet.services.host_view import VIEW_KEYS, empty_view, full_view
from vxnet.services.view_index import ViewIndex
from vxnet.store.contract import put as store_put
from vxnet.store.sqlite_store import SqliteStore

# --- part 1: pure -------------------------------------------------------------------------


def apply_update(view: dict[str, Any], put: dict[str, dict[str, Any]], delete: dict[str, list[str]]) -> None:
    """Apply an update message to a view held as raw `view[key][id]` dicts (the tests' agent:
    the real one parses objects, `vxnet.compute.view.apply_message`, and so drops unknown
    fields, which would hide a server sending too much)."""
    for coll, ids in delete.items():
        for i in ids:
            view.setdefault(coll, {}).pop(i, None)
    for coll, objs in put.items():
        view.setdefault(coll, {}).update(objs)


HOSTS = ["h1", "h2", "h3", "h4", "gw1"]
NETS = [f"n{i}" for i in range(6)]
ROUTERS = ["r1", "r2", "r3"]
GROUPS = ["g1", "g2", "g3"]
OWNERS = ["", "compute:nova", "compute:nova", "network:router_interface", "network:dhcp",
          "network:router_gateway", "network:floatingip"]


class RandomWorld:
    """Random changes over a small id space, so that objects collide and move often."""

    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.objects: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in (
            "networks", "subnets", "ports", "routers", "floatingips", "security_groups", "security_group_rules",
            "qos_policies")}
        self.agents: dict[str, dict[str, Any]] = {}
        self.counter = 0

    def _pick(self, coll: str, fresh: list[str]) -> str:
        existing = list(self.objects[coll])
        if existing and self.rnd.random() < 0.7:
            return self.rnd.choice(existing)
        return self.rnd.choice(fresh)

    def _obj(self, coll: str, id_: str) -> dict[str, Any]:
        r = self.rnd
        self.counter += 1
        base: dict[str, Any] = {"id": id_, "rev": self.counter}
        if coll == "networks":
            base["router:external"] = r.random() < 0.25
        elif coll == "subnets":
            base["network_id"] = r.choice(NETS)
        elif coll == "ports":
            owner = r.choice(OWNERS)
            base.update({
                "network_id": r.choice(NETS),
                "binding:host_id": r.choice(HOSTS + ["h9", "", ""]),
                "device_owner": owner,
                "device_id": r.choice(ROUTERS) if owner.startswith("network:router") else r.choice(["", "vm1"]),
                "security_groups": r.sample(GROUPS, r.randint(0, 2)),
                "status": r.choice(["ACTIVE", "DOWN"]),
            })
        elif coll == "routers":
            base["external_gateway_info"] = {"network_id": r.choice(NETS)} if r.random() < 0.5 else None
        elif coll == "floatingips":
            ports = list(self.objects["ports"])
            base["port_id"] = r.choice(ports) if ports and r.random() < 0.7 else None
        elif coll == "security_group_rules":
            base["security_group_id"] = r.choice(GROUPS)
            base["remote_group_id"] = r.choice(GROUPS) if r.random() < 0.5 else None
        return base

    def change(self) -> tuple[str, str, dict[str, Any] | None]:
        """One random change, applied to the reference world too."""
        r = self.rnd
        coll = r.choice(list(self.objects) + ["ports", "ports", "ports", "agents"])
        if coll == "agents":
            host = r.choice(HOSTS)
            aid = "agent-" + host
            if aid in self.agents and r.random() < 0.2:
                del self.agents[aid]
                return ("agents", aid, None)
            rec = {"id": aid, "host": host, "alive": r.random() < 0.8,
                   "configurations": {"underlay_ip": f"198.51.100.{r.randint(1, 4)}",
                                      "gateway": host == "gw1" or r.random() < 0.1}}
            self.agents[aid] = rec
            return ("agents", aid, rec)
        fresh = {"networks": NETS, "routers": ROUTERS, "security_groups": GROUPS}.get(
            coll, [f"{coll[:2]}{i}" for i in range(12)])
        id_ = self._pick(coll, fresh)
        if id_ in self.objects[coll] and r.random() < 0.25:
            del self.objects[coll][id_]
            return (coll, id_, None)
        if id_ in self.objects[coll] and r.random() < 0.4:  # touch a non-structural attribute only
            obj = dict(self.objects[coll][id_])
            self.counter += 1
            obj["rev"] = self.counter
        else:
            obj = self._obj(coll, id_)
        self.objects[coll][id_] = obj
        return (coll, id_, obj)

    def hosts(self) -> dict[str, dict[str, Any]]:
        from vxnet.services.host_view import host_entry
        return {a["host"]: host_entry(a) for a in self.agents.values()}  # type: ignore[misc]


def _assert_agrees(index: ViewIndex, world: RandomWorld, held: dict[str, dict[str, Any]]) -> None:
    for h in index.members:
        want = full_view(world.objects, world.hosts(), h)
        assert held[h] == want, f"host {h}: incremental view differs from full recompute"
        assert index.snapshot(h) == want
        _assert_port_list(index, h, want)
    _assert_holders(index, world)


def _assert_port_list(index: ViewIndex, h: str, want: dict[str, Any]) -> None:
    """`snapshot_items`' port ids (joined from the index's sets, not from a set of the view's
    ports): each of the view's ports once, the ones bound to `h` first, `own` of them."""
    (ids, own), = [(ids, own) for k, ids, _, own in index.snapshot_items(h) if k == "ports"]
    assert len(ids) == len(set(ids)) and set(ids) == set(want["ports"]), f"host {h}: snapshot_items ports"
    assert [i for i in ids if want["ports"][i].get("binding:host_id") == h] == ids[:own], f"host {h}: own ports"


def _assert_holders(index: ViewIndex, world: RandomWorld) -> None:
    """`holders` answers, for every view key and every id a host holds or an object has, the
    hosts whose member ids hold it, whether the index keeps it (most keys) or derives it
    (ports); a port's holders and `in` a host's port members (both derived) against the full
    scan's views instead."""
    views = {h: full_view(world.objects, world.hosts(), h) for h in index.members}
    for k in VIEW_KEYS:
        ids = {i for mem in index.members.values() for i in mem[k]} | set(world.objects.get(k, ()))
        ids |= {a["host"] for a in world.agents.values()} if k == "hosts" else set()
        for i in ids | {"nothing-here"}:
            if k == "ports":
                want = {h for h, v in views.items() if i in v["ports"]}
                assert {h for h, mem in index.members.items() if i in mem[k]} == want, f"members of ports/{i}"
            else:
                want = {h for h, mem in index.members.items() if i in mem[k]}
            got = index.holders(k, i)
            assert set(got) == want and len(got) == len(want), f"holders of {k}/{i}"


@pytest.mark.parametrize("seed", range(40))
def test_incremental_views_equal_full_recompute(seed: int) -> None:
    world = RandomWorld(seed)
    index = ViewIndex()
    held: dict[str, dict[str, Any]] = {}
    for h in ("h1", "h2", "h9"):  # h9 never registers: it is tracked because it subscribed
        index.track(h)
        held[h] = index.snapshot(h)
    messages = 0
    for step in range(400):
        batch = [world.change() for _ in range(world.rnd.choice([1, 1, 1, 2, 3]))]
        out = index.apply(batch)
        for h in index.members:
            if h not in held:  # newly registered: starts from a snapshot taken now
                held[h] = index.snapshot(h)
                continue
            if h in out:
                before = copy.deepcopy(held[h])
                wire = json.loads(json.dumps(out[h].wire()))
                apply_update(held[h], wire["put"], wire["delete"])
                assert held[h] != before, f"step {step}: host {h} got a message that changes nothing"
                messages += 1
        _assert_agrees(index, world, held)
    assert messages > 100  # the history really moved views around
    assert {"h3", "h4", "gw1"} & set(index.members)  # registration starts tracking


def test_full_view_of_a_small_topology() -> None:
    """The rules of the view, spelled out on a hand-made topology."""
    p = lambda pid, net, host, owner="compute:nova", dev="vm", sgs=(): {
        "id": pid, "network_id": net, "binding:host_id": host, "device_owner": owner, "device_id": dev,
        "security_groups": list(sgs)}
    objects = {
        "networks": {n: {"id": n, "router:external": n == "ext"} for n in ("a", "b", "c", "ext")},
        "subnets": {"sa": {"id": "sa", "network_id": "a"}, "sb": {"id": "sb", "network_id": "b"},
                    "sc": {"id": "sc", "network_id": "c"}},
        "ports": {
            "pa1": p("pa1", "a", "h1", sgs=["web"]), "pa2": p("pa2", "a", "h2"),
            "ra": p("ra", "a", "", "network:router_interface", "r"),
            "rb": p("rb", "b", "", "network:router_interface", "r"),
            "pb": p("pb", "b", "h3"), "pc": p("pc", "c", "h4", sgs=["db"]),
            "gwp": p("gwp", "ext", "", "network:router_gateway", "r"),
        },
        "routers": {"r": {"id": "r", "external_gateway_info": {"network_id": "ext"}}},
        "floatingips": {"f1": {"id": "f1", "port_id": "pa1"}, "f2": {"id": "f2", "port_id": "pc"}},
        "security_groups": {"web": {"id": "web"}, "db": {"id": "db"}},
        "security_group_rules": {"w1": {"id": "w1", "security_group_id": "web", "remote_group_id": "db"},
                                 "d1": {"id": "d1", "security_group_id": "db", "remote_group_id": None}},
    }
    hosts = {h: {"host": h, "underlay_ip": ip, "alive": True, "gateway": h == "gw"}
             for h, ip in (("h1", "198.51.100.1"), ("h2", "198.51.100.2"), ("h3", "198.51.100.3"),
                           ("h4", "198.51.100.4"), ("gw", "198.51.100.9"))}
    v1 = full_view(objects, hosts, "h1")
    assert set(v1["networks"]) == {"a", "b"}  # its network and the one behind router r
    assert set(v1["subnets"]) == {"sa", "sb"}
    assert set(v1["ports"]) == {"pa1", "pa2", "ra", "rb", "pb", "pc"}  # pc: member of remote group db
    assert set(v1["routers"]) == {"r"}
    assert set(v1["floatingips"]) == {"f1"}
    assert set(v1["security_groups"]) == {"web"} and set(v1["security_group_rules"]) == {"w1"}
    assert set(v1["hosts"]) == {"h1", "h2", "h3", "h4", "gw"}   # gateway hosts: in every view
    assert set(full_view(objects, hosts, "h4")["hosts"]) == {"h4", "gw"}
    v4 = full_view(objects, hosts, "h4")
    assert set(v4["networks"]) == {"c"} and set(v4["ports"]) == {"pc"} and set(v4["routers"]) == set()
    assert set(v4["floatingips"]) == {"f2"} and set(v4["security_group_rules"]) == {"d1"}
    gw = full_view(objects, hosts, "gw")
    assert set(gw["networks"]) == {"a", "b", "ext"} and set(gw["routers"]) == {"r"}
    assert set(gw["floatingips"]) == {"f1", "f2"} and "gwp" in gw["ports"]
    assert full_view(objects, hosts, "nobody") == empty_view()


def test_status_change_reaches_only_the_ports_own_host() -> None:
    """A port's status change is one put to the port's own host; the other hosts holding the
    port are shown it without status fields (`project`), so they get nothing."""
    index = ViewIndex()
    objects: dict[str, dict[str, dict[str, Any]]] = {"networks": {}, "ports": {}}
    for n in range(50):
        objects["networks"][f"n{n}"] = {"id": f"n{n}"}
        for h in range(4):
            pid = f"p{n}-{h}"
            objects["ports"][pid] = {"id": pid, "network_id": f"n{n}", "binding:host_id": f"host{n}-{h}",
                                     "device_owner": "compute:nova", "device_id": "vm", "security_groups": []}
    index.load(objects, {})
    for n in range(50):
        for h in range(4):
            index.track(f"host{n}-{h}")
    port = dict(objects["ports"]["p7-2"], status="ACTIVE", revision_number=2, updated_at="2026-01-01T00:00:01Z")
    out = index.apply([("ports", "p7-2", port)])
    assert set(out) == {"host7-2"}
    assert out["host7-2"].put == {"ports": {"p7-2": port}} and not out["host7-2"].delete
    assert "status" not in index.snapshot("host7-0")["ports"]["p7-2"]
    assert index.snapshot("host7-2")["ports"]["p7-2"]["status"] == "ACTIVE"


def test_agent_heartbeat_rewrite_is_silent() -> None:
    """Rewriting an agent record's heartbeat time changes no view; its underlay IP or
    liveness reaches every host whose view shows that host."""
    index = ViewIndex()
    port = {"id": "p", "network_id": "n", "binding:host_id": "h2", "device_owner": "compute:nova",
            "device_id": "vm", "security_groups": []}
    mine = dict(port, id="q", **{"binding:host_id": "h1"})
    rec = {"id": "a2", "host": "h2", "alive": True, "heartbeat_timestamp": "2026-01-01 00:00:00",
           "configurations": {"underlay_ip": "198.51.100.2", "gateway": False}}
    index.load({"ports": {"p": port, "q": mine}, "networks": {"n": {"id": "n"}}}, {"a2": rec})
    index.track("h1")
    index.track("h3")
    assert index.apply([("agents", "a2", dict(rec, heartbeat_timestamp="2026-01-01 00:00:10"))]) == {}
    out = index.apply([("agents", "a2", dict(rec, alive=False))])
    assert set(out) == {"h1", "h2"} and out["h1"].put == {"hosts": {"h2": {
        "host": "h2", "underlay_ip": "198.51.100.2", "alive": False, "gateway": False}}}


# --- part 2: the stream over HTTP ---------------------------------------------------------

AGENT = User("vxnet-agent", "vxnet-agent-pw", "service", ("service",))


def start_agent_server(db_path: str | None = None, port: int | None = None, store: SqliteStore | None = None,
                       **config: Any) -> ServerHandle:
    """conftest.start_server with config overrides (its USERS include the agent user AGENT)."""
    port = port or free_port()
    assert AGENT in USERS
    cfg = Config(listen=f"127.0.0.1:{port}", users=USERS, **config)
    return start_server(db_path or ":memory:", config=cfg, port=port, store=store)


@pytest.fixture
def srv(tmp_path) -> Iterator[ServerHandle]:
    """No test here is about liveness, and the hosts they register never heartbeat: with the
    default down time (15 s) a loaded machine let every host die mid-test, and each death is an
    update in the view of every host on its networks (a fan-out count saw 24 updates for 20)."""
    h = start_agent_server(os.path.join(tmp_path, "vxnet.db"), agent_down_time=3600)
    yield h
    h.stop()


def agent_client(h: ServerHandle) -> httpx.Client:
    tok = get_token(h.url, AGENT.name, AGENT.password, AGENT.project)
    return http.client(base_url=h.url + "/v2.0/vxnet", headers={"X-Auth-Token": tok}, timeout=30)


class StreamReader:
    """Reads one host's view stream in a thread; lines are kept with their arrival time."""

    def __init__(self, h: ServerHandle, host: str, since: int | None = None, epoch: str | None = None) -> None:
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self.cond = threading.Condition()
        self._client = agent_client(h)
        params = {} if since is None else {"since": str(since)}
        if epoch is not None:
            params["epoch"] = epoch
        self._cm = self._client.stream("GET", f"/hosts/{host}/view", params=params,
                                       timeout=httpx.Timeout(30, read=None))
        self.response = self._cm.__enter__()
        assert self.response.status_code == 200
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for line in self.response.iter_lines():
                if line:
                    with self.cond:
                        self.lines.append((time.perf_counter(), json.loads(line)))
                        self.cond.notify_all()
        except (httpx.HTTPError, RuntimeError):
            pass

    def wait(self, pred: Any, timeout: float = 10) -> tuple[float, dict[str, Any]]:
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for t, m in self.lines:
                    if pred(m):
                        return t, m
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError("no matching stream line")
                self.cond.wait(left)

    def close(self) -> None:
        from vxnet.agent.client import _shutdown
        _shutdown(self.response)
        self.response.close()
        self._client.close()
        self._thread.join(5)
        assert not self._thread.is_alive()


def _port(net: str, host: str, pid: str | None = None, **kw: Any) -> dict[str, Any]:
    return {"id": pid or str(uuid.uuid4()), "network_id": net, "binding:host_id": host,
            "device_owner": "compute:nova", "device_id": "vm", "security_groups": [],
            "mac_address": "fa:16:3e:00:00:01", "fixed_ips": [], "status": "DOWN", **kw}


def _put(h: ServerHandle, coll: str, obj: dict[str, Any]) -> int:
    return store_put(h.store, f"/vxnet/res/{coll}/{obj['id']}", json.dumps(obj))


def test_stream_snapshot_updates_and_isolation(srv: ServerHandle) -> None:
    c = agent_client(srv)
    for host, ip in (("hv1", "198.51.100.1"), ("hv2", "198.51.100.2"), ("hv3", "198.51.100.3")):
        r = c.post(f"/hosts/{host}/register", json={"underlay_ip": ip, "gateway": False})
        assert r.status_code == 200, r.text
    net = srv.api("alice").post("/networks", json={"network": {"name": "n1"}}).json()["network"]
    _put(srv, "ports", _port(net["id"], "hv1", "p-hv1"))
    s1, s2, s3 = StreamReader(srv, "hv1"), StreamReader(srv, "hv2"), StreamReader(srv, "hv3")
    _, snap = s1.wait(lambda m: m["type"] == "snapshot")
    assert set(snap["view"]["ports"]) == {"p-hv1"} and set(snap["view"]["networks"]) == {net["id"]}
    assert snap["view"]["host"]["underlay_ip"] == "198.51.100.1"
    assert snap["view"]["hosts"]["hv1"]["alive"] is True
    _, snap2 = s2.wait(lambda m: m["type"] == "snapshot")
    assert snap2["view"]["ports"] == {}
    # a port of hv2 on the same network: hv1 and hv2 see it, hv3 hears nothing
    rev = _put(srv, "ports", _port(net["id"], "hv2", "p-hv2"))
    _, u1 = s1.wait(lambda m: m["type"] == "update" and m["revision"] == rev)
    assert set(u1["put"]["ports"]) == {"p-hv2"} and "hv2" in u1["put"]["hosts"]
    _, u2 = s2.wait(lambda m: m["type"] == "update" and m["revision"] == rev)
    assert set(u2["put"]["networks"]) == {net["id"]}
    # the move of p-hv2 to hv3: hv2 loses the network, hv3 gains it
    rev2 = _put(srv, "ports", _port(net["id"], "hv3", "p-hv2"))
    _, u2b = s2.wait(lambda m: m.get("revision") == rev2)
    assert set(u2b["delete"]["ports"]) == {"p-hv1", "p-hv2"} and u2b["delete"]["networks"] == [net["id"]]
    s3.wait(lambda m: m.get("revision") == rev2)
    assert [m for _, m in s3.lines if m["type"] == "update" and m["revision"] < rev2] == []
    for s in (s1, s2, s3):
        s.close()
    c.close()


def test_stream_resume_and_compacted_since(srv: ServerHandle) -> None:
    c = agent_client(srv)
    assert c.post("/hosts/hv1/register", json={"underlay_ip": "198.51.100.1"}).status_code == 200
    net = srv.api("admin").post("/networks", json={"network": {"name": "n"}}).json()["network"]
    s = StreamReader(srv, "hv1")
    _, snap = s.wait(lambda m: m["type"] == "snapshot")
    s.close()
    # changes while disconnected: resuming from the snapshot's revision replays them, no snapshot
    r1 = _put(srv, "ports", _port(net["id"], "hv1", "pa"))
    r2 = _put(srv, "ports", _port(net["id"], "elsewhere", "pb"))
    r3 = _put(srv, "ports", _port(net["id"], "hv1", "pa", status="ACTIVE"))
    s = StreamReader(srv, "hv1", since=snap["revision"])
    s.wait(lambda m: m.get("revision") == r3)
    types = [m["type"] for _, m in s.lines]
    assert "snapshot" not in types
    revs = [m["revision"] for _, m in s.lines if m["type"] == "update"]
    assert revs == [r1, r2, r3]
    view = copy.deepcopy(snap["view"])
    for _, m in s.lines:
        if m["type"] == "update":
            apply_update(view, m["put"], m["delete"])
    assert view["ports"]["pa"]["status"] == "ACTIVE" and "pb" in view["ports"]
    s.close()
    # a revision older than what the server can replay: a snapshot first
    s = StreamReader(srv, "hv1", since=1)
    _, first = s.wait(lambda m: True)
    assert first["type"] == "snapshot" and set(first["view"]["ports"]) == {"pa", "pb"}
    s.close()
    # a revision from the future (another store): a snapshot too
    s = StreamReader(srv, "hv1", since=10**9)
    _, first = s.wait(lambda m: True)
    assert first["type"] == "snapshot"
    s.close()
    c.close()


def test_stream_needs_service_or_admin(srv: ServerHandle) -> None:
    r = srv.api("alice").get("/vxnet/hosts/hv1/view")
    assert r.status_code == 403 and r.json()["NeutronError"]["type"] == "PolicyNotAuthorized"
    r = http.get(srv.url + "/v2.0/vxnet/hosts/hv1/view")
    assert r.status_code == 401
    r = agent_client(srv).get("/hosts/hv1/view", params={"since": "abc"})
    assert r.status_code == 400


def test_ping_on_silence(tmp_path) -> None:
    from vxnet.services import view_hub
    old = view_hub.PING_INTERVAL
    view_hub.PING_INTERVAL = 0.3
    h = start_agent_server(os.path.join(tmp_path, "db"))
    try:
        s = StreamReader(h, "quiet")
        _, ping = s.wait(lambda m: m["type"] == "ping", timeout=5)
        assert ping["revision"] >= 0
        s.close()
    finally:
        view_hub.PING_INTERVAL = old
        h.stop()


@pytest.mark.slow
def test_latency_port_write_to_owner_stream(srv: ServerHandle) -> None:
    """Time from a port's store write to its line on the owning host's stream, while an
    unrelated host's stream stays silent."""
    c = agent_client(srv)
    for i in range(20):
        c.post(f"/hosts/hv{i}/register", json={"underlay_ip": f"198.51.100.{i + 1}"})
    nets = [srv.api("admin").post("/networks", json={"network": {"name": f"n{i}"}}).json()["network"]["id"]
            for i in range(20)]
    for i in range(20):  # 20 hosts, one network each, 10 ports per host
        for j in range(10):
            _put(srv, "ports", _port(nets[i], f"hv{i}", f"p{i}-{j}"))
    owner, other = StreamReader(srv, "hv3"), StreamReader(srv, "hv4")
    owner.wait(lambda m: m["type"] == "snapshot")
    other.wait(lambda m: m["type"] == "snapshot")
    base = len(other.lines)
    samples = []
    for k in range(300):
        status = "ACTIVE" if k % 2 == 0 else "DOWN"
        pid = f"p3-{k % 10}" if k % 3 else f"new-{k}"  # status flips and new ports
        t0 = time.perf_counter()
        rev = _put(srv, "ports", _port(nets[3], "hv3", pid, status=status, description=f"k{k}"))
        t1, _ = owner.wait(lambda m, rev=rev: m.get("revision") == rev)
        samples.append(t1 - t0)
    samples.sort()
    p50 = statistics.median(samples) * 1000
    p99 = samples[int(len(samples) * 0.99) - 1] * 1000
    print(f"\nport write -> owner stream line: p50 {p50:.2f} ms, p99 {p99:.2f} ms (n={len(samples)})")
    assert p50 < 50
    # Through the API: POST /ports (validation, IPAM, transaction) until the owner's line.
    admin = srv.api("admin")
    net = admin.get(f"/networks/{nets[3]}").json()["network"]
    admin.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.64.3.0/24", "ip_version": 4}})
    api_samples = []
    for k in range(100):
        t0 = time.perf_counter()
        r = admin.post("/ports", json={"port": {"network_id": net["id"], "binding:host_id": "hv3",
                                                "project_id": net["project_id"], "name": f"api{k}"}})
        assert r.status_code == 201, r.text
        pid = r.json()["port"]["id"]
        t1, _ = owner.wait(lambda m, pid=pid: m["type"] == "update" and pid in m["put"].get("ports", {}))
        api_samples.append(t1 - t0)
    api_samples.sort()
    print(f"POST /ports -> owner stream line: p50 {statistics.median(api_samples) * 1000:.2f} ms, "
          f"p99 {api_samples[98] * 1000:.2f} ms (n={len(api_samples)})")
    assert [m for _, m in other.lines[base:] if m["type"] != "ping"] == []
    owner.close()
    other.close()


def _reference(store: SqliteStore, host: str) -> dict[str, Any]:
    from vxnet.services.host_view import COLLECTIONS, host_entry
    kvs, _ = store.range("/vxnet/res/")
    objects: dict[str, dict[str, Any]] = {c: {} for c in COLLECTIONS}
    hosts: dict[str, Any] = {}
    for kv in kvs:
        coll, _, id_ = kv.key[len("/vxnet/res/"):].partition("/")
        if coll in objects:
            objects[coll][id_] = json.loads(kv.value)
        elif coll == "agents":
            rec = json.loads(kv.value)
            hosts[rec["host"]] = host_entry(rec)
    return full_view(objects, hosts, host)


def _held(reader: StreamReader) -> dict[str, Any]:
    """The view an agent holds after every line received so far."""
    view: dict[str, Any] = {}
    for _, m in list(reader.lines):
        if m["type"] == "snapshot":
            view = copy.deepcopy(m["view"])
            del view["host"]
        elif m["type"] == "update":
            apply_update(view, m["put"], m["delete"])
    return view


def test_views_through_the_resource_apis(srv: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    """Networks, subnets, ports, routers, gateways, floating IPs and groups made through the
    API: every agent's view equals the full recompute, after every step."""
    from vxnet.services import view_hub
    monkeypatch.setattr(view_hub, "PING_INTERVAL", 0.3)
    c = agent_client(srv)
    for host, ip, gw in (("hv1", "198.51.100.1", False), ("hv2", "198.51.100.2", False),
                         ("hv3", "198.51.100.3", False), ("gw1", "198.51.100.9", True)):
        assert c.post(f"/hosts/{host}/register", json={"underlay_ip": ip, "gateway": gw}).status_code == 200
    readers = {h: StreamReader(srv, h) for h in ("hv1", "hv2", "hv3", "gw1")}
    admin, alice = srv.api("admin"), srv.api("alice")

    def settle() -> None:
        rev = srv.store.revision()
        for h, r in readers.items():
            # an update at `rev` or later, or a ping saying "nothing for you up to here"
            r.wait(lambda m, rev=rev: m.get("revision", -1) >= rev, timeout=8)
            # On a loaded machine the last update can trail that line a little: the view must
            # converge to the full recompute within seconds (a missed update never does).
            deadline = time.time() + 5
            while _held(r) != _reference(srv.store, h) and time.time() < deadline:
                time.sleep(0.05)
            assert _held(r) == _reference(srv.store, h), f"view of {h} differs from the full recompute"

    def ok(r: httpx.Response) -> dict[str, Any]:
        assert r.status_code in (200, 201), r.text
        return r.json()

    ext = ok(admin.post("/networks", json={"network": {"name": "ext", "router:external": True}}))["network"]
    ok(admin.post("/subnets", json={"subnet": {"network_id": ext["id"], "cidr": "203.0.113.0/24",
                                               "ip_version": 4}}))
    n1 = ok(alice.post("/networks", json={"network": {"name": "a"}}))["network"]
    s1 = ok(alice.post("/subnets", json={"subnet": {"network_id": n1["id"], "cidr": "100.64.1.0/24",
                                                    "ip_version": 4}}))["subnet"]
    n2 = ok(alice.post("/networks", json={"network": {"name": "b"}}))["network"]
    s2 = ok(alice.post("/subnets", json={"subnet": {"network_id": n2["id"], "cidr": "100.64.2.0/24",
                                                    "ip_version": 4}}))["subnet"]
    p1 = ok(admin.post("/ports", json={"port": {"network_id": n1["id"], "binding:host_id": "hv1",
                                                "project_id": n1["project_id"]}}))["port"]
    p2 = ok(admin.post("/ports", json={"port": {"network_id": n2["id"], "binding:host_id": "hv2",
                                                "project_id": n2["project_id"]}}))["port"]
    settle()
    assert set(_held(readers["hv1"])["ports"]) >= {p1["id"]} and p2["id"] in _held(readers["hv1"])["ports"]
    # p2 is in hv1's view only through the default group's remote-group rule; hv3 sees nothing
    assert _held(readers["hv3"])["ports"] == {}
    r = ok(alice.post("/routers", json={"router": {"name": "r"}}))["router"]
    ok(alice.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": s1["id"]}))
    ok(alice.put(f"/routers/{r['id']}/add_router_interface", json={"subnet_id": s2["id"]}))
    settle()
    v1 = _held(readers["hv1"])
    assert set(v1["routers"]) == {r["id"]} and {n1["id"], n2["id"]} <= set(v1["networks"])
    assert _held(readers["gw1"])["routers"] == {}  # no gateway yet
    ok(alice.put(f"/routers/{r['id']}", json={"router": {"external_gateway_info": {"network_id": ext["id"]}}}))
    fip = ok(alice.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"],
                                                             "port_id": p1["id"]}}))["floatingip"]
    settle()
    assert set(_held(readers["gw1"])["routers"]) == {r["id"]} and fip["id"] in _held(readers["gw1"])["floatingips"]
    assert set(_held(readers["hv1"])["floatingips"]) == {fip["id"]} and _held(readers["hv2"])["floatingips"] == {}
    # live migration of p1 to hv3, status reports, then deletions
    ok(admin.put(f"/ports/{p1['id']}", json={"port": {"binding:host_id": "hv3"}}))
    ok(c.post("/hosts/hv3/ports-status", json={"ACTIVE": [p1["id"]]}))
    settle()
    assert p1["id"] in _held(readers["hv3"])["ports"] and _held(readers["hv3"])["ports"][p1["id"]]["status"] == "ACTIVE"
    assert _held(readers["hv1"])["ports"] == {}
    ok(alice.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": None}}))
    ok(alice.put(f"/routers/{r['id']}/remove_router_interface", json={"subnet_id": s2["id"]}))
    assert alice.delete(f"/ports/{p2['id']}").status_code == 204
    settle()
    # QoS policies reach every host, rules embedded; a rule change is one put of the policy
    qp = ok(admin.post("/qos/policies", json={"policy": {"name": "q", "shared": True}}))["policy"]
    ok(admin.post(f"/qos/policies/{qp['id']}/bandwidth_limit_rules", json={"bandwidth_limit_rule": {"max_kbps": 100}}))
    ok(alice.put(f"/ports/{p1['id']}", json={"port": {"qos_policy_id": qp["id"]}}))
    settle()
    for h in readers:
        assert _held(readers[h])["qos_policies"][qp["id"]]["rules"][0]["max_kbps"] == 100
    assert _held(readers["hv3"])["ports"][p1["id"]]["qos_policy_id"] == qp["id"]
    ok(alice.put(f"/ports/{p1['id']}", json={"port": {"qos_policy_id": None}}))
    assert admin.delete(f"/qos/policies/{qp['id']}").status_code == 204
    settle()
    assert all(_held(rd)["qos_policies"] == {} for rd in readers.values())
    for rd in readers.values():
        rd.close()


def test_replay_log_is_bounded(srv: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay logs keep at most LOG_BYTES: a `since` older than what is kept gets a
    snapshot, a recent one still resumes."""
    from vxnet.services import view_hub
    monkeypatch.setattr(view_hub, "LOG_BYTES", 20_000)
    c = agent_client(srv)
    assert c.post("/hosts/hv1/register", json={"underlay_ip": "198.51.100.1"}).status_code == 200
    net = srv.api("admin").post("/networks", json={"network": {"name": "n"}}).json()["network"]
    first = _put(srv, "ports", _port(net["id"], "hv1", "p0"))
    revs = [_put(srv, "ports", _port(net["id"], "hv1", f"p{i % 5}", description="x" * 200 + str(i)))
            for i in range(200)]  # ~100 KB of lines for hv1
    s = StreamReader(srv, "hv1", since=revs[-3])  # recent: replayed
    s.wait(lambda m: m.get("revision") == revs[-1])
    assert [m["type"] for _, m in s.lines][:2] == ["update", "update"]
    s.close()
    s = StreamReader(srv, "hv1", since=first)  # evicted from the log: snapshot
    _, m = s.wait(lambda m: True)
    assert m["type"] == "snapshot" and m["revision"] >= revs[-1]
    s.close()
    hub = srv._server.config.app.state.vxnet.hub
    assert hub._log_bytes <= 20_000


def test_stream_metrics(srv: ServerHandle) -> None:
    s = StreamReader(srv, "hv1")
    s.wait(lambda m: m["type"] == "snapshot")
    _put(srv, "ports", _port("net-x", "hv1", "p1"))
    s.wait(lambda m: m["type"] == "update")
    text = http.get(srv.url + "/metrics", headers={"X-Auth-Token": srv.token("admin")}).text
    assert "vxnet_view_streams 1.0" in text and "vxnet_view_tracked_hosts 1.0" in text
    count = [line for line in text.splitlines() if line.startswith("vxnet_view_fanout_seconds_count")]
    assert count and float(count[0].split()[1]) >= 1
    s.close()


def test_index_failure_falls_back_to_full_reload(srv: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the incremental path ever raises, the hub reloads everything and every open stream
    gets a fresh snapshot that includes the change; later changes flow as before."""
    s = StreamReader(srv, "hv1")
    s.wait(lambda m: m["type"] == "snapshot")
    real = ViewIndex.apply
    calls = {"n": 0}

    def flaky(self: ViewIndex, changes: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected bug")
        return real(self, changes)

    monkeypatch.setattr(ViewIndex, "apply", flaky)
    rev = _put(srv, "ports", _port("net-x", "hv1", "p1"))
    _, snap = s.wait(lambda m: m["type"] == "snapshot" and m["revision"] >= rev)
    assert set(snap["view"]["ports"]) == {"p1"}
    rev2 = _put(srv, "ports", _port("net-x", "hv1", "p2"))
    _, upd = s.wait(lambda m: m.get("revision") == rev2)
    assert upd["type"] == "update" and set(upd["put"]["ports"]) == {"p2"}
    assert _held(s) == _reference(srv.store, "hv1")
    s.close()


@pytest.mark.slow
def test_fanout_reaches_exactly_the_hosts_that_care(srv: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    """40 agents streaming, 4 hosts per network: each port change (a field agents compute on:
    a description would reach the port's own host alone) reaches exactly the 4 hosts on its
    network, in about a millisecond, and no other stream hears of it."""
    from vxnet.services import view_hub
    monkeypatch.setattr(view_hub, "PING_INTERVAL", 0.5)
    c = agent_client(srv)
    n = 40
    for i in range(n):
        assert c.post(f"/hosts/hv{i}/register", json={"underlay_ip": f"198.51.100.{i + 1}"}).status_code == 200
    admin = srv.api("admin")
    nets = [admin.post("/networks", json={"network": {"name": f"n{i}"}}).json()["network"]["id"]
            for i in range(n // 4)]
    for i in range(n):
        for j in range(3):
            _put(srv, "ports", _port(nets[i // 4], f"hv{i}", f"p{i}-{j}"))
    readers = [StreamReader(srv, f"hv{i}") for i in range(n)]
    for r in readers:
        r.wait(lambda m: m["type"] == "snapshot")
    base = [len(r.lines) for r in readers]
    expect = [0] * n
    lat = []
    for k in range(200):
        i = (k * 7) % n
        t0 = time.perf_counter()
        rev = _put(srv, "ports", _port(nets[i // 4], f"hv{i}", f"p{i}-{k % 3}", device_id=f"vm-{k}"))
        t1, _ = readers[i].wait(lambda m, rev=rev: m.get("revision") == rev)
        lat.append(t1 - t0)
        for x in range(4 * (i // 4), 4 * (i // 4) + 4):
            expect[x] += 1
    last = rev
    for r in readers:  # every stream has caught up (an update or a ping at or after the last change)
        r.wait(lambda m: m.get("revision", -1) >= last, timeout=10)
    got = [sum(1 for _, m in r.lines[b:] if m["type"] == "update") for r, b in zip(readers, base, strict=True)]
    assert got == expect
    lat.sort()
    print(f"\n{n} open streams: owner latency p50 {statistics.median(lat) * 1000:.2f} ms, "
          f"p99 {lat[int(len(lat) * 0.99) - 1] * 1000:.2f} ms")
    for r in readers:
        r.close()


def test_long_replay_becomes_a_snapshot(srv: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume that would replay more lines than a stream may queue gets a snapshot."""
    from vxnet.services import view_hub
    monkeypatch.setattr(view_hub, "LOG_LENGTH", 10)
    c = agent_client(srv)
    assert c.post("/hosts/hv1/register", json={"underlay_ip": "198.51.100.1"}).status_code == 200
    since = srv.store.revision()
    revs = [_put(srv, "ports", _port("net-x", "hv1", f"p{i}")) for i in range(5)]
    s = StreamReader(srv, "hv1", since=since)  # 5 lines: replayed
    s.wait(lambda m: m.get("revision") == revs[-1])
    assert [m["type"] for _, m in s.lines] == ["update"] * 5
    s.close()
    revs += [_put(srv, "ports", _port("net-x", "hv1", f"q{i}")) for i in range(10)]
    s = StreamReader(srv, "hv1", since=since)  # 15 lines: a snapshot instead
    _, first = s.wait(lambda m: True)
    assert first["type"] == "snapshot" and len(first["view"]["ports"]) == 15
    s.close()
