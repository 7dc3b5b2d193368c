"""The demo's real VM: one QEMU guest per tenant (docs/guests.md) next to the namespace VMs.

Per tenant: a port `guest` on the `web` network (192.0.2.20, groups default + ssh-in, so the
namespace VMs and the outside's TCP 22 may reach it) with its own floating IP, booted by the lab
on a host other than web2's. Its matrix rows: its own DHCP client took the port's address and
it set its hostname from the metadata service (both from the guest's console), the guest pings web2 on another host (east-west, inside the guest), and the
outside reaches the guest's TCP service (busybox `nc`, answering `<tenant>/guest`) through the
floating IP.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from vxnet.demo import matrix, scenario
from vxnet.demo.matrix import Cell

NAME, IP = "guest", "192.0.2.20"
PLACEMENT = {"alice": "h3", "bob": "h1"}


def create_port(api: httpx.Client, t: scenario.Tenant, public_id: str) -> None:
    """The guest's port and floating IP (recorded in the tenant as `guest` and `guest-fip`)."""
    port = scenario.call(api, "POST", "/ports", {"port": {
        "name": NAME, "network_id": t.networks["web"], "security_groups": [t.groups["default"], t.groups["ssh-in"]],
        "fixed_ips": [{"subnet_id": t.subnets["web"], "ip_address": IP}]}})["port"]
    t.ports[NAME], t.ips[NAME], t.hosts[NAME] = port["id"], IP, PLACEMENT[t.user]
    fip = scenario.call(api, "POST", "/floatingips", {"floatingip": {
        "floating_network_id": public_id, "port_id": port["id"]}})["floatingip"]
    t.ips[NAME + "-fip"] = fip["floating_ip_address"]


def hostname(t: scenario.Tenant) -> str:
    return f"{t.user}-{NAME}"


def boot(t: scenario.Tenant) -> dict[str, Any]:
    """Boot the tenant's guest (the lab plays Nova, its metadata endpoint serves the hostname)
    and wait until the guest has its lease and has asked the metadata service."""
    from vxnet.lab import lab as L
    from vxnet.lab import qemu

    vm = L.vm_add(t.vm(NAME), t.hosts[NAME], t.ports[NAME], qemu=True, hostname=hostname(t))
    try:
        qemu.wait_console(vm["qemu"]["console"], "vxnet-guest: ready", 120)
    except qemu.GuestError as e:
        raise RuntimeError(f"{t.vm(NAME)}: {e}") from None
    rc, out = qemu.exec_(vm["qemu"]["ctl"], f"printf '#!/bin/sh\\necho {t.user}/{NAME}\\n' > /tmp/who; "
                         "chmod +x /tmp/who; nc -ll -p 22 -e /tmp/who > /dev/null 2>&1 &")
    if rc != 0:
        raise RuntimeError(f"{t.vm(NAME)}: cannot start its service: {out!r}")
    return vm


def cells(t: scenario.Tenant, vm: dict[str, Any], outside_ns: str) -> list[Cell]:
    from vxnet.lab import qemu

    u, ctl = t.user, vm["qemu"]["ctl"]
    log = qemu.wait_console(vm["qemu"]["console"], "vxnet-guest: lease", 1)
    lease = re.search(r"vxnet-guest: lease (\S+) router (\S+) mtu (\S+)", log)
    named = re.search(r"vxnet-guest: hostname (\S+) from metadata", log)
    dhcp = Cell(u, f"QEMU guest DHCP + metadata: its own udhcpc on {t.hosts[NAME]} ({vm['qemu']['accel']}), "
                   "hostname from 169.254.169.254", "open")
    if lease:
        dhcp.got = "open"
        dhcp.evidence = (f"{lease.group(1)} router {lease.group(2)} mtu {lease.group(3)}, hostname "
                         f"{named.group(1) if named else '(none)'}")
        if lease.group(1) != f"{IP}/26" or lease.group(2) != scenario.WEB_GW or not named \
                or named.group(1) != hostname(t):
            dhcp.evidence = f"WRONG: {dhcp.evidence}; expected {IP}/26 router {scenario.WEB_GW} {hostname(t)}"
    else:
        dhcp.got, dhcp.evidence = "blocked", "no lease on the guest's console"
    ew = Cell(u, f"east-west  guest -> web2 {t.ips['web2']} ping ({t.hosts[NAME]} -> {t.hosts['web2']}, "
                 "inside the QEMU guest)", "open", trace=(t.ports[NAME], t.ips["web2"], "icmp", None))
    rc, out = qemu.exec_(ctl, f"ping -c 3 -W 2 {t.ips['web2']}", timeout=60)
    m = re.search(r"= [\d.]+/([\d.]+)/", out.decode(errors="replace"))
    ew.got = "open" if rc == 0 else "blocked"
    ew.evidence = f"ping rtt {m.group(1)} ms" if rc == 0 and m else f"no echo reply ({out[-80:]!r})"
    fip = t.ips[NAME + "-fip"]
    fl = matrix.probe_tcp(Cell(u, f"floating   outside -> {fip}:22 (the QEMU guest)", "open",
                               trace=(scenario.OUTSIDE_CLIENT, fip, "tcp", 22)), outside_ns, fip, 22, want_who=f"{u}/{NAME}")
    return [dhcp, ew, fl]
