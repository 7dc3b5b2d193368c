"""Migration of a running lab from the embedded store to a 3-member etcd cluster (issue 6,
must-show): while VMs ping each other, the lab's server is stopped, `vxnet migrate` copies the
store into etcd, and the server starts again on etcd at the same addresses. Checked: the store
keys (without agent liveness leases) and every API collection are identical before and after,
no ping is lost (the longest reply gap is reported), and the agents reconnect to the server on
etcd (alive again, and a change made afterwards converges).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.distributed.conftest import api, token
from tests.root.conftest import Lab, lab3, needs_root  # noqa: F401 - lab3 is a fixture
from tests.root.helpers import max_gap, nsexec, ping, start_ping
from tests.support.etcd import EtcdCluster
from vxnet.config import load_config
from vxnet.lab import lab, topology
from vxnet.services.repo import EPOCH_KEY, ROOT
from vxnet.store import open_store
from vxnet.store.contract import Event, EventType
from vxnet.store.etcd_store import EtcdStore

pytestmark = [pytest.mark.root, needs_root]

COLLECTIONS = ["networks", "subnets", "ports", "security-groups", "security-group-rules", "routers", "floatingips"]


def everything(url: str) -> dict[str, list[dict]]:
    with api(url, token(url)) as c:
        out = {}
        for coll in COLLECTIONS:
            r = c.get(f"/{coll}")
            assert r.status_code == 200, (coll, r.text)
            out[coll] = sorted(r.json()[coll.replace("-", "_")], key=lambda o: o["id"])
        return out


PORT_STATUS_FIELDS = {"status", "revision_number", "updated_at"}
OBSERVED: dict[str, list[str]] = {}   # what the migration test saw, for the known-bug test below


def differences(a: dict[str, list[dict]], b: dict[str, list[dict]], ignore: set[str] = frozenset()) -> list[str]:
    """Readable differences between two `everything()` results (port fields in `ignore` skipped)."""
    out = []
    for coll in COLLECTIONS:
        ia, ib = {o["id"]: o for o in a[coll]}, {o["id"]: o for o in b[coll]}
        out += [f"{coll} {i} only before" for i in ia.keys() - ib.keys()]
        out += [f"{coll} {i} only after" for i in ib.keys() - ia.keys()]
        for i in ia.keys() & ib.keys():
            for k in ia[i].keys() | ib[i].keys():
                if coll == "ports" and k in ignore:
                    continue
                if ia[i].get(k) != ib[i].get(k):
                    out.append(f"{coll} {i} {k}: {ia[i].get(k)!r} -> {ib[i].get(k)!r}")
    return out


def status_history(cluster: EtcdCluster, start: int, port_ids: set[str]) -> list[tuple[int, str, str]]:
    """(revision, port id, status) of every write of those ports in etcd from `start` on (etcd
    keeps the whole history here: nothing compacts it)."""
    store = EtcdStore(cluster.endpoints)
    end = store.revision()
    seen: list[tuple[int, str, str]] = []
    last = [start - 1]
    done = threading.Event()

    def on_events(events: list[Event]) -> None:
        for ev in events:
            last[0] = ev.kv.mod_revision
            if ev.type is EventType.PUT:
                port = json.loads(ev.kv.value)
                if port["id"] in port_ids:
                    seen.append((ev.kv.mod_revision, port["id"], port["status"]))
        if last[0] >= end:
            done.set()

    handle = store.watch(ROOT, start, on_events)
    try:
        if start <= end:
            assert done.wait(10), "etcd history not delivered"
    finally:
        handle.cancel()
        store.close()
    return seen


def store_keys(url: str) -> dict[str, str]:
    store = open_store(url)
    try:
        kvs, _ = store.range(ROOT)
        return {kv.key: kv.value for kv in kvs if kv.lease == 0}
    finally:
        store.close()


def test_migrate_running_lab_to_etcd(lab3: Lab, etcd3: EtcdCluster) -> None:  # noqa: F811
    na, _ = lab3.network("alice", "100.64.50.0/24", "mig-a")
    nb, _ = lab3.network("bob", "100.64.51.0/24", "mig-b")
    pa = [lab3.port("alice", na["id"], f"100.64.50.{11 + i}") for i in range(2)]
    pb = [lab3.port("bob", nb["id"], f"100.64.51.{11 + i}") for i in range(2)]
    for name, host, p in (("g1", "h1", pa[0]), ("g2", "h2", pa[1]), ("b1", "h3", pb[0]), ("b2", "h1", pb[1])):
        lab3.vm(name, host, p)
    for p in pa + pb:
        lab3.wait_status(p["id"], "ACTIVE", timeout=15)
    st = lab.load_state()
    sqlite_url = load_config(st["config"]).store
    assert sqlite_url and sqlite_url.startswith("sqlite://")
    before = everything(lab3.url)

    pings = [start_ping("g1", "100.64.50.12", 0.01, 100000), start_ping("b1", "100.64.51.12", 0.01, 100000)]
    try:
        time.sleep(0.5)
        t0 = time.time()
        lab.stop_server(st)                                   # SIGTERM; the store is only read from now on
        stopped = time.time() - t0
        out = subprocess.run([sys.executable, "-m", "vxnet.cli.main", "migrate", "--from", sqlite_url,
                              "--to", etcd3.url()], check=False, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        migrated = time.time() - t0
        want = store_keys(sqlite_url)
        etcd = EtcdStore(etcd3.endpoints)
        try:
            got = {kv.key: kv.value for kv in etcd.range(ROOT)[0]}
            migrated_rev = etcd.revision()
        finally:
            etcd.close()
        assert got.pop(EPOCH_KEY) != want.pop(EPOCH_KEY)     # a new store epoch (resume positions)
        assert got == want                                     # every object, value for value
        st["server_args"] = [*st["server_args"], "--store", etcd3.url()]
        lab.start_server(st)                                   # same addresses, now on etcd
        api_gap = time.time() - t0
        after = everything(lab3.url)
        diff = differences(before, after, ignore=PORT_STATUS_FIELDS)
        assert diff == [], "\n".join(diff)                     # the same object set through the API

        # Agents reconnect: alive again (liveness leases are not copied), streams on the server.
        def agents_alive() -> bool:
            with api(lab3.url, token(lab3.url)) as c:
                agents = c.get("/agents").json()["agents"]
            return {a["host"] for a in agents if a["alive"]} == {"h1", "h2", "h3"}

        deadline = time.time() + 15
        while not agents_alive():
            assert time.time() < deadline, "agents did not re-register on the etcd-backed server"
            time.sleep(0.1)
        realive = time.time() - t0
        for p in pa + pb:                                      # statuses as before (see the bug test)
            lab3.wait_status(p["id"], "ACTIVE", timeout=10)
        reactive = time.time() - t0
        lab_port = st["mgmt_url"].rsplit(":", 1)[1]
        for i in (1, 2, 3):
            conns = nsexec(topology.host_ns(i), "ss", "-tnH", "state", "established").stdout
            assert f"{topology.MGMT_SERVER_IP}:{lab_port}" in conns, f"h{i}: no connection to the server"
        # A change made now converges on every host concerned.
        p3 = lab3.port("alice", na["id"], "100.64.50.13")
        lab3.vm("g3", "h3", p3)
        lab3.wait_status(p3["id"], "ACTIVE", timeout=15)
        converged = time.time() - t0
        assert ping("g1", "100.64.50.13") == 2 and ping("g3", "100.64.50.12") == 2
        assert differences(before, everything(lab3.url), ignore={"revision_number", "updated_at"}) == [
            f"ports {p3['id']} only after"]
        time.sleep(0.5)
    finally:
        for p in pings:
            p.send_signal(signal.SIGINT)
    OBSERVED["went_down"] = [f"port {pid} DOWN at revision {rev}" for rev, pid, status in
                             status_history(etcd3, migrated_rev + 1, {p["id"] for p in pa + pb}) if status != "ACTIVE"]
    results = [interrupted_ping_result(p) for p in pings]
    for (sent, lost, stamps), name in zip(results, ("g1->g2", "b1->b2")):
        print(f"\n{name}: {sent} sent, lost {lost}, longest reply gap {max_gap(stamps) * 1000:.0f} ms")
    print(f"migration: server stopped in {stopped:.2f} s, {len(want)} keys copied and verified after "
          f"{migrated:.2f} s; API back "
          f"on etcd after {api_gap:.2f} s; agents alive after {realive:.2f} s; VM ports ACTIVE again after "
          f"{reactive:.2f} s ({len(OBSERVED['went_down'])} had gone DOWN meanwhile); a new VM's "
          f"port ACTIVE after {converged:.2f} s")
    for sent, lost, _ in results:
        assert sent > 100 and not lost, f"pings lost during the migration: icmp_seq {lost[:20]} of {sent}"


def test_migration_keeps_port_status() -> None:
    """Port status through the migration (observed by the test above): nothing changed for a
    tenant, so no port should have left ACTIVE."""
    if "went_down" not in OBSERVED:
        pytest.fail("the migration test did not get as far as the history")
    assert OBSERVED["went_down"] == []


def interrupted_ping_result(proc: subprocess.Popen[str]) -> tuple[int, list[int], list[float]]:
    """(sent, icmp_seq of unanswered pings, reply timestamps) of a `start_ping` stopped by
    SIGINT; the last echo, possibly in flight at the interrupt, is not counted as lost."""
    out, _ = proc.communicate(timeout=30)
    m = re.search(r"(\d+) packets transmitted", out)
    assert m, out
    sent = int(m.group(1))
    seqs = {int(x) for x in re.findall(r"bytes from .* icmp_seq=(\d+)", out)}
    stamps = [float(x) for x in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.MULTILINE)]
    return sent, sorted(set(range(1, sent)) - seqs), stamps
