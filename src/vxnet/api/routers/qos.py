"""/v2.0/qos/...: QoS policies, their rules and the rule types (Neutron's `qos`,
`qos-bw-limit-direction`, `qos-default` and `qos-rule-type-details` extensions).

    /v2.0/qos/policies[/{id}]                                   GET POST / GET PUT DELETE
    /v2.0/qos/policies/{id}/bandwidth_limit_rules[/{rule}]      GET POST / GET PUT DELETE
    /v2.0/qos/policies/{id}/dscp_marking_rules[/{rule}]         (the same)
    /v2.0/qos/policies/{id}/minimum_bandwidth_rules[/{rule}]    (the same)
    /v2.0/qos/rule-types[/{type}]                               GET

Invariants (records and checks in services/qos.py):
- Neutron's policy defaults (api/policy.py QOS): only admins create, change or delete
  policies and rules, and read rule types; everyone reads the policies visible to them (their
  project's and shared ones; others' are a 404, never a 403 that would confirm they exist).
- Sharing is Neutron's RBAC (object type `qos_policy`, services/rbac.py): `shared` is the "*"
  `access_as_shared` policy; a project an RBAC policy targets sees the policy (shown to it
  with `shared` true) and may attach it to its ports and networks.
- A policy named by a port or a network cannot be deleted (409 QosPolicyInUse), nor stop being
  shared while another project that has no policy of its own names it on a port or network
  (409 RbacPolicyInUse, as Neutron's update_shared).
- Rule changes bump the policy's `revision_number`: the policy (rules embedded) is the one
  object the host views carry, and the agents converge the taps of its ports from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from vxnet.api import policy
from vxnet.api.auth import Context
from vxnet.api.collection import ResourceSpec, list_response, show_response
from vxnet.api.errors import ApiError, from_service
from vxnet.api.resource_routes import Resource
from vxnet.api.routers.networks import touch
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, off_loop, read_json
from vxnet.api.validation import (
    Body,
    Bool,
    Description,
    Name,
    ProjectId,
    ShortStr,
    Tags,
    changes,
    parse_create,
    parse_update,
    resolve_project,
)
from vxnet.services import qos as svc
from vxnet.services import rbac
from vxnet.services.repo import UnitOfWork

router = Routes(prefix="/v2.0/qos", tags=["qos"])


def policy_visible(ctx: Context, obj: dict[str, Any]) -> bool:
    return svc.policy_visible(ctx.is_admin, ctx.project_id, obj)


_visible = policy_visible


def present(ctx: Context, obj: dict[str, Any]) -> dict[str, Any]:
    return rbac.present(obj, ctx.project_id)


SPEC = ResourceSpec("policies", "policy", visible=_visible, present=present)   # stored as qos_policies/<id>


class PolicyCreate(Body):
    name: Name = ""
    description: Description = ""
    shared: Bool = False
    is_default: Bool = False
    tags: Tags = []
    project_id: ProjectId | None = None
    tenant_id: ProjectId | None = None


class PolicyUpdate(Body):
    name: Name = ""
    description: Description = ""
    shared: Bool = False
    is_default: Bool = False


class BandwidthLimitCreate(Body):
    max_kbps: int
    max_burst_kbps: int = 0
    direction: ShortStr = "egress"


class BandwidthLimitUpdate(Body):
    max_kbps: int = 0
    max_burst_kbps: int = 0
    direction: ShortStr = "egress"


class DscpMarkingCreate(Body):
    dscp_mark: int


class DscpMarkingUpdate(Body):
    dscp_mark: int = 0


class MinimumBandwidthCreate(Body):
    min_kbps: int
    direction: ShortStr = "egress"


class MinimumBandwidthUpdate(Body):
    min_kbps: int = 0
    direction: ShortStr = "egress"


RULE_MODELS: dict[str, tuple[type[Body], type[Body]]] = {
    "bandwidth_limit": (BandwidthLimitCreate, BandwidthLimitUpdate),
    "dscp_marking": (DscpMarkingCreate, DscpMarkingUpdate),
    "minimum_bandwidth": (MinimumBandwidthCreate, MinimumBandwidthUpdate),
}


RESOURCE = Resource(SPEC, store="qos_policies", missing=lambda policy_id: from_service(svc.policy_not_found(policy_id)))


def _change_policy(st: AppState, ctx: Context, policy_id: str, action: str,
                   change: Callable[[dict[str, Any]], Any]) -> Any:
    """One transaction: `action` enforced on the policy, `change` applied to it (a rule added,
    changed or deleted), the policy's revision bumped; `change`'s result is returned."""
    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> Any:
        rec = RESOURCE.fetch(uow, ctx, policy_id)
        pol.enforce(ctx, action, policy.target("policy", rec))
        result = change(rec)
        svc.bump(rec)
        uow.put("qos_policies", rec)
        return result

    return st.repo.transact(txn)


# policies ----------------------------------------------------------------------------------------

RESOURCE.add_list(router, "/policies", "list_policies")
RESOURCE.add_show(router, "/policies/{policy_id}", "show_policy", "policy_id")


@router.post("/policies", status_code=201)
@off_loop
async def create_policy(request: Request) -> JSONResponse:
    st = AppState.of(request)
    ctx = st.context(request)
    items, bulk = parse_create(await read_json(request), "policy", "policies", PolicyCreate)
    pol = policy.of(st.config)
    projects = []
    for item in items:
        project = resolve_project(ctx, item.project_id, item.tenant_id) if ctx.is_admin else ctx.project_id
        pol.enforce(ctx, "create_policy", policy.target("policy", {"project_id": project}))
        projects.append(project)

    def txn(uow: UnitOfWork) -> list[dict[str, Any]]:
        out = []
        defaults: set[str] = set()   # projects given a default policy by this request (a set: bulk bodies are long)
        for item, project in zip(items, projects, strict=True):
            rec = svc.new_policy(project, item.name, item.description, item.shared, item.is_default, item.tags)
            svc.check_default(uow, rec)
            if rec["is_default"] and project in defaults:
                raise from_service(svc.errors.Conflict("QoSPolicyDefaultAlreadyExists",
                                                       f"A default QoS policy exists for project {project}."))
            if rec["is_default"]:
                defaults.add(project)
            rbac.initial_entries(uow, rec, "qos_policy")
            uow.put("qos_policies", rec)
            out.append(rec)
        return out

    return RESOURCE.created(st, ctx, st.repo.transact(txn), bulk)


def _update(uow: UnitOfWork, ctx: Context, rec: dict[str, Any], fields: dict[str, Any]) -> None:
    shared = fields.pop("shared", None)
    if shared is not None:
        wildcard = rbac.find(rec, rbac.SHARED, rbac.WILDCARD)
        if not shared and wildcard is not None:
            rbac.check_shared_release(uow, "qos_policy", rec, rbac.WILDCARD, wildcard["id"])
        rbac.set_shared(uow, rec, bool(shared), "qos_policy")
    touch(rec, fields)
    svc.check_default(uow, rec)


def _remove(uow: UnitOfWork, ctx: Context, rec: dict[str, Any]) -> None:
    policy_id = rec["id"]
    if svc.policy_in_use(uow, policy_id):
        raise ApiError(409, "QosPolicyInUse", f"QoS Policy {policy_id} is used by a port or a network.")
    rbac.delete_all(uow, rec)
    uow.delete("qos_policies", policy_id)


RESOURCE.add_update(router, "/policies/{policy_id}", "update_policy", "policy_id", PolicyUpdate, _update)
RESOURCE.add_delete(router, "/policies/{policy_id}", "delete_policy", "policy_id", _remove)


# rules -------------------------------------------------------------------------------------------

def _add_rule_routes(rule_type: str) -> None:
    coll, member, _ = svc.RULE_TYPES[rule_type]
    create_model, update_model = RULE_MODELS[rule_type]
    spec = ResourceSpec(coll, member, visible=lambda ctx, obj: True)   # the policy's visibility decides

    async def list_rules(policy_id: str, request: Request) -> Response:
        st = AppState.of(request)
        ctx = st.context(request)
        rec = RESOURCE.fetch(st.repo, ctx, policy_id)
        return list_response(request, ctx, spec, [dict(r) for r in rec["rules"] if r["type"] == rule_type])

    async def show_rule(policy_id: str, rule_id: str, request: Request) -> dict[str, Any]:
        st = AppState.of(request)
        ctx = st.context(request)
        rec = RESOURCE.fetch(st.repo, ctx, policy_id)
        return show_response(request, ctx, spec, svc.find_rule(rec, rule_type, rule_id))

    async def create_rule(policy_id: str, request: Request) -> JSONResponse:
        st = AppState.of(request)
        ctx = st.context(request)
        items, _ = parse_create(await read_json(request), member, coll, create_model)
        values = changes(items[0])
        rule = _change_policy(st, ctx, policy_id, f"create_policy_{member}",
                              lambda rec: svc.add_rule(rec, rule_type, values))
        return JSONResponse({member: rule}, status_code=201)

    async def update_rule(policy_id: str, rule_id: str, request: Request) -> dict[str, Any]:
        st = AppState.of(request)
        ctx = st.context(request)
        values = changes(parse_update(await read_json(request), member, update_model,
                                      read_only=("id", "qos_policy_id", "type")))
        return {member: _change_policy(st, ctx, policy_id, f"update_policy_{member}",
                                       lambda rec: svc.update_rule(rec, rule_type, rule_id, values))}

    async def delete_rule(policy_id: str, rule_id: str, request: Request) -> Response:
        st = AppState.of(request)
        ctx = st.context(request)
        _change_policy(st, ctx, policy_id, f"delete_policy_{member}",
                       lambda rec: svc.delete_rule(rec, rule_type, rule_id))
        return Response(status_code=204)

    base = f"/policies/{{policy_id}}/{coll}"
    for fn in (list_rules, show_rule, create_rule, update_rule, delete_rule):
        fn.__name__ = f"{fn.__name__}_{rule_type}"
    router.add_api_route(base, off_loop(list_rules), methods=["GET"])
    router.add_api_route(base, off_loop(create_rule), methods=["POST"], status_code=201)
    router.add_api_route(base + "/{rule_id}", off_loop(show_rule), methods=["GET"])
    router.add_api_route(base + "/{rule_id}", off_loop(update_rule), methods=["PUT"])
    router.add_api_route(base + "/{rule_id}", off_loop(delete_rule), methods=["DELETE"], status_code=204)


for _t in svc.RULE_TYPES:
    _add_rule_routes(_t)


# rule types --------------------------------------------------------------------------------------

@router.get("/rule-types")
@off_loop
async def list_rule_types(request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    policy.of(st.config).enforce(ctx, "get_rule_type", {})
    return {"rule_types": [{"type": t} for t in svc.RULE_TYPES]}


@router.get("/rule-types/{rule_type}")
@off_loop
async def show_rule_type(rule_type: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    policy.of(st.config).enforce(ctx, "get_rule_type", {})
    if rule_type not in svc.RULE_TYPES:
        raise ApiError(404, "NotFound", f"QoS rule type {rule_type} could not be found.")
    return {"rule_type": {"type": rule_type, "drivers": [
        {"name": "vxnet", "supported_parameters": svc.SUPPORTED_PARAMETERS[rule_type]}]}}
