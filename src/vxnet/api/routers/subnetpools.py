"""/v2.0/subnetpools: Neutron's subnet pools (extensions `subnet_allocation`,
`default-subnetpools`, `subnetpool-prefix-ops`).

A pool hands out prefixes to subnets (`POST /v2.0/subnets` with `subnetpool_id` and
`prefixlen`, or `use_default_subnetpool`); the allocation itself is services/subnet_alloc.py.

Invariants:
- Fields as Neutron: prefixes (compacted: overlaps merged, adjacent blocks joined),
  min/max/default_prefixlen (defaults: 8 (IPv4) or 64 (IPv6), 32 or 128, min_prefixlen),
  default_quota, ip_version (from the prefixes, never sent), shared, is_default,
  address_scope_id, plus the standard attributes (description, tags, created_at, updated_at,
  revision_number).
- Visibility: admins, the owner, and the projects the pool is shared with (`get_subnetpool`):
  everyone for a `shared` pool, one project by an RBAC policy (object type `subnetpool`,
  services/rbac.py; `shared` is the "*" policy and is shown true to a targeted project); they
  may allocate subnets from it. Others get 404 SubnetPoolNotFound, also when they name the pool
  in a subnet create. Writes follow Neutron's policy (`shared` and `is_default` are admin
  only).
- Prefixes never shrink by `PUT` (the new list must contain the old: 400
  IllegalSubnetPoolPrefixUpdate); `remove_prefixes` refuses a prefix that overlaps an
  allocated subnet (400 IllegalSubnetPoolPrefixUpdate, as Neutron); both run under the pool's
  allocation lock, so a subnet allocated concurrently is seen. A pool with subnets cannot be
  deleted (400 SubnetPoolDeleteError, as Neutron).
- One default pool per IP version (claim; a second is 400 InvalidInput).
- Address scope: the pool must see the scope (404), have its IP version (400) and prefixes
  disjoint from every other pool of the scope (409 AddressScopePrefixConflict), checked under
  the scope's lock. Changing a pool's scope re-scopes its subnets: every network holding one
  gets the new `ipv4_address_scope`/`ipv6_address_scope` in the same transaction; a network
  that also holds subnets of that IP version from elsewhere makes it a 400
  (NetworkAddressScopeAffinityError). A non-admin may not change a pool that sits in another
  project's shared scope (400 IllegalSubnetPoolUpdate).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BeforeValidator

from vxnet.api import policy
from vxnet.api.auth import Context
from vxnet.api.collection import ResourceSpec, check_if_match
from vxnet.api.errors import ApiError, bad_request, conflict, invalid_input
from vxnet.api.resource_routes import Resource
from vxnet.api.routers.address_scopes import get_for_pool
from vxnet.api.routers.networks import touch
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, off_loop, read_json
from vxnet.api.validation import (
    Body,
    Bool,
    Cidr,
    Description,
    Name,
    ProjectId,
    Tags,
    Uuid,
    parse_create,
    parse_update,
    resolve_project,
)
from vxnet.services import rbac, subnet_alloc
from vxnet.services.repo import UnitOfWork, new_id, now_iso

router = Routes(prefix="/v2.0", tags=["subnetpools"])
COLLECTION = "subnetpools"


def pool_visible(ctx: Context, obj: dict[str, Any]) -> bool:
    return rbac.visible(ctx.is_admin, ctx.project_id, obj)


def present(ctx: Context, obj: dict[str, Any]) -> dict[str, Any]:
    return rbac.present(obj, ctx.project_id)


SPEC = ResourceSpec(COLLECTION, "subnetpool", visible=pool_visible, present=present)
RESOURCE = Resource(SPEC)


def _int(v: Any) -> int:
    """Neutron's convert_to_int: an integer or a string of one."""
    if isinstance(v, bool):
        raise ValueError(f"'{v}' is not an integer")  # noqa: TRY004 - pydantic reports only ValueError as a validation error
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ValueError(f"'{v}' is not an integer") from None


def _non_negative(v: Any) -> int | None:
    if v is None:
        return None
    n = _int(v)
    if n < 0:
        raise ValueError(f"'{v}' should be non-negative")
    return n


IntLike = Annotated[int, BeforeValidator(_int)]
Quota = Annotated[int | None, BeforeValidator(_non_negative)]


