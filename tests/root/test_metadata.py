"""The metadata service (agent/metadata.py) on a real `vxnet lab`, with curl in namespace VMs.

The lab plays Nova (lab/nova_metadata.py): it answers only signed requests, so every 200 below
also shows the proxy's signature is right.
- Routed network (a router interface holds the gateway): a VM with its default route via the
  router gets its own instance's meta_data.json (uuid = its port's device_id, hostname, keys,
  project), user_data, network_data.json and the EC2 tree; the underlay carries none of it.
- A VM with an on-link route to 169.254.169.254 gets the metadata device's ARP answer.
- Isolated network (no router, no gateway IP): a VM configured by a real busybox udhcpc gets
  the option-121 route 169.254.169.254/32 via the DHCP server address, and reaches its metadata
  through it; when its port goes, so do its network's metadata veth and steering elements.
- A VM cannot obtain another VM's metadata: with another VM's source IP (port security off, so
  the spoofed frames do reach the bridge) or its MAC and IP, it gets nothing (or its own); with
  port security on, the spoofed request is dropped.
- Drift (the steering table or a route in the metadata namespace deleted) is repaired by the
  agent's resync.
- An agent killed with SIGKILL and restarted serves again (it adopts the namespace).
- Security-group egress applies to the request (none: blocked; tcp/80 to 169.254.169.254 allowed:
  answered).
- A port without device_id gets 404; Nova stopped -> 502 at once; Nova frozen (SIGSTOP) -> 503
  after the configured timeout, never a hang.
- The lab's endpoint rejects a bad signature (403), a tenant that is not the instance's (404)
  and a request without the proxy's headers (400).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from tests.root.conftest import Lab, lab_session, needs_root
from tests.root.helpers import capture, nsexec
from tests.support import http
from vxnet.compute import metadata as cmeta
from vxnet.compute import naming
from vxnet.lab import nova_metadata, topology

pytestmark = [pytest.mark.root, needs_root]

MD = "http://169.254.169.254"
RESYNC = 3          # the lab's agents re-read the kernel this often (drift repair)
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMetadataTestKeyOnlyForTheLab lab@vxnet"
USER_DATA = b"#cloud-config\nhostname: from-user-data\n"
UDHCPC_SCRIPT = r"""#!/bin/sh
# Private udhcpc script: the address and the classless routes, nothing else.
case "$1" in
  deconfig) ip -4 addr flush dev "$interface" ;;
  bound|renew)
    ip -4 addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface"
    echo "staticroutes=$staticroutes" > "$(dirname "$0")/routes-$(ip netns identify).out"
    set -- $staticroutes
    while [ $# -ge 2 ]; do ip route replace "$1" via "$2" dev "$interface"; shift 2; done ;;
esac
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    """`vxnet lab up --hosts 2` (with its Nova metadata endpoint), agents resyncing every
    `RESYNC` s; always torn down."""
    with lab_session(tmp_path_factory, "mdlab", 2, agent_args=["--resync", str(RESYNC)]) as g:
        yield g


def make_net(lab: Lab, cidr: str, name: str, **subnet: object) -> tuple[dict, dict]:
    with lab.api("alice") as c:
        n = c.post("/networks", json={"network": {"name": name}})
        assert n.status_code == 201, n.text
        s = c.post("/subnets", json={"subnet": {"network_id": n.json()["network"]["id"], "cidr": cidr,
                                                "ip_version": 4, **subnet}})
        assert s.status_code == 201, s.text
        return n.json()["network"], s.json()["subnet"]


def make_port(lab: Lab, net: dict, ip: str, **extra: object) -> dict:
    with lab.api("alice") as c:
        r = c.post("/ports", json={"port": {"network_id": net["id"], "fixed_ips": [{"ip_address": ip}], **extra}})
        assert r.status_code == 201, r.text
        return r.json()["port"]


def boot(lab: Lab, name: str, host: str, port: dict, **kw: object) -> str:
    """A lab VM for `port` (registered at the lab's Nova); returns its instance id."""
    from vxnet.lab import lab as vlab

    vlab.vm_add(name, host, port["id"], **kw)  # type: ignore[arg-type]
    lab.wait_status(port["id"], "ACTIVE")
    return str(vlab.load_state()["vms"][name]["instance_id"])


def curl(vm: str, path: str, *args: str, timeout: float = 8) -> tuple[int, str]:
    """(HTTP status, body) of one request from VM `vm`; status 0 when no answer came."""
    r = nsexec(topology.vm_ns(vm), "curl", "-s", "-m", str(timeout), "-o", "-", "-w", "\n%{http_code}", *args,
               MD + path, timeout=timeout + 10)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


def wait_kernel(what: str, cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"{what} not repaired within {timeout} s"
        time.sleep(0.1)


def wait_answer(vm: str, path: str, timeout: float = 15) -> tuple[int, str]:
    """The first answer to `path` (the agent applies the steering table right after ACTIVE)."""
    deadline = time.time() + timeout
    while True:
        got = curl(vm, path, timeout=2)
        if got[0] or time.time() > deadline:
            return got
        time.sleep(0.2)


@pytest.fixture(scope="module")
def routed(lab: Lab) -> dict:
    """A network with a router on its gateway; VMs m1 (h1), m2 (h2) with keys and user data, and
    m3 on h1 without port security (the attacker)."""
    net, sub = make_net(lab, "192.0.2.0/24", "md-routed")
    with lab.api("alice") as c:
        r = c.post("/routers", json={"router": {"name": "md-r"}})
        assert r.status_code == 201, r.text
        rid = r.json()["router"]["id"]
        r = c.put(f"/routers/{rid}/add_router_interface", json={"subnet_id": sub["id"]})
        assert r.status_code == 200, r.text
    p1, p2 = make_port(lab, net, "192.0.2.11"), make_port(lab, net, "192.0.2.12")
    p3 = make_port(lab, net, "192.0.2.13", port_security_enabled=False)
    ids = {"m1": boot(lab, "m1", "h1", p1, hostname="vm-one", user_data=USER_DATA, ssh_key=SSH_KEY),
           "m2": boot(lab, "m2", "h2", p2),
           "m3": boot(lab, "m3", "h1", p3)}
    return {"net": net, "ports": {"m1": p1, "m2": p2, "m3": p3}, "ids": ids}


def test_routed_network_vm_gets_its_own_signed_metadata(lab: Lab, routed: dict) -> None:
    p1 = routed["ports"]["m1"]
    status, body = wait_answer("m1", "/openstack/latest/meta_data.json")
    assert status == 200, body
    md = json.loads(body)
    assert md["uuid"] == routed["ids"]["m1"]
    with lab.api() as c:
        assert c.get(f"/ports/{p1['id']}").json()["port"]["device_id"] == md["uuid"]
    assert md["hostname"] == "vm-one" and md["name"] == "m1"
    assert md["project_id"] == p1["project_id"]
    assert md["public_keys"] == {"lab-key": SSH_KEY}
    assert curl("m1", "/openstack/latest/user_data") == (200, USER_DATA.decode())
    nd = json.loads(curl("m1", "/openstack/latest/network_data.json")[1])
    assert nd["links"][0]["ethernet_mac_address"] == p1["mac_address"]
    # The EC2 tree, as cloud-init's fallbacks read it.
    assert curl("m1", "/latest/meta-data/local-ipv4") == (200, "192.0.2.11")
    assert curl("m1", "/latest/meta-data/hostname") == (200, "vm-one")
    assert curl("m1", "/latest/meta-data/public-keys/") == (200, "0=lab-key")
    assert curl("m1", "/latest/meta-data/public-keys/0/openssh-key") == (200, SSH_KEY)
    assert curl("m1", "/latest/user-data")[0] == 200
    # The other host's VM gets its own, without user data (404 passed through from Nova).
    status, body = wait_answer("m2", "/openstack/latest/meta_data.json")
    assert status == 200 and json.loads(body)["uuid"] == routed["ids"]["m2"], body
    assert curl("m2", "/openstack/latest/user_data")[0] == 404
    # It is answered on the VM's own host: nothing on the underlay.
    with capture() as underlay:
        assert curl("m2", "/latest/meta-data/instance-id")[0] == 200
    assert not [f for f in underlay if "169.254.169.254" in f or ".80 " in f or ".80:" in f], underlay


def test_on_link_route_arp_is_answered_by_the_metadata_device(routed: dict) -> None:
    """A VM with 169.254.169.254 on-link (no gateway) ARPs for it: the metadata device answers."""
    ns = topology.vm_ns("m2")
    assert nsexec(ns, "ip", "route", "add", "169.254.169.254/32", "dev", "eth0").returncode == 0
    try:
        status, body = curl("m2", "/openstack/latest/meta_data.json")
        assert status == 200 and json.loads(body)["uuid"] == routed["ids"]["m2"], (status, body)
        neigh = nsexec(ns, "ip", "neigh", "show", "169.254.169.254").stdout
        assert cmeta.metadata_mac(routed["net"]["id"]) in neigh, neigh
    finally:
        nsexec(ns, "ip", "route", "del", "169.254.169.254/32", "dev", "eth0")


def test_isolated_network_via_dhcp_option_121(lab: Lab, routed: dict, tmp_path) -> None:
    net, _ = make_net(lab, "100.64.10.0/24", "md-isolated", gateway_ip=None)
    p = make_port(lab, net, "100.64.10.21")
    iid = boot(lab, "i1", "h2", p)
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    ns = topology.vm_ns("i1")
    assert nsexec(ns, "ip", "-4", "addr", "flush", "dev", "eth0").returncode == 0
    r = nsexec(ns, "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-O", "staticroutes",
               "-s", str(script), timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    routes = (tmp_path / f"routes-{ns}.out").read_text().strip()
    server = "100.64.10.254"     # no gateway: the highest free address is the DHCP server's
    assert routes == f"staticroutes=169.254.169.254/32 {server}", routes
    assert f"169.254.169.254 via {server}" in nsexec(ns, "ip", "route").stdout
    assert "default" not in nsexec(ns, "ip", "route").stdout
    status, body = wait_answer("i1", "/openstack/latest/meta_data.json")
    assert status == 200, body
    assert json.loads(body)["uuid"] == iid
    # The VM and its port go: so do the network's metadata veth and its steering elements on h2,
    # and the host's other VM is still served.
    from vxnet.lab import lab as vlab

    vlab.vm_del("i1")
    with lab.api("alice") as c:
        assert c.delete(f"/ports/{p['id']}").status_code == 204
    h2, meta = topology.host_ns(2), cmeta.netns_name("h2")
    deadline = time.time() + 15
    while True:
        links = nsexec(h2, "ip", "-o", "link").stdout + nsexec(meta, "ip", "-o", "link").stdout
        table = nsexec(h2, "nft", "list", "table", "bridge", cmeta.NFT_TABLE).stdout
        if cmeta.service_port(net["id"]) not in links and cmeta.device_name(net["id"]) not in links \
                and "tap" + p["id"][:11] not in table:
            break
        assert time.time() < deadline, (links, table)
        time.sleep(0.2)
    assert "tap" + routed["ports"]["m2"]["id"][:11] in table
    assert wait_answer("m2", "/latest/meta-data/instance-id")[0] == 200


def test_a_vm_cannot_obtain_another_vms_metadata(lab: Lab, routed: dict) -> None:
    ids = routed["ids"]
    ns3 = topology.vm_ns("m3")
    assert wait_answer("m3", "/openstack/latest/meta_data.json")[0] == 200
    # Spoofed source IP (m1's; port security is off on m3, so the frames reach the bridge).
    assert nsexec(ns3, "ip", "addr", "add", "192.0.2.11/32", "dev", "eth0").returncode == 0
    try:
        status, body = curl("m3", "/openstack/latest/meta_data.json", "--interface", "192.0.2.11", timeout=4)
        assert ids["m1"] not in body
        assert status == 0 or json.loads(body)["uuid"] == ids["m3"], (status, body)
    finally:
        nsexec(ns3, "ip", "addr", "del", "192.0.2.11/32", "dev", "eth0")
    # Spoofed MAC and IP: m3 becomes m1 on the wire.
    p1, p3 = routed["ports"]["m1"], routed["ports"]["m3"]
    for cmd in (["ip", "link", "set", "eth0", "address", p1["mac_address"]],
                ["ip", "addr", "replace", "192.0.2.11/24", "dev", "eth0"], ["ip", "addr", "del", "192.0.2.13/24",
                                                                              "dev", "eth0"]):
        assert nsexec(ns3, *cmd).returncode == 0, cmd
    try:
        status, body = curl("m3", "/openstack/latest/meta_data.json", timeout=4)
        assert ids["m1"] not in body
        assert status == 0 or json.loads(body)["uuid"] == ids["m3"], (status, body)
    finally:
        for cmd in (["ip", "link", "set", "eth0", "address", p3["mac_address"]],
                    ["ip", "addr", "replace", "192.0.2.13/24", "dev", "eth0"],
                    ["ip", "addr", "del", "192.0.2.11/24", "dev", "eth0"],
                    ["ip", "route", "replace", "default", "via", "192.0.2.1"], ["ip", "neigh", "flush", "all"]):
            nsexec(ns3, *cmd)
    # Port security on (m2 on h2): a spoofed source never leaves the tap.
    ns2 = topology.vm_ns("m2")
    assert nsexec(ns2, "ip", "addr", "add", "192.0.2.11/32", "dev", "eth0").returncode == 0
    try:
        status, body = curl("m2", "/openstack/latest/meta_data.json", "--interface", "192.0.2.11", timeout=3)
        assert status == 0 and ids["m1"] not in body, (status, body)
    finally:
        nsexec(ns2, "ip", "addr", "del", "192.0.2.11/32", "dev", "eth0")
    # And after all that, m3 still gets its own.
    status, body = wait_answer("m3", "/openstack/latest/meta_data.json")
    assert status == 200 and json.loads(body)["uuid"] == ids["m3"]


def test_security_group_egress_applies_to_metadata(lab: Lab, routed: dict) -> None:
    """As in Neutron: a group without egress rules blocks the request; allowing tcp/80 to
    169.254.169.254/32 lets it through, the reply returning as established traffic."""
    p2 = routed["ports"]["m2"]
    with lab.api("alice") as c:
        sg = c.post("/security-groups", json={"security_group": {"name": "md-no-egress"}}).json()["security_group"]
        for rule in sg["security_group_rules"]:
            assert c.delete(f"/security-group-rules/{rule['id']}").status_code == 204
        old = c.get(f"/ports/{p2['id']}").json()["port"]["security_groups"]
        assert c.put(f"/ports/{p2['id']}", json={"port": {"security_groups": [sg["id"]]}}).status_code == 200
        try:
            deadline = time.time() + 15
            while curl("m2", "/latest/meta-data/instance-id", timeout=2)[0] != 0:
                assert time.time() < deadline, "egress not blocked"
            r = c.post("/security-group-rules", json={"security_group_rule": {
                "security_group_id": sg["id"], "direction": "egress", "ethertype": "IPv4", "protocol": "tcp",
                "port_range_min": 80, "port_range_max": 80, "remote_ip_prefix": "169.254.169.254/32"}})
            assert r.status_code == 201, r.text
            assert wait_answer("m2", "/latest/meta-data/instance-id")[0] == 200
        finally:
            assert c.put(f"/ports/{p2['id']}", json={"port": {"security_groups": old}}).status_code == 200


def test_port_without_device_id_gets_404(lab: Lab, routed: dict) -> None:
    from vxnet.lab import lab as vlab

    p = make_port(lab, routed["net"], "192.0.2.14")
    vlab.vm_add("m4", "h2", p["id"], bind=False)
    with lab.api() as c:      # bound like Nova would, but no instance id
        r = c.put(f"/ports/{p['id']}", json={"port": {"binding:host_id": "h2", "device_owner": "compute:nova"}})
        assert r.status_code == 200, r.text
    lab.wait_status(p["id"], "ACTIVE")
    assert wait_answer("m4", "/openstack/latest/meta_data.json")[0] == 404


def test_nova_down_is_an_error_never_a_hang(lab: Lab, routed: dict) -> None:
    from vxnet.lab import lab as vlab

    st = vlab.load_state()
    assert wait_answer("m1", "/latest/meta-data/instance-id")[0] == 200
    vlab.stop_nova_metadata(st)
    try:
        t0 = time.time()
        status, _ = curl("m1", "/latest/meta-data/instance-id")
        assert status == 502 and time.time() - t0 < 5
    finally:
        vlab.start_nova_metadata(st)
    assert curl("m1", "/latest/meta-data/instance-id")[0] == 200
    pid = st["nova_metadata"]["pid"]
    os.kill(pid, signal.SIGSTOP)      # accepts (the kernel's backlog), never answers
    try:
        t0 = time.time()
        status, _ = curl("m1", "/latest/meta-data/instance-id", timeout=15)
        took = time.time() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert status == 503, status
    assert 2.5 < took < 10, took      # the lab's agents wait `timeout = 3` s
    assert curl("m1", "/latest/meta-data/instance-id")[0] == 200


def test_drift_is_repaired_by_the_resync(routed: dict) -> None:
    """The steering table deleted, the namespace's route to a VM's proxy address deleted: the
    next resync (a full read of the kernel) puts both back."""
    h1, meta = topology.host_ns(1), cmeta.netns_name("h1")
    assert wait_answer("m1", "/latest/meta-data/instance-id")[0] == 200
    # (No check that requests fail in between: the resync may come at any moment.)
    assert nsexec(h1, "nft", "delete", "table", "bridge", cmeta.NFT_TABLE).returncode == 0
    wait_kernel("the steering table", lambda: nsexec(h1, "nft", "list", "table", "bridge", cmeta.NFT_TABLE).returncode
                == 0, 4 * RESYNC)
    status, body = wait_answer("m1", "/openstack/latest/meta_data.json")
    assert status == 200 and json.loads(body)["uuid"] == routed["ids"]["m1"]
    routes = nsexec(meta, "ip", "-4", "route", "show", "proto", str(naming.ROUTER_ROUTE_PROTO)).stdout.splitlines()
    mine = next(r for r in routes if nsexec(meta, "ip", "neigh", "show", r.split()[0]).stdout.lower().count(
        routed["ports"]["m1"]["mac_address"]))
    assert nsexec(meta, "ip", "route", "del", mine.split()[0]).returncode == 0
    wait_kernel("the route", lambda: mine.split()[0] in nsexec(meta, "ip", "-4", "route").stdout, 4 * RESYNC)
    assert wait_answer("m1", "/latest/meta-data/instance-id")[0] == 200


def test_cli_vm_add_with_hostname_user_data_and_ssh_key(lab: Lab, routed: dict, tmp_path) -> None:
    import subprocess
    import sys

    p = make_port(lab, routed["net"], "192.0.2.15")
    (tmp_path / "ud").write_bytes(b"#!/bin/sh\necho from-cli\n")
    (tmp_path / "key.pub").write_text(SSH_KEY + "\n")
    r = subprocess.run([sys.executable, "-m", "vxnet.cli.main", "lab", "vm", "add", "m5", "--host", "h2", "--port",
                        p["id"], "--hostname", "cli-vm", "--user-data", str(tmp_path / "ud"), "--ssh-key",
                        str(tmp_path / "key.pub")], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    lab.wait_status(p["id"], "ACTIVE")
    status, body = wait_answer("m5", "/openstack/latest/meta_data.json")
    assert status == 200, body
    md = json.loads(body)
    assert md["hostname"] == "cli-vm" and md["public_keys"] == {"lab-key": SSH_KEY}
    assert curl("m5", "/openstack/latest/user_data") == (200, "#!/bin/sh\necho from-cli\n")
    r = subprocess.run([sys.executable, "-m", "vxnet.cli.main", "lab", "vm", "add", "m6", "--host", "h2", "--port",
                        p["id"], "--user-data", str(tmp_path / "missing")], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 1 and "missing" in r.stderr, r.stdout + r.stderr


def test_agent_crash_and_restart_serves_again(lab: Lab, routed: dict) -> None:
    """SIGKILL leaves the namespace and links (nothing serves: the listener died with the
    process); the restarted agent adopts them and opens a new listener."""
    from vxnet.lab import lab as vlab

    st = vlab.load_state()
    assert wait_answer("m1", "/latest/meta-data/instance-id")[0] == 200
    vlab.stop_agent(st, "h1", signal.SIGKILL)
    assert "vxm-h1" in nsexec(topology.host_ns(1), "ip", "netns", "list").stdout
    assert curl("m1", "/latest/meta-data/instance-id", timeout=2)[0] == 0        # nobody listens
    vlab.start_agent(st, "h1")
    status, body = wait_answer("m1", "/openstack/latest/meta_data.json", timeout=30)
    assert status == 200 and json.loads(body)["uuid"] == routed["ids"]["m1"], (status, body)


def test_lab_endpoint_checks_the_signature(lab: Lab, routed: dict) -> None:
    from vxnet.lab import lab as vlab

    st = vlab.load_state()
    url = st["nova_metadata"]["url"] + "/openstack/latest/meta_data.json"
    with open(nova_metadata.files(vlab.state_dir())["secret"]) as f:
        secret = f.read().strip()
    iid, project = routed["ids"]["m1"], routed["ports"]["m1"]["project_id"]
    good = {"X-Instance-ID": iid, "X-Tenant-ID": project, "X-Forwarded-For": "192.0.2.11",
            "X-Instance-ID-Signature": cmeta.sign(secret, iid)}
    assert http.get(url, headers=good, timeout=5).json()["uuid"] == iid
    bad = dict(good, **{"X-Instance-ID-Signature": cmeta.sign("not-the-secret", iid)})
    assert http.get(url, headers=bad, timeout=5).status_code == 403
    other = dict(good, **{"X-Instance-ID": routed["ids"]["m2"]})          # m1's signature on m2's id
    assert http.get(url, headers=other, timeout=5).status_code == 403
    assert http.get(url, headers=dict(good, **{"X-Tenant-ID": "someone-else"}), timeout=5).status_code == 404
    assert http.get(url, timeout=5).status_code == 400
    mode = os.stat(nova_metadata.files(vlab.state_dir())["secret"]).st_mode & 0o777
    assert mode == 0o600, oct(mode)


def test_resyncs_are_not_counted_as_metadata_drift(lab: Lab, routed: dict) -> None:
    """h2's agent re-read its kernel every RESYNC s through this module, and nobody changed its
    metadata objects behind its back: its log shows no metadata drift repair."""
    from vxnet.lab import lab as vlab

    time.sleep(RESYNC + 1)        # at least one more resync
    with open(os.path.join(vlab.state_dir(), "agent-h2.log")) as f:
        lines = f.readlines()
    assert any("applied" in line for line in lines)          # the log is the agent's, and it worked
    repaired = [line for line in lines if "repaired drift" in line]
    assert not [line for line in repaired if "'metadata'" in line], repaired
