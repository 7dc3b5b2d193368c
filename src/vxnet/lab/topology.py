"""Lab topology: namespaces and veths, all named with the lab prefix, and their removal.

Layout (every name starts with `vxl`; `down()` finds everything by that prefix):
- `vxl-ul`: the "physical" network: bridge `vxlul0` (underlay, 198.51.100.0/24) and bridge
  `vxlmg0` (management, 100.127.255.0/24), kept apart so agent<->server traffic never shows in
  underlay captures.
- `vxl-h<i>`: host i; `vxleth0` = 198.51.100.<i> (its VTEP), `vxlmgmt0` = 100.127.255.<i>.
- root namespace: `vxlmgmt` = 100.127.255.254, the lab server's address for the hosts.
- `vxl-v-<name>`: a VM; its `eth0` is the peer of `tap<port id[:11]>` in its host's namespace.
- With an external network (`vxnet lab up --gateways G --external`): bridge `vxlexb0` in
  `vxl-ul` is the external L2 segment; each gateway host's `vxlext0` (no address: the agent
  enslaves it to the external network's bridge) and the outside namespace `vxl-x` (`vxlx0`:
  203.0.113.100/24, the client, and 203.0.113.1/24, the upstream router = the external
  subnet's gateway; IPv6: 2001:db8:ffff::100/64 and 2001:db8:ffff::1/64, the external IPv6
  subnet's gateway) are its ports. The outside reaches a tenant's IPv6 prefix only through a
  route the operator adds (`outside_route6`: prefix via the router's external IPv6 address).
- With a second one (`--external2`): segment 1 is the same with `vxlexb1`, `vxlext1` and the
  outside namespace `vxl-x2` (`vxlx0`: 100.127.254.100/24 and 100.127.254.1/24, IPv4 only); the
  gateway agents then map physical network `external` to `vxlext0` and `external2` to `vxlext1`.
IPv6 is off in every other lab namespace (clean captures) until a test or the demo turns it on
in a VM (`vm_ipv6`). VM NICs have guest-like offloads (TSO/GSO/GRO on, as virtio-net guests
have them), so throughput is measured as users run it; a test of MTU handling turns them off in
its VMs (`vm_offloads(name, False)`): GSO skbs skip the MTU checks on the veth/bridge path
(KERNEL-NOTES §8) and would hide an MTU mistake. The outside namespace keeps the veth defaults
(offloads on).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

PREFIX = "vxl"
UNDERLAY_NS = "vxl-ul"
UNDERLAY_BR = "vxlul0"
MGMT_BR = "vxlmg0"
ROOT_MGMT = "vxlmgmt"
HOST_UNDERLAY_DEV = "vxleth0"
HOST_MGMT_DEV = "vxlmgmt0"
MGMT_SERVER_IP = "100.127.255.254"
MAX_HOSTS = 200
EXTERNAL_BR = "vxlexb0"
HOST_EXTERNAL_DEV = "vxlext0"
EXTERNAL_NS = "vxl-x"
EXTERNAL_DEV = "vxlx0"
EXTERNAL_CLIENT_IP = "203.0.113.100"
EXTERNAL_GATEWAY_IP = "203.0.113.1"
EXTERNAL_PREFIX = 24
EXTERNAL_CLIENT_IP6 = "2001:db8:ffff::100"
EXTERNAL_GATEWAY_IP6 = "2001:db8:ffff::1"
EXTERNAL_CIDR6 = "2001:db8:ffff::/64"
# Segment i of `build_external`: (physical network, outside namespace, client IP, gateway IP).
SEGMENTS = (("external", EXTERNAL_NS, EXTERNAL_CLIENT_IP, EXTERNAL_GATEWAY_IP),
            ("external2", "vxl-x2", "100.127.254.100", "100.127.254.1"))


def external_dev(segment: int) -> str:
    """A gateway host's interface on external segment `segment`."""
    return f"vxlext{segment}"


def external_args(external: bool, external2: bool) -> list[str]:
    """The gateway agents' --external-interface options (the single legacy form for one segment)."""
    if not external:
        return []
    if not external2:
        return ["--external-interface", HOST_EXTERNAL_DEV]
    return [a for s, seg in enumerate(SEGMENTS) for a in ("--external-interface", f"{seg[0]}:{external_dev(s)}")]


def external_client_ns() -> str:
    """The outside namespace (client and upstream router of the external network)."""
    return EXTERNAL_NS


def host_ns(i: int) -> str:
    return f"vxl-h{i}"


def host_name(i: int) -> str:
    return f"h{i}"


def underlay_ip(i: int) -> str:
    return f"198.51.100.{i}"


def mgmt_ip(i: int) -> str:
    return f"100.127.255.{i}"


def vm_ns(name: str) -> str:
    return f"vxl-v-{name}"


