"""The unmodified `openstack network rbac ...` CLI against a running `vxnet server`.

demo shares its network with alt_demo (`network rbac create --target-project <id>`); alt_demo
then sees the network and plugs a port into it, while demo2 (targeted by nothing) does not see
it; `rbac list/show/set/delete` as the client prints them; a policy in use cannot be deleted;
deleting it takes the access away again. The admin shares an external network with one project
(`--action access_as_external`) and with every project (`--target-all-projects`).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.clients.conftest import Cloud


@pytest.fixture(scope="module")
def cli(vxnet_cloud: Cloud) -> Cloud:
    return vxnet_cloud


def project_id(cli: Cloud, user: str) -> str:
    """The project id of `user`'s token (as the user itself reads it)."""
    return str(cli.openstack(user, "token", "issue", "-f", "json").json()["project_id"])


def rows(cli: Cloud, user: str, *args: str) -> list[dict[str, Any]]:
    return cli.openstack(user, "network", "rbac", "list", "--long", *args, "-f", "json").json()  # type: ignore[no-any-return]


def test_share_a_network_with_one_project(cli: Cloud) -> None:
    alt, demo = project_id(cli, "alt_demo"), project_id(cli, "demo")
    net = cli.openstack("demo", "network", "create", "rbac-net", "-f", "json").json()
    cli.openstack("demo", "subnet", "create", "rbac-sub", "--network", "rbac-net", "--subnet-range",
                  "100.64.40.0/24", "-f", "json")
    assert cli.openstack("alt_demo", "network", "show", net["id"], check=False).rc != 0
    pol = cli.openstack("demo", "network", "rbac", "create", "--type", "network", "--action", "access_as_shared",
                        "--target-project", alt, "rbac-net", "-f", "json").json()
    assert pol["object_id"] == net["id"] and pol["target_project_id"] == alt and pol["project_id"] == demo
    assert pol["action"] == "access_as_shared" and pol["object_type"] == "network"
    listed = {r["ID"]: r for r in rows(cli, "demo")}
    assert listed[pol["id"]]["Object ID"] == net["id"] and listed[pol["id"]]["Action"] == "access_as_shared"
    shown = cli.openstack("demo", "network", "rbac", "show", pol["id"], "-f", "json").json()
    assert shown["target_project_id"] == alt
    # alt_demo: sees and uses the network, but not the policy; demo2 sees nothing
    seen = cli.openstack("alt_demo", "network", "show", net["id"], "-f", "json").json()
    assert seen["shared"] is True
    port = cli.openstack("alt_demo", "port", "create", "alt-port", "--network", net["id"], "-f", "json").json()
    assert port["network_id"] == net["id"]
    assert pol["id"] not in {r["ID"] for r in rows(cli, "alt_demo")}
    assert cli.openstack("alt_demo", "network", "rbac", "delete", pol["id"], check=False).rc != 0
    assert cli.openstack("demo2", "network", "show", net["id"], check=False).rc != 0
    assert net["id"] not in {n["ID"] for n in cli.openstack("demo2", "network", "list", "-f", "json").json()}
    # demo2 may not share demo's network with itself
    r = cli.openstack("demo2", "network", "rbac", "create", "--type", "network", "--action", "access_as_shared",
                      "--target-project", project_id(cli, "demo2"), net["id"], check=False)
    assert r.rc != 0
    # in use by alt_demo's port
    r = cli.openstack("demo", "network", "rbac", "delete", pol["id"], check=False)
    assert r.rc != 0 and "depend on it" in r.stderr + r.stdout, r
    cli.openstack("alt_demo", "port", "delete", port["id"])
    cli.openstack("demo", "network", "rbac", "delete", pol["id"])
    assert cli.openstack("alt_demo", "network", "show", net["id"], check=False).rc != 0
    assert pol["id"] not in {r["ID"] for r in rows(cli, "demo")}


def test_update_target_and_external_sharing(cli: Cloud) -> None:
    alt, demo2 = project_id(cli, "alt_demo"), project_id(cli, "demo2")
    net = cli.openstack("admin", "network", "create", "rbac-ext", "-f", "json").json()
    pol = cli.openstack("admin", "network", "rbac", "create", "--type", "network", "--action", "access_as_external",
                        "--target-project", alt, net["id"], "-f", "json").json()
    assert cli.openstack("admin", "network", "show", net["id"], "-f", "json").json()["router:external"] is True
    assert cli.openstack("alt_demo", "network", "show", net["id"], "-f", "json").json()["router:external"] is True
    assert cli.openstack("demo2", "network", "show", net["id"], check=False).rc != 0
    # `rbac set --target-project`: the access moves to demo2
    cli.openstack("admin", "network", "rbac", "set", "--target-project", demo2, pol["id"])
    assert cli.openstack("admin", "network", "rbac", "show", pol["id"], "-f", "json").json()["target_project_id"] == demo2
    assert cli.openstack("alt_demo", "network", "show", net["id"], check=False).rc != 0
    cli.openstack("demo2", "network", "show", net["id"], "-f", "json")
    # to everyone
    wild = cli.openstack("admin", "network", "rbac", "create", "--type", "network", "--action", "access_as_external",
                         "--target-all-projects", net["id"], "-f", "json").json()
    assert wild["target_project_id"] == "*"
    cli.openstack("alt_demo", "network", "show", net["id"], "-f", "json")
    listed = {r["ID"] for r in rows(cli, "admin", "--action", "access_as_external")}
    assert {pol["id"], wild["id"]} <= listed
    # a member may not share with everyone
    own = cli.openstack("demo", "network", "create", "rbac-own", "-f", "json").json()
    r = cli.openstack("demo", "network", "rbac", "create", "--type", "network", "--action", "access_as_shared",
                      "--target-all-projects", own["id"], check=False)
    assert r.rc != 0
    for pid in (pol["id"], wild["id"]):
        cli.openstack("admin", "network", "rbac", "delete", pid)
    assert cli.openstack("admin", "network", "show", net["id"], "-f", "json").json()["router:external"] is False
    assert cli.server_errors() == []


