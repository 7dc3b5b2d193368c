"""vxnet.services.ipv6: EUI-64 addresses and auto-address subnets, checked against Neutron's
definitions (oslo.utils' get_ipv6_addr_by_EUI64 is the function tempest compares with)."""

from __future__ import annotations

import random

import pytest
from oslo_utils import netutils

from vxnet.services import ipv6


def test_known_vectors() -> None:
    assert ipv6.eui64_address("2001:db8::/64", "00:16:3e:33:44:55") == "2001:db8::216:3eff:fe33:4455"
    assert ipv6.eui64_address("2001:db8:40::/64", "fa:16:3e:12:34:56") == "2001:db8:40:0:f816:3eff:fe12:3456"
    assert ipv6.eui64_address("2001:db8:1:2::/64", "02:00:00:00:00:01") == "2001:db8:1:2:0:ff:fe00:1"
    assert ipv6.eui64_address("2001:db8::/64", "FA-16-3E-00-00-01") == "2001:db8::f816:3eff:fe00:1"


def test_agrees_with_oslo_utils_on_random_macs() -> None:
    rng = random.Random(16)
    for _ in range(500):
        mac = ":".join(f"{rng.randrange(256):02x}" for _ in range(6))
        prefix = f"2001:db8:{rng.randrange(65536):x}:{rng.randrange(65536):x}::/64"
        assert ipv6.eui64_address(prefix, mac) == str(netutils.get_ipv6_addr_by_EUI64(prefix, mac)), (prefix, mac)


@pytest.mark.parametrize("prefix,mac", [("2001:db8::1", "fa:16:3e:00:00:01"), ("192.0.2.0/24", "fa:16:3e:00:00:01"),
                                        ("2001:db8::/64", "fa:16:3e:00:00"), ("2001:db8::/64", "zz:16:3e:00:00:01")])
def test_bad_input_is_a_value_error(prefix: str, mac: str) -> None:
    with pytest.raises(ValueError):
        ipv6.eui64_address(prefix, mac)


@pytest.mark.parametrize("ra,addr,auto", [
    (None, None, False), ("slaac", None, True), (None, "slaac", True), ("dhcpv6-stateless", None, True),
    (None, "dhcpv6-stateless", True), ("dhcpv6-stateful", "dhcpv6-stateful", False), (None, "dhcpv6-stateful", False),
])
def test_auto_address_subnet(ra: str | None, addr: str | None, auto: bool) -> None:
    assert ipv6.is_auto_address_subnet({"ipv6_ra_mode": ra, "ipv6_address_mode": addr}) is auto
