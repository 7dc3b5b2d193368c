"""examples/ansible: the tenant playbook and its teardown, with the unmodified openstack.cloud
collection (from the `ansible` package, in its own venv with openstacksdk 4.14.0: `make setup`),
against a real `vxnet server` subprocess. The first run builds network, subnet, router (gateway
and interface), security group and rules, port and floating IP, as the API then shows; a second
run changes nothing (changed=0) and makes no duplicate; the teardown leaves exactly what was
there before, and its second run changes nothing either."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.clients.conftest import Cloud, start_cloud, stop_cloud

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ansible"
PLAYBOOK = ROOT / ".venv-ansible" / "bin" / "ansible-playbook"
COLLECTIONS = ["networks", "subnets", "ports", "routers", "security-groups", "security-group-rules", "floatingips"]
RECAP = re.compile(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


@pytest.fixture
def cloud(tmp_path) -> Iterator[Cloud]:
    c = start_cloud(tmp_path)
    try:
        yield c
    finally:
        stop_cloud(c)


def playbook(cloud: Cloud, name: str, tmp: pathlib.Path) -> tuple[dict[str, int], float]:
    """Run one playbook of the example as the `demo` account; returns its recap and run time."""
    assert PLAYBOOK.exists(), "the Ansible venv is missing: run `make setup` (examples/ansible/requirements.txt)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "ANSIBLE_", "PYTHON"))}
    env |= {"OS_CLIENT_CONFIG_FILE": str(cloud.clouds_file), "ANSIBLE_CONFIG": str(EXAMPLE / "ansible.cfg"),
            "ANSIBLE_HOME": str(tmp / "ansible-home"), "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
            "ANSIBLE_NOCOLOR": "1", "LC_ALL": "C.UTF-8", "PYTHONWARNINGS": "ignore"}
    t0 = time.monotonic()
    p = subprocess.run([str(PLAYBOOK), name, "-e", "cloud=demo"], cwd=EXAMPLE, env=env, capture_output=True,
                       text=True, timeout=300, check=False)
    seconds = time.monotonic() - t0
    m = RECAP.search(p.stdout)
    assert p.returncode == 0 and m, f"{name}: rc={p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-2000:]}"
    recap = dict(zip(("ok", "changed", "unreachable", "failed"), map(int, m.groups()), strict=True))
    assert recap["failed"] == 0 and recap["unreachable"] == 0
    print(f"{name}: {recap} in {seconds:.1f} s")
    return recap, seconds


def everything(cloud: Cloud) -> dict[str, dict[str, dict[str, Any]]]:
    with cloud.api("admin") as admin:
        return {c: {o["id"]: o for o in admin.get(f"/{c}").json()[c.replace("-", "_")]} for c in COLLECTIONS}


def one(objs: dict[str, dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [o for o in objs.values() if all(o.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


@pytest.mark.slow
def test_tenant_playbook_is_idempotent_and_teardown_leaves_nothing(cloud: Cloud, tmp_path) -> None:
    with cloud.api("admin") as admin:  # the operator's external network
        public = admin.post("/networks", json={"network": {"name": "public", "router:external": True}}).json()["network"]
        r = admin.post("/subnets", json={"subnet": {"network_id": public["id"], "cidr": "203.0.113.0/24",
                                                    "ip_version": 4}})
        assert r.status_code == 201, r.text
    with cloud.api("demo") as demo:
        demo.get("/security-groups")  # the project's default group exists before, as in any cloud
    before = everything(cloud)
    times = []

    recap, t = playbook(cloud, "tenant.yml", tmp_path)
    times.append(t)
    assert recap["changed"] == 6  # network, subnet, router, group (with its rules), port, floating IP
    built = everything(cloud)
    project = one(built["networks"], name="ansible-demo-net")["project_id"]
    net = one(built["networks"], name="ansible-demo-net", project_id=project)
    subnet = one(built["subnets"], name="ansible-demo-subnet", network_id=net["id"])
    assert subnet["cidr"] == "192.0.2.0/24" and subnet["gateway_ip"] == "192.0.2.1"
    assert subnet["dns_nameservers"] == ["192.0.2.53"]
    router = one(built["routers"], name="ansible-demo-router", project_id=project)
    assert router["external_gateway_info"]["network_id"] == public["id"]
    leg = one(built["ports"], device_id=router["id"], device_owner="network:router_interface")
    assert leg["fixed_ips"][0]["subnet_id"] == subnet["id"] and leg["fixed_ips"][0]["ip_address"] == "192.0.2.1"
    sg = one(built["security-groups"], name="ansible-demo-sg", project_id=project)
    rules = {(r["protocol"], r["port_range_min"], r["remote_ip_prefix"])
             for r in built["security-group-rules"].values() if r["security_group_id"] == sg["id"] and
             r["direction"] == "ingress"}
    assert rules == {("tcp", 22, "0.0.0.0/0"), ("icmp", None, "0.0.0.0/0")}
    egress = {r["ethertype"] for r in built["security-group-rules"].values()
              if r["security_group_id"] == sg["id"] and r["direction"] == "egress"}
    assert egress == {"IPv4", "IPv6"}
    port = one(built["ports"], name="ansible-demo-port", network_id=net["id"])
    assert port["security_groups"] == [sg["id"]]
    fip = one(built["floatingips"], port_id=port["id"])
    assert fip["floating_network_id"] == public["id"] and fip["fixed_ip_address"] == port["fixed_ips"][0]["ip_address"]
    assert fip["router_id"] == router["id"]

    recap, t = playbook(cloud, "tenant.yml", tmp_path)
    times.append(t)
    assert recap["changed"] == 0
    again = everything(cloud)
    assert {c: set(again[c]) for c in COLLECTIONS} == {c: set(built[c]) for c in COLLECTIONS}  # nothing duplicated

    recap, t = playbook(cloud, "teardown.yml", tmp_path)
    times.append(t)
    assert recap["changed"] == 6  # floating IP, port, router, group, subnet, network
    assert {c: set(v) for c, v in everything(cloud).items()} == {c: set(v) for c, v in before.items()}
    recap, t = playbook(cloud, "teardown.yml", tmp_path)
    times.append(t)
    assert recap["changed"] == 0
    assert {c: set(v) for c, v in everything(cloud).items()} == {c: set(v) for c, v in before.items()}
    assert cloud.server_errors() == []
    print(f"ansible example: 4 runs in {sum(times):.1f} s ({', '.join(f'{t:.1f}' for t in times)})")
