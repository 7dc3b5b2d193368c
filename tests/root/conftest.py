"""Root-test fixtures: a lab of namespaces built from scratch and always torn down.

Everything is named with the lab prefix (`vxl`), so teardown finds it even after a crash;
each fixture also tears down leftovers before it starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.support import http
from vxnet.lab import topology

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2")


@pytest.fixture
def underlay3() -> Iterator[list[str]]:
    """3 host namespaces on a flat underlay (no server, no agents); yields their namespaces."""
    topology.teardown()
    try:
        topology.build_underlay(3)
        yield [topology.host_ns(i) for i in (1, 2, 3)]
    finally:
        topology.teardown()


USERS_TOML = """
[server]
listen = "127.0.0.1:{port}"
store = "sqlite:///{db}"
underlay_mtu = 1500

# These servers count but do not limit (long write loops as one project); quotas themselves are
# tested in tests/api/test_quotas.py and tests/distributed/test_quota_etcd.py.
[quotas]
quota_network = -1
quota_subnet = -1
quota_port = -1
quota_router = -1
quota_floatingip = -1
quota_security_group = -1
quota_security_group_rule = -1

[[identity.users]]
name = "admin"
password = "s3cret"
project = "admin"
roles = ["admin"]

[[identity.users]]
name = "alice"
password = "alice-pw"
project = "tenant-a"
roles = ["member", "reader"]

[[identity.users]]
name = "bob"
password = "bob-pw"
project = "tenant-b"
roles = ["member", "reader"]

[[identity.users]]
name = "vxnet-agent"
password = "vxnet-agent-pw"
project = "service"
roles = ["service"]
"""
PASSWORDS = {"admin": ("s3cret", "admin"), "alice": ("alice-pw", "tenant-a"), "bob": ("bob-pw", "tenant-b")}


class Lab:
    """A running `vxnet lab` (server + 3 agents) and API helpers for tests."""

    def __init__(self, state: dict) -> None:
        self.state = state
        self.url = state["url"]
        self._tokens: dict[str, str] = {}
        self.state_dir = ""                                  # the lab's state directory (lab_session)
        self.servers: list[subprocess.Popen[str]] = []       # started for the lab, killed at its end

    def api(self, user: str = "admin") -> httpx.Client:
        from tests.conftest import get_token

        if user not in self._tokens:
            pw, project = PASSWORDS[user]
            self._tokens[user] = get_token(self.url, user, pw, project)
        return http.client(base_url=self.url + "/v2.0", headers={"X-Auth-Token": self._tokens[user]}, timeout=30)

    def network(self, user: str, cidr: str, name: str = "net") -> tuple[dict, dict]:
        with self.api(user) as c:
            net = c.post("/networks", json={"network": {"name": name}})
            assert net.status_code == 201, net.text
            n = net.json()["network"]
            sub = c.post("/subnets", json={"subnet": {"network_id": n["id"], "cidr": cidr, "ip_version": 4}})
            assert sub.status_code == 201, sub.text
            return n, sub.json()["subnet"]

    def port(self, user: str, network_id: str, ip: str | None = None, mac: str | None = None,
             project: str | None = None) -> dict:
        body: dict = {"network_id": network_id}
        if ip:
            body["fixed_ips"] = [{"ip_address": ip}]
        if mac:   # setting a MAC needs admin
            body["mac_address"] = mac
            body["project_id"] = project
            user = "admin"
        with self.api(user) as c:
            r = c.post("/ports", json={"port": body})
            assert r.status_code == 201, r.text
            return r.json()["port"]

    def vm(self, name: str, host: str, port: dict) -> None:
        from vxnet.lab import lab

        lab.vm_add(name, host, port["id"])

    def port_status(self, port_id: str) -> str:
        with self.api() as c:
            return c.get(f"/ports/{port_id}").json()["port"]["status"]

    def wait_status(self, port_id: str, status: str, timeout: float = 10) -> float:
        """Seconds until the port has `status` (fails the test on timeout)."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.port_status(port_id) == status:
                return time.time() - t0
            time.sleep(0.02)
        raise AssertionError(f"port {port_id} not {status} after {timeout}s (is {self.port_status(port_id)})")

    def alive_hosts(self) -> set[str]:
        """Hosts whose agent the server calls alive."""
        with self.api("admin") as c:
            return {a["host"] for a in c.get("/agents").json()["agents"] if a["alive"]}

    def wait_agents(self, hosts: set[str], timeout: float = 30, interval: float = 0.2) -> float:
        """Seconds until every one of `hosts` has an alive agent (fails the test on timeout)."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.alive_hosts() >= hosts:
                return time.time() - t0
            time.sleep(interval)
        raise AssertionError(f"agents of {sorted(hosts - self.alive_hosts())} not alive after {timeout}s")


@contextmanager
def lab_session(tmp_path_factory: pytest.TempPathFactory, name: str, hosts: int, *, lease: int | None = None,
                wait_hosts: set[str] | None = None, wait_timeout: float = 30, **up: Any) -> Iterator[Lab]:
    """A lab of `hosts` compute hosts (plus whatever `up` asks of `vxnet.lab.lab.up`: gateways,
    external, bgp, agent_args...) with a fresh store under a new temporary directory `name`;
    `lease` sets the server's agent_down_time (seconds). VXNET_LAB_DIR points at the lab's state
    directory while it runs (the Lab's `state_dir`); leftovers are torn down before, and the lab
    always afterwards (the processes in the Lab's `servers` killed first), VXNET_LAB_DIR
    restored. With `wait_hosts`, waits (up to `wait_timeout` s) until those hosts' agents are
    registered alive."""
    from tests.conftest import free_port
    from vxnet.lab import lab

    d = tmp_path_factory.mktemp(name)
    cfg = d / "lab.toml"
    toml = USERS_TOML.format(port=free_port(), db=d / "vxnet.db")
    if lease is not None:
        toml = toml.replace("underlay_mtu = 1500", f"underlay_mtu = 1500\nagent_down_time = {lease}")
    cfg.write_text(toml)
    old = os.environ.get("VXNET_LAB_DIR")
    os.environ["VXNET_LAB_DIR"] = str(d / "state")
    g: Lab | None = None
    try:
        lab.down(quiet=True)
        g = Lab(lab.up(hosts, str(cfg), **up))
        g.state_dir = str(d / "state")
        if wait_hosts:
            g.wait_agents(wait_hosts, timeout=wait_timeout)
        yield g
    finally:
        for p in g.servers if g else []:
            p.kill()
            p.wait()
        try:
            lab.down()
        finally:
            if old is None:
                os.environ.pop("VXNET_LAB_DIR", None)
            else:
                os.environ["VXNET_LAB_DIR"] = old


@pytest.fixture(scope="module")
def lab3(tmp_path_factory) -> Iterator[Lab]:
    """`vxnet lab up --hosts 3` with a fresh store; always `vxnet lab down` afterwards."""
    with lab_session(tmp_path_factory, "lab", 3) as g:
        yield g
