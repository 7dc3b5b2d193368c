"""/v2.0/quotas: Neutron's quota API (extensions `quotas` and `quota_details`).

- `GET /v2.0/quotas`: admin only; the projects whose limits were set through the API, each
  with its effective limits plus `project_id`/`tenant_id`.
- `GET /v2.0/quotas/{project_id}`, `.../default`, `.../details` (`{limit, used, reserved}`):
  the caller's own project for anyone holding a token of it (reader too); another project's
  only for an admin (403 PolicyNotAuthorized `get_quota`, as Neutron).
- `PUT /v2.0/quotas/{project_id}` `{"quota": {"port": 3, ...}}`: admin only (`update_quota`);
  each value an integer >= -1 (-1 = unlimited), unknown resources are 400. `check_limit: true`
  (what `openstack quota set` sends unless `--force`) refuses a limit below the current usage;
  `force` is accepted. Answers the effective limits.
- `DELETE /v2.0/quotas/{project_id}`: admin only (`delete_quota`); back to the defaults, 204
  (404 ProjectQuotaNotFound when none were set, as Neutron).
- `GET /v2.0/quotas/tenant` and `/project`: the caller's project id.

Enforcement itself is services/quotas.py; `setup` installs it on the server's repository.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from vxnet.api.auth import Context
from vxnet.api.errors import ApiError, bad_request, policy_denied
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, off_loop, read_json
from vxnet.services.quotas import MAX_LIMIT, RESOURCES, QuotaEngine

router = Routes(prefix="/v2.0", tags=["quotas"])


def setup(app: FastAPI, state: AppState) -> None:
    """Install quota counting/enforcement on the server's repository."""
    engine = QuotaEngine(state.config.quotas)
    engine.install(state.repo)
    app.state.quotas = engine


def _engine(request: Request) -> QuotaEngine:
    return request.app.state.quotas  # type: ignore[no-any-return]


def _may_read(ctx: Context, project_id: str) -> None:
    if project_id != ctx.project_id and not ctx.is_admin:
        raise policy_denied("get_quota")


def _with_project(limits: dict[str, Any], project_id: str) -> dict[str, Any]:
    return {**limits, "project_id": project_id, "tenant_id": project_id}


@router.get("/quotas")
@off_loop
async def list_quotas(request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    if not ctx.is_admin:
        raise policy_denied("get_quota")
    return {"quotas": [_with_project(limits, p) for p, limits in _engine(request).all_overrides(st.store)]}


@router.get("/quotas/tenant")
@off_loop
async def quota_tenant(request: Request) -> dict[str, Any]:
    ctx = AppState.of(request).context(request)
    return {"tenant": {"tenant_id": ctx.project_id}}


@router.get("/quotas/project")
@off_loop
async def quota_project(request: Request) -> dict[str, Any]:
    ctx = AppState.of(request).context(request)
    return {"project": {"project_id": ctx.project_id}}


@router.get("/quotas/{project_id}")
@off_loop
async def show_quota(project_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    _may_read(st.context(request), project_id)
    return {"quota": _engine(request).limits(st.store, project_id)}


@router.get("/quotas/{project_id}/default")
@off_loop
async def default_quota(project_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    _may_read(st.context(request), project_id)
    engine = _engine(request)
    return {"quota": {r: engine.defaults[r] for r in RESOURCES}}


@router.get("/quotas/{project_id}/details")
@off_loop
async def quota_details(project_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    _may_read(st.context(request), project_id)
    engine = _engine(request)
    limits = engine.limits(st.store, project_id)
    used = engine.usage(st.repo, project_id)
    return {"quota": {r: {"limit": limits[r], "used": used[r], "reserved": 0} for r in RESOURCES}}


def _limit_value(resource: str, value: Any) -> int:
    """Neutron's convert_to_int + type:range [-1, DB_INTEGER_MAX_VALUE], with its wording."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise bad_request(f"Invalid input for {resource}. Reason: '{value}' is not an integer.")
    try:
        limit = int(value)
    except ValueError:
        raise bad_request(f"Invalid input for {resource}. Reason: '{value}' is not an integer.") from None
    if limit < -1:
        raise bad_request(f"Invalid input for {resource}. Reason: '{limit}' is too small - must be at least '-1'.")
    if limit > MAX_LIMIT:
        raise bad_request(f"Invalid input for {resource}. Reason: '{limit}' is too large - must be no "
                          f"larger than '{MAX_LIMIT}'.")
    return limit


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise bad_request(f"Invalid input for {name}. Reason: '{value}' cannot be converted to boolean.")


@router.put("/quotas/{project_id}")
@off_loop
async def update_quota(project_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    if not ctx.is_admin:
        raise policy_denied("update_quota")
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("quota"), dict) or len(body) != 1:
        raise bad_request("Resource body required: expected 'quota'")
    items = dict(body["quota"])
    check_limit = _flag("check_limit", items.pop("check_limit", False))
    _flag("force", items.pop("force", False))
    unknown = sorted(k for k in items if k not in RESOURCES)
    if unknown:
        raise bad_request("Unrecognized attribute(s) '" + ", ".join(unknown) + "'")
    if not project_id or len(project_id) > 255:
        raise ApiError(400, "BadRequest", f"Invalid project id '{project_id}'")
    changes = {r: _limit_value(r, v) for r, v in items.items()}
    limits = _engine(request).set_limits(st.repo, project_id, changes, check_limit)
    return {"quota": limits}


@router.delete("/quotas/{project_id}", status_code=204)
@off_loop
async def delete_quota(project_id: str, request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)
    if not ctx.is_admin:
        raise policy_denied("delete_quota")
    if not _engine(request).delete_limits(st.repo, project_id):
        raise ApiError(404, "ProjectQuotaNotFound", f"Quota for project {project_id} could not be found.")
    return Response(status_code=204)
