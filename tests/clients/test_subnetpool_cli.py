"""`openstack subnet pool ...`, `openstack address scope ...` and `openstack subnet create
--subnet-pool` (the unmodified CLI) against a `vxnet server` subprocess.

demo creates an address scope and a pool in it, then subnets from the pool by the pool's
default length and by `--prefix-length`; the network shows the scope; `subnet pool set
--pool-prefix` adds a prefix; a pool with subnets cannot be deleted; alt_demo cannot see or use
demo's pool; the admin makes a shared default pool that alt_demo uses with
`--use-default-subnet-pool`; everything is deleted through the CLI at the end.
"""

from __future__ import annotations

import ipaddress

from tests.clients.conftest import Cloud


def test_subnet_pools_and_address_scopes_with_the_real_cli(vxnet_cloud: Cloud) -> None:
    cli = vxnet_cloud.openstack
    scope = cli("demo", "address", "scope", "create", "--ip-version", "4", "s1", "-f", "json").json()
    assert scope["name"] == "s1" and scope["ip_version"] == 4 and scope["shared"] is False
    listed = cli("demo", "address", "scope", "list", "-f", "json").json()
    assert [r["ID"] for r in listed] == [scope["id"]]
    shared_refused = cli("demo", "address", "scope", "create", "--share", "s2", check=False)
    assert shared_refused.rc != 0 and "create_address_scope:shared" in shared_refused.stderr, shared_refused

    pool = cli("demo", "subnet", "pool", "create", "--pool-prefix", "100.64.0.0/16", "--default-prefix-length", "24",
               "--min-prefix-length", "20", "--max-prefix-length", "28", "--address-scope", "s1", "p1",
               "-f", "json").json()
    assert pool["prefixes"] in (["100.64.0.0/16"], "100.64.0.0/16"), pool
    assert (pool["default_prefixlen"], pool["address_scope_id"]) == (24, scope["id"]), pool
    assert [r["Name"] for r in cli("demo", "subnet", "pool", "list", "-f", "json").json()] == ["p1"]
    assert cli("demo", "subnet", "pool", "show", "p1", "-f", "json").json()["id"] == pool["id"]

    cli("demo", "network", "create", "pnet")
    s1 = cli("demo", "subnet", "create", "--network", "pnet", "--subnet-pool", "p1", "ps1", "-f", "json").json()
    s2 = cli("demo", "subnet", "create", "--network", "pnet", "--subnet-pool", "p1", "--prefix-length", "26", "ps2",
             "-f", "json").json()
    n1, n2 = ipaddress.ip_network(s1["cidr"]), ipaddress.ip_network(s2["cidr"])
    assert n1.prefixlen == 24 and n2.prefixlen == 26 and not n1.overlaps(n2)
    assert all(n.subnet_of(ipaddress.ip_network("100.64.0.0/16")) for n in (n1, n2))
    assert s1["subnetpool_id"] == pool["id"]
    net = cli("demo", "network", "show", "pnet", "-f", "json").json()
    assert net["ipv4_address_scope"] == scope["id"], net

    cli("demo", "subnet", "pool", "set", "--pool-prefix", "100.65.0.0/16", "p1")
    assert cli("demo", "subnet", "pool", "show", "p1", "-f", "json").json()["prefixes"] in (
        ["100.64.0.0/15"], "100.64.0.0/15")
    busy = cli("demo", "subnet", "pool", "delete", "p1", check=False)
    assert busy.rc != 0, busy

    # another project neither sees nor uses demo's pool
    assert cli("alt_demo", "subnet", "pool", "list", "-f", "json").json() == []
    cli("alt_demo", "network", "create", "anet")
    refused = cli("alt_demo", "subnet", "create", "--network", "anet", "--subnet-pool", pool["id"], "as1", check=False)
    assert refused.rc != 0 and "No SubnetPool found" in refused.stderr, refused  # its GET was a 404

    # a shared default pool made by the admin, used by alt_demo
    default = cli("admin", "subnet", "pool", "create", "--pool-prefix", "100.66.0.0/16", "--default-prefix-length",
                  "26", "--share", "--default", "dp", "-f", "json").json()
    assert default["is_default"] is True and default["shared"] is True, default
    a1 = cli("alt_demo", "subnet", "create", "--network", "anet", "--use-default-subnet-pool", "as1",
             "-f", "json").json()
    assert a1["subnetpool_id"] == default["id"] and ipaddress.ip_network(a1["cidr"]).prefixlen == 26

    # teardown through the CLI
    cli("alt_demo", "subnet", "delete", "as1")
    cli("admin", "subnet", "pool", "delete", "dp")
    cli("demo", "subnet", "delete", "ps1", "ps2")
    cli("demo", "subnet", "pool", "delete", "p1")
    cli("demo", "address", "scope", "delete", "s1")
    assert cli("demo", "subnet", "pool", "list", "-f", "json").json() == []
    assert cli("demo", "address", "scope", "list", "-f", "json").json() == []
    assert vxnet_cloud.server_errors() == []
