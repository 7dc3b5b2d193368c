"""What every request handler can reach: config, store, repository, token key, context."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from vxnet.api.auth import Context, token_key, verify_token
from vxnet.api.body import parse_json
from vxnet.api.errors import unauthorized
from vxnet.config import Config
from vxnet.services.repo import Repo
from vxnet.store.contract import Store


class AppState:
    """Per-application state, reachable as `AppState.of(request)`."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.repo = Repo(store)
        self.token_key = token_key(store)
        self.hub: Any = None  # the agents' view hub, set by routers/agent_stream.setup()

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
        ctx = verify_token(self.token_key, token)
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
