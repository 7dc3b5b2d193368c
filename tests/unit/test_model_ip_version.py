"""model.resources.ip_version: the family of an address exactly as `ipaddress` reads it (the
C library's check of dotted quads is a fast path only), and a port's IPv4/IPv6 split from it."""

from __future__ import annotations

import ipaddress

from vxnet.model.resources import FixedIp, Port, ip_version

CASES = ["192.0.2.1", "0.0.0.0", "255.255.255.255", "01.2.3.4", "192.0.2", "256.1.1.1", " 192.0.2.1",
         "192.0.2.1 ", "192.0.2.1\x00", "192.0.2.\u0664", "1e1.2.3.4", "0x1.2.3.4", "1..3.4", "192.0.2.1/24",
         "", "x", "::1", "2001:db8::1", "fe80::1%eth0", "::ffff:192.0.2.1", "::192.0.2.04", "2001:db8::g"]


def _reference(addr: str) -> int:
    try:
        return ipaddress.ip_address(addr).version
    except ValueError:
        return 0


def test_ip_version_reads_addresses_as_ipaddress_does() -> None:
    assert [ip_version(a) for a in CASES] == [_reference(a) for a in CASES]
    assert ip_version("192.0.2.1") == 4 and ip_version("2001:db8::1") == 6 and ip_version("01.2.3.4") == 0


def test_port_splits_its_fixed_ips_by_family() -> None:
    ips = tuple(FixedIp("s", a) for a in ("192.0.2.7", "2001:db8::7", "not-an-ip", "198.51.100.1"))
    port = Port("p", "n", fixed_ips=ips)
    assert [f.ip_address for f in port.ipv4] == ["192.0.2.7", "198.51.100.1"]
    assert [f.ip_address for f in port.ipv6] == ["2001:db8::7"]
