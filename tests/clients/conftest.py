"""Fixtures for the real-client tests: a `vxnet server` SUBPROCESS and the unmodified clients.

`vxnet_cloud` starts `.venv/bin/vxnet server --listen 127.0.0.1:PORT --config FILE --data-dir TMP`
as a child process with a TOML config holding tempest's pre-provisioned accounts, writes a
clouds.yaml for the `openstack` CLI, waits until the Keystone token endpoint answers, and on
teardown stops the server by its PID (SIGTERM, then SIGKILL after a grace period). The server's
stderr goes to a log file in the workspace, shown when a test fails to start it.

`Cloud.openstack` runs the unmodified CLI through `openstack_cli`, one fork server per session
(tests/support/cli_forkserver.py): each call is a forked child of a process that imported the
CLI once, with the call's own environment, cwd and argv, answering what `subprocess.run` would,
in ~0.2 s instead of ~2.7 s. Every call runs in the CLI's own directory (`cli_cwd`, no
clouds.yaml there: the accounts' file is named by OS_CLIENT_CONFIG_FILE). `VXNET_TEST_CLI=subprocess` runs every call as a real `openstack`
process instead; test_cli_forkserver.py compares the two on a few commands, so the console
script's own path stays covered.

Invariants:
- Only the process this fixture started is ever signalled, by its own PID; if pytest itself is
  killed, the kernel sends the server SIGTERM (PR_SET_PDEATHSIG), so no server outlives a crash.
- Every run gets a fresh data directory; nothing outlives the fixture except pytest's tmp dirs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clients.tempest_conf import tempest_accounts
from tests.support import http, ports
from tests.support.cli_forkserver import CliRunner, ForkServerCli, SubprocessCli

VENV_BIN = Path(sys.executable).parent
VXNET = VENV_BIN / "vxnet"
OPENSTACK = VENV_BIN / "openstack"
SUBPROCESS_CLI = SubprocessCli()


# tempest's pre-provisioned accounts (NEUTRON-API-NOTES.md section 3) in two sets, so that
# `tempest run --concurrency 2` finds free accounts; the CLI test uses demo, alt_demo and admin.
ACCOUNTS = tuple(tempest_accounts(sets=2))


def free_port() -> int:
    return ports.free_port()


def config_toml(listen: str, data_dir: Path) -> str:
    """The server's TOML configuration: listen address, data dir and the accounts above."""
    lines = [
        "[server]",
        f'listen = "{listen}"',
        f'data_dir = "{data_dir}"',
        "",
    ]
    for a in ACCOUNTS:
        roles = ", ".join(f'"{r}"' for r in a.roles)
        lines += [
            "[[identity.users]]",
            f'name = "{a.username}"',
            f'password = "{a.password}"',
            f'project = "{a.project}"',
            f"roles = [{roles}]",
            "",
        ]
    return "\n".join(lines)


def clouds_yaml(url: str) -> str:
    """A clouds.yaml with one cloud per account (JSON is valid YAML, so no YAML library needed)."""
    clouds = {
        a.username: {
            "auth": {
                "auth_url": f"{url}/identity/v3",
                "username": a.username,
                "password": a.password,
                "project_name": a.project,
                "user_domain_name": "Default",
                "project_domain_name": "Default",
            },
            "region_name": "RegionOne",
            "identity_api_version": 3,
            "interface": "public",
        }
        for a in ACCOUNTS
    }
    return json.dumps({"clouds": clouds}, indent=2)


@dataclasses.dataclass
class Cloud:
    """A running vxnet server subprocess plus what clients need to reach it."""

    url: str
    port: int
    workdir: Path
    clouds_file: Path
    log_file: Path
    proc: subprocess.Popen[bytes]
    cli: CliRunner = SUBPROCESS_CLI
    cli_cwd: Path | None = None  # where the CLI runs; None: workdir

    def token(self, user: str) -> str:
        """A project-scoped token for one of ACCOUNTS (plain HTTP, no client library)."""
        a = next(x for x in ACCOUNTS if x.username == user)
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": a.username, "domain": {"id": "default"}, "password": a.password}}},
            "scope": {"project": {"name": a.project, "domain": {"id": "default"}}}}}
        r = http.post(self.url + "/identity/v3/auth/tokens", json=body, timeout=10)
        assert r.status_code == 201, r.text
        return r.headers["X-Subject-Token"]

    def api(self, user: str = "admin") -> httpx.Client:
        """An httpx client on /v2.0 holding `user`'s token."""
        return http.client(base_url=self.url + "/v2.0", headers={"X-Auth-Token": self.token(user)}, timeout=30)

    def server_errors(self) -> list[str]:
        """Lines of the server log reporting an unexpected exception (each one was a 500)."""
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return [line for line in text.splitlines() if "unexpected error" in line or "Traceback" in line]

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def openstack(self, cloud: str, *args: str, check: bool = True, timeout: float = 120) -> CliResult:
        """Run the unmodified `openstack` CLI as `cloud` (an account name) and capture its output."""
        return self.openstack_env({"OS_CLIENT_CONFIG_FILE": str(self.clouds_file), "OS_CLOUD": cloud}, *args,
                                  check=check, timeout=timeout, label=f"--os-cloud={cloud}")

    def openstack_env(self, os_env: dict[str, str], *args: str, check: bool = True, timeout: float = 120,
                      label: str = "") -> CliResult:
        """Run the CLI with exactly the OS_* variables `os_env` (none inherited)."""
        env = cli_env() | os_env
        p = self.cli.run([str(OPENSTACK), *args], env=env, timeout=timeout,
                         cwd=self.cli_cwd or self.workdir)
        res = CliResult(cmd=["openstack", label or repr(os_env), *args], rc=p.returncode, stdout=p.stdout,
                        stderr=p.stderr)
        if check and p.returncode != 0:
            raise AssertionError(f"{res}\n--- server log tail ---\n{self.log_tail(20)}")
        return res


