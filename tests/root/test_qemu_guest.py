"""Real QEMU guests in the lab (docs/guests.md): the guest's own DHCP client gets the port's
address from the agent, it reads its hostname and user data from the metadata service, it pings
a namespace VM on another host, `vm exec` returns its exit codes, and `vm del` / `lab down`
leave no QEMU process, tap or mount behind.

The guest runs under TCG unless a KVM probe boot works; boots take seconds, so the guests are
few and always stopped (by PID) at the end. The Debian cloud-init guest (the real `cloud-init`
package) needs a 2-minute image build (done by `make setup`) and boots in about a minute."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.root.conftest import needs_root
from tests.root.helpers import nsexec

pytestmark = [needs_root, pytest.mark.root,
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86 (make setup)")]


def _qemu_pids() -> list[int]:
    """Every process that is one of the lab's QEMU guests (by command line) and shares this
    test's mount namespace: on a machine where another suite runs in its own sandbox
    (tools/sandbox), that suite's guests are not this lab's."""
    ours = os.readlink("/proc/self/ns/mnt")
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if b"guest=vxnet-qg" in f.read() and os.readlink(f"/proc/{d}/ns/mnt") == ours:
                        pids.append(int(d))
            except OSError:
                pass
    return pids


def _links(ns: str) -> str:
    return subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True, check=False).stdout


def _mounts_of(path: str) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line for line in f if path in line]


@pytest.fixture(scope="module")
def guest_net(lab3):
    net, sub = lab3.network("alice", "192.0.2.0/24", "qnet")
    return lab3, net, sub


GET_MD = ("printf 'GET /openstack/latest/meta_data.json HTTP/1.0\\r\\n\\r\\n' "
          "| nc -w 3 169.254.169.254 80 | tail -1")


def _metadata_spoofing(ctl: str, other: dict) -> None:
    """From inside the guest: its own request gets its own metadata; sent from the other VM's
    address, or with the other VM's MAC, it gets nothing (port security drops it on the tap)."""
    from vxnet.lab import qemu

    _, out = qemu.exec_(ctl, GET_MD)
    assert b'"hostname": "qg-one"' in out, out
    vip = other["fixed_ips"][0]["ip_address"]
    # The route to 169.254.169.254 as DHCP gave it, with the other VM's address as source.
    route = "$(ip route get 169.254.169.254 | head -1 | sed 's/ src .*//')"
    _, out = qemu.exec_(ctl, f"ip addr add {vip}/32 dev eth0 && r={route} && ip route replace $r src {vip} && "
                             f"ip route get 169.254.169.254 | head -1; {GET_MD}; echo end")
    assert f"src {vip}".encode() in out and b"hostname" not in out and out.endswith(b"end\n"), out
    _, out = qemu.exec_(ctl, f"r={route}; ip route replace $r; ip addr del {vip}/32 dev eth0; {GET_MD}")
    assert b'"hostname": "qg-one"' in out, out   # back to its own address: answered again
    _, out = qemu.exec_(ctl, f"m=$(cat /sys/class/net/eth0/address); ip link set eth0 address {other['mac_address']}; "
                             f"{GET_MD}; echo end; ip link set eth0 address $m")
    assert b"hostname" not in out and out.endswith(b"end\n"), out
    _, out = qemu.exec_(ctl, GET_MD)
    assert b'"hostname": "qg-one"' in out, out   # its own MAC again: answered again


