"""A Keystone v3 subset under /identity: version discovery, password and token auth with
project scope, a catalog with `network` and `identity` endpoints, token validation and
revocation, and projects/users/roles/domains as declared in the config file.

Errors here have Keystone's shape (`{"error": {"code", "title", "message"}}`), not Neutron's.
Every input is checked for type and size before use (400, never 500). Failed password logins are
rate-limited per user and per source address (429 with Retry-After, api/login_limits.py).
Revocation (`DELETE /v3/auth/tokens`) is recorded in the store and honoured by every server
(services/identity_state.py); validating a revoked or otherwise invalid token answers 404, as
Keystone does.

Projects: the config file's are fixed; an admin may also create (`POST /v3/projects`) and delete
projects of its own, kept in the store under `/vxnet/identity/projects/<id>` with the name claimed
at `/vxnet/identity/project-names/<name>` in the same transaction, so names stay unique across
servers. tempest's admin tests create such a project to own resources made on its behalf. Users
created through the API (api/routers/identity_users.py) log in to the projects they hold roles
on; deleting a project drops those role assignments in the same transaction.

What the clients expect on the wire is in ../shared/NEUTRON-API-NOTES.md section 1.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from vxnet.api.auth import MAX_TOKEN_LEN, Context, credential, issue_token, new_context
from vxnet.api.errors import ApiError, unauthorized
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, off_loop, read_json
from vxnet.config import User, project_id_for
from vxnet.passwords import check_password, dummy_check
from vxnet.services.identity_state import rotate_keys
from vxnet.services.identity_users import USERS_PREFIX, StoredUser, roles_on
from vxnet.services.identity_users import dump as dump_user
from vxnet.store.contract import Delete, Op, Put, key_missing, key_unchanged

log = logging.getLogger("vxnet.identity")

MAX_NAME = 255  # Keystone's limit for user and project names
MAX_PASSWORD = 4096


class RateLimited(ApiError):
    """429: too many failed logins for this user or from this address."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(429, "Too Many Requests",
                         f"Too many failed authentication attempts; retry in {retry_after} seconds.")
        self.retry_after = retry_after


def keystone_error(exc: ApiError) -> JSONResponse:
    """Keystone's error body: `{"error": {"code", "title", "message"}}`."""
    title = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
             429: "Too Many Requests"}.get(exc.status, exc.type)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Keystone uri="/identity/v3"'
    return JSONResponse({"error": {"code": exc.status, "title": title, "message": exc.message}},
                        status_code=exc.status, headers=headers)


class KeystoneRoute(APIRoute):
    """Identity routes answer errors in Keystone's shape, not Neutron's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await inner(request)
            except ApiError as exc:
                return keystone_error(exc)

        return handler


router = Routes(prefix="/identity", tags=["identity"], route_class=KeystoneRoute)

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
@off_loop
async def versions(request: Request) -> JSONResponse:
    """Keystone's root: the list of versions (300, as Keystone answers)."""
    st = AppState.of(request)
    return JSONResponse({"versions": {"values": [_version(st.public_url(request))]}}, status_code=300)


@router.get("/v3")
@router.get("/v3/")
@off_loop
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
        "audit_ids": [ctx.audit_id, *([ctx.chain_id] if ctx.chain_id else [])],  # Keystone: [own, chain's]
        "is_domain": False,
    }
    if catalog:
        tok["catalog"] = _catalog(base)
    return {"token": tok}


def _str(value: Any, what: str, max_len: int = MAX_NAME) -> str:
    """A non-empty string of bounded length, else 400."""
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ApiError(400, "ValidationError", f"Invalid input for field '{what}': expected a string of 1 to "
                                               f"{max_len} characters.")
    return value


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ApiError(400, "ValidationError", f"Invalid input for field '{what}': expected an object.")
    return value


def _find_user(st: AppState, ref: dict[str, Any]) -> User | StoredUser | None:
    """The user a password auth names (by id, or by name): configured first, then the store's."""
    if "id" in ref:
        uid = _str(ref["id"], "user.id")
        return st.users.get(uid) or st.users.by_name(uid)
    return st.users.by_name(_str(ref.get("name"), "user.name"))


def project_name(st: AppState, pid: str) -> str | None:
    """The name of a project (the config's or one created in the store); None: no such project."""
    if pid in st.config.projects:
        return st.config.projects[pid]
    kv = st.store.get(PROJECTS_PREFIX + pid) if pid and len(pid) <= MAX_NAME else None
    return str(json.loads(kv.value)["name"]) if kv else None


