"""/v2.0/rbac-policies: Neutron's RBAC policies (extensions `rbac-policies`, `rbac-qos`,
`rbac-subnetpool`, `rbac-address-scope`, `rbac-security-groups`).

A policy shares one object with one project (or "*", every project). For a network,
`access_as_shared` lets that project see the network and create ports on it (subnets stay the
owner's, by `create_subnet`'s rule), `access_as_external` lets it see the network and use it as
an external network (router gateway, floating IPs). For a QoS policy, a subnet pool, an
address scope or a security group (`access_as_shared` only) it lets the project see the object
and use it (attach the QoS policy, allocate subnets from the pool, put its pools in the scope,
put its ports in the security group or name the group as a remote group of its own rules); it
never lets the project change or delete the object (or a group's rules). Records and the
access they grant: services/rbac.py.

Who may do what (Neutron's defaults, legacy form, plus `rule:writer`):
- create: any writer (`create_rbac_policy`); a "*" target only an admin
  (`create_rbac_policy:target_tenant` = `rule:restrict_wildcard`, 403). The network must be one
  the caller owns, unless admin: a network the caller cannot see answers 400 InvalidInput
  "Network <id> could not be found." and one it sees but does not own 400 InvalidInput "Only
  admins can manipulate policies on networks they do not own" (Neutron raises both from the
  rbac callbacks, which its API turns into InvalidInput); for the other types the same with
  "objects they do not own".
- show/list: admins and the policy's own project (`get_rbac_policy`: admin_or_owner): the
  project a network is shared with does not see the policy. Others get 404
  RbacPolicyNotFound, as for a missing policy.
- update (`target_tenant` only) and delete: the policy's project or admins; update to "*" admin
  only. Taking access away from a project that still uses it: 409 RbacPolicyInUse.
- `object_type` one of `OBJECT_TYPES` (else 400); an action the type does not have: 400
  InvalidActionForType; the same (object, action, target) twice: 409 DuplicateRbacPolicy.
- Every create through this API counts against and is limited by the project's `rbac_policy`
  quota (the policies a `shared` / `router:external` flag implies count, but are never refused).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from vxnet.api import policy
from vxnet.api.auth import Context
from vxnet.api.collection import ResourceSpec
from vxnet.api.errors import ApiError, from_service, invalid_input
from vxnet.api.resource_routes import Resource
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, off_loop, read_json
from vxnet.api.validation import Body, ProjectId, ShortStr, Uuid, parse_update, resolve_project
from vxnet.services import rbac
from vxnet.services.repo import UnitOfWork

router = Routes(prefix="/v2.0", tags=["rbac-policies"])

OBJECT_TYPES = tuple(rbac.TYPES)
LABEL = {"network": "Network", "qos_policy": "QoS policy", "subnetpool": "Subnet pool",
         "address_scope": "Address scope", "security_group": "Security group"}
READ_ONLY = ("id", "object_type", "object_id", "action", "project_id", "tenant_id")


def policy_visible(ctx: Context, obj: dict[str, Any]) -> bool:
    """`get_rbac_policy`: admin_or_owner (the policy's project, not its target)."""
    return ctx.is_admin or obj["project_id"] == ctx.project_id


def not_found(policy_id: str) -> ApiError:
    return ApiError(404, "RbacPolicyNotFound", f"RBAC policy of type unknown with ID {policy_id} not found")


SPEC = ResourceSpec("rbac_policies", "rbac_policy", visible=policy_visible)
RESOURCE = Resource(SPEC, store=rbac.COLLECTION, missing=not_found)


class RbacPolicyCreate(Body):
    object_type: ShortStr
    object_id: Uuid
    action: ShortStr
    target_tenant: ShortStr
    project_id: ProjectId | None = None
    tenant_id: ProjectId | None = None


class RbacPolicyUpdate(Body):
    target_tenant: ShortStr


def _object_type(value: str) -> str:
    """Neutron's convert_valid_object_type."""
    normalized = value.strip().lower()
    if normalized not in OBJECT_TYPES:
        raise invalid_input(f"'{value}' is not a valid RBAC object type")
    return normalized


def _object_for_owner(uow: UnitOfWork, ctx: Context, object_type: str, object_id: str) -> dict[str, Any]:
    """The object a create or update acts on: it must be the caller's (or the caller an
    admin); else Neutron's 400 InvalidInput (see the module docstring)."""
    obj = uow.get(rbac.TYPES[object_type][0], object_id)
    if obj is None or not rbac.visible(ctx.is_admin, ctx.project_id, obj):
        raise invalid_input(f"{LABEL[object_type]} {object_id} could not be found")
    if not ctx.is_admin and obj["project_id"] != ctx.project_id:
        what = "networks" if object_type == "network" else "objects"
        raise invalid_input(f"Only admins can manipulate policies on {what} they do not own")
    return obj


def _check_release(uow: UnitOfWork, object_type: str, obj: dict[str, Any], entry: dict[str, Any],
                   new_target: str | None = None) -> None:
    if object_type == "network":
        rbac.check_release(uow, obj, entry, new_target)
    else:
        rbac.check_shared_release(uow, object_type, obj, entry["target_tenant"], entry["id"], new_target)


def build_policies(uow: UnitOfWork, ctx: Context, items: list[RbacPolicyCreate], pol: policy.Policy
                   ) -> list[dict[str, Any]]:
    """The policies of a create, in order (`rbac.Adding`: each object read and written once)."""
    adding = rbac.Adding(uow)
    out = []
    for item in items:
        project = resolve_project(ctx, item.project_id, item.tenant_id)
        object_type = _object_type(item.object_type)
        wanted = {"project_id": project, "object_type": object_type, "object_id": item.object_id,
                  "action": item.action, "target_tenant": item.target_tenant}
        pol.enforce(ctx, "create_rbac_policy", policy.target("rbac_policy", wanted),
                    ["object_type", "object_id", "target_tenant"])
        if (err := rbac.valid_action(item.action, object_type)) is not None:
            raise from_service(err)
        obj = adding.staged(object_type, item.object_id) or _object_for_owner(uow, ctx, object_type, item.object_id)
        out.append(adding.add(object_type, obj, item.action, item.target_tenant, project))
    adding.finish()
    return out


RESOURCE.add_list(router, "/rbac-policies", "list_policies")
RESOURCE.add_show(router, "/rbac-policies/{policy_id}", "show_policy", "policy_id")


RESOURCE.add_create(router, "/rbac-policies", "create_policy", RbacPolicyCreate, None, build_policies)


@router.put("/rbac-policies/{policy_id}")
@off_loop
async def update_policy(policy_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    upd = parse_update(await read_json(request), "rbac_policy", RbacPolicyUpdate, READ_ONLY)
    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> dict[str, Any]:
        record = RESOURCE.fetch(uow, ctx, policy_id)
        new = {**record, "target_tenant": upd.target_tenant}
        pol.enforce(ctx, "update_rbac_policy", policy.target("rbac_policy", new), ["target_tenant"])
        object_type = record["object_type"]
        obj = _object_for_owner(uow, ctx, object_type, record["object_id"])
        entry = next(e for e in rbac.entries(obj) if e["id"] == policy_id)
        _check_release(uow, object_type, obj, entry, upd.target_tenant)
        rbac.retarget(obj, policy_id, upd.target_tenant)
        uow.put(rbac.TYPES[object_type][0], obj)
        uow.put(rbac.COLLECTION, new)
        return new

    return {"rbac_policy": st.repo.transact(txn)}


def _remove(uow: UnitOfWork, ctx: Context, record: dict[str, Any]) -> None:
    policy_id = record["id"]
    object_type = record["object_type"]
    coll = rbac.TYPES[object_type][0]
    obj = uow.get(coll, record["object_id"])
    if obj is None:  # cannot happen (an object's delete removes its policies); drop the orphan
        uow.delete(rbac.COLLECTION, policy_id)
        return
    entry = next((e for e in rbac.entries(obj) if e["id"] == policy_id), None)
    if entry is not None:
        _check_release(uow, object_type, obj, entry)
    rbac.remove(uow, obj, policy_id)
    uow.put(coll, obj)


RESOURCE.add_delete(router, "/rbac-policies/{policy_id}", "delete_policy", "policy_id", _remove, if_match=False)
