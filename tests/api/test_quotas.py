"""Quotas over real HTTP: Neutron's quota API, its policy, and enforcement in the create's own
store transaction (services/quotas.py).

- show/default/details/list/set/delete and `quotas/tenant`, with Neutron's defaults and shapes;
- who may do what: admin any project; a member or reader only reads its own project; other
  projects' quotas are 403; nobody but admin sets or deletes; bad values are 400;
- OverQuota (409, Neutron's body) for each counted resource, bulk creates counted as a whole,
  deletes and cascades freeing quota, nothing left behind by a refused create (no port, no IP or
  MAC claim), `check_limit`, counting on first use for a store without counters, the config's
  defaults, `enabled = false` and `vxnet quota reset-usage` after it;
- max_fixed_ips_per_port / max_allowed_address_pair (400s); a request listing too many fixed IPs is
  refused before any allocation;
- 50 parallel port creates through two servers sharing one embedded store with a quota of 10:
  exactly 10 succeed;
- /v2.0/network-ip-availabilities.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import uvicorn

from tests.api.helpers import assert_error, network, port, subnet
from tests.conftest import USERS, free_port, get_token, start_server
from tests.support import http
from vxnet.api.app import create_app
from vxnet.config import Config, ConfigError, QuotaSettings, load_config, project_id_for
from vxnet.services import ipam
from vxnet.services.quotas import USAGE_PREFIX, stored_usage
from vxnet.store.contract import Delete, Put
from vxnet.store.sqlite_store import SqliteStore

VXNET = os.path.join(os.path.dirname(sys.executable), "vxnet")
A = project_id_for("tenant-a")
B = project_id_for("tenant-b")
DEFAULTS = {"network": 100, "subnet": 100, "port": 500, "router": 10, "floatingip": 50,
            "security_group": 10, "security_group_rule": 100, "subnetpool": -1, "rbac_policy": 10}


@pytest.fixture
def server(tmp_path: Any) -> Iterator[Any]:
    """A fresh server with the product's quota settings (Neutron's defaults)."""
    p = free_port()
    h = start_server(os.path.join(tmp_path, "vxnet.db"), Config(listen=f"127.0.0.1:{p}", users=USERS))
    yield h
    h.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: Any) -> Iterator[Any]:
    p = free_port()
    h = start_server(os.path.join(tmp_path_factory.mktemp("srv"), "vxnet.db"),
                     Config(listen=f"127.0.0.1:{p}", users=USERS))
    yield h
    h.stop()


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json() if status != 204 else None


def details(c: httpx.Client, project: str = A) -> dict[str, dict[str, int]]:
    return ok(c.get(f"/quotas/{project}/details"))["quota"]  # type: ignore[no-any-return]


def set_quota(admin: httpx.Client, project: str = A, **limits: int) -> dict[str, Any]:
    return ok(admin.put(f"/quotas/{project}", json={"quota": limits}))["quota"]  # type: ignore[no-any-return]


def over_quota(r: httpx.Response, resource: str) -> None:
    assert r.status_code == 409, r.text
    assert r.json() == {"NeutronError": {"type": "OverQuota", "message": f"Quota exceeded for resources: ['{resource}'].",
                                         "detail": ""}}


# --- the API ---------------------------------------------------------------------------------------


def test_show_default_details_and_tenant_with_neutrons_defaults(server: Any) -> None:
    alice = server.api("alice")
    assert ok(alice.get(f"/quotas/{A}")) == {"quota": DEFAULTS}
    assert ok(alice.get(f"/quotas/{A}/default")) == {"quota": DEFAULTS}
    assert details(alice) == {r: {"limit": v, "used": 0, "reserved": 0} for r, v in DEFAULTS.items()}
    assert ok(alice.get("/quotas/tenant")) == {"tenant": {"tenant_id": A}}
    assert ok(alice.get("/quotas/project")) == {"project": {"project_id": A}}
    aliases = {e["alias"] for e in ok(alice.get("/extensions"))["extensions"]}
    assert {"quotas", "quota_details", "network-ip-availability"} <= aliases
    net = network(alice)
    port(alice, net)  # also creates the project's default group with its 4 rules
    used = {r: v["used"] for r, v in details(alice).items()}
    assert used == {"network": 1, "subnet": 0, "port": 1, "router": 0, "floatingip": 0,
                    "security_group": 1, "security_group_rule": 4, "subnetpool": 0,
                    "rbac_policy": 0}


def test_admin_sets_lists_and_deletes(server: Any) -> None:
    admin, alice = server.api("admin"), server.api("alice")
    assert ok(admin.get("/quotas")) == {"quotas": []}
    assert set_quota(admin, port=3, network="7") == {**DEFAULTS, "port": 3, "network": 7}
    assert ok(alice.get(f"/quotas/{A}"))["quota"] == {**DEFAULTS, "port": 3, "network": 7}
    assert details(alice)["port"] == {"limit": 3, "used": 0, "reserved": 0}
    assert ok(admin.get(f"/quotas/{B}"))["quota"] == DEFAULTS  # others untouched
    assert set_quota(admin, router=-1)["router"] == -1  # unlimited
    listed = ok(admin.get("/quotas"))["quotas"]
    assert listed == [{**DEFAULTS, "port": 3, "network": 7, "router": -1, "project_id": A, "tenant_id": A}]
    ok(admin.delete(f"/quotas/{A}"), 204)
    assert ok(alice.get(f"/quotas/{A}"))["quota"] == DEFAULTS
    assert ok(admin.get("/quotas")) == {"quotas": []}
    assert_error(admin.delete(f"/quotas/{A}"), 404, "ProjectQuotaNotFound")


def test_policy_member_reader_other_project_and_admin(server: Any) -> None:
    admin, alice, reader, bob = (server.api(u) for u in ("admin", "alice", "alice_reader", "bob"))
    # reading: own project yes (reader too), another project's no, the admin's list no
    assert ok(reader.get(f"/quotas/{A}"))["quota"] == DEFAULTS
    assert ok(reader.get(f"/quotas/{A}/details"))["quota"]["port"]["limit"] == 500
    for path in (f"/quotas/{B}", f"/quotas/{B}/default", f"/quotas/{B}/details", "/quotas"):
        assert_error(alice.get(path), 403, "PolicyNotAuthorized", "get_quota")
        assert_error(reader.get(path), 403, "PolicyNotAuthorized", "get_quota")
    assert_error(bob.get(f"/quotas/{A}"), 403, "PolicyNotAuthorized")
    # setting and deleting: admin only, own project included
    for c in (alice, reader, bob):
        assert_error(c.put(f"/quotas/{A}", json={"quota": {"port": 1000}}), 403, "PolicyNotAuthorized", "update_quota")
        assert_error(c.delete(f"/quotas/{A}"), 403, "PolicyNotAuthorized", "delete_quota")
    assert ok(alice.get(f"/quotas/{A}"))["quota"] == DEFAULTS  # nothing changed
    # no token: 401
    assert_error(http.get(server.url + f"/v2.0/quotas/{A}"), 401)
    # admin reads anyone's
    assert ok(admin.get(f"/quotas/{B}/details"))["quota"]["network"]["limit"] == 100


@pytest.mark.parametrize("body, message", [
    ({"quota": {"port": -2}}, "Invalid input for port. Reason: '-2' is too small - must be at least '-1'."),
    ({"quota": {"port": "many"}}, "Invalid input for port. Reason: 'many' is not an integer."),
    ({"quota": {"port": 1.5}}, "is not an integer"),
    ({"quota": {"port": True}}, "is not an integer"),
    ({"quota": {"port": None}}, "is not an integer"),
    ({"quota": {"port": 2**31}}, "is too large"),
    ({"quota": {"volumes": 3}}, "Unrecognized attribute(s) 'volumes'"),
    ({"quota": {"port": 3, "check_limit": "maybe"}}, "check_limit"),
    ({"quota": [1]}, "Resource body required"),
    ({"quotas": {"port": 3}}, "Resource body required"),
    ([], "Resource body required"),
])
def test_bad_values_are_400_and_change_nothing(shared_server: Any, body: Any, message: str) -> None:
    admin = shared_server.api("admin")
    assert_error(admin.put(f"/quotas/{B}", json=body), 400, message=message)
    assert ok(admin.get(f"/quotas/{B}"))["quota"] == DEFAULTS


def test_check_limit_refuses_a_limit_below_usage_and_force_allows_it(server: Any) -> None:
    admin, alice = server.api("admin"), server.api("alice")
    network(alice)
    network(alice)
    assert_error(admin.put(f"/quotas/{A}", json={"quota": {"network": 1, "check_limit": True}}), 400,
                 message="Quota limit 1 for network must be greater than or equal to already used 2")
    assert set_quota(admin, network=2, check_limit=True)["network"] == 2
    assert set_quota(admin, network=1, force=True)["network"] == 1  # below usage: allowed, creates refused
    over_quota(alice.post("/networks", json={"network": {"name": "x"}}), "network")
    assert details(alice)["network"] == {"limit": 1, "used": 2, "reserved": 0}


# --- enforcement -----------------------------------------------------------------------------------


def _external(admin: httpx.Client) -> dict[str, Any]:
    ext = network(admin, **{"router:external": True})
    subnet(admin, ext, "203.0.113.0/24")
    return ext


def _makers(server: Any) -> dict[str, Any]:
    """resource -> a function creating one (as alice) and returning the response."""
    admin, alice = server.api("admin"), server.api("alice")
    net = network(alice)
    subnet(alice, net, "100.64.0.0/24")
    ext = _external(admin)
    group = ok(alice.post("/security-groups", json={"security_group": {"name": "g"}}), 201)["security_group"]
    counter = iter(range(1, 1000))
    return {
        "network": lambda: alice.post("/networks", json={"network": {"name": "n"}}),
        "subnet": lambda: alice.post("/subnets", json={"subnet": {
            "network_id": net["id"], "ip_version": 4, "cidr": f"100.64.{next(counter)}.0/24"}}),
        "port": lambda: alice.post("/ports", json={"port": {"network_id": net["id"]}}),
        "router": lambda: alice.post("/routers", json={"router": {"name": "r"}}),
        "floatingip": lambda: alice.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"]}}),
        "security_group": lambda: alice.post("/security-groups", json={"security_group": {"name": "s"}}),
        "security_group_rule": lambda: alice.post("/security-group-rules", json={"security_group_rule": {
            "security_group_id": group["id"], "direction": "ingress", "protocol": "tcp",
            "port_range_min": next(counter), "port_range_max": 2000}}),
        "subnetpool": lambda: alice.post("/subnetpools", json={"subnetpool": {
            "prefixes": [f"100.65.{next(counter)}.0/24"]}}),
        "rbac_policy": lambda: alice.post("/rbac-policies", json={"rbac_policy": {
            "object_type": "network", "object_id": net["id"], "action": "access_as_shared",
            "target_tenant": f"project-{next(counter)}"}}),
    }


LIST_PATHS = {"network": "networks", "subnet": "subnets", "port": "ports", "router": "routers",
              "floatingip": "floatingips", "security_group": "security-groups",
              "security_group_rule": "security-group-rules", "subnetpool": "subnetpools",
              "rbac_policy": "rbac-policies"}


@pytest.mark.parametrize("resource", list(DEFAULTS))
def test_over_quota_for_each_resource_kind(server: Any, resource: str) -> None:
    admin, alice = server.api("admin"), server.api("alice")
    make = _makers(server)[resource]
    used = details(alice)[resource]["used"]
    set_quota(admin, **{resource: used + 2})
    created = [ok(make(), 201) for _ in range(2)]
    over_quota(make(), resource)
    over_quota(make(), resource)
    d = details(alice)[resource]
    assert d == {"limit": used + 2, "used": used + 2, "reserved": 0}
    listed = [o for o in ok(alice.get(f"/{LIST_PATHS[resource]}"))[LIST_PATHS[resource].replace("-", "_")]
              if o["project_id"] == A]
    assert len(listed) == used + 2
    # deleting one frees one
    obj = next(iter(created[0].values()))
    ok(alice.delete(f"/{LIST_PATHS[resource]}/{obj['id']}"), 204)
    assert details(alice)[resource]["used"] == used + 1
    ok(make(), 201)
    over_quota(make(), resource)
    # another project is not affected
    bob = server.api("bob")
    ok(bob.post("/networks", json={"network": {"name": "b"}}), 201)


def test_implied_rbac_policies_count_but_are_never_refused(server: Any) -> None:
    """The "*" policy a `shared` flag implies is alice's and counts, even past her quota (as
    Neutron, whose quota is only checked on POST /rbac-policies); her own create is refused."""
    admin, alice = server.api("admin"), server.api("alice")
    set_quota(admin, rbac_policy=0)
    net = ok(admin.post("/networks", json={"network": {"project_id": A, "shared": True}}), 201)["network"]
    qos = ok(admin.post("/qos/policies", json={"policy": {"project_id": A, "shared": True}}), 201)["policy"]
    assert details(alice)["rbac_policy"] == {"limit": 0, "used": 2, "reserved": 0}
    over_quota(alice.post("/rbac-policies", json={"rbac_policy": {
        "object_type": "network", "object_id": net["id"], "action": "access_as_shared", "target_tenant": B}}),
        "rbac_policy")
    # unsharing removes the implied policy and frees its count; deleting the object its policies
    ok(admin.put(f"/networks/{net['id']}", json={"network": {"shared": False}}))
    ok(admin.delete(f"/qos/policies/{qos['id']}"), 204)
    assert details(alice)["rbac_policy"]["used"] == 0
    assert ok(admin.get("/rbac-policies", params={"project_id": A}))["rbac_policies"] == []


def test_unlimited_and_zero(server: Any) -> None:
    admin, alice = server.api("admin"), server.api("alice")
    set_quota(admin, network=0)
    over_quota(alice.post("/networks", json={"network": {}}), "network")
    set_quota(admin, network=-1)
    for _ in range(3):
        network(alice)
    assert details(alice)["network"] == {"limit": -1, "used": 3, "reserved": 0}


def test_bulk_counts_every_item_and_is_all_or_nothing(server: Any) -> None:
    admin, alice = server.api("admin"), server.api("alice")
    net = network(alice)
    sub = subnet(alice, net, "100.64.0.0/24")
    set_quota(admin, port=3)
    over_quota(alice.post("/ports", json={"ports": [{"network_id": net["id"]}] * 4}), "port")
    assert ok(alice.get("/ports"))["ports"] == []
    assert server.store.range(f"/vxnet/ipam/{sub['id']}/")[0] == []
    assert len(ok(alice.post("/ports", json={"ports": [{"network_id": net["id"]}] * 3}), 201)["ports"]) == 3
    over_quota(alice.post("/ports", json={"port": {"network_id": net["id"]}}), "port")
    set_quota(admin, network=2)
    over_quota(alice.post("/networks", json={"networks": [{"name": "a"}, {"name": "b"}]}), "network")
    assert len(ok(alice.post("/networks", json={"networks": [{"name": "a"}]}), 201)["networks"]) == 1


def test_refused_create_leaves_no_port_ip_or_mac_claim(server: Any) -> None:
    admin, alice = server.api("admin"), server.api("alice")
    net = network(alice)
    sub = subnet(alice, net, "100.64.0.0/24")
    set_quota(admin, port=1)
    p = port(alice, net)
    over_quota(alice.post("/ports", json={"port": {"network_id": net["id"], "mac_address": "fa:16:3e:00:00:99",
                                                   "fixed_ips": [{"ip_address": "100.64.0.77"}]}}), "port")
    assert [x["id"] for x in ok(alice.get("/ports"))["ports"]] == [p["id"]]
    ips = [kv.key.rsplit("/", 1)[1] for kv in server.store.range(f"/vxnet/ipam/{sub['id']}/")[0]]
    assert ips == [p["fixed_ips"][0]["ip_address"]]
    macs = [kv.key.rsplit("/", 1)[1] for kv in server.store.range(f"/vxnet/mac/{net['id']}/")[0]]
    assert macs == [p["mac_address"]]
    # after raising the quota the refused address is free
    set_quota(admin, port=2)
    again = port(alice, net, fixed_ips=[{"ip_address": "100.64.0.77"}], mac_address="fa:16:3e:00:00:99")
    assert again["fixed_ips"][0]["ip_address"] == "100.64.0.77"


def test_admin_creating_for_a_project_counts_against_that_project(server: Any) -> None:
    admin, alice = server.api("admin"), server.api("alice")
    set_quota(admin, network=1)
    ok(admin.post("/networks", json={"network": {"name": "for-a", "project_id": A}}), 201)
    over_quota(admin.post("/networks", json={"network": {"name": "for-a", "project_id": A}}), "network")
    over_quota(alice.post("/networks", json={"network": {"name": "mine"}}), "network")
    assert details(alice)["network"]["used"] == 1
    assert details(admin, project_id_for("admin"))["network"]["used"] == 0


def test_cascades_and_router_interfaces(server: Any) -> None:
    admin, alice = server.api("admin"), server.api("alice")
    net = network(alice)
    sub = subnet(alice, net, "100.64.0.0/24")
    subnet(alice, net, "100.64.1.0/24")
    # a router interface port is the router owner's port; its gateway port belongs to nobody
    ext = _external(admin)
    rtr = ok(alice.post("/routers", json={"router": {"name": "r", "external_gateway_info": {"network_id": ext["id"]}}}),
             201)["router"]
    ok(alice.put(f"/routers/{rtr['id']}/add_router_interface", json={"subnet_id": sub["id"]}))
    used = {r: v["used"] for r, v in details(alice).items()}
    assert used["port"] == 1 and used["router"] == 1 and used["subnet"] == 2
    assert details(admin, project_id_for("admin"))["port"]["used"] == 0
    fip = ok(alice.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"]}}), 201)["floatingip"]
    assert details(alice)["floatingip"]["used"] == 1 and details(alice)["port"]["used"] == 1  # fip port: nobody's
    ok(alice.delete(f"/floatingips/{fip['id']}"), 204)
    ok(alice.put(f"/routers/{rtr['id']}/remove_router_interface", json={"subnet_id": sub["id"]}))
    assert details(alice)["port"]["used"] == 0
    ok(alice.delete(f"/routers/{rtr['id']}"), 204)
    # a network delete removes its subnets and its service (dhcp) ports in one transaction
    port(alice, net, device_owner="network:dhcp")
    assert details(alice)["port"]["used"] == 1
    ok(alice.delete(f"/networks/{net['id']}"), 204)
    used = {r: v["used"] for r, v in details(alice).items()}
    assert used == {"network": 0, "subnet": 0, "port": 0, "router": 0, "floatingip": 0,
                    "security_group": 0, "security_group_rule": 0, "subnetpool": 0,
                    "rbac_policy": 0}  # network:* ports get no default group
    assert stored_usage(server.store, A, "port") == 0
    # a group delete removes its rules
    g = ok(alice.post("/security-groups", json={"security_group": {"name": "g"}}), 201)["security_group"]
    assert details(alice)["security_group_rule"]["used"] == 4 + 2
    ok(alice.post("/security-group-rules", json={"security_group_rule": {
        "security_group_id": g["id"], "direction": "ingress", "protocol": "udp"}}), 201)
    assert details(alice)["security_group_rule"]["used"] == 4 + 3
    ok(alice.delete(f"/security-groups/{g['id']}"), 204)
    assert details(alice)["security_group_rule"]["used"] == 4
    assert details(alice)["security_group"]["used"] == 1


def test_the_default_group_is_created_even_at_the_group_quota_and_counts(server: Any) -> None:
    admin, alice = server.api("admin"), server.api("alice")
    set_quota(admin, security_group=0, security_group_rule=0)
    net = network(alice)
    subnet(alice, net, "100.64.0.0/24")
    p = port(alice, net)  # the implicit default group is not refused
    assert len(p["security_groups"]) == 1
    d = details(alice)
    assert d["security_group"]["used"] == 1 and d["security_group_rule"]["used"] == 4
    over_quota(alice.post("/security-groups", json={"security_group": {"name": "x"}}), "security_group")
    over_quota(alice.post("/security-group-rules", json={"security_group_rule": {
        "security_group_id": p["security_groups"][0], "direction": "ingress", "protocol": "tcp"}}),
        "security_group_rule")


def test_counting_on_first_use_for_a_store_without_counters(server: Any) -> None:
    admin, alice = server.api("admin"), server.api("alice")
    net = network(alice)
    subnet(alice, net, "100.64.0.0/24")
    ports = [port(alice, net) for _ in range(4)]
    # a store written before quotas existed: resources, no counters
    server.store.txn([], [Delete(USAGE_PREFIX, prefix=True)])
    assert server.store.range(USAGE_PREFIX)[0] == []
    assert details(alice)["port"]["used"] == 4  # counted for display, nothing written
    ok(alice.delete(f"/ports/{ports[0]['id']}"), 204)  # a delete counts first, too
    assert stored_usage(server.store, A, "port") == 3
    server.store.txn([], [Delete(USAGE_PREFIX, prefix=True)])
    set_quota(admin, port=5)
    port(alice, net)
    port(alice, net)
    over_quota(alice.post("/ports", json={"port": {"network_id": net["id"]}}), "port")
    assert stored_usage(server.store, A, "port") == 5


def test_max_fixed_ips_per_port_and_max_allowed_address_pair(server: Any) -> None:
    alice = server.api("alice")
    net = network(alice)
    sub = subnet(alice, net, "100.64.0.0/24")
    six = [{"subnet_id": sub["id"]}] * 6
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "fixed_ips": six}}), 400,
                 "InvalidInput", "Exceeded maximum amount of fixed ips per port")
    p = port(alice, net, fixed_ips=six[:5])
    assert len(p["fixed_ips"]) == 5
    assert_error(alice.put(f"/ports/{p['id']}", json={"port": {"fixed_ips": [
        {"ip_address": ip["ip_address"]} for ip in p["fixed_ips"]] + [{"subnet_id": sub["id"]}]}}), 400,
        "InvalidInput", "Exceeded maximum amount of fixed ips per port")
    assert len(ok(alice.get(f"/ports/{p['id']}"))["port"]["fixed_ips"]) == 5
    assert len(server.store.range(f"/vxnet/ipam/{sub['id']}/")[0]) == 5  # the refused 6th left no claim
    pairs = [{"ip_address": f"192.0.2.{i}"} for i in range(11)]
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "allowed_address_pairs": pairs}}),
                 400, "AllowedAddressPairExhausted", "The number of allowed address pair exceeds the maximum 10.")
    q = port(alice, net, allowed_address_pairs=pairs[:10])
    assert_error(alice.put(f"/ports/{q['id']}", json={"port": {"allowed_address_pairs": pairs}}), 400,
                 "AllowedAddressPairExhausted")
    ok(alice.put(f"/ports/{q['id']}", json={"port": {"allowed_address_pairs": pairs[:2]}}))


def test_an_over_limit_fixed_ips_request_is_refused_before_any_allocation(server: Any, monkeypatch: Any) -> None:
    """Neutron checks the count a request lists first: a create or update listing 1,000 fixed
    IPs is refused (the same 400) without one address or MAC being allocated; `network:*`
    owners stay exempt (their 6 addresses are allocated, counted by the same probe)."""
    alice, admin = server.api("alice"), server.api("admin")
    net = network(alice)
    sub = subnet(alice, net, "100.64.0.0/20")
    p = port(alice, net, fixed_ips=[{"subnet_id": sub["id"]}] * 2)
    allocations: Counter[str] = Counter()

    def counting(name: str) -> Any:
        real = getattr(ipam, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            allocations[name] += 1
            return real(*args, **kwargs)
        return counted
    for name in ("allocate_ip", "allocate_mac"):   # the server runs in this process, in a thread
        monkeypatch.setattr(ipam, name, counting(name))
    many = [{"subnet_id": sub["id"]}] * 1000
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "fixed_ips": many}}), 400,
                 "InvalidInput", "Exceeded maximum amount of fixed ips per port")
    kept = [{"ip_address": ip["ip_address"]} for ip in p["fixed_ips"]]
    assert_error(alice.put(f"/ports/{p['id']}", json={"port": {"fixed_ips": kept + many}}), 400,
                 "InvalidInput", "Exceeded maximum amount of fixed ips per port")
    assert allocations == Counter(), allocations
    assert len(server.store.range(f"/vxnet/ipam/{sub['id']}/")[0]) == 2
    dhcp = port(admin, net, device_owner="network:dhcp", fixed_ips=[{"subnet_id": sub["id"]}] * 6)
    assert len(dhcp["fixed_ips"]) == 6 and allocations == Counter(allocate_ip=6, allocate_mac=1), allocations


def test_config_defaults_and_disabled(tmp_path: Any) -> None:
    cfg_file = tmp_path / "vxnet.toml"
    cfg_file.write_text('[quotas]\nquota_network = 2\nquota_port = -1\nmax_fixed_ips_per_port = 1\n')
    cfg = load_config(str(cfg_file))
    assert dict(cfg.quotas.defaults)["network"] == 2 and cfg.quotas.max_fixed_ips_per_port == 1
    for bad in ('quota_volumes = 3', 'quota_port = -5', 'quota_port = "x"', 'enabled = 1'):
        cfg_file.write_text(f"[quotas]\n{bad}\n")
        with pytest.raises(ConfigError):
            load_config(str(cfg_file))
    port_no = free_port()
    h = start_server(str(tmp_path / "a.db"), Config(listen=f"127.0.0.1:{port_no}", users=USERS, quotas=cfg.quotas))
    try:
        alice = h.api("alice")
        assert ok(alice.get(f"/quotas/{A}"))["quota"]["network"] == 2
        network(alice)
        network(alice)
        over_quota(alice.post("/networks", json={"network": {}}), "network")
    finally:
        h.stop()
    port_no = free_port()
    off = QuotaSettings(enabled=False, defaults=(("network", 1),) + tuple(
        (r, v) for r, v in DEFAULTS.items() if r != "network"))
    h = start_server(str(tmp_path / "b.db"), Config(listen=f"127.0.0.1:{port_no}", users=USERS, quotas=off))
    try:
        alice = h.api("alice")
        for _ in range(3):
            network(alice)
    finally:
        h.stop()


# --- concurrency ---------------------------------------------------------------------------------


class SlowReads:
    """The store, with every `get` taking `delay` seconds longer (the thread sleeps, so the other
    server's thread runs meanwhile): a transaction's reads and its commit are far apart, as
    between servers on different hosts."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.delay = 0.0

    def get(self, key: str) -> Any:
        if self.delay:
            time.sleep(self.delay)
        return self._store.get(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_50_parallel_port_creates_through_two_servers_with_a_quota_of_10(tmp_path: Any) -> None:
    store = SqliteStore(os.path.join(tmp_path, "vxnet.db"))
    slow = SlowReads(store)
    servers = []
    for _ in range(2):
        p = free_port()
        srv = uvicorn.Server(uvicorn.Config(create_app(Config(listen=f"127.0.0.1:{p}", users=USERS), slow),  # type: ignore[arg-type]
                                            host="127.0.0.1", port=p, log_level="warning", access_log=False))
        th = threading.Thread(target=srv.run, daemon=True)
        th.start()
        servers.append((srv, th, f"http://127.0.0.1:{p}"))
    try:
        deadline = time.time() + 10
        while not all(s.started for s, _, _ in servers):
            assert time.time() < deadline
            time.sleep(0.01)
        urls = [u for _, _, u in servers]
        token = get_token(urls[0], "alice", "alice-pw", "tenant-a")
        admin_token = get_token(urls[0], "admin", "s3cret", "admin")
        with http.client(base_url=urls[1] + "/v2.0", headers={"X-Auth-Token": token}) as c:
            net = network(c)
            sub = subnet(c, net, "100.64.0.0/24")
        with http.client(base_url=urls[0] + "/v2.0", headers={"X-Auth-Token": admin_token}) as c:
            set_quota(c, port=10)
        clients = [http.client(base_url=u + "/v2.0", headers={"X-Auth-Token": token}, timeout=120,
                               limits=httpx.Limits(max_connections=25)) for u in urls]

        def create(i: int) -> httpx.Response:
            # odd ones without an address: only the usage counter makes them conflict
            body = {"network_id": net["id"], "name": f"p{i}", **({"fixed_ips": []} if i % 2 else {})}
            return clients[i % 2].post("/ports", json={"port": body})

        slow.delay = 0.003  # every read now opens a window for the other server's commit
        with ThreadPoolExecutor(50) as ex:
            responses = list(ex.map(create, range(50)))
        slow.delay = 0.0
        for c in clients:
            c.close()
        codes = Counter(r.status_code for r in responses)
        assert codes == {201: 10, 409: 40}, (codes, [r.text for r in responses if r.status_code not in (201, 409)][:3])
        for r in responses:
            if r.status_code == 409:
                over_quota(r, "port")
        with http.client(base_url=urls[1] + "/v2.0", headers={"X-Auth-Token": token}) as c:
            listed = ok(c.get("/ports"))["ports"]
            assert details(c)["port"] == {"limit": 10, "used": 10, "reserved": 0}
        assert {p["id"] for p in listed} == {r.json()["port"]["id"] for r in responses if r.status_code == 201}
        assert len(store.range(f"/vxnet/ipam/{sub['id']}/")[0]) == sum(len(p["fixed_ips"]) for p in listed)
        assert len(store.range(f"/vxnet/mac/{net['id']}/")[0]) == 10
    finally:
        for srv, th, _ in servers:
            srv.should_exit = True
            th.join(10)
        store.close()


# --- network IP availability -----------------------------------------------------------------------


def test_network_ip_availabilities(server: Any) -> None:
    admin, alice = server.api("admin"), server.api("alice")
    net = network(alice, name="avail")
    s1 = subnet(alice, net, "100.64.0.0/24")  # pool .2-.254: 253
    s2 = subnet(alice, net, "100.64.1.0/28", allocation_pools=[{"start": "100.64.1.5", "end": "100.64.1.9"}])
    for _ in range(3):
        port(alice, net, fixed_ips=[{"subnet_id": s1["id"]}])
    port(alice, net, fixed_ips=[{"subnet_id": s2["id"]}])
    empty = network(alice, name="empty")
    def by_cidr(item: dict[str, Any]) -> dict[str, Any]:  # subnet order: creation, then id
        return {**item, "subnet_ip_availability": sorted(item["subnet_ip_availability"], key=lambda s: s["cidr"])}

    one = ok(admin.get(f"/network-ip-availabilities/{net['id']}"))["network_ip_availability"]
    assert by_cidr(one) == {
        "network_id": net["id"], "network_name": "avail", "project_id": A, "tenant_id": A,
        "total_ips": 253 + 5, "used_ips": 4,
        "subnet_ip_availability": [
            {"subnet_id": s1["id"], "subnet_name": s1["name"], "cidr": "100.64.0.0/24", "ip_version": 4,
             "total_ips": 253, "used_ips": 3},
            {"subnet_id": s2["id"], "subnet_name": s2["name"], "cidr": "100.64.1.0/28", "ip_version": 4,
             "total_ips": 5, "used_ips": 1},
        ],
    }
    listed = ok(admin.get("/network-ip-availabilities"))["network_ip_availabilities"]
    assert {i["network_id"] for i in listed} == {net["id"], empty["id"]}
    assert by_cidr(next(i for i in listed if i["network_id"] == net["id"])) == by_cidr(one)
    assert next(i for i in listed if i["network_id"] == empty["id"])["total_ips"] == 0
    got = ok(admin.get("/network-ip-availabilities", params={"network_name": "empty", "fields": "network_id"}))
    assert got == {"network_ip_availabilities": [{"network_id": empty["id"]}]}
    assert ok(admin.get("/network-ip-availabilities", params={"ip_version": 6}))["network_ip_availabilities"] == []
    # admin only (Neutron's default): others see nothing
    assert ok(alice.get("/network-ip-availabilities")) == {"network_ip_availabilities": []}
    assert_error(alice.get(f"/network-ip-availabilities/{net['id']}"), 404)
    assert_error(admin.get("/network-ip-availabilities/00000000-0000-0000-0000-000000000000"), 404)


def test_reset_usage_after_running_with_quotas_off(tmp_path: Any) -> None:
    db = str(tmp_path / "vxnet.db")
    settings = {on: QuotaSettings(enabled=on, defaults=tuple({**DEFAULTS, "port": 6}.items())) for on in (True, False)}

    def run(on: bool, creates: int) -> dict[str, dict[str, int]]:
        p = free_port()
        h = start_server(db, Config(listen=f"127.0.0.1:{p}", users=USERS, quotas=settings[on]))
        try:
            alice = h.api("alice")
            nets = ok(alice.get("/networks"))["networks"]
            net = nets[0] if nets else network(alice)
            for _ in range(creates):
                ok(alice.post("/ports", json={"port": {"network_id": net["id"], "fixed_ips": []}}), 201)
            return details(alice)
        finally:
            h.stop()

    assert run(True, 2)["port"]["used"] == 2
    run(False, 3)  # nothing counted: the counter says 2, the store holds 5
    store = SqliteStore(db)
    assert stored_usage(store, A, "port") == 2
    store.close()
    out = subprocess.run([str(VXNET), "quota", "reset-usage", "--store", f"sqlite://{db}"], check=False, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "deleted" in out.stdout, out
    store = SqliteStore(db)
    assert store.range(USAGE_PREFIX)[0] == []
    store.close()
    after = run(True, 1)  # recounted: 5 + 1
    assert after["port"] == {"limit": 6, "used": 6, "reserved": 0}
    p = free_port()
    h = start_server(db, Config(listen=f"127.0.0.1:{p}", users=USERS, quotas=settings[True]))
    try:
        alice = h.api("alice")
        net = ok(alice.get("/networks"))["networks"][0]
        over_quota(alice.post("/ports", json={"port": {"network_id": net["id"]}}), "port")
    finally:
        h.stop()


def test_a_counter_without_shards_is_read_as_it_is_and_stray_shards_are_dropped(server: Any) -> None:
    """A base counter of an older version (no delta shards) is the usage as it stands; delta
    shards left without a base are dropped when the usage is counted from the store."""
    admin, alice = server.api("admin"), server.api("alice")
    net = network(alice)
    subnet(alice, net, "100.64.0.0/24")
    ports = [port(alice, net) for _ in range(3)]
    server.store.txn([], [Delete(USAGE_PREFIX, prefix=True)])
    server.store.txn([], [Put(f"{USAGE_PREFIX}{A}/port", "3")])  # the old format
    assert details(alice)["port"]["used"] == 3
    set_quota(admin, port=4)
    port(alice, net)
    over_quota(alice.post("/ports", json={"port": {"network_id": net["id"]}}), "port")
    assert server.store.get(f"{USAGE_PREFIX}{A}/port").value == "3"  # type: ignore[union-attr]
    assert stored_usage(server.store, A, "port") == 4
    # shards without a base (not written by this version): ignored, then dropped by the recount
    server.store.txn([], [Delete(USAGE_PREFIX, prefix=True)])
    server.store.txn([], [Put(f"{USAGE_PREFIX}{A}/port/7", "40")])
    assert stored_usage(server.store, A, "port") is None
    assert details(alice)["port"]["used"] == 4
    ok(alice.delete(f"/ports/{ports[0]['id']}"), 204)
    assert server.store.range(f"{USAGE_PREFIX}{A}/port/")[0] == []
    assert stored_usage(server.store, A, "port") == 3
    port(alice, net)
    over_quota(alice.post("/ports", json={"port": {"network_id": net["id"]}}), "port")
