"""Data plane VM-to-VM throughput and latency: vxnet vs a hand-built kernel VXLAN path vs the raw
underlay vs OVN's lab, side by side in one run (issue 9, item 3; issue 18: as users run it).

What runs, all in one private network + mount namespace (bench.port_up_bench.in_sandbox), all
built before the first measurement and kept until the last. Every VM has guest-like offloads
(TSO/GSO/GRO on, as virtio-net guests have them, bench.kernel_lab.vm_nic_settings); one row turns
them off on its two VMs for that row only (the old lab setting, what MTU tests use).
- vxnet: `vxnet lab up` (server + 3 real agents), network A with VMs dp1@h1, dp2@h2, dp3@h1 in
  the default security group and dq1@h1, dq2@h2 with port security off (so their bridge passes
  br_netfilter for the grouped ports); network O with do1@h1, do2@h2, do3@h1, all with port
  security off (a bridge without br_netfilter: `compute/l2.py` `nf_call`), created through the
  API, measured once every port is ACTIVE; a router to a second network (dr2@h2, dr3@h1) and,
  with a gateway host, a floating IP for dp1. One row measures network O with the vxnet hosts'
  namespace-wide `bridge-nf-call-iptables`/`-ip6tables` set to 1 for that row only (every
  bridge through br_netfilter, the setting before br_netfilter became per bridge).
- kernel: bench.kernel_lab.KernelLab "static" (`vxk-*`): the KERNEL-NOTES §2 recipe by hand,
  same VNI/MTU (1450)/bridge-port flags/VM offloads as the lab's VMs, no control plane, with
  the KERNEL-NOTES §6 security-group recipe (`apply_firewall`); and a second one (`vxp-*`),
  plain: no table, `bridge-nf-call-iptables=0`: the physical limit of this design here.
- underlay: iperf3/ping between two of the kernel lab's host namespaces over the underlay
  bridge (host defaults: MTU 1500, offloads on), and over a plain veth pair `vxk-u1`/`vxk-u2`
  with the VMs' settings (MTU 1450, offloads on): no bridge, no VXLAN.
- OVN: ../shared/peers/ovn-lab.sh `start` (3 chassis, OVS userspace datapath, Geneve; its VMs
  are MTU 1400 with tx checksum offload off, which its datapath needs), then our own iperf3/ping
  on its VMs, and once its own `measure` (NPORTS=0) whose lines are quoted verbatim.

Each row is a function `(Labs) -> Path` in ROWS (add routed / floating-IP rows the same way).
Every round measures every row once, the order reversed on every other round (alternating
rounds, so load from others falls on every row); per row: iperf3 single stream for
`--dp-seconds`, client and server pinned with taskset (`--dp-pin`, default both on CPU 0) and
optionally capped (`--dp-rate`), then `ping -c N -i 0.01` after 3 warm-up pings. The table gives
the median over rounds of iperf3 Gbit/s and the pooled RTT avg/p50/p99; ratios are per-round
ratios, median over rounds.

CPU per Gbit/s (bench.cpu_account; the figure that decides on this CPU-bound shared VM, where a
row's Gbit/s swings 1.5-8x between rounds): both iperf3 processes' rusage (wait4) plus the
ksoftirqd threads' time over the run, per Gbit received; per-CPU softirq time (/proc/stat) and
NET_RX counts (/proc/softirqs) beside it. Its per-round ratios get median and interquartile
range, and a row measured twice in every round (PLAIN_AGAIN, the hand-built plain path) is the
noise floor. `--dp-only =goals` measures only issue 18's goal rows and that control; with
`--dp-rate 2G` every row moves the same bytes, so CPU per byte is read at the same offered load.

Contract: only namespaces of its own sandbox; every process started is stopped by PID (iperf3
servers, OVN daemons by ovn-lab.sh `stop`, the lab's by `lab down`); figures are never invented:
a row that could not run says why.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench import common, cpu_account
from bench.kernel_lab import KernelLab, batch, iperf3_run, nic_settings, nsx, ping_run, sh, vm_nic_settings
from bench.port_up_bench import _tail, in_sandbox
from bench.report import Report, percentile
from bench.servers import import_repo

NAME = "Data plane: VM-to-VM iperf3 and ping, vxnet vs hand-built kernel VXLAN vs underlay vs OVN (same run)"
CIDR24 = "100.64.40"
CIDR24_B = "100.64.41"
CIDR24_O = "100.64.42"
OVN_BINS = ("ovsdb-server", "ovs-vswitchd", "ovn-northd", "ovn-controller", "ovn-nbctl", "iperf3", "ethtool")


class Unavailable(Exception):
    """A row that cannot be measured in this tree / on this machine (the message says why)."""


@dataclasses.dataclass
class Path:
    src_ns: str
    dst_ns: str
    dst_ip: str
    dev: str = "eth0"          # the sender's device whose MTU/offloads the row states
    bind_ip: str | None = None  # the server's own address when it differs from dst_ip (floating IP)
    offloads_off: bool = False  # TSO/GSO/GRO off on both VMs' eth0 for this row only (the old lab setting)
    host_br_nf: bool = False    # the vxnet hosts' namespace-wide bridge-nf-call sysctls 1 for this row only


@dataclasses.dataclass
class Labs:
    vx_vms: dict[str, str]                # VM name -> namespace (vxnet lab)
    vx_routed: str | None                 # why the routed VMs are missing (None: they work)
    vx_fip: str                           # the floating IP of dp1, or why there is none ("!" + reason)
    k: KernelLab | None
    ovn_dir: str | None                   # LAB directory of a started OVN lab
    ovn_error: str | None = None
    direct: tuple[str, str] | None = None
    plain: KernelLab | None = None        # hand-built plain VXLAN: no filtering at all


# --- rows: each returns the two endpoints, or raises Unavailable --------------------------------


def vx_cross(labs: Labs) -> Path:
    return Path(labs.vx_vms["dp1"], labs.vx_vms["dp2"], f"{CIDR24}.12")


def vx_same(labs: Labs) -> Path:
    return Path(labs.vx_vms["dp1"], labs.vx_vms["dp3"], f"{CIDR24}.13")


def vx_cross_off(labs: Labs) -> Path:
    return dataclasses.replace(vx_cross(labs), offloads_off=True)


def vx_nops_cross(labs: Labs) -> Path:
    return Path(labs.vx_vms["do1"], labs.vx_vms["do2"], f"{CIDR24_O}.22")


def vx_nops_same(labs: Labs) -> Path:
    return Path(labs.vx_vms["do1"], labs.vx_vms["do3"], f"{CIDR24_O}.23")


def vx_nops_cross_ns_brnf(labs: Labs) -> Path:
    return dataclasses.replace(vx_nops_cross(labs), host_br_nf=True)


def vx_nops_mixed_cross(labs: Labs) -> Path:
    return Path(labs.vx_vms["dq1"], labs.vx_vms["dq2"], f"{CIDR24}.22")


def plain_cross(labs: Labs) -> Path:
    assert labs.plain
    return Path(labs.plain.vm_ns("p1"), labs.plain.vm_ns("p2"), f"{CIDR24}.12")


def plain_same(labs: Labs) -> Path:
    assert labs.plain
    return Path(labs.plain.vm_ns("p1"), labs.plain.vm_ns("p3"), f"{CIDR24}.13")


def k_cross(labs: Labs) -> Path:
    assert labs.k
    return Path(labs.k.vm_ns("k1"), labs.k.vm_ns("k2"), f"{CIDR24}.12")


def k_same(labs: Labs) -> Path:
    assert labs.k
    return Path(labs.k.vm_ns("k1"), labs.k.vm_ns("k3"), f"{CIDR24}.13")


def k_routed(labs: Labs) -> Path:
    assert labs.k
    return Path(labs.k.vm_ns("k1"), labs.k.vm_ns("kr2"), f"{CIDR24_B}.12")


def k_routed_same(labs: Labs) -> Path:
    assert labs.k
    return Path(labs.k.vm_ns("k1"), labs.k.vm_ns("kr3"), f"{CIDR24_B}.13")


def underlay_hosts(labs: Labs) -> Path:
    assert labs.k
    return Path(labs.k.host_ns(1), labs.k.host_ns(2), labs.k.vtep(2), labs.k.eth)


def underlay_vm_settings(labs: Labs) -> Path:
    assert labs.direct
    return Path(labs.direct[0], labs.direct[1], "203.0.113.2")


def _ovn(labs: Labs) -> None:
    if not labs.ovn_dir:
        raise Unavailable(labs.ovn_error or "OVN lab not started")


def ovn_cross(labs: Labs) -> Path:
    _ovn(labs)
    return Path("ovn-vm1", "ovn-vm2", "198.51.100.2")


def ovn_same(labs: Labs) -> Path:
    _ovn(labs)
    return Path("ovn-vm1", "ovn-vm3", "198.51.100.3")


def vx_routed(labs: Labs) -> Path:
    if labs.vx_routed:
        raise Unavailable(labs.vx_routed)
    return Path(labs.vx_vms["dp1"], labs.vx_vms["dr2"], f"{CIDR24_B}.12")


def vx_routed_same(labs: Labs) -> Path:
    if labs.vx_routed:
        raise Unavailable(labs.vx_routed)
    return Path(labs.vx_vms["dp1"], labs.vx_vms["dr3"], f"{CIDR24_B}.13")


def vx_floating(labs: Labs) -> Path:
    if labs.vx_fip.startswith("!"):
        raise Unavailable(labs.vx_fip[1:])
    from vxnet.lab import topology

    return Path(topology.EXTERNAL_NS, labs.vx_vms["dp1"], labs.vx_fip, topology.EXTERNAL_DEV, f"{CIDR24}.11")


VX, VXPS, PLAIN, REC = ("vxnet (default group)", "vxnet (port security off)", "hand-built plain VXLAN",
                        "hand-built + SG recipe")
PLAIN_AGAIN = "hand-built plain VXLAN, measured twice (noise control)"
UL = ("underlay", "host->host over the underlay bridge (host defaults)")
CROSS = "VM->VM across hosts"
CROSS_NS_BRNF = "VM->VM across hosts, namespace-wide br_netfilter (the old setting)"
CROSS_MIXED = "VM->VM across hosts, on network A (grouped ports there: its bridge passes br_netfilter)"
ROWS: list[tuple[str, str, Callable[[Labs], Path]]] = [
    (VX, CROSS, vx_cross),
    (VXPS, CROSS, vx_nops_cross),
    (VXPS, CROSS_NS_BRNF, vx_nops_cross_ns_brnf),
    (VXPS, CROSS_MIXED, vx_nops_mixed_cross),
    (PLAIN, CROSS, plain_cross),
    (REC, CROSS, k_cross),
    (*UL, underlay_hosts),
    ("underlay veth", "ns->ns veth, VM settings", underlay_vm_settings),
    (PLAIN_AGAIN, CROSS, plain_cross),
    ("OVN", "VM->VM across chassis", ovn_cross),
    (VX, "VM->VM across hosts, VM offloads OFF (the old lab setting)", vx_cross_off),
    (VX, "VM->VM same host", vx_same),
    (VXPS, "VM->VM same host", vx_nops_same),
    (PLAIN, "VM->VM same host", plain_same),
    (REC, "VM->VM same host", k_same),
    ("OVN", "VM->VM same chassis", ovn_same),
    (VX, "VM->VM routed across hosts", vx_routed),
    (REC, "VM->VM routed across hosts", k_routed),
    (VX, "VM->VM routed, same host", vx_routed_same),
    (REC, "VM->VM routed, same host", k_routed_same),
    (VX, "outside client -> floating IP -> VM (via gateway host h4)", vx_floating),
]


# --- lab construction (inside the sandbox) -----------------------------------------------------


def _ok(r: Any, status: int = 200) -> Any:
    if r.status_code != status:
        raise RuntimeError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:200]}")
    return r.json() if r.content else None


def _vxnet_topology(lab3: Any, gateway: bool) -> Labs:
    """Network A (dp1@h1, dp2@h2, dp3@h1); a router to network B (dr2@h2, dr3@h1); with a
    gateway host, the router's gateway on an external network and a floating IP for dp1."""
    from vxnet.lab import topology

    net, sub = lab3.network("alice", f"{CIDR24}.0/24", "dataplane")
    ports = common.vms_active(lab3, [(name, host, net["id"], f"{CIDR24}.{octet}")
                              for name, host, octet in (("dp1", "h1", 11), ("dp2", "h2", 12), ("dp3", "h1", 13))])
    nops = []
    net_o, _ = lab3.network("alice", f"{CIDR24_O}.0/24", "dataplane-open")
    with lab3.api("alice") as c:
        for name, host, octet, nid in (("dq1", "h1", 21, net["id"]), ("dq2", "h2", 22, net["id"]),
                                       ("do1", "h1", 21, net_o["id"]), ("do2", "h2", 22, net_o["id"]),
                                       ("do3", "h1", 23, net_o["id"])):
            p = lab3.port("alice", nid, f"{CIDR24_O if nid == net_o['id'] else CIDR24}.{octet}")
            _ok(c.put(f"/ports/{p['id']}", json={"port": {"port_security_enabled": False, "security_groups": []}}))
            nops.append((name, host, p))
    for name, host, p in nops:
        lab3.vm(name, host, p)
        ports[name] = p
    for _, _, p in nops:
        lab3.wait_status(p["id"], "ACTIVE", timeout=30)
    vms = {name: topology.vm_ns(name) for name in ports}
    routed: str | None = None
    fip = "!no gateway host in this lab (`vxnet lab up --gateways/--external` not available)"
    rid = None
    try:
        net_b, sub_b = lab3.network("alice", f"{CIDR24_B}.0/24", "dataplane-b")
        with lab3.api("alice") as c:
            rid = _ok(c.post("/routers", json={"router": {"name": "dataplane"}}), 201)["router"]["id"]
            for s in (sub, sub_b):
                _ok(c.put(f"/routers/{rid}/add_router_interface", json={"subnet_id": s["id"]}))
        ports |= common.vms_active(lab3, [(name, host, net_b["id"], f"{CIDR24_B}.{octet}")
                                   for name, host, octet in (("dr2", "h2", 12), ("dr3", "h1", 13))])
        vms |= {name: topology.vm_ns(name) for name in ("dr2", "dr3")}
        for name, gw in (("dp1", f"{CIDR24}.1"), ("dp2", f"{CIDR24}.1"), ("dp3", f"{CIDR24}.1"),
                         ("dr2", f"{CIDR24_B}.1"), ("dr3", f"{CIDR24_B}.1")):
            nsx(vms[name], "ip", "route", "replace", "default", "via", gw)
        if not (common.wait_ping(vms["dp1"], f"{CIDR24_B}.12", 30) and common.wait_ping(vms["dp1"], f"{CIDR24_B}.13", 10)):
            routed = "routed ping dp1 -> dr2/dr3 never answered within 30 s"
    except Exception as e:  # noqa: BLE001 - the row says what broke
        routed = f"routed setup failed: {type(e).__name__}: {e}"[:300]
    if gateway and rid and not routed:
        try:
            fip = _floating_ip(lab3, rid, ports["dp1"])
        except Exception as e:  # noqa: BLE001
            fip = f"!floating IP setup failed: {type(e).__name__}: {e}"[:300]
    return Labs(vx_vms=vms, vx_routed=routed, vx_fip=fip, k=None, ovn_dir=None)


