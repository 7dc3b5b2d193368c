"""The unmodified `openstack` CLI (python-openstackclient) against a running `vxnet server`.

A full workflow, as two projects (demo and alt_demo) with the SAME tenant CIDR, plus admin for
the external network: network, subnet, port with a fixed IP, router, add subnet, external
gateway, floating IP, security group and rule, list/show/delete. Every assertion reads the CLI's
own `-f json` output, so what is tested is what a user of the real client sees.

Each stage is a module-scoped fixture built on the previous one, so a failing stage shows up as
the exact CLI call that failed in every test that needs it, and the stages before it still pass.
`test_zz_delete_everything` runs last (tests run in file order) and tears the workflow down.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from tests.clients.conftest import Cloud

PROJECTS = ("demo", "alt_demo")
TENANT_CIDR = "100.64.10.0/24"  # both projects use it: overlapping CIDRs are the point
FIXED_IP = "100.64.10.10"
EXT_CIDR = "203.0.113.0/24"


T = TypeVar("T")


def per_project(fn: Callable[[str], T]) -> dict[str, T]:
    """Run `fn(project)` for both projects at once (each CLI call is a ~1 s process start);
    an assertion failing in either is raised here."""
    with ThreadPoolExecutor(len(PROJECTS)) as pool:
        futures = {p: pool.submit(fn, p) for p in PROJECTS}
        return {p: f.result() for p, f in futures.items()}


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["ID"]: r for r in rows}


@pytest.fixture(scope="module")
def cli(vxnet_cloud: Cloud) -> Cloud:
    return vxnet_cloud


@pytest.fixture(scope="module")
def external(cli: Cloud) -> dict[str, Any]:
    """Admin creates the external network and its subnet."""
    net = cli.openstack("admin", "network", "create", "public", "--external", "-f", "json").json()
    sub = cli.openstack("admin", "subnet", "create", "public-subnet", "--network", "public",
                        "--subnet-range", EXT_CIDR, "--gateway", "203.0.113.1", "--no-dhcp",
                        "--allocation-pool", "start=203.0.113.10,end=203.0.113.200", "-f", "json").json()
    return {"network": net, "subnet": sub}


@pytest.fixture(scope="module")
def networks(cli: Cloud) -> dict[str, dict[str, Any]]:
    return per_project(lambda p: cli.openstack(p, "network", "create", "net", "-f", "json").json())


@pytest.fixture(scope="module")
def subnets(cli: Cloud, networks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return per_project(lambda p: cli.openstack(p, "subnet", "create", "sub", "--network", "net",
                                               "--subnet-range", TENANT_CIDR, "-f", "json").json())


@pytest.fixture(scope="module")
def ports(cli: Cloud, subnets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return per_project(lambda p: cli.openstack(p, "port", "create", "p1", "--network", "net",
                                               "--fixed-ip", f"subnet=sub,ip-address={FIXED_IP}", "-f", "json").json())


@pytest.fixture(scope="module")
def routers(cli: Cloud, subnets: dict[str, dict[str, Any]], external: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Router per project with the tenant subnet attached and the external gateway set."""
    def build(p: str) -> dict[str, Any]:
        cli.openstack(p, "router", "create", "r1", "-f", "json")
        cli.openstack(p, "router", "add", "subnet", "r1", "sub")
        cli.openstack(p, "router", "set", "r1", "--external-gateway", "public")
        return cli.openstack(p, "router", "show", "r1", "-f", "json").json()  # type: ignore[no-any-return]

    return per_project(build)


@pytest.fixture(scope="module")
def floating_ips(cli: Cloud, ports: dict[str, dict[str, Any]], routers: dict[str, dict[str, Any]]
                 ) -> dict[str, dict[str, Any]]:
    return per_project(lambda p: cli.openstack(p, "floating", "ip", "create", "public", "--port", "p1",
                                               "-f", "json").json())


@pytest.fixture(scope="module")
def security_groups(cli: Cloud) -> dict[str, dict[str, Any]]:
    """Group `web` per project with an ingress TCP/22 rule from anywhere."""
    def build(p: str) -> dict[str, Any]:
        sg = cli.openstack(p, "security", "group", "create", "web", "-f", "json").json()
        rule = cli.openstack(p, "security", "group", "rule", "create", "web", "--ingress", "--protocol", "tcp",
                             "--dst-port", "22", "--remote-ip", "0.0.0.0/0", "-f", "json").json()
        return {"group": sg, "rule": rule}

    return per_project(build)


