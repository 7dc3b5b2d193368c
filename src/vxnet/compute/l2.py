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


def _network_l2(nid: str, net: Mapping[str, Any], ports: list[tuple[str, Mapping[str, Any]]],
                hosts: Mapping[str, Mapping[str, Any]], host: str, underlay_ip: str) -> HostState:
    """The part of the host state that belongs to one network (`ports` sorted by id)."""
    mtu = int(net.get("mtu") or DEFAULT_MTU)
    br, vx = naming.bridge_name(nid), naming.vxlan_name(nid)
    plugs: set[Plug] = set()
    fdb: set[Fdb] = set()
    neighs: set[Neigh] = set()
    local: set[LocalPort] = set()
    seen_mac: set[str] = set()
    seen_ip: set[str] = set()
    for pid, port in ports:
        mac = (port.get("mac_address") or "").lower()
        if not mac or mac in seen_mac:
            continue
        seen_mac.add(mac)
        bound = port.get("binding:host_id") or ""
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
            if ip not in seen_ip:
                seen_ip.add(ip)
                neighs.add(Neigh(br, ip, mac))
    return HostState(frozenset({Bridge(br, naming.bridge_mac(nid, host), mtu)}),
                     frozenset({Vxlan(vx, int(net["provider:segmentation_id"]), underlay_ip, br, mtu,
                                      naming.VXLAN_PORT)}),
                     frozenset(plugs), frozenset(fdb), frozenset(neighs), frozenset(local))


def _ports_by_network(view: View) -> dict[str, list[tuple[str, Mapping[str, Any]]]]:
    networks = view.get("networks", {})
    out: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    ports = view.get("ports", {})
    for pid in sorted(ports):
        port = ports[pid]
        nid = port.get("network_id")
        if nid in networks:
            out.setdefault(nid, []).append((pid, port))
    return out


def merge(parts: list[HostState]) -> HostState:
    """The union of per-network states."""
    if not parts:
        return HostState()
    return HostState(*(frozenset().union(*(getattr(p, f) for p in parts))
                       for f in ("bridges", "vxlans", "plugs", "fdb", "neighs", "local_ports")))


def compute_l2(view: View, host: str, underlay_ip: str) -> HostState:
    """Desired L2 state of `host` given its view; pure (the reference `L2Cache` must equal)."""
    networks = view.get("networks", {})
    hosts = view.get("hosts", {})
    grouped = _ports_by_network(view)
    return merge([_network_l2(nid, net, grouped.get(nid, []), hosts, host, underlay_ip)
                  for nid, net in networks.items() if _is_vxlan(net)])


class L2Cache:
    """`compute_l2` recomputing only the networks whose inputs changed.

    A network's part is reused when its network object, its ports (same objects, same order)
    and the hosts table are the very same objects as last time: view updates replace the
    objects they change and keep the others (`compute.view`), so identity means "unchanged".
    The cache holds the input objects, so an id is never reused while cached. Reusing the
    same entry objects also makes the reconciler's set comparisons cheap (identity first).
    Result always equals `compute_l2(view, host, underlay_ip)` (tested).
    """

    def __init__(self, host: str, underlay_ip: str) -> None:
        self.host = host
        self.underlay_ip = underlay_ip
        self._parts: dict[str, tuple[tuple[object, ...], HostState]] = {}
        self.recomputed = 0      # networks recomputed by the last call (observability, tests)

    def compute(self, view: View) -> HostState:
        networks = view.get("networks", {})
        hosts = view.get("hosts", {})
        grouped = _ports_by_network(view)
        parts: dict[str, tuple[tuple[object, ...], HostState]] = {}
        self.recomputed = 0
        for nid, net in networks.items():
            if not _is_vxlan(net):
                continue
            ports = grouped.get(nid, [])
            inputs = (net, hosts, *[p for _, p in ports])
            cached = self._parts.get(nid)
            if cached is not None and len(cached[0]) == len(inputs) and all(
                    a is b for a, b in zip(cached[0], inputs, strict=True)):
                parts[nid] = cached
                continue
            self.recomputed += 1
            parts[nid] = (inputs, _network_l2(nid, net, ports, hosts, self.host, self.underlay_ip))
        self._parts = parts
        return merge([state for _, state in parts.values()])
