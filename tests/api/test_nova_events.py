"""Nova's port binding and external events, over real HTTP both ways: a vxnet server with a
`[nova]` section, a live agent (its status reports make ports ACTIVE/DOWN, as in the lab) and a
recording Nova endpoint (tests/support/fake_nova.py, a real HTTP server).

Counting "exactly one": events are delivered in commit order, so after the actions that must
NOT give an event, a sentinel action that must give one is made and waited for; anything
spurious would have arrived before it.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.helpers import assert_error, network, port, subnet
from tests.conftest import UNLIMITED, USERS, free_port, get_token, start_server
from tests.support import http
from tests.support.fake_nova import FakeNova
from vxnet.config import Config, ConfigError, NovaSettings, User, load_nova
from vxnet.services import nova_events
from vxnet.store.sqlite_store import SqliteStore

NOVA_USER = ("neutron", "neutron-pw", "service")
CONFIG_USERS = (*USERS, User(NOVA_USER[0], NOVA_USER[1], NOVA_USER[2], ("service", "admin")))


def nova_config(port_: int, nova: FakeNova, **kw: Any) -> Config:
    settings = NovaSettings(url=nova.url, username=NOVA_USER[0], project=NOVA_USER[2], **kw)
    return Config(listen=f"127.0.0.1:{port_}", users=CONFIG_USERS, quotas=UNLIMITED, agent_down_time=120,
                  nova=settings)


@pytest.fixture
def nova() -> Iterator[FakeNova]:
    n = FakeNova()
    yield n
    n.close()


@pytest.fixture
def env(tmp_path, nova):
    port_ = free_port()
    h = start_server(os.path.join(tmp_path, "vxnet.db"), config=nova_config(port_, nova), port=port_)
    try:
        yield h
    finally:
        h.stop()


def agent(h: Any, host: str = "hv1") -> httpx.Client:
    tok = get_token(h.url, "vxnet-agent", "vxnet-agent-pw", "service")
    c = http.client(base_url=h.url + "/v2.0/vxnet", headers={"X-Auth-Token": tok}, timeout=30)
    assert c.post(f"/hosts/{host}/register", json={"underlay_ip": "198.51.100.7"}).status_code == 200
    return c


def report(c: httpx.Client, host: str, **status: list[str]) -> None:
    r = c.post(f"/hosts/{host}/ports-status", json=status)
    assert r.status_code == 200, r.text


def vm_port(admin: httpx.Client, net: dict[str, Any], host: str = "hv1", **kw: Any) -> dict[str, Any]:
    attrs = {"device_owner": "compute:nova", "device_id": str(uuid.uuid4()), "binding:host_id": host, **kw}
    return port(admin, net, **attrs)


def plugged(p: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    return {"name": "network-vif-plugged", "server_uuid": p["device_id"], "tag": p["id"], "status": status}


def wait_events(nova: FakeNova, n: int) -> list[dict[str, Any]]:
    assert nova.wait_for(lambda f: len(f.events()) >= n), nova.events()
    return nova.events()


def drained(store: Any, timeout: float = 10.0) -> bool:
    """The outbox and its claims become empty (the sender deletes after Nova's answer)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if nova_events.pending(store) == 0 and not store.range(nova_events.CLAIMS)[0]:
            return True
        time.sleep(0.02)
    return False


def test_binding_is_tap_with_nova_vif_details(env, nova) -> None:
    admin = env.api("admin")
    agent(env)
    net = network(admin)
    subnet(admin, net, "100.64.1.0/24")
    p = vm_port(admin, net)
    assert p["binding:vif_type"] == "tap"
    assert p["binding:vif_details"] == {"port_filter": True, "mac_address": "fe" + p["mac_address"][2:]}
    assert p["binding:vnic_type"] == "normal" and p["status"] == "DOWN"
    # unbinding clears the details (Neutron: unbound ports have none)
    r = admin.put(f"/ports/{p['id']}", json={"port": {"binding:host_id": ""}})
    assert r.json()["port"]["binding:vif_type"] == "unbound" and r.json()["port"]["binding:vif_details"] == {}
    # no agent on the host: binding_failed, no details
    q = vm_port(admin, net, host="hv-nowhere")
    assert q["binding:vif_type"] == "binding_failed" and q["binding:vif_details"] == {}


def test_one_vif_plugged_per_bound_port_with_the_exact_payload_and_a_valid_token(env, nova) -> None:
    admin = env.api("admin")
    a = agent(env)
    net = network(admin)
    subnet(admin, net, "100.64.2.0/24")
    ports = [vm_port(admin, net) for _ in range(3)]
    report(a, "hv1", ACTIVE=[p["id"] for p in ports])
    got = wait_events(nova, 3)
    assert sorted(got, key=lambda e: e["tag"]) == sorted((plugged(p) for p in ports), key=lambda e: e["tag"])
    rec = nova.accepted[0]
    assert rec.headers["X-OpenStack-Nova-API-Version"] == "2.1"
    # the token is one vxnet's identity accepts, of the configured service user
    r = http.get(env.url + "/identity/v3/auth/tokens",
                 headers={"X-Auth-Token": env.token("admin"), "X-Subject-Token": rec.token})
    assert r.status_code == 200, r.text
    tok = r.json()["token"]
    assert tok["user"]["name"] == "neutron" and {x["name"] for x in tok["roles"]} == {"service", "admin"}
    # no event: the same report again, a non-compute port going ACTIVE, a compute port without
    # a device, an update of a name
    report(a, "hv1", ACTIVE=[p["id"] for p in ports])
    other = port(admin, net, **{"binding:host_id": "hv1", "device_id": str(uuid.uuid4())})
    nodev = port(admin, net, **{"binding:host_id": "hv1", "device_owner": "compute:nova"})
    report(a, "hv1", ACTIVE=[other["id"], nodev["id"]])
    assert admin.put(f"/ports/{ports[0]['id']}", json={"port": {"name": "renamed"}}).status_code == 200
    sentinel = vm_port(admin, net)
    report(a, "hv1", ACTIVE=[sentinel["id"]])
    got = wait_events(nova, 4)
    assert got[3:] == [plugged(sentinel)] and len(got) == 4
    assert drained(env.store)
    metrics = http.get(env.url + "/metrics", headers={"X-Auth-Token": env.token("admin")}).text
    assert "vxnet_nova_events_pending 0.0" in metrics and "vxnet_nova_events_sent_total 4.0" in metrics


def test_unplugged_changed_and_deleted(env, nova) -> None:
    admin = env.api("admin")
    a = agent(env)
    ext = network(admin, **{"router:external": True})
    subnet(admin, ext, "203.0.113.0/24")
    net = network(admin)
    sub = subnet(admin, net, "100.64.3.0/24")
    router = admin.post("/routers", json={"router": {"name": "r", "external_gateway_info": {
        "network_id": ext["id"]}}}).json()["router"]
    assert admin.put(f"/routers/{router['id']}/add_router_interface", json={"subnet_id": sub["id"]}).status_code == 200
    p = vm_port(admin, net)
    report(a, "hv1", ACTIVE=[p["id"]])
    wait_events(nova, 1)
    report(a, "hv1", DOWN=[p["id"]])
    got = wait_events(nova, 2)
    assert got[1] == {"name": "network-vif-unplugged", "server_uuid": p["device_id"], "tag": p["id"],
                      "status": "completed"}
    changed = {"name": "network-changed", "server_uuid": p["device_id"], "tag": p["id"]}
    # a fixed IP more
    r = admin.put(f"/ports/{p['id']}", json={"port": {"fixed_ips": [*p["fixed_ips"], {"subnet_id": sub["id"]}]}})
    assert r.status_code == 200, r.text
    assert wait_events(nova, 3)[2] == changed
    # a floating IP associated, moved to another VM port, disassociated
    q = vm_port(admin, net)
    r = admin.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"], "port_id": p["id"],
                                                        "fixed_ip_address": p["fixed_ips"][0]["ip_address"]}})
    assert r.status_code == 201, r.text
    fip = r.json()["floatingip"]
    assert wait_events(nova, 4)[3] == changed
    r = admin.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": q["id"]}})
    assert r.status_code == 200, r.text
    q_changed = {"name": "network-changed", "server_uuid": q["device_id"], "tag": q["id"]}
    got = wait_events(nova, 6)
    assert sorted(got[4:6], key=lambda e: e["tag"]) == sorted([changed, q_changed], key=lambda e: e["tag"])
    r = admin.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": None}})
    assert r.status_code == 200, r.text
    assert wait_events(nova, 7)[6] == q_changed
    # deleting a port with a floating IP: only network-vif-deleted
    assert admin.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": q["id"]}}).status_code == 200
    wait_events(nova, 8)
    assert admin.delete(f"/ports/{q['id']}").status_code == 204
    got = wait_events(nova, 9)
    assert got[8] == {"name": "network-vif-deleted", "server_uuid": q["device_id"], "tag": q["id"]}
    sentinel = vm_port(admin, net)
    report(a, "hv1", ACTIVE=[sentinel["id"]])
    got = wait_events(nova, 10)
    assert got[9:] == [plugged(sentinel)] and len(got) == 10


