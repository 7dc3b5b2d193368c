"""Port statuses of more ports than one etcd transaction may hold: a real etcd member with
etcd's default `--max-txn-ops` (128) and an API server on it.

- One agent report setting all of a host's ports ACTIVE at once (a host back after a failure)
  must succeed: the server writes it in transactions that fit, instead of answering 400 forever
  to an agent that retries it forever (its ports would never be ACTIVE).
- A host that dies with that many ACTIVE ports must have all of them DOWN, not none (one
  transaction too large, logged and never retried successfully)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.api.test_host_view import agent_client, start_agent_server
from tests.conftest import ServerHandle
from tests.support.etcd import EtcdCluster
from vxnet.services import agents
from vxnet.store.etcd_store import EtcdStore

ETCD_DEFAULT_MAX_TXN_OPS = 128
PORTS = ETCD_DEFAULT_MAX_TXN_OPS + 12   # a compare and a put each: well over one transaction


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    c = EtcdCluster(1, prefix="vxt-status", max_txn_ops=ETCD_DEFAULT_MAX_TXN_OPS)
    yield c
    c.stop()


@pytest.fixture
def server(cluster: EtcdCluster, request: pytest.FixtureRequest) -> Iterator[ServerHandle]:
    """A server on the cluster; `agent_down_time` from the test's parameter (3600 unless given)."""
    h = start_agent_server(store=EtcdStore(cluster.endpoints),  # type: ignore[arg-type]
                           agent_down_time=getattr(request, "param", 3600))
    yield h
    h.stop()


def _ports_on(srv: ServerHandle, c: httpx.Client, host: str, ip: str) -> tuple[str, list[str]]:
    """(network id, PORTS ports bound to `host`), the host registered and kept alive meanwhile."""
    assert c.post(f"/hosts/{host}/register", json={"underlay_ip": ip}).status_code == 200
    api = srv.api("admin")
    net = api.post("/networks", json={"network": {"name": host}}).json()["network"]
    ids = []
    for i in range(PORTS):
        if i % 5 == 0:   # five creates take far less than a lease (5 s), even on a loaded machine
            assert c.post(f"/hosts/{host}/heartbeat").status_code == 200
        r = api.post("/ports", json={"port": {"network_id": net["id"], "name": f"p{i}", "binding:host_id": host}})
        assert r.status_code == 201, r.text
        ids.append(r.json()["port"]["id"])
    return net["id"], ids


def _statuses(srv: ServerHandle, net_id: str) -> dict[str, str]:
    return {p["id"]: p["status"] for p in srv.api("admin").get("/ports", params={"network_id": net_id}).json()["ports"]}


def test_a_report_larger_than_one_transaction_sets_every_port(server: ServerHandle) -> None:
    assert PORTS > 3 * agents.STATUS_CHUNK  # several transactions
    srv, c = server, agent_client(server)
    net_id, ids = _ports_on(srv, c, "hv1", "198.51.100.1")
    other = srv.api("admin").post("/ports", json={"port": {"network_id": net_id, "binding:host_id": "hv2"}}).json()["port"]

    r = c.post("/hosts/hv1/ports-status", json={"ACTIVE": [*ids, other["id"]]})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["updated"]) == sorted(ids)
    statuses = _statuses(srv, net_id)
    assert {statuses[i] for i in ids} == {"ACTIVE"}
    assert statuses[other["id"]] == "DOWN"   # bound elsewhere: still not this host's to set
    # the same report again changes nothing; DOWN for all of them is one report too
    assert c.post("/hosts/hv1/ports-status", json={"ACTIVE": ids}).json() == {"updated": []}
    r = c.post("/hosts/hv1/ports-status", json={"DOWN": ids})
    assert r.status_code == 200 and sorted(r.json()["updated"]) == sorted(ids)


@pytest.mark.parametrize("server", [5], indirect=True)   # agent_down_time: a 5 s lease
def test_a_dead_host_has_every_port_down(server: ServerHandle) -> None:
    srv, c = server, agent_client(server)
    net_id, ids = _ports_on(srv, c, "hv7", "198.51.100.7")
    r = c.post("/hosts/hv7/ports-status", json={"ACTIVE": ids})
    assert r.status_code == 200 and len(r.json()["updated"]) == PORTS, r.text
    # no more heartbeats: the lease ends and the server declares the host dead
    deadline = time.monotonic() + 60   # an upper bound, never a pass condition
    while time.monotonic() < deadline and set(_statuses(srv, net_id).values()) != {"DOWN"}:
        time.sleep(0.2)
    assert set(_statuses(srv, net_id).values()) == {"DOWN"}
    agent = next(a for a in srv.api("admin").get("/agents").json()["agents"] if a["host"] == "hv7")
    assert agent["alive"] is False
