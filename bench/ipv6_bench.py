"""IPv6 on the VM's host: dual-stack port-up (IPv6 vs IPv4 in the same run) and SLAAC time.

What runs, in one private network + mount namespace (bench.port_up_bench.in_sandbox): a
`vxnet lab` with 3 hosts; one network with an IPv4 subnet and an IPv6 SLAAC subnet
(2001:db8:21::/64) with a router interface (so vxnet advertises it); one prober VM per host.

- Dual-stack port-up: `--ports` new dual-stack ports round-robin over h1..h3; for each, its VM
  namespace and tap exist before the bind, with both of the port's addresses configured
  (static, no DAD: the figure is the data path's, not the VM's address timers) and IPv6 on; the
  prober VM on the next host knows the new VM's MAC for both addresses (permanent neighbour
  entries) and sends an ICMP echo and an ICMPv6 echo every 2 ms on an absolute schedule
  (tests/support/probe.py: kernel receive timestamps). t0 is just before the bind; each family's
  figure is bind -> its first reply. The goal: IPv6 p50 within 1.2x of IPv4's.
- SLAAC: `--slaac` VMs on ACTIVE ports with IPv6 off; IPv6 is turned on in the VM (its link
  comes up for IPv6: link-local, DAD, router solicitation) and a loop in the VM reads
  /proc/net/if_inet6 every 5 ms until the port's global EUI-64 address is there and no longer
  tentative (usable). Dominated by the VM kernel's DAD (1 s per address by default).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from bench.report import Report, percentile

NAME = "IPv6 on the host: dual-stack port-up (v6 vs v4, same run) and SLAAC"
HOSTS = ("h1", "h2", "h3")
V6 = "2001:db8:21::/64"

WAIT_SLAAC = r"""
import sys, time, subprocess
want = sys.argv[1].replace(":", "")
t0 = time.time()
subprocess.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
                "net.ipv6.conf.eth0.accept_ra=1", "net.ipv6.conf.eth0.disable_ipv6=0"], check=True)
t1 = time.time()
while time.time() - t0 < 20:
    with open("/proc/net/if_inet6") as f:
        for line in f:
            addr, _, _, _, flags, dev = line.split()
            if dev == "eth0" and addr == want and not int(flags, 16) & 0x40:   # IFA_F_TENTATIVE
                print(f"{time.time() - t1:.6f}")
                sys.exit(0)
    time.sleep(0.005)
print("timeout")
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ports", type=int, default=30, help="dual-stack ports brought up (default 30)")
    p.add_argument("--slaac", type=int, default=6, help="VMs timed for SLAAC (default 6)")


def _full(ip: str) -> str:
    import ipaddress
    return ipaddress.IPv6Address(ip).exploded.replace(":", "")


