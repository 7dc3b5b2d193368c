"""Typed logical resources as the agent's compute layer reads them (frozen, hashable).

Contract: `parse(kind, obj)` turns one object of the host view stream (the Neutron admin
representation, a JSON dict) into its typed form, once, when the object arrives. Every default
and every "missing, null or empty" case is settled here, so compute code reads plain fields
and never branches on `.get(x) or {}`. Only what some compute function (or the agent's status
reporting) reads is kept; everything else (names, descriptions, tags, timestamps) is dropped,
so a view costs less memory than the dicts it came from.

Invariants: objects are immutable and compare by value; MAC addresses are lower case; an
absent `binding:host_id`, `device_owner` or `device_id` is ""; addresses are kept as the API
gave them (compute code validates them where it needs a family).

IPv6 (Neutron's field names): `Subnet.ipv6_ra_mode` / `ipv6_address_mode` are None or
`slaac` / `dhcpv6-stateful` / `dhcpv6-stateless`; `Subnet.is_auto_address` says whether ports
form their addresses by SLAAC (EUI-64, services/ipv6.py); `Port.ipv6` holds the IPv6 fixed IPs
as `Port.ipv4` the IPv4 ones; security-group `Rule.ethertype` is `IPv4` or `IPv6`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

DEFAULT_MTU = 1450
# The API accepts a network MTU below 68 (such a network has no IPv4 subnet); the kernel
# refuses bridge, VXLAN and veth MTUs below 68 (ETH_MIN_MTU), so links never get less.
LINK_MIN_MTU = 68
INFRA_OWNER_PREFIX = "network:"
SUBPORT_OWNER = "trunk:subport"


def ip_version(addr: str) -> int:
    """4 or 6 for a valid IP address (as `ipaddress.ip_address` reads it), else 0. A dotted
    quad, nearly every fixed IP, is checked by the C library's `inet_pton` (the same rules:
    four decimal octets up to 255, no leading zeros), ~15 times faster than `ipaddress`; an
    agent's cold start parses every fixed IP of its view."""
    try:
        socket.inet_pton(socket.AF_INET, addr)
        return 4
    except (OSError, TypeError, ValueError):
        pass
    try:
        return ipaddress.ip_address(addr).version
    except ValueError:
        return 0


AUTO_ADDRESS_MODES = ("slaac", "dhcpv6-stateless")  # the same as services/ipv6.py (no import upward)


@dataclasses.dataclass(frozen=True, slots=True)
class Host:
    """A host known to the view (its VTEP)."""

    name: str
    underlay_ip: str
    gateway: bool = False      # its agent runs the gateway feature


@dataclasses.dataclass(frozen=True, slots=True)
class Network:
    id: str
    network_type: str = "vxlan"
    segmentation_id: int | None = None
    mtu: int = DEFAULT_MTU
    external: bool = False                 # router:external
    physical_network: str | None = None
    qos_policy_id: str = ""
    ipv4_address_scope: str | None = None  # the address scope of its IPv4 subnets (their pool's)
    ipv6_address_scope: str | None = None  # the same for its IPv6 subnets

    @property
    def is_vxlan(self) -> bool:
        """An overlay network this agent builds a bridge and a VXLAN device for."""
        return self.network_type == "vxlan" and self.segmentation_id is not None

    @property
    def is_flat_external(self) -> bool:
        return self.external and self.network_type == "flat"


@dataclasses.dataclass(frozen=True, slots=True)
class HostRoute:
    destination: str
    nexthop: str


