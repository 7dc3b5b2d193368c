"""Keystone's user API under /identity/v3, as far as tools that create their own users need it
(tempest's dynamic credentials: create a project and a user, grant it roles on the project, log
in, delete both afterwards).

- `POST /v3/users`, `GET /v3/users` (`?name=`), `PATCH`/`DELETE /v3/users/{id}`: admin only
  (403 otherwise). `GET /v3/users/{id}`: an admin, or the user itself (404 for others).
- `PUT`/`HEAD`/`GET`/`DELETE /v3/projects/{p}/users/{u}/roles/{r}` and
  `GET /v3/projects/{p}/users/{u}/roles`: role assignments, admin only; `GET /v3/role_assignments`
  (`?user.id=`, `?scope.project.id=`) lists them (configured users included).
- Users of the configuration file are the seed: shown, never changed (403). Users created here
  live in the store (services/identity_users.py), with a scrypt hash of their password;
  changing one (password, enabled, roles) or deleting it voids its tokens on every server.

Errors have Keystone's shape (identity.KeystoneRoute). Every input is checked for type and size.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from vxnet.api.auth import Context
from vxnet.api.errors import ApiError
from vxnet.api.routers.identity import (
    MAX_NAME,
    MAX_PASSWORD,
    KeystoneRoute,
    _obj,
    _str,
    known_roles,
    project_name,
)
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, off_loop, read_json
from vxnet.config import User
from vxnet.passwords import hash_password
from vxnet.services.identity_users import (
    USER_NAMES_PREFIX,
    USERS_PREFIX,
    StoredUser,
    dump,
    parse,
    public,
    roles_on,
)
from vxnet.store.contract import Compare, Delete, Put, key_missing, key_unchanged

router = Routes(prefix="/identity", tags=["identity"], route_class=KeystoneRoute)

CREATE_KEYS = {"name", "password", "enabled", "default_project_id", "project_id", "domain_id", "email",
               "description", "options"}
PATCH_KEYS = CREATE_KEYS - {"domain_id"}
MAX_TEXT = 4096


def _forbidden(action: str) -> ApiError:
    return ApiError(403, "Forbidden", f"You are not authorized to perform the requested action: identity:{action}.")


def _user_not_found(uid: str) -> ApiError:
    return ApiError(404, "Not Found", f"Could not find user: {uid[:64]}.")


def _text(body: dict[str, Any], key: str) -> str:
    v = body.get(key) or ""
    if not isinstance(v, str) or len(v) > MAX_TEXT:
        raise ApiError(400, "ValidationError", f"Invalid input for field '{key}': a string of at most {MAX_TEXT} "
                                               "characters.")
    return v


def _checked(st: AppState, body: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    """The attributes of a user body, each of the right type and size (400 otherwise)."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, "ValidationError", f"Invalid input for field '{unknown[0][:64]}': not supported here.")
    out: dict[str, Any] = {}
    if "name" in body:
        name = _str(body["name"], "name")
        if not name.strip() or not name.isprintable():
            raise ApiError(400, "ValidationError", "Invalid input for field 'name': printable characters expected.")
        out["name"] = name
    if "password" in body:
        out["password"] = _str(body["password"], "password", MAX_PASSWORD)
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            raise ApiError(400, "ValidationError", "Invalid input for field 'enabled': expected true or false.")
        out["enabled"] = body["enabled"]
    if "domain_id" in body and body["domain_id"] not in ("default", None):
        raise ApiError(400, "ValidationError", "Invalid input for field 'domain_id': only the default domain exists.")
    for key in ("default_project_id", "project_id"):  # tempest sends `project_id`
        if body.get(key) is not None:
            pid = _str(body[key], key)
            if project_name(st, pid) is None:
                raise ApiError(400, "ValidationError", f"Invalid input for field '{key}': no project {pid[:64]}.")
            out["default_project_id"] = pid
        elif key in body and key == "default_project_id":
            out["default_project_id"] = None
    for key in ("email", "description"):
        if key in body:
            out[key] = _text(body, key)
    if "options" in body:
        _obj(body["options"], "options")
    return out


def _stored(st: AppState, uid: str) -> tuple[StoredUser, Any]:
    """The store's user record (and its key-value, for compare-and-swap); 403 for a user of
    the configuration file, 404 when there is none."""
    if uid in st.users.configured:
        raise ApiError(403, "Forbidden", f"User {uid} is declared in the configuration file and cannot be changed "
                                         "through the API.")
    kv = st.store.get(USERS_PREFIX + uid) if len(uid) <= MAX_NAME else None
    if kv is None:
        raise _user_not_found(uid)
    return parse(kv.value), kv