class SubnetPoolCreate(Body):
    name: Name = ""
    description: Description = ""
    prefixes: list[Cidr]
    default_prefixlen: IntLike | None = None
    min_prefixlen: IntLike | None = None
    max_prefixlen: IntLike | None = None
    default_quota: Quota = None
    shared: Bool = False
    is_default: Bool = False
    address_scope_id: Uuid | None = None
    tags: Tags = []
    project_id: ProjectId | None = None
    tenant_id: ProjectId | None = None


class SubnetPoolUpdate(Body):
    name: Name = ""
    description: Description = ""
    prefixes: list[Cidr] = []
    default_prefixlen: IntLike = 0
    min_prefixlen: IntLike = 0
    max_prefixlen: IntLike = 0
    default_quota: Quota = None
    is_default: Bool = False
    address_scope_id: Uuid | None = None


READ_ONLY = ("id", "ip_version", "shared", "project_id", "tenant_id", "created_at", "updated_at",
             "revision_number")


# validation (pure) ----------------------------------------------------------------------------
def prefix_info(prefixes: list[str]) -> tuple[int, list[str]]:
    """(ip_version, compacted prefixes); Neutron's EmptySubnetPoolPrefixList and
    PrefixVersionMismatch."""
    if not prefixes:
        raise bad_request("Empty subnet pool prefix list.", "EmptySubnetPoolPrefixList")
    versions = {ipaddress.ip_network(p).version for p in prefixes}
    if len(versions) > 1:
        raise bad_request("Cannot mix IPv4 and IPv6 prefixes in a subnet pool.", "PrefixVersionMismatch")
    return versions.pop(), subnet_alloc.compact(prefixes)


def check_bounds(version: int, min_len: int, max_len: int, default_len: int) -> None:
    """Neutron's SubnetPoolHelper checks, in its order and words."""
    def illegal(kind: str, n: int, base_kind: str, base: int) -> ApiError:
        return bad_request(f"Illegal prefix bounds: {kind}={n}, {base_kind}={base}.", "IllegalSubnetPoolPrefixBounds")

    if min_len < 0:
        raise bad_request(f"Prefix '{min_len}' not supported in IPv{version} pool.", "UnsupportedMinSubnetPoolPrefix")
    if min_len > max_len:
        raise illegal("min_prefixlen", min_len, "max_prefixlen", max_len)
    if max_len > subnet_alloc.MAX_PREFIXLEN[version]:
        raise illegal("max_prefixlen", max_len, "ip_version_max", subnet_alloc.MAX_PREFIXLEN[version])
    if default_len < min_len:
        raise illegal("default_prefixlen", default_len, "min_prefixlen", min_len)
    if default_len > max_len:
        raise illegal("default_prefixlen", default_len, "max_prefixlen", max_len)


# transactions --------------------------------------------------------------------------------
def join_scope(uow: UnitOfWork, ctx: Context, pool: dict[str, Any]) -> None:
    """Check that `pool` (as it will be stored) may sit in its address scope, under the scope's lock."""
    scope_id = pool["address_scope_id"]
    if scope_id is None:
        return
    scope = get_for_pool(uow, ctx, scope_id)
    if scope["ip_version"] != pool["ip_version"]:
        raise bad_request(f"Illegal subnetpool association: subnetpool {pool['id']} cannot associate with address "
                          f"scope {scope_id} because subnetpool ip_version is not {scope['ip_version']}.",
                          "IllegalSubnetPoolIpVersionAssociationToAddressScope")
    others = uow.list(COLLECTION, lambda p: p.get("address_scope_id") == scope_id and p["id"] != pool["id"])
    if subnet_alloc.overlaps(pool["prefixes"], [p for o in others for p in o["prefixes"]]):  # one pass
        raise conflict("AddressScopePrefixConflict", "Failed to associate address scope: subnetpools within an "
                                                     "address scope must have unique prefixes.")


def claim_default(uow: UnitOfWork, pool: dict[str, Any]) -> None:
    key = subnet_alloc.default_key(pool["ip_version"])
    if uow.is_claimed(key):
        raise invalid_input("A default subnetpool for this IP family has already been set. Only one default may "
                            "exist per IP family")
    uow.claim(key, pool["id"])