def project_id_by_name(st: AppState, name: str) -> str:
    """The id of the project called `name` ("" if there is none)."""
    pid = project_id_for(name)
    if pid in st.config.projects:
        return pid
    kv = st.store.get(PROJECT_NAMES_PREFIX + name)
    return kv.value if kv else ""


def _scope_project(st: AppState, scope: Any, user: User | StoredUser) -> tuple[str, str]:
    """(project id, name) the request scopes to; an unscoped request gets the user's (default)
    project. ("", "") when there is no such project."""
    if scope is None or scope == "unscoped":
        pid = user.default_project_id or "" if isinstance(user, StoredUser) else user.project_id
    else:
        scope = _obj(scope, "scope")
        if "project" not in scope:
            raise ApiError(401, "Unauthorized", "Only project-scoped tokens are issued.")
        p = _obj(scope["project"], "scope.project")
        if "name" in p:
            pid = project_id_by_name(st, _str(p["name"], "scope.project.name"))
        else:
            pid = _str(p.get("id"), "scope.project.id")
    name = project_name(st, pid) if pid else None
    return (pid, name) if name is not None else ("", "")


def _methods(ident: dict[str, Any]) -> list[str]:
    methods = ident.get("methods")
    if not isinstance(methods, list) or not methods or len(methods) > 4 or not all(
            isinstance(m, str) for m in methods):
        raise ApiError(400, "ValidationError", "Invalid input for field 'identity.methods': expected a list of "
                                               "method names.")
    unknown = sorted(set(methods) - {"password", "token"})
    if unknown:
        raise ApiError(401, "Unauthorized", f"Attempted to authenticate with an unsupported method: {unknown[0]}.")
    return methods


def _client(request: Request) -> str:
    """The source address failed logins are counted against (the peer: a proxy's header is not trusted)."""
    return request.client.host if request.client else "?"


def _password_auth(st: AppState, request: Request, ident: dict[str, Any], scope: Any) -> Context:
    pw = _obj(ident.get("password"), "identity.password")
    uref = _obj(pw.get("user"), "identity.password.user")
    if "domain" in uref:
        _obj(uref["domain"], "user.domain")
    given = _str(uref.get("password"), "user.password", MAX_PASSWORD)
    user = _find_user(st, uref)
    who = user.id if user is not None else "?" + str(uref.get("name") or uref.get("id"))
    source = _client(request)
    wait = st.login_limiter.retry_after(who, source)
    if wait is not None:
        log.info("login for %s from %s refused: too many failures, retry in %d s", who, source, wait)
        raise RateLimited(wait)
    # counted before the (slow) check, so parallel guesses cannot all pass the limit
    # check first; a success takes it back
    st.login_limiter.failed(who, source)
    if user is not None and user.password_hash:
        ok = check_password(given, user.password, user.password_hash)
    elif user is not None:
        ok = check_password(given, user.password)
    else:
        if any(u.password_hash for u in st.config.users) or st.identity.stored_users():
            dummy_check(given)  # an unknown name costs what a known one does
        ok = False
    if not ok or user is None or not user.enabled:
        raise unauthorized()
    st.login_limiter.succeeded(who, source)
    pid, pname = _scope_project(st, scope, user)
    roles = roles_on(user, pid) if pid else ()
    if not roles:  # no role on that project (or no such project): Keystone's 401
        raise unauthorized()
    return new_context(user.id, user.name, pid, pname, roles, st.config.token_ttl,
                       st.identity.stamp(credential(user)))


def _token_auth(st: AppState, ident: dict[str, Any], scope: Any) -> Context:
    tok = _obj(ident.get("token"), "identity.token")
    old = st.check_token(_str(tok.get("id"), "token.id", MAX_TOKEN_LEN))
    if scope is not None:
        user = st.users.get(old.user_id)
        if user is None:
            raise unauthorized()
        pid, _ = _scope_project(st, scope, user)
        if pid != old.project_id:
            raise unauthorized()
    ctx = new_context(old.user_id, old.user_name, old.project_id, old.project_name, old.roles,
                      st.config.token_ttl, old.stamp, old.chain_id or old.audit_id)
    return dataclasses.replace(ctx, expires_at=min(ctx.expires_at, old.expires_at))


