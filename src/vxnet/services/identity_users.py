"""Users created through the identity API (Keystone's `/v3/users`), kept in the store.

The configuration file's `[[identity.users]]` stay the seed: fixed, one project each, never
changed through the API. Admins may add users in the store; such a user has a name unique
among all users, a scrypt password hash (vxnet/passwords.py; the password itself is never
stored), an optional default project, and role assignments per project (Keystone's
`PUT /v3/projects/{p}/users/{u}/roles/{r}`). A token is scoped to one project on which the user
holds at least one role and carries exactly those roles.

Store layout (under `/vxnet/identity/`, which every server mirrors in memory through
services/identity_state.py, so checking a token costs no store read):
- `users/<id>`: the user record (JSON, `dump`/`parse`);
- `user-names/<name>`: the user's id: claimed in the transaction that creates or renames the
  user, so names stay unique across servers.

Invariants:
- A record changes only by compare-and-swap on its previous version; a lost race is retried
  by the caller or answered 409.
- Anything a token was issued under (the user existing and enabled, its password, its roles on
  the token's project) changing voids the token on every server as soon as the mirror has the
  change (auth.authenticate re-checks all of them on every request); deleting a user also
  stores a not-before time for it (identity_state.revoke_user).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from vxnet.config import User

USERS_PREFIX = "/vxnet/identity/users/"
USER_NAMES_PREFIX = "/vxnet/identity/user-names/"


@dataclasses.dataclass(frozen=True)
class StoredUser:
    """A user created through the API (see the module docstring)."""

    id: str
    name: str
    password_hash: str
    enabled: bool = True
    default_project_id: str | None = None
    assignments: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (project id, sorted role names)
    email: str = ""
    description: str = ""

    password = ""  # never stored: auth.credential() stamps the hash

    def roles_on(self, project_id: str) -> tuple[str, ...]:
        return next((roles for pid, roles in self.assignments if pid == project_id), ())

    def with_role(self, project_id: str, role: str, present: bool) -> StoredUser:
        """This user with `role` on `project_id` granted (present) or revoked."""
        roles = set(self.roles_on(project_id))
        roles = roles | {role} if present else roles - {role}
        rest = tuple(a for a in self.assignments if a[0] != project_id)
        if roles:
            rest = (*rest, (project_id, tuple(sorted(roles))))
        return dataclasses.replace(self, assignments=tuple(sorted(rest)))

    def without_project(self, project_id: str) -> StoredUser:
        return dataclasses.replace(self, assignments=tuple(a for a in self.assignments if a[0] != project_id))


def dump(user: StoredUser) -> str:
    d = dataclasses.asdict(user)
    d["assignments"] = {pid: list(roles) for pid, roles in user.assignments}
    return json.dumps(d, sort_keys=True)


def parse(value: str) -> StoredUser:
    """The record at `users/<id>`; ValueError if it is not one."""
    try:
        d = json.loads(value)
        assignments = tuple(sorted((str(pid), tuple(sorted(str(r) for r in roles)))
                                   for pid, roles in dict(d.get("assignments") or {}).items()))
        user = StoredUser(str(d["id"]), str(d["name"]), str(d["password_hash"]), bool(d.get("enabled", True)),
                          d.get("default_project_id") or None, assignments, str(d.get("email") or ""),
                          str(d.get("description") or ""))
    except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a user record: {e}") from None
    if not user.password_hash:
        raise ValueError("a user record without a password hash")
    return user


def roles_on(user: User | StoredUser, project_id: str) -> tuple[str, ...]:
    """The roles `user` holds on `project_id` (a configured user: on its own project only)."""
    if isinstance(user, StoredUser):
        return user.roles_on(project_id)
    return user.roles if user.project_id == project_id else ()


class StoredUsers(Protocol):
    """What the directory needs of the identity mirror."""

    def stored_user(self, user_id: str) -> StoredUser | None: ...

    def stored_users(self) -> list[StoredUser]: ...


class UserDirectory(Mapping[str, "User | StoredUser"]):
    """Every user by id: the configuration's first, then the store's (through the mirror)."""

    def __init__(self, configured: Mapping[str, User], stored: StoredUsers) -> None:
        self.configured = dict(configured)
        self.stored = stored

    def __getitem__(self, user_id: str) -> User | StoredUser:
        user = self.configured.get(user_id) or self.stored.stored_user(user_id)
        if user is None:
            raise KeyError(user_id)
        return user

    def __iter__(self) -> Iterator[str]:
        yield from self.configured
        yield from (u.id for u in self.stored.stored_users() if u.id not in self.configured)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def by_name(self, name: str) -> User | StoredUser | None:
        user = next((u for u in self.configured.values() if u.name == name), None)
        if user is None:
            user = next((u for u in self.stored.stored_users() if u.name == name), None)
        return user


def public(user: User | StoredUser, links: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keystone's user object (never the password or its hash)."""
    if isinstance(user, StoredUser):
        extra = {k: v for k, v in (("email", user.email), ("description", user.description)) if v}
        return {"id": user.id, "name": user.name, "domain_id": "default", "enabled": user.enabled,
                "default_project_id": user.default_project_id, "password_expires_at": None,
                "options": {}, "links": links or {}, **extra}
    return {"id": user.id, "name": user.name, "domain_id": "default", "enabled": user.enabled,
            "default_project_id": user.project_id, "password_expires_at": None, "options": {},
            "links": links or {}}
