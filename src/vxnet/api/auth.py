"""Tokens and the request context.

Tokens are signed, not stored: `base64url(json payload) + "." + HMAC-SHA256`, signed with a key
kept in the store (created once by a compare-and-swap), so any number of API servers issue and
accept each other's tokens with no session table. The payload names the user, project, roles,
issue and expiry times, an audit id, the audit id of the chain it was derived from (token->token
auth), and a stamp of the user's credential.

A signature alone is not enough (`authenticate`): every server also checks, from memory (see
services/identity_state.py), that
- the key that signed it is current, or retired by a rotation and still kept;
- neither the token nor its chain was revoked, nor all of its user's tokens issued before it;
- its lifetime is no longer than this server issues (a forged 10-year token is refused);
- the user still exists and is enabled (a configured user, or one created through the API and
  mirrored from the store), still has exactly these roles on this project, and its
  credential stamp is unchanged (a changed password or hash ends every older token).

`Context` is what handlers get: who asks, for which project, and what the policy lets them do.
Neutron's policy, reduced to what the API needs:
- `admin` role: everything, every project.
- `service` role (the agents): the agent endpoints, for any host, or only for the hosts
  of its configured user's `hosts` list (`Context.hosts`, from the user at every request and
  never from the token, so a changed list applies to issued tokens once the server runs with
  it: `Context.acts_for`).
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
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from vxnet.api.errors import unauthorized
from vxnet.services.identity_state import TOKEN_KEY, ensure_secret
from vxnet.services.identity_users import roles_on
from vxnet.store.contract import Store

if TYPE_CHECKING:
    from vxnet.config import User
    from vxnet.services.identity_state import IdentityState
    from vxnet.services.identity_users import StoredUser

CLOCK_SKEW = 60  # seconds a token's issue time may lie in the future (servers' clocks differ)


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
    stamp: str = ""  # keyed digest of the user's credential when the token was issued
    chain_id: str = ""  # audit id of the first token of a token->token chain ("" = this one)
    hosts: frozenset[str] | None = None  # the hosts the user acts for (None = any): filled by `authenticate`

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def can_write(self) -> bool:
        return self.is_admin or any(r != "reader" for r in self.roles)

    def owns(self, obj: dict) -> bool:
        """The object belongs to the caller's project (admins own everything)."""
        return self.is_admin or obj.get("project_id") == self.project_id

    def acts_for(self, host: str) -> bool:
        """The caller may act as the agent of `host` (role checks apart); O(1)."""
        return self.hosts is None or self.is_admin or host in self.hosts


def token_key(store: Store) -> bytes:
    """The current signing key, created on first use by whichever server gets there first."""
    return ensure_secret(store, TOKEN_KEY)


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
        "s": ctx.stamp,
        "c": ctx.chain_id,
    }
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    sig = _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
    return f"{body}.{sig}"


MAX_TOKEN_LEN = 8192


def verify_token(key: bytes | Sequence[bytes], token: str, now: float | None = None) -> Context:
    """The context of a token signed with `key` (or one of `keys`) and not expired; raises a 401
    ApiError otherwise. Signature and expiry only: `authenticate` checks the rest."""
    ctx, _ = _verify([key] if isinstance(key, bytes) else list(key), token)
    _check_expiry(ctx, now)
    return ctx


def _verify(keys: Sequence[bytes], token: str) -> tuple[Context, bytes]:
    """The context of a token signed with one of `keys`, and that key; 401 otherwise."""
    try:
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LEN:
            raise ValueError("not a token")
        body, sig = token.split(".", 1)
        signer = next((k for k in keys if k and hmac.compare_digest(
            _b64(hmac.new(k, body.encode(), hashlib.sha256).digest()), sig)), None)
        if signer is None:
            raise ValueError("bad signature")
        p = json.loads(_unb64(body))
        ctx = Context(p["u"], p["un"], p["p"], p["pn"], tuple(p["r"]), float(p["e"]), float(p["i"]), p["a"],
                      p.get("s", ""), p.get("c", ""))
        if not all(isinstance(v, str) for v in (ctx.user_id, ctx.user_name, ctx.project_id, ctx.project_name,
                                                 ctx.audit_id, ctx.stamp, ctx.chain_id, *ctx.roles)):
            raise TypeError("bad payload")
    except (ValueError, KeyError, TypeError, UnicodeError):
        raise unauthorized() from None
    return ctx, signer


def _check_expiry(ctx: Context, now: float | None) -> None:
    if ctx.expires_at <= (time.time() if now is None else now):
        raise unauthorized()


class SignedTokens:
    """Tokens whose signature this process has checked: a client's next request with the same
    token skips the HMAC and the payload's decoding (about half of `authenticate`, which every
    API request pays: ~25-45 us of a port create's ~2 ms of server CPU, docs/benchmarks.md).

    Keyed by the token's whole text, signature included: any other text is checked in full. A
    hit counts only while the key that verified it is still one of the keys a token may be
    signed with (a rotation that stops keeping it ends its tokens here too) and the token has
    not expired; every other check of `authenticate` (revocation, user, roles, stamp, lifetime)
    runs on every request, hit or not. Bounded: emptied when full. Shared by threads: single
    dict operations only."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._checked: dict[str, tuple[bytes, Context]] = {}
        self.hits = 0  # requests that skipped the signature check (tests and benchmarks read it)

    def verify(self, keys: Sequence[bytes], token: str, now: float | None = None) -> Context:
        """As `verify_token(keys, token, now)`."""
        hit = self._checked.get(token)
        if hit is not None and hit[0] in keys:
            ctx = hit[1]
            self.hits += 1
        else:
            ctx, signer = _verify(keys, token)
            if len(self._checked) >= self.size:
                self._checked.clear()
            self._checked[token] = (signer, ctx)
        _check_expiry(ctx, now)
        return ctx


def credential(user: User | StoredUser) -> str:
    """What a user's credential stamp is computed over: changes with the password or hash."""
    return f"{user.name}\0{user.password_hash or 'plain:' + user.password}"


def authenticate(
    identity: IdentityState, users: Mapping[str, User | StoredUser], token: str, max_ttl: float, now: float | None = None,
    signed: SignedTokens | None = None,
) -> Context:
    """The caller of a token, after every check of the module docstring; 401 otherwise. With
    `signed`, a token whose signature it has checked before is not checked again."""
    now = time.time() if now is None else now
    ctx = (signed.verify if signed is not None else verify_token)(identity.verify_keys(), token, now)
    user = users.get(ctx.user_id)
    if (
        identity.is_revoked(ctx.audit_id, ctx.chain_id)
        or ctx.issued_at < identity.not_before(ctx.user_id)
        or ctx.expires_at - ctx.issued_at > max_ttl + 1
        or ctx.issued_at > now + CLOCK_SKEW
        or user is None
        or not user.enabled
        or not roles_on(user, ctx.project_id)
        or sorted(roles_on(user, ctx.project_id)) != sorted(ctx.roles)
        or not hmac.compare_digest(identity.stamp(credential(user)), ctx.stamp)
    ):
        raise unauthorized()
    hosts = getattr(user, "hosts", None)  # a configured user's; API-created users have none
    return ctx if hosts is None else dataclasses.replace(ctx, hosts=hosts)


def new_context(
    user_id: str, user_name: str, project_id: str, project_name: str, roles: tuple[str, ...], ttl: int,
    stamp: str = "", chain_id: str = "",
) -> Context:
    """A fresh context for a token issued now."""
    now = time.time()
    return Context(
        user_id, user_name, project_id, project_name, roles, now + ttl, now, _b64(uuid.uuid4().bytes),
        stamp, chain_id,
    )
