"""A service user limited to some hosts (`hosts = [...]` in its `[[identity.users]]` entry) acts
as the agent of those hosts only: any other host's view, registration, heartbeat, port status or
floating-IP status is a 403 naming the host. An unrestricted service user and an admin act for
every host; a tenant acts for none (api/routers/agent_stream.py `require_agent`)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_agents import bound_port, register
from tests.conftest import UNLIMITED, USERS, ServerHandle, free_port, get_token, start_server
from tests.support import http
from vxnet.config import Config, ConfigError, User, load_config

H1 = User("agent-h1", "agent-h1-pw", "service", ("service",), hosts=frozenset({"h1"}))
NOBODY = User("agent-none", "agent-none-pw", "service", ("service",), hosts=frozenset())


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    port = free_port()
    cfg = Config(listen=f"127.0.0.1:{port}", users=(*USERS, H1, NOBODY), quotas=UNLIMITED, agent_down_time=3600)
    h = start_server(os.path.join(tmp_path_factory.mktemp("scope"), "vxnet.db"), config=cfg, port=port)
    yield h
    h.stop()


def client(h: ServerHandle, user: User) -> httpx.Client:
    tok = get_token(h.url, user.name, user.password, user.project)
    return http.client(base_url=h.url + "/v2.0/vxnet", headers={"X-Auth-Token": tok}, timeout=30)


def view_status(c: httpx.Client, host: str) -> int:
    """The status of opening `host`'s view stream (closed at once: it never ends on its own)."""
    with c.stream("GET", f"/hosts/{host}/view", timeout=httpx.Timeout(30, read=None)) as r:
        return r.status_code


def denied(r: httpx.Response, host: str) -> None:
    assert r.status_code == 403, r.text
    body = r.json()["NeutronError"]
    assert body["type"] == "PolicyNotAuthorized" and f"'{host}'" in body["message"], body


def test_a_host_limited_agent_acts_for_its_host(srv: ServerHandle) -> None:
    c = client(srv, H1)
    register(c, "h1")
    assert c.post("/hosts/h1/heartbeat").status_code == 200
    assert view_status(c, "h1") == 200
    mine = bound_port(srv, "h1")
    assert c.post("/hosts/h1/ports-status", json={"ACTIVE": [mine["id"]]}).json() == {"updated": [mine["id"]]}
    assert c.post("/hosts/h1/floatingips-status", json={"ACTIVE": []}).json() == {"updated": []}


@pytest.fixture(scope="module")
def h2_port(srv: ServerHandle) -> dict[str, Any]:
    """Host h2, registered by the admin, with one of bob's ports bound to it."""
    register(client(srv, USERS[0]), "h2", "198.51.100.2")
    return bound_port(srv, "h2", user="bob")


def _view(c: httpx.Client) -> httpx.Response:
    with c.stream("GET", "/hosts/h2/view") as r:
        assert r.status_code == 403  # before reading: a 200 is a stream that never ends
        r.read()
        return r


ACTIONS: dict[str, Callable[[httpx.Client, dict[str, Any]], httpx.Response]] = {
    "view": lambda c, port: _view(c),
    "register": lambda c, port: c.post("/hosts/h2/register", json={"underlay_ip": "198.51.100.2"}),
    "heartbeat": lambda c, port: c.post("/hosts/h2/heartbeat"),
    "ports-status": lambda c, port: c.post("/hosts/h2/ports-status", json={"ACTIVE": [port["id"]]}),
    "floatingips-status": lambda c, port: c.post("/hosts/h2/floatingips-status", json={"ACTIVE": []}),
}


@pytest.mark.parametrize("user", [H1, NOBODY], ids=["hosts=[h1]", "hosts=[]"])
@pytest.mark.parametrize("action", ACTIONS)
def test_a_host_limited_agent_is_refused_other_hosts(srv: ServerHandle, h2_port: dict[str, Any], user: User,
                                                     action: str) -> None:
    denied(ACTIONS[action](client(srv, user), h2_port), "h2")
    # nothing changed: h2's port is still DOWN, its agent record still the admin's registration
    assert srv.api("bob").get(f"/ports/{h2_port['id']}").json()["port"]["status"] == "DOWN"
    assert [a["configurations"]["ports"] for a in srv.api("admin").get("/agents").json()["agents"]
            if a["host"] == "h2"] == [1]


