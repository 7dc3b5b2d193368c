"""Subnet pool allocation across servers: two `vxnet server` processes on a real 3-member etcd
cluster.

A /21 pool holds 8 /24s. 30 parallel subnet creates from it (each on its own network), spread
over both servers: exactly 8 are created, pairwise disjoint and together the whole pool; the
other 22 are 409 SubnetAllocationError. Then deleting one subnet through one server gives its
prefix back to a create through the other.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.distributed.conftest import Servers, api, token
from tests.support.etcd import EtcdCluster

POOL = "100.90.0.0/21"


def test_parallel_allocations_over_two_servers_on_etcd(etcd3: EtcdCluster, servers: Servers) -> None:
    urls = servers.urls
    tok = token(urls[0], "alice")
    clients = [api(u, tok, timeout=120) for u in urls]
    try:
        r = clients[0].post("/subnetpools", json={"subnetpool": {"name": "p", "prefixes": [POOL],
                                                                 "default_prefixlen": 24}})
        assert r.status_code == 201, r.text
        pool = r.json()["subnetpool"]
        nets = []
        for i in range(30):
            r = clients[i % 2].post("/networks", json={"network": {"name": f"n{i}"}})
            assert r.status_code == 201, r.text
            nets.append(r.json()["network"])

        def create(i: int) -> httpx.Response:
            return clients[i % 2].post("/subnets", json={"subnet": {
                "network_id": nets[i]["id"], "ip_version": 4, "subnetpool_id": pool["id"]}})

        with ThreadPoolExecutor(15) as ex:
            responses = list(ex.map(create, range(30)))
        codes = Counter(r.status_code for r in responses)
        assert codes == {201: 8, 409: 22}, (codes, [r.text for r in responses if r.status_code not in (201, 409)][:3])
        assert all(r.json()["NeutronError"]["type"] == "SubnetAllocationError"
                   for r in responses if r.status_code == 409)
        made = [r.json()["subnet"] for r in responses if r.status_code == 201]
        cidrs = sorted(ipaddress.ip_network(s["cidr"]) for s in made)
        assert not any(a.overlaps(b) for a, b in itertools.combinations(cidrs, 2))
        assert cidrs == list(ipaddress.ip_network(POOL).subnets(new_prefix=24))

        # a prefix freed through one server is allocated again through the other
        gone = made[0]
        assert clients[1].delete(f"/subnets/{gone['id']}").status_code == 204
        spare = next(n for n in nets if n["id"] not in {s["network_id"] for s in made})
        r = clients[0].post("/subnets", json={"subnet": {"network_id": spare["id"], "ip_version": 4,
                                                         "subnetpool_id": pool["id"]}})
        assert r.status_code == 201, r.text
        assert r.json()["subnet"]["cidr"] == gone["cidr"]
    finally:
        for c in clients:
            c.close()
