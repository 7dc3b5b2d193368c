"""The Neutron API extensions vxnet advertises: only ones that really work end to end.

Tempest's `[network-feature-enabled] api_extensions` is generated from this list, so a
feature listed here is exercised by tempest's own tests in CI.

An extension that brings its own resource names the route it needs in `_NEEDS`; the server
lists it only when that route is registered (`served_extensions`), so a resource module that is
missing never leaves an extension advertised for it.
"""

from __future__ import annotations

from typing import Any

_UPDATED = "2025-01-01T00:00:00-00:00"

_ALIASES = {
    "address-scope": "Address scope",
    "agent": "agent",
    "allowed-address-pairs": "Allowed Address Pairs",
    "binding": "Port Binding",
    "default-subnetpools": "Default Subnetpools",
    "dvr": "Distributed Virtual Router",
    "ext-gw-mode": "Neutron L3 Configurable external gateway mode",
    "external-net": "Neutron external network",
    "extraroute": "Neutron Extra Route",
    "extraroute-atomic": "Atomically add/remove extra routes",
    "fip-port-details": "Floating IP Port Details Extension",
    "ip-substring-filtering": "IP address substring filtering",
    "net-mtu": "Network MTU",
    "network-ip-availability": "Network IP Availability",
    "pagination": "Pagination support",
    "port-security": "Port Security",
    "project-id": "project_id field enabled",
    "provider": "Provider Network",
    "qos": "Quality of Service",
    "qos-bw-limit-direction": "Direction for QoS bandwidth limit rule",
    "qos-default": "QoS default policy",
    "qos-rule-type-details": "Details of QoS rule types",
    "quota_details": "Quota details management support",
    "quotas": "Quota management support",
    "rbac-address-scope": "Add address_scope type to RBAC",
    "rbac-policies": "RBAC Policies",
    "rbac-security-groups": "Add security_group type to network RBAC",
    "rbac-subnetpool": "Add subnetpool type to RBAC",
    "revision-if-match": "If-Match constraints based on revision_number",
    "router": "Neutron L3 Router",
    "security-group": "security-group",
    "sorting": "Sorting support",
    "standard-attr-description": "standard-attr-description",
    "standard-attr-revisions": "Resource revision numbers",
    "standard-attr-tag": "Tag support for resources with standard attribute: subnet, trunk, network_segment_range, router, network, policy, subnetpool, port, security_group, floatingip",
    "standard-attr-timestamp": "Resource timestamps",
    "stateful-security-group": "Stateful security group",
    "subnet_allocation": "Subnet Allocation",
    "subnetpool-prefix-ops": "Subnet Pool Prefix Operations",
    "tag": "Tag support",
    "trunk": "Trunk Extension",
    "trunk-details": "Trunk port details",
}

# alias -> the route path the extension cannot work without
_NEEDS = {
    "address-scope": "/v2.0/address-scopes",
    "agent": "/v2.0/agents",
    "default-subnetpools": "/v2.0/subnetpools",
    "dvr": "/v2.0/routers",
    "ext-gw-mode": "/v2.0/routers",
    "extraroute": "/v2.0/routers",
    "extraroute-atomic": "/v2.0/routers/{router_id}/add_extraroutes",
    "fip-port-details": "/v2.0/floatingips",
    "network-ip-availability": "/v2.0/network-ip-availabilities",
    "qos": "/v2.0/qos/policies",
    "qos-bw-limit-direction": "/v2.0/qos/policies/{policy_id}/bandwidth_limit_rules",
    "qos-default": "/v2.0/qos/policies",
    "qos-rule-type-details": "/v2.0/qos/rule-types/{rule_type}",
    "quotas": "/v2.0/quotas",
    "rbac-address-scope": "/v2.0/address-scopes",
    "rbac-policies": "/v2.0/rbac-policies",
    "rbac-subnetpool": "/v2.0/subnetpools",
    "rbac-security-groups": "/v2.0/security-groups",
    "router": "/v2.0/routers",
    "trunk": "/v2.0/trunks",
    "trunk-details": "/v2.0/trunks",
    "security-group": "/v2.0/security-groups",
    "stateful-security-group": "/v2.0/security-groups",
    "subnet_allocation": "/v2.0/subnetpools",
    "subnetpool-prefix-ops": "/v2.0/subnetpools/{pool_id}/add_prefixes",
}

EXTENSIONS: list[dict[str, Any]] = [
    {"alias": a, "name": n, "description": n, "updated": _UPDATED, "links": []}
    for a, n in sorted(_ALIASES.items())
]

ALIASES: list[str] = sorted(_ALIASES)


def served_extensions(paths: set[str]) -> list[dict[str, Any]]:
    """The extensions whose needed route (if any) is among the registered route `paths`."""
    return [e for e in EXTENSIONS if e["alias"] not in _NEEDS or _NEEDS[e["alias"]] in paths]
