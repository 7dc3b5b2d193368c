"""What every request handler can reach: config, store, repository, token key, context, and
`run_store`, the one way a handler runs blocking store work.

Store calls are synchronous (an etcd transaction is a network round trip, retries sleep), so an
`async def` handler never makes them itself: it hands the whole piece of work (a repo
transaction, a service call, a read) to `run_store`, which runs it on a worker thread of the
loop's store pool (STORE_THREADS at once; the rest wait in its queue without blocking the loop).
The event loop only parses, validates and streams.

The hop is the standard library's executor, not anyio's `to_thread.run_sync`: per call that one
added a loop pass (its checkpoint), a capacity limiter's acquire and release and a cancel scope,
~25-30 us of CPU per request of the ~1.5-2 ms a port create or bind costs (docs/benchmarks.md,
session 18). What it did is kept: the work runs in a copy of the caller's context (the request
id the store writes carry, services/repo.py REQUEST_ID); a cancelled caller stops waiting at
once while started work runs its course on its thread, and queued work does not start.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import weakref
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from fastapi import Request

from vxnet.api.auth import Context, SignedTokens, authenticate
from vxnet.api.body import parse_json
from vxnet.api.errors import unauthorized
from vxnet.api.login_limits import LoginLimiter
from vxnet.config import Config
from vxnet.services.identity_state import IdentityState
from vxnet.services.identity_users import UserDirectory
from vxnet.services.repo import Repo
from vxnet.services.view_hub import Hub
from vxnet.store.contract import Store

P = ParamSpec("P")
T = TypeVar("T")
STORE_THREADS = 32  # concurrent store calls per server process; more wait their turn
# One pool per loop (a server's, a test's): when the loop is gone, so is its pool, whose idle
# threads then end (a ThreadPoolExecutor's workers stop once the executor is collected).
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ThreadPoolExecutor] = weakref.WeakKeyDictionary()


async def run_store(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking store work `fn(*args, **kwargs)` on a worker thread (bounded), in a copy of
    the caller's context; its result. Exceptions propagate as if called directly."""
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="vxnet-store")
    return await loop.run_in_executor(pool, functools.partial(contextvars.copy_context().run, fn, *args, **kwargs))


def off_loop(handler: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorate an `async def` request handler whose only awaits are on the request body
    (`read_json`): the body is read on the event loop, then the whole handler runs on a store
    worker thread (`run_store`), store calls and retry sleeps included. A handler that awaits
    anything else fails loudly (RuntimeError) instead of blocking or deadlocking."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        for value in (*args, *kwargs.values()):
            if isinstance(value, Request):
                await value.body()  # cached on the request: the handler's own read returns at once
        return await run_store(_drive, handler, args, kwargs)

    return wrapper


def _drive(handler: Callable[..., Coroutine[Any, Any, T]], args: Any, kwargs: Any) -> T:
    """Run a coroutine that never suspends to completion (on the calling thread)."""
    coro = handler(*args, **kwargs)
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError(f"{handler.__qualname__} awaited something that needs the event loop; it cannot be off_loop")


class AppState:
    """Per-application state, reachable as `AppState.of(request)`."""

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.repo = Repo(store)
        self.identity = IdentityState(store)  # signing keys and revocations, mirrored by a watch
        self.users = UserDirectory({u.id: u for u in config.users}, self.identity)  # config, then store
        self.signed_tokens = SignedTokens()  # signatures checked once per token (auth.py)
        self.login_limiter = LoginLimiter(config.login_failures_per_user, config.login_failures_per_source,
                                          config.login_failure_window)
        self.hub: Hub | None = None  # the server's one store watch, set by routers/agent_stream.setup()
        self.announcement: Any = None  # this server's key in the store (services/servers.py), set by routers/operations

    @property
    def token_key(self) -> bytes:
        """The key new tokens are signed with (it changes when the keys are rotated)."""
        return self.identity.signing_key

    def check_token(self, token: str) -> Context:
        """The caller of `token` after every check (auth.authenticate); 401 otherwise."""
        return authenticate(self.identity, self.users, token, self.config.token_ttl, signed=self.signed_tokens)

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