def _name_taken(st: AppState, name: str) -> ApiError:
    return ApiError(409, "Conflict", f"Conflict occurred attempting to store user - Duplicate entry found with name "
                                     f"{name[:64]} at domain ID default.")


def _links(st: AppState, request: Request, uid: str) -> dict[str, Any]:
    return {"self": f"{st.public_url(request)}/identity/v3/users/{uid}"}


@router.post("/v3/users")
@off_loop
async def create_user(request: Request) -> JSONResponse:
    """Admin only: a user in the store, 201 (Keystone's body, never the password)."""
    st = AppState.of(request)
    ctx = st.context(request)
    if not ctx.is_admin:
        raise _forbidden("create_user")
    attrs = _checked(st, _obj(_obj(await read_json(request), "body").get("user"), "user"), CREATE_KEYS)
    if "name" not in attrs or "password" not in attrs:
        raise ApiError(400, "ValidationError", "Invalid input for field 'user': 'name' and 'password' are required.")
    name = attrs["name"]
    if st.users.by_name(name) is not None:
        raise _name_taken(st, name)
    user = StoredUser(uuid.uuid4().hex, name, hash_password(attrs["password"]), attrs.get("enabled", True),
                      attrs.get("default_project_id"), (), attrs.get("email", ""), attrs.get("description", ""))
    res = st.store.txn([key_missing(USER_NAMES_PREFIX + name), key_missing(USERS_PREFIX + user.id)],
                       [Put(USER_NAMES_PREFIX + name, user.id), Put(USERS_PREFIX + user.id, dump(user))])
    if not res.succeeded:
        raise _name_taken(st, name)
    st.identity.note_user(user.id, user, res.revision)
    return JSONResponse({"user": public(user, _links(st, request, user.id))}, status_code=201)