@dataclasses.dataclass(frozen=True)
class CliResult:
    """What one CLI invocation printed."""

    cmd: list[str]
    rc: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return f"$ {' '.join(self.cmd)}\nrc={self.rc}\nstdout: {self.stdout.strip()}\nstderr: {self.stderr.strip()[-2000:]}"


def cli_env() -> dict[str, str]:
    """The CLI's environment before a call adds its OS_* variables: ours without any OS_*."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OS_")} | {"PYTHONWARNINGS": "ignore"}


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when pytest dies, so a crashed run leaves no server."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_cloud(workdir: Path, port: int | None = None, cli: CliRunner = SUBPROCESS_CLI) -> Cloud:
    """Start `vxnet server` as a subprocess in `workdir` and wait until it issues tokens; `cli`
    runs the `openstack` calls (in its own cwd if it has one)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = workdir / "data"
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the server refuses a readable state dir
    cfg = workdir / "vxnet.toml"
    cfg.write_text(config_toml(f"127.0.0.1:{port}", data_dir))
    clouds = workdir / "clouds.yaml"
    clouds.write_text(clouds_yaml(url))
    log_file = workdir / "server.log"
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(
            [str(VXNET), "server", "--listen", f"127.0.0.1:{port}", "--config", str(cfg),
             "--data-dir", str(data_dir)],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir, preexec_fn=_die_with_parent,  # noqa: PLW1509 - one prctl call, no locks
        )
    cloud = Cloud(url, port, workdir, clouds, log_file, proc, cli, getattr(cli, "cwd", None))
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"vxnet server exited with {proc.returncode}:\n{cloud.log_tail()}")
        try:
            if http.get(url + "/identity/v3", timeout=2).status_code == 200:
                return cloud
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_cloud(cloud)
            raise RuntimeError(f"vxnet server did not answer within 30 s:\n{cloud.log_tail()}")
        time.sleep(0.1)


def stop_cloud(cloud: Cloud) -> None:
    """Stop the server this fixture started, by its PID only."""
    proc = cloud.proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="session")
def openstack_cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliRunner]:
    """The session's `openstack` runner: a fork server (killed at session end), or the real
    binary per call with VXNET_TEST_CLI=subprocess. Started here, in pytest's main thread: the
    server's parent-death signal follows the thread that started it."""
    if os.environ.get("VXNET_TEST_CLI") == "subprocess":
        yield SUBPROCESS_CLI
        return
    server = ForkServerCli.start(OPENSTACK, tmp_path_factory.mktemp("cli"), cli_env())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def vxnet_cloud(tmp_path_factory: pytest.TempPathFactory, openstack_cli: CliRunner) -> Iterator[Cloud]:
    """One `vxnet server` subprocess per test module."""
    cloud = start_cloud(tmp_path_factory.mktemp("cloud"), cli=openstack_cli)
    try:
        yield cloud
    finally:
        stop_cloud(cloud)


@pytest.fixture(scope="module")
def public_network(vxnet_cloud: Cloud) -> dict[str, Any]:
    """An admin-owned external network with a subnet (tempest's public_network_id)."""
    with vxnet_cloud.api("admin") as c:
        r = c.post("/networks", json={"network": {"name": "public", "router:external": True}})
        assert r.status_code == 201, r.text
        net = r.json()["network"]
        r = c.post("/subnets", json={"subnet": {
            "network_id": net["id"], "name": "public-subnet", "ip_version": 4, "cidr": "203.0.113.0/24",
            "gateway_ip": "203.0.113.1", "enable_dhcp": False}})
        assert r.status_code == 201, r.text
        return {"network": net, "subnet": r.json()["subnet"]}
