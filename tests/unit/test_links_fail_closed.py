"""dataplane/links_driver.py, fail closed on br_netfilter: a tap is never plugged into a bridge
that wants its br_netfilter switch on but whose create/update failed (the security groups'
inet hooks would be bypassed); a bridge that wants it off, or whose switch was set, plugs as
before. The kernel side is a stub recording the requests (no namespace is touched)."""

from __future__ import annotations

import errno

from vxnet.compute.state import Bridge, Plug
from vxnet.dataplane import rtnl_links as L
from vxnet.dataplane.links_driver import LinksDriver


class StubLinks:
    """Answers `call` like the kernel would, refusing the bridge-option request on `broken`."""

    def __init__(self, broken: set[int]) -> None:
        self.broken = broken
        self.calls: list[L.Msg] = []
        self.index_of = {"vxb-a": 10, "vxb-b": 11, "tapa": 20, "tapb": 21}

    def call(self, msg: L.Msg) -> None:
        idx = L._IFI.unpack_from(msg.body, 0)[2]
        if msg.body.find(bytes([5, 0, L.IFLA_BR_NF_CALL_IPTABLES, 0])) >= 0 and idx in self.broken:
            raise L.RtnlError(errno.EOPNOTSUPP, "bridge options refused")
        self.calls.append(msg)

    def index(self, name: str) -> int | None:
        return self.index_of.get(name)


def plugged(stub: StubLinks) -> set[int]:
    """Indexes of the links a `master` request was sent for."""
    out = set()
    for m in stub.calls:
        if m.body.find(bytes([8, 0, 10, 0])) >= 0:           # IFLA_MASTER, u32
            out.add(L._IFI.unpack_from(m.body, 0)[2])
    return out


def test_no_plug_into_a_bridge_whose_br_netfilter_switch_failed() -> None:
    stub = StubLinks(broken={10})
    drv = LinksDriver(stub, "198.51.100.1", index=dict(stub.index_of))     # type: ignore[arg-type]
    a = Bridge("vxb-a", "02:00:00:00:00:0a", 1450, ipv6_quiet=False, nf_call=True)
    b = Bridge("vxb-b", "02:00:00:00:00:0b", 1450, ipv6_quiet=False, nf_call=True)
    drv.update_bridge(a)
    drv.update_bridge(b)
    assert a in drv.failed and b not in drv.failed
    drv.plug(Plug("tapa", "vxb-a", 1450))
    drv.plug(Plug("tapb", "vxb-b", 1450))
    assert plugged(stub) == {21}                    # tapb only
    assert Plug("tapa", "vxb-a", 1450) in drv.failed


def test_a_bridge_that_wants_no_br_netfilter_still_plugs_when_its_switch_failed() -> None:
    stub = StubLinks(broken={10})
    drv = LinksDriver(stub, "198.51.100.1", index=dict(stub.index_of))     # type: ignore[arg-type]
    a = Bridge("vxb-a", "02:00:00:00:00:0a", 1450, ipv6_quiet=False, nf_call=False)
    drv.update_bridge(a)
    assert a in drv.failed                          # retried next pass; nothing to bypass meanwhile
    drv.plug(Plug("tapa", "vxb-a", 1450))
    assert plugged(stub) == {20}