def test_external_network_created_by_admin(cli: Cloud, external: dict[str, Any]) -> None:
    net, sub = external["network"], external["subnet"]
    assert net["router:external"] is True
    assert sub["network_id"] == net["id"]
    assert sub["cidr"] == EXT_CIDR
    assert sub["enable_dhcp"] is False
    # the external network is visible to tenants, by name
    shown = cli.openstack("demo", "network", "show", "public", "-f", "json").json()
    assert shown["id"] == net["id"]
    # a member cannot make an external network
    r = cli.openstack("demo", "network", "create", "pub2", "--external", check=False)
    assert r.rc != 0, r


def test_networks_are_per_project(cli: Cloud, networks: dict[str, dict[str, Any]]) -> None:
    demo, alt = networks["demo"], networks["alt_demo"]
    assert demo["id"] != alt["id"]
    assert demo["project_id"] != alt["project_id"]
    assert demo["name"] == alt["name"] == "net"
    assert demo["status"] == "ACTIVE" and demo["admin_state_up"] is True
    assert demo["mtu"] == 1450
    demo_ids = set(by_id(cli.openstack("demo", "network", "list", "-f", "json").json()))
    alt_ids = set(by_id(cli.openstack("alt_demo", "network", "list", "-f", "json").json()))
    assert demo["id"] in demo_ids and alt["id"] not in demo_ids
    assert alt["id"] in alt_ids and demo["id"] not in alt_ids
    # another project's network is "not found", by id as by name resolution
    r = cli.openstack("demo", "network", "show", alt["id"], check=False)
    assert r.rc != 0 and "No Network found" in r.stderr, r
    # admin sees both
    admin_ids = set(by_id(cli.openstack("admin", "network", "list", "-f", "json").json()))
    assert {demo["id"], alt["id"]} <= admin_ids
    shown = cli.openstack("demo", "network", "show", "net", "-f", "json").json()
    assert shown["id"] == demo["id"]


@pytest.mark.parametrize("auth_url_path, auth_type", [
    ("/identity/v3", "password"),   # GET /v3 discovery, then POST /v3/auth/tokens
    ("/identity", "password"),      # GET / (300, list of versions), then POST
    ("/identity/v3/", "password"),
    ("/identity/v3", "v3password"),  # no discovery at all
])
def test_auth_url_forms_from_environment(cli: Cloud, networks: dict[str, dict[str, Any]], auth_url_path: str,
                                         auth_type: str) -> None:
    env = {"OS_AUTH_URL": cli.url + auth_url_path, "OS_AUTH_TYPE": auth_type, "OS_USERNAME": "alt_demo",
           "OS_PASSWORD": "alt_demo", "OS_PROJECT_NAME": "alt_demo", "OS_USER_DOMAIN_NAME": "Default",
           "OS_PROJECT_DOMAIN_NAME": "Default", "OS_IDENTITY_API_VERSION": "3", "OS_REGION_NAME": "RegionOne"}
    rows = cli.openstack_env(env, "network", "list", "-f", "json").json()
    assert [r["ID"] for r in rows if r["Name"] == "net"] == [networks["alt_demo"]["id"]]
    token = cli.openstack_env(env, "token", "issue", "-f", "json").json()
    assert token["project_id"] == networks["alt_demo"]["project_id"]
    bad = cli.openstack_env(env | {"OS_PASSWORD": "wrong"}, "network", "list", check=False)
    assert bad.rc != 0 and "401" in bad.stderr, bad


def test_reader_cannot_write(cli: Cloud, networks: dict[str, dict[str, Any]]) -> None:
    rows = cli.openstack("demo_reader", "network", "list", "-f", "json").json()
    assert networks["demo"]["id"] in by_id(rows)
    r = cli.openstack("demo_reader", "network", "create", "nope", check=False)
    assert r.rc != 0, r
    names = [n["Name"] for n in cli.openstack("demo", "network", "list", "-f", "json").json()]
    assert "nope" not in names


