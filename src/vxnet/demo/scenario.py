"""The demo's cloud: two tenants build the same topology, with the same addresses, through the
public API (Keystone token + Neutron v2.0, as the `openstack` CLI would), on a lab of real hosts.

Per tenant (alice = tenant-a, bob = tenant-b), identical addresses:
- network `web` with subnet 192.0.2.0/26 (gateway .1) and network `db` with 100.64.10.0/24
  (gateway .1); router `edge` on both subnets with its external gateway on `public`;
- security group `ssh-in` (ingress TCP 22 from anywhere) on web1 only; every VM is also in the
  project's `default` group (all egress, ingress from the group's members);
- VMs web1 (192.0.2.11), web2 (192.0.2.12), db1 (100.64.10.13) on different hosts (each tenant
  places them differently), and a floating IP for web1.
- the dual-stack cell: an IPv6 subnet on `web` and one on `db` (static addressing), on the same
  router, and VMs ds1 (web, 192.0.2.14 + ::14) and ds2 (db, 100.64.10.15 + ::15) on different
  hosts. IPv6 is routed, never NATed, so each tenant has its own prefix (alice 2001:db8:a::/48,
  bob 2001:db8:b::/48): the outside routes each prefix to that tenant's router's external IPv6
  address. ds1 and ds2 keep port security and the default group (IPv6 source checks and
  the group's IPv6 rules apply; replies from the outside pass by conntrack).
The admin creates the external network `public` (flat, 203.0.113.0/24, gateway 203.0.113.1 =
the lab's outside router/client namespace; IPv6 2001:db8:ffff::/64, gateway 2001:db8:ffff::1).
The lab plays Nova: it creates each VM's namespace and tap, then binds the port to its host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import httpx

from vxnet.httptls import verify_for

EXTERNAL_CIDR = "203.0.113.0/24"
EXTERNAL_GATEWAY = "203.0.113.1"
EXTERNAL_POOL = ("203.0.113.10", "203.0.113.99")
OUTSIDE_CLIENT = "203.0.113.100"
WEB_CIDR, WEB_GW = "192.0.2.0/26", "192.0.2.1"
DB_CIDR, DB_GW = "100.64.10.0/24", "100.64.10.1"
EXTERNAL_CIDR6, EXTERNAL_GATEWAY6 = "2001:db8:ffff::/64", "2001:db8:ffff::1"
EXTERNAL_POOL6 = ("2001:db8:ffff::10", "2001:db8:ffff::99")
OUTSIDE_CLIENT6 = "2001:db8:ffff::100"
VMS = {"web1": ("web", "192.0.2.11"), "web2": ("web", "192.0.2.12"), "db1": ("db", "100.64.10.13"),
       "ds1": ("web", "192.0.2.14"), "ds2": ("db", "100.64.10.15")}
DUAL_STACK = ("ds1", "ds2")
PLACEMENT = {"alice": {"web1": "h1", "web2": "h2", "db1": "h3", "ds1": "h1", "ds2": "h2"},
             "bob": {"web1": "h2", "web2": "h3", "db1": "h1", "ds1": "h3", "ds2": "h1"}}
# Per tenant: its IPv6 prefix (routed from outside to its router) and one /64 per network.
V6_PREFIX = {"alice": "2001:db8:a::/48", "bob": "2001:db8:b::/48"}


def v6_subnet(user: str, net: str) -> str:
    """The tenant's IPv6 subnet of network `net` ("web" -> :1::/64, "db" -> :2::/64)."""
    base = V6_PREFIX[user].split("::")[0]
    return f"{base}:{1 if net == 'web' else 2}::/64"


def v6_address(user: str, vm: str) -> str:
    """A dual-stack VM's IPv6 address: its IPv4 address's last byte as the interface id."""
    net, ip4 = VMS[vm]
    return v6_subnet(user, net).replace("::/64", f"::{ip4.rsplit('.', 1)[1]}")
TENANTS = {"alice": ("alice-pw", "tenant-a"), "bob": ("bob-pw", "tenant-b")}


class DemoError(Exception):
    """The API refused something the demo needs (message names the call and the answer)."""


def login(url: str, user: str, password: str, project: str) -> httpx.Client:
    """A Neutron client for one user, authenticated with a Keystone v3 token."""
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
    r = httpx.post(url + "/identity/v3/auth/tokens", json=body, timeout=10, verify=verify_for(url))
    if r.status_code != 201:
        raise DemoError(f"login as {user}: {r.status_code} {r.text}")
    return httpx.Client(base_url=url + "/v2.0", headers={"X-Auth-Token": r.headers["X-Subject-Token"]}, timeout=30,
                        verify=verify_for(url))