@router.post("/v3/auth/tokens")
@off_loop
async def create_token(request: Request) -> JSONResponse:
    """Password or token auth with project scope. 201 with X-Subject-Token."""
    st = AppState.of(request)
    body = await read_json(request)
    auth = _obj(_obj(body, "body").get("auth"), "auth")
    ident = _obj(auth.get("identity"), "auth.identity")
    methods = _methods(ident)
    scope = auth.get("scope")
    if "password" in methods:
        ctx = _password_auth(st, request, ident, scope)
    else:
        ctx = _token_auth(st, ident, scope)
    token = issue_token(st.token_key, ctx)
    nocatalog = "nocatalog" in request.query_params
    return JSONResponse(
        _token_body(ctx, st.public_url(request), methods, not nocatalog),
        status_code=201,
        headers={"X-Subject-Token": token},
    )


def _subject(st: AppState, request: Request, action: str) -> Context:
    """The token named by X-Subject-Token: 404 (as Keystone) when it is not a valid one, revoked
    included. The caller must hold a valid token itself and be an admin, a service, or the
    token's own user (Keystone's default `identity:<action>` policy)."""
    ctx = st.context(request)
    subject = request.headers.get("X-Subject-Token", "")
    if not subject:
        # Keystone: without a subject the policy target is empty, so only an admin or a service
        # passes `identity:<action>` (403 for others); then validate_token(None) raises
        # TokenNotFound("No token in the request"): 404. Nothing is revoked either way.
        if not (ctx.is_admin or "service" in ctx.roles):
            raise ApiError(403, "Forbidden", f"You are not authorized to perform the requested action: "
                                             f"identity:{action}.")
        raise ApiError(404, "Not Found", "No token in the request")
    try:
        sub = st.check_token(subject)
    except ApiError:
        raise ApiError(404, "Not Found", "Could not find token.") from None
    if not (ctx.is_admin or "service" in ctx.roles or sub.user_id == ctx.user_id):
        raise ApiError(403, "Forbidden", f"You are not authorized to perform the requested action: identity:{action}.")
    return sub


@router.get("/v3/auth/tokens")
@off_loop
async def validate_token(request: Request) -> JSONResponse:
    st = AppState.of(request)
    subject = _subject(st, request, "validate_token")
    return JSONResponse(
        _token_body(subject, st.public_url(request), ["password"], "nocatalog" not in request.query_params),
        headers={"X-Subject-Token": request.headers.get("X-Subject-Token", "")},
    )


@router.head("/v3/auth/tokens")
@off_loop
async def check_token(request: Request) -> Response:
    _subject(AppState.of(request), request, "check_token")
    return Response(status_code=200)


@router.delete("/v3/auth/tokens")
@off_loop
async def revoke_token(request: Request) -> Response:
    """Revoke the X-Subject-Token (one's own, or any as admin), on every server; tokens derived
    from it by token auth go with it. 204; 404 for a token that is not valid (any more)."""
    st = AppState.of(request)
    ctx = st.context(request)
    subject = _subject(st, request, "revoke_token")
    st.identity.revoke(subject.audit_id, subject.expires_at)
    log.info("token %s of user %s revoked by %s", subject.audit_id, subject.user_name, ctx.user_name)
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


def known_roles(st: AppState) -> list[str]:
    """Keystone's roles: Neutron's three, and every role a configured user holds (ids = names)."""
    return sorted({r for u in st.config.users for r in u.roles} | {"admin", "member", "reader"})


def _require_admin(ctx: Context) -> None:
    if not ctx.is_admin:
        raise ApiError(403, "Forbidden", "You are not authorized to perform the requested action: identity:admin.")


