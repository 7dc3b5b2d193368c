"""Two `vxnet server` processes on a 3-member etcd cluster (issue 6, must-show):

- killing the etcd leader, which is also the member both servers use, during a stream of
  port creates through both servers loses no acknowledged write (checked through both
  servers' API and in etcd itself), and no IP or MAC is handed out twice;
- 200 concurrent port creates split over the two servers on one /26 give exactly 61 ports
  (64 - network, broadcast, gateway), every other answer a 409 IpAddressGenerationFailure.

Clients retry only where the request may not have been processed: connection errors and 503
(the store's "outcome unknown"). Such a retry can create a second port for one logical write
(the first attempt was applied after all); the test counts those and reports them, since the
API (like Neutron) has no idempotency key; it never lets them share an address.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter

import httpx

from tests.distributed.conftest import Servers, api, leader_name, make_leader, token
from tests.support.etcd import EtcdCluster
from vxnet.services.repo import res_key
from vxnet.store.etcd_store import EtcdStore


def _network(url: str, tok: str, cidr: str, name: str) -> str:
    with api(url, tok) as c:
        net = c.post("/networks", json={"network": {"name": name}})
        assert net.status_code == 201, net.text
        sub = c.post("/subnets", json={"subnet": {"network_id": net.json()["network"]["id"], "cidr": cidr,
                                                  "ip_version": 4}})
        assert sub.status_code == 201, sub.text
        return net.json()["network"]["id"]


def _ports_via(url: str, tok: str, net_id: str) -> list[dict]:
    """Every port of the network through the API, following the pages' next links (a page
    holds at most 1,000)."""
    ports: list[dict] = []
    with api(url, tok) as c:
        params: dict[str, str] | None = {"network_id": net_id}
        path = "/ports"
        while True:
            r = c.get(path, params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            ports += body["ports"]
            nxt = [link["href"] for link in body.get("ports_links", []) if link.get("rel") == "next"]
            if not nxt or not body["ports"]:
                return ports
            path, params = nxt[0], None


def _ports_in_store(cluster: EtcdCluster, net_id: str) -> dict[str, dict]:
    import json

    store = EtcdStore(cluster.endpoints)
    try:
        kvs, _ = store.range(res_key("ports", ""))
    finally:
        store.close()
    ports = (json.loads(kv.value) for kv in kvs)
    return {p["id"]: p for p in ports if p["network_id"] == net_id}


def test_etcd_leader_killed_during_writes_loses_nothing_acknowledged(etcd3: EtcdCluster, servers: Servers) -> None:
    # The victim is both the leader and the member both servers talk to (their first endpoint).
    victim = etcd3.names[0]
    make_leader(etcd3, victim)
    tok = token(servers.urls[0])
    net_id = _network(servers.urls[0], tok, "100.64.16.0/20", "stream")
    acked: dict[str, dict] = {}          # name -> port as acknowledged
    retries: Counter[str] = Counter()    # why a request was sent again
    retried: set[str] = set()            # names whose create was sent more than once
    errors: list[str] = []               # anything else (fails the test)
    stalls: list[float] = []             # per-write latency including retries
    stop = threading.Event()
    lock = threading.Lock()
    seq = itertools.count()

    def writer(url: str) -> None:
        with api(url, tok, timeout=15) as c:
            while not stop.is_set():
                name = f"w{next(seq)}"
                t0 = time.time()
                while True:
                    try:
                        r = c.post("/ports", json={"port": {"network_id": net_id, "name": name}})
                    except httpx.TransportError as e:   # connection-level: retry (outcome may be unknown)
                        with lock:
                            retries[type(e).__name__] += 1
                            retried.add(name)
                        time.sleep(0.1)
                        continue
                    if r.status_code == 503:
                        with lock:
                            retries["503"] += 1
                            retried.add(name)
                        time.sleep(0.1)
                        continue
                    break
                with lock:
                    stalls.append(time.time() - t0)
                    if r.status_code == 201:
                        acked[name] = r.json()["port"]
                    else:
                        errors.append(f"{name}: {r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=writer, args=(servers.urls[i % 2],), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    assert leader_name(etcd3) == victim
    before_kill = len(acked)
    t_kill = time.time()
    etcd3.kill(victim)              # SIGKILL by PID
    time.sleep(4.0)
    stop.set()
    for t in threads:
        t.join(40)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    after_kill = len(acked) - before_kill
    new_leader = leader_name(etcd3)
    print(f"\nkilled etcd leader {victim} (endpoint #{etcd3.names.index(victim)}); new leader {new_leader}; "
          f"{before_kill} writes acked before, {after_kill} in the {time.time() - t_kill:.1f} s after; "
          f"retries {dict(retries)}; slowest write {max(stalls):.2f} s")

    assert not errors, errors[:5]
    assert before_kill > 0 and after_kill > 0, "writes did not continue through the member loss"
    # Every acknowledged write is there, as acknowledged, through both servers and in etcd.
    for url in servers.urls:
        listed = {p["id"]: p for p in _ports_via(url, tok, net_id)}
        for name, p in acked.items():
            assert p["id"] in listed, f"acknowledged port {name} missing via {url}"
            assert listed[p["id"]]["fixed_ips"] == p["fixed_ips"] and listed[p["id"]]["name"] == name
    stored = _ports_in_store(etcd3, net_id)
    assert {p["id"] for p in acked.values()} <= set(stored)
    assert set(stored) == {p["id"] for p in _ports_via(servers.urls[1], tok, net_id)}
    ips = [ip["ip_address"] for p in stored.values() for ip in p["fixed_ips"]]
    macs = [p["mac_address"] for p in stored.values()]
    assert len(ips) == len(set(ips)), "an IP was allocated twice"
    assert len(macs) == len(set(macs)), "a MAC was allocated twice"
    acked_ids = {p["id"] for p in acked.values()}
    extra = [p["name"] for i, p in stored.items() if i not in acked_ids]
    print(f"ports stored {len(stored)}, acknowledged {len(acked)}: {len(extra)} created by an attempt whose "
          f"answer was lost (503 or connection error) and then retried")
    # The member comes back and catches up (the next test uses the full cluster).
    etcd3.start(victim)
    # A port nobody acknowledged can only come from a request the client sent again after a 503
    # or a connection error (the API, like Neutron, has no idempotency key). One that was never
    # sent again would be a write applied twice by the server: `Repo.transact`'s markers and
    # fence (docs/store.md) rule that out, strictly.
    unexplained = sorted(set(extra) - retried)
    etcd3.wait_healthy()
    assert not unexplained, f"unacknowledged ports stored after the leader kill, never retried: {unexplained}"


def test_200_concurrent_creates_over_two_servers_on_a_slash26(etcd3: EtcdCluster, servers: Servers) -> None:
    tok = token(servers.urls[1])
    net_id = _network(servers.urls[1], tok, "100.64.32.0/26", "small")
    n = 200
    barrier = threading.Barrier(n)
    results: list[tuple[int, dict]] = [(0, {})] * n

    def create(i: int) -> None:
        with api(servers.urls[i % 2], tok, timeout=120) as c:
            barrier.wait(30)
            r = c.post("/ports", json={"port": {"network_id": net_id, "name": f"c{i}"}})
            results[i] = (r.status_code, r.json())

    t0 = time.time()
    threads = [threading.Thread(target=create, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    took = time.time() - t0
    codes = Counter(code for code, _ in results)
    print(f"\n200 concurrent creates over 2 servers on a /26: {dict(codes)} in {took:.1f} s")
    assert codes == {201: 61, 409: 139}, codes
    for code, body in results:
        if code == 409:
            assert body["NeutronError"]["type"] == "IpAddressGenerationFailure", body
    made = [body["port"] for code, body in results if code == 201]
    ips = [p["fixed_ips"][0]["ip_address"] for p in made]
    macs = [p["mac_address"] for p in made]
    assert len(set(ips)) == 61 and len(set(macs)) == 61
    # Nothing else exists: the refused creates left no port behind, in the API or in etcd.
    for url in servers.urls:
        assert {p["id"] for p in _ports_via(url, tok, net_id)} == {p["id"] for p in made}
    assert set(_ports_in_store(etcd3, net_id)) == {p["id"] for p in made}
