"""The vxnet server application: Neutron v2.0 at `/` and `/v2.0/...`, Keystone v3 subset at
`/identity/v3`, Prometheus metrics at `/metrics`, OpenAPI at `/openapi.json`.

Error contract: every error is a NeutronError body with a 4xx status. Unknown paths give 404,
wrong methods 405 with an `Allow` header, both in Neutron's shape. `/openapi.json` is built by
`api/openapi.py` from the request models. An unexpected exception is logged and turned into
a 500 NeutronError: that is a bug to fix, never an expected outcome.

Every request passes `api/middleware.py`'s RequestGuard first (request ids, body size limit,
access and audit log). `GET /v2.0/` lists the collections the registered routes serve, and
`/v2.0/extensions` the advertised extensions whose routes are registered, both derived from the
routes at the first request, so a router added later shows up with no list to edit.

`/metrics`: with `[server] metrics_listen` it is served only on that address (a separate plain
HTTP listener for a management network) and the API port answers 404; otherwise the API port
serves it to admin tokens only, or to anyone with `[server] metrics_public = true`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from vxnet.api import nova, openapi, ops_metrics, policy
from vxnet.api.errors import ApiError, from_service, policy_denied
from vxnet.api.extensions import served_extensions
from vxnet.api.middleware import RequestGuard
from vxnet.api.routers import (
    address_scopes,
    agent_stream,
    agents,
    floatingips,
    identity,
    identity_users,
    network_ip_availabilities,
    networks,
    operations,
    ports,
    qos,
    quotas,
    rbac_policies,
    routers,
    security_groups,
    subnetpools,
    subnets,
    tags,
    trunks,
    ui,
)
from vxnet.api.state import AppState, run_store
from vxnet.buildinfo import register_build_info
from vxnet.config import Config
from vxnet.services.errors import ServiceError
from vxnet.services.repo import ClaimTaken, Conflict
from vxnet.store.contract import Store, StoreUnavailable, TxnTooLarge

log = logging.getLogger("vxnet.api")

# Resource routers, one module per resource (api/routers/<name>.py, each exposing `router` and
# optionally `setup(app, state)`). Imported explicitly: a missing or broken module stops the
# server at start instead of leaving its resource silently unserved.
ROUTER_MODULES: tuple[ModuleType, ...] = (
    identity,
    identity_users,
    networks,
    subnets,
    subnetpools,
    address_scopes,
    ports,
    routers,
    floatingips,
    security_groups,
    agents,
    tags,
    quotas,
    network_ip_availabilities,
    qos,
    rbac_policies,
    trunks,
    agent_stream,
    operations,
    ui,
)

# FastAPI's native OpenTelemetry (0.16x): unless switched off, every request asks OpenTelemetry's
# global providers whether anything is configured (15-27 us of server CPU per request on the
# 2-vCPU VM, ~1% of a port create; docs/benchmarks.md). vxnet exports Prometheus metrics and
# no traces: off, where this FastAPI has it.
NO_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {}
)

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# `<collection>` or, under one of Neutron's namespaces, `<namespace>/<collection>` (`qos/policies`)
NAMESPACES = ("qos",)
_COLLECTION_PATH = re.compile(r"/v2\.0/((?:(?:" + "|".join(NAMESPACES) + r")/)?[a-z][a-z0-9_-]*)")


def route_table(app: FastAPI) -> dict[str, set[str]]:
    """Every routed path template with its methods: the OpenAPI document's (which sees into
    included routers whatever the FastAPI version) plus the app's own top-level routes."""
    table: dict[str, set[str]] = {}
    for path, ops in app.openapi().get("paths", {}).items():
        table.setdefault(path, set()).update(m.upper() for m in ops)
    for r in app.routes:
        if isinstance(getattr(r, "path", None), str):
            table.setdefault(r.path, set()).update(getattr(r, "methods", None) or ())
    return table


def served_collections(table: dict[str, set[str]]) -> list[str]:
    """The collections `GET /v2.0/<collection>` is routed for (sorted), but `extensions`."""
    out = set()
    for path, methods in table.items():
        m = _COLLECTION_PATH.fullmatch(path)
        if m and "GET" in methods and m.group(1) != "extensions":
            out.add(m.group(1))
    return sorted(out)