def _floating_ip(lab3: Any, rid: str, port: dict[str, Any]) -> str:
    """External network (flat, physnet "external", 203.0.113.0/24 via the outside's .1), the
    router's gateway on it, a floating IP for `port`, and a default-group rule letting the
    outside in; returns the floating IP once the outside client's ping is answered."""
    from vxnet.lab import topology

    with lab3.api("admin") as c:
        ext = _ok(c.post("/networks", json={"network": {
            "name": "public", "router:external": True, "provider:network_type": "flat",
            "provider:physical_network": "external"}}), 201)["network"]
        _ok(c.post("/subnets", json={"subnet": {
            "network_id": ext["id"], "ip_version": 4, "cidr": "203.0.113.0/24",
            "gateway_ip": topology.EXTERNAL_GATEWAY_IP,
            "allocation_pools": [{"start": "203.0.113.10", "end": "203.0.113.99"}]}}), 201)
    with lab3.api("alice") as c:
        _ok(c.put(f"/routers/{rid}", json={"router": {"external_gateway_info": {"network_id": ext["id"]}}}))
        sg = _ok(c.get("/security-groups", params={"name": "default"}))["security_groups"][0]
        for proto in ("icmp", "tcp"):
            _ok(c.post("/security-group-rules", json={"security_group_rule": {
                "security_group_id": sg["id"], "direction": "ingress", "ethertype": "IPv4", "protocol": proto,
                "remote_ip_prefix": "203.0.113.0/24"}}), 201)
        fip = _ok(c.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"],
                                                             "port_id": port["id"]}}), 201)["floatingip"]
    addr = fip["floating_ip_address"]
    if not common.wait_ping(topology.EXTERNAL_NS, addr, 40):
        raise RuntimeError(f"the outside client's ping to floating IP {addr} never answered within 40 s")
    return addr