def measure(n_ports: int, n_slaac: int) -> dict[str, Any]:
    """The measurement (in a sandbox): per-port v4/v6 first-reply latencies, SLAAC seconds."""
    from bench.common import lab as vxnet_lab
    from tests.root.helpers import nsexec
    from tests.support import probe
    from vxnet.compute import nd_packet as nd
    from vxnet.lab import lab as vlab
    from vxnet.lab import topology

    out: dict[str, Any] = {"v4": [], "v6": [], "slaac": [], "failed": 0}
    with tempfile.TemporaryDirectory(prefix="vxnet-v6bench-") as wd, vxnet_lab(wd) as lab3:
        with lab3.api("alice") as c:
            net = c.post("/networks", json={"network": {"name": "v6b"}}).json()["network"]
            s4 = c.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.64.21.0/24",
                                                     "ip_version": 4}}).json()["subnet"]
            s6 = c.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": V6, "ip_version": 6,
                                                     "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac"}})
            assert s6.status_code == 201, s6.text
            s6 = s6.json()["subnet"]
            rid = c.post("/routers", json={"router": {"name": "v6b"}}).json()["router"]["id"]
            if c.put(f"/routers/{rid}/add_router_interface", json={"subnet_id": s6["id"]}).status_code != 200:
                with lab3.api("admin") as a:
                    a.post("/ports", json={"port": {"network_id": net["id"], "device_owner": "network:router_interface",
                                                    "device_id": rid, "project_id": net["project_id"],
                                                    "fixed_ips": [{"subnet_id": s6["id"],
                                                                   "ip_address": s6["gateway_ip"]}]}})

        def new_port(ip4: str) -> dict[str, Any]:
            with lab3.api("alice") as c:
                r = c.post("/ports", json={"port": {"network_id": net["id"],
                                                    "fixed_ips": [{"subnet_id": s4["id"], "ip_address": ip4},
                                                                  {"subnet_id": s6["id"]}]}})
                assert r.status_code == 201, r.text
                return r.json()["port"]

        def v6_of(p: dict[str, Any]) -> str:
            return next(f["ip_address"] for f in p["fixed_ips"] if ":" in f["ip_address"])

        def ipv6_on(vm: str, addr: str | None) -> None:
            ns = topology.vm_ns(vm)
            nsexec(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0",
                   "net.ipv6.conf.eth0.disable_ipv6=0", "net.ipv6.conf.eth0.accept_ra=0")
            if addr:
                nsexec(ns, "ip", "-6", "addr", "add", addr + "/64", "dev", "eth0", "nodad")

        probers = {}
        for i, h in enumerate(HOSTS):
            p = new_port(f"100.64.21.{201 + i}")
            lab3.vm(f"pr{i + 1}", h, p)
            lab3.wait_status(p["id"], "ACTIVE")
            ipv6_on(f"pr{i + 1}", v6_of(p))
            probers[h] = f"pr{i + 1}"
        st = vlab.load_state()
        with lab3.api("admin") as api:
            for n in range(n_ports):
                host, prober = HOSTS[n % 3], probers[HOSTS[(n + 1) % 3]]
                ip4 = f"100.64.21.{10 + n}"
                port = new_port(ip4)
                ip6 = v6_of(port)
                vlab.vm_add(f"l{n}", host, port["id"], bind=False)
                ipv6_on(f"l{n}", ip6)
                pns = topology.vm_ns(prober)
                nsexec(pns, "ip", "neigh", "replace", ip4, "lladdr", port["mac_address"], "dev", "eth0", "nud", "permanent")
                nsexec(pns, "ip", "-6", "neigh", "replace", ip6, "lladdr", port["mac_address"], "dev", "eth0", "nud",
                       "permanent")
                p4 = probe.start_probe(pns, ip4, 0.002, 2500)
                p6 = probe.start_probe(pns, ip6, 0.002, 2500)
                t0 = time.time()
                vlab.bind_port(st, port["id"], host, api)
                f4 = probe.first_reply(p4, deadline=t0 + 5)
                f6 = probe.first_reply(p6, deadline=t0 + 5)
                probe.stop(p4)
                probe.stop(p6)
                if f4 is None or f6 is None:
                    out["failed"] += 1
                    continue
                out["v4"].append(f4 - t0)
                out["v6"].append(f6 - t0)
        # SLAAC: ports ACTIVE with IPv6 off in the VM, then IPv6 on.
        for k in range(n_slaac):
            port = new_port(f"100.64.21.{150 + k}")
            lab3.vm(f"s{k}", HOSTS[k % 3], port)
            lab3.wait_status(port["id"], "ACTIVE")
            assert v6_of(port) == nd.eui64_address(V6, port["mac_address"])
            r = nsexec(topology.vm_ns(f"s{k}"), sys.executable, "-c", WAIT_SLAAC, _full(v6_of(port)), timeout=30)
            if r.stdout.strip() and r.stdout.strip() != "timeout":
                out["slaac"].append(float(r.stdout.strip()))
            else:
                out["failed"] += 1
    return out


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


def run(opts: argparse.Namespace) -> Report:
    from bench.port_up_bench import in_sandbox

    cols = ["what", "n", "p50 ms", "p90 ms", "max ms", "note"]
    quick = getattr(opts, "quick", False)
    n_ports = max(6, opts.ports // 10) if quick else opts.ports
    n_slaac = max(2, opts.slaac // 3) if quick else opts.slaac
    if os.geteuid() != 0:
        return Report(NAME, cols, [["all", "not run", "", "", "", "needs root (namespaces)"]])
    try:
        res: dict[str, Any] = in_sandbox(  # type: ignore[assignment]
            f"__import__('bench.ipv6_bench', fromlist=['x']).measure({n_ports}, {n_slaac})", 900)
    except RuntimeError as e:
        return Report(NAME, cols, [["all", "failed", "", "", "", f"{e}"[:600]]])
    rows = []
    for key, what in (("v4", "bind -> first IPv4 reply"), ("v6", "bind -> first IPv6 reply"),
                      ("slaac", "IPv6 on -> SLAAC address usable")):
        xs = res[key]
        rows.append([what, str(len(xs)), _ms(percentile(xs, 50)) if xs else "", _ms(percentile(xs, 90)) if xs else "",
                     _ms(max(xs)) if xs else "", ""])
    ratio = (statistics.median(res["v6"]) / statistics.median(res["v4"])) if res["v4"] and res["v6"] else float("nan")
    per_port = [b / a for a, b in zip(res["v4"], res["v6"], strict=True) if a > 0]
    rows.append(["v6 / v4 (p50 ratio)", str(len(per_port)), f"{ratio:.2f}", "", "",
                 f"per-port ratio median {statistics.median(per_port):.2f}" if per_port else ""])
    notes = [f"{res['failed']} ports/VMs failed" if res["failed"] else "no failure"]
    goals = [f"dual-stack port-up: v6 p50 within 1.2x of v4: {'met' if ratio <= 1.2 else 'NOT met'} ({ratio:.2f})"]
    return Report(NAME, cols, rows, notes=notes, goals=goals)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    add_arguments(parser)
    rep = run(parser.parse_args())
    from bench.report import text_table
    print(rep.name)
    print(text_table(rep.columns, rep.rows))
    for line in rep.notes + rep.goals:
        print(line)
