"""View of one host -> its desired L2 state (bridges, VXLAN devices, plugs, FDB, neighbours).

Contract: `compute_l2(view, host, underlay_ip)` is a pure function of its arguments. The view is
the agent's copy of the server's per-host view (`{"networks": {id: obj}, "ports": {...},
"hosts": {name: {"underlay_ip": ...}}, ...}`, objects as the Neutron admin representation).

Rules (KERNEL-NOTES §2-3):
- Every VXLAN network in the view gets a bridge (explicit MAC) and a VXLAN device (its VNI,
  local = this host's underlay IP, no learning, neigh_suppress on the VXLAN port), MTU = network MTU.
- A port bound to this host gets a plug (its tap on the network's bridge, network MTU) and a
  `master static` FDB entry for its MAC on that tap.
- A port bound to another host with a known underlay IP gets, on the VXLAN device, a `self`
  entry (MAC -> that host's VTEP) and a `master static` entry (so the bridge sends it to the
  VXLAN port, whose neigh_suppress then answers ARP for it).
- Every bound port (local or remote) gets a permanent neighbour entry per IPv4 fixed IP on the
  bridge (the suppression table). Unbound ports get nothing. IPv6 is not handled yet.
- A port with `admin_state_up: false` is on no network: no plug (its device is detached, so it
  is reported DOWN), and no FDB/neighbour entries anywhere.
- Ports whose MAC is claimed twice in one network (a misconfiguration) are programmed for the
  lowest port id only, so the output never depends on dict order.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from vxnet.compute import naming
from vxnet.compute.state import Bridge, Fdb, HostState, LocalPort, Neigh, Plug, Vxlan

View = Mapping[str, Mapping[str, Mapping[str, Any]]]

DEFAULT_MTU = 1450


def _is_vxlan(net: Mapping[str, Any]) -> bool:
    return (net.get("provider:network_type") or "vxlan") == "vxlan" and net.get("provider:segmentation_id") is not None


def _ipv4s(port: Mapping[str, Any]) -> list[str]:
    out = []
    for fip in port.get("fixed_ips") or ():
        try:
            addr = ipaddress.ip_address(fip.get("ip_address", ""))
        except ValueError:
            continue
        if addr.version == 4:
            out.append(str(addr))
    return out


def compute_l2(view: View, host: str, underlay_ip: str) -> HostState:
    """Desired L2 state of `host` given its view; pure."""
    networks = view.get("networks", {})
    hosts = view.get("hosts", {})
    bridges: set[Bridge] = set()
    vxlans: set[Vxlan] = set()
    plugs: set[Plug] = set()
    fdb: set[Fdb] = set()
    neighs: set[Neigh] = set()
    local: set[LocalPort] = set()

    present: dict[str, tuple[str, str, int]] = {}
    for nid, net in networks.items():
        if not _is_vxlan(net):
            continue
        mtu = int(net.get("mtu") or DEFAULT_MTU)
        br, vx = naming.bridge_name(nid), naming.vxlan_name(nid)
        present[nid] = (br, vx, mtu)
        bridges.add(Bridge(br, naming.bridge_mac(nid, host), mtu))
        vxlans.add(Vxlan(vx, int(net["provider:segmentation_id"]), underlay_ip, br, mtu, naming.VXLAN_PORT))

    seen_mac: set[tuple[str, str]] = set()
    seen_ip: set[tuple[str, str]] = set()
    for pid in sorted(view.get("ports", {})):
        port = view["ports"][pid]
        nid = port.get("network_id")
        mac = (port.get("mac_address") or "").lower()
        if nid not in present or not mac:
            continue
        br, vx, mtu = present[nid]
        bound = port.get("binding:host_id") or ""
        if (nid, mac) in seen_mac:
            continue
        seen_mac.add((nid, mac))
        admin_up = port.get("admin_state_up", True) is not False
        if bound == host:
            tap = naming.tap_name(pid)
            local.add(LocalPort(pid, tap, nid, br, mac))
            if not admin_up:
                continue          # known, reported DOWN, but not on the network
            plugs.add(Plug(tap, br, mtu))
            fdb.add(Fdb(tap, mac))
        elif bound and not admin_up:
            continue
        elif bound:
            vtep = (hosts.get(bound) or {}).get("underlay_ip")
            if not vtep or vtep == underlay_ip:
                continue
            fdb.add(Fdb(vx, mac, vtep))
            fdb.add(Fdb(vx, mac))
        else:
            continue
        for ip in _ipv4s(port):
            if (br, ip) in seen_ip:
                continue
            seen_ip.add((br, ip))
            neighs.add(Neigh(br, ip, mac))

    return HostState(frozenset(bridges), frozenset(vxlans), frozenset(plugs), frozenset(fdb),
                     frozenset(neighs), frozenset(local))
