"""The unmodified `openstack` CLI for QoS against a running `vxnet server`: an admin creates a
shared policy and its rules (bandwidth limit both ways, DSCP marking, minimum bandwidth), lists
rule types; a project member attaches the policy to her port and network (`--qos-policy`),
cannot create a policy (403), and the policy cannot be deleted while in use."""

from __future__ import annotations

from typing import Any

import pytest

from tests.clients.conftest import Cloud


@pytest.fixture(scope="module")
def cli(vxnet_cloud: Cloud) -> Cloud:
    return vxnet_cloud


def by_type(rules: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["Type"] if "Type" in r else r["type"], r.get("Direction") or r.get("direction") or ""): r
            for r in rules}


def test_qos_policy_rules_and_ports(cli: Cloud) -> None:
    pol = cli.openstack("admin", "network", "qos", "policy", "create", "gold", "--share",
                        "--description", "ten megabit", "-f", "json").json()
    assert pol["name"] == "gold" and pol["shared"] is True
    bw = cli.openstack("admin", "network", "qos", "rule", "create", "gold", "--type", "bandwidth-limit",
                       "--max-kbps", "10000", "--max-burst-kbits", "1000", "--egress", "-f", "json").json()
    assert bw["max_kbps"] == 10000 and bw["direction"] == "egress"
    cli.openstack("admin", "network", "qos", "rule", "create", "gold", "--type", "bandwidth-limit",
                  "--max-kbps", "5000", "--ingress", "-f", "json")
    dscp = cli.openstack("admin", "network", "qos", "rule", "create", "gold", "--type", "dscp-marking",
                         "--dscp-mark", "26", "-f", "json").json()
    assert dscp["dscp_mark"] == 26
    cli.openstack("admin", "network", "qos", "rule", "create", "gold", "--type", "minimum-bandwidth",
                  "--min-kbps", "1000", "--egress", "-f", "json")
    bad = cli.openstack("admin", "network", "qos", "rule", "create", "gold", "--type", "dscp-marking",
                        "--dscp-mark", "7", check=False)
    assert bad.rc != 0 and "dscp_mark" in bad.stderr
    rules = cli.openstack("admin", "network", "qos", "rule", "list", "gold", "-f", "json").json()
    assert len(rules) == 4
    cli.openstack("admin", "network", "qos", "rule", "set", "gold", bw["id"], "--max-kbps", "20000")
    shown = cli.openstack("admin", "network", "qos", "rule", "show", "gold", bw["id"], "-f", "json").json()
    assert shown["max_kbps"] == 20000
    types = {t["Type"] for t in cli.openstack("admin", "network", "qos", "rule", "type", "list", "-f", "json").json()}
    assert types == {"bandwidth_limit", "dscp_marking", "minimum_bandwidth"}

    # a project member: no policy of her own, but the shared one on her port and network
    denied = cli.openstack("demo", "network", "qos", "policy", "create", "mine", check=False)
    assert denied.rc != 0 and ("403" in denied.stderr or "disallowed by policy" in denied.stderr)
    cli.openstack("demo", "network", "create", "qosnet", "-f", "json")
    cli.openstack("demo", "subnet", "create", "qossub", "--network", "qosnet", "--subnet-range", "192.0.2.0/24",
                  "-f", "json")
    port = cli.openstack("demo", "port", "create", "qosport", "--network", "qosnet", "--qos-policy", "gold",
                         "-f", "json").json()
    assert port["qos_policy_id"] == pol["id"]
    cli.openstack("demo", "port", "unset", "--qos-policy", "qosport")
    assert cli.openstack("demo", "port", "show", "qosport", "-f", "json").json()["qos_policy_id"] is None
    cli.openstack("demo", "port", "set", "--qos-policy", "gold", "qosport")
    assert cli.openstack("demo", "port", "show", "qosport", "-f", "json").json()["qos_policy_id"] == pol["id"]
    cli.openstack("demo", "network", "set", "--qos-policy", "gold", "qosnet")
    assert cli.openstack("demo", "network", "show", "qosnet", "-f", "json").json()["qos_policy_id"] == pol["id"]

    in_use = cli.openstack("admin", "network", "qos", "policy", "delete", "gold", check=False)
    assert in_use.rc != 0
    cli.openstack("demo", "port", "delete", "qosport")
    cli.openstack("demo", "network", "set", "--no-qos-policy", "qosnet")
    cli.openstack("demo", "subnet", "delete", "qossub")
    cli.openstack("demo", "network", "delete", "qosnet")
    cli.openstack("admin", "network", "qos", "rule", "delete", "gold", dscp["id"])
    cli.openstack("admin", "network", "qos", "policy", "delete", "gold")
    assert cli.server_errors() == []