def call(api: httpx.Client, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    r = api.request(method, path, json=body)
    if r.status_code >= 400:
        raise DemoError(f"{method} {path}: {r.status_code} {r.text}")
    return r.json() if r.content else {}


@dataclasses.dataclass
class Tenant:
    """What one tenant built (ids and addresses the matrix needs)."""

    user: str
    project_id: str = ""
    networks: dict[str, str] = dataclasses.field(default_factory=dict)
    subnets: dict[str, str] = dataclasses.field(default_factory=dict)
    router: str = ""
    gateway_ip: str = ""           # the router's external address (what the outside sees for SNAT)
    ports: dict[str, str] = dataclasses.field(default_factory=dict)
    ips: dict[str, str] = dataclasses.field(default_factory=dict)
    ips6: dict[str, str] = dataclasses.field(default_factory=dict)     # dual-stack VMs' IPv6 addresses
    subnets6: dict[str, str] = dataclasses.field(default_factory=dict)
    gateways6: dict[str, str] = dataclasses.field(default_factory=dict)   # dual-stack VM -> its IPv6 gateway
    gateway_ip6: str = ""          # the router's external IPv6 address (the outside's route to the prefix)
    hosts: dict[str, str] = dataclasses.field(default_factory=dict)
    fip: str = ""
    fip_id: str = ""
    groups: dict[str, str] = dataclasses.field(default_factory=dict)

    def vm(self, name: str) -> str:
        """The lab VM name of this tenant's VM."""
        return f"{self.user}-{name}"


def create_public(admin: httpx.Client) -> str:
    """The external network (admin only), or the existing one."""
    found = call(admin, "GET", "/networks?name=public")["networks"]
    if found:
        return str(found[0]["id"])
    net = call(admin, "POST", "/networks", {"network": {
        "name": "public", "router:external": True, "provider:network_type": "flat",
        "provider:physical_network": "external"}})["network"]
    call(admin, "POST", "/subnets", {"subnet": {
        "name": "public-v4", "network_id": net["id"], "ip_version": 4, "cidr": EXTERNAL_CIDR,
        "gateway_ip": EXTERNAL_GATEWAY, "enable_dhcp": False,
        "allocation_pools": [{"start": EXTERNAL_POOL[0], "end": EXTERNAL_POOL[1]}]}})
    call(admin, "POST", "/subnets", {"subnet": {
        "name": "public-v6", "network_id": net["id"], "ip_version": 6, "cidr": EXTERNAL_CIDR6,
        "gateway_ip": EXTERNAL_GATEWAY6, "enable_dhcp": False,
        "allocation_pools": [{"start": EXTERNAL_POOL6[0], "end": EXTERNAL_POOL6[1]}]}})
    return str(net["id"])


def build_tenant(api: httpx.Client, user: str, public_id: str,
                 progress: Callable[[str], None] = lambda _: None) -> Tenant:
    """Networks, subnets, router, security group and ports of one tenant (no VMs yet)."""
    t = Tenant(user)
    for name, cidr, gw in (("web", WEB_CIDR, WEB_GW), ("db", DB_CIDR, DB_GW)):
        net = call(api, "POST", "/networks", {"network": {"name": name}})["network"]
        t.networks[name] = net["id"]
        t.project_id = net["project_id"]
        sub = call(api, "POST", "/subnets", {"subnet": {
            "name": f"{name}-v4", "network_id": net["id"], "ip_version": 4, "cidr": cidr, "gateway_ip": gw,
            "dns_nameservers": ["203.0.113.53"]}})["subnet"]
        t.subnets[name] = sub["id"]
        sub6 = call(api, "POST", "/subnets", {"subnet": {
            "name": f"{name}-v6", "network_id": net["id"], "ip_version": 6, "cidr": v6_subnet(user, name),
            "enable_dhcp": False}})["subnet"]
        t.subnets6[name] = sub6["id"]
        for vm in DUAL_STACK:
            if VMS[vm][0] == name:
                t.gateways6[vm] = sub6["gateway_ip"]
        progress(f"{user}: network {name} {cidr} + {v6_subnet(user, name)}")
    # enable_snat is admin-only to set (Neutron policy); its default is on.
    rtr = call(api, "POST", "/routers", {"router": {
        "name": "edge", "external_gateway_info": {"network_id": public_id}}})["router"]
    t.router = rtr["id"]
    gw_ips = [f["ip_address"] for f in rtr["external_gateway_info"]["external_fixed_ips"]]
    t.gateway_ip = next(ip for ip in gw_ips if ":" not in ip)
    t.gateway_ip6 = next((ip for ip in gw_ips if ":" in ip), "")
    for name in ("web", "db"):
        for sid in (t.subnets[name], t.subnets6[name]):
            call(api, "PUT", f"/routers/{t.router}/add_router_interface", {"subnet_id": sid})
    progress(f"{user}: router edge (web, db -> public, SNAT as {t.gateway_ip}, IPv6 routed via {t.gateway_ip6})")
    default = call(api, "GET", f"/security-groups?name=default&project_id={t.project_id}")["security_groups"]
    t.groups["default"] = default[0]["id"] if default else ""
    sg = call(api, "POST", "/security-groups", {"security_group": {
        "name": "ssh-in", "description": "SSH-like TCP from anywhere"}})["security_group"]
    t.groups["ssh-in"] = sg["id"]
    call(api, "POST", "/security-group-rules", {"security_group_rule": {
        "security_group_id": sg["id"], "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
        "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "0.0.0.0/0"}})
    progress(f"{user}: security group ssh-in (tcp/22 from anywhere)")
    for vm, (net, ip) in VMS.items():
        groups = [g for g in (t.groups["default"], t.groups["ssh-in"] if vm == "web1" else "") if g]
        body: dict[str, Any] = {"name": vm, "network_id": t.networks[net], "security_groups": groups,
                                "fixed_ips": [{"subnet_id": t.subnets[net], "ip_address": ip}]}
        if vm in DUAL_STACK:
            t.ips6[vm] = v6_address(user, vm)
            body["fixed_ips"].append({"subnet_id": t.subnets6[net], "ip_address": t.ips6[vm]})
        port = call(api, "POST", "/ports", {"port": body})["port"]
        t.ports[vm], t.ips[vm], t.hosts[vm] = port["id"], ip, PLACEMENT[user][vm]
    fip = call(api, "POST", "/floatingips", {"floatingip": {
        "floating_network_id": public_id, "port_id": t.ports["web1"]}})["floatingip"]
    t.fip, t.fip_id = fip["floating_ip_address"], fip["id"]
    progress(f"{user}: ports web1 web2 db1, dual-stack ds1 ds2, floating IP {t.fip} -> web1")
    return t
