"""Keystone's user API (`/identity/v3/users`, role assignments) over real HTTP, as tempest's
dynamic credentials use it: an admin creates a project and a user, grants it roles, the user logs
in and works in Neutron, and everything is taken back. Denials for non-admins, the
configuration's users kept fixed, and every change (password, enabled, roles, deletion) voiding
the user's tokens, also on a second server sharing the store.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import USERS, ServerHandle, start_server
from tests.support import http
from vxnet.services.identity_users import USER_NAMES_PREFIX, USERS_PREFIX
from vxnet.store.sqlite_store import SqliteStore

V3 = "/identity/v3"
USER = {u.name: u for u in USERS}


def keystone_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == status and body["error"]["message"], body
    return body["error"]  # type: ignore[no-any-return]


def login(url: str, name: str, password: str, project: dict[str, str] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": name, "domain": {"id": "default"}, "password": password}}}}}
    if project is not None:
        body["auth"]["scope"] = {"project": {**project, "domain": {"id": "default"}}}
    return http.post(url + V3 + "/auth/tokens", json=body, timeout=30)


def token(h: ServerHandle, name: str) -> dict[str, str]:
    return {"X-Auth-Token": h.token(name)}


def networks(url: str, tok: str) -> int:
    return http.get(url + "/v2.0/networks", headers={"X-Auth-Token": tok}, timeout=30).status_code


@pytest.fixture
def two(tmp_path) -> Iterator[tuple[ServerHandle, ServerHandle]]:
    store = SqliteStore(os.path.join(tmp_path, "vxnet.db"))
    a = start_server("", store=store)
    b = start_server("", store=store)
    yield a, b
    a.stop(close_store=False)
    b.stop()


def test_dynamic_credentials_flow_and_tokens_follow_every_change(two) -> None:
    a, b = two
    admin = token(a, "admin")
    r = http.post(a.url + V3 + "/projects", json={"project": {"name": "dyn-p", "domain_id": "default"}},
                  headers=admin)
    assert r.status_code == 201, r.text
    project = r.json()["project"]
    # tempest's create_user: name, password, domain_id, project_id, email
    r = http.post(a.url + V3 + "/users", headers=admin, json={"user": {
        "name": "dyn-u", "password": "dyn-pw-1", "domain_id": "default", "project_id": project["id"],
        "email": "dyn@example.org"}})
    assert r.status_code == 201, r.text
    user = r.json()["user"]
    assert user["name"] == "dyn-u" and user["default_project_id"] == project["id"] and user["enabled"] is True
    assert "dyn-pw-1" not in r.text and "password" not in user and len(user["id"]) == 32
    # the store holds a scrypt hash, never the password
    rec = json.loads(a.store.get(USERS_PREFIX + user["id"]).value)
    assert rec["password_hash"].startswith("$scrypt$") and "dyn-pw-1" not in json.dumps(rec)
    assert a.store.get(USER_NAMES_PREFIX + "dyn-u").value == user["id"]
    # no role yet: no token
    keystone_error(login(b.url, "dyn-u", "dyn-pw-1", {"name": "dyn-p"}), 401)
    roles = {x["name"]: x["id"] for x in http.get(a.url + V3 + "/roles", headers=admin).json()["roles"]}
    grant = f"{a.url}{V3}/projects/{project['id']}/users/{user['id']}/roles/{roles['member']}"
    assert http.put(grant, headers=admin).status_code == 204
    assert http.put(grant, headers=admin).status_code == 204  # again: no change, no error
    assert httpx.head(grant, headers=admin).status_code == 204
    listed = http.get(f"{a.url}{V3}/projects/{project['id']}/users/{user['id']}/roles", headers=admin).json()
    assert [x["name"] for x in listed["roles"]] == ["member"]
    ra = http.get(a.url + V3 + "/role_assignments", params={"user.id": user["id"]}, headers=admin).json()
    assert [(x["scope"]["project"]["id"], x["role"]["id"]) for x in ra["role_assignments"]] == [
        (project["id"], "member")]
    # the user logs in on the other server (scoped by name, by id, and by default) and works in Neutron
    for scope in ({"name": "dyn-p"}, {"id": project["id"]}, None):
        r = login(b.url, "dyn-u", "dyn-pw-1", scope)
        assert r.status_code == 201, r.text
        body = r.json()["token"]
        assert body["project"] == {"id": project["id"], "name": "dyn-p", "domain": {"id": "default", "name": "Default"}}
        assert [x["name"] for x in body["roles"]] == ["member"] and body["user"]["id"] == user["id"]
    tok = r.headers["X-Subject-Token"]
    net = http.post(a.url + "/v2.0/networks", json={"network": {"name": "dyn"}}, headers={"X-Auth-Token": tok})
    assert net.status_code == 201 and net.json()["network"]["project_id"] == project["id"], net.text
    assert http.get(f"{a.url}{V3}/users/{user['id']}", headers={"X-Auth-Token": tok}).status_code == 200  # itself
    # a second role: the old token (member only) no longer matches the user's roles
    assert http.put(grant.replace("/member", "/reader"), headers=admin).status_code == 204
    assert networks(b.url, tok) == 401
    r = login(a.url, "dyn-u", "dyn-pw-1", {"id": project["id"]})
    assert sorted(x["name"] for x in r.json()["token"]["roles"]) == ["member", "reader"]
    tok = r.headers["X-Subject-Token"]
    assert networks(b.url, tok) == 200
    # a new password voids the token everywhere; the old password stops working
    r = httpx.patch(f"{a.url}{V3}/users/{user['id']}", json={"user": {"password": "dyn-pw-2"}}, headers=admin)
    assert r.status_code == 200 and r.json()["user"]["name"] == "dyn-u", r.text
    assert networks(a.url, tok) == 401 and networks(b.url, tok) == 401
    keystone_error(login(b.url, "dyn-u", "dyn-pw-1", {"name": "dyn-p"}), 401)
    tok = login(b.url, "dyn-u", "dyn-pw-2", {"name": "dyn-p"}).headers["X-Subject-Token"]
    # disabled: tokens and logins refused; enabled again: fine
    assert httpx.patch(f"{a.url}{V3}/users/{user['id']}", json={"user": {"enabled": False}},
                       headers=admin).status_code == 200
    assert networks(b.url, tok) == 401
    keystone_error(login(b.url, "dyn-u", "dyn-pw-2", {"name": "dyn-p"}), 401)
    assert httpx.patch(f"{a.url}{V3}/users/{user['id']}", json={"user": {"enabled": True}},
                       headers=admin).status_code == 200
    tok = login(b.url, "dyn-u", "dyn-pw-2", {"name": "dyn-p"}).headers["X-Subject-Token"]
    # deleting the user voids its tokens on both servers within a second
    assert http.delete(f"{a.url}{V3}/users/{user['id']}", headers=admin).status_code == 204
    t0 = time.monotonic()
    while networks(b.url, tok) != 401:
        assert time.monotonic() - t0 < 1.0, "server b still accepts a deleted user's token"
        time.sleep(0.02)
    assert networks(a.url, tok) == 401
    keystone_error(login(b.url, "dyn-u", "dyn-pw-2", {"name": "dyn-p"}), 401)
    keystone_error(http.get(f"{a.url}{V3}/users/{user['id']}", headers=admin), 404)
    keystone_error(http.delete(f"{a.url}{V3}/users/{user['id']}", headers=admin), 404)
    keystone_error(http.put(grant, headers=admin), 404)
    assert a.store.get(USERS_PREFIX + user["id"]) is None and a.store.get(USER_NAMES_PREFIX + "dyn-u") is None
    # the name is free again (a new id: nothing of the old user's comes back)
    r = http.post(a.url + V3 + "/users", headers=admin, json={"user": {"name": "dyn-u", "password": "x"}})
    assert r.status_code == 201 and r.json()["user"]["id"] != user["id"]
    assert http.delete(f"{a.url}/v2.0/networks/{net.json()['network']['id']}", headers=admin).status_code == 204
    assert http.delete(f"{a.url}{V3}/projects/{project['id']}", headers=admin).status_code == 204


def test_user_api_is_admin_only_and_the_config_users_are_fixed(server: ServerHandle) -> None:
    url = server.url + V3
    admin, alice = token(server, "admin"), token(server, "alice")
    r = http.post(url + "/users", headers=admin, json={"user": {"name": "u-adm", "password": "pw"}})
    assert r.status_code == 201, r.text
    uid = r.json()["user"]["id"]
    alice_id = USER["alice"].id
    pid = http.get(url + "/projects", params={"name": "tenant-a"}, headers=admin).json()["projects"][0]["id"]
    grant = f"{url}/projects/{pid}/users/{uid}/roles/admin"
    # a member may do none of it, and learns nothing about other users
    keystone_error(http.post(url + "/users", headers=alice, json={"user": {"name": "evil", "password": "x"}}), 403)
    keystone_error(http.get(url + "/users", headers=alice), 403)
    keystone_error(http.get(f"{url}/users/{uid}", headers=alice), 404)
    keystone_error(httpx.patch(f"{url}/users/{uid}", headers=alice, json={"user": {"password": "mine"}}), 403)
    keystone_error(httpx.patch(f"{url}/users/{alice_id}", headers=alice, json={"user": {"enabled": False}}), 403)
    keystone_error(http.delete(f"{url}/users/{uid}", headers=alice), 403)
    keystone_error(http.put(grant, headers=alice), 403)  # no self-made admins
    keystone_error(http.put(f"{url}/projects/{pid}/users/{alice_id}/roles/admin", headers=alice), 403)
    keystone_error(http.get(url + "/role_assignments", headers=alice), 403)
    assert http.get(f"{url}/users/{alice_id}", headers=alice).json()["user"]["name"] == "alice"  # herself
    assert [u["name"] for u in http.get(url + "/users", params={"name": "u-adm"}, headers=admin).json()["users"]] \
        == ["u-adm"]
    assert {"admin", "alice", "u-adm"} <= {u["name"] for u in http.get(url + "/users", headers=admin).json()["users"]}
    assert http.get(url + "/users/" + uid, headers=alice).status_code == 404
    # nothing was changed by the refusals
    assert http.get(f"{url}/projects/{pid}/users/{uid}/roles", headers=admin).json()["roles"] == []
    assert len(http.get(url + "/users", headers=admin).json()["users"]) == len(USERS) + 1
    # the configuration's users: shown, never changed through the API
    keystone_error(httpx.patch(f"{url}/users/{alice_id}", headers=admin, json={"user": {"password": "x"}}), 403)
    keystone_error(http.delete(f"{url}/users/{alice_id}", headers=admin), 403)
    keystone_error(http.put(f"{url}/projects/{pid}/users/{alice_id}/roles/admin", headers=admin), 403)
    assert http.get(server.url + "/v2.0/networks", headers=alice).status_code == 200  # alice's token still fine
    # names are unique across the config and the store
    for name in ("alice", "u-adm"):
        keystone_error(http.post(url + "/users", headers=admin, json={"user": {"name": name, "password": "x"}}), 409)
    r = http.post(url + "/users", headers=admin, json={"user": {"name": "u-two", "password": "x"}})
    keystone_error(httpx.patch(f"{url}/users/{r.json()['user']['id']}", headers=admin,
                               json={"user": {"name": "u-adm"}}), 409)
    # unknown project, role or user
    keystone_error(http.put(f"{url}/projects/nope/users/{uid}/roles/member", headers=admin), 404)
    keystone_error(http.put(f"{url}/projects/{pid}/users/{uid}/roles/superuser", headers=admin), 404)
    keystone_error(http.put(f"{url}/projects/{pid}/users/nobody/roles/member", headers=admin), 404)
    keystone_error(http.delete(f"{url}/projects/{pid}/users/{uid}/roles/member", headers=admin), 404)


@pytest.mark.parametrize("user", [
    {},
    {"name": "x"},
    {"password": "x"},
    {"name": "", "password": "x"},
    {"name": "x" * 256, "password": "x"},
    {"name": 7, "password": "x"},
    {"name": "x", "password": "p" * 5000},
    {"name": "x", "password": 1},
    {"name": "x", "password": "x", "enabled": "yes"},
    {"name": "x", "password": "x", "default_project_id": "no-such-project"},
    {"name": "x", "password": "x", "domain_id": "other"},
    {"name": "x", "password": "x", "is_admin": True},
    {"name": "x\n", "password": "x"},
])
def test_invalid_user_bodies_are_400(shared_server: ServerHandle, user: dict[str, Any]) -> None:
    admin = token(shared_server, "admin")
    r = http.post(shared_server.url + V3 + "/users", headers=admin, json={"user": user})
    keystone_error(r, 400)
    assert [u for u in http.get(shared_server.url + V3 + "/users", headers=admin).json()["users"]
            if u["name"] == "x"] == []
    keystone_error(http.post(shared_server.url + V3 + "/users", headers=admin, content=b"[]"), 400)


def test_deleting_a_project_drops_its_role_assignments(server: ServerHandle) -> None:
    url, admin = server.url + V3, token(server, "admin")
    pid = http.post(url + "/projects", json={"project": {"name": "gone"}}, headers=admin).json()["project"]["id"]
    uid = http.post(url + "/users", headers=admin, json={"user": {"name": "u-gone", "password": "pw",
                                                                    "default_project_id": pid}}).json()["user"]["id"]
    assert http.put(f"{url}/projects/{pid}/users/{uid}/roles/member", headers=admin).status_code == 204
    tok = login(server.url, "u-gone", "pw").headers["X-Subject-Token"]  # unscoped: the default project
    assert networks(server.url, tok) == 200
    assert http.delete(f"{url}/projects/{pid}", headers=admin).status_code == 204
    assert networks(server.url, tok) == 401
    keystone_error(login(server.url, "u-gone", "pw", {"id": pid}), 401)
    ra = http.get(url + "/role_assignments", params={"user.id": uid}, headers=admin).json()["role_assignments"]
    assert ra == []