@dataclasses.dataclass(frozen=True, slots=True)
class Subnet:
    id: str
    network_id: str
    cidr: str
    ip_version: int = 4
    gateway_ip: str | None = None
    enable_dhcp: bool = True
    dns_nameservers: tuple[str, ...] = ()
    host_routes: tuple[HostRoute, ...] = ()
    ipv6_ra_mode: str | None = None         # who advertises: slaac | dhcpv6-stateful | dhcpv6-stateless
    ipv6_address_mode: str | None = None    # how hosts get addresses (same values); None: no mode
    allocation_pools: tuple[tuple[str, str], ...] = ()   # (start, end)

    @property
    def is_auto_address(self) -> bool:
        """Addresses by SLAAC (EUI-64): either mode is slaac or dhcpv6-stateless (Neutron's
        ipv6_utils.is_auto_address_subnet)."""
        return self.ipv6_address_mode in AUTO_ADDRESS_MODES or self.ipv6_ra_mode in AUTO_ADDRESS_MODES


@dataclasses.dataclass(frozen=True, slots=True)
class FixedIp:
    subnet_id: str
    ip_address: str


@dataclasses.dataclass(frozen=True, slots=True)
class AddressPair:
    ip_address: str
    mac_address: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Port:
    id: str
    network_id: str
    mac: str = ""
    host: str = ""                          # binding:host_id
    admin_up: bool = True
    device_owner: str = ""
    device_id: str = ""
    fixed_ips: tuple[FixedIp, ...] = ()
    allowed_address_pairs: tuple[AddressPair, ...] = ()
    security_groups: tuple[str, ...] = ()
    port_security: bool = True
    dns_name: str = ""
    status: str | None = None               # only in the view of the port's own host (server side)
    revision: int | None = None
    qos_policy_id: str = ""
    subports: tuple[tuple[str, int], ...] = ()   # a trunk parent's (subport id, VLAN id), from trunk_details
    project_id: str = ""                    # the metadata proxy's X-Tenant-ID
    standby: tuple[str, ...] = ()           # gateway/snat ports: standby gateway hosts (binding:vif_details)
    ipv4: tuple[FixedIp, ...] = dataclasses.field(init=False, compare=False, repr=False)  # IPv4 fixed IPs
    ipv6: tuple[FixedIp, ...] = dataclasses.field(init=False, compare=False, repr=False)  # IPv6 fixed IPs

    def __post_init__(self) -> None:
        # Derived once (every compute function reads it; parsing addresses is not cheap).
        versions = [ip_version(f.ip_address) for f in self.fixed_ips]   # one parse per address
        object.__setattr__(self, "ipv4", tuple(f for f, v in zip(self.fixed_ips, versions, strict=True) if v == 4))
        object.__setattr__(self, "ipv6", tuple(f for f, v in zip(self.fixed_ips, versions, strict=True) if v == 6))

    @property
    def is_infra(self) -> bool:
        """Router interfaces, SNAT and gateway ports, DHCP...: not a VM."""
        return self.device_owner.startswith(INFRA_OWNER_PREFIX)

    @property
    def is_subport(self) -> bool:
        """A trunk's subport: carried on its parent's device, not on a tap of its own."""
        return self.device_owner == SUBPORT_OWNER


