"""Subnet pools and address scopes over real HTTP (Neutron's subnet_allocation, default-subnetpools,
subnetpool-prefix-ops and address-scope extensions).

- Pools: defaults and compaction, validation in Neutron's words, tags/timestamps/revision;
  subnets from a pool by prefix length, by the pool's default, by `use_default_subnetpool`, or
  by a CIDR that must lie in the pool's free space; a deleted subnet's prefix comes back;
  prefixes never shrink below what is allocated; `default_quota` per project.
- Policy: another project's pool is invisible (404, also when named by a subnet create), a
  shared pool is usable but not changeable (403); `shared`/`is_default` are admin only.
- Address scopes: CRUD, sharing, prefix uniqueness within a scope, a network's
  `ipv4_address_scope`, the network/pool affinity rules, re-scoping a pool's networks.
- Quotas: `subnetpool` is counted and limited like Neutron's.
- Concurrency: parallel allocations from one pool through two servers sharing one store never
  overlap, and exactly as many succeed as the pool has blocks.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.api.helpers import assert_error, network
from tests.conftest import start_server
from vxnet.store.sqlite_store import SqliteStore


def ok(r: httpx.Response, status: int = 201) -> dict[str, Any]:
    assert r.status_code == status, r.text
    return r.json() if r.content else {}


def pool(c: httpx.Client, prefixes: list[str], **attrs: Any) -> dict[str, Any]:
    return ok(c.post("/subnetpools", json={"subnetpool": {"name": "p", "prefixes": prefixes, **attrs}}))["subnetpool"]


def scope(c: httpx.Client, **attrs: Any) -> dict[str, Any]:
    return ok(c.post("/address-scopes", json={"address_scope": {"name": "s", "ip_version": 4, **attrs}}))[
        "address_scope"]


def from_pool(c: httpx.Client, net: dict[str, Any], **attrs: Any) -> httpx.Response:
    return c.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4, **attrs}})


_next = itertools.count()


def fresh(n: int = 4) -> str:
    """An aligned block of n (a power of two) /24s that no other test of this module uses (the
    server is shared; pools of one address scope must not overlap)."""
    i = next(_next)
    while i % n:
        i = next(_next)
    for _ in range(n - 1):
        next(_next)
    plen = 24 - (n - 1).bit_length()
    return str(ipaddress.ip_network(f"100.{64 + i // 256}.{i % 256}.0/{plen}"))


@pytest.fixture(scope="module")
def srv(shared_server):
    return shared_server


def test_pool_defaults_compaction_and_standard_attributes(srv) -> None:
    alice = srv.api("alice")
    p = pool(alice, ["100.127.0.0/25", "100.127.0.128/25", "100.127.0.64/26"], tags=["t1"])
    assert p["prefixes"] == ["100.127.0.0/24"]        # overlaps merged, neighbours joined
    assert (p["ip_version"], p["min_prefixlen"], p["max_prefixlen"], p["default_prefixlen"]) == (4, 8, 32, 8)
    assert (p["shared"], p["is_default"], p["default_quota"], p["address_scope_id"]) == (False, False, None, None)
    assert p["tags"] == ["t1"] and p["revision_number"] == 0 and p["created_at"] and p["updated_at"]
    shown = ok(alice.get(f"/subnetpools/{p['id']}"), 200)["subnetpool"]
    assert shown == p
    upd = ok(alice.put(f"/subnetpools/{p['id']}", json={"subnetpool": {"name": "renamed", "default_prefixlen": 28,
                                                                       "min_prefixlen": "24"}}), 200)["subnetpool"]
    assert (upd["name"], upd["default_prefixlen"], upd["min_prefixlen"], upd["revision_number"]) == ("renamed", 28, 24, 1)
    ok(alice.put(f"/subnetpools/{p['id']}/tags/t2", content=b""))
    assert ok(alice.get(f"/subnetpools/{p['id']}/tags"), 200)["tags"] == ["t1", "t2"]
    assert [x["id"] for x in ok(alice.get("/subnetpools", params={"tags": "t2"}), 200)["subnetpools"]] == [p["id"]]
    ok(alice.delete(f"/subnetpools/{p['id']}"), 204)
    assert_error(alice.get(f"/subnetpools/{p['id']}"), 404, "SubnetPoolNotFound")


@pytest.mark.parametrize(("body", "status", "kind"), [
    ({"prefixes": []}, 400, "EmptySubnetPoolPrefixList"),
    ({"prefixes": ["100.64.0.0/24", "2001:db8::/64"]}, 400, "PrefixVersionMismatch"),
    ({"prefixes": ["100.64.0.0/24"], "min_prefixlen": 28, "max_prefixlen": 24}, 400, "IllegalSubnetPoolPrefixBounds"),
    ({"prefixes": ["100.64.0.0/24"], "max_prefixlen": 33}, 400, "IllegalSubnetPoolPrefixBounds"),
    ({"prefixes": ["100.64.0.0/24"], "min_prefixlen": 24, "default_prefixlen": 20}, 400,
     "IllegalSubnetPoolPrefixBounds"),
    ({"prefixes": ["100.64.0.0/24"], "default_quota": -1}, 400, "BadRequest"),
    ({"prefixes": ["not-a-cidr"]}, 400, "BadRequest"),
    ({"prefixes": ["100.64.0.0/24"], "ip_version": 4}, 400, "BadRequest"),   # read-only: inferred
])
def test_pool_create_validation(srv, body: dict[str, Any], status: int, kind: str) -> None:
    assert_error(srv.api("alice").post("/subnetpools", json={"subnetpool": body}), status, kind)


def test_subnets_from_a_pool_by_prefixlen_default_and_cidr(srv) -> None:
    alice = srv.api("alice")
    block = fresh(4)  # a /22
    p = pool(alice, [block], default_prefixlen=24, min_prefixlen=23, max_prefixlen=28)
    base = ipaddress.ip_network(block)
    s1 = ok(from_pool(alice, network(alice), subnetpool_id=p["id"]))["subnet"]
    assert s1["cidr"] == str(next(base.subnets(new_prefix=24))) and s1["subnetpool_id"] == p["id"]
    assert s1["gateway_ip"] == str(ipaddress.ip_network(s1["cidr"]).network_address + 1)
    s2 = ok(from_pool(alice, network(alice), subnetpool_id=p["id"], prefixlen="26"))["subnet"]  # the CLI sends a string
    assert ipaddress.ip_network(s2["cidr"]).prefixlen == 26
    wanted = str(list(base.subnets(new_prefix=24))[3])
    s3 = ok(from_pool(alice, network(alice), subnetpool_id=p["id"], cidr=wanted))["subnet"]
    assert s3["cidr"] == wanted
    nets = [ipaddress.ip_network(s["cidr"]) for s in (s1, s2, s3)]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(nets, 2))
    assert all(n.subnet_of(base) for n in nets)
    # an allocated or outside CIDR, a length outside the pool's bounds, and Neutron's argument rules
    assert_error(from_pool(alice, network(alice), subnetpool_id=p["id"], cidr=s1["cidr"]), 409, "SubnetAllocationError")
    assert_error(from_pool(alice, network(alice), subnetpool_id=p["id"], cidr="203.0.113.0/24"), 409,
                 "SubnetAllocationError")
    assert_error(from_pool(alice, network(alice), subnetpool_id=p["id"], prefixlen=22), 400,
                 "MinPrefixSubnetAllocationError")
    assert_error(from_pool(alice, network(alice), subnetpool_id=p["id"], prefixlen=29), 400,
                 "MaxPrefixSubnetAllocationError")
    net = network(alice)
    assert_error(from_pool(alice, net, subnetpool_id=p["id"], cidr=wanted, prefixlen=24), 400, "BadRequest",
                 "cidr and prefixlen must not be supplied together")
    assert_error(from_pool(alice, net, subnetpool_id=p["id"], use_default_subnetpool=True), 400, "BadRequest",
                 "cannot both be specified")
    assert_error(from_pool(alice, net, subnetpool_id=p["id"], allocation_pools=[
        {"start": "100.64.0.2", "end": "100.64.0.9"}]), 400, "BadRequest", "allocation_pools allowed only")
    assert_error(from_pool(alice, net, prefixlen=24), 400, "BadRequest", "a subnetpool must be specified")
    # the pool is full (/24 + /26 + /24 taken, a /24 and two /26s... left): a /24 still fits once
    left = ok(from_pool(alice, network(alice), subnetpool_id=p["id"]))["subnet"]
    assert_error(from_pool(alice, network(alice), subnetpool_id=p["id"]), 409, "SubnetAllocationError",
                 "Insufficient prefix space")
    # a deleted subnet gives its prefix back
    ok(alice.delete(f"/subnets/{left['id']}"), 204)
    again = ok(from_pool(alice, network(alice), subnetpool_id=p["id"]))["subnet"]
    assert again["cidr"] == left["cidr"]


def test_bulk_allocations_are_disjoint_and_a_network_delete_returns_its_prefixes(srv) -> None:
    alice = srv.api("alice")
    block = fresh(4)
    p = pool(alice, [block], default_prefixlen=24)
    nets = [network(alice) for _ in range(3)]
    r = alice.post("/subnets", json={"subnets": [
        {"network_id": n["id"], "ip_version": 4, "subnetpool_id": p["id"]} for n in nets]})
    cidrs = sorted(s["cidr"] for s in ok(r)["subnets"])
    assert cidrs == [str(n) for n in list(ipaddress.ip_network(block).subnets(new_prefix=24))[:3]]
    # a refused bulk item leaves nothing (the three /24s left one, a bulk of two cannot fit)
    assert_error(alice.post("/subnets", json={"subnets": [
        {"network_id": network(alice)["id"], "ip_version": 4, "subnetpool_id": p["id"]} for _ in range(2)]}), 409,
        "SubnetAllocationError")
    assert len(ok(alice.get("/subnets", params={"subnetpool_id": p["id"]}), 200)["subnets"]) == 3
    ok(alice.delete(f"/networks/{nets[0]['id']}"), 204)          # its subnet goes with it, and the prefix
    again = ok(from_pool(alice, network(alice), subnetpool_id=p["id"], cidr=cidrs[0]))["subnet"]
    assert again["cidr"] == cidrs[0]


def test_prefixes_never_shrink_below_allocations_and_pool_delete(srv) -> None:
    alice = srv.api("alice")
    block = ipaddress.ip_network(fresh(2))  # a /23
    lo, hi = (str(n) for n in block.subnets(new_prefix=24))
    p = pool(alice, [lo], default_prefixlen=25)
    sub = ok(from_pool(alice, network(alice), subnetpool_id=p["id"]))["subnet"]
    assert_error(alice.put(f"/subnetpools/{p['id']}", json={"subnetpool": {"prefixes": [hi]}}), 400,
                 "IllegalSubnetPoolPrefixUpdate", "Existing prefixes must be a subset")
    assert ok(alice.put(f"/subnetpools/{p['id']}/add_prefixes", json={"prefixes": [hi]}), 200)["prefixes"] == [
        str(block)]
    assert_error(alice.put(f"/subnetpools/{p['id']}/remove_prefixes", json={"prefixes": [lo]}), 400,
                 "IllegalSubnetPoolPrefixUpdate", "in use by a subnet")
    assert ok(alice.put(f"/subnetpools/{p['id']}/remove_prefixes", json={"prefixes": [hi]}), 200)["prefixes"] == [lo]
    shown = ok(alice.get(f"/subnetpools/{p['id']}"), 200)["subnetpool"]
    assert shown["prefixes"] == [lo] and shown["revision_number"] == 2
    assert_error(alice.delete(f"/subnetpools/{p['id']}"), 400, "SubnetPoolDeleteError")
    ok(alice.delete(f"/subnets/{sub['id']}"), 204)
    ok(alice.delete(f"/subnetpools/{p['id']}"), 204)


def test_default_pool_and_use_default_subnetpool(srv) -> None:
    admin, alice = srv.api("admin"), srv.api("alice")
    assert_error(from_pool(alice, network(alice), use_default_subnetpool=True), 400, "BadRequest",
                 "No default subnetpool found for IPv4")
    assert_error(alice.post("/subnetpools", json={"subnetpool": {"prefixes": [fresh(1)], "is_default": True}}),
                 403, "PolicyNotAuthorized", "create_subnetpool:is_default")
    block = fresh(4)
    d = pool(admin, [block], is_default=True, shared=True, default_prefixlen=26)
    try:
        assert_error(admin.post("/subnetpools", json={"subnetpool": {"prefixes": [fresh(1)], "is_default": True}}),
                     400, "InvalidInput", "Only one default may exist per IP family")
        s = ok(from_pool(alice, network(alice), use_default_subnetpool=True))["subnet"]
        assert s["subnetpool_id"] == d["id"] and ipaddress.ip_network(s["cidr"]).subnet_of(ipaddress.ip_network(block))
        # alice may use the shared pool but not change or delete it
        assert_error(alice.put(f"/subnetpools/{d['id']}", json={"subnetpool": {"name": "x"}}), 403,
                     "PolicyNotAuthorized", "update_subnetpool")
        assert_error(alice.delete(f"/subnetpools/{d['id']}"), 403, "PolicyNotAuthorized", "delete_subnetpool")
        ok(alice.delete(f"/subnets/{s['id']}"), 204)
    finally:
        ok(admin.put(f"/subnetpools/{d['id']}", json={"subnetpool": {"is_default": False}}), 200)
    other = pool(admin, [fresh(1)], is_default=True)  # the default claim was released
    ok(admin.delete(f"/subnetpools/{other['id']}"), 204)
    ok(admin.delete(f"/subnetpools/{d['id']}"), 204)


def test_other_projects_pools_are_invisible_and_shared_needs_admin(srv) -> None:
    alice, bob, reader = srv.api("alice"), srv.api("bob"), srv.api("alice_reader")
    p = pool(alice, [fresh(1)], default_prefixlen=26)
    assert_error(bob.get(f"/subnetpools/{p['id']}"), 404, "SubnetPoolNotFound")
    assert p["id"] not in [x["id"] for x in ok(bob.get("/subnetpools"), 200)["subnetpools"]]
    assert_error(from_pool(bob, network(bob), subnetpool_id=p["id"]), 404, "SubnetPoolNotFound")
    assert_error(bob.put(f"/subnetpools/{p['id']}", json={"subnetpool": {"name": "x"}}), 404, "SubnetPoolNotFound")
    assert_error(bob.put(f"/subnetpools/{p['id']}/add_prefixes", json={"prefixes": ["100.127.255.0/24"]}), 404,
                 "SubnetPoolNotFound")
    assert_error(bob.delete(f"/subnetpools/{p['id']}"), 404, "SubnetPoolNotFound")
    assert_error(bob.put(f"/subnetpools/{p['id']}/tags/x", content=b""), 404, "SubnetPoolNotFound")
    assert_error(alice.post("/subnetpools", json={"subnetpool": {"prefixes": [fresh(1)], "shared": True}}), 403,
                 "PolicyNotAuthorized", "create_subnetpool:shared")
    assert_error(alice.put(f"/subnetpools/{p['id']}", json={"subnetpool": {"shared": True}}), 400, "HTTPBadRequest")
    assert_error(reader.post("/subnetpools", json={"subnetpool": {"prefixes": [fresh(1)]}}), 403,
                 "PolicyNotAuthorized", "create_subnetpool")
    assert_error(reader.put(f"/subnetpools/{p['id']}", json={"subnetpool": {"name": "x"}}), 403, "PolicyNotAuthorized")
    ok(alice.delete(f"/subnetpools/{p['id']}"), 204)


def test_default_quota_counts_each_projects_addresses(srv) -> None:
    admin, alice, bob = srv.api("admin"), srv.api("alice"), srv.api("bob")
    p = pool(admin, [fresh(4)], shared=True, default_prefixlen=24, default_quota=512)  # two /24s per project
    for _ in range(2):
        ok(from_pool(alice, network(alice), subnetpool_id=p["id"]))
    assert_error(from_pool(alice, network(alice), subnetpool_id=p["id"], prefixlen=32), 409,
                 "SubnetPoolQuotaExceeded", "Per-tenant subnet pool prefix quota exceeded")
    ok(from_pool(bob, network(bob), subnetpool_id=p["id"]))          # bob's count is his own
    assert_error(from_pool(bob, network(bob), subnetpool_id=p["id"], prefixlen=23), 409, "SubnetPoolQuotaExceeded")


def test_subnetpool_quota(srv) -> None:
    admin, bob = srv.api("admin"), srv.api("bob")
    mine = pool(bob, [fresh(1)])
    project = mine["project_id"]
    ok(admin.put(f"/quotas/{project}", json={"quota": {"subnetpool": 1}}), 200)
    try:
        assert_error(bob.post("/subnetpools", json={"subnetpool": {"prefixes": [fresh(1)]}}), 409, "OverQuota")
        details = ok(bob.get(f"/quotas/{project}/details"), 200)["quota"]["subnetpool"]
        assert (details["limit"], details["used"]) == (1, 1)
    finally:
        ok(admin.delete(f"/quotas/{project}"), 204)
    ok(bob.delete(f"/subnetpools/{mine['id']}"), 204)


# address scopes ---------------------------------------------------------------------------------
def test_address_scope_crud_sharing_and_policy(srv) -> None:
    admin, alice, bob = srv.api("admin"), srv.api("alice"), srv.api("bob")
    s = scope(alice, name="mine")
    assert set(s) == {"id", "name", "project_id", "tenant_id", "shared", "ip_version"} and s["shared"] is False
    assert_error(bob.get(f"/address-scopes/{s['id']}"), 404, "AddressScopeNotFound")
    assert_error(bob.put(f"/address-scopes/{s['id']}", json={"address_scope": {"name": "x"}}), 404)
    assert_error(bob.delete(f"/address-scopes/{s['id']}"), 404, "AddressScopeNotFound")
    assert_error(alice.post("/address-scopes", json={"address_scope": {"name": "x", "ip_version": 4, "shared": True}}),
                 403, "PolicyNotAuthorized", "create_address_scope:shared")
    assert_error(alice.put(f"/address-scopes/{s['id']}", json={"address_scope": {"shared": True}}), 403,
                 "PolicyNotAuthorized", "update_address_scope:shared")
    assert_error(alice.post("/address-scopes", json={"address_scope": {"name": "x", "ip_version": 5}}), 400)
    assert_error(alice.put(f"/address-scopes/{s['id']}", json={"address_scope": {"ip_version": 6}}), 400)
    assert ok(alice.put(f"/address-scopes/{s['id']}", json={"address_scope": {"name": "renamed"}}), 200)[
        "address_scope"]["name"] == "renamed"
    shared = scope(admin, shared=True)
    assert shared["id"] in [x["id"] for x in ok(bob.get("/address-scopes"), 200)["address_scopes"]]
    assert_error(bob.put(f"/address-scopes/{shared['id']}", json={"address_scope": {"name": "x"}}), 403,
                 "PolicyNotAuthorized", "update_address_scope")
    assert_error(admin.put(f"/address-scopes/{shared['id']}", json={"address_scope": {"shared": False}}), 400,
                 "AddressScopeUpdateError")
    # a pool may join the caller's own scope or a shared one, never another project's private one
    assert_error(bob.post("/subnetpools", json={"subnetpool": {"prefixes": [fresh(1)], "address_scope_id": s["id"]}}),
                 404, "AddressScopeNotFound")
    p = pool(bob, [fresh(1)], address_scope_id=shared["id"])
    assert_error(admin.delete(f"/address-scopes/{shared['id']}"), 409, "AddressScopeInUse")
    # bob owns the pool but not the shared scope: Neutron refuses to change such a pool
    assert_error(bob.put(f"/subnetpools/{p['id']}", json={"subnetpool": {"name": "x"}}), 400,
                 "IllegalSubnetPoolUpdate")
    ok(bob.delete(f"/subnetpools/{p['id']}"), 204)
    ok(admin.delete(f"/address-scopes/{shared['id']}"), 204)
    ok(alice.delete(f"/address-scopes/{s['id']}"), 204)
    assert_error(alice.get(f"/address-scopes/{s['id']}"), 404, "AddressScopeNotFound")


def test_scope_prefixes_are_unique_and_versions_match(srv) -> None:
    alice = srv.api("alice")
    s = scope(alice)
    block = ipaddress.ip_network(fresh(2))
    lo, hi = (str(n) for n in block.subnets(new_prefix=24))
    p1 = pool(alice, [lo], address_scope_id=s["id"])
    assert_error(alice.post("/subnetpools", json={"subnetpool": {"prefixes": [str(block)], "address_scope_id": s["id"]}}),
                 409, "AddressScopePrefixConflict")
    p2 = pool(alice, [hi], address_scope_id=s["id"])
    assert_error(alice.put(f"/subnetpools/{p2['id']}/add_prefixes", json={"prefixes": [lo]}), 409,
                 "AddressScopePrefixConflict")
    v6 = ok(alice.post("/address-scopes", json={"address_scope": {"name": "v6", "ip_version": 6}}))["address_scope"]
    assert_error(alice.post("/subnetpools", json={"subnetpool": {"prefixes": [fresh(1)], "address_scope_id": v6["id"]}}),
                 400, "IllegalSubnetPoolIpVersionAssociationToAddressScope")
    for x in (p1, p2):
        ok(alice.delete(f"/subnetpools/{x['id']}"), 204)


def test_network_scope_affinity_and_rescoping(srv) -> None:
    alice = srv.api("alice")
    s1, s2 = scope(alice), scope(alice)
    pa = pool(alice, [fresh(2)], address_scope_id=s1["id"], default_prefixlen=26)
    pb = pool(alice, [fresh(2)], address_scope_id=s1["id"], default_prefixlen=26)
    pc = pool(alice, [fresh(2)], address_scope_id=s2["id"], default_prefixlen=26)
    plain = pool(alice, [fresh(2)], default_prefixlen=26)
    net = network(alice)
    assert net["ipv4_address_scope"] is None
    first = ok(from_pool(alice, net, subnetpool_id=pa["id"]))["subnet"]
    assert ok(alice.get(f"/networks/{net['id']}"), 200)["network"]["ipv4_address_scope"] == s1["id"]
    ok(from_pool(alice, net, subnetpool_id=pb["id"]))                  # another pool of the same scope
    assert_error(from_pool(alice, net, subnetpool_id=pc["id"]), 400, "NetworkAddressScopeAffinityError")
    assert_error(from_pool(alice, net, cidr=fresh(1)), 400, "NetworkSubnetPoolAffinityError")
    # without scopes: one pool per network, and a plain-CIDR network takes no pool subnet
    other = network(alice)
    ok(from_pool(alice, other, subnetpool_id=plain["id"]))
    assert_error(from_pool(alice, other, subnetpool_id=pc["id"]), 400, "NetworkSubnetPoolAffinityError")
    cidr_net = network(alice)
    ok(from_pool(alice, cidr_net, cidr=fresh(1)))
    assert_error(from_pool(alice, cidr_net, subnetpool_id=plain["id"]), 400, "NetworkSubnetPoolAffinityError")
    # re-scoping pc moves its networks; a network mixing pools of the scope cannot be split
    lone = network(alice)
    ok(from_pool(alice, lone, subnetpool_id=pc["id"]))
    ok(alice.put(f"/subnetpools/{pc['id']}", json={"subnetpool": {"address_scope_id": s1["id"]}}), 200)
    assert ok(alice.get(f"/networks/{lone['id']}"), 200)["network"]["ipv4_address_scope"] == s1["id"]
    assert_error(alice.put(f"/subnetpools/{pa['id']}", json={"subnetpool": {"address_scope_id": s2["id"]}}), 400,
                 "NetworkAddressScopeAffinityError")
    ok(alice.put(f"/subnetpools/{pc['id']}", json={"subnetpool": {"address_scope_id": None}}), 200)
    assert ok(alice.get(f"/networks/{lone['id']}"), 200)["network"]["ipv4_address_scope"] is None
    # the last pool subnet leaving a network takes the network out of the scope
    ok(alice.delete(f"/subnets/{first['id']}"), 204)
    assert ok(alice.get(f"/networks/{net['id']}"), 200)["network"]["ipv4_address_scope"] == s1["id"]
    for s in ok(alice.get("/subnets", params={"network_id": net["id"]}), 200)["subnets"]:
        ok(alice.delete(f"/subnets/{s['id']}"), 204)
    assert ok(alice.get(f"/networks/{net['id']}"), 200)["network"]["ipv4_address_scope"] is None


def test_extensions_and_collections_are_advertised(srv) -> None:
    alice = srv.api("alice")
    aliases = {e["alias"] for e in ok(alice.get("/extensions"), 200)["extensions"]}
    assert {"subnet_allocation", "default-subnetpools", "address-scope", "subnetpool-prefix-ops"} <= aliases
    collections = {r["collection"] for r in ok(alice.get("/"), 200)["resources"]}
    assert {"subnetpools", "address-scopes"} <= collections


# concurrency ------------------------------------------------------------------------------------
def test_parallel_allocations_through_two_servers_never_overlap(tmp_path) -> None:
    """A /20 pool holds 16 /24s: 40 parallel creates (each on its own network) through two
    servers sharing one store give exactly 16 subnets, pairwise disjoint, and 24 refusals."""
    store = SqliteStore(os.path.join(tmp_path, "vxnet.db"))
    servers = [start_server("", store=store) for _ in range(2)]
    try:
        alice = [s.api("alice") for s in servers]
        p = pool(alice[0], ["100.80.0.0/20"], default_prefixlen=24)
        nets = [network(alice[i % 2]) for i in range(40)]

        def create(i: int) -> httpx.Response:
            return from_pool(alice[i % 2], nets[i], subnetpool_id=p["id"])

        with ThreadPoolExecutor(20) as ex:
            responses = list(ex.map(create, range(40)))
        codes = Counter(r.status_code for r in responses)
        assert codes == {201: 16, 409: 24}, (codes, [r.text for r in responses if r.status_code not in (201, 409)][:3])
        assert all(r.json()["NeutronError"]["type"] == "SubnetAllocationError" for r in responses
                   if r.status_code == 409)
        stored = ok(alice[1].get("/subnets", params={"subnetpool_id": p["id"]}), 200)["subnets"]
        cidrs = [ipaddress.ip_network(s["cidr"]) for s in stored]
        assert len(cidrs) == 16 and len(set(cidrs)) == 16
        assert not any(a.overlaps(b) for a, b in itertools.combinations(cidrs, 2))
        assert sorted(cidrs) == list(ipaddress.ip_network("100.80.0.0/20").subnets(new_prefix=24))
    finally:
        for s in servers:
            s.stop(close_store=False)
        store.close()
