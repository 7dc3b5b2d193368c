"""api/routing.py: `Routes` rules a path out with one regular expression before FastAPI matches
it, and changes nothing FastAPI would answer: the same handler, the same 404, 405 and
trailing-slash redirect as a plain `APIRouter`, and on the real application's 210 routes the
union pattern matches a path exactly when one of the routes does."""

from __future__ import annotations

import re
import tempfile

import httpx
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from tests.support.aio import run_in_thread
from vxnet.api.routing import Routes, paths_pattern


def _app(cls: type[APIRouter]) -> FastAPI:
    app = FastAPI()
    a, b = cls(prefix="/v2.0", tags=["a"]), cls(prefix="/v2.0", tags=["b"])

    @a.get("/ports")
    async def list_ports() -> dict:
        return {"ports": []}

    @a.put("/ports/{port_id}")
    async def update_port(port_id: str) -> dict:
        return {"updated": port_id}

    @b.get("/ports/{port_id}/tags")
    async def tags(port_id: str) -> dict:
        return {"tags": port_id}

    @b.post("/vxnet/hosts/{host}/ports-status")
    async def status(host: str) -> dict:
        return {"host": host}

    app.include_router(a)
    app.include_router(b)
    return app


REQUESTS = [("GET", "/v2.0/ports"), ("PUT", "/v2.0/ports/p1"), ("GET", "/v2.0/ports/p1"),   # 405: no GET
            ("GET", "/v2.0/ports/p1/tags"), ("POST", "/v2.0/vxnet/hosts/h1/ports-status"),
            ("GET", "/v2.0/ports/"), ("GET", "/v2.0/networks"), ("DELETE", "/v2.0/ports"),
            ("POST", "/v2.0/vxnet/hosts/h1/ports-status/"), ("GET", "/v2.0/ports/p1/tags/x")]


def _answers(app: FastAPI) -> list[tuple[int, bytes, str | None]]:
    async def ask() -> list[tuple[int, bytes, str | None]]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            out = []
            for method, path in REQUESTS:
                r = await c.request(method, path)
                out.append((r.status_code, r.content, r.headers.get("location")))
            return out

    return run_in_thread(ask)


def test_routes_answer_as_fastapi_does() -> None:
    want, got = _answers(_app(APIRouter)), _answers(_app(Routes))
    assert got == want
    codes = dict(zip(REQUESTS, (g[0] for g in got), strict=True))
    assert codes[("PUT", "/v2.0/ports/p1")] == 200 and codes[("GET", "/v2.0/ports/p1")] == 405
    assert codes[("GET", "/v2.0/networks")] == 404 and codes[("GET", "/v2.0/ports/")] == 307


def test_a_router_rules_out_paths_none_of_its_routes_matches() -> None:
    r = Routes(prefix="/v2.0")

    @r.get("/ports/{port_id}")
    async def show(port_id: str) -> dict:
        return {}

    pattern = paths_pattern(r.routes)
    assert pattern is not None
    assert pattern.match("/v2.0/ports/p1") and not pattern.match("/v2.0/ports/p1/tags")
    assert not pattern.match("/v2.0/ports") and not pattern.match("/v2.0/networks/n1")

    @r.get("/ports")
    async def index() -> dict:
        return {}

    assert r._pattern() is not None and r._pattern().match("/v2.0/ports")  # a route added later counts


def test_the_union_is_exact_on_the_real_application() -> None:
    from vxnet.api.app import create_app
    from vxnet.config import Config
    from vxnet.store import open_store

    with tempfile.TemporaryDirectory() as d:
        store = open_store(f"sqlite://{d}/x.db")
        try:
            app = create_app(Config(), store)
        finally:
            store.close()
    included = [r for r in app.router.routes if hasattr(r, "original_router")]
    assert included and all(isinstance(r.original_router, Routes) for r in included)
    every = [route for inc in included for route in inc.original_router.routes if isinstance(route, APIRoute)]
    assert len(every) > 150
    samples = set()
    for route in every:
        concrete = re.sub(r"\{[^}]+\}", "x1", route.path_format)
        samples |= {concrete, concrete + "/", concrete + "/tags", concrete.rsplit("/", 1)[0], concrete + "x"}
    for inc in included:
        pattern = inc.original_router._pattern()
        if pattern is None:
            continue
        # against the paths FastAPI really matches (an extra prefix at inclusion would show here)
        effective = [ctx.path_regex for ctx in inc.effective_route_contexts()]
        for path in samples:
            assert bool(pattern.match(path)) == any(rx.match(path) for rx in effective), path
