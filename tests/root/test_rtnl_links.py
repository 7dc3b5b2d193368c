"""dataplane/rtnl_links.py against the real kernel: every request the L2 agent sends, applied in a
namespace of its own and read back with iproute2 (`ip -details -json`), plus the kernel's
refusals (EEXIST, ENODEV) as `RtnlError` and lookups by name and by address."""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.root.conftest import needs_root
from tests.root.helpers import nsexec
from vxnet.dataplane.rtnl import RtnlSocket
from vxnet.dataplane.rtnl_links import (
    RtnlError,
    RtnlLinks,
    del_link,
    new_bridge,
    new_vlan,
    new_vxlan,
    set_brport,
    set_link,
)

pytestmark = [pytest.mark.root, needs_root]

NS = "vxl-rtnl-links"


@pytest.fixture
def links() -> Iterator[RtnlLinks]:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    sock = None
    try:
        for cmd in (("ip", "link", "add", "vxl-ul", "type", "veth", "peer", "name", "vxl-ulp"), ("ip", "addr", "add", "198.51.100.7/24", "dev", "vxl-ul"),
                    ("ip", "link", "set", "vxl-ul", "up")):
            assert nsexec(NS, *cmd).returncode == 0
        sock = RtnlSocket(NS)
        yield RtnlLinks(sock)
    finally:
        if sock is not None:
            sock.close()
        subprocess.run(["ip", "netns", "del", NS], check=False)


def show(name: str) -> dict[str, Any]:
    r = nsexec(NS, "ip", "-details", "-json", "link", "show", "dev", name)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)[0]


def test_lookups_by_name_and_address(links: RtnlLinks) -> None:
    ul = show("vxl-ul")["ifindex"]
    assert links.index("vxl-ul") == ul
    assert links.index("vxl-none") is None
    assert links.addr_index("198.51.100.7") == ul
    assert links.addr_index("198.51.100.8") is None
    # The socket is in the namespace, not in the caller's: the caller's lo has another view.
    assert subprocess.run(["ip", "link", "show", "vxl-ul"], capture_output=True, check=False).returncode != 0


def test_bridge_vxlan_vlan_created_set_and_deleted(links: RtnlLinks) -> None:
    ul = links.index("vxl-ul")
    assert ul is not None
    links.call(new_bridge("vxb-t", "02:00:5e:00:00:01", 1450))
    with pytest.raises(RtnlError) as e:
        links.call(new_bridge("vxb-t", "02:00:5e:00:00:01", 1450))
    assert e.value.code == errno.EEXIST
    br = links.index("vxb-t")
    assert br is not None
    b = show("vxb-t")
    assert (b["address"], b["mtu"], b["linkinfo"]["info_kind"]) == ("02:00:5e:00:00:01", 1450, "bridge")
    assert "UP" not in b["flags"]

    links.call(set_link(br, addr_gen_none=True))
    links.call(set_link(br, mac="02:00:5e:00:00:02", mtu=1400, up=True))
    b = show("vxb-t")
    assert (b["address"], b["mtu"], b.get("inet6_addr_gen_mode")) == ("02:00:5e:00:00:02", 1400, "none")
    assert "UP" in b["flags"]

    links.call(new_vxlan("vxx-t", 4242, "198.51.100.7", 4789, False, 1400, ul))
    vx = links.index("vxx-t")
    assert vx is not None
    d = show("vxx-t")
    data = d["linkinfo"]["info_data"]
    assert (data["id"], data["local"], data["port"], data["learning"], d["mtu"]) == (4242, "198.51.100.7", 4789, False, 1400)
    assert data["link"] == "vxl-ul"

    links.call(set_link(vx, master=br, mtu=1400))
    links.call(set_brport(vx, learning=False, neigh_suppress=True))
    links.call(set_link(vx, up=True))
    d = show("vxx-t")
    port = d["linkinfo"]["info_slave_data"]
    assert (d["master"], port["learning"], port["neigh_suppress"]) == ("vxb-t", False, True)
    assert "UP" in d["flags"]
    links.call(set_brport(vx, learning=True, neigh_suppress=False))
    port = show("vxx-t")["linkinfo"]["info_slave_data"]
    assert (port["learning"], port["neigh_suppress"]) == (True, False)

    links.call(set_link(vx, master=0))
    assert "master" not in show("vxx-t")
    for name in ("vxx-t", "vxb-t"):
        idx = links.index(name)
        assert idx is not None
        links.call(del_link(idx))
        assert links.index(name) is None
        with pytest.raises(RtnlError) as e:
            links.call(del_link(idx))
        assert e.value.code == errno.ENODEV


def test_vlan_device(links: RtnlLinks) -> None:
    ul = links.index("vxl-ul")
    assert ul is not None
    probe = nsexec(NS, "ip", "link", "add", "link", "vxl-ul", "name", "vxl-probe", "type", "vlan", "id", "7")
    if probe.returncode != 0:
        pytest.skip("this kernel has no 802.1Q VLAN devices (8021q), as in tests/root/test_trunk.py")
    nsexec(NS, "ip", "link", "del", "vxl-probe")
    links.call(new_vlan("vxv-t", ul, 100, 1300))
    v = show("vxv-t")
    assert (v["linkinfo"]["info_kind"], v["linkinfo"]["info_data"]["id"], v["link"], v["mtu"]) == ("vlan", 100, "vxl-ul", 1300)
    idx = links.index("vxv-t")
    assert idx is not None
    links.call(del_link(idx))
    assert links.index("vxv-t") is None