def test_overlapping_subnets_in_two_projects(cli: Cloud, subnets: dict[str, dict[str, Any]],
                                             networks: dict[str, dict[str, Any]]) -> None:
    def check(p: str) -> None:
        s = subnets[p]
        assert s["cidr"] == TENANT_CIDR
        assert s["network_id"] == networks[p]["id"]
        assert s["gateway_ip"] == "100.64.10.1"
        assert s["ip_version"] == 4
        assert s["enable_dhcp"] is True
        pools = s["allocation_pools"]
        assert pools == [{"start": "100.64.10.2", "end": "100.64.10.254"}], pools
        listed = cli.openstack(p, "subnet", "list", "-f", "json").json()
        assert [r["ID"] for r in listed if r["Subnet"] == TENANT_CIDR] == [s["id"]]

    per_project(check)
    assert subnets["demo"]["id"] != subnets["alt_demo"]["id"]
    # the network lists its subnet
    shown = cli.openstack("demo", "network", "show", "net", "-f", "json").json()
    assert shown["subnets"] == [subnets["demo"]["id"]]


def test_port_with_fixed_ip_in_each_project(cli: Cloud, ports: dict[str, dict[str, Any]],
                                            subnets: dict[str, dict[str, Any]]) -> None:
    def check(p: str) -> None:
        port = ports[p]
        assert port["fixed_ips"] == [{"subnet_id": subnets[p]["id"], "ip_address": FIXED_IP}]
        assert port["mac_address"].startswith("fa:16:3e:")
        shown = cli.openstack(p, "port", "show", "p1", "-f", "json").json()
        assert shown["id"] == port["id"]
        listed = cli.openstack(p, "port", "list", "--fixed-ip", f"ip-address={FIXED_IP}", "-f", "json").json()
        assert [r["ID"] for r in listed] == [port["id"]]

    per_project(check)
    assert ports["demo"]["mac_address"] != ports["alt_demo"]["mac_address"]
    # the same IP again in the same subnet is refused
    r = cli.openstack("demo", "port", "create", "p2", "--network", "net",
                      "--fixed-ip", f"subnet=sub,ip-address={FIXED_IP}", check=False)
    assert r.rc != 0, r


def test_router_with_interface_and_gateway(cli: Cloud, routers: dict[str, dict[str, Any]],
                                           subnets: dict[str, dict[str, Any]], external: dict[str, Any]) -> None:
    ext_net = external["network"]["id"]

    def check(p: str) -> None:
        r = routers[p]
        gw = r["external_gateway_info"]
        assert gw["network_id"] == ext_net, gw
        assert gw["enable_snat"] is True
        (efip,) = gw["external_fixed_ips"]
        assert efip["subnet_id"] == external["subnet"]["id"]
        assert ipaddress.ip_address(efip["ip_address"]) in ipaddress.ip_network(EXT_CIDR)
        # `router show` builds interfaces_info from the router's ports
        # (as with Neutron's DVR: the interface and, while a gateway is set, the centralized SNAT port)
        ifaces = r["interfaces_info"]
        assert min((i["subnet_id"], i["ip_address"]) for i in ifaces) == (subnets[p]["id"], "100.64.10.1"), ifaces
        assert len(ifaces) == 2 and all(i["subnet_id"] == subnets[p]["id"] for i in ifaces), ifaces
        listed = by_id(cli.openstack(p, "router", "list", "-f", "json").json())
        assert list(listed) == [r["id"]]
        rows = cli.openstack(p, "port", "list", "--router", "r1", "--long", "-f", "json").json()
        owners = {row["Device Owner"]: row["Fixed IP Addresses"] for row in rows}
        assert sorted(owners) == ["network:router_centralized_snat", "network:router_interface"], rows
        assert owners["network:router_interface"] == [{"subnet_id": subnets[p]["id"], "ip_address": "100.64.10.1"}]

    per_project(check)
    gw_ips = {routers[p]["external_gateway_info"]["external_fixed_ips"][0]["ip_address"] for p in PROJECTS}
    assert len(gw_ips) == 2


