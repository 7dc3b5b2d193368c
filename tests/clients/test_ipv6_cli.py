"""The unmodified `openstack` CLI creating IPv6 subnets in each Neutron mode against a running
`vxnet server`: the modes round-trip, ports get their EUI-64 (SLAAC, DHCPv6 stateless) or pool
(DHCPv6 stateful) addresses, a router takes the v6 gateway, IPv6 rules are created, and a bad
mode pair is refused with Neutron's message. Every assertion reads the CLI's own output.
Addresses only from 2001:db8::/32.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.clients.conftest import Cloud
from vxnet.services.ipv6 import eui64_address

# name -> (ra mode, address mode, CIDR)
SUBNETS = {
    "v6-slaac": ("slaac", "slaac", "2001:db8:a1::/64"),
    "v6-stateless": ("dhcpv6-stateless", "dhcpv6-stateless", "2001:db8:a2::/64"),
    "v6-stateful": ("dhcpv6-stateful", "dhcpv6-stateful", "2001:db8:a3::/64"),
    "v6-addr-only": (None, "slaac", "2001:db8:a4::/64"),
}


def test_openstack_cli_ipv6_modes(vxnet_cloud: Cloud) -> None:
    cli = vxnet_cloud
    cli.openstack("demo", "network", "create", "v6net", "-f", "json")

    def create(name: str) -> dict[str, Any]:
        ra, addr, cidr = SUBNETS[name]
        args = ["subnet", "create", name, "--network", "v6net", "--ip-version", "6", "--subnet-range", cidr,
                "--ipv6-address-mode", addr]
        if ra:
            args += ["--ipv6-ra-mode", ra]
        return cli.openstack("demo", *args, "-f", "json").json()  # type: ignore[no-any-return]

    with ThreadPoolExecutor(2) as pool:
        made = dict(zip(SUBNETS, pool.map(create, SUBNETS), strict=True))
    for name, (ra, addr, cidr) in SUBNETS.items():
        s = made[name]
        assert (s["ip_version"], s["cidr"], s["ipv6_ra_mode"], s["ipv6_address_mode"]) == (6, cidr, ra, addr), s
        assert s["gateway_ip"] == cidr.replace("::/64", "::1")
    listed = cli.openstack("demo", "subnet", "list", "--ip-version", "6", "--network", "v6net", "-f", "json").json()
    assert {r["Name"] for r in listed} == set(SUBNETS)

    port = cli.openstack("demo", "port", "create", "vm6", "--network", "v6net", "-f", "json").json()
    got = {ip["subnet_id"]: ip["ip_address"] for ip in port["fixed_ips"]}
    by_name = {n: made[n]["id"] for n in SUBNETS}
    for name in ("v6-slaac", "v6-stateless", "v6-addr-only"):
        assert got[by_name[name]] == eui64_address(SUBNETS[name][2], port["mac_address"]), (name, got)
    assert got[by_name["v6-stateful"]] == "2001:db8:a3::2"

    rule = cli.openstack("demo", "security", "group", "rule", "create", "default", "--ingress", "--ethertype", "IPv6",
                         "--protocol", "ipv6-icmp", "--remote-ip", "2001:db8::/32", "-f", "json").json()
    assert (rule["ether_type"], rule["protocol"], rule["remote_ip_prefix"]) == ("IPv6", "ipv6-icmp", "2001:db8::/32")

    cli.openstack("demo", "router", "create", "r6", "-f", "json")
    cli.openstack("demo", "router", "add", "subnet", "r6", "v6-stateful")
    rows = cli.openstack("demo", "port", "list", "--router", "r6", "-f", "json").json()
    assert [r["Fixed IP Addresses"] for r in rows] == [[{"subnet_id": by_name["v6-stateful"],
                                                        "ip_address": "2001:db8:a3::1"}]]

    bad = cli.openstack("demo", "subnet", "create", "bad", "--network", "v6net", "--ip-version", "6",
                        "--subnet-range", "2001:db8:a5::/64", "--ipv6-ra-mode", "slaac",
                        "--ipv6-address-mode", "dhcpv6-stateful", check=False)
    assert bad.rc != 0 and "If both attributes are set, they must be the same value" in bad.stderr, bad
    bad = cli.openstack("demo", "subnet", "create", "bad", "--network", "v6net", "--ip-version", "6",
                        "--subnet-range", "2001:db8:a6::/80", "--ipv6-address-mode", "slaac", check=False)
    assert bad.rc != 0 and "requires the prefix to be /64" in bad.stderr, bad
