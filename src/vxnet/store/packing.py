"""Deflate with a preset dictionary, for JSON of the resources the API stores (the view hub's
replay logs, services/view_hub.py).

`deflate` compresses with a preset dictionary (`ZDICT`: the field names and typical values of
the resources the API stores, in the store's compact JSON form) and a 4 KiB window: an update
line of one port shrinks ~3.5x instead of ~1.8x with zlib's defaults, and starting from a copy
of a compressor primed with the dictionary is several times cheaper than a new one. `inflate`
gives back exactly the bytes given. The dictionary is memory-only (nothing deflated with it is
written to disk), so it may change between versions.
"""

from __future__ import annotations

import json
import zlib

_WBITS = -12       # raw deflate, 4 KiB window (the dictionary fits): a small, fast compressor
_MEMLEVEL = 4
_LEVEL = 6


def _zdict() -> bytes:
    """The preset dictionary: one JSON object of each resource the API stores most of, with typical
    values, in the store's compact form; the most common (a port) last, nearest the data."""
    uuid = "0123abcd-4567-89ef-0123-456789abcdef"
    project = "0123456789abcdef0123456789abcdef"
    stamp = "2026-01-01T00:00:00Z"
    common = {"project_id": project, "tenant_id": project, "tags": [], "created_at": stamp,
              "updated_at": stamp, "revision_number": 1}
    rule = {"id": uuid, "security_group_id": uuid, "direction": "ingress", "ethertype": "IPv4",
            "protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "0.0.0.0/0",
            "remote_group_id": None, "remote_address_group_id": None, "normalized_cidr": None, "description": "",
            "belongs_to_default_sg": False, **common}
    router = {"id": uuid, "name": "router", "description": "", "admin_state_up": True, "status": "ACTIVE",
              "external_gateway_info": {"network_id": uuid, "enable_snat": True,
                                        "external_fixed_ips": [{"subnet_id": uuid, "ip_address": "203.0.113.10"}]},
              "routes": [], "distributed": False, "ha": False, "flavor_id": None,
              "availability_zone_hints": [], "availability_zones": ["nova"], **common}
    fip = {"id": uuid, "floating_ip_address": "203.0.113.20", "floating_network_id": uuid, "router_id": uuid,
           "port_id": uuid, "fixed_ip_address": "100.64.0.3", "status": "ACTIVE", "description": "",
           "dns_domain": "", "dns_name": "", "port_forwardings": [], "qos_policy_id": None, **common}
    network = {"id": uuid, "name": "net", "description": "", "admin_state_up": True, "status": "ACTIVE",
               "subnets": [uuid], "shared": False, "router:external": False, "is_default": False, "mtu": 1450,
               "port_security_enabled": True, "availability_zone_hints": [], "availability_zones": ["nova"],
               "ipv4_address_scope": None, "ipv6_address_scope": None, "l2_adjacency": True,
               "provider:network_type": "vxlan", "provider:physical_network": None,
               "provider:segmentation_id": 1001, "qos_policy_id": None, **common, "_rbac": []}
    subnet = {"id": uuid, "name": "sub", "description": "", "network_id": uuid, "project_id": project,
              "tenant_id": project, "ip_version": 4, "cidr": "100.64.0.0/24", "gateway_ip": "100.64.0.1",
              "allocation_pools": [{"start": "100.64.0.2", "end": "100.64.0.254"}], "enable_dhcp": True,
              "dns_nameservers": [], "host_routes": [], "ipv6_ra_mode": None, "ipv6_address_mode": None,
              "subnetpool_id": None, "segment_id": None, "service_types": [], **common}
    port = {"id": uuid, "name": "port", "network_id": uuid, "project_id": project, "tenant_id": project,
            "mac_address": "fa:16:3e:00:00:01", "admin_state_up": True, "status": "ACTIVE",
            "device_id": uuid, "device_owner": "compute:nova",
            "fixed_ips": [{"subnet_id": uuid, "ip_address": "100.64.0.2"}],
            "allowed_address_pairs": [], "security_groups": [uuid], "port_security_enabled": True,
            "description": "", "binding:host_id": "host", "binding:vif_type": "tap",
            "binding:vif_details": {"port_filter": True, "connectivity": "l2"}, "binding:vnic_type": "normal",
            "binding:profile": {}, "qos_policy_id": None, "tags": [], "created_at": stamp, "updated_at": stamp,
            "revision_number": 1}
    others = ('"binding_failed","network:dhcp","network:router_interface","network:router_gateway",'
              '"network:floatingip","DOWN","BUILD","ERROR","egress","IPv6","udp","icmp","2001:db8::",'
              '"dhcpv6-stateful","slaac","extra_dhcp_opts":[],"dns_assignment":[],"trunk_details":')
    parts = [others] + [json.dumps(o, separators=(",", ":")) for o in (rule, router, fip, network, subnet, port)]
    return "".join(parts).encode()


ZDICT = _zdict()
_COMPRESSOR = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, _MEMLEVEL, zlib.Z_DEFAULT_STRATEGY, ZDICT)
_DECOMPRESSOR = zlib.decompressobj(_WBITS, ZDICT)


def deflate(data: bytes) -> bytes:
    """`data` deflated with the preset dictionary (for JSON of resources: the view hub's replay
    logs use it too)."""
    c = _COMPRESSOR.copy()   # primed with the dictionary: cheaper than a new compressor
    return c.compress(data) + c.flush()


def inflate(data: bytes) -> bytes:
    """What `deflate` was given."""
    d = _DECOMPRESSOR.copy()
    return d.decompress(data) + d.flush()

