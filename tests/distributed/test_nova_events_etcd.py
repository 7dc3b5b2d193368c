"""Nova events with two `vxnet server` processes on one real 3-member etcd cluster: both run an
outbox sender on the same outbox, and every event reaches the recording Nova exactly once.

Ports are created and reported ACTIVE through both servers, in parallel, so entries are written
by both and both senders wake for each of them (each watches etcd); the claim decides who sends.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import free_port, get_token
from tests.distributed.conftest import api, token, vxnet_server
from tests.root.conftest import USERS_TOML
from tests.support import http
from tests.support.etcd import EtcdCluster
from tests.support.fake_nova import FakeNova
from vxnet.services import nova_events
from vxnet.store import open_store

NOVA_TOML = """
[[identity.users]]
name = "neutron"
password = "neutron-pw"
project = "service"
roles = ["service", "admin"]

[nova]
url = "{url}"
username = "neutron"
project = "service"
"""
N = 24


def test_two_servers_on_etcd_deliver_each_event_once(etcd3: EtcdCluster, tmp_path) -> None:
    nova = FakeNova()
    cfg = os.path.join(tmp_path, "vxnet.toml")
    with open(cfg, "w") as f:
        f.write(USERS_TOML.format(port=free_port(), db=os.path.join(tmp_path, "unused.db")))
        f.write(NOVA_TOML.format(url=nova.url))
    procs = [vxnet_server(cfg, f"127.0.0.1:{free_port()}", etcd3.url(), os.path.join(tmp_path, f"s{i}.log"))
             for i in range(2)]
    store = open_store(etcd3.url(), str(tmp_path))
    try:
        for p in procs:
            p.start()
        urls = [p.url for p in procs]
        admins = [api(u, token(u, "admin")) for u in urls]
        agent_tok = get_token(urls[0], "vxnet-agent", "vxnet-agent-pw", "service")
        agents = [http.client(base_url=u + "/v2.0/vxnet", headers={"X-Auth-Token": agent_tok}, timeout=30)
                  for u in urls]
        assert agents[0].post("/hosts/hv1/register", json={"underlay_ip": "198.51.100.7"}).status_code == 200
        net = admins[0].post("/networks", json={"network": {"name": "nova"}}).json()["network"]
        r = admins[0].post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                        "cidr": "100.64.30.0/24"}})
        assert r.status_code == 201, r.text

        def bring_up(i: int) -> dict:
            r = admins[i % 2].post("/ports", json={"port": {
                "network_id": net["id"], "device_owner": "compute:nova", "device_id": str(uuid.uuid4()),
                "binding:host_id": "hv1"}})
            assert r.status_code == 201, r.text
            p = r.json()["port"]
            assert p["binding:vif_type"] == "tap"
            r = agents[(i + 1) % 2].post("/hosts/hv1/ports-status", json={"ACTIVE": [p["id"]]})
            assert r.status_code == 200 and r.json()["updated"] == [p["id"]], r.text
            return p

        with ThreadPoolExecutor(8) as ex:
            ports = list(ex.map(bring_up, range(N)))
        assert nova.wait_for(lambda f: len(f.events()) >= N, 60), len(nova.events())
        # then the outbox drains (the last delete follows the last answer)
        deadline = time.time() + 20
        while nova_events.pending(store) and time.time() < deadline:
            time.sleep(0.05)
        assert nova_events.pending(store) == 0
        time.sleep(1.0)  # a duplicate would be sent at once by the losing server: give it time
        counts = Counter(e["tag"] for e in nova.events())
        assert counts == Counter({p["id"]: 1 for p in ports}), counts
        want = {p["id"]: {"name": "network-vif-plugged", "server_uuid": p["device_id"], "tag": p["id"],
                          "status": "completed"} for p in ports}
        assert {e["tag"]: e for e in nova.events()} == want
        assert not nova.rejected
        for c in (*admins, *agents):
            c.close()
    finally:
        for p in procs:
            p.kill()
        store.close()
        nova.close()


def test_a_crashed_servers_claims_lapse_and_another_server_delivers(etcd3: EtcdCluster, tmp_path) -> None:
    """Server A claims events while Nova fails, then dies (SIGKILL: no lease revoked). Server B,
    started after, takes them once A's claim lease (CLAIM_TTL) expires: delivered exactly once,
    as nothing reached Nova before."""
    nova = FakeNova()
    cfg = os.path.join(tmp_path, "vxnet.toml")
    with open(cfg, "w") as f:
        f.write(USERS_TOML.format(port=free_port(), db=os.path.join(tmp_path, "unused.db")))
        f.write(NOVA_TOML.format(url=nova.url))
    a, b = (vxnet_server(cfg, f"127.0.0.1:{free_port()}", etcd3.url(), os.path.join(tmp_path, f"{n}.log"))
            for n in "ab")
    store = open_store(etcd3.url(), str(tmp_path))
    try:
        a.start()
        nova.fail_with = 503
        with api(a.url, token(a.url, "admin")) as admin:
            agent_tok = get_token(a.url, "vxnet-agent", "vxnet-agent-pw", "service")
            agent = http.client(base_url=a.url + "/v2.0/vxnet", headers={"X-Auth-Token": agent_tok}, timeout=30)
            assert agent.post("/hosts/hv2/register", json={"underlay_ip": "198.51.100.8"}).status_code == 200
            net = admin.post("/networks", json={"network": {"name": "crash"}}).json()["network"]
            assert admin.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                           "cidr": "100.64.31.0/24"}}).status_code == 201
            ports = []
            for _ in range(4):
                r = admin.post("/ports", json={"port": {"network_id": net["id"], "device_owner": "compute:nova",
                                                        "device_id": str(uuid.uuid4()), "binding:host_id": "hv2"}})
                assert r.status_code == 201, r.text
                ports.append(r.json()["port"])
            r = agent.post("/hosts/hv2/ports-status", json={"ACTIVE": [p["id"] for p in ports]})
            assert r.status_code == 200, r.text
            agent.close()
        assert nova.wait_for(lambda f: len(f.rejected) >= 2, 30)
        claims = store.range(nova_events.CLAIMS)[0]
        assert len(claims) == 4 and len({kv.value for kv in claims}) == 1  # all held by A's sender
        a.kill()  # SIGKILL: A's lease is not revoked, its claims stay until the lease expires
        nova.fail_with = None
        b.start()
        # (the first test's host hv1 may be declared dead meanwhile: its ports' network-vif-unplugged
        # events come here too, so only this test's ports are counted; hv2's agent does not
        # heartbeat either, so once its lease lapses its ports go DOWN and their unplugged events
        # follow the plugged ones: expected, each once too)
        mine = {p["id"] for p in ports}

        def ours(f: FakeNova) -> list[dict]:
            return [e for e in f.events() if e["tag"] in mine]

        assert nova.wait_for(lambda f: len(ours(f)) >= 4, nova_events.CLAIM_TTL + 30), nova.events()
        deadline = time.time() + 20
        while nova_events.pending(store) and time.time() < deadline:
            time.sleep(0.05)
        assert nova_events.pending(store) == 0
        seen = Counter((e["name"], e["tag"]) for e in ours(nova))
        assert {tag for name, tag in seen if name == "network-vif-plugged"} == mine, seen
        assert all(n == 1 for n in seen.values()), seen                   # every event exactly once
        assert {name for name, _ in seen} <= {"network-vif-plugged", "network-vif-unplugged"}, seen
    finally:
        a.kill()
        b.kill()
        store.close()
        nova.close()
