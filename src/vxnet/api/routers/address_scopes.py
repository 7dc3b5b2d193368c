"""/v2.0/address-scopes: Neutron's address scopes (extension `address-scope`).

An address scope is a set of subnet pools whose prefixes never overlap; subnets allocated from
those pools are in the scope (networks show it as `ipv4_address_scope`/`ipv6_address_scope`),
and routers do not route between subnets of different scopes (compute/routing.py).

Invariants:
- Fields as Neutron: id, name, project_id/tenant_id, shared, ip_version (4 or 6, required,
  never changed). No standard attributes (Neutron's address scopes have none).
- Visibility: admins, the owner, and the projects the scope is shared with
  (`get_address_scope`): everyone for a `shared` scope, one project by an RBAC policy (object
  type `address_scope`, services/rbac.py; `shared` is the "*" policy and is shown true to a
  targeted project), which may then put its pools in the scope; others get
  404 AddressScopeNotFound. Writes follow Neutron's policy (`create_address_scope:shared` and
  `update_address_scope:shared` are admin only); a shared scope cannot be unshared (400).
- A scope with pools cannot be deleted (409 AddressScopeInUse). Pools joining a scope read and
  touch the scope's lock key `/vxnet/address-scope-pools/<id>`; the delete reads it too, so a
  pool joining concurrently and the delete cannot both commit.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator

from vxnet.api import policy
from vxnet.api.auth import Context
from vxnet.api.collection import ResourceSpec
from vxnet.api.errors import ApiError, bad_request, conflict
from vxnet.api.resource_routes import Resource
from vxnet.api.routing import Routes
from vxnet.api.validation import Body, Bool, Name, ProjectId, resolve_project
from vxnet.services import rbac
from vxnet.services.repo import ROOT, UnitOfWork, new_id

router = Routes(prefix="/v2.0", tags=["address-scopes"])
COLLECTION = "address_scopes"


def lock_key(scope_id: str) -> str:
    """Read and touched by every pool joining the scope, and by the scope's delete."""
    return f"{ROOT}address-scope-pools/{scope_id}"


def scope_visible(ctx: Context, obj: dict[str, Any]) -> bool:
    return rbac.visible(ctx.is_admin, ctx.project_id, obj)


def present(ctx: Context, obj: dict[str, Any]) -> dict[str, Any]:
    return rbac.present(obj, ctx.project_id)


def scope_not_found(scope_id: str) -> ApiError:
    return ApiError(404, "AddressScopeNotFound", f"Address scope {scope_id} could not be found.")


SPEC = ResourceSpec(COLLECTION, "address_scope", visible=scope_visible, present=present)
RESOURCE = Resource(SPEC, missing=scope_not_found)


def _ip_version(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int | str) or str(v) not in ("4", "6"):
        raise ValueError(f"{v} is not in valid values [4, 6]")
    return int(v)


class AddressScopeCreate(Body):
    name: Name = ""
    shared: Bool = False
    ip_version: Annotated[int, BeforeValidator(_ip_version)]
    project_id: ProjectId | None = None
    tenant_id: ProjectId | None = None


class AddressScopeUpdate(Body):
    name: Name = ""
    shared: Bool = False


def get_for_pool(uow: UnitOfWork, ctx: Context, scope_id: str) -> dict[str, Any]:
    """The scope a pool names (read guarded), or 404 if the caller cannot see it; the pool then
    joins it, so its lock key is touched."""
    scope = RESOURCE.fetch(uow, ctx, scope_id)
    uow.get_raw(lock_key(scope_id))
    uow.touch(lock_key(scope_id))
    return scope


RESOURCE.add_list(router, "/address-scopes", "list_scopes")
RESOURCE.add_show(router, "/address-scopes/{scope_id}", "show_scope", "scope_id")


def _build(uow: UnitOfWork, ctx: Context, item: AddressScopeCreate, pol: policy.Policy) -> dict[str, Any]:
    project = resolve_project(ctx, item.project_id, item.tenant_id)
    attrs = sorted(n for n in item.model_fields_set if n == "shared" and item.shared)
    obj = {"id": new_id(COLLECTION), "name": item.name, "project_id": project, "tenant_id": project,
           "shared": item.shared, "ip_version": item.ip_version}
    pol.enforce(ctx, "create_address_scope", policy.target("address_scope", obj), attrs)
    rbac.initial_entries(uow, obj, "address_scope")
    uow.put(COLLECTION, obj)
    return obj


RESOURCE.add_create(router, "/address-scopes", "create_scope", AddressScopeCreate, _build)


def _apply_update(uow: UnitOfWork, ctx: Context, obj: dict[str, Any], fields: dict[str, Any]) -> None:
    if obj["shared"] and fields.get("shared") is False:
        raise bad_request(f"Unable to update address scope {obj['id']} : Shared address scope can't be "
                          "unshared.", "AddressScopeUpdateError")
    shared = fields.pop("shared", None)
    if shared is not None:
        rbac.set_shared(uow, obj, bool(shared), "address_scope")
    obj.update(fields)


def _remove(uow: UnitOfWork, ctx: Context, obj: dict[str, Any]) -> None:
    scope_id = obj["id"]
    uow.get_raw(lock_key(scope_id))  # guard: no pool may join meanwhile
    if uow.list("subnetpools", lambda p: p.get("address_scope_id") == scope_id):
        raise conflict("AddressScopeInUse", f"Unable to complete operation on address scope {scope_id}. "
                                            "There are one or more subnet pools in use on the address scope.")
    uow.delete_raw(lock_key(scope_id))
    rbac.delete_all(uow, obj)
    uow.delete(COLLECTION, scope_id)


RESOURCE.add_update(router, "/address-scopes/{scope_id}", "update_scope", "scope_id", AddressScopeUpdate,
                    _apply_update, read_only=("id", "ip_version", "project_id", "tenant_id"), if_match=False)
RESOURCE.add_delete(router, "/address-scopes/{scope_id}", "delete_scope", "scope_id", _remove, if_match=False)
