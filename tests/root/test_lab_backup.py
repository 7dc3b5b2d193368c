"""Backup of a running lab's store and restore into a fresh store (issue 19, must-show): while
VMs ping each other, `vxnet backup` snapshots the embedded store with the server running; the
server is then stopped, `vxnet restore` writes the backup into a new, empty store file, and the
server starts again on it at the same addresses. Checked: the restored store holds exactly the
backup's keys (a new epoch), the API shows the same objects, the agents re-register and keep
their ports ACTIVE, a change made afterwards converges, and no ping is lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.distributed.conftest import api, token
from tests.distributed.test_lab_migration import (
    PORT_STATUS_FIELDS,
    differences,
    everything,
    interrupted_ping_result,
    store_keys,
)
from tests.root.conftest import Lab, lab3, needs_root  # noqa: F401 - lab3 is a fixture
from tests.root.helpers import max_gap, ping, start_ping
from vxnet.config import load_config
from vxnet.lab import lab
from vxnet.services.repo import EPOCH_KEY

pytestmark = [pytest.mark.root, needs_root]


def vxnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vxnet.cli.main", *args], check=False, capture_output=True,
                          text=True, timeout=120)


def test_backup_running_lab_and_restore_into_a_fresh_store(lab3: Lab, tmp_path) -> None:  # noqa: F811
    na, _ = lab3.network("alice", "100.64.60.0/24", "bak-a")
    nb, _ = lab3.network("bob", "100.64.61.0/24", "bak-b")
    pa = [lab3.port("alice", na["id"], f"100.64.60.{11 + i}") for i in range(2)]
    pb = [lab3.port("bob", nb["id"], f"100.64.61.{11 + i}") for i in range(2)]
    for name, host, p in (("g1", "h1", pa[0]), ("g2", "h2", pa[1]), ("b1", "h3", pb[0]), ("b2", "h1", pb[1])):
        lab3.vm(name, host, p)
    for p in pa + pb:
        lab3.wait_status(p["id"], "ACTIVE", timeout=15)
    st = lab.load_state()
    sqlite_url = load_config(st["config"]).store
    assert sqlite_url and sqlite_url.startswith("sqlite://")
    before = everything(lab3.url)
    backup = tmp_path / "lab-backup.json"
    db = "/" + sqlite_url.partition("://")[2].partition("?")[0].lstrip("/")
    fresh_url = "sqlite:///" + os.path.join(os.path.dirname(db), "restored.db")  # the lab's private dir

    pings = [start_ping("g1", "100.64.60.12", 0.01, 100000), start_ping("b1", "100.64.61.12", 0.01, 100000)]
    try:
        time.sleep(0.5)
        t0 = time.time()
        out = vxnet("backup", str(backup), "--store", sqlite_url)   # the server keeps running
        assert out.returncode == 0, out.stderr
        backed_up = time.time() - t0
        lab.stop_server(st)
        out = vxnet("restore", str(backup), "--store", fresh_url)
        assert out.returncode == 0, out.stderr
        restored = time.time() - t0
        doc = json.loads(backup.read_text())
        want = {k: v for k, v in doc["keys"] if k not in doc["leased"]}  # (store_keys skips leased keys)
        got = store_keys(fresh_url)
        assert got.pop(EPOCH_KEY) != want.pop(EPOCH_KEY)            # a new store epoch
        assert got == want                                          # every key of the backup
        st["server_args"] = [*st["server_args"], "--store", fresh_url]
        lab.start_server(st)                                        # same addresses, the restored store
        api_back = time.time() - t0
        assert differences(before, everything(lab3.url), ignore=PORT_STATUS_FIELDS) == []

        def agents_alive() -> bool:
            with api(lab3.url, token(lab3.url)) as c:
                agents = c.get("/agents").json()["agents"]
            return {a["host"] for a in agents if a["alive"]} == {"h1", "h2", "h3"}

        deadline = time.time() + 15
        while not agents_alive():
            assert time.time() < deadline, "agents did not re-register on the restored store"
            time.sleep(0.1)
        realive = time.time() - t0
        for p in pa + pb:
            lab3.wait_status(p["id"], "ACTIVE", timeout=10)
        # a change made now converges on every host concerned
        p3 = lab3.port("alice", na["id"], "100.64.60.13")
        lab3.vm("g3", "h3", p3)
        lab3.wait_status(p3["id"], "ACTIVE", timeout=15)
        converged = time.time() - t0
        assert ping("g1", "100.64.60.13") == 2 and ping("g3", "100.64.60.12") == 2
        time.sleep(0.5)
    finally:
        for p in pings:
            p.send_signal(signal.SIGINT)
    results = [interrupted_ping_result(p) for p in pings]
    for (sent, lost, stamps), name in zip(results, ("g1->g2", "b1->b2"), strict=True):
        print(f"\n{name}: {sent} sent, lost {lost}, longest reply gap {max_gap(stamps) * 1000:.0f} ms")
    print(f"backup of {len(want) + 1} keys in {backed_up:.2f} s (server running); restored and verified after "
          f"{restored:.2f} s; API back after {api_back:.2f} s; agents alive after {realive:.2f} s; a new VM's "
          f"port ACTIVE after {converged:.2f} s")
    for sent, lost, _ in results:
        assert sent > 100 and not lost, f"pings lost during backup and restore: icmp_seq {lost[:20]} of {sent}"
