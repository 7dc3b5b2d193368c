"""Quotas across servers: two `vxnet server` processes on a real 3-member etcd cluster.

50 parallel port creates of one project, spread over both servers, with a port quota of 10:
exactly 10 are created and the other 40 are 409 OverQuota with Neutron's body; the usage
counter in etcd says 10; no IP or MAC claim is left by a refused create. Then deletes through
one server free quota that creates through the other can use, again exactly up to the limit.
With the quota unlimited, 30 more parallel creates spread over the usage counter's delta shards
and the counters still add up to the exact count.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.distributed.conftest import Servers, api, token
from tests.support import http
from tests.support.etcd import EtcdCluster
from vxnet.config import project_id_for
from vxnet.services.quotas import stored_usage
from vxnet.store import open_store

A = project_id_for("tenant-a")
OVER = {"NeutronError": {"type": "OverQuota", "message": "Quota exceeded for resources: ['port'].", "detail": ""}}


def _parallel_creates(urls: list[str], tok: str, net_id: str, n: int) -> list[httpx.Response]:
    clients = [http.client(base_url=u + "/v2.0", headers={"X-Auth-Token": tok}, timeout=120,
                           limits=httpx.Limits(max_connections=25)) for u in urls]

    def create(i: int) -> httpx.Response:
        # every other port without an address: only the usage counter makes those conflict
        body = {"network_id": net_id, "name": f"q{i}", **({"fixed_ips": []} if i % 2 else {})}
        return clients[i % len(clients)].post("/ports", json={"port": body})

    try:
        with ThreadPoolExecutor(n) as ex:
            return list(ex.map(create, range(n)))
    finally:
        for c in clients:
            c.close()


def test_50_parallel_creates_over_two_servers_with_a_quota_of_10(etcd3: EtcdCluster, servers: Servers) -> None:
    urls = servers.urls
    admin_tok, alice_tok = token(urls[0], "admin"), token(urls[0], "alice")
    with api(urls[0], alice_tok) as alice, api(urls[1], admin_tok) as admin:
        net = alice.post("/networks", json={"network": {"name": "quota-net"}}).json()["network"]
        r = alice.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                    "cidr": "100.64.20.0/24"}})
        assert r.status_code == 201, r.text
        sub = r.json()["subnet"]
        before = [p for p in alice.get("/ports").json()["ports"]]
        r = admin.put(f"/quotas/{A}", json={"quota": {"port": len(before) + 10}})
        assert r.status_code == 200 and r.json()["quota"]["port"] == len(before) + 10, r.text

    responses = _parallel_creates(urls, alice_tok, net["id"], 50)
    codes = Counter(r.status_code for r in responses)
    assert codes == {201: 10, 409: 40}, (codes, [r.text for r in responses if r.status_code not in (201, 409)][:3])
    assert all(r.json() == OVER for r in responses if r.status_code == 409)
    created = {r.json()["port"]["id"] for r in responses if r.status_code == 201}

    store = open_store(etcd3.url())
    try:
        for url in urls:  # both servers agree
            with api(url, alice_tok) as alice:
                ports = [p for p in alice.get("/ports", params={"network_id": net["id"]}).json()["ports"]]
                assert {p["id"] for p in ports} == created
                assert alice.get(f"/quotas/{A}/details").json()["quota"]["port"]["used"] == len(before) + 10
        assert stored_usage(store, A, "port") == len(before) + 10
        ips = {kv.key.rsplit("/", 1)[1] for kv in store.range(f"/vxnet/ipam/{sub['id']}/")[0]}
        assert ips == {ip["ip_address"] for p in ports for ip in p["fixed_ips"]}
        macs = {kv.key.rsplit("/", 1)[1] for kv in store.range(f"/vxnet/mac/{net['id']}/")[0]}
        assert macs == {p["mac_address"] for p in ports}

        # deletes through one server free quota for creates through the other, exactly
        with api(urls[1], alice_tok) as alice:
            for pid in sorted(created)[:3]:
                assert alice.delete(f"/ports/{pid}").status_code == 204
        again = _parallel_creates(urls[::-1], alice_tok, net["id"], 20)
        assert Counter(r.status_code for r in again) == {201: 3, 409: 17}
        assert stored_usage(store, A, "port") == len(before) + 10

        # unlimited: creates through both servers move separate delta shards, and no increment is lost
        with api(urls[0], admin_tok) as admin:
            assert admin.put(f"/quotas/{A}", json={"quota": {"port": -1}}).status_code == 200
        more = _parallel_creates(urls, alice_tok, net["id"], 30)
        assert Counter(r.status_code for r in more) == {201: 30}
        shards = store.range(f"/vxnet/quota-usage/{A}/port/")[0]
        assert len(shards) > 1  # the creates did not all meet on one counter key
        assert stored_usage(store, A, "port") == len(before) + 40
        for url in urls:
            with api(url, alice_tok) as alice:
                assert alice.get(f"/quotas/{A}/details").json()["quota"]["port"]["used"] == len(before) + 40
    finally:
        store.close()
