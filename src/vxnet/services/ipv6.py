"""IPv6 address modes and EUI-64 addresses, as Neutron defines them (pure functions).

Contract (neutron-lib constants, neutron/common/ipv6_utils.py):
- `ipv6_ra_mode` / `ipv6_address_mode` are None or one of MODES.
- A subnet is *auto-address* when either mode is `slaac` or `dhcpv6-stateless`: every port on
  its network but router interface ports gets the EUI-64 address computed from its MAC, and no
  port but a router interface may ask for an explicit address there.
- `eui64_address(prefix, mac)` is Neutron's `get_ipv6_addr_by_EUI64`: the prefix's first
  address plus the modified EUI-64 interface identifier (the MAC with ff:fe in the middle and
  the universal/local bit flipped).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

SLAAC = "slaac"
DHCPV6_STATEFUL = "dhcpv6-stateful"
DHCPV6_STATELESS = "dhcpv6-stateless"
MODES = (SLAAC, DHCPV6_STATEFUL, DHCPV6_STATELESS)
AUTO_ADDRESS_MODES = (SLAAC, DHCPV6_STATELESS)
IPV6_MIN_MTU = 1280


def is_auto_address_subnet(subnet: Mapping[str, Any]) -> bool:
    """Neutron's ipv6_utils.is_auto_address_subnet: addresses come from SLAAC (EUI-64)."""
    return (subnet.get("ipv6_address_mode") in AUTO_ADDRESS_MODES
            or subnet.get("ipv6_ra_mode") in AUTO_ADDRESS_MODES)


def mac_to_int(mac: str) -> int:
    """A MAC written as six hex octets with `:` or `-` separators (ValueError otherwise)."""
    parts = mac.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) for p in parts):
        raise ValueError(f"'{mac}' is not a valid MAC address")
    return int("".join(p.zfill(2) for p in parts), 16)


def eui64(mac: str) -> int:
    """The EUI-64 of `mac` (ff:fe inserted in the middle; the U/L bit is flipped by the caller)."""
    m = mac_to_int(mac)
    return ((m >> 24) << 40) | (0xFFFE << 24) | (m & 0xFFFFFF)


def eui64_address(prefix: str, mac: str) -> str:
    """Neutron's get_ipv6_addr_by_EUI64(prefix, mac) for a CIDR `prefix` (a bare address is a
    TypeError there, a ValueError here)."""
    if "/" not in prefix:
        raise ValueError(f"Bad prefix type for generating IPv6 address by EUI-64: {prefix}")
    net = ipaddress.ip_network(prefix, strict=False)
    if net.version != 6:
        raise ValueError(f"Bad prefix type for generating IPv6 address by EUI-64: {prefix}")
    # Neutron: prefix.first + eui64 ^ (1 << 57), i.e. (first + eui64) xor bit 57
    return str(ipaddress.IPv6Address(((int(net.network_address) + eui64(mac)) ^ (1 << 57)) & ((1 << 128) - 1)))
