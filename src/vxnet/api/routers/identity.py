"""A Keystone v3 subset under /identity: version discovery, password and token auth with
project scope, a catalog with `network` and `identity` endpoints, token validation, and
projects/users/roles/domains as declared in the config file.

Projects: the config file's are fixed; an admin may also create (`POST /v3/projects`) and delete
projects of its own, kept in the store under `/vxnet/identity/projects/<id>` with the name claimed
at `/vxnet/identity/project-names/<name>` in the same transaction, so names stay unique across
servers. tempest's admin tests create such a project to own resources made on its behalf. No
users are created, so nobody can log in to such a project; it only names an owner.

What the clients expect on the wire is in ../shared/NEUTRON-API-NOTES.md section 1.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from vxnet.api.auth import Context, issue_token, new_context, verify_token
from vxnet.api.errors import ApiError, unauthorized
from vxnet.api.state import AppState, read_json
from vxnet.config import User, project_id_for
from vxnet.store.contract import Delete, Put, key_missing, key_unchanged

router = APIRouter(prefix="/identity", tags=["identity"])

DOMAIN = {"id": "default", "name": "Default"}
PROJECTS_PREFIX = "/vxnet/identity/projects/"
PROJECT_NAMES_PREFIX = "/vxnet/identity/project-names/"
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
    if not isinstance(ident, dict) or not all(isinstance(m, str) for m in methods):
        raise ApiError(400, "ValidationError", "Invalid input for field 'identity'")
    if "password" in methods:
        pw = ident.get("password") or {}
        uref = (pw.get("user") or {}) if isinstance(pw, dict) else None
        if not isinstance(uref, dict):
            raise ApiError(400, "ValidationError", "Invalid input for field 'identity.password.user'")
        user = _find_user(st, uref)
        if user is None or uref.get("password") != user.password:
            raise ApiError(401, "Unauthorized", "The request you have made requires authentication.")
        pid, pname = _scope_project(scope, user.project)
        if pid != user.project_id:
            raise unauthorized()
        ctx = new_context(user.id, user.name, user.project_id, user.project, user.roles, st.config.token_ttl)
    elif "token" in methods:
        tok = ident.get("token") or {}
        if not isinstance(tok, dict):
            raise ApiError(400, "ValidationError", "Invalid input for field 'identity.token'")
        old = verify_token(st.token_key, str(tok.get("id", "")))
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


def _project(pid: str, name: str, description: str = "") -> dict[str, Any]:
    return {"id": pid, "name": name, "domain_id": "default", "enabled": True, "description": description,
            "is_domain": False, "parent_id": "default", "tags": [], "links": {}}


def _all_projects(st: AppState) -> dict[str, dict[str, Any]]:
    """Every project: the config file's and the ones admins created, by id."""
    out = {pid: _project(pid, name) for pid, name in st.config.projects.items()}
    kvs, _ = st.store.range(PROJECTS_PREFIX)
    for kv in kvs:
        rec = json.loads(kv.value)
        out.setdefault(rec["id"], _project(rec["id"], rec["name"], rec.get("description", "")))
    return out


def _require_admin(ctx: Context) -> None:
    if not ctx.is_admin:
        raise ApiError(403, "Forbidden", "You are not authorized to perform the requested action: identity:admin.")


@router.get("/v3/projects")
async def list_projects(request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    name = request.query_params.get("name")
    projects = [
        p for p in sorted(_all_projects(st).values(), key=lambda x: x["name"])
        if (ctx.is_admin or p["id"] == ctx.project_id) and (name is None or p["name"] == name)
    ]
    return {"projects": projects, "links": {"self": None, "next": None, "previous": None}}


@router.get("/v3/projects/{pid}")
async def show_project(pid: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    project = _all_projects(st).get(pid)
    if project is None or not (ctx.is_admin or pid == ctx.project_id):
        raise ApiError(404, "NotFound", f"Could not find project: {pid}.")
    return {"project": project}


@router.post("/v3/projects")
async def create_project(request: Request) -> JSONResponse:
    """Admin only: a project with a unique name (config names included), 201."""
    st = AppState.of(request)
    _require_admin(st.context(request))
    body = await read_json(request)
    p = body.get("project") if isinstance(body, dict) else None
    if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not p["name"].strip():
        raise ApiError(400, "ValidationError", "Invalid input for field 'project': 'name' is a required property")
    name = p["name"]
    description = p.get("description") or ""
    if not isinstance(description, str):
        raise ApiError(400, "ValidationError", "Invalid input for field 'description': not a string")
    if project_id_for(name) in st.config.projects:
        raise ApiError(409, "Conflict", f"Conflict occurred attempting to store project - Duplicate entry {name}.")
    pid = uuid.uuid4().hex
    rec = json.dumps({"id": pid, "name": name, "description": description})
    name_key = PROJECT_NAMES_PREFIX + name
    res = st.store.txn([key_missing(name_key)], [Put(name_key, pid), Put(PROJECTS_PREFIX + pid, rec)])
    if not res.succeeded:
        raise ApiError(409, "Conflict", f"Conflict occurred attempting to store project - Duplicate entry {name}.")
    return JSONResponse({"project": _project(pid, name, description)}, status_code=201)


@router.delete("/v3/projects/{pid}")
async def delete_project(pid: str, request: Request) -> Response:
    """Admin only: delete a project an admin created (the config file's are fixed). 204."""
    st = AppState.of(request)
    _require_admin(st.context(request))
    if pid in st.config.projects:
        raise ApiError(403, "Forbidden", f"Project {pid} is declared in the configuration file and cannot be deleted.")
    kv = st.store.get(PROJECTS_PREFIX + pid)
    if kv is None:
        raise ApiError(404, "NotFound", f"Could not find project: {pid}.")
    name_key = PROJECT_NAMES_PREFIX + json.loads(kv.value)["name"]
    res = st.store.txn([key_unchanged(kv)], [Delete(PROJECTS_PREFIX + pid), Delete(name_key)])
    if not res.succeeded:
        raise ApiError(404, "NotFound", f"Could not find project: {pid}.")
    return Response(status_code=204)


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