@router.get("/v3/projects")
@off_loop
async def list_projects(request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    name = request.query_params.get("name")
    projects = [
        p for p in sorted(_all_projects(st).values(), key=lambda x: x["name"])
        if (ctx.is_admin or p["id"] == ctx.project_id) and (name is None or p["name"] == name)
    ]
    if not ctx.is_admin and name is not None and not projects:
        # Keystone's identity:list_projects is admin-only; a member is answered only about its
        # own project. Asking about another one (existing or not: nothing is revealed) is
        # Keystone's 403, on which the `openstack` CLI takes the name or id as given
        # (`network rbac create --target-project <id>`).
        raise ApiError(403, "Forbidden", "You are not authorized to perform the requested action: "
                                         "identity:list_projects.")
    return {"projects": projects, "links": {"self": None, "next": None, "previous": None}}


@router.get("/v3/projects/{pid}")
@off_loop
async def show_project(pid: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    project = _all_projects(st).get(pid)
    if project is None or not (ctx.is_admin or pid == ctx.project_id):
        raise ApiError(404, "NotFound", f"Could not find project: {pid}.")
    return {"project": project}


@router.post("/v3/projects")
@off_loop
async def create_project(request: Request) -> JSONResponse:
    """Admin only: a project with a unique name (config names included), 201."""
    st = AppState.of(request)
    _require_admin(st.context(request))
    body = await read_json(request)
    p = body.get("project") if isinstance(body, dict) else None
    if not isinstance(p, dict) or not isinstance(p.get("name"), str) or not p["name"].strip():
        raise ApiError(400, "ValidationError", "Invalid input for field 'project': 'name' is a required property")
    name = p["name"]
    if len(name) > 64 or not name.isprintable():
        raise ApiError(400, "ValidationError", "Invalid input for field 'name': 1 to 64 printable characters.")
    description = p.get("description") or ""
    if not isinstance(description, str) or len(description) > 4096:
        raise ApiError(400, "ValidationError", "Invalid input for field 'description': a string of at most 4096 "
                                               "characters.")
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
@off_loop
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
    # Keystone drops the project's role assignments with it: in the same transaction
    holders = [(u, st.store.get(USERS_PREFIX + u.id)) for u in st.identity.stored_users() if u.roles_on(pid)]
    compares = [key_unchanged(kv)] + [key_unchanged(ukv) for _, ukv in holders if ukv is not None]
    stripped = [u.without_project(pid) for u, ukv in holders if ukv is not None]
    ops: list[Op] = [Delete(PROJECTS_PREFIX + pid), Delete(name_key)]
    ops += [Put(USERS_PREFIX + u.id, dump_user(u)) for u in stripped]
    res = st.store.txn(compares, ops)
    if not res.succeeded:
        raise ApiError(409, "Conflict", f"Project {pid} or a user with a role on it changed concurrently; try again.")
    for u in stripped:
        st.identity.note_user(u.id, u, res.revision)
    return Response(status_code=204)


@router.get("/v3/domains")
@off_loop
async def list_domains(request: Request) -> dict[str, Any]:
    AppState.of(request).context(request)
    return {"domains": [{**DOMAIN, "enabled": True, "description": "", "links": {}}]}


@router.get("/v3/roles")
@off_loop
async def list_roles(request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    st.context(request)
    name = request.query_params.get("name")
    names = [r for r in known_roles(st) if name is None or r == name]  # clients find roles by ?name=
    return {"roles": [{"id": r, "name": r, "domain_id": None, "links": {}} for r in names]}


@router.get("/v3/roles/{rid}")
@off_loop
async def show_role(rid: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    st.context(request)
    if rid not in known_roles(st):
        raise ApiError(404, "Not Found", f"Could not find role: {rid[:64]}.")
    return {"role": {"id": rid, "name": rid, "domain_id": None, "links": {}}}


@router.delete("/v3/OS-VXNET/users/{uid}/tokens")
async def revoke_user_tokens(uid: str, request: Request) -> Response:
    """A vxnet extension: void every token of a user issued until now ("log out everywhere"), on
    every server. An admin for anyone, a user for itself; 204."""
    st = AppState.of(request)
    ctx = st.context(request)
    if not (ctx.is_admin or uid == ctx.user_id):
        raise ApiError(403, "Forbidden", "You are not authorized to perform the requested action: "
                                         "identity:revoke_user_tokens.")
    if uid not in st.users:
        raise ApiError(404, "Not Found", f"Could not find user: {uid[:64]}.")
    st.identity.revoke_user(uid, st.config.token_ttl)
    log.info("every token of user %s revoked by %s", uid, ctx.user_name)
    return Response(status_code=204)


@router.post("/v3/OS-VXNET/keys/rotate")
async def rotate_signing_key(request: Request) -> dict[str, Any]:
    """Admin only, a vxnet extension (what `vxnet keys rotate` uses while a server holds the
    embedded store): a new signing key; `{"revoke": true}` also drops every older key at once."""
    st = AppState.of(request)
    ctx = st.context(request)
    _require_admin(ctx)
    body = await read_json(request)
    revoke = _obj(body, "body").get("revoke", False)
    if not isinstance(revoke, bool):
        raise ApiError(400, "ValidationError", "Invalid input for field 'revoke': expected true or false.")
    old, new = rotate_keys(st.store, st.config.token_ttl, revoke)
    log.warning("signing key rotated by %s: %s -> %s%s", ctx.user_name, old, new,
                " (older keys dropped: their tokens are void)" if revoke else "")
    return {"rotation": {"old_key_id": old, "new_key_id": new, "revoked": revoke}}
