"""What every request handler can reach: config, store, repository, token key, context."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from vxnet.api.auth import Context, token_key, verify_token
from vxnet.api.errors import ApiError, unauthorized
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
    """The request body as JSON; a clear 400 when it is not."""
    raw = await request.body()
    if not raw:
        raise ApiError(400, "BadRequest", "Request body is empty or is not valid JSON")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "MalformedRequestBody", "Malformed request body: body is not valid JSON") from None
