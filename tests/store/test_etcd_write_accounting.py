"""What one port create through the API costs on etcd, counted (no timing): requests by gateway
method, compares and keys per txn, bytes each way, watch events each server decodes, leases.

Two in-process API servers (each its own `EtcdStore` with its read mirror) on a real 3-member
etcd; a member creates ports through server A over HTTP, one after another (so there are no
reruns, and every count is exact), while server B only watches. Each store's transport is
wrapped to count its calls (`Channels.call`) and each mirror's event decoding (`Mirror._apply`).
The per-create table is printed (`pytest -s`: docs/benchmarks.md, "etcd write path") and the
budget asserted, so a change that adds a round trip, a key or a decoded event per create fails
here.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ServerHandle, start_server
from tests.support.etcd import EtcdCluster
from vxnet.store import open_store
from vxnet.store.etcd_store import EtcdStore

CREATES = 40


def _kind(key: str) -> str:
    """A key's family: `res/ports`, `ipam`, `mac`, `quota-usage`, ..."""
    if key.startswith("/vxnet-txn/"):
        return "txn marker"
    parts = key.removeprefix("/vxnet/").split("/")
    return "/".join(parts[:2]) if parts[0] in ("res", "meta") else parts[0]


class Counter:
    """Counts one store's etcd calls and its mirror's decoded events."""

    def __init__(self, store: EtcdStore) -> None:
        self.c: collections.Counter[str] = collections.Counter()
        rpc, mirror = store._rpc, store._mirror
        assert mirror is not None
        call, apply = rpc.call, mirror._apply

        def counting_call(endpoint: str, method: str, request: Any) -> Any:
            data = call(endpoint, method, request)
            self.c[f"call {method}"] += 1
            self.c["bytes sent"] += request.ByteSize()
            self.c["bytes received"] += data.ByteSize()
            if method == "Txn":
                self.c["txn compares"] += len(request.compare)
                for cmp in request.compare:
                    self.c[f"compare {_kind(cmp.key.decode())}"] += 1
                for op in request.success:
                    if op.HasField("request_put"):
                        self.c["txn puts"] += 1
                        self.c[f"put {_kind(op.request_put.key.decode())}"] += 1
                        self.c["put value bytes"] += len(op.request_put.value)
                    else:
                        self.c["txn deletes"] += 1
            return data

        def counting_apply(events: Any) -> None:
            self.c["watch messages"] += 1
            self.c["watch events"] += len(events)
            for raw in events:
                self.c["watch bytes"] += raw.ByteSize()
                self.c[f"event {_kind(raw.kv.key.decode())}"] += 1
            apply(events)

        rpc.call = counting_call  # type: ignore[method-assign]
        mirror._apply = counting_apply  # type: ignore[method-assign]

    def snapshot(self) -> collections.Counter[str]:
        return collections.Counter(self.c)


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerHandle, ServerHandle]]:
    cluster = EtcdCluster(3, prefix="vxt-acct")
    handles: list[ServerHandle] = []
    try:
        for name in ("a", "b"):
            store = open_store(cluster.url() + "?cache=1")
            handles.append(start_server(os.path.join(tmp_path_factory.mktemp(name), "x.db"), store=store))
        yield handles[0], handles[1]
    finally:
        for h in handles:
            h.stop()
        cluster.stop()


def network_with_subnet(api: Any, name: str, cidr: str) -> dict[str, Any]:
    """A network with one IPv4 subnet (`cidr`), made through the API."""
    net: dict[str, Any] = api.post("/networks", json={"network": {"name": name}}).json()["network"]
    r = api.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": cidr, "ip_version": 4}})
    assert r.status_code == 201, r.text
    return net


