"""The server asks no OpenTelemetry provider anything per request (api/app.py NO_TELEMETRY):
FastAPI's native telemetry would look up the global tracer, meter and logger providers on every
request to decide whether to trace it, and vxnet exports no traces."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.aio import run_in_thread
from vxnet.api import app as app_module
from vxnet.config import Config
from vxnet.store.sqlite_store import SqliteStore


def test_requests_do_not_consult_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    telemetry = pytest.importorskip("fastapi.telemetry._asgi")
    if not app_module.NO_TELEMETRY:
        pytest.skip("this FastAPI has no native telemetry")
    asked: list[str] = []

    def counting(name: str, real: Any) -> Any:
        def provider() -> Any:
            asked.append(name)
            return real()
        return provider

    for mod, name in ((telemetry.trace, "get_tracer_provider"), (telemetry.metrics, "get_meter_provider"),
                      (telemetry._logs, "get_logger_provider")):
        monkeypatch.setattr(mod, name, counting(name, getattr(mod, name)))
    store = SqliteStore(":memory:")
    app = app_module.create_app(Config(), store)

    async def requests() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return [(await c.get("/")).status_code for _ in range(3)]

    try:
        assert run_in_thread(requests) == [200, 200, 200]
    finally:
        store.close()
    assert asked == []
