"""Hand-built kernel VXLAN labs and the measuring tools the data-plane benchmarks share.

`KernelLab` builds, with `ip`/`bridge` only, what KERNEL-NOTES §1-2 verified: N host namespaces on
a flat underlay bridge (198.51.100.<i>/24, permanent ARP between VTEPs like the vxnet lab), one
VXLAN network (one bridge with an explicit MAC + one VXLAN device per host, MTU 1450) and VMs
whose `eth0` (MTU 1450, TSO/GSO/GRO off, IPv6 off: the vxnet lab's VM settings) is the peer of a
tap in its host's bridge. Two modes:
- "static": vxnet's recipe with no control plane: `nolearning`, bridge-port learning off and
  neigh_suppress on the VXLAN port, no BUM entries; each VM is published on every host (remote:
  `self` FDB entry -> its VTEP + `master static`; everywhere: a permanent neighbour entry on the
  bridge). It is the physical limit the vxnet agent's result is compared with.
- "flood": the flood-and-learn baseline: VXLAN learning on, bridge learning on, no suppression,
  head-end replication (all-zero FDB entries to every other VTEP), no static entries.

Every name starts with the lab's `prefix` (default `vxk`), so `teardown()` finds everything,
also after a crash. The benchmarks run these labs in a private network + mount namespace
(bench.port_up_bench.in_sandbox), never next to someone else's namespaces.

Tools: `iperf3_run` (one single-stream iperf3 between two namespaces; servers stopped by PID),
`ping_run` (ping -c N -i I, per-reply RTTs), `Capture` (tcpdump --immediate-mode on a bridge,
frames read back from the pcap file) and `classify` (underlay frames by kind).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence

VNI = 4242
MTU = 1450


def sh(cmd: Sequence[str], check: bool = True, timeout: float = 60, inp: str | None = None
       ) -> subprocess.CompletedProcess[str]:
    """Run one command; raise with its stderr on failure (when `check`)."""
    r = subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=timeout, input=inp)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def batch(tool: str, ns: str, lines: Iterable[str]) -> None:
    """Many `ip` or `bridge` commands in one process inside `ns`."""
    text = "\n".join(lines)
    if text:
        sh([tool, "-n", ns, "-batch", "-"], inp=text + "\n")


def nsx(ns: str, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return sh(["ip", "netns", "exec", ns, *cmd], check=check, timeout=timeout)


def quiet_ns(ns: str) -> None:
    """IPv6 off (no ND/MLD in captures), as in the vxnet lab."""
    nsx(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")


VM_OFFLOADS = True   # the vxnet lab's VMs (topology.add_vm): guest-like, TSO/GSO/GRO on
_ON = "on" if VM_OFFLOADS else "off"


def vm_nic_settings(ns: str, offloads: bool = VM_OFFLOADS) -> None:
    """The vxnet lab's VM NIC offloads (topology.add_vm): TSO/GSO/GRO on like a virtio-net
    guest's; off (`offloads=False`) where a row must show MTU behaviour (GSO skips the MTU checks)."""
    v = "on" if offloads else "off"
    nsx(ns, "ethtool", "-K", "eth0", "tso", v, "gso", v, "gro", v, check=False)


def namespaces(prefix: str) -> list[str]:
    out = sh(["ip", "netns", "list"], check=False).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.split() and ln.split()[0].startswith(prefix + "-")]


@dataclasses.dataclass
class KVm:
    name: str
    host: int
    ip: str
    mac: str
    vni: int = VNI