def per_create(two_servers: tuple[ServerHandle, ServerHandle]) -> dict[str, dict[str, float]]:
    """{counter: {"A": per create on the handling server, "B": on the other one}}."""
    a, b = two_servers
    ca, cb = Counter(a.store), Counter(b.store)  # type: ignore[arg-type]
    with a.api("alice") as api:
        net = network_with_subnet(api, "acct", "100.64.0.0/16")
        for i in range(3):  # warm-up: the project's default group, quota bases, marker lease
            assert api.post("/ports", json={"port": {"network_id": net["id"], "name": f"w{i}"}}).status_code == 201
        b.store.read_after(a.store.revision())
        b.store.get("/vxnet/meta/epoch")  # B's mirror has everything so far
        a0, b0 = ca.snapshot(), cb.snapshot()
        for i in range(CREATES):
            r = api.post("/ports", json={"port": {"network_id": net["id"], "name": f"p{i}"}})
            assert r.status_code == 201, r.text
        rev = a.store.revision()
    b.store.read_after(rev)
    b.store.get("/vxnet/meta/epoch")  # wait until B has decoded every event of those creates
    a.store.read_after(rev)
    a.store.get("/vxnet/meta/epoch")
    da, db = ca.snapshot() - a0, cb.snapshot() - b0
    out: dict[str, dict[str, float]] = {}
    for key in sorted(set(da) | set(db)):
        out[key] = {"A": da[key] / CREATES, "B": db[key] / CREATES}
    return out


def test_port_create_accounting(two_servers: tuple[ServerHandle, ServerHandle]) -> None:
    table = per_create(two_servers)
    print("\nper port create (A: the handling server, B: the other one)")
    for key, v in table.items():
        print(f"| {key} | {v['A']:.2f} | {v['B']:.2f} |")

    def a(key: str) -> float:
        return table.get(key, {}).get("A", 0.0)

    def b(key: str) -> float:
        return table.get(key, {}).get("B", 0.0)

    # one round trip per create, from the handling server only
    assert a("call Txn") == 1.0
    # besides it only the marker lease, granted every few seconds (services/repo.py)
    assert {k for k, v in table.items() if k.startswith("call ") and v["A"]} <= {"call Txn", "call LeaseGrant"}
    assert a("call LeaseGrant") < 0.5
    assert sum(v["B"] for k, v in table.items() if k.startswith("call ")) == 0.0
    assert a("put res/ports") == 1.0 and a("put ipam") == 1.0 and a("put mac") == 1.0
    # both servers decode the same events (each mirror sees every revision)
    assert a("watch events") == b("watch events") > 0


def test_concurrent_creates_share_transactions(two_servers: tuple[ServerHandle, ServerHandle]) -> None:
    """8 clients over both servers: creates ready at the same time go to etcd together
    (services/txn_batch.py); every port is stored once, with its own IP and MAC."""
    import threading

    a, b = two_servers
    ca, cb = Counter(a.store), Counter(b.store)  # type: ignore[arg-type]
    with a.api("alice") as api:
        net = network_with_subnet(api, "acct-c", "100.65.0.0/16")
    a0, b0 = ca.snapshot(), cb.snapshot()
    per_client = 15
    made: list[dict[str, Any]] = []
    errors: list[str] = []

    def client(k: int) -> None:
        with (a if k % 2 == 0 else b).api("alice") as api:
            for i in range(per_client):
                r = api.post("/ports", json={"port": {"network_id": net["id"], "name": f"c{k}-{i}"}})
                if r.status_code != 201:
                    errors.append(r.text)
                else:
                    made.append(r.json()["port"])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    n = 8 * per_client
    assert len(made) == n
    with a.api("alice") as api:
        stored = [p for p in api.get("/ports", params={"network_id": net["id"]}).json()["ports"]]
    assert sorted(p["id"] for p in stored) == sorted(p["id"] for p in made)
    assert len({p["fixed_ips"][0]["ip_address"] for p in stored}) == n
    assert len({p["mac_address"] for p in stored}) == n
    da, db = ca.snapshot() - a0, cb.snapshot() - b0
    txns = da["call Txn"] + db["call Txn"]
    print("\n8 clients over 2 servers, per create (requests: both servers' sum; watch: each server)")
    for key in sorted(set(da) | set(db)):
        both = da[key] + db[key]
        print(f"| {key} | {(da[key] if key.startswith(('watch', 'event')) else both) / n:.2f} |")
    assert txns < n  # some creates shared a transaction
