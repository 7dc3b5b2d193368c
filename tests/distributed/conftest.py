"""Distributed-mode fixtures: a real etcd cluster and `vxnet server` subprocesses on it.

`ServerProc` runs `vxnet server --store etcd://...` (or the lab's multi-address server
module) as a child process in its own session, logging to a file, and kills it by PID (also
at interpreter exit). `Servers` holds several of them on one config. Nothing here is global:
every process is started, and stopped, by the fixture that owns it.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.conftest import free_port, get_token
from tests.root.conftest import PASSWORDS, USERS_TOML
from tests.support import http
from tests.support.etcd import EtcdCluster


def write_config(directory: str, port: int | None = None) -> str:
    """The root tests' users (admin, alice, bob, vxnet-agent) in a server TOML file."""
    path = os.path.join(directory, "vxnet.toml")
    with open(path, "w") as f:
        f.write(USERS_TOML.format(port=port or free_port(), db=os.path.join(directory, "unused.db")))
    return path


class ServerProc:
    """One API server process. `cmd` is its argv; `url` where tests reach it."""

    def __init__(self, cmd: list[str], url: str, log: str) -> None:
        self.cmd, self.url, self.log = cmd, url, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.config_path = ""
        atexit.register(self.kill)

    def start(self, wait: float = 20) -> None:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(self.cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.time() + wait
        while True:
            try:
                if http.get(self.url + "/", timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.kill()
                with open(self.log) as f:
                    raise RuntimeError(f"server {self.url} did not start:\n{f.read()[-2000:]}")
            time.sleep(0.05)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def vxnet_server(config: str, listen: str, store: str, log: str) -> ServerProc:
    """`vxnet server` on one address."""
    cmd = [sys.executable, "-m", "vxnet.cli.main", "server", "--config", config, "--listen", listen, "--store", store]
    proc = ServerProc(cmd, f"http://{listen}", log)
    proc.config_path = config
    return proc


def token(url: str, user: str = "admin") -> str:
    pw, project = PASSWORDS[user]
    return get_token(url, user, pw, project)


def api(url: str, tok: str, timeout: float = 30) -> httpx.Client:
    return http.client(base_url=url + "/v2.0", headers={"X-Auth-Token": tok}, timeout=timeout)


class Servers:
    """Two (or more) `vxnet server` processes on one etcd cluster."""

    def __init__(self, cluster: EtcdCluster, directory: str, n: int = 2) -> None:
        self.cluster = cluster
        self.config = write_config(directory)
        self.procs = [vxnet_server(self.config, f"127.0.0.1:{free_port()}", cluster.url(),
                                   os.path.join(directory, f"server{i}.log")) for i in range(n)]
        for p in self.procs:
            p.start()

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            p.kill()


@pytest.fixture(scope="module")
def etcd3() -> Iterator[EtcdCluster]:
    """3 etcd members on loopback, always stopped (members by PID, data dirs removed)."""
    cluster = EtcdCluster(3, prefix="vxd")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def servers(etcd3: EtcdCluster, tmp_path_factory) -> Iterator[Servers]:
    """2 `vxnet server` subprocesses on `etcd3`."""
    s = Servers(etcd3, str(tmp_path_factory.mktemp("servers")))
    try:
        yield s
    finally:
        s.stop()


def etcd_status(endpoint: str) -> dict:
    """A member's /v3/maintenance/status (header.member_id, leader)."""
    return http.post(endpoint + "/v3/maintenance/status", json={}, timeout=2).json()


def leader_name(cluster: EtcdCluster) -> str:
    """The name of the current leader (asked of every live member until one knows)."""
    for _ in range(100):
        for i, n in enumerate(cluster.names):
            if n not in cluster.procs:
                continue
            try:
                st = etcd_status(cluster.endpoints[i])
            except httpx.HTTPError:
                continue
            leader = st.get("leader")
            if not leader:
                continue
            for j, m in enumerate(cluster.names):
                if m in cluster.procs:
                    try:
                        if etcd_status(cluster.endpoints[j])["header"]["member_id"] == leader:
                            return m
                    except httpx.HTTPError:
                        continue
        time.sleep(0.1)
    raise RuntimeError("no etcd leader")


def lab_servers_on_etcd(cluster: EtcdCluster, directory: str, n: int = 2) -> list[ServerProc]:
    """`n` `vxnet server` processes on `cluster`, each on its own port of the lab's management
    address (which the host namespaces reach, and so does the root namespace). Not started."""
    from vxnet.lab import topology

    config = write_config(directory)
    return [vxnet_server(config, f"{topology.MGMT_SERVER_IP}:{free_port()}", cluster.url(),
                         os.path.join(directory, f"server{i}.log")) for i in range(n)]


class LabEnv:
    """A running lab whose agents know every server URL; `servers` are ours to kill/start."""

    def __init__(self, state: dict, servers: list[ServerProc], config: str) -> None:
        self.state, self.servers, self.config = state, servers, config

    def live_url(self) -> str:
        for s in self.servers:
            if s.pid is not None:
                return s.url
        raise AssertionError("no server is running")


@contextmanager
def lab_dir(directory: str) -> Iterator[None]:
    """VXNET_LAB_DIR set to `directory` for the duration (the lab keeps its state there)."""
    old = os.environ.get("VXNET_LAB_DIR")
    os.environ["VXNET_LAB_DIR"] = directory
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("VXNET_LAB_DIR", None)
        else:
            os.environ["VXNET_LAB_DIR"] = old


@contextmanager
def lab_on_etcd(cluster: EtcdCluster, d: str) -> Iterator[LabEnv]:
    """`vxnet lab up --hosts 3 --server URL1,URL2` with two `vxnet server`s on `cluster`, state
    and configs under `d`; `lab down` and the servers killed afterwards (also used by
    bench/port_up_bench.py).

    The servers listen on the management address, which exists once the lab's underlay is
    built, so they start right after `lab.up` (the agents retry until one answers)."""
    from vxnet.lab import lab

    procs = lab_servers_on_etcd(cluster, d)
    with lab_dir(os.path.join(d, "state")):
        try:
            lab.down(quiet=True)
            st = lab.up(3, procs[0].config_path, server=",".join(p.url for p in procs))
            for p in procs:
                p.start()
            yield LabEnv(st, procs, procs[0].config_path)
        finally:
            try:
                lab.down()
            finally:
                for p in procs:
                    p.kill()


@pytest.fixture(scope="module")
def etcd_lab(etcd3: EtcdCluster, tmp_path_factory) -> Iterator[LabEnv]:
    """`lab_on_etcd` on `etcd3`."""
    with lab_on_etcd(etcd3, str(tmp_path_factory.mktemp("etcdlab"))) as env:
        yield env


def make_leader(cluster: EtcdCluster, name: str) -> None:
    """Move etcd leadership to member `name` (etcd's transfer-leadership, asked of the leader)."""
    target = etcd_status(cluster.endpoints[cluster.names.index(name)])["header"]["member_id"]
    for _ in range(50):
        current = leader_name(cluster)
        if current == name:
            return
        r = http.post(cluster.endpoints[cluster.names.index(current)] + "/v3/maintenance/transfer-leadership",
                      json={"targetID": target}, timeout=10)
        if r.status_code != 200:
            time.sleep(0.1)
    raise RuntimeError(f"could not make {name} the etcd leader")
