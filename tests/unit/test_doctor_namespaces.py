"""`vxnet doctor`'s namespace checks on hand-made desired states and `ip -j` answers (pure: the
reader is a seam): IPv6 neighbours of router `qr-` and gateway `sg-` legs, and the metadata
service's namespace, devices, routes, neighbours and steering table."""

from __future__ import annotations

from typing import Any

from vxnet.agent.doctor import NsMissing, metadata_drift, ns_neigh_drift
from vxnet.compute.gateway import GatewayDesired, GatewayRouter, Leg
from vxnet.compute.host import HostDesired
from vxnet.compute.metadata import MetadataState, MetaNetwork, MetaPort
from vxnet.compute.routing import NsNeigh, RoutingState


def reader(tables: dict[tuple[str, str], list[dict[str, Any]]], missing: frozenset[str] = frozenset()) -> Any:
    def read(ns: str, *args: str) -> list[dict[str, Any]]:
        if ns in missing:
            raise NsMissing(ns)
        key = " ".join(a for a in args if a not in ("show", "nud", "permanent"))
        return tables.get((ns, key), [])
    return read


def _router(netns: str, neighs: tuple[NsNeigh, ...]) -> Any:
    class R:        # the two fields the check reads
        pass
    r = R()
    r.netns, r.neighs = netns, neighs       # type: ignore[attr-defined]
    return r


def test_ns_neighbours_missing_changed_foreign_and_namespace_gone() -> None:
    rt = _router("vxr-r1-h1", (NsNeigh("qr-a", "2001:db8:a::11", "02:00:00:00:0a:01"),
                               NsNeigh("qr-a", "2001:db8:a::12", "02:00:00:00:0a:02")))
    gone = _router("vxr-r2-h1", (NsNeigh("qr-b", "2001:db8:b::11", "02:00:00:00:0b:01"),))
    leg = Leg("p", "tapp", "sg-p", "fa:16:3e:00:00:01", "2001:db8:a::3/64", 1450)
    gw = GatewayRouter("r1", "vxs-r1-h1", leg, None, (leg,), (), False, (), (),
                       neighs6=(("sg-p", "2001:db8:a::11", "02:00:00:00:0a:01"),))
    desired = HostDesired(routing=RoutingState(routers=(rt, gone)),     # type: ignore[arg-type]
                          gateway=GatewayDesired(routers=(gw,)))
    read = reader({("vxr-r1-h1", "-6 neigh"): [
        {"dev": "qr-a", "dst": "2001:db8:a::11", "lladdr": "02:00:00:00:0a:01"},      # as desired
        {"dev": "qr-a", "dst": "2001:db8:a::12", "lladdr": "02:00:00:00:99:99"},      # wrong MAC
        {"dev": "qr-a", "dst": "2001:db8:a::77", "lladdr": "02:00:00:00:77:77"},      # not desired
        {"dev": "eth9", "dst": "2001:db8:a::88", "lladdr": "02:00:00:00:88:88"}],     # not ours: ignored
        ("vxs-r1-h1", "-6 neigh"): [{"dev": "sg-p", "dst": "2001:db8:a::11", "lladdr": "02:00:00:00:0a:01"}]},
        missing=frozenset({"vxr-r2-h1"}))
    got = {(d.object, d.expected, d.found) for d in ns_neigh_drift(desired, read)}
    assert got == {("vxr-r1-h1 qr-a 2001:db8:a::12", "lladdr 02:00:00:00:0a:02", "lladdr 02:00:00:00:99:99"),
                   ("vxr-r1-h1 qr-a 2001:db8:a::77", None, "lladdr 02:00:00:00:77:77"),
                   ("netns vxr-r2-h1", "1 IPv6 neighbours", None)}
    # the gateway's entry removed: reported as missing
    read2 = reader({("vxr-r1-h1", "-6 neigh"): [
        {"dev": "qr-a", "dst": "2001:db8:a::11", "lladdr": "02:00:00:00:0a:01"},
        {"dev": "qr-a", "dst": "2001:db8:a::12", "lladdr": "02:00:00:00:0a:02"}]}, missing=frozenset({"vxr-r2-h1"}))
    assert [(d.kind, d.object, d.found) for d in ns_neigh_drift(desired, read2)
            if d.object.startswith("vxs")] == [("ns-neighs", "vxs-r1-h1 sg-p 2001:db8:a::11", None)]


def test_metadata_objects() -> None:
    meta = MetadataState("vxm-h1", (MetaNetwork("n1", "vxpmn1", "vxmdn1", "fa:16:3e:aa:00:01", "vxb-n1", 1450),),
                         (MetaPort("p1", "n1", "tapp1", "02:00:00:00:00:01", "192.0.2.11", "169.254.3.4"),))
    good = {("vxm-h1", "link"): [{"ifname": "lo"}, {"ifname": "vxmdn1", "address": "fa:16:3e:aa:00:01"}],
            ("vxm-h1", "-4 addr"): [{"ifname": "vxmdn1", "addr_info": [{"local": "169.254.169.254", "prefixlen": 32}]}],
            ("vxm-h1", "-4 route"): [{"dst": "169.254.3.4", "dev": "vxmdn1"}],
            ("vxm-h1", "-4 neigh"): [{"dst": "169.254.3.4", "lladdr": "02:00:00:00:00:01"}]}
    table = 'table bridge vxnet_meta {\n map steer {\n elements = { "tapp1" : fa:16:3e:aa:00:01 }\n }\n}'
    assert metadata_drift(meta, None, reader(good), lambda f, t: table) == []
    broken = dict(good)
    broken[("vxm-h1", "-4 neigh")] = []
    broken[("vxm-h1", "-4 addr")] = [{"ifname": "vxmdn1", "addr_info": []}]
    got = {d.object for d in metadata_drift(meta, None, reader(broken), lambda f, t: "table bridge vxnet_meta {}")}
    assert got == {"vxm-h1 neighbour 169.254.3.4", "vxm-h1 device vxmdn1 address",
                   "table bridge vxnet_meta steer tapp1"}

    def no_table(f: str, t: str) -> str:
        raise RuntimeError("No such file or directory")
    assert [d.object for d in metadata_drift(meta, None, reader(good), no_table)] == ["table bridge vxnet_meta"]
    assert [(d.object, d.found) for d in metadata_drift(meta, None, reader(good, frozenset({"vxm-h1"})), no_table)] \
        == [("netns vxm-h1", None)]
    assert metadata_drift(MetadataState(), None, reader({})) == []       # nothing served: nothing checked