def _lab_has_gateways() -> bool:
    import inspect

    from vxnet.lab import lab

    return {"gateways", "external"} <= set(inspect.signature(lab.up).parameters)


def _direct_pair() -> tuple[str, str]:
    a, b = "vxk-u1", "vxk-u2"
    for ns in (a, b):
        sh(["ip", "netns", "del", ns], check=False)
        sh(["ip", "netns", "add", ns])
        nsx(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    sh(["ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b])
    for ns, octet in ((a, 1), (b, 2)):
        batch("ip", ns, ["link set lo up", "link set eth0 mtu 1450 up", f"addr add 203.0.113.{octet}/24 dev eth0"])
        vm_nic_settings(ns)
    return a, b


@contextlib.contextmanager
def ovn_lab(script: str) -> Iterator[tuple[str | None, str | None, dict[str, str]]]:
    """ovn-lab.sh start ... stop; yields (LAB dir or None, error or None, env)."""
    missing = [b for b in OVN_BINS if shutil.which(b) is None]
    if not os.path.exists(script) or missing:
        yield None, (f"{script} not found" if missing == [] else
                     "not run: missing " + ", ".join(missing) + " (`make bench` installs etc/apt-packages-bench.txt)"), {}
        return
    tmp = tempfile.mkdtemp(prefix="vxnet-bench-ovn-")
    env = dict(os.environ, LAB=os.path.join(tmp, "ovnlab"), NCH="3", NPORTS="0")
    try:
        r = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True, timeout=300, check=False)
        if r.returncode != 0:
            yield None, f"`ovn-lab.sh start` failed (exit {r.returncode}): {_tail(r.stdout + r.stderr)}", env
        else:
            yield env["LAB"], None, env
    finally:
        subprocess.run(["bash", script, "stop"], env=env, capture_output=True, text=True, timeout=120, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _cpu_ticks(pids: list[int]) -> int:
    t = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            t += int(fields[11]) + int(fields[12])
    return t


def _ovn_pids(lab_dir: str) -> list[int]:
    pids = []
    for root, _dirs, files in os.walk(lab_dir):
        for fn in files:
            if fn.endswith(".pid"):
                with contextlib.suppress(OSError, ValueError), open(os.path.join(root, fn)) as f:
                    pids.append(int(f.read().strip()))
    return pids


def _vxnet_pids() -> list[int]:
    from vxnet.lab import lab

    st = lab.load_state()
    return [p for p in [st.get("server_pid"), *st["agents"].values()] if p]


def _host_br_nf(on: bool) -> None:
    """The vxnet hosts' namespace-wide br_netfilter switches (the agents set them to 0)."""
    from vxnet.lab import topology

    v = "1" if on else "0"
    for i in (1, 2, 3):
        nsx(topology.host_ns(i), "sysctl", "-qw", f"net.bridge.bridge-nf-call-iptables={v}",
            f"net.bridge.bridge-nf-call-ip6tables={v}", check=False)


# What issue 18's two goals need, plus the noise control (`--dp-goals`): exact (system, path).
GOAL_ROWS = ((VX, CROSS), (VXPS, CROSS), (PLAIN, CROSS), UL, (PLAIN_AGAIN, CROSS))
# Pairs whose per-round ratios get median and IQR (bench.cpu_account), a first, b second.
STAT_PAIRS = (((VX, CROSS), UL), ((VXPS, CROSS), (PLAIN, CROSS)), ((PLAIN_AGAIN, CROSS), (PLAIN, CROSS)),
              ((PLAIN, CROSS), UL), ((VX, CROSS), (PLAIN, CROSS)), ((VX, CROSS), (REC, CROSS)))


def selected(only: tuple[str, ...]) -> list[int]:
    """Indexes of ROWS whose "system | path" contains one of `only` (all when empty); an entry
    "=goals" selects exactly GOAL_ROWS."""
    goals = "=goals" in only
    only = tuple(o for o in only if o != "=goals")
    return [i for i, (system, path, _) in enumerate(ROWS)
            if (not only and not goals) or (goals and (system, path) in GOAL_ROWS)
            or any(o.lower() in f"{system} | {path}".lower() for o in only)]


def measure(rounds: int, seconds: float, count: int, script: str, only: tuple[str, ...] = (),
            cpus: tuple[int, int] | None = None, rate: str = "") -> dict[str, Any]:
    """Build every lab, then `rounds` alternating rounds over ROWS (those `only` selects, see
    `selected`; runs inside the sandbox); every iperf3 client/server pinned to `cpus`. OVN's lab
    is started only when an OVN row is selected."""
    import_repo()
    out: dict[str, Any] = {"rows": {}, "settings": {}, "notes": [], "ovn_measure": ""}
    gateway = _lab_has_gateways()
    k = KernelLab(mode="static", prefix="vxk", cidr24=CIDR24, more_networks={4243: CIDR24_B})
    plain = KernelLab(mode="static", prefix="vxp", cidr24=CIDR24)
    workdir = tempfile.mkdtemp(prefix="vxnet-bench-dp-")
    chosen = selected(only)
    want_ovn = any(ROWS[i][0] == "OVN" for i in chosen)
    try:
        with common.lab(workdir, gateway) as lab3, \
                (ovn_lab(script) if want_ovn else contextlib.nullcontext((None, "not selected", {}))) \
                as (ovn_dir, ovn_err, ovn_env):
            labs = _vxnet_topology(lab3, gateway)
            k.build()
            for name, host, octet in (("k1", 1, 11), ("k2", 2, 12), ("k3", 1, 13)):
                k.add_vm(name, host, octet)
            for name, host, octet in (("kr2", 2, 12), ("kr3", 1, 13)):
                k.add_vm(name, host, octet, 4243)
            k.add_routers()
            k.apply_firewall()
            plain.build()
            for name, host, octet in (("p1", 1, 11), ("p2", 2, 12), ("p3", 1, 13)):
                plain.add_vm(name, host, octet)
            for i in range(1, plain.hosts + 1):   # plain: no br_netfilter pass either
                nsx(plain.host_ns(i), "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0",
                    "net.bridge.bridge-nf-call-ip6tables=0", check=False)
            labs.plain = plain
            labs.k, labs.ovn_dir, labs.ovn_error, labs.direct = k, ovn_dir, ovn_err, _direct_pair()
            out["notes"].append("br_netfilter `net.bridge.bridge-nf-call-iptables` on the host: vxnet h1 = "
                                + nsx("vxl-h1", "sysctl", "-n", "net.bridge.bridge-nf-call-iptables", check=False).stdout.strip()
                                + ", hand-built h1 = "
                                + nsx(k.host_ns(1), "sysctl", "-n", "net.bridge.bridge-nf-call-iptables", check=False).stdout.strip()
                                + "; nftables rules in vxnet h1: "
                                + str(sum(1 for ln in nsx("vxl-h1", "nft", "list", "ruleset", check=False).stdout.splitlines()
                                          if ln.strip() and not ln.strip().startswith(("table", "chain", "}", "type"))))
                                + ", in hand-built h1: "
                                + str(sum(1 for ln in nsx(k.host_ns(1), "nft", "list", "ruleset", check=False).stdout.splitlines()
                                          if ln.strip() and not ln.strip().startswith(("table", "chain", "}", "type")))))
            # Idle CPU of the control planes while nothing is measured (they stay up during every row).
            pids_vx = _vxnet_pids()
            pids_ovn = _ovn_pids(ovn_dir) if ovn_dir else []
            c0 = (_cpu_ticks(pids_vx), _cpu_ticks(pids_ovn))
            time.sleep(5)
            tck = os.sysconf("SC_CLK_TCK")
            out["idle_cpu"] = {"vxnet server+agents": (_cpu_ticks(pids_vx) - c0[0]) / tck / 5,
                               "OVN daemons": (_cpu_ticks(pids_ovn) - c0[1]) / tck / 5 if ovn_dir else None}
            for i, (system, path, fn) in enumerate(ROWS):
                if i not in chosen:
                    continue
                key = f"{i}"
                out["rows"][key] = {"system": system, "path": path, "rounds": [], "error": None}
                try:
                    p = fn(labs)
                    out["settings"][key] = ("tso/gso/gro set off on both VMs for this row only" if p.offloads_off
                                            else nic_settings(p.src_ns, p.dev))
                except Unavailable as e:
                    out["rows"][key]["error"] = str(e)
                except Exception as e:  # noqa: BLE001 - the table says what broke
                    out["rows"][key]["error"] = f"{type(e).__name__}: {e}"[:300]
            for j in common.alternating(rounds, len(chosen)):
                i = chosen[j]
                row = out["rows"][str(i)]
                if not row["error"]:
                    p = ROWS[i][2](labs)
                    if p.offloads_off:
                        for ns in (p.src_ns, p.dst_ns):
                            vm_nic_settings(ns, offloads=False)
                    if p.host_br_nf:
                        _host_br_nf(True)
                    try:
                        row["rounds"].append(_measure_row(p, seconds, count, cpus, rate))
                    finally:
                        if p.offloads_off:
                            for ns in (p.src_ns, p.dst_ns):
                                vm_nic_settings(ns, offloads=True)
                        if p.host_br_nf:
                            _host_br_nf(False)
            if ovn_dir:
                env = dict(ovn_env, IPERF_T=str(max(1, int(seconds))))
                r = subprocess.run(["bash", script, "measure"], env=env, capture_output=True, text=True, timeout=300,
                                   check=False)
                out["ovn_measure"] = "\n".join(ln for ln in r.stdout.splitlines()
                                               if ln.startswith(("###", "vm", "   CPU")))
                if r.returncode != 0:
                    out["notes"].append(f"`ovn-lab.sh measure` exit {r.returncode}: {_tail(r.stderr)}")
    finally:
        k.teardown()
        plain.teardown()
        for ns in ("vxk-u1", "vxk-u2"):
            sh(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def _measure_row(p: Path, seconds: float, count: int, cpus: tuple[int, int] | None, rate: str) -> dict[str, Any]:
    """One row in one round (common.measure_row, with iperf3's client and server pinned and
    the sender capped at `rate`)."""
    res: dict[str, Any] = {"load1": os.getloadavg()[0]}
    res["iperf"] = iperf3_run(p.src_ns, p.dst_ns, p.dst_ip, seconds, p.bind_ip, cpus, rate)
    res["ping"] = ping_run(p.src_ns, p.dst_ip, count, 0.01)
    return res


# --- the report ---------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dp-rounds", type=int, default=5, help="alternating rounds over every data-plane row (5)")
    p.add_argument("--dp-seconds", type=float, default=3.0, help="iperf3 seconds per row and round (3)")
    p.add_argument("--dp-pings", type=int, default=200, help="pings per row and round, 10 ms apart (200)")
    p.add_argument("--dp-only", action="append", default=[], metavar="TEXT",
                   help="measure only the rows whose 'system | path' contains TEXT (repeatable; case-insensitive); "
                        "'=goals' = exactly the rows issue 18's goals need plus the noise control")
    p.add_argument("--dp-pin", default="0,0", metavar="C,S",
                   help="pin every iperf3 client to CPU C and server to CPU S (taskset; 'none': unpinned)")
    p.add_argument("--dp-rate", default="", metavar="RATE",
                   help="cap every iperf3 sender at RATE (iperf3 -b, e.g. 2G; default: unlimited)")
    p.add_argument("--dp-json", metavar="PATH", help="also write the raw per-round results (JSON) to PATH")


def parse_pin(text: str) -> tuple[int, int] | None:
    """`--dp-pin`: "C,S" -> (C, S); "none" or "" -> None."""
    if text.strip().lower() in ("", "none"):
        return None
    c, s = (int(x) for x in text.split(","))
    return c, s


def _series(row: dict[str, Any] | None, what: str) -> list[float | None]:
    """One figure per round of a row: "gbps", "cpu" (CPU s/Gbit, cpu_account.cpu_s_per_gbit)
    or "p50" (ping ms)."""
    if not row or row["error"]:
        return []
    out: list[float | None] = []
    for r in row["rounds"]:
        if what == "cpu":
            out.append(cpu_account.cpu_s_per_gbit(r["iperf"]))
        elif what == "gbps":
            out.append(r["iperf"].get("gbps"))
        else:
            out.append(percentile(r["ping"]["rtts"], 50) if r["ping"]["rtts"] else None)
    return out


def _q(values: list[float | None], fmt: str = "{:.4f}") -> str:
    v = [x for x in values if x is not None]
    if not v:
        return ""
    q1, med, q3 = cpu_account.quartiles(v)
    return f"{fmt.format(med)} [{fmt.format(q1)}-{fmt.format(q3)}]"


def cpu_tables(by: dict[tuple[str, str], dict[str, Any]]) -> tuple[str, list[str]]:
    """Markdown: per row, Gbit/s and CPU per Gbit/s (iperf3 rusage + ksoftirqd) median [IQR]
    with the softirq context figures; per pair of STAT_PAIRS, the per-round ratios' median
    [IQR]; and the goal lines judged by CPU per Gbit/s."""
    md = ("CPU per Gbit/s (the steadier figure on a CPU-bound shared VM; bench.cpu_account), "
          "median [Q1-Q3] over rounds:\n\n| system | path | Gbit/s | CPU s/Gbit (iperf3 rusage + ksoftirqd) "
          "| of which ksoftirqd s/Gbit | softirq s/Gbit per CPU (/proc/stat, any context) | NET_RX per round "
          "per CPU |\n|---|---|---|---|---|---|---|\n")
    for (system, path), row in by.items():
        if row["error"] or not any("cpu_proc_s" in r["iperf"] for r in row["rounds"]):
            continue
        its = [r["iperf"] for r in row["rounds"] if "cpu_proc_s" in r["iperf"]]
        gbit = [i["bytes"] * 8 / 1e9 for i in its]
        ks = [i["ksoftirqd_s"] / g for i, g in zip(its, gbit, strict=True)]
        cpus_ = sorted(its[0]["softirq_s"])
        soft = " / ".join(_q([i["softirq_s"].get(c, 0) / g for i, g in zip(its, gbit, strict=True)])
                          for c in cpus_)
        nrx = " / ".join(f"{statistics.median(i['net_rx'][k] for i in its):.0f}"
                         for k in range(len(its[0]["net_rx"])))
        md += (f"| {system} | {path} | {_q(_series(row, 'gbps'), '{:.2f}')} | {_q(_series(row, 'cpu'))} | "
               f"{_q(ks)} | {soft} ({', '.join(cpus_)}) | {nrx} |\n")
    md += ("\nPer-round ratios, median [Q1-Q3], n rounds ('speed by CPU' = b's CPU per Gbit / a's: what a "
           "reaches relative to b when both are CPU-bound; the noise-control pair is the same path measured "
           "twice):\n\n| a | b | path | Gbit/s a/b | speed by CPU | ping p50 a/b |\n|---|---|---|---|---|---|\n")
    stats: dict[tuple[tuple[str, str], tuple[str, str]], cpu_account.RatioStats | None] = {}
    for a, b in STAT_PAIRS:
        ra, rb = by.get(a), by.get(b)
        if not ra or not rb or ra["error"] or rb["error"]:
            continue
        g = cpu_account.ratio_stats(_series(ra, "gbps"), _series(rb, "gbps"))
        c = stats[(a, b)] = cpu_account.speed_by_cpu(_series(ra, "cpu"), _series(rb, "cpu"))
        p = cpu_account.ratio_stats(_series(ra, "p50"), _series(rb, "p50"))
        md += (f"| {a[0]} | {b[0]} | {a[1] if a[1] == b[1] else a[1] + ' / ' + b[1]} | "
               f"{g.text() if g else ''} | {c.text() if c else ''} | {p.text() if p else ''} |\n")
    goals = []
    for (a, b), need, what in ((((VX, CROSS), UL), 0.8, "vxnet with stateful groups >= 0.8x raw underlay"),
                               (((VXPS, CROSS), (PLAIN, CROSS)), 0.95,
                                "vxnet without groups (port security off) >= 0.95x of hand-built plain VXLAN")):
        st = stats.get((a, b))
        if st:
            verdict = ("met" if st.q1 >= need else "NOT met" if st.q3 < need else "undecided: the IQR straddles it")
            goals.append(f"Goal (issue 18) by CPU per Gbit/s: {what}: {st.text('{:.2f}')} here ({verdict}).")
    return md + "\n", goals


def _f(x: float | None, fmt: str = "{:.3f}") -> str:
    return "" if x is None else fmt.format(x)


def _cpu_per_gbit(rounds: list[dict[str, Any]], what: str) -> str:
    """CPU-seconds per Gbit (= CPUs busy / Gbit/s), median over rounds."""
    v = [r["iperf"][what] / r["iperf"]["gbps"] for r in rounds
         if "gbps" in r["iperf"] and r["iperf"].get(what) is not None and r["iperf"]["gbps"] > 0]
    return f"{statistics.median(v):.3f}" if v else ""


def run(opts: argparse.Namespace) -> Report:
    cols = ["system", "path", "iperf3 Gbit/s (median; min-max)", "retransmits", "CPU s/Gbit (iperf3 procs)",
            "CPU s/Gbit (machine)", "ping avg ms", "p50 ms", "p99 ms", "lost", "sender NIC (read from the kernel)"]
    blank = [""] * (len(cols) - 3)
    if os.geteuid() != 0:
        return Report(NAME, cols, [["all", "not run", *blank, "needs root (namespaces)"]])
    rounds = 1 if opts.quick else max(1, opts.dp_rounds)
    seconds = 1.0 if opts.quick else opts.dp_seconds
    count = 50 if opts.quick else opts.dp_pings
    cpus = parse_pin(opts.dp_pin)
    load0 = os.getloadavg()
    notes: list[str] = []
    try:
        res: dict[str, Any] = in_sandbox(  # type: ignore[assignment]
            f"__import__('bench.dataplane_bench', fromlist=['_']).measure({rounds}, {seconds}, {count}, "
            f"{opts.ovn_lab!r}, {tuple(opts.dp_only)!r}, {cpus!r}, {opts.dp_rate!r})",
            900 + rounds * len(ROWS) * (seconds + count * 0.012 + 10))
    except Exception as e:  # noqa: BLE001 - the table says what broke
        return Report(NAME, cols, [["all", "failed", *blank, f"{type(e).__name__}: {e}"[:600]]])
    if opts.dp_json:
        with open(opts.dp_json, "w") as f:
            json.dump(res, f)
    rows: list[list[str]] = []
    by = {(r["system"], r["path"]): r for r in res["rows"].values()}
    for key, row in res["rows"].items():
        if row["error"]:
            rows.append([row["system"], row["path"], "not measured", *blank[:-1], row["error"].replace("|", "/")])
            continue
        gb, *ping = common.row_cells(row["rounds"])
        retr = "/".join(str(r["iperf"].get("retransmits")) for r in row["rounds"] if "gbps" in r["iperf"])
        rows.append([row["system"], row["path"], gb, retr, _cpu_per_gbit(row["rounds"], "cpu_iperf"),
                     _cpu_per_gbit(row["rounds"], "cpu_machine"), *ping, res["settings"].get(key, "")])
    ul = ("underlay", "host->host over the underlay bridge (host defaults)")
    same, routed, routed_same = "VM->VM same host", "VM->VM routed across hosts", "VM->VM routed, same host"
    pairs = [((VX, CROSS), ul), ((VXPS, CROSS), ul), ((PLAIN, CROSS), ul), ((REC, CROSS), ul),
             ((VX, CROSS), (PLAIN, CROSS)), ((VXPS, CROSS), (PLAIN, CROSS)), ((VX, CROSS), (REC, CROSS)),
             ((VXPS, CROSS_NS_BRNF), (PLAIN, CROSS)), ((VXPS, CROSS_MIXED), (PLAIN, CROSS)),
             ((VXPS, CROSS), (VXPS, CROSS_NS_BRNF)),
             ((PLAIN_AGAIN, CROSS), (PLAIN, CROSS)),
             ((VX, same), (PLAIN, same)), ((VXPS, same), (PLAIN, same)), ((VX, same), (REC, same)),
             ((VX, routed), (REC, routed)), ((VX, routed_same), (REC, routed_same)),
             ((VX, CROSS), (VX, "VM->VM across hosts, VM offloads OFF (the old lab setting)")),
             (("OVN", "VM->VM across chassis"), (VX, CROSS)), (("OVN", "VM->VM same chassis"), (VX, same))]
    ratio: dict[tuple[tuple[str, str], tuple[str, str]], float | None] = {}
    for a, b in pairs:
        ra, rb = by.get(a), by.get(b)
        if not ra or not rb or ra["error"] or rb["error"]:
            continue
        g, lat = common.paired_ratio(ra, rb, "gbps"), common.paired_ratio(ra, rb, "p50")
        ratio[(a, b)] = g
        rows.append([f"ratio {a[0]} / {b[0]}", a[1] if a[1] == b[1] else f"{a[1]} / {b[1]}",
                     _f(g, "{:.2f}x"), "", "", "", "", _f(lat, "{:.2f}x"), "", "",
                     "per-round ratios, median over rounds (Gbit/s; ping p50)"])
    cpu_md, cpu_goal = cpu_tables(by)
    goals = []
    if opts.dp_rate:   # every sender moved the same bytes: Gbit/s ratios say nothing about the goals
        capped = f"not judged by Gbit/s here (every sender capped at {opts.dp_rate}bit/s; see CPU per Gbit/s)."
        g1: float | None = None
        g2: float | None = None
    else:
        g1, g2 = ratio.get(((VX, CROSS), ul)), ratio.get(((VXPS, CROSS), (PLAIN, CROSS)))
    goals.append("Goal (issue 18): vxnet with stateful groups >= 0.8x raw underlay across hosts: "
                 + (capped if opts.dp_rate else f"{g1:.2f}x here ({'met' if g1 >= 0.8 else 'NOT met'})."
                    if g1 is not None else "not measured."))
    goals.append("Goal (issue 18): vxnet without groups (port security off) >= 0.95x of hand-built plain VXLAN "
                 "across hosts: " + (capped if opts.dp_rate else f"{g2:.2f}x here ({'met' if g2 >= 0.95 else 'NOT met'})."
                                     if g2 is not None else "not measured."))
    idle = res.get("idle_cpu") or {}
    notes.append(f"{rounds} alternating rounds (row order reversed every other round), each row: iperf3 -t "
                 f"{seconds:g} single TCP stream, then {count} pings 10 ms apart (3 warm-up pings not counted). "
                 "Gbit/s = receiver side. Every lab ran in one private network + mount namespace (`unshare`), "
                 "all built before the first row and kept up until the last.")
    notes.append("Offloads: every VM (vxnet's, both hand-built labs', the 'VM settings' veth) runs MTU 1450 with "
                 "guest-like offloads, TSO/GSO/GRO on, as virtio-net guests have them; their host-side taps, "
                 "bridges and VXLAN devices keep the kernel defaults; the underlay host row uses the host veths' "
                 "defaults (MTU 1500, offloads on). One row sets TSO/GSO/GRO off on both VMs for that row only "
                 "(the lab's setting until issue 18; it is what MTU tests use, since GSO skbs skip the MTU checks "
                 "on the veth/bridge path, KERNEL-NOTES §8). OVN's VMs: MTU 1400, tx checksum off (needed by its "
                 "userspace datapath). The floating-IP row sends from the lab's outside namespace (MTU 1500, "
                 "offloads on) towards the VM: the gateway's MSS clamping and NAT are in the path.")
    notes.append("Systems: 'vxnet (default group)' = VMs in the project's default security group (the firewall "
                 "feature's tables); 'vxnet (port security off)' = ports with "
                 "port_security_enabled=false and no groups, on a network of their own (its bridge skips "
                 "br_netfilter) unless the path says 'on network A' (the default-group VMs' network); 'hand-built plain VXLAN' = the KERNEL-NOTES §2 "
                 "recipe by hand (bench.kernel_lab, its own namespaces), no nftables table and "
                 "bridge-nf-call-iptables=0; 'hand-built + SG recipe' = the same with KERNEL-NOTES §6 by hand "
                 "(anti-spoofing + stateful default-group semantics via br_netfilter and conntrack zones).")
    notes.append("CPU s/Gbit: CPUs busy during the iperf3 run divided by its Gbit/s. 'iperf3 procs' = "
                 "iperf3's own figure for client + server (their user+sys time: the veth, bridge, VXLAN and "
                 "netfilter work done in their context is in it; softirq work run elsewhere is not); "
                 "'machine' = all CPUs from /proc/stat (includes every other process on the shared machine, "
                 "so it is an upper bound).")
    notes += res.get("notes", [])
    if idle:
        notes.append("Idle CPU of the control planes (5 s before the first row; both stay up during every row): "
                     + ", ".join(f"{k} {v * 100:.1f}% of a CPU" for k, v in idle.items() if v is not None) + ".")
    notes.append(common.load_note(load0, [row["rounds"] for row in res["rows"].values()]))
    goals += cpu_goal
    notes.append("iperf3 client and server pinned with taskset to CPUs "
                 + (f"{cpus[0]} and {cpus[1]}" if cpus else "none (unpinned)") + " in every row and round"
                 + (f"; every sender capped at {opts.dp_rate}bit/s (iperf3 -b)." if opts.dp_rate else "."))
    extra = cpu_md + common.per_round_table(("system", "path"), [(row["system"], row["path"], row["rounds"])
                                                 for row in res["rows"].values() if not row["error"]], rounds)
    if res.get("ovn_measure"):
        extra += ("\nOVN lab's own `ovn-lab.sh measure` (NPORTS=0, IPERF_T="
                  f"{max(1, int(seconds))}), same run, after the rounds:\n\n```\n{res['ovn_measure']}\n```\n")
    return Report(NAME, cols, rows, notes=notes, goals=goals, extra_markdown=extra)


if __name__ == "__main__":
    from bench.__main__ import main

    sys.exit(main(["--only", "dataplane_bench", *sys.argv[1:]]))