@router.get("/v3/users")
@off_loop
async def list_users(request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    if not ctx.is_admin:
        raise _forbidden("list_users")
    name = request.query_params.get("name")
    users = [st.users[uid] for uid in st.users]
    return {"users": [public(u, _links(st, request, u.id)) for u in users if name is None or u.name == name],
            "links": {"self": f"{st.public_url(request)}/identity/v3/users", "next": None, "previous": None}}


@router.get("/v3/users/{uid}")
@off_loop
async def show_user(uid: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    user = st.users.get(uid)
    if user is None or not (ctx.is_admin or user.id == ctx.user_id):
        raise _user_not_found(uid)
    return {"user": public(user, _links(st, request, user.id))}


@router.patch("/v3/users/{uid}")
@off_loop
async def update_user(uid: str, request: Request) -> dict[str, Any]:
    """Admin only: name, password, enabled, default project, email, description of a user of the
    store. A new password or `enabled: false` voids the user's tokens (auth.authenticate)."""
    st = AppState.of(request)
    ctx = st.context(request)
    if not ctx.is_admin:
        raise _forbidden("update_user")
    attrs = _checked(st, _obj(_obj(await read_json(request), "body").get("user"), "user"), PATCH_KEYS)
    user, kv = _stored(st, uid)
    changes = {k: v for k, v in attrs.items() if k != "password"}
    if "password" in attrs:
        changes["password_hash"] = hash_password(attrs["password"])
    new = dataclasses.replace(user, **changes)
    compares: list[Compare] = [key_unchanged(kv)]
    ops: list[Any] = [Put(USERS_PREFIX + uid, dump(new))]
    if new.name != user.name:
        if any(u.name == new.name for u in st.users.configured.values()):
            raise _name_taken(st, new.name)
        compares.append(key_missing(USER_NAMES_PREFIX + new.name))
        ops += [Put(USER_NAMES_PREFIX + new.name, uid), Delete(USER_NAMES_PREFIX + user.name)]
    res = st.store.txn(compares, ops)
    if not res.succeeded:
        if new.name != user.name and st.store.get(USER_NAMES_PREFIX + new.name) is not None:
            raise _name_taken(st, new.name)
        raise ApiError(409, "Conflict", f"User {uid} changed concurrently; try again.")
    st.identity.note_user(uid, new, res.revision)
    return {"user": public(new, _links(st, request, uid))}


@router.delete("/v3/users/{uid}")
@off_loop
async def delete_user(uid: str, request: Request) -> Response:
    """Admin only: delete a user of the store; its tokens are void at once on every server."""
    st = AppState.of(request)
    ctx = st.context(request)
    if not ctx.is_admin:
        raise _forbidden("delete_user")
    user, kv = _stored(st, uid)
    res = st.store.txn([key_unchanged(kv)], [Delete(USERS_PREFIX + uid), Delete(USER_NAMES_PREFIX + user.name)])
    if not res.succeeded:
        raise ApiError(409, "Conflict", f"User {uid} changed concurrently; try again.")
    st.identity.note_user(uid, None, res.revision)
    st.identity.revoke_user(uid, st.config.token_ttl)  # belt and braces: the record is gone anyway
    return Response(status_code=204)


# --- role assignments ----------------------------------------------------------------------------

def _assignment_target(st: AppState, ctx: Context, pid: str, uid: str, rid: str | None) -> None:
    if not ctx.is_admin:
        raise _forbidden("create_grant")
    if project_name(st, pid) is None:
        raise ApiError(404, "Not Found", f"Could not find project: {pid[:64]}.")
    if uid not in st.users:
        raise _user_not_found(uid)
    if rid is not None and rid not in known_roles(st):
        raise ApiError(404, "Not Found", f"Could not find role: {rid[:64]}.")


def _role(rid: str) -> dict[str, Any]:
    return {"id": rid, "name": rid, "domain_id": None, "links": {}}


def _grant(st: AppState, pid: str, uid: str, rid: str, present: bool) -> None:
    for _ in range(20):
        user, kv = _stored(st, uid)
        new = user.with_role(pid, rid, present)
        if new == user:
            return
        res = st.store.txn([key_unchanged(kv)], [Put(USERS_PREFIX + uid, dump(new))])
        if res.succeeded:
            st.identity.note_user(uid, new, res.revision)
            return
    raise ApiError(409, "Conflict", f"User {uid} changed concurrently; try again.")


@router.put("/v3/projects/{pid}/users/{uid}/roles/{rid}")
@off_loop
async def grant_role(pid: str, uid: str, rid: str, request: Request) -> Response:
    """Admin only: give a user of the store a role on a project (204; again: 204)."""
    st = AppState.of(request)
    _assignment_target(st, st.context(request), pid, uid, rid)
    _grant(st, pid, uid, rid, True)
    return Response(status_code=204)


@router.delete("/v3/projects/{pid}/users/{uid}/roles/{rid}")
@off_loop
async def revoke_role(pid: str, uid: str, rid: str, request: Request) -> Response:
    """Admin only: take the role back (204); the user's tokens for that project lose it at once
    (a token's roles must equal the user's, auth.authenticate). 404 if it was not granted."""
    st = AppState.of(request)
    _assignment_target(st, st.context(request), pid, uid, rid)
    if rid not in roles_on(st.users[uid], pid):
        raise ApiError(404, "Not Found", f"Could not find role assignment with role: {rid[:64]}, user or group: "
                                         f"{uid[:64]}, project, domain, or system: {pid[:64]}.")
    _grant(st, pid, uid, rid, False)
    return Response(status_code=204)


@router.head("/v3/projects/{pid}/users/{uid}/roles/{rid}")
@router.get("/v3/projects/{pid}/users/{uid}/roles/{rid}")
@off_loop
async def check_role(pid: str, uid: str, rid: str, request: Request) -> Response:
    st = AppState.of(request)
    _assignment_target(st, st.context(request), pid, uid, rid)
    if rid not in roles_on(st.users[uid], pid):
        raise ApiError(404, "Not Found", f"Could not find role assignment with role: {rid[:64]}.")
    return Response(status_code=204)


@router.get("/v3/projects/{pid}/users/{uid}/roles")
@off_loop
async def list_user_roles(pid: str, uid: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    _assignment_target(st, st.context(request), pid, uid, None)
    return {"roles": [_role(r) for r in roles_on(st.users[uid], pid)], "links": {"self": None, "next": None,
                                                                                   "previous": None}}


def _assignments(user: User | StoredUser) -> list[tuple[str, str]]:
    if isinstance(user, StoredUser):
        return [(pid, r) for pid, roles in user.assignments for r in roles]
    return [(user.project_id, r) for r in user.roles]


@router.get("/v3/role_assignments")
@off_loop
async def list_role_assignments(request: Request) -> dict[str, Any]:
    """Admin only: every (user, project, role), filtered by `user.id` and `scope.project.id`."""
    st = AppState.of(request)
    if not st.context(request).is_admin:
        raise _forbidden("list_role_assignments")
    q = request.query_params
    out = []
    for uid in st.users:
        if q.get("user.id") not in (None, uid):
            continue
        for pid, rid in _assignments(st.users[uid]):
            if q.get("scope.project.id") not in (None, pid):
                continue
            out.append({"role": {"id": rid}, "user": {"id": uid}, "scope": {"project": {"id": pid}},
                        "links": {"assignment": f"{st.public_url(request)}/identity/v3/projects/{pid}/users/{uid}"
                                                f"/roles/{rid}"}})
    return {"role_assignments": out, "links": {"self": None, "next": None, "previous": None}}
