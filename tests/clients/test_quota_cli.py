"""`openstack quota set/show/delete --network` (the unmodified CLI) against a `vxnet server`
subprocess: the admin sets a port quota of 3 for project `demo`, `quota show` (plain and
`--usage`, as admin and as demo) shows it, demo's 4th port is refused with Neutron's OverQuota
message, `quota set` below the usage is refused (the CLI sends `check_limit` unless `--force`),
a member cannot set quotas, and `quota delete --network` restores the defaults; the admin's
`openstack ip availability list/show` report the network's addresses.
"""

from __future__ import annotations

from typing import Any

from tests.clients.conftest import Cloud
from vxnet.config import project_id_for


def _show(cloud: Cloud, as_user: str, *args: str) -> dict[str, Any]:
    rows = cloud.openstack(as_user, "quota", "show", "--network", *args, "-f", "json").json()
    # the CLI prints a list of {Resource, Limit[, In Use, Reserved]} rows or a flat dict
    if isinstance(rows, list):
        return {r["Resource"]: r for r in rows}
    return rows  # type: ignore[no-any-return]


def _limit(row: Any) -> int:
    return int(row["Limit"] if isinstance(row, dict) else row)


def test_quota_set_show_and_enforcement_with_the_real_cli(vxnet_cloud: Cloud) -> None:
    cloud = vxnet_cloud
    cloud.openstack("admin", "quota", "set", "--ports", "3", "--networks", "5", "demo")
    shown = _show(cloud, "admin", "demo")
    assert _limit(shown["ports"]) == 3 and _limit(shown["networks"]) == 5, shown
    assert _limit(shown["routers"]) == 10 and _limit(shown["floating_ips"]) == 50, shown
    assert _show(cloud, "demo", "demo") == shown  # a member reads its own project's quota

    cloud.openstack("demo", "network", "create", "qnet")
    cloud.openstack("demo", "subnet", "create", "--network", "qnet", "--subnet-range", "100.64.30.0/24", "qsub")
    for i in range(3):
        cloud.openstack("demo", "port", "create", "--network", "qnet", f"qp{i}")
    refused = cloud.openstack("demo", "port", "create", "--network", "qnet", "qp3", check=False)
    assert refused.rc != 0 and "Quota exceeded for resources: ['port']" in refused.stderr, refused
    ports = cloud.openstack("demo", "port", "list", "--network", "qnet", "-f", "json").json()
    assert sorted(p["Name"] for p in ports) == ["qp0", "qp1", "qp2"]

    avail = cloud.openstack("admin", "ip", "availability", "show", "qnet", "-f", "json").json()
    assert avail["network_name"] == "qnet" and avail["used_ips"] == 3 and avail["total_ips"] == 253, avail
    listed = cloud.openstack("admin", "ip", "availability", "list", "-f", "json").json()
    assert any(row["Network Name"] == "qnet" and row["Total IPs"] == 253 and row["Used IPs"] == 3
               for row in listed), listed

    usage = _show(cloud, "admin", "--usage", "demo")
    assert int(usage["ports"]["In Use"]) == 3 and _limit(usage["ports"]) == 3, usage
    assert int(usage["networks"]["In Use"]) == 1, usage

    # below the usage: refused unless --force (the CLI sends check_limit / force)
    low = cloud.openstack("admin", "quota", "set", "--ports", "2", "demo", check=False)
    assert low.rc != 0 and "must be greater than or equal to already used 3" in low.stderr, low
    cloud.openstack("admin", "quota", "set", "--ports", "2", "--force", "demo")
    assert _limit(_show(cloud, "admin", "demo")["ports"]) == 2

    # members set nothing, not even their own project's quota, nor read another project's
    denied = cloud.openstack("demo", "quota", "set", "--ports", "100", "demo", check=False)
    assert denied.rc != 0 and _limit(_show(cloud, "admin", "demo")["ports"]) == 2, denied
    with cloud.api("demo") as demo:  # (the CLI cannot even resolve another project's name for a member)
        r = demo.get(f"/quotas/{project_id_for('alt_demo')}")
        assert r.status_code == 403 and r.json()["NeutronError"]["type"] == "PolicyNotAuthorized", r.text

    cloud.openstack("admin", "quota", "delete", "--network", "demo")
    assert _limit(_show(cloud, "admin", "demo")["ports"]) == 500
    cloud.openstack("demo", "port", "create", "--network", "qnet", "qp3")
    for i in range(4):
        cloud.openstack("demo", "port", "delete", f"qp{i}")
    cloud.openstack("demo", "network", "delete", "qnet")
    assert not cloud.server_errors()
