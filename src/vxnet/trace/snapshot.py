"""The state a trace walks: every object (as the admin API shows it) and, per host, the view and
the desired data-plane state the agents compute from it — with the agents' own pure function
(`full_view` is the reference the server's view index is tested against; `compute_host` is the
one function every agent's passes compute, DHCP included). So a trace cannot drift from what the
agents program: it reads the same desired state.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

import httpx

from vxnet.compute.dhcp import DhcpState
from vxnet.compute.firewall import Firewall
from vxnet.compute.gateway import GatewayDesired
from vxnet.compute.host import HostDesired, HostSpec, compute_host
from vxnet.compute.routing import RoutingState
from vxnet.compute.state import HostState
from vxnet.httptls import verify_for
from vxnet.model import parse_view
from vxnet.services.host_view import full_view, host_entry

Obj = dict[str, Any]
COLLECTIONS = {"networks": "networks", "subnets": "subnets", "ports": "ports", "routers": "routers",
               "floatingips": "floatingips", "security_groups": "security-groups",
               "security_group_rules": "security-group-rules", "qos_policies": "qos/policies"}
RESPONSE_KEYS = {"qos_policies": "policies"}     # where the list body's key is not the collection


class Snapshot:
    """All objects plus the hosts table; per-host views and desired states computed on demand."""

    def __init__(self, objects: Mapping[str, Mapping[str, Obj]], hosts: Mapping[str, Obj]) -> None:
        self.objects = {k: dict(objects.get(k) or {}) for k in COLLECTIONS}
        self.hosts = dict(hosts)
        self._memo: dict[tuple[str, str], Any] = {}

    def _cached(self, kind: str, host: str, fn: Any) -> Any:
        key = (kind, host)
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    # -- per host (memoized: a snapshot never changes) -----------------------------------------
    def view(self, host: str) -> dict[str, Any]:
        return self._cached("view", host, lambda: full_view(self.objects, self.hosts, host))

    def underlay_ip(self, host: str) -> str:
        return str((self.hosts.get(host) or {}).get("underlay_ip") or "")

    def spec(self, host: str) -> HostSpec:
        """The host as its agent sees itself (the gateway role from its registration)."""
        entry = self.hosts.get(host) or {}
        return HostSpec(host, self.underlay_ip(host), gateway=bool(entry.get("gateway")))

    def desired(self, host: str) -> HostDesired:
        """What the agent of `host` applies: `compute_host` of its view, as in `Agent.run_once`."""
        return self._cached("desired", host, lambda: compute_host(parse_view(self.view(host)), self.spec(host)))

    def l2(self, host: str) -> HostState:
        """The L2 state the host's reconciler converges (every feature's L2 part included)."""
        return self.desired(host).l2

    def firewall(self, host: str) -> Firewall:
        return self.desired(host).firewall

    def routing(self, host: str) -> RoutingState:
        return self.desired(host).routing

    def gateway(self, host: str) -> GatewayDesired:
        return self.desired(host).gateway

    def dhcp(self, host: str) -> DhcpState:
        return self.desired(host).dhcp

    # -- lookups ---------------------------------------------------------------------------------
    def host_of_vtep(self, vtep: str) -> str | None:
        return next((h for h, e in self.hosts.items() if e.get("underlay_ip") == vtep), None)

    def port_by_mac(self, network_id: str, mac: str) -> tuple[str, Obj] | None:
        for pid, p in sorted(self.objects["ports"].items()):
            if p.get("network_id") == network_id and (p.get("mac_address") or "").lower() == mac.lower():
                return pid, p
        return None

    def subnet_of(self, network_id: str, ip: str) -> tuple[str, Obj] | None:
        """The subnet of the network holding `ip` (IPv4 or IPv6)."""
        addr = ipaddress.ip_address(ip)
        for sid, s in sorted(self.objects["subnets"].items()):
            if s.get("network_id") == network_id and _holds(s, addr):
                return sid, s
        return None

    def external_subnet_of(self, ip: str) -> tuple[str, Obj] | None:
        """(network id, subnet) of a `router:external` network whose subnet holds `ip`."""
        addr = ipaddress.ip_address(ip)
        for _, s in sorted(self.objects["subnets"].items()):
            net = self.objects["networks"].get(s.get("network_id", "")) or {}
            if net.get("router:external") and _holds(s, addr):
                return s["network_id"], s
        return None

    def name(self, coll: str, id_: str) -> str:
        o = self.objects[coll].get(id_) or {}
        return f"{o.get('name') or '-'} ({id_[:8]})"

    def describe_rule(self, rule_id: str) -> str:
        r = self.objects["security_group_rules"].get(rule_id)
        if r is None:
            return rule_id
        g = self.objects["security_groups"].get(r.get("security_group_id", "")) or {}
        proto = r.get("protocol") or "any protocol"
        lo, hi = r.get("port_range_min"), r.get("port_range_max")
        ports = "" if lo is None else f" port {lo}" if hi in (None, lo) else f" ports {lo}-{hi}"
        peer = r.get("remote_ip_prefix") or (f"members of {self.name('security_groups', r['remote_group_id'])}"
                                             if r.get("remote_group_id") else "anywhere")
        side = "from" if r.get("direction") == "ingress" else "to"
        return (f"rule {rule_id[:8]} of group {g.get('name') or '-'}: {r.get('direction')} {proto}{ports} "
                f"{side} {peer}")


def _holds(subnet: Obj, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        net = ipaddress.ip_network(subnet.get("cidr") or "", strict=False)
    except ValueError:
        return False
    return net.version == addr.version and addr in net


def _list_all(api: httpx.Client, path: str, key: str) -> list[Obj]:
    """Every object of a collection: the server caps pages (`max_page_size`), so follow the
    `next` links to the end."""
    r = api.get(path)
    r.raise_for_status()
    out = list(r.json()[key])
    while r.json()[key]:
        nxt = [link["href"] for link in r.json().get(f"{key}_links", []) if link.get("rel") == "next"]
        if not nxt:
            break
        r = api.get(nxt[0])
        r.raise_for_status()
        out += r.json()[key]
    return out


def fetch(url: str, token: str) -> Snapshot:
    """Every object through the admin API (what an operator's token can see)."""
    objects: dict[str, dict[str, Obj]] = {}
    with httpx.Client(base_url=url.rstrip("/") + "/v2.0", headers={"X-Auth-Token": token}, timeout=30,
                      verify=verify_for(url)) as api:
        for coll, path in COLLECTIONS.items():
            objects[coll] = {o["id"]: o for o in _list_all(api, f"/{path}", RESPONSE_KEYS.get(coll, coll))}
        hosts = {}
        for agent in _list_all(api, "/agents", "agents"):
            entry = host_entry(agent)
            if entry and entry.get("underlay_ip"):
                hosts[entry["host"]] = entry
    return Snapshot(objects, hosts)