@dataclasses.dataclass(frozen=True, slots=True)
class Router:
    id: str
    admin_up: bool = True
    routes: tuple[HostRoute, ...] = ()
    enable_snat: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class SecurityGroup:
    id: str
    stateful: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """A security-group rule (Neutron's fields; `remote_ip_prefix` already normalised when the
    server sent `normalized_cidr`)."""

    id: str
    security_group_id: str
    direction: str
    ethertype: str = "IPv4"
    protocol: str | int | None = None
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str | None = None
    remote_group_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class QosRule:
    """One rule of a QoS policy (Neutron's fields; `direction` from the VM's side)."""

    type: str                      # bandwidth_limit | dscp_marking | minimum_bandwidth
    direction: str = "egress"
    max_kbps: int = 0
    max_burst_kbps: int = 0
    dscp_mark: int = 0
    min_kbps: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class QosPolicy:
    id: str
    rules: tuple[QosRule, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class FloatingIP:
    id: str
    floating_ip_address: str = ""
    fixed_ip_address: str = ""
    router_id: str = ""
    port_id: str = ""
    status: str | None = None               # reported by the gateway host that serves it
    revision: int | None = None



def _routes(items: Any) -> tuple[HostRoute, ...]:
    out = []
    for r in items or ():
        if isinstance(r, Mapping) and r.get("destination") and r.get("nexthop"):
            out.append(HostRoute(str(r["destination"]), str(r["nexthop"])))
    return tuple(out)


def _shared(s: Any) -> str:
    """One copy of a string many ports repeat (network, subnet, group, project ids, host names):
    a JSON decoder makes a new string for every occurrence, ~80 bytes each (10,000 ports hold
    ~10 such fields)."""
    return sys.intern(s) if type(s) is str else str(s or "")


def _port(o: Mapping[str, Any]) -> Port:
    rev = o.get("revision_number")
    return Port(
        id=o["id"], network_id=_shared(o.get("network_id") or ""), mac=(o.get("mac_address") or "").lower(),
        host=_shared(o.get("binding:host_id") or ""), admin_up=o.get("admin_state_up", True) is not False,
        device_owner=_shared(o.get("device_owner") or ""), device_id=_shared(o.get("device_id") or ""),
        fixed_ips=tuple(FixedIp(_shared(f.get("subnet_id") or ""), str(f.get("ip_address") or ""))
                        for f in o.get("fixed_ips") or ()),
        allowed_address_pairs=tuple(AddressPair(str(p.get("ip_address") or ""),
                                                (p.get("mac_address") or "").lower() or None)
                                    for p in o.get("allowed_address_pairs") or ()),
        security_groups=tuple(dict.fromkeys(_shared(g) for g in o.get("security_groups") or ())),
        port_security=o.get("port_security_enabled") is not False, dns_name=o.get("dns_name") or "",
        status=_shared(o["status"]) if o.get("status") else o.get("status"), revision=int(rev) if rev is not None else None,
        qos_policy_id=_shared(o.get("qos_policy_id") or ""), subports=_subports(o.get("trunk_details")),
        project_id=_shared(o.get("project_id") or o.get("tenant_id") or ""),
        standby=_standby(o.get("binding:vif_details")))


def _is_map(x: Any) -> bool:
    """isinstance(x, Mapping), a plain dict (every decoded object) or None without the ABC's check."""
    return type(x) is dict or (x is not None and isinstance(x, Mapping))


def _standby(details: Any) -> tuple[str, ...]:
    if not _is_map(details):
        return ()
    hosts = details.get("ha_standby_hosts")
    return tuple(str(h) for h in hosts if h) if isinstance(hosts, list) else ()


def _subports(details: Any) -> tuple[tuple[str, int], ...]:
    if not _is_map(details):
        return ()
    out = []
    for s in details.get("sub_ports") or ():
        if isinstance(s, Mapping) and s.get("port_id") and s.get("segmentation_type", "vlan") == "vlan":
            vid = _int(s.get("segmentation_id"))
            if 1 <= vid <= 4094:
                out.append((str(s["port_id"]), vid))
    return tuple(sorted(out))


def _network(o: Mapping[str, Any]) -> Network:
    seg = o.get("provider:segmentation_id")
    return Network(o["id"], o.get("provider:network_type") or "vxlan", int(seg) if seg is not None else None,
                   max(LINK_MIN_MTU, int(o.get("mtu") or DEFAULT_MTU)), bool(o.get("router:external")),
                   o.get("provider:physical_network"), o.get("qos_policy_id") or "",
                   o.get("ipv4_address_scope") or None, o.get("ipv6_address_scope") or None)


def _subnet(o: Mapping[str, Any]) -> Subnet:
    return Subnet(o["id"], o.get("network_id") or "", o.get("cidr") or "", int(o.get("ip_version") or 4),
                  o.get("gateway_ip") or None, o.get("enable_dhcp", True) is not False,
                  tuple(str(d) for d in o.get("dns_nameservers") or ()), _routes(o.get("host_routes")),
                  o.get("ipv6_ra_mode") or None, o.get("ipv6_address_mode") or None,
                  tuple((str(p["start"]), str(p["end"])) for p in o.get("allocation_pools") or ()
                        if isinstance(p, Mapping) and p.get("start") and p.get("end")))


def _router(o: Mapping[str, Any]) -> Router:
    info = o.get("external_gateway_info") or {}
    return Router(o["id"], o.get("admin_state_up", True) is not False, _routes(o.get("routes")),
                  info.get("enable_snat", True) is not False)


def _rule(o: Mapping[str, Any]) -> Rule:
    return Rule(o["id"], o.get("security_group_id") or "", o.get("direction") or "", o.get("ethertype") or "IPv4",
                o.get("protocol"), o.get("port_range_min"), o.get("port_range_max"),
                o.get("normalized_cidr") or o.get("remote_ip_prefix") or None, o.get("remote_group_id") or None)


def _fip(o: Mapping[str, Any]) -> FloatingIP:
    rev = o.get("revision_number")
    return FloatingIP(o["id"], o.get("floating_ip_address") or "", o.get("fixed_ip_address") or "",
                      o.get("router_id") or "", o.get("port_id") or "", o.get("status"),
                      int(rev) if rev is not None else None)


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def _qos_policy(o: Mapping[str, Any]) -> QosPolicy:
    rules = tuple(QosRule(str(r.get("type") or ""), str(r.get("direction") or "egress"), _int(r.get("max_kbps")),
                          _int(r.get("max_burst_kbps")), _int(r.get("dscp_mark")), _int(r.get("min_kbps")))
                  for r in o.get("rules") or () if isinstance(r, Mapping))
    return QosPolicy(o["id"], rules)


# The fields each parser of a kind but ports reads: all a host is shown of such an object
# (services/host_view.py `host_form`; tests/unit/test_host_form.py checks that a parser reads
# an object cut to these as it reads the whole one). A parser that starts to read a field must
# list it here.
READ_FIELDS: dict[str, tuple[str, ...]] = {
    "networks": ("id", "provider:network_type", "provider:segmentation_id", "provider:physical_network", "mtu",
                 "router:external", "qos_policy_id", "ipv4_address_scope", "ipv6_address_scope"),
    "subnets": ("id", "network_id", "cidr", "ip_version", "gateway_ip", "enable_dhcp", "dns_nameservers",
                "host_routes", "ipv6_ra_mode", "ipv6_address_mode", "allocation_pools"),
    "routers": ("id", "admin_state_up", "routes", "external_gateway_info"),
    "security_groups": ("id", "stateful"),
    "security_group_rules": ("id", "security_group_id", "direction", "ethertype", "protocol", "port_range_min",
                             "port_range_max", "normalized_cidr", "remote_ip_prefix", "remote_group_id"),
    "floatingips": ("id", "floating_ip_address", "fixed_ip_address", "router_id", "port_id", "status",
                    "revision_number"),
    "qos_policies": ("id", "rules"),
}

PARSERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "networks": _network,
    "subnets": _subnet,
    "ports": _port,
    "routers": _router,
    "floatingips": _fip,
    "security_groups": lambda o: SecurityGroup(o["id"], o.get("stateful", True) is not False),
    "security_group_rules": _rule,
    "qos_policies": _qos_policy,
}


def parse(kind: str, key: str, obj: Any) -> Any:
    """One view object in its typed form (`key` is its id, or the host name for `hosts`);
    objects of an unknown kind, and already typed ones, are returned as they are."""
    if not _is_map(obj):
        return obj
    if kind == "hosts":
        return Host(key, str(obj.get("underlay_ip") or ""), bool(obj.get("gateway")))
    fn = PARSERS.get(kind)
    if fn is None:
        return obj
    return fn({"id": key, **obj} if "id" not in obj else obj)
