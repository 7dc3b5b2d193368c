"""What every request handler can reach: config, store, repository, token key, context."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from vxnet.api.auth import Context, authenticate
from vxnet.api.body import parse_json
from vxnet.api.errors import unauthorized
from vxnet.api.login_limits import LoginLimiter
from vxnet.config import Config
from vxnet.services.identity_state import IdentityState
from vxnet.services.repo import Repo
from vxnet.store.contract import Store


class AppState:
    """Per-application state, reachable as `AppState.of(request)`."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.repo = Repo(store)
        self.identity = IdentityState(store)  # signing keys and revocations, mirrored by a watch
        self.users = {u.id: u for u in config.users}
        self.login_limiter = LoginLimiter(config.login_failures_per_user, config.login_failures_per_source,
                                          config.login_failure_window)
        self.hub: Any = None  # the agents' view hub, set by routers/agent_stream.setup()

    @property
    def token_key(self) -> bytes:
        """The key new tokens are signed with (it changes when the keys are rotated)."""
        return self.identity.signing_key

    def check_token(self, token: str) -> Context:
        """The caller of `token` after every check (auth.authenticate); 401 otherwise."""
        return authenticate(self.identity, self.users, token, self.config.token_ttl)

    @staticmethod
    def of(request: Request) -> AppState:
        return request.app.state.vxnet  # type: ignore[no-any-return]

    def context(self, request: Request) -> Context:
        """The authenticated caller; 401 without a valid X-Auth-Token."""
        cached = getattr(request.state, "ctx", None)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        token = request.headers.get("X-Auth-Token")
        if not token:
            raise unauthorized()
        ctx = self.check_token(token)
        request.state.ctx = ctx
        return ctx

    def public_url(self, request: Request) -> str:
        """Base URL the catalog and links use: the config's, else the request's own host."""
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        return str(request.base_url).rstrip("/")


async def read_json(request: Request) -> Any:
    """The request body as JSON, within the server's size and depth limits; a clear 400 (or
    413) when it is not (see `api/body.py`)."""
    raw = await request.body()
    return parse_json(raw, AppState.of(request).config.max_json_depth)
