"""A Keystone v3 subset under /identity: version discovery, password and token auth with
project scope, a catalog with `network` and `identity` endpoints, token validation, and
read-only projects/users/roles/domains as declared in the config file.

What the clients expect on the wire is in ../shared/NEUTRON-API-NOTES.md section 1.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from vxnet.api.auth import Context, issue_token, new_context, verify_token
from vxnet.api.errors import ApiError, unauthorized
from vxnet.api.state import AppState, read_json
from vxnet.config import User, project_id_for

router = APIRouter(prefix="/identity", tags=["identity"])

DOMAIN = {"id": "default", "name": "Default"}
REGION = "RegionOne"


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def _version(base: str) -> dict[str, Any]:
    return {
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": f"{base}/identity/v3/"}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
    }


@router.get("")
@router.get("/")
async def versions(request: Request) -> JSONResponse:
    """Keystone's root: the list of versions (300, as Keystone answers)."""
    st = AppState.of(request)
    return JSONResponse({"versions": {"values": [_version(st.public_url(request))]}}, status_code=300)


@router.get("/v3")
@router.get("/v3/")
async def v3(request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    return {"version": _version(st.public_url(request))}


def _catalog(base: str) -> list[dict[str, Any]]:
    def eps(url: str, sid: str) -> list[dict[str, str]]:
        return [
            {"id": f"{sid}-{iface}", "interface": iface, "region": REGION, "region_id": REGION, "url": url}
            for iface in ("public", "internal", "admin")
        ]

    return [
        {"type": "network", "name": "neutron", "id": "vxnet-network", "endpoints": eps(base + "/", "net")},
        {"type": "identity", "name": "keystone", "id": "vxnet-identity", "endpoints": eps(base + "/identity/v3", "id")},
    ]


def _token_body(ctx: Context, base: str, methods: list[str], catalog: bool) -> dict[str, Any]:
    tok: dict[str, Any] = {
        "methods": methods,
        "user": {"id": ctx.user_id, "name": ctx.user_name, "domain": DOMAIN, "password_expires_at": None},
        "project": {"id": ctx.project_id, "name": ctx.project_name, "domain": DOMAIN},
        "roles": [{"id": r, "name": r} for r in ctx.roles],
        "expires_at": _iso(ctx.expires_at),
        "issued_at": _iso(ctx.issued_at),
        "audit_ids": [ctx.audit_id],
        "is_domain": False,
    }
    if catalog:
        tok["catalog"] = _catalog(base)
    return {"token": tok}


def _find_user(st: AppState, ref: dict[str, Any]) -> User | None:
    for u in st.config.users:
        if ref.get("id") in (u.id, u.name) or (ref.get("name") == u.name and "id" not in ref):
            return u
    return None


def _scope_project(scope: Any, default: str) -> tuple[str, str]:
    """(project id, name) the request scopes to; an unscoped request gets the user's project."""
    if not isinstance(scope, dict) or "project" not in scope:
        return project_id_for(default), default
    p = scope["project"]
    if not isinstance(p, dict):
        raise ApiError(400, "ValidationError", "Invalid scope")
    if "name" in p:
        return project_id_for(str(p["name"])), str(p["name"])
    return str(p.get("id")), ""


@router.post("/v3/auth/tokens")
async def create_token(request: Request) -> JSONResponse:
    """Password or token auth with project scope. 201 with X-Subject-Token."""
    st = AppState.of(request)
    body = await read_json(request)
    try:
        ident = body["auth"]["identity"]
        methods = list(ident["methods"])
    except (KeyError, TypeError):
        raise ApiError(400, "ValidationError", "Expecting to find identity in auth") from None
    scope = body["auth"].get("scope")
    if "password" in methods:
        uref = (ident.get("password") or {}).get("user") or {}
        user = _find_user(st, uref)
        if user is None or uref.get("password") != user.password:
            raise ApiError(401, "Unauthorized", "The request you have made requires authentication.")
        pid, pname = _scope_project(scope, user.project)
        if pid != user.project_id:
            raise unauthorized()
        ctx = new_context(user.id, user.name, user.project_id, user.project, user.roles, st.config.token_ttl)
    elif "token" in methods:
        old = verify_token(st.token_key, str((ident.get("token") or {}).get("id", "")))
        ctx = new_context(old.user_id, old.user_name, old.project_id, old.project_name, old.roles, st.config.token_ttl)
        ctx = Context(**{**ctx.__dict__, "expires_at": min(ctx.expires_at, old.expires_at)})
    else:
        raise ApiError(400, "ValidationError", f"Unsupported auth methods {methods}")
    token = issue_token(st.token_key, ctx)
    nocatalog = "nocatalog" in request.query_params
    return JSONResponse(
        _token_body(ctx, st.public_url(request), methods, not nocatalog),
        status_code=201,
        headers={"X-Subject-Token": token},
    )


@router.get("/v3/auth/tokens")
async def validate_token(request: Request) -> JSONResponse:
    st = AppState.of(request)
    st.context(request)  # the caller must hold a valid token itself
    subject = verify_token(st.token_key, request.headers.get("X-Subject-Token", ""))
    return JSONResponse(
        _token_body(subject, st.public_url(request), ["password"], True),
        headers={"X-Subject-Token": request.headers.get("X-Subject-Token", "")},
    )


@router.head("/v3/auth/tokens")
async def check_token(request: Request) -> Response:
    st = AppState.of(request)
    st.context(request)
    verify_token(st.token_key, request.headers.get("X-Subject-Token", ""))
    return Response(status_code=200)


@router.delete("/v3/auth/tokens")
async def revoke_token(request: Request) -> Response:
    """Tokens are stateless; revocation is accepted and the token simply runs to expiry."""
    st = AppState.of(request)
    st.context(request)
    return Response(status_code=204)


def _project(pid: str, name: str) -> dict[str, Any]:
    return {"id": pid, "name": name, "domain_id": "default", "enabled": True, "description": "",
            "is_domain": False, "parent_id": "default", "tags": [], "links": {}}


@router.get("/v3/projects")
async def list_projects(request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    name = request.query_params.get("name")
    projects = [
        _project(pid, n)
        for pid, n in sorted(st.config.projects.items(), key=lambda x: x[1])
        if (ctx.is_admin or pid == ctx.project_id) and (name is None or n == name)
    ]
    return {"projects": projects, "links": {"self": None, "next": None, "previous": None}}


@router.get("/v3/projects/{pid}")
async def show_project(pid: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    name = st.config.projects.get(pid)
    if name is None or not (ctx.is_admin or pid == ctx.project_id):
        raise ApiError(404, "NotFound", f"Could not find project: {pid}.")
    return {"project": _project(pid, name)}


@router.get("/v3/domains")
async def list_domains(request: Request) -> dict[str, Any]:
    AppState.of(request).context(request)
    return {"domains": [{**DOMAIN, "enabled": True, "description": "", "links": {}}]}


@router.get("/v3/users/{uid}")
async def show_user(uid: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    for u in st.config.users:
        if u.id == uid and (ctx.is_admin or u.id == ctx.user_id):
            return {"user": {"id": u.id, "name": u.name, "domain_id": "default", "enabled": True,
                             "default_project_id": u.project_id, "links": {}}}
    raise ApiError(404, "NotFound", f"Could not find user: {uid}.")


@router.get("/v3/roles")
async def list_roles(request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    st.context(request)
    names = sorted({r for u in st.config.users for r in u.roles} | {"admin", "member", "reader"})
    return {"roles": [{"id": r, "name": r, "domain_id": None, "links": {}} for r in names]}