def test_a_report_for_its_own_host_cannot_change_a_port_bound_elsewhere(srv: ServerHandle) -> None:
    """Through its own host's URL a limited (or any) agent changes only that host's ports."""
    theirs = bound_port(srv, "h3", user="bob")
    for c in (client(srv, H1), client(srv, USERS[-1])):
        assert c.post("/hosts/h1/ports-status", json={"ACTIVE": [theirs["id"]]}).json() == {"updated": []}
    assert srv.api("bob").get(f"/ports/{theirs['id']}").json()["port"]["status"] == "DOWN"


def test_unrestricted_service_and_admin_act_for_any_host_tenants_for_none(srv: ServerHandle) -> None:
    for user in (USERS[-1], USERS[0]):  # vxnet-agent (no `hosts`), admin
        c = client(srv, user)
        assert user.hosts is None
        for host in ("h4", "h5"):
            register(c, host, "198.51.100.4")
            assert view_status(c, host) == 200
            assert c.post(f"/hosts/{host}/ports-status", json={"ACTIVE": []}).status_code == 200
    for name in ("alice", "bob"):
        r = srv.api(name).post("/vxnet/hosts/h1/heartbeat")
        assert r.status_code == 403 and r.json()["NeutronError"]["type"] == "PolicyNotAuthorized"


ENTRY = '''
[[identity.users]]
name = "agent"
password = "pw"
project = "service"
roles = {roles}
{hosts}
'''


def _load(tmp_path: pathlib.Path, hosts: str, roles: str = '["service"]') -> Config:
    path = tmp_path / "vxnet.toml"
    path.write_text(ENTRY.format(hosts=hosts, roles=roles))
    path.chmod(0o600)
    return load_config(str(path))


def test_config_hosts(tmp_path: pathlib.Path) -> None:
    assert _load(tmp_path, "").users[0].hosts is None
    assert _load(tmp_path, "hosts = []").users[0].hosts == frozenset()
    assert _load(tmp_path, 'hosts = ["h1", "h2"]').users[0].hosts == frozenset({"h1", "h2"})
    for bad in ('hosts = "h1"', "hosts = [1]", 'hosts = [""]', 'hosts = ["a b"]', f'hosts = ["{"x" * 256}"]',
                "hosts = {h1 = true}", 'host = ["h1"]'):
        with pytest.raises(ConfigError):
            _load(tmp_path, bad)
    with pytest.raises(ConfigError, match="admin"):  # an admin acts for every host: no list
        _load(tmp_path, 'hosts = ["h1"]', roles='["admin"]')


def test_a_host_limited_agent_binds_no_port_and_answers_only_its_hosts_doctor(srv: ServerHandle) -> None:
    """A host-limited user is an agent's identity, not Nova's: Neutron's `service_api` (setting
    `binding:host_id` / `binding:profile`, seeing the binding fields) is not its, so it cannot
    bind a port to a host it serves and so pull the port into its own view; and a doctor
    answer names its host like every other agent endpoint."""
    c = client(srv, H1)
    v2 = http.client(base_url=srv.url + "/v2.0", headers=c.headers, timeout=30)
    net = v2.post("/networks", json={"network": {"name": "agent-own"}}).json()["network"]
    assert v2.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.64.9.0/24",
                                                "ip_version": 4}}).status_code == 201
    r = v2.post("/ports", json={"port": {"network_id": net["id"], "binding:host_id": "h1"}})
    assert r.status_code == 403 and "binding:host_id" in r.json()["NeutronError"]["message"], r.text
    port = v2.post("/ports", json={"port": {"network_id": net["id"]}}).json()["port"]
    assert "binding:host_id" not in port                      # hidden, as from a tenant
    r = v2.put(f"/ports/{port['id']}", json={"port": {"binding:host_id": "h1"}})
    assert r.status_code == 403 and "binding:host_id" in r.json()["NeutronError"]["message"], r.text
    assert srv.api("admin").get(f"/ports/{port['id']}").json()["port"]["binding:host_id"] == ""
    assert c.post("/hosts/h2/doctor/" + "0" * 32, json={"drift": []}).status_code == 403
    # the unrestricted service user (Nova's kind, same project) still binds it and sees agents
    svc = srv.api("vxnet-agent")
    r = svc.put(f"/ports/{port['id']}", json={"port": {"binding:host_id": "h1"}})
    assert r.status_code == 200 and r.json()["port"]["binding:host_id"] == "h1", r.text
    assert svc.get("/agents").status_code == 200 and v2.get("/agents").json()["agents"] == []