def test_binding_failure_sends_failed_and_unknown_servers_are_dropped(env, nova) -> None:
    admin = env.api("admin")
    a = agent(env)
    net = network(admin)
    subnet(admin, net, "100.64.4.0/24")
    p = vm_port(admin, net, host="hv-dead")
    assert p["binding:vif_type"] == "binding_failed" and p["status"] == "DOWN"
    assert wait_events(nova, 1) == [plugged(p, "failed")]
    # Nova does not know this server: 404, the event is dropped (as Neutron), later ones flow
    lost = vm_port(admin, net)
    nova.unknown.add(lost["device_id"])
    report(a, "hv1", ACTIVE=[lost["id"]])
    assert wait_events(nova, 2)[1] == plugged(lost)
    assert nova.accepted[-1].code == 404
    ok = vm_port(admin, net)
    report(a, "hv1", ACTIVE=[ok["id"]])
    assert wait_events(nova, 3)[2] == plugged(ok)
    # one known and one unknown server in one change: one POST, Nova's 207, nothing retried
    both = [vm_port(admin, net), vm_port(admin, net)]
    nova.unknown.add(both[0]["device_id"])
    report(a, "hv1", ACTIVE=[p["id"] for p in both])
    got = wait_events(nova, 5)
    assert sorted(got[3:], key=lambda e: e["tag"]) == sorted(map(plugged, both), key=lambda e: e["tag"])
    assert nova.accepted[-1].code == 207 and len(nova.accepted[-1].events) == 2
    assert drained(env.store)
    assert len(nova.events()) == 5 and not nova.rejected