def member_name(collection: str) -> str:
    """Neutron's resource name of a collection: `security-groups` -> `security_group`,
    `network-ip-availabilities` -> `network_ip_availability`, `qos/policies` -> `policy`."""
    name = collection.rpartition("/")[2].replace("-", "_")
    if name.endswith("ies"):
        return name[:-3] + "y"
    return name.removesuffix("s")


SPEC_ENV = "VXNET_SERVER_SPEC"


def app_from_env() -> FastAPI:
    """Factory for `vxnet server --workers N`: each worker process opens its own store client
    from the settings the parent put in the environment."""
    from vxnet import heap, logsetup
    from vxnet.config import load_config
    from vxnet.store import open_store

    heap.limit_malloc_arenas()  # each worker process, as `vxnet server` does (vxnet/heap.py)
    spec = json.loads(os.environ[SPEC_ENV])
    if not logging.getLogger().handlers:  # a fresh worker process: log like the parent does
        logsetup.configure(str(spec.get("log_level", "warning")), str(spec.get("log_format", "text")))
        if spec.get("config"):
            logsetup.reload_on_sighup(lambda: load_config(spec["config"]).log_level)
    cfg = load_config(spec["config"]).with_overrides(listen=spec["listen"], store=spec["store"],
                                                     data_dir=spec["data_dir"])
    return create_app(cfg, open_store(cfg.store, cfg.data_dir))


def create_app(config: Config, store: Store) -> FastAPI:
    """Build the ASGI application over an open store."""
    app = FastAPI(title="vxnet", version="2.0", docs_url=None, redoc_url=None, **NO_TELEMETRY)
    state = AppState(config, store)
    policy.of(config)  # build the enforcer now: a bad policy_file fails the start, not a request
    app.state.vxnet = state
    _install_metrics(app, state)
    _install_errors(app)
    app.add_middleware(RequestGuard, max_body_bytes=config.max_body_bytes)  # last added = outermost
    if config.access_log:
        for name in ("vxnet.access", "vxnet.audit"):
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.INFO)
    discovered: dict[str, Any] = {}

    def discovery() -> dict[str, Any]:
        """Collections and extensions, from the routes (all registered before the first request)."""
        if not discovered:
            table = route_table(app)
            discovered["collections"] = served_collections(table)
            discovered["extensions"] = served_extensions(set(table))
        return discovered

    @app.get("/", tags=["discovery"])
    async def versions(request: Request) -> dict[str, Any]:
        base = state.public_url(request)
        return {"versions": [{"id": "v2.0", "status": "CURRENT",
                              "links": [{"rel": "self", "href": f"{base}/v2.0/"}]}]}

    @app.get("/v2.0/", tags=["discovery"])
    async def resources(request: Request) -> dict[str, Any]:
        state.context(request)
        base = state.public_url(request)
        return {"resources": [
            {"name": member_name(c), "collection": c,
             "links": [{"rel": "self", "href": f"{base}/v2.0/{c}"}]}
            for c in discovery()["collections"]
        ]}

    @app.get("/v2.0/extensions", tags=["discovery"])
    async def extensions(request: Request) -> dict[str, Any]:
        state.context(request)
        return {"extensions": discovery()["extensions"]}

    @app.get("/v2.0/extensions/{alias}", tags=["discovery"])
    async def extension(alias: str, request: Request) -> dict[str, Any]:
        state.context(request)
        for e in discovery()["extensions"]:
            if e["alias"] == alias:
                return {"extension": e}
        raise ApiError(404, "ExtensionNotFound", f"Extension with alias {alias} does not exist")

    for mod in ROUTER_MODULES:
        app.include_router(mod.router)
        setup = getattr(mod, "setup", None)
        if setup is not None:
            setup(app, state)
    nova.setup(app, state)  # after quotas: its stage hook wraps theirs
    openapi.install(app)
    return app


