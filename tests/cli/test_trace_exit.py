"""`vxnet trace` is scriptable: exit 0 when the packet arrives, 1 when it does not (a real
server; the trace walks what the API holds)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.api.test_agents import register
from tests.api.test_host_view import agent_client, start_agent_server
from tests.conftest import ServerHandle


@pytest.fixture
def srv(tmp_path) -> Iterator[ServerHandle]:
    h = start_agent_server(os.path.join(tmp_path, "vxnet.db"))
    yield h
    h.stop()


def trace(h: ServerHandle, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from vxnet.cli.main import main; main()", "trace",
                           "--server", h.url, "--user", "admin", "--password", "s3cret", "--project", "admin",
                           *args], capture_output=True, text=True, timeout=120, check=False)


def test_trace_exit_status_follows_the_verdict(srv: ServerHandle) -> None:
    c = agent_client(srv)
    register(c, "hv1", "198.51.100.1")
    register(c, "hv2", "198.51.100.2")
    alice, admin = srv.api("alice"), srv.api("admin")
    net = alice.post("/networks", json={"network": {"name": "n"}}).json()["network"]
    r = alice.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "192.0.2.0/24", "ip_version": 4}})
    assert r.status_code == 201, r.text
    closed = alice.post("/security-groups", json={"security_group": {"name": "closed"}}).json()["security_group"]

    def port(host: str, ip: str, groups: list[str] | None = None) -> dict:
        body = {"network_id": net["id"], "binding:host_id": host, "project_id": net["project_id"],
                "device_owner": "compute:nova", "fixed_ips": [{"ip_address": ip}]}
        if groups is not None:
            body["security_groups"] = groups
        r = admin.post("/ports", json={"port": body})
        assert r.status_code == 201, r.text
        return r.json()["port"]

    p1 = port("hv1", "192.0.2.11")
    port("hv2", "192.0.2.12")
    port("hv2", "192.0.2.13", [closed["id"]])
    ok = trace(srv, "--from", p1["id"], "--to", "192.0.2.12")
    assert ok.returncode == 0 and "DELIVERED" in ok.stdout, ok.stdout + ok.stderr
    blocked = trace(srv, "--from", p1["id"], "--to", "192.0.2.13", "--proto", "tcp", "--dport", "22")
    assert blocked.returncode == 1 and "DROPPED" in blocked.stdout, blocked.stdout + blocked.stderr