def sh(cmd: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one command; raise with its stderr on failure."""
    r = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


def ip_batch(lines: Sequence[str], netns: str | None = None) -> None:
    """Many `ip` commands in one process."""
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    r = subprocess.run(cmd, input="\n".join(lines) + "\n", capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"ip -batch failed: {r.stderr.strip()}")


def _quiet_ns(ns: str) -> None:
    sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1"])


def build_underlay(hosts: int) -> None:
    """The underlay/management namespace, N hosts, and the root-namespace management veth."""
    if not 1 <= hosts <= MAX_HOSTS:
        raise ValueError(f"hosts must be 1..{MAX_HOSTS}")
    sh(["ip", "netns", "add", UNDERLAY_NS])
    _quiet_ns(UNDERLAY_NS)
    ip_batch([f"link add {UNDERLAY_BR} type bridge mcast_snooping 0", f"link set {UNDERLAY_BR} up",
              f"link add {MGMT_BR} type bridge mcast_snooping 0", f"link set {MGMT_BR} up", "link set lo up"], UNDERLAY_NS)
    ip_batch([f"link add {ROOT_MGMT} type veth peer name vxlmg-root netns {UNDERLAY_NS}",
              f"addr add {MGMT_SERVER_IP}/24 dev {ROOT_MGMT}", f"link set {ROOT_MGMT} up"])
    ip_batch(["link set vxlmg-root master vxlmg0 up"], UNDERLAY_NS)
    for i in range(1, hosts + 1):
        add_host(i)
    pin_underlay_neighbours(hosts)


def pin_underlay_neighbours(hosts: int) -> None:
    """Permanent ARP entries between the hosts' VTEP addresses, as a static fabric would have.

    Why: the lab's captures count ARP frames on the underlay; the hosts' own ARP for each
    other's VTEPs (and its unicast refresh probes) is fabric behaviour, not overlay behaviour.
    """
    macs = {}
    for i in range(1, hosts + 1):
        out = sh(["ip", "-n", host_ns(i), "-o", "link", "show", HOST_UNDERLAY_DEV]).stdout
        macs[i] = out.split("link/ether", 1)[1].split()[0]
    for i in range(1, hosts + 1):
        ip_batch([f"neigh replace {underlay_ip(j)} lladdr {macs[j]} dev {HOST_UNDERLAY_DEV} nud permanent"
                  for j in range(1, hosts + 1) if j != i], host_ns(i))


def add_host(i: int) -> None:
    """Host namespace i on the underlay and management bridges."""
    ns = host_ns(i)
    sh(["ip", "netns", "add", ns])
    _quiet_ns(ns)
    ip_batch([f"link add vxlul-h{i} type veth peer name {HOST_UNDERLAY_DEV} netns {ns}",
              f"link set vxlul-h{i} master {UNDERLAY_BR} up",
              f"link add vxlmg-h{i} type veth peer name {HOST_MGMT_DEV} netns {ns}",
              f"link set vxlmg-h{i} master {MGMT_BR} up"], UNDERLAY_NS)
    ip_batch(["link set lo up", f"addr add {underlay_ip(i)}/24 dev {HOST_UNDERLAY_DEV}",
              f"link set {HOST_UNDERLAY_DEV} up", f"addr add {mgmt_ip(i)}/24 dev {HOST_MGMT_DEV}",
              f"link set {HOST_MGMT_DEV} up"], ns)


def build_external(host_indexes: Sequence[int], segment: int = 0) -> None:
    """External segment `segment` (SEGMENTS): a bridge in the underlay namespace, each listed
    host's external interface and the outside client/upstream namespace on it (segment 0 with
    IPv6 too)."""
    _, ns, client, gateway = SEGMENTS[segment]
    br, s = f"vxlexb{segment}", "" if segment == 0 else str(segment)
    ip_batch([f"link add {br} type bridge mcast_snooping 0", f"link set {br} up"], UNDERLAY_NS)
    sh(["ip", "netns", "add", ns])
    _quiet_ns(ns)
    ip_batch([f"link add vxlx{s}-out type veth peer name {EXTERNAL_DEV} netns {ns}",
              f"link set vxlx{s}-out master {br} up"], UNDERLAY_NS)
    v6: list[str] = []
    if segment == 0:
        # IPv6 on the outside (no DAD: the addresses are ours; no RAs accepted: routes are static).
        sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0",
            "net.ipv6.conf.default.disable_ipv6=0", "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.default.accept_ra=0"])
        v6 = [f"addr add {EXTERNAL_CLIENT_IP6}/64 dev {EXTERNAL_DEV} nodad",
              # deprecated (preferred_lft 0): never chosen as a source address, still answered
              f"addr add {EXTERNAL_GATEWAY_IP6}/64 dev {EXTERNAL_DEV} nodad preferred_lft 0"]
    # The client's address first: it is the source the client uses on the external subnet.
    ip_batch(["link set lo up", f"addr add {client}/{EXTERNAL_PREFIX} dev {EXTERNAL_DEV}",
              f"addr add {gateway}/{EXTERNAL_PREFIX} dev {EXTERNAL_DEV}", *v6, f"link set {EXTERNAL_DEV} up"], ns)
    # Offloads stay on (veth defaults), like the VMs' (guest-like, docs/benchmarks.md).
    dev = external_dev(segment)
    for i in host_indexes:
        ip_batch([f"link add vxlx{s}-h{i} type veth peer name {dev} netns {host_ns(i)}",
                  f"link set vxlx{s}-h{i} master {br} up"], UNDERLAY_NS)
        ip_batch([f"link set {dev} up"], host_ns(i))


def vm_offloads(name: str, on: bool) -> None:
    """Turn TSO/GSO/GRO on or off on VM `name`'s eth0 (a veth: both are supported)."""
    set_offloads(vm_ns(name), "eth0", on)


