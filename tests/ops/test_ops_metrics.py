"""The server's store-derived gauges (api/ops_metrics.py) over real HTTP: agents by liveness and
ports by status follow what the API shows, and a store that stops answering turns into
`vxnet_store_up 0` on a scrape that still answers (the gauges that need the store are absent)."""

from __future__ import annotations

import os
import time

from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_agents import bound_port, register
from tests.api.test_host_view import agent_client, start_agent_server
from tests.conftest import USERS, free_port, start_server
from tests.support import http
from tests.support.etcd import EtcdCluster
from vxnet.config import Config
from vxnet.store.etcd_store import EtcdStore


def scrape(listen: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = http.get(f"http://{listen}/metrics", timeout=60)
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(r.text) for s in f.samples}


def test_agents_and_ports_gauges_follow_the_api(tmp_path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    h = start_agent_server(os.path.join(tmp_path, "vxnet.db"), agent_down_time=4, metrics_listen=listen)
    try:
        port = bound_port(h, "h1")
        h.api("alice").post("/ports", json={"port": {"network_id": port["network_id"]}})
        with agent_client(h) as c:
            register(c, "h1")
            register(c, "h2", "198.51.100.2")
            for host in ("h1", "h2"):  # alive now, however slow the machine was so far
                assert c.post(f"/hosts/{host}/heartbeat").json() == {"alive": True}
            m = scrape(listen)
        assert m[("vxnet_store_up", ())] == 1
        assert m[("vxnet_agents", (("alive", "true"),))] == 2
        assert m[("vxnet_agents", (("alive", "false"),))] == 0
        ports = h.api("admin").get("/ports").json()["ports"]
        for status in ("ACTIVE", "DOWN", "BUILD"):
            for bound in (True, False):
                want = sum(1 for p in ports if p["status"] == status and bool(p.get("binding:host_id")) == bound)
                assert m[("vxnet_ports", (("bound", str(bound).lower()), ("status", status)))] == want
        assert m[("vxnet_ports", (("bound", "true"), ("status", "DOWN")))] == 1  # the port on h1, no agent up
        # no heartbeats: both agents' leases expire and the gauge says so
        deadline = time.time() + 30
        while time.time() < deadline:
            m = scrape(listen)
            if m[("vxnet_agents", (("alive", "false"),))] == 2:
                break
            time.sleep(0.5)
        assert m[("vxnet_agents", (("alive", "true"),))] == 0
        assert m[("vxnet_agents", (("alive", "false"),))] == 2
        shown = h.api("admin").get("/agents").json()["agents"]
        assert [a["alive"] for a in shown] == [False, False]
    finally:
        h.stop()


def test_an_unavailable_store_is_store_up_0_and_the_scrape_still_answers(tmp_path) -> None:
    cluster = EtcdCluster(1, prefix="vxt-om")
    listen = f"127.0.0.1:{free_port()}"
    port = free_port()
    cfg = Config(listen=f"127.0.0.1:{port}", users=USERS, metrics_listen=listen)
    h = start_server(os.path.join(tmp_path, "unused.db"), config=cfg, port=port,
                     store=EtcdStore(cluster.endpoints, cache=False))
    try:
        m = scrape(listen)
        assert m[("vxnet_store_up", ())] == 1
        assert ("vxnet_ports", (("bound", "false"), ("status", "DOWN"))) in m
        cluster.stop()
        m = scrape(listen)
        assert m[("vxnet_store_up", ())] == 0
        assert not any(name in ("vxnet_ports", "vxnet_agents") for name, _ in m)
        assert m[("vxnet_store_revision", ())] != m[("vxnet_store_revision", ())]  # NaN
    finally:
        h.stop()
        cluster.stop()