def test_outbox_survives_a_server_restart_and_delivers_once(tmp_path, nova) -> None:
    db = os.path.join(tmp_path, "vxnet.db")
    port_ = free_port()
    h = start_server(db, config=nova_config(port_, nova), port=port_)
    try:
        admin = h.api("admin")
        a = agent(h)
        net = network(admin)
        subnet(admin, net, "100.64.5.0/24")
        nova.fail_with = 503  # Nova is down: the sender retries, the event stays in the outbox
        p = vm_port(admin, net)
        report(a, "hv1", ACTIVE=[p["id"]])
        assert nova.wait_for(lambda f: len(f.rejected) >= 2)  # retried, with backoff
        assert nova_events.pending(h.store) == 1
    finally:
        h.stop()
    store = SqliteStore(db)
    assert nova_events.pending(store) == 1  # on disk, across the restart
    assert not nova.accepted
    nova.fail_with = None
    h = start_server(db, config=nova_config(port_, nova), port=port_, store=store)
    try:
        assert wait_events(nova, 1) == [plugged(p)]
        admin = h.api("admin")
        sentinel = vm_port(admin, net)
        report(agent(h), "hv1", ACTIVE=[sentinel["id"]])
        assert wait_events(nova, 2) == [plugged(p), plugged(sentinel)]
        assert drained(h.store)
    finally:
        h.stop()