def rescope(uow: UnitOfWork, pool: dict[str, Any]) -> None:
    """Give every network holding a subnet of `pool` the pool's (new) address scope."""
    version = pool["ip_version"]
    field = f"ipv{version}_address_scope"
    mine = subnet_alloc.pool_subnets(uow, pool["id"])
    ids = {s["id"] for s in mine}
    for net_id in sorted({s["network_id"] for s in mine}):
        if uow.list("subnets", lambda s, n=net_id: s["network_id"] == n and s["ip_version"] == version
                    and s["id"] not in ids):
            raise bad_request("Subnets of the same address family hosted on the same network must all participate "
                              "in the same address scope.", "NetworkAddressScopeAffinityError")
        net = uow.get("networks", net_id)
        if net is not None and net.get(field) != pool["address_scope_id"]:
            touch(net, {field: pool["address_scope_id"]})
            uow.put("networks", net)


RESOURCE.add_list(router, "/subnetpools", "list_pools")
RESOURCE.add_show(router, "/subnetpools/{pool_id}", "show_pool", "pool_id")


def build_pool(ctx: Context, item: SubnetPoolCreate, uow: UnitOfWork, pol: policy.Policy) -> dict[str, Any]:
    project = resolve_project(ctx, item.project_id, item.tenant_id)
    version, prefixes = prefix_info(list(item.prefixes))
    min_len = item.min_prefixlen if item.min_prefixlen is not None else subnet_alloc.DEFAULT_MIN_PREFIXLEN[version]
    max_len = item.max_prefixlen if item.max_prefixlen is not None else subnet_alloc.MAX_PREFIXLEN[version]
    default_len = item.default_prefixlen if item.default_prefixlen is not None else min_len
    now = now_iso()
    pool = {
        "id": new_id(COLLECTION),
        "name": item.name,
        "description": item.description,
        "project_id": project,
        "tenant_id": project,
        "prefixes": prefixes,
        "ip_version": version,
        "min_prefixlen": min_len,
        "max_prefixlen": max_len,
        "default_prefixlen": default_len,
        "default_quota": item.default_quota,
        "shared": item.shared,
        "is_default": item.is_default,
        "address_scope_id": item.address_scope_id,
        "tags": item.tags,
        "created_at": now,
        "updated_at": now,
        "revision_number": 0,
    }
    # Neutron's _is_attribute_explicitly_set: an attribute given its default is not "set".
    attrs = [a for a in ("shared", "is_default") if a in item.model_fields_set and getattr(item, a)]
    pol.enforce(ctx, "create_subnetpool", policy.target("subnetpool", pool), attrs)
    check_bounds(version, min_len, max_len, default_len)
    join_scope(uow, ctx, pool)
    if pool["is_default"]:
        claim_default(uow, pool)
    return pool


@router.post("/subnetpools", status_code=201)
@off_loop
async def create_pool(request: Request) -> JSONResponse:
    st = AppState.of(request)
    ctx = st.context(request)
    items, bulk = parse_create(await read_json(request), "subnetpool", "subnetpools", SubnetPoolCreate)
    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> list[dict[str, Any]]:
        pools = [build_pool(ctx, item, uow, pol) for item in items]
        for p in pools:
            rbac.initial_entries(uow, p, "subnetpool")
            uow.put(COLLECTION, p)
        return pools

    return RESOURCE.created(st, ctx, st.repo.transact(txn), bulk)


def _shared_scope_guard(uow: UnitOfWork, ctx: Context, pool: dict[str, Any]) -> None:
    """Neutron's _check_subnetpool_update_allowed."""
    scope_id = pool.get("address_scope_id")
    if scope_id is None or ctx.is_admin:
        return
    scope = uow.get("address_scopes", scope_id)
    if scope is not None and scope["project_id"] != ctx.project_id:
        raise bad_request(f"Illegal subnetpool update : subnetpool {pool['id']} cannot be updated when associated "
                          f"with shared address scope {scope_id}.", "IllegalSubnetPoolUpdate")


