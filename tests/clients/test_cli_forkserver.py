"""The CLI fork server (tests/support/cli_forkserver.py) answers what the real `openstack` does.

The other tests in tests/clients run the CLI through the fork server; here the real console
script runs as a subprocess beside it, so its own path stays covered and any difference (rc,
stdout, stderr, the program's name in a usage error) fails: `network list -f json` after a
create, an API error (`network show` of a missing network, rc 1) and an argument error (rc 2).
Then what a fork server could get wrong and a fresh process cannot: a call seeing another call's
environment or token, and a call outliving its timeout.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.conftest import OPENSTACK, SUBPROCESS_CLI, CliRunner, Cloud, cli_env
from tests.support.cli_forkserver import ForkServerCli


@pytest.fixture(scope="module")
def forked(vxnet_cloud: Cloud, openstack_cli: CliRunner,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """The module's cloud with its calls through a fork server (the session's, unless
    VXNET_TEST_CLI=subprocess made that one the real binary)."""
    if isinstance(openstack_cli, ForkServerCli):
        yield dataclasses.replace(vxnet_cloud, cli=openstack_cli, cli_cwd=openstack_cli.cwd)
        return
    server = ForkServerCli.start(OPENSTACK, tmp_path_factory.mktemp("cli"), cli_env())
    try:
        yield dataclasses.replace(vxnet_cloud, cli=server, cli_cwd=server.cwd)
    finally:
        server.stop()


def children(pid: int) -> list[int]:
    """The PIDs whose parent is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_fork_server_answers_what_the_real_cli_answers(forked: Cloud) -> None:
    real = dataclasses.replace(forked, cli=SUBPROCESS_CLI)
    forked.openstack("demo", "network", "create", "same", "-f", "json")
    calls = [
        (0, ("network", "list", "-f", "json")),
        (1, ("network", "show", "no-such-network")),
        (2, ("network", "create")),  # no name: argparse's usage error, with the program's name
    ]
    answers = []
    for rc, args in calls:
        a = real.openstack("demo", *args, check=False)
        b = forked.openstack("demo", *args, check=False)
        assert a.rc == rc, a
        assert (b.rc, b.stdout, b.stderr) == (a.rc, a.stdout, a.stderr), f"{b}\n--- the real CLI ---\n{a}"
        answers.append(b)
    assert [r["Name"] for r in answers[0].json()] == ["same"]
    assert "usage: openstack network create" in answers[2].stderr


def test_each_call_starts_afresh(forked: Cloud) -> None:
    """No token or environment carries from one call to the next; a call elsewhere than the
    directory the CLI was imported in is refused (its clouds.yaml search path is the server's)."""
    tokens = {forked.openstack("demo", "token", "issue", "-f", "json").json()["id"] for _ in range(2)}
    assert len(tokens) == 2
    r = forked.openstack_env({}, "network", "list", check=False)  # no OS_CLOUD now: nothing to authenticate with
    assert r.rc == 1 and "auth-url" in r.stderr, r
    with pytest.raises(ValueError, match="search paths"):
        dataclasses.replace(forked, cli_cwd=forked.workdir).openstack("demo", "network", "list")


def test_a_timed_out_call_is_killed(forked: Cloud) -> None:
    assert isinstance(forked.cli, ForkServerCli)
    server_pid = forked.cli.proc.pid
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/identity/v3"
        env = {"OS_AUTH_URL": url, "OS_USERNAME": "demo", "OS_PASSWORD": "x", "OS_PROJECT_NAME": "demo",
               "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default", "OS_IDENTITY_API_VERSION": "3"}
        with pytest.raises(subprocess.TimeoutExpired):
            forked.openstack_env(env, "network", "list", timeout=3)
    assert children(server_pid) == []
    assert forked.openstack("demo", "network", "list", "-f", "json").rc == 0  # the server still serves
