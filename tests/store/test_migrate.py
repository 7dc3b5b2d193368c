"""`vxnet migrate`: an embedded store moved into a real etcd member keeps every object, and a
server started on etcd serves exactly the same resources (tokens included: the signing key
moves too)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import PASSWORDS, ServerHandle, get_token, start_server
from tests.support import http
from tests.support.etcd import EtcdCluster
from vxnet.services.repo import EPOCH_KEY
from vxnet.store.etcd_store import EtcdStore
from vxnet.store.sqlite_store import SqliteStore

COLLECTIONS = ["networks", "subnets", "ports", "security-groups", "security-group-rules"]


def snapshot(h: ServerHandle) -> dict[str, list[dict]]:
    with h.api("admin") as admin:
        return {c: sorted(admin.get(f"/{c}").json()[c.replace("-", "_")], key=lambda o: o["id"]) for c in COLLECTIONS}


@pytest.fixture
def etcd() -> EtcdCluster:
    cluster = EtcdCluster(1, prefix="vxt-mig")
    yield cluster
    cluster.stop()


def test_migrate_embedded_store_to_etcd(tmp_path, etcd: EtcdCluster) -> None:
    db = os.path.join(tmp_path, "vxnet.db")
    h = start_server(db)
    alice = h.api("alice")
    net = alice.post("/networks", json={"network": {"name": "n1"}}).json()["network"]
    alice.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "192.0.2.0/24", "ip_version": 4}})
    for i in range(5):
        assert alice.post("/ports", json={"port": {"network_id": net["id"], "name": f"p{i}"}}).status_code == 201
    token = h.token("alice")
    # a revoked token (its revocation record lives on a lease) must stay revoked on the new store
    revoked = get_token(h.url, "alice", PASSWORDS["alice"], "tenant-a")
    r = http.delete(h.url + "/identity/v3/auth/tokens", headers={"X-Auth-Token": token, "X-Subject-Token": revoked})
    assert r.status_code == 204, r.text
    before = snapshot(h)
    h.stop()

    cli = [sys.executable, "-m", "vxnet.cli.main", "migrate", "--from", f"sqlite:///{db}", "--to", etcd.url()]
    out = subprocess.run(cli, check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "copied and verified" in out.stdout
    # a second run refuses to overwrite
    again = subprocess.run(cli, check=False, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already holds" in again.stderr

    store = EtcdStore(etcd.endpoints)
    source = SqliteStore(db)
    assert store.get(EPOCH_KEY).value != source.get(EPOCH_KEY).value  # a new store epoch
    source.close()
    h2 = start_server(db + ".unused", store=store)
    try:
        assert snapshot(h2) == before
        # the old token is still valid: the signing key moved with the data
        r = h2.api("alice")
        r.headers["X-Auth-Token"] = token
        assert r.get("/networks").json()["networks"][0]["id"] == net["id"]
        assert http.get(h2.url + "/v2.0/networks", headers={"X-Auth-Token": revoked}).status_code == 401
        revocations = store.range("/vxnet/identity/revoked/")[0]
        assert revocations and all(kv.lease for kv in revocations)  # on a lease again
        # and the migrated state is live: allocation continues without duplicates
        p = r.post("/ports", json={"port": {"network_id": net["id"]}}).json()["port"]
        ips = [q["fixed_ips"][0]["ip_address"] for q in r.get("/ports", params={"network_id": net["id"]}).json()["ports"]]
        assert len(ips) == len(set(ips)) and p["fixed_ips"][0]["ip_address"] in ips
    finally:
        h2.stop()


def test_bulk_request_larger_than_an_etcd_transaction_is_a_clear_400(tmp_path) -> None:
    cluster = EtcdCluster(1, prefix="vxt-big", max_txn_ops=128)  # etcd's default limit
    store = EtcdStore(cluster.endpoints)
    h = start_server(os.path.join(tmp_path, "unused.db"), store=store)
    try:
        alice = h.api("alice")
        net = alice.post("/networks", json={"network": {"name": "n"}}).json()["network"]
        alice.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.64.0.0/22", "ip_version": 4}})
        r = alice.post("/ports", json={"ports": [{"network_id": net["id"]} for _ in range(60)]})
        assert r.status_code == 400, r.text
        assert "too many objects" in r.json()["NeutronError"]["message"]
        assert alice.get("/ports", params={"network_id": net["id"]}).json()["ports"] == []  # nothing half-made
        r = alice.post("/ports", json={"ports": [{"network_id": net["id"]} for _ in range(20)]})
        assert r.status_code == 201, r.text
    finally:
        h.stop()
        cluster.stop()