def apply_update(uow: UnitOfWork, ctx: Context, pool: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """`pool` with the changes in `fields`, every Neutron check applied and its side effects
    (default claim, re-scoped networks) staged; the caller stores it."""
    _shared_scope_guard(uow, ctx, pool)
    new = dict(pool)
    new.update({k: v for k, v in fields.items() if k != "prefixes"})
    if "prefixes" in fields:
        version, prefixes = prefix_info(list(fields["prefixes"]))
        if version != pool["ip_version"] or subnet_alloc.minus(pool["prefixes"], prefixes):
            raise bad_request("Illegal update to prefixes: Existing prefixes must be a subset of the new prefixes.",
                              "IllegalSubnetPoolPrefixUpdate")
        new["prefixes"] = prefixes
    check_bounds(new["ip_version"], new["min_prefixlen"], new["max_prefixlen"], new["default_prefixlen"])
    subnet_alloc.lock(uow, pool["id"])
    if new["address_scope_id"] != pool["address_scope_id"] or new["prefixes"] != pool["prefixes"]:
        join_scope(uow, ctx, new)
    if new["address_scope_id"] != pool["address_scope_id"]:
        rescope(uow, new)
    if new["is_default"] and not pool["is_default"]:
        claim_default(uow, new)
    elif pool["is_default"] and not new["is_default"]:
        uow.delete_raw(subnet_alloc.default_key(pool["ip_version"]))
    touch(new)
    return new


@router.put("/subnetpools/{pool_id}")
@off_loop
async def update_pool(pool_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    upd = parse_update(await read_json(request), "subnetpool", SubnetPoolUpdate, read_only=READ_ONLY)
    fields = {n: getattr(upd, n) for n in upd.model_fields_set}
    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> dict[str, Any]:
        pool = RESOURCE.fetch(uow, ctx, pool_id)
        attrs = sorted(a for a in fields if a != "is_default" or fields[a] != pool["is_default"])
        pol.enforce(ctx, "update_subnetpool", policy.target("subnetpool", pool), attrs)
        check_if_match(request, pool)
        new = apply_update(uow, ctx, pool, fields)
        uow.put(COLLECTION, new)
        return new

    return {"subnetpool": present(ctx, st.repo.transact(txn))}


def _prefix_body(body: Any) -> list[str]:
    """Neutron's subnetpool-prefix-ops body: `{"prefixes": [cidr, ...]}`."""
    if not isinstance(body, dict) or not isinstance(body.get("prefixes"), list):
        raise bad_request("Invalid input: the body must be {\"prefixes\": [...]}")
    out = []
    for p in body["prefixes"]:
        try:
            out.append(str(ipaddress.ip_network(p, strict=False)) if isinstance(p, str) and "/" in p else "")
        except ValueError:
            out.append("")
        if not out[-1]:
            raise invalid_input(f"'{p}' is not a valid IP subnet")
    return out


def _add_prefixes(uow: UnitOfWork, ctx: Context, pool: dict[str, Any], wanted: list[str]) -> dict[str, Any]:
    if not wanted:
        return {"prefixes": pool["prefixes"]}
    new = apply_update(uow, ctx, pool, {"prefixes": pool["prefixes"] + wanted})
    uow.put(COLLECTION, new)
    return {"prefixes": new["prefixes"]}


def _remove_prefixes(uow: UnitOfWork, ctx: Context, pool: dict[str, Any], wanted: list[str]) -> dict[str, Any]:
    if not wanted or not subnet_alloc.overlaps(pool["prefixes"], wanted):
        return {"prefixes": pool["prefixes"]}
    _shared_scope_guard(uow, ctx, pool)
    subnet_alloc.lock(uow, pool["id"])
    if subnet_alloc.overlaps([s["cidr"] for s in subnet_alloc.pool_subnets(uow, pool["id"])], wanted):
        raise bad_request("Illegal update to prefixes: One or more the prefixes to be removed is in use by a "
                          "subnet.", "IllegalSubnetPoolPrefixUpdate")
    new = dict(pool)
    touch(new, {"prefixes": subnet_alloc.minus(pool["prefixes"], wanted)})
    uow.put(COLLECTION, new)
    return {"prefixes": new["prefixes"]}


def _remove(uow: UnitOfWork, ctx: Context, pool: dict[str, Any]) -> None:
    pool_id = pool["id"]
    subnet_alloc.lock(uow, pool_id)
    if subnet_alloc.pool_subnets(uow, pool_id):
        raise bad_request("Unable to delete subnet pool: Subnet pool has existing allocations.",
                          "SubnetPoolDeleteError")
    if pool["is_default"]:
        uow.delete_raw(subnet_alloc.default_key(pool["ip_version"]))
    uow.delete_raw(subnet_alloc.lock_key(pool_id))
    rbac.delete_all(uow, pool)
    uow.delete(COLLECTION, pool_id)


for _action, _change in (("add_prefixes", _add_prefixes), ("remove_prefixes", _remove_prefixes)):
    RESOURCE.add_action(router, f"/subnetpools/{{pool_id}}/{_action}", _action, "pool_id", _action, _prefix_body,
                        _change)
RESOURCE.add_delete(router, "/subnetpools/{pool_id}", "delete_pool", "pool_id", _remove)