def test_floating_ip_per_project(cli: Cloud, floating_ips: dict[str, dict[str, Any]],
                                 ports: dict[str, dict[str, Any]], routers: dict[str, dict[str, Any]],
                                 external: dict[str, Any]) -> None:
    addrs = set()

    def check(p: str) -> None:
        fip = floating_ips[p]
        assert fip["floating_network_id"] == external["network"]["id"]
        assert fip["port_id"] == ports[p]["id"]
        assert fip["fixed_ip_address"] == FIXED_IP
        assert fip["router_id"] == routers[p]["id"]
        assert ipaddress.ip_address(fip["floating_ip_address"]) in ipaddress.ip_network(EXT_CIDR)
        addrs.add(fip["floating_ip_address"])
        shown = cli.openstack(p, "floating", "ip", "show", fip["floating_ip_address"], "-f", "json").json()
        assert shown["id"] == fip["id"]
        listed = by_id(cli.openstack(p, "floating", "ip", "list", "-f", "json").json())
        assert list(listed) == [fip["id"]]

    per_project(check)
    assert len(addrs) == 2
    # disassociate and associate again
    cli.openstack("demo", "floating", "ip", "unset", "--port", floating_ips["demo"]["id"])
    shown = cli.openstack("demo", "floating", "ip", "show", floating_ips["demo"]["id"], "-f", "json").json()
    assert shown["port_id"] is None and shown["fixed_ip_address"] is None
    cli.openstack("demo", "floating", "ip", "set", "--port", "p1", floating_ips["demo"]["id"])
    shown = cli.openstack("demo", "floating", "ip", "show", floating_ips["demo"]["id"], "-f", "json").json()
    assert shown["port_id"] == ports["demo"]["id"]


def test_security_group_and_rule(cli: Cloud, security_groups: dict[str, dict[str, Any]],
                                 ports: dict[str, dict[str, Any]]) -> None:
    def check(p: str) -> None:
        sg, rule = security_groups[p]["group"], security_groups[p]["rule"]
        assert sg["name"] == "web"
        assert rule["security_group_id"] == sg["id"]
        assert rule["direction"] == "ingress"
        assert rule["protocol"] == "tcp"
        assert (rule["port_range_min"], rule["port_range_max"]) == (22, 22)
        assert rule["remote_ip_prefix"] == "0.0.0.0/0"
        assert rule["ether_type"] == "IPv4"  # the CLI renames ethertype
        groups = {g["Name"]: g["ID"] for g in cli.openstack(p, "security", "group", "list", "-f", "json").json()}
        assert groups.get("web") == sg["id"] and "default" in groups, groups
        rules = cli.openstack(p, "security", "group", "rule", "list", "web", "-f", "json").json()
        assert rule["id"] in {r["ID"] for r in rules}
        # the group starts with Neutron's two egress rules
        assert sum(1 for r in rules if r["Direction"] == "egress") == 2, rules
        cli.openstack(p, "port", "set", "p1", "--no-security-group", "--security-group", "web")
        shown = cli.openstack(p, "port", "show", "p1", "-f", "json").json()
        assert shown["security_group_ids"] == [sg["id"]]

    per_project(check)
    assert security_groups["demo"]["group"]["id"] != security_groups["alt_demo"]["group"]["id"]
    # a duplicate rule is refused
    r = cli.openstack("demo", "security", "group", "rule", "create", "web", "--ingress", "--protocol", "tcp",
                      "--dst-port", "22", "--remote-ip", "0.0.0.0/0", check=False)
    assert r.rc != 0 and "already exists" in r.stderr, r


def test_zz_delete_everything(cli: Cloud, floating_ips: dict[str, dict[str, Any]],
                              security_groups: dict[str, dict[str, Any]], external: dict[str, Any]) -> None:
    """Tear the workflow down with the CLI, in dependency order, and check the lists are empty."""
    def check(p: str) -> None:
        cli.openstack(p, "floating", "ip", "delete", floating_ips[p]["id"])
        # deleting a network that still has ports is refused
        r = cli.openstack(p, "network", "delete", "net", check=False)
        assert r.rc != 0, r
        cli.openstack(p, "router", "unset", "--external-gateway", "r1")
        cli.openstack(p, "router", "remove", "subnet", "r1", "sub")
        cli.openstack(p, "router", "delete", "r1")
        cli.openstack(p, "port", "delete", "p1")
        cli.openstack(p, "security", "group", "delete", "web")
        cli.openstack(p, "subnet", "delete", "sub")
        cli.openstack(p, "network", "delete", "net")
        for kind in (("floating", "ip"), ("router",), ("port",), ("subnet",)):
            assert cli.openstack(p, *kind, "list", "-f", "json").json() == [], kind
        assert [n["Name"] for n in cli.openstack(p, "network", "list", "-f", "json").json()] == ["public"]
        assert [g["Name"] for g in cli.openstack(p, "security", "group", "list", "-f", "json").json()] == ["default"]

    per_project(check)
    cli.openstack("admin", "subnet", "delete", "public-subnet")
    cli.openstack("admin", "network", "delete", "public")
    assert cli.openstack("admin", "network", "list", "-f", "json").json() == []
    assert not cli.server_errors(), cli.log_tail(80)