class KernelLab:
    """A hand-built 1-network VXLAN lab (see the module docstring); `mode` is "static" or "flood"."""

    def __init__(self, hosts: int = 3, mode: str = "static", prefix: str = "vxk", cidr24: str = "100.64.40",
                 more_networks: dict[int, str] | None = None) -> None:
        if mode not in ("static", "flood"):
            raise ValueError(mode)
        self.hosts, self.mode, self.p = hosts, mode, prefix
        self.nets: dict[int, str] = {VNI: cidr24, **(more_networks or {})}   # VNI -> first three octets of its /24
        self.vms: dict[str, KVm] = {}
        self.routers = False
        self.ul_ns, self.ul_br, self.eth = f"{prefix}-ul", f"{prefix}ul0", f"{prefix}eth0"

    def br(self, vni: int = VNI) -> str:
        return f"{self.p}br{vni}"

    def vx(self, vni: int = VNI) -> str:
        return f"{self.p}vx{vni}"

    def host_ns(self, i: int) -> str:
        return f"{self.p}-h{i}"

    def vm_ns(self, name: str) -> str:
        return f"{self.p}-v-{name}"

    def tap(self, name: str) -> str:
        t = f"{self.p}t-{name}"
        if len(t) > 15:
            raise ValueError(f"VM name {name!r} too long for {t!r}")
        return t

    @staticmethod
    def vtep(i: int) -> str:
        return f"198.51.100.{i}"

    # -- build --------------------------------------------------------------------------------
    def build(self) -> KernelLab:
        self.teardown()
        sh(["ip", "netns", "add", self.ul_ns])
        quiet_ns(self.ul_ns)
        batch("ip", self.ul_ns, ["link set lo up", f"link add {self.ul_br} type bridge mcast_snooping 0",
                                 f"link set {self.ul_br} up"])
        macs: dict[int, str] = {}
        for i in range(1, self.hosts + 1):
            ns = self.host_ns(i)
            sh(["ip", "netns", "add", ns])
            quiet_ns(ns)
            batch("ip", self.ul_ns, [f"link add {self.p}ul-h{i} type veth peer name {self.eth} netns {ns}",
                                     f"link set {self.p}ul-h{i} master {self.ul_br} up"])
            batch("ip", ns, ["link set lo up", f"addr add {self.vtep(i)}/24 dev {self.eth}", f"link set {self.eth} up"])
            macs[i] = sh(["ip", "-n", ns, "-o", "link", "show", self.eth]).stdout.split("link/ether", 1)[1].split()[0]
        for i in range(1, self.hosts + 1):
            ns = self.host_ns(i)
            # Permanent ARP between VTEPs, as the vxnet lab pins them (fabric ARP is not overlay traffic).
            lines = [f"neigh replace {self.vtep(j)} lladdr {macs[j]} dev {self.eth} nud permanent"
                     for j in range(1, self.hosts + 1) if j != i]
            learning = "" if self.mode == "flood" else " nolearning"
            for n, vni in enumerate(self.nets):
                br, vx = self.br(vni), self.vx(vni)
                lines += [f"link add {br} address 02:00:00:4b:{n:02x}:{i:02x} mtu {MTU} type bridge",
                          (f"link add {vx} mtu {MTU} type vxlan id {vni} local {self.vtep(i)} dstport 4789"
                          f"{learning} dev {self.eth}"),
                          f"link set {vx} master {br}"]
            batch("ip", ns, lines)
            lines = []
            for vni in self.nets:
                if self.mode == "static":
                    batch("bridge", ns, [f"link set dev {self.vx(vni)} neigh_suppress on learning off"])
                else:
                    batch("bridge", ns, [f"fdb append 00:00:00:00:00:00 dev {self.vx(vni)} dst {self.vtep(j)}"
                                         for j in range(1, self.hosts + 1) if j != i])
                batch("ip", ns, [f"link set {self.vx(vni)} up", f"link set {self.br(vni)} up"])
        return self

    def add_vm(self, name: str, host: int, last_octet: int, vni: int = VNI) -> KVm:
        """A VM namespace on `host` (its tap in the network's bridge), published everywhere in
        static mode; its default route is the network's .1 (the routers' anycast address)."""
        vm = KVm(name, host, f"{self.nets[vni]}.{last_octet}",
                 f"02:00:00:4c:{host:02x}:{last_octet + 0x80 * (vni != VNI):02x}", vni)
        ns, hns, tap = self.vm_ns(name), self.host_ns(host), self.tap(name)
        sh(["ip", "netns", "add", ns])
        quiet_ns(ns)
        self._plug(vm, hns, ns, tap)
        self.vms[name] = vm
        if self.mode == "static":
            self._publish(vm)
        return vm

    def _plug(self, vm: KVm, hns: str, ns: str, tap: str) -> None:
        sh(["ip", "-n", hns, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", ns])
        batch("ip", ns, ["link set lo up", f"link set eth0 address {vm.mac} mtu {MTU}", "link set eth0 up",
                         f"addr add {vm.ip}/24 dev eth0", f"route add default via {self.nets[vm.vni]}.1"])
        vm_nic_settings(ns)
        batch("ip", hns, [f"link set {tap} mtu {MTU} master {self.br(vm.vni)} up"])
        if self.mode == "static":
            batch("bridge", hns, [f"fdb replace {vm.mac} dev {tap} master static"])

    def _publish(self, vm: KVm) -> None:
        for j in range(1, self.hosts + 1):
            if j != vm.host:
                vx = self.vx(vm.vni)
                batch("bridge", self.host_ns(j), [f"fdb replace {vm.mac} dev {vx} self dst {self.vtep(vm.host)}",
                                                  f"fdb replace {vm.mac} dev {vx} master static"])
            batch("ip", self.host_ns(j), [f"neigh replace {vm.ip} lladdr {vm.mac} dev {self.br(vm.vni)} nud permanent"])

    def add_routers(self) -> None:
        """KERNEL-NOTES §4: a router namespace `<p>-r<i>` on every host with a leg on every
        network (veth `<p>g<vni>` in the bridge / `<p>q<vni>` in the router), the same MAC and
        the network's .1 on every host (anycast gateway); the leg MAC `master static sticky` on
        the leg port and a permanent neighbour entry for .1 on the bridge. No NAT, no filtering
        in the router (each sees one direction of a flow)."""
        for i in range(1, self.hosts + 1):
            rns, hns = f"{self.p}-r{i}", self.host_ns(i)
            sh(["ip", "netns", "add", rns])
            quiet_ns(rns)
            nsx(rns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            host_lines, r_lines, br_lines = [], ["link set lo up"], []
            for n, (vni, c24) in enumerate(self.nets.items()):
                mac = f"02:00:00:00:ff:{n:02x}"
                host_lines += [f"link add {self.p}g{vni} type veth peer name {self.p}q{vni} netns {rns}",
                               f"link set {self.p}g{vni} mtu {MTU} master {self.br(vni)} up",
                               f"neigh replace {c24}.1 lladdr {mac} dev {self.br(vni)} nud permanent"]
                r_lines += [f"link set {self.p}q{vni} address {mac} mtu {MTU} up", f"addr add {c24}.1/24 dev {self.p}q{vni}"]
                br_lines += [f"fdb replace {mac} dev {self.p}g{vni} master static sticky"]
            batch("ip", hns, host_lines)
            batch("ip", rns, r_lines)
            batch("bridge", hns, br_lines)
        self.routers = True

    def apply_firewall(self) -> None:
        """Port security + a stateful security group on every host, written by hand after
        KERNEL-NOTES §6 with the semantics of vxnet's default group: per-port anti-spoofing in a
        bridge table (MAC, ARP sender, IPv4 source; other ethertypes dropped) that marks the
        port's traffic; in an inet table via br_netfilter, a conntrack zone per network, egress
        `ct established,related` / `ct invalid drop` / IPv4 accepted, ingress the same with
        sources from the group's member set; everything else dropped. Rules for every VM on
        every host (so a migrated VM finds its rules already in place)."""
        vms = sorted(self.vms.values(), key=lambda v: v.name)
        text = firewall_recipe(self.p, [(v.name, self.tap(v.name), v.mac, v.ip) for v in vms],
                               [self.br(vni) for vni in self.nets])
        for i in range(1, self.hosts + 1):
            ns = self.host_ns(i)
            sh(["ip", "netns", "exec", ns, "nft", "-f", "-"],
               inp=f"table bridge {self.p}ps {{}}\ndelete table bridge {self.p}ps\n"
                   f"table inet {self.p}sg {{}}\ndelete table inet {self.p}sg\n" + text)

    def migrate_commands(self, name: str, new_host: int) -> tuple[list[list[str]], list[tuple[str, str]]]:
        """KERNEL-NOTES §10 for a static lab, split in (VM move commands, FDB rewrite batches):
        the move is what the lab's `move_vm` does; the rewrite is what an agent must push."""
        vm = self.vms[name]
        ns, tap = self.vm_ns(name), self.tap(name)
        old, new = self.host_ns(vm.host), self.host_ns(new_host)
        move = [["ip", "-n", old, "link", "del", tap],
                ["ip", "-n", new, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", ns],
                ["ip", "-n", ns, "-batch", "-", (f"link set eth0 address {vm.mac} mtu {MTU}\nlink set eth0 up\n"
                 f"addr add {vm.ip}/24 dev eth0\n")],
                ["ip", "-n", new, "link", "set", tap, "mtu", str(MTU), "master", self.br(vm.vni), "up"],
                ["ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tso", _ON, "gso", _ON, "gro", _ON]]
        vx = self.vx(vm.vni)
        rewrite = [(new, f"fdb del {vm.mac} dev {vx} self\nfdb replace {vm.mac} dev {tap} master static\n")]
        rewrite += [(self.host_ns(j), (f"fdb replace {vm.mac} dev {vx} self dst {self.vtep(new_host)}\n"
                                      f"fdb replace {vm.mac} dev {vx} master static\n"))
                    for j in range(1, self.hosts + 1) if j != new_host]
        return move, rewrite

    def migrate(self, name: str, new_host: int) -> tuple[float, float]:
        """Move VM `name` to `new_host` by hand; returns (move seconds, rewrite seconds)."""
        move, rewrite = self.migrate_commands(name, new_host)
        t0 = time.time()
        for cmd in move:
            if "-batch" in cmd:
                sh(cmd[:-1], inp=cmd[-1])
            else:
                sh(cmd, check=cmd[0] != "ip" or "del" not in cmd)
        t1 = time.time()
        for ns, text in rewrite:
            sh(["bridge", "-n", ns, "-batch", "-"], inp=text, check=False)
        self.vms[name].host = new_host
        return t1 - t0, time.time() - t1

    def teardown(self) -> None:
        """Kill what still runs in the lab's namespaces, delete them (VMs first)."""
        nss = namespaces(self.p)
        pids = [int(x) for ns in nss for x in sh(["ip", "netns", "pids", ns], check=False).stdout.split()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for ns in sorted(nss, key=lambda n: not n.startswith(f"{self.p}-v-")):
            sh(["ip", "netns", "del", ns], check=False)


# -- measuring tools ----------------------------------------------------------------------------


def firewall_recipe(prefix: str, vms: Sequence[tuple[str, str, str, str]], bridges: Sequence[str]) -> str:
    """KERNEL-NOTES §6 by hand (see KernelLab.apply_firewall) as one nft script: tables
    `<prefix>ps` (bridge) and `<prefix>sg` (inet) for `vms` = (chain suffix, tap, MAC, IPv4),
    every VM in one group; conntrack zone n+1 for the n-th of `bridges`."""
    members = ", ".join(ip for _, _, _, ip in vms)
    ps = [f"table bridge {prefix}ps {{", "  chain pre { type filter hook prerouting priority -200; policy accept;"]
    ps += [f'    iifname "{tap}" jump port_{name}' for name, tap, _, _ in vms]
    ps += ["  }", "  chain out { type filter hook forward priority -100; policy accept;"]
    ps += [f'    oifname "{tap}" meta mark set meta mark or 0x00010000' for _, tap, _, _ in vms]
    ps += ["  }"]
    for name, _, mac, ip in vms:
        ps += [f"  chain port_{name} {{", f"    ether saddr != {mac} counter drop",
               f"    ether type arp arp saddr ether != {mac} counter drop",
               f"    ether type arp arp saddr ip != {{ 0.0.0.0, {ip} }} counter drop", "    ether type arp accept",
               "    ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept", "    udp sport 67 counter drop",
               f"    ether type ip ip saddr != {ip} counter drop",
               "    ether type ip meta mark set meta mark or 0x00000001 accept", "    counter drop", "  }"]
    ps += ["}"]
    sg = [f"table inet {prefix}sg {{", f"  set members {{ type ipv4_addr; elements = {{ {members} }}; }}",
          "  chain zone { type filter hook prerouting priority raw; policy accept;",
          *(f'    iifname "{br}" ct zone set {n + 1}' for n, br in enumerate(bridges)), "  }",
          # Two base chains: an `accept` ends its base chain only, so same-host traffic
          # meets both the sender's egress and the receiver's ingress rules.
          "  chain fwd_eg { type filter hook forward priority 0; policy accept;",
          "    meta mark & 0x0000ffff == 0x00000001 jump egress", "  }",
          "  chain fwd_in { type filter hook forward priority 10; policy accept;",
          "    meta mark & 0xffff0000 == 0x00010000 jump ingress", "  }",
          "  chain egress {", "    ct state established,related accept", "    ct state invalid drop",
          "    meta nfproto ipv4 accept", "    drop", "  }",
          "  chain ingress {", "    ct state established,related accept", "    ct state invalid drop",
          "    ip saddr @members accept", "    drop", "  }",
          "}"]
    return "\n".join(ps + sg) + "\n"


def nic_settings(ns: str, dev: str) -> str:
    """`mtu M, tso/gso/gro on|off` of one device, read from the kernel (the GSO/MTU pitfall, §8)."""
    link = sh(["ip", "-n", ns, "-o", "link", "show", dev], check=False).stdout
    m = re.search(r"mtu (\d+)", link)
    k = sh(["ip", "netns", "exec", ns, "ethtool", "-k", dev], check=False).stdout

    def f(name: str) -> str:
        mm = re.search(rf"^{name}: (\w+)", k, re.MULTILINE)
        return mm.group(1) if mm else "?"
    return (f"mtu {m.group(1) if m else '?'}, tso {f('tcp-segmentation-offload')} gso "
            f"{f('generic-segmentation-offload')} gro {f('generic-receive-offload')} tx-csum {f('tx-checksumming')}")


def proc_stat_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat (busy = everything but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])
    return total - v[3] - v[4], total


def _kill(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait4(proc: subprocess.Popen[str], timeout: float) -> float | None:
    """Reap `proc` (waiting at most `timeout` s) and return its user + system CPU seconds from
    `wait4` (None when it had to be killed or was reaped elsewhere)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return ru.ru_utime + ru.ru_stime
        if time.monotonic() > deadline:
            _kill(proc)
            return None
        time.sleep(0.02)


def iperf3_run(src_ns: str, dst_ns: str, dst_ip: str, seconds: float, bind_ip: str | None = None,
               cpus: tuple[int, int] | None = None, rate: str = "") -> dict[str, object]:
    """One single-stream TCP iperf3 from `src_ns` to `dst_ip` (the server in `dst_ns` listens on
    `bind_ip`, default `dst_ip`): Gbit/s received, retransmits, and the CPU it took
    (bench.cpu_account). `cpus` = (client CPU, server CPU) pins both with taskset (same for
    every row, so every row's softirq work lands on the same CPUs); `rate` ("2G") caps the
    sender (iperf3 -b) so the CPU per byte is read at the same offered load whatever else runs."""
    from bench import cpu_account

    pin_c = ["taskset", "-c", str(cpus[0])] if cpus else []
    pin_s = ["taskset", "-c", str(cpus[1])] if cpus else []
    # `ip netns exec` and `taskset` exec (no fork): the Popen PID is iperf3's, so wait4 gives its rusage.
    srv = subprocess.Popen(["ip", "netns", "exec", dst_ns, *pin_s, "iperf3", "-s", "-1", "-B", bind_ip or dst_ip,
                            "-p", "5201"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 5
        while time.time() < deadline:
            if ":5201" in nsx(dst_ns, "ss", "-ltnH", "sport = :5201", check=False).stdout:
                break
            time.sleep(0.05)
        ksoft = cpu_account.ksoftirqd_pids()
        snap0, st0, t0 = cpu_account.take(ksoft), proc_stat_busy(), time.monotonic()
        cli = subprocess.Popen(["ip", "netns", "exec", src_ns, *pin_c, "iperf3", "-c", dst_ip, "-p", "5201", "-t",
                                str(seconds), "-J", *(["-b", rate] if rate else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killer = threading.Timer(seconds + 30, cli.kill)
        killer.start()
        try:
            stdout, stderr = cli.stdout.read(), cli.stderr.read()  # type: ignore[union-attr]
        finally:
            killer.cancel()
        cpu_cli = _wait4(cli, 5)
        cpu_srv = _wait4(srv, 3)
        st1, t1 = proc_stat_busy(), time.monotonic()
        snap1 = cpu_account.take(ksoft)
        try:
            j = json.loads(stdout)
        except ValueError:
            return {"error": (stderr or stdout).strip()[-200:] or f"exit {cli.returncode}"}
        if "error" in j:
            return {"error": str(j["error"])[:200]}
        end = j["end"]
        cpu = end.get("cpu_utilization_percent") or {}
        res: dict[str, object] = {
            "gbps": end["sum_received"]["bits_per_second"] / 1e9,
            "bytes": end["sum_received"]["bytes"],
            "retransmits": end["sum_sent"].get("retransmits"),
            # CPUs busy during the run: both iperf3 processes (their own rusage: the softirq work
            # done in their context, i.e. most of the veth/bridge/VXLAN path, is in it), and the
            # whole machine from /proc/stat (includes everything else running, other load too)
            "cpu_iperf": (cpu.get("host_total", 0.0) + cpu.get("remote_total", 0.0)) / 100,
            "cpu_machine": (st1[0] - st0[0]) / max(1e-9, (st1[1] - st0[1])) * (os.cpu_count() or 1),
            "wall": t1 - t0, "cpus": list(cpus) if cpus else None}
        if cpu_cli is not None and cpu_srv is not None:
            # CPU-seconds of the whole run: both processes' rusage + what ksoftirqd did meanwhile
            res["cpu_proc_s"] = cpu_cli + cpu_srv
            res |= cpu_account.account(snap0, snap1, os.sysconf("SC_CLK_TCK"))
        return res
    finally:
        _kill(srv)


def ping_run(src_ns: str, dst_ip: str, count: int = 200, interval: float = 0.01) -> dict[str, object]:
    """Warm-up (3 pings, not counted), then `ping -c count -i interval`: per-reply RTTs in ms."""
    nsx(src_ns, "ping", "-n", "-q", "-c", "3", "-i", "0.05", "-W", "1", dst_ip, check=False)
    r = nsx(src_ns, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", dst_ip, check=False,
            timeout=count * interval + 30)
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", r.stdout)]
    m = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
    sent = int(m.group(1)) if m else count
    return {"rtts": rtts, "lost": sent - len(rtts)}


class Capture:
    """tcpdump --immediate-mode on `dev` in `ns` (KERNEL-NOTES §1: without it the ring is lost on
    stop) writing a pcap; `frames` holds the raw frames after `stop()`."""

    def __init__(self, ns: str, dev: str) -> None:
        fd, self.path = tempfile.mkstemp(prefix="vxk-cap-", suffix=".pcap")
        os.close(fd)
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", dev, "--immediate-mode", "-n",
                                      "-U", "-s", "256", "-w", self.path], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        buf = b""
        deadline = time.time() + 5
        while b"listening on" not in buf and time.time() < deadline and self.proc.poll() is None:
            buf += self.proc.stderr.read1(4096) if self.proc.stderr else b""  # type: ignore[attr-defined]
        if b"listening on" not in buf:
            self.stop()
            raise RuntimeError(f"tcpdump did not start: {buf.decode(errors='replace')[-200:]}")
        self.frames: list[bytes] = []

    def stop(self) -> list[bytes]:
        time.sleep(0.2)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        finally:
            os.unlink(self.path)
        self.frames = read_pcap(data)
        return self.frames


def read_pcap(data: bytes) -> list[bytes]:
    """Frames of a classic pcap file (what `tcpdump -w` writes)."""
    if len(data) < 24:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    out, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack(endian + "IIII", data[off:off + 16])[2]
        out.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return out


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


KINDS = ("ARP", "broadcast", "multicast", "unknown-unicast flood", "VXLAN unicast", "other")


def classify(frames: list[bytes], mac_vtep: dict[str, str]) -> dict[str, int]:
    """Count underlay frames by kind.

    - ARP: an ARP frame on the underlay itself or inside a VXLAN packet (any destination).
    - broadcast: outer or inner destination ff:ff:ff:ff:ff:ff (ARP requests are both ARP and
      broadcast); multicast likewise for other group addresses.
    - unknown-unicast flood: a VXLAN copy of an inner unicast frame sent to a VTEP that does not
      host the inner destination MAC (`mac_vtep`: VM MAC -> its host's VTEP IP), i.e. head-end
      replication of a frame whose destination was not known.
    - VXLAN unicast: an inner unicast frame sent to the VTEP that hosts its destination.
    """
    n = dict.fromkeys(KINDS, 0)
    n["frames"] = len(frames)
    n["IGMP"] = 0             # of the multicast ones: IGMP reports inside VXLAN
    for fr in frames:
        if len(fr) < 14:
            n["other"] += 1
            continue
        dst, etype = fr[0:6], struct.unpack("!H", fr[12:14])[0]
        if etype == 0x0806:
            n["ARP"] += 1
        if dst == b"\xff" * 6:
            n["broadcast"] += 1
            continue
        if dst[0] & 1:
            n["multicast"] += 1
            continue
        if etype != 0x0800 or len(fr) < 34:
            if etype != 0x0806:
                n["other"] += 1
            continue
        ihl = (fr[14] & 0x0F) * 4
        proto, outer_dst = fr[23], ".".join(str(x) for x in fr[30:34])
        udp = 14 + ihl
        if proto != 17 or len(fr) < udp + 8 + 8 + 14 or struct.unpack("!H", fr[udp + 2:udp + 4])[0] != 4789:
            n["other"] += 1
            continue
        inner = fr[udp + 16:]
        idst, itype = inner[0:6], struct.unpack("!H", inner[12:14])[0]
        if itype == 0x0806:
            n["ARP"] += 1
        if idst == b"\xff" * 6:
            n["broadcast"] += 1
        elif idst[0] & 1:
            n["multicast"] += 1
            n["IGMP"] += itype == 0x0800 and len(inner) > 23 and inner[23] == 2
        elif mac_vtep.get(_mac(idst)) != outer_dst:
            n["unknown-unicast flood"] += 1
        else:
            n["VXLAN unicast"] += 1
    return n