def set_offloads(ns: str, dev: str, on: bool) -> None:
    """TSO/GSO/GRO of `dev` in `ns` on or off."""
    v = "on" if on else "off"
    sh(["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", v, "gso", v, "gro", v], check=False)


def add_vm(name: str, host_netns: str, tap: str, mac: str, cidr_ip: str | None, mtu: int,
           gateway: str | None = None, offloads: bool = True) -> None:
    """A VM namespace whose eth0 is the peer of `tap` in the host namespace (tap up, in no
    bridge: the agent plugs it); `offloads`: TSO/GSO/GRO on eth0 (on, like a virtio-net guest)."""
    ns = vm_ns(name)
    sh(["ip", "netns", "add", ns])
    _quiet_ns(ns)
    lines = ["link set lo up", f"link set eth0 address {mac} mtu {mtu}", "link set eth0 up"]
    if cidr_ip:
        lines.append(f"addr add {cidr_ip} dev eth0")
    if gateway:
        lines.append(f"route add default via {gateway}")
    # Create from the host side so the tap appears in the host namespace as Nova's would, and
    # up, as libvirt leaves it. Why up: carrier on a veth is activated asynchronously (linkwatch);
    # a tap first brought up by the agent's plug races the VM's first ARP, lost 1 time in ~50.
    sh(["ip", "-n", host_netns, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", ns])
    ip_batch(lines, ns)
    sh(["ip", "-n", host_netns, "link", "set", tap, "up"])
    set_offloads(ns, "eth0", offloads)


def vm_ipv6(name: str, cidr_ip: str, gateway: str | None = None) -> None:
    """Turn IPv6 on in VM `name` with a static address (no DAD) and, optionally, a default route."""
    ns = vm_ns(name)
    sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0",
        "net.ipv6.conf.default.disable_ipv6=0", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.eth0.accept_dad=0",
        "net.ipv6.conf.eth0.disable_ipv6=0"])
    lines = [f"addr replace {cidr_ip} dev eth0 nodad"]
    if gateway:
        lines.append(f"route replace ::/0 via {gateway} dev eth0")
    ip_batch(lines, ns)


def outside_route6(prefix: str, via: str) -> None:
    """The outside's route to a tenant IPv6 prefix (via a router's external IPv6 address)."""
    sh(["ip", "-n", EXTERNAL_NS, "-6", "route", "replace", prefix, "via", via, "dev", EXTERNAL_DEV])


def move_vm(name: str, old_host_netns: str, new_host_netns: str, tap: str, mac: str, cidr_ip: str | None,
            mtu: int, offloads: bool = True) -> None:
    """Live-migrate the VM's NIC: its tap disappears from the old host and appears on the new one."""
    ns = vm_ns(name)
    sh(["ip", "-n", old_host_netns, "link", "del", tap], check=False)
    sh(["ip", "-n", new_host_netns, "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", ns])
    lines = [f"link set eth0 address {mac} mtu {mtu}", "link set eth0 up"]
    if cidr_ip:
        lines.append(f"addr add {cidr_ip} dev eth0")
    ip_batch(lines, ns)
    sh(["ip", "-n", new_host_netns, "link", "set", tap, "up"])
    set_offloads(ns, "eth0", offloads)


def del_vm(name: str) -> None:
    sh(["ip", "netns", "del", vm_ns(name)], check=False)


def lab_namespaces() -> list[str]:
    """Every namespace the lab may have created (found by prefix, so also after a crash)."""
    r = sh(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.split() and line.split()[0].startswith("vxl-")]


def _kill_inside(namespaces: list[str]) -> None:
    """Stop processes still running inside lab namespaces (agents, pings, captures the lab or its
    tests started); without this, deleting a namespace leaves them running in a detached one."""
    import os
    import signal
    import time

    pids = [int(p) for ns in namespaces for p in sh(["ip", "netns", "pids", ns], check=False).stdout.split()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 2
        while time.time() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
            time.sleep(0.02)


def teardown() -> None:
    """Remove every lab namespace (and what still runs in it) and the root management link;
    safe to run any number of times."""
    _kill_inside(lab_namespaces())
    for ns in lab_namespaces():
        if ns.startswith("vxl-v-"):
            sh(["ip", "netns", "del", ns], check=False)
    for ns in lab_namespaces():
        sh(["ip", "netns", "del", ns], check=False)
    r = sh(["ip", "-o", "link", "show"], check=False)
    for line in r.stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(PREFIX):
                sh(["ip", "link", "del", name], check=False)