def test_token_from_a_keystone(tmp_path, nova) -> None:
    """With `auth_url` the server authenticates as Neutron does, with the password, against a
    Keystone: here vxnet's own Keystone-compatible endpoint over HTTP (no shortcut inside)."""
    port_ = free_port()
    cfg = nova_config(port_, nova, auth_url=f"http://127.0.0.1:{port_}/identity/v3", password=NOVA_USER[1])
    h = start_server(os.path.join(tmp_path, "vxnet.db"), config=cfg, port=port_)
    try:
        admin = h.api("admin")
        a = agent(h)
        net = network(admin)
        subnet(admin, net, "100.64.6.0/24")
        p = vm_port(admin, net)
        report(a, "hv1", ACTIVE=[p["id"]])
        assert wait_events(nova, 1) == [plugged(p)]
        r = http.get(h.url + "/identity/v3/auth/tokens",
                     headers={"X-Auth-Token": h.token("admin"), "X-Subject-Token": nova.accepted[0].token})
        assert r.status_code == 200 and r.json()["token"]["user"]["name"] == "neutron"
        assert r.json()["token"]["methods"] == ["password"]
    finally:
        h.stop()


@pytest.mark.parametrize("bad", ["keystone password", "local user"])
def test_no_token_keeps_the_event_and_retries(tmp_path, nova, bad) -> None:
    """A wrong Keystone password, or a service user vxnet does not know: nothing reaches Nova,
    the event waits in the outbox (retried with backoff)."""
    port_ = free_port()
    if bad == "local user":
        cfg = dataclasses.replace(nova_config(port_, nova), nova=NovaSettings(url=nova.url, username="nobody"))
    else:
        cfg = nova_config(port_, nova, auth_url=f"http://127.0.0.1:{port_}/identity/v3", password="wrong")
    h = start_server(os.path.join(tmp_path, "vxnet.db"), config=cfg, port=port_)
    try:
        admin = h.api("admin")
        a = agent(h)
        net = network(admin)
        subnet(admin, net, "100.64.7.0/24")
        p = vm_port(admin, net)
        report(a, "hv1", ACTIVE=[p["id"]])
        sender = h._server.config.app.state.vxnet.nova_sender
        deadline = time.time() + 20
        while sender.failures < 3 and time.time() < deadline:  # retried, with backoff
            time.sleep(0.05)
        assert sender.failures >= 3 and sender.sent == 0 and nova_events.pending(h.store) == 1
        assert not nova.accepted and not nova.rejected  # nothing reached Nova without a token
    finally:
        h.stop()