def test_guest_takes_its_lease_and_pings_a_namespace_vm_on_another_host(guest_net) -> None:
    from vxnet.lab import lab, qemu

    lab3, net, _ = guest_net
    pg = lab3.port("alice", net["id"])
    pv = lab3.port("alice", net["id"])
    lab3.vm("qgv", "h2", pv)
    vm = lab.vm_add("qg1", "h1", pg["id"], qemu=True, hostname="qg-one",
                    user_data=b"#!/bin/sh\necho user-data-was-here > /tmp/ud\n")
    ip = pg["fixed_ips"][0]["ip_address"]
    try:
        # The guest's own udhcpc took the port's address (the agent's DHCP responder answered).
        log = qemu.wait_console(vm["qemu"]["console"], "vxnet-guest: lease", 90)
        assert re.search(rf"vxnet-guest: lease {re.escape(ip)}/24 router 192\.0\.2\.1 mtu 1450", log), log
        rc, out = qemu.exec_(vm["qemu"]["ctl"], "ip -4 -o addr show dev eth0; cat /sys/class/net/eth0/address")
        assert rc == 0 and f"inet {ip}/24" in out.decode() and pg["mac_address"] in out.decode(), out
        lab3.wait_status(pg["id"], "ACTIVE", 30)
        # Metadata (169.254.169.254 through the host's proxy to the lab's Nova): the hostname
        # given at `vm add`, and the user-data script ran.
        log = qemu.wait_console(vm["qemu"]["console"], "vxnet-guest: ready", 60)
        assert "vxnet-guest: hostname qg-one from metadata" in log, log
        assert "vxnet-guest: user-data ran: 0" in log, log
        assert qemu.exec_(vm["qemu"]["ctl"], "hostname; cat /tmp/ud") == (0, b"qg-one\nuser-data-was-here\n")
        _metadata_spoofing(vm["qemu"]["ctl"], pv)
        # The NIC is a tap named like Nova's in h1, created by QEMU and plugged by the agent.
        tap = "tap" + pg["id"][:11]
        assert tap in _links("vxl-h1")
        # Guest -> namespace VM on h2 (across the VXLAN underlay), and back.
        vip = pv["fixed_ips"][0]["ip_address"]
        rc, out = qemu.exec_(vm["qemu"]["ctl"], f"ping -c 3 -W 3 {vip}", timeout=60)
        assert rc == 0, out
        assert "3 packets received" in out.decode() or " 0% packet loss" in out.decode(), out
        assert nsexec("vxl-v-qgv", "ping", "-c", "2", "-W", "3", ip).returncode == 0
        # `vxnet lab vm exec` through the CLI: the guest's exit code and output come back.
        cli = lab._python_cmd("lab", "vm", "exec", "qg1", "--", "sh", "-c", "echo from-guest; exit 7")
        r = subprocess.run(cli, capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 7 and r.stdout == "from-guest\n", (r.returncode, r.stdout, r.stderr)
        r = subprocess.run(lab._python_cmd("lab", "vm", "console", "qg1"), capture_output=True, text=True,
                           timeout=60, check=False)
        assert r.returncode == 0 and "vxnet-guest: lease" in r.stdout
        pid = vm["qemu"]["pid"]
        assert qemu.alive(pid, "qg1")
    finally:
        lab.vm_del("qg1")
        lab.vm_del("qgv")
    # Nothing left: no process, no tap, no channel socket, no mount.
    assert not qemu.alive(pid, "qg1")
    assert _qemu_pids() == []
    assert "tap" + pg["id"][:11] not in _links("vxl-h1")
    assert not os.path.exists(vm["qemu"]["ctl"])
    assert _mounts_of(lab.state_dir()) == [] and _mounts_of("/var/cache/vxnet") == []


def test_exec_channel_keeps_order_and_exit_codes(guest_net) -> None:
    """Several commands in a row on one guest (each on a fresh connection), stderr joined."""
    from vxnet.lab import lab, qemu

    lab3, net, _ = guest_net
    p = lab3.port("alice", net["id"])
    vm = lab.vm_add("qg2", "h3", p["id"], qemu=True)
    try:
        for i in range(3):
            rc, out = qemu.exec_(vm["qemu"]["ctl"], f"echo out{i}; echo err{i} >&2; exit {i}")
            assert (rc, out) == (i, f"out{i}\nerr{i}\n".encode())
        # A binary-safe round trip (the channel encodes both ways).
        rc, out = qemu.exec_(vm["qemu"]["ctl"], "printf '\\001\\377x'")
        assert (rc, out) == (0, b"\x01\xffx")
    finally:
        lab.vm_del("qg2")
    assert _qemu_pids() == []


SSH_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBoA8k3Yc0dZp1nYq1lJ5m1d0h5ZpXG0w3Xv3cB5lq7H "
           "lab@vxnet-test")


@pytest.mark.slow
def test_cloud_init_guest_sets_hostname_and_ssh_key_from_metadata(guest_net) -> None:
    """Debian's cloud-init (OpenStack datasource, 169.254.169.254) sets the hostname and
    installs the SSH key that the lab's Nova serves for this instance."""
    from vxnet.lab import image, lab, qemu

    image.build(cloud=True)   # cached (make setup builds it); about 2 minutes the first time
    lab3, net, _ = guest_net
    p = lab3.port("alice", net["id"])
    vm = lab.vm_add("qgc", "h2", p["id"], cloud=True, hostname="cloudy", ssh_key=SSH_KEY)
    try:
        log = qemu.wait_console(vm["qemu"]["console"], "vxnet-guest: cloud-init init:", 120)
        print(*(line for line in log.splitlines() if line.startswith("vxnet-guest:")), sep="\n")   # timings (-s)
        assert f"vxnet-guest: lease {p['fixed_ips'][0]['ip_address']}/24" in log, log
        rc, out = qemu.exec_(vm["qemu"]["ctl"], "hostname; cat /home/debian/.ssh/authorized_keys; "
                             "cat /var/lib/cloud/data/instance-id /var/lib/cloud/instance/datasource", timeout=60)
        text = out.decode()
        assert rc == 0, text
        assert text.splitlines()[0] == "cloudy", text
        assert SSH_KEY in text, text
        assert lab.load_state()["vms"]["qgc"]["instance_id"] in text, text   # the lab's Nova's id
        assert "DataSourceOpenStack" in text, text
    finally:
        lab.vm_del("qgc")
    assert _qemu_pids() == []


def test_lab_down_kills_guests_it_finds_in_its_state(guest_net) -> None:
    """A guest still running at `lab down` (e.g. the CLI that started it crashed): down kills it
    by the PID in the state file, its tap and every lab namespace go. Runs last: it ends the lab."""
    from vxnet.lab import lab, qemu

    lab3, net, _ = guest_net
    p = lab3.port("alice", net["id"])
    vm = lab.vm_add("qg3", "h2", p["id"], qemu=True)
    pid = vm["qemu"]["pid"]
    assert qemu.alive(pid, "qg3")
    assert lab.load_state()["vms"]["qg3"]["qemu"]["pid"] == pid
    lab.down()
    assert not qemu.alive(pid, "qg3")
    assert _qemu_pids() == []
    assert not [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split()
                if n.startswith("vxl-")]
    assert _mounts_of("/var/cache/vxnet") == []
