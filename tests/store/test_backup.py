"""`vxnet backup` / `vxnet restore` over the real CLI: a snapshot taken while the server runs (and
writes) restores into a fresh embedded store or into etcd, and a server on the restored store
serves the very same objects (tokens included: the signing keys are in the backup), with quota
usage matching what exists (the snapshot is one revision, never half a transaction). A damaged
or foreign file and a non-empty target are refused and write nothing."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading

import pytest

from tests.conftest import PASSWORDS, ServerHandle, get_token, start_server
from tests.support import http
from tests.support.etcd import EtcdCluster
from vxnet.services.repo import EPOCH_KEY, ROOT
from vxnet.store.etcd_store import EtcdStore
from vxnet.store.sqlite_store import SqliteStore

COLLECTIONS = ["networks", "subnets", "ports", "security-groups", "security-group-rules", "routers"]


def objects(h: ServerHandle) -> dict[str, list[dict]]:
    with h.api("admin") as admin:
        return {c: sorted(admin.get(f"/{c}").json()[c.replace("-", "_")], key=lambda o: o["id"]) for c in COLLECTIONS}


def vxnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vxnet.cli.main", *args], check=False, capture_output=True,
                          text=True, timeout=120)


def populate(h: ServerHandle) -> str:
    alice = h.api("alice")
    net = alice.post("/networks", json={"network": {"name": "n1"}}).json()["network"]
    alice.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "192.0.2.0/24", "ip_version": 4}})
    alice.post("/routers", json={"router": {"name": "r1"}})
    for i in range(5):
        assert alice.post("/ports", json={"port": {"network_id": net["id"], "name": f"p{i}"}}).status_code == 201
    return net["id"]


@pytest.fixture(scope="module")
def etcd() -> EtcdCluster:
    cluster = EtcdCluster(1, prefix="vxt-bak")
    yield cluster
    cluster.stop()


def test_backup_of_a_running_embedded_store_restores_identically(tmp_path) -> None:
    db = os.path.join(tmp_path, "vxnet.db")
    h = start_server(db)
    net_id = populate(h)
    token = h.token("alice")
    # a revoked token (its revocation record lives on a lease) must stay revoked after a restore
    revoked = get_token(h.url, "alice", PASSWORDS["alice"], "tenant-a")
    r = http.delete(h.url + "/identity/v3/auth/tokens", headers={"X-Auth-Token": token, "X-Subject-Token": revoked})
    assert r.status_code == 204, r.text
    # writes go on during the backup: the snapshot must be one revision, whatever it catches
    stop = threading.Event()
    made: list[int] = []
    with h.api("alice") as c:
        busy = c.post("/networks", json={"network": {"name": "busy"}}).json()["network"]["id"]
        c.post("/subnets", json={"subnet": {"network_id": busy, "cidr": "100.64.0.0/20", "ip_version": 4}})

    def writer() -> None:
        with h.api("alice") as c:
            while not stop.is_set() and len(made) < 2000:
                made.append(c.post("/ports", json={"port": {"network_id": busy}}).status_code)

    t = threading.Thread(target=writer)
    t.start()
    try:
        out = vxnet("backup", str(tmp_path / "b.json"), "--store", f"sqlite:///{db}")
    finally:
        stop.set()
        t.join(60)
    assert out.returncode == 0, out.stderr
    assert "backed up and verified" in out.stdout
    assert stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o600  # it holds the signing keys
    assert set(made) <= {201}
    h.stop()

    # wipe: a fresh store elsewhere, the old one gone
    os.unlink(db)
    fresh = os.path.join(tmp_path, "restored.db")
    out = vxnet("restore", str(tmp_path / "b.json"), "--store", f"sqlite:///{fresh}")
    assert out.returncode == 0, out.stderr
    assert "restored and verified" in out.stdout
    doc = json.loads((tmp_path / "b.json").read_text())
    restored = SqliteStore(fresh)
    got = {kv.key: kv.value for kv in restored.range(ROOT)[0] if not kv.key.startswith("/vxnet/agents/")}
    want = dict(doc["keys"])
    assert got.pop(EPOCH_KEY) != want.pop(EPOCH_KEY)  # a new epoch: agents take a snapshot
    assert got == want
    h2 = start_server(fresh, store=restored)
    try:
        after = objects(h2)
        assert sorted(n["id"] for n in after["networks"]) == sorted([net_id, busy])
        ports = after["ports"]
        assert 5 <= len(ports) <= 5 + len(made)
        print(f"\n{len(made)} ports created while the backup ran; the backup holds {len(ports) - 5} of them")
        # one revision: the project's port counter matches the ports that exist
        with h2.api("admin") as admin:
            project = ports[0]["project_id"]
            used = admin.get(f"/quotas/{project}/details").json()["quota"]["port"]["used"]
        assert used == len([p for p in ports if p["project_id"] == project])
        r = h2.api("alice")
        r.headers["X-Auth-Token"] = token  # issued by the server before the backup
        assert net_id in [n["id"] for n in r.get("/networks").json()["networks"]]
        assert http.get(h2.url + "/v2.0/networks", headers={"X-Auth-Token": revoked}).status_code == 401
        assert any(k.startswith("/vxnet/identity/revoked/") for k in doc["leased"])
        leased = [kv for kv in restored.range("/vxnet/identity/revoked/")[0]]
        assert leased and all(kv.lease for kv in leased)  # on a lease again: garbage-collected in time
        # allocation continues on the restored store without duplicates
        assert r.post("/ports", json={"port": {"network_id": net_id}}).status_code == 201
        ips = [p["fixed_ips"][0]["ip_address"] for p in r.get("/ports", params={"network_id": net_id}).json()["ports"]]
        assert len(ips) == len(set(ips))
    finally:
        h2.stop()


def test_backup_restores_across_store_kinds(tmp_path, etcd: EtcdCluster) -> None:
    db = os.path.join(tmp_path, "vxnet.db")
    h = start_server(db)
    populate(h)
    before = objects(h)
    assert vxnet("backup", str(tmp_path / "a.json"), "--store", f"sqlite:///{db}").returncode == 0
    h.stop()
    # embedded -> etcd
    out = vxnet("restore", str(tmp_path / "a.json"), "--store", etcd.url())
    assert out.returncode == 0, out.stderr
    h2 = start_server(db + ".unused", store=EtcdStore(etcd.endpoints))
    try:
        assert objects(h2) == before
        # etcd -> file -> a fresh embedded store
        out = vxnet("backup", str(tmp_path / "e.json"), "--store", etcd.url())
        assert out.returncode == 0, out.stderr
    finally:
        h2.stop()
    fresh = os.path.join(tmp_path, "back.db")
    out = vxnet("restore", str(tmp_path / "e.json"), "--store", f"sqlite:///{fresh}")
    assert out.returncode == 0, out.stderr
    h3 = start_server(fresh)
    try:
        assert objects(h3) == before
    finally:
        h3.stop()
    # a second restore into the now non-empty etcd is refused, and --force replaces
    out = vxnet("restore", str(tmp_path / "a.json"), "--store", etcd.url())
    assert out.returncode == 1 and "already holds" in out.stderr
    out = vxnet("restore", str(tmp_path / "a.json"), "--store", etcd.url(), "--force")
    assert out.returncode == 0, out.stderr


def test_damaged_or_foreign_backups_are_refused(tmp_path) -> None:
    db = os.path.join(tmp_path, "vxnet.db")
    h = start_server(db)
    populate(h)
    h.stop()
    path = tmp_path / "b.json"
    assert vxnet("backup", str(path), "--store", f"sqlite:///{db}").returncode == 0
    doc = json.loads(path.read_text())
    target = os.path.join(tmp_path, "t.db")

    def refused(mutated: object, why: str) -> None:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(mutated))
        out = vxnet("restore", str(bad), "--store", f"sqlite:///{target}")
        assert out.returncode == 2, out.stdout
        assert why in out.stderr
        s = SqliteStore(target)
        try:
            assert s.range(ROOT)[0] == []  # nothing written
        finally:
            s.close()

    tampered = json.loads(json.dumps(doc))
    tampered["keys"][0][1] = tampered["keys"][0][1] + " "
    refused(tampered, "damaged")
    truncated = dict(doc, keys=doc["keys"][:-1])
    refused(truncated, "damaged")
    outside = json.loads(json.dumps(doc))
    outside["keys"].append(["/elsewhere/x", "1"])
    refused(outside, "outside")
    refused({"format": "something-else"}, "not a vxnet backup")
    refused(dict(doc, version=99), "not supported")
    (tmp_path / "half.json").write_text(path.read_text()[:100])
    out = vxnet("restore", str(tmp_path / "half.json"), "--store", f"sqlite:///{target}")
    assert out.returncode == 2 and "cannot read backup" in out.stderr
    # a backup of a store that does not exist fails clearly and leaves no file
    out = vxnet("backup", str(tmp_path / "none.json"), "--store", f"sqlite:///{tmp_path}/missing.db")
    assert out.returncode == 1 and "no embedded store" in out.stderr
    assert not (tmp_path / "none.json").exists()
