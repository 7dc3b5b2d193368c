"""Tokens and the request context.

Tokens are stateless: `base64url(json payload) + "." + HMAC-SHA256`, signed with a key kept in
the store (created once by a compare-and-swap), so any number of API servers issue and accept
each other's tokens with no shared session state. The payload names the user, project, roles,
issue and expiry times and an audit id.

`Context` is what handlers get: who asks, for which project, and what the policy lets them do.
Neutron's policy, reduced to what the API needs:
- `admin` role: everything, every project.
- `member` (or any role other than reader): read and write its own project's objects, read
  shared and external networks.
- only `reader`: read like a member, every write is 403.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import secrets
import time
import uuid

from vxnet.api.errors import unauthorized
from vxnet.store.contract import Put, Store, key_missing

TOKEN_KEY = "/vxnet/secret/token-key"


@dataclasses.dataclass(frozen=True)
class Context:
    """The caller of one request."""

    user_id: str
    user_name: str
    project_id: str
    project_name: str
    roles: tuple[str, ...]
    expires_at: float = 0.0
    issued_at: float = 0.0
    audit_id: str = ""

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def can_write(self) -> bool:
        return self.is_admin or any(r != "reader" for r in self.roles)

    def owns(self, obj: dict) -> bool:
        """The object belongs to the caller's project (admins own everything)."""
        return self.is_admin or obj.get("project_id") == self.project_id


def token_key(store: Store) -> bytes:
    """The signing key, created on first use by whichever server gets there first."""
    kv = store.get(TOKEN_KEY)
    if kv is None:
        store.txn([key_missing(TOKEN_KEY)], [Put(TOKEN_KEY, secrets.token_hex(32))])
        kv = store.get(TOKEN_KEY)
        assert kv is not None
    return bytes.fromhex(kv.value)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(key: bytes, ctx: Context) -> str:
    """Sign a token for `ctx` (its expires_at/issued_at/audit_id are used as given)."""
    payload = {
        "u": ctx.user_id,
        "un": ctx.user_name,
        "p": ctx.project_id,
        "pn": ctx.project_name,
        "r": list(ctx.roles),
        "e": ctx.expires_at,
        "i": ctx.issued_at,
        "a": ctx.audit_id,
    }
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    sig = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    return f"{body}.{sig}"


def verify_token(key: bytes, token: str, now: float | None = None) -> Context:
    """The context of a valid, unexpired token; raises a 401 ApiError otherwise."""
    try:
        body, sig = token.split(".", 1)
        want = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(want, sig):
            raise ValueError("bad signature")
        p = json.loads(_unb64(body))
        ctx = Context(p["u"], p["un"], p["p"], p["pn"], tuple(p["r"]), p["e"], p["i"], p["a"])
    except (ValueError, KeyError, TypeError):
        raise unauthorized() from None
    if ctx.expires_at <= (time.time() if now is None else now):
        raise unauthorized()
    return ctx


def new_context(
    user_id: str, user_name: str, project_id: str, project_name: str, roles: tuple[str, ...], ttl: int
) -> Context:
    """A fresh context for a token issued now."""
    now = time.time()
    return Context(
        user_id, user_name, project_id, project_name, roles, now + ttl, now, _b64(uuid.uuid4().bytes)
    )
