"""Lists a request carries (extra routes, fixed IPs, trunk subports) are checked in linear work:
a member's body of ~1 MiB holds ~10^4 items, and a check comparing every item with every other
(or scanning the store once per item) held the interpreter lock for minutes. Counted in
comparisons and store scans, not timed (session 14's style, tests/api/test_api_denials.py)."""

from __future__ import annotations

import types
from typing import Any

import pytest

from tests.api.helpers import CountingStr as _Str
from tests.api.helpers import network, port, subnet
from tests.conftest import ServerHandle


def test_duplicate_routes_are_found_in_linear_work() -> None:
    """`routes` of a router update or add/remove_extraroutes: the duplicate check ran before the
    count limit, comparing each route with every one before it."""
    from vxnet.api.errors import ApiError
    from vxnet.api.routers.routers import normalize_routes

    n = 2000
    routes = [types.SimpleNamespace(destination=_Str(f"100.64.{i // 256}.{i % 256}/32"), nexthop=_Str("192.0.2.1"))
              for i in range(n)]
    _Str.compared = 0
    assert len(normalize_routes(routes)) == n   # type: ignore[arg-type]
    assert _Str.compared < 4 * n, _Str.compared
    with pytest.raises(ApiError) as e:
        normalize_routes([*routes[:3], routes[1]])   # type: ignore[arg-type]
    assert e.value.status == 400 and "Duplicate hostroute" in e.value.message


class _Uow:
    """What `allocate_ip` needs of a unit of work: claims."""

    def __init__(self) -> None:
        self.claims: set[str] = set()

    def touch(self, key: str) -> None:
        pass

    def is_claimed(self, key: str) -> bool:
        return key in self.claims

    def claim(self, key: str, value: str) -> None:
        self.claims.add(key)


def test_fixed_ips_on_an_auto_address_subnet_are_matched_in_linear_work() -> None:
    """A subnet-only entry on a SLAAC subnet looked for an earlier one among every address given
    so far: n explicit IPv4 addresses and n such entries compared n * n subnet ids."""
    from vxnet.services import ipam

    v4 = {"id": _Str("s4"), "network_id": "n", "cidr": "100.64.0.0/16", "ip_version": 4,
          "allocation_pools": [{"start": "100.64.0.2", "end": "100.64.255.254"}]}
    v6 = {"id": _Str("s6"), "network_id": "n", "cidr": "2001:db8::/64", "ip_version": 6,
          "ipv6_address_mode": "slaac", "ipv6_ra_mode": "slaac", "allocation_pools": []}
    n = 2000
    requested: list[dict[str, Any]] = [{"ip_address": f"100.64.{(i + 2) // 256}.{(i + 2) % 256}"} for i in range(n)]
    requested += [{"subnet_id": "s6"}] * n
    _Str.compared = 0
    out = ipam.allocate_fixed_ips(_Uow(), {"id": "n"}, [v4, v6], "p", requested,  # type: ignore[arg-type]
                                  device_owner="compute:nova", mac="fa:16:3e:00:00:01", add_auto=False)
    assert len(out) == n + 1 and out[-1]["subnet_id"] == "s6"
    assert _Str.compared < 10 * n, _Str.compared


def test_subports_are_checked_with_one_scan_of_the_trunks(shared_server: ServerHandle,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each subport of a trunk create or add_subports scanned every trunk twice (is it a parent,
    is it a subport): a body names up to 4,094 subports. Counted in scans of the trunks."""
    from vxnet.services import repo

    scans = 0
    real = repo.UnitOfWork.list

    def counting(self: Any, collection: str, *args: Any, **kw: Any) -> Any:
        nonlocal scans
        scans += collection == "trunks"
        return real(self, collection, *args, **kw)

    with shared_server.api("alice") as c:
        net = network(c)
        subnet(c, net, "192.0.2.0/24")
        parent = port(c, net)
        r = c.post("/ports", json={"ports": [{"port": {"network_id": net["id"]}} for _ in range(30)]})
        assert r.status_code == 201, r.text
        subs = [{"port_id": p["id"], "segmentation_type": "vlan", "segmentation_id": 100 + i}
                for i, p in enumerate(r.json()["ports"])]
        monkeypatch.setattr(repo.UnitOfWork, "list", counting)
        r = c.post("/trunks", json={"trunk": {"port_id": parent["id"], "sub_ports": subs[:20]}})
        assert r.status_code == 201, r.text
        trunk = r.json()["trunk"]
        assert scans <= 4, scans
        scans = 0
        r = c.put(f"/trunks/{trunk['id']}/add_subports", json={"sub_ports": subs[20:]})
        assert r.status_code == 200 and len(r.json()["sub_ports"]) == 30, r.text
        assert scans <= 2, scans
        r = c.put(f"/trunks/{trunk['id']}/add_subports", json={"sub_ports": [{**subs[0], "segmentation_id": 999}]})
        assert r.status_code == 400, r.text   # already a subport of this trunk
        r = c.put(f"/trunks/{trunk['id']}/remove_subports", json={"sub_ports": [{"port_id": s["port_id"]}
                                                                                for s in subs[::2]]})
        assert r.status_code == 200 and [s["port_id"] for s in r.json()["sub_ports"]] == [
            s["port_id"] for s in subs[1::2]], r.text