def allowed_methods(request: Request) -> str:
    """The `Allow` header of a 405: every method some route fully matches the request's path
    with (Starlette's own header names only the first matching route's methods)."""
    methods = set()
    for method in HTTP_METHODS:
        scope = {**request.scope, "method": method}
        if any(r.matches(scope)[0] == Match.FULL for r in request.app.router.routes):
            methods.add(method)
    return ", ".join(sorted(methods))


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        err = from_service(exc)
        headers = {"Retry-After": "1"} if err.status == 503 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(ClaimTaken)
    async def claim_taken(request: Request, exc: ClaimTaken) -> JSONResponse:
        err = ApiError(409, "Conflict", f"Resource {exc.key.split('/', 2)[-1]} is in use; try again")
        return JSONResponse(err.body(), status_code=409)

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> JSONResponse:
        err = ApiError(409, "Conflict", str(exc))
        return JSONResponse(err.body(), status_code=409)

    @app.exception_handler(TxnTooLarge)
    async def too_large(request: Request, exc: TxnTooLarge) -> JSONResponse:
        err = ApiError(400, "BadRequest", "The request changes too many objects at once for the store; "
                                          f"split the bulk request into smaller ones ({exc})")
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(StoreUnavailable)
    async def unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        err = ApiError(503, "ServiceUnavailable", f"The store is unavailable: {exc}")
        return JSONResponse(err.body(), status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = ApiError(400, "BadRequest", f"Invalid request: {exc.errors()[0].get('msg', 'bad input')}")
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err = ApiError(404, "HTTPNotFound", f"The resource could not be found: {request.url.path}")
        elif exc.status_code == 405:
            err = ApiError(405, "HTTPMethodNotAllowed", f"Method {request.method} not allowed on {request.url.path}")
        else:
            err = ApiError(exc.status_code, "HTTPError", str(exc.detail))
        headers = {"Allow": allowed_methods(request)} if exc.status_code == 405 else exc.headers
        return JSONResponse(err.body(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        err = ApiError(500, "InternalError", f"Request failed: internal server error ({type(exc).__name__})")
        return JSONResponse(err.body(), status_code=500)


def _install_metrics(app: FastAPI, state: AppState) -> None:
    registry = CollectorRegistry()
    requests = Counter("vxnet_api_requests", "API requests", ["method", "route", "status"], registry=registry)
    latency = Histogram("vxnet_api_request_seconds", "API request latency", ["method", "route"], registry=registry,
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
    revision = Gauge("vxnet_store_revision", "Current store revision", registry=registry)
    revision.set_function(lambda: ops_metrics.revision_or_nan(state.store))
    ops_metrics.register(registry, state)
    register_build_info(registry)
    app.state.metrics_registry = registry

    class Measure:
        """Plain ASGI middleware (Starlette's BaseHTTPMiddleware costs 5-12% per request)."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await self.inner(scope, receive, send)
                return
            start = time.perf_counter()
            status = {"code": 500}

            async def send_wrapper(message: Any) -> None:
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            try:
                await self.inner(scope, receive, send_wrapper)
            finally:
                path = getattr(scope.get("route"), "path", "unmatched")
                latency.labels(scope["method"], path).observe(time.perf_counter() - start)
                requests.labels(scope["method"], path, str(status["code"])).inc()

    app.add_middleware(Measure)
    config = state.config

    if config.metrics_listen:
        _serve_metrics_apart(app, registry, config.metrics_listen)
        return

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        if not config.metrics_public and not state.context(request).is_admin:
            raise policy_denied("get_metrics")
        # off the event loop: the store-derived gauges read the store (ops_metrics.py)
        return Response(await run_store(generate_latest, registry), media_type=CONTENT_TYPE_LATEST)


def _serve_metrics_apart(app: FastAPI, registry: CollectorRegistry, listen: str) -> None:
    """Serve `registry` on `listen` (HOST:PORT) for as long as the application runs."""
    host, _, port = listen.rpartition(":")
    previous = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        try:
            server, thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
            log.info("metrics served on http://%s/metrics", listen)
        except OSError as e:  # e.g. a second `--workers` process: the API must still come up
            log.warning("metrics_listen %s: cannot listen (%s); this process serves no metrics", listen, e)
            server = thread = None
        try:
            async with previous(a) as inner:
                yield inner
        finally:
            if server is not None and thread is not None:
                server.shutdown()
                server.server_close()
                thread.join(5)

    app.router.lifespan_context = lifespan