def test_who_may_set_binding_fields(env) -> None:
    admin, alice = env.api("admin"), env.api("alice")
    net = network(alice)
    subnet(alice, net, "100.64.8.0/24")
    # Neutron's defaults: binding:host_id and binding:profile are admin (or service) only
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "binding:host_id": "hv1"}}),
                 403, "PolicyNotAuthorized")
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "binding:profile": {"a": 1}}}),
                 403, "PolicyNotAuthorized")
    mine = port(alice, net, device_owner="compute:nova", device_id=str(uuid.uuid4()))
    for attrs in ({"binding:host_id": "hv1"}, {"binding:profile": {"migrating_to": "hv2"}}):
        assert_error(alice.put(f"/ports/{mine['id']}", json={"port": attrs}), 403, "PolicyNotAuthorized")
    # the owner sees none of the binding fields; vif type/details are read-only for everyone
    assert "binding:vif_type" not in alice.get(f"/ports/{mine['id']}").json()["port"]
    for attrs in ({"binding:vif_type": "tap"}, {"binding:vif_details": {"port_filter": False}}):
        assert_error(admin.put(f"/ports/{mine['id']}", json={"port": attrs}), 400)
    # a bad profile is a 400 with Neutron's body, never stored
    assert_error(admin.put(f"/ports/{mine['id']}", json={"port": {"binding:profile": ["x"]}}), 400)
    assert_error(admin.put(f"/ports/{mine['id']}", json={"port": {"binding:profile": "x"}}), 400)
    big = {"k": "x" * 5000}
    assert_error(admin.post("/ports", json={"port": {"network_id": net["id"], "binding:profile": big}}), 400)
    assert_error(admin.put(f"/ports/{mine['id']}", json={"port": {"binding:profile": big}}), 400)
    # admin sets it (as Nova does, with a service token); null is {}
    r = admin.put(f"/ports/{mine['id']}", json={"port": {"binding:profile": {"pci_slot": "0000:00:05.0"}}})
    assert r.status_code == 200 and r.json()["port"]["binding:profile"] == {"pci_slot": "0000:00:05.0"}
    r = admin.put(f"/ports/{mine['id']}", json={"port": {"binding:profile": None}})
    assert r.status_code == 200 and r.json()["port"]["binding:profile"] == {}
    r = admin.post("/ports", json={"port": {"network_id": net["id"], "binding:profile": None}})
    assert r.status_code == 201 and r.json()["port"]["binding:profile"] == {}


def test_nova_config_is_checked() -> None:
    assert load_nova(None) is None
    s = load_nova({"url": "http://nova:8774/v2.1", "username": "neutron", "project": "service"})
    assert s is not None and s.auth_url == "" and s.user_domain == "Default"
    for bad in ({"username": "n"}, {"url": "nova:8774", "username": "n"}, {"url": "http://n/v2.1"},
                {"url": "http://n/v2.1", "username": "n", "auth_url": "http://k/v3"},
                {"url": "http://n/v2.1", "username": "n", "colour": "red"},
                {"url": "http://n/v2.1", "username": 3}):
        with pytest.raises(ConfigError):
            load_nova(bad)


def test_which_changes_give_events() -> None:
    """The transition table (pure), against Neutron's notifier."""
    vm = {"id": "p1", "device_id": str(uuid.uuid4()), "device_owner": "compute:az1", "status": "DOWN",
          "binding:vif_type": "tap", "fixed_ips": [{"ip_address": "100.64.0.5"}]}
    names = lambda old, new: [(e["name"], e.get("status")) for e in nova_events.port_events(old, new)]
    assert names(vm, {**vm, "status": "ACTIVE"}) == [("network-vif-plugged", "completed")]
    assert names({**vm, "status": "BUILD"}, {**vm, "status": "ERROR"}) == [("network-vif-plugged", "failed")]
    assert names({**vm, "status": "ACTIVE"}, vm) == [("network-vif-unplugged", "completed")]
    assert names({**vm, "status": "ACTIVE"}, {**vm, "status": "ERROR"}) == []
    assert names(vm, vm) == [] and names(None, vm) == []
    assert names(None, {**vm, "binding:vif_type": "binding_failed"}) == [("network-vif-plugged", "failed")]
    assert names({**vm, "binding:vif_type": "binding_failed"}, {**vm, "binding:vif_type": "binding_failed"}) == []
    assert names(vm, None) == [("network-vif-deleted", None)]
    assert names(vm, {**vm, "fixed_ips": []}) == [("network-changed", None)]
    for other in ({**vm, "device_owner": "network:dhcp"}, {**vm, "device_id": "not-a-uuid"}, {**vm, "device_id": ""}):
        assert names(other, {**other, "status": "ACTIVE"}) == [] and names(other, None) == []
    assert nova_events.fip_ports({"port_id": "a", "fixed_ip_address": "1"}, {"port_id": "b", "fixed_ip_address": "2"}) \
        == ["a", "b"]
    assert nova_events.fip_ports(None, {"port_id": None, "fixed_ip_address": None}) == []