def test_share_a_subnet_pool_address_scope_and_qos_policy(cli: Cloud) -> None:
    """`network rbac create --type subnetpool|address_scope|qos_policy`: alt_demo sees each
    object and uses the pool (a subnet from it) while demo2 sees none; the pool's policy cannot be
    deleted while alt_demo's subnet comes from it."""
    alt = project_id(cli, "alt_demo")
    demo = project_id(cli, "demo")
    scope = cli.openstack("demo", "address", "scope", "create", "--ip-version", "4", "rbac-scope",
                          "-f", "json").json()
    pool = cli.openstack("demo", "subnet", "pool", "create", "--pool-prefix", "100.64.96.0/20",
                         "--default-prefix-length", "26", "rbac-pool", "-f", "json").json()
    qos = cli.openstack("admin", "network", "qos", "policy", "create", "--project", demo, "rbac-qos",
                        "-f", "json").json()
    pols = {}
    for kind, obj, user in (("address_scope", scope, "demo"), ("subnetpool", pool, "demo"),
                            ("qos_policy", qos, "admin")):
        pols[kind] = cli.openstack(user, "network", "rbac", "create", "--type", kind, "--action", "access_as_shared",
                                   "--target-project", alt, obj["id"], "-f", "json").json()
        assert pols[kind]["object_type"] == kind and pols[kind]["target_project_id"] == alt
    assert cli.openstack("alt_demo", "address", "scope", "show", scope["id"], "-f", "json").json()["shared"] is True
    assert cli.openstack("alt_demo", "network", "qos", "policy", "show", qos["id"], "-f", "json").json()["id"] == qos["id"]
    for args in (("address", "scope", "show", scope["id"]), ("subnet", "pool", "show", pool["id"]),
                 ("network", "qos", "policy", "show", qos["id"])):
        assert cli.openstack("demo2", *args, check=False).rc != 0
    net = cli.openstack("alt_demo", "network", "create", "rbac-pool-net", "-f", "json").json()
    sub = cli.openstack("alt_demo", "subnet", "create", "--network", net["id"], "--subnet-pool", pool["id"],
                        "rbac-pool-sub", "-f", "json").json()
    assert sub["cidr"].startswith("100.64.") and sub["cidr"].endswith("/26")
    assert cli.openstack("demo", "network", "rbac", "delete", pols["subnetpool"]["id"], check=False).rc != 0
    cli.openstack("alt_demo", "subnet", "delete", sub["id"])
    for kind in ("subnetpool", "address_scope", "qos_policy"):
        cli.openstack("admin", "network", "rbac", "delete", pols[kind]["id"])
    assert cli.openstack("alt_demo", "subnet", "pool", "show", pool["id"], check=False).rc != 0
    assert cli.server_errors() == []


def test_share_a_security_group(cli: Cloud) -> None:
    """`network rbac create --type security_group`: alt_demo sees demo's group
    and puts a port of its own in it, demo2 sees nothing; alt_demo cannot change the group or
    add rules to it; the policy cannot be deleted while alt_demo's port is in the group."""
    alt = project_id(cli, "alt_demo")
    sg = cli.openstack("demo", "security", "group", "create", "rbac-sg", "-f", "json").json()
    assert cli.openstack("alt_demo", "security", "group", "show", sg["id"], check=False).rc != 0
    pol = cli.openstack("demo", "network", "rbac", "create", "--type", "security_group", "--action",
                        "access_as_shared", "--target-project", alt, sg["id"], "-f", "json").json()
    assert pol["object_type"] == "security_group" and pol["target_project_id"] == alt
    seen = cli.openstack("alt_demo", "security", "group", "show", sg["id"], "-f", "json").json()
    assert seen["id"] == sg["id"]
    assert cli.openstack("demo2", "security", "group", "show", sg["id"], check=False).rc != 0
    net = cli.openstack("alt_demo", "network", "create", "rbac-sg-net", "-f", "json").json()
    cli.openstack("alt_demo", "subnet", "create", "rbac-sg-sub", "--network", net["id"], "--subnet-range",
                  "100.64.41.0/24", "-f", "json")
    port = cli.openstack("alt_demo", "port", "create", "--network", net["id"], "--security-group", sg["id"],
                         "rbac-sg-port", "-f", "json").json()
    assert port["security_group_ids"] == [sg["id"]]
    assert cli.openstack("alt_demo", "security", "group", "set", "--name", "taken", sg["id"], check=False).rc != 0
    r = cli.openstack("alt_demo", "security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "1:65535",
                      sg["id"], check=False)
    assert r.rc != 0
    r = cli.openstack("demo", "network", "rbac", "delete", pol["id"], check=False)
    assert r.rc != 0 and "depend on it" in r.stderr + r.stdout, r
    cli.openstack("alt_demo", "port", "delete", port["id"])
    cli.openstack("demo", "network", "rbac", "delete", pol["id"])
    assert cli.openstack("alt_demo", "security", "group", "show", sg["id"], check=False).rc != 0
    assert cli.server_errors() == []
