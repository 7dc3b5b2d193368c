"""/v2.0/vxnet/status and /v2.0/vxnet/doctor: the operators' view of the cluster (admin only),
and the agents' answers to doctor requests (service role, like the other agent endpoints).

- `GET /v2.0/vxnet/status`: this server, the announced servers, the store's health (a read,
  timed) and every host (`services/operations.build_status`).
- `POST /v2.0/vxnet/doctor` `{"repair": bool, "hosts": [names] | null}` -> 202 with the request
  id and the hosts expected to answer (alive ones among those named); agents get it in their
  view stream. `GET /v2.0/vxnet/doctor/{id}`: the answers so far.
- `POST /v2.0/vxnet/hosts/{host}/doctor/{id}`: an agent's answer (its drift list).

The server announces itself once serving (`services/servers.py`); its key expires SERVER_TTL
after it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from vxnet import buildinfo
from vxnet.api.errors import bad_request, policy_denied
from vxnet.api.routers.agent_stream import hub_of, require_agent
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, read_json, run_store
from vxnet.services import operations, servers

router = Routes(prefix="/v2.0/vxnet", tags=["operations"])

RESULT_MAX_BYTES = 512 * 1024


def setup(app: FastAPI, state: AppState) -> None:
    """Announce this server while the app runs (refreshed on a timer, off the loop)."""
    ann = servers.Announcement(state.store, state.config.public_url or f"http://{state.config.listen}")
    state.announcement = ann
    registry = getattr(app.state, "metrics_registry", None)
    if registry is not None:
        registry.register(HostsCollector(state))
    previous = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        async def keep() -> None:
            while not stop.is_set():
                await loop.run_in_executor(None, ann.refresh)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), servers.SERVER_TTL / 3)

        async with previous(a) as inner:
            # After the hub's load: a write between the last revision agents were told and the
            # new hub's load would make every reconnecting agent take a snapshot instead of
            # resuming. For the same reason a stopping server does not delete its key (it
            # expires SERVER_TTL later, while another server's hub is running).
            task = loop.create_task(keep())
            yield inner
            stop.set()
            with contextlib.suppress(Exception):
                await task

    app.router.lifespan_context = lifespan


class HostsCollector:
    """`vxnet_hosts{state}` and per host `vxnet_host_up{host}`, `vxnet_host_revision_lag{host}`
    (the last revision that changed its view minus the one its agent applied; 0 when up to
    date), from this server's hub: what `vxnet status` shows, for alerting."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def describe(self) -> list[Any]:
        return []   # collected on scrape only (the registry must not call collect() at registration)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        hub = self.state.hub
        if hub is None:
            return
        for _ in range(3):   # a scrape thread reads while the loop mutates: retry on a changed dict
            try:
                hosts = operations.build_status(
                    {"agents": dict(hub.objects().get("agents") or {}), "ports": {}},
                    dict(hub.live), dict(hub.reports), dict(hub.last_change))
                break
            except RuntimeError:
                continue
        else:
            return
        by_state = GaugeMetricFamily("vxnet_hosts", "Registered hosts by state (as `vxnet status`)", labels=["state"])
        counts: dict[str, int] = dict.fromkeys(("ok", "behind", "failing", "dead", "no report"), 0)
        up = GaugeMetricFamily("vxnet_host_up", "1 while the host's agent holds its lease", labels=["host"])
        lag = GaugeMetricFamily("vxnet_host_revision_lag", "Store revisions between the last change of the "
                                "host's view and what its agent applied (0: up to date)", labels=["host"])
        for h in hosts:
            counts[h["state"]] = counts.get(h["state"], 0) + 1
            up.add_metric([h["host"]], 1.0 if h["alive"] else 0.0)
            applied, wanted = h["revision"]["applied"], h["revision"]["wanted"] or 0
            lag.add_metric([h["host"]], float(max(0, wanted - applied) if applied is not None else wanted))
        for k, n in counts.items():
            by_state.add_metric([k], float(n))
        yield by_state
        yield up
        yield lag


def _require_admin(request: Request, action: str) -> AppState:
    st = AppState.of(request)
    if not st.context(request).is_admin:
        raise policy_denied(action)
    return st


def _store_health(st: AppState) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        rev = st.store.revision()
    except Exception as e:  # noqa: BLE001 - what is wrong with the store is the answer
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:300], "backend": type(st.store).__name__}
    return {"ok": True, "revision": rev, "read_ms": round((time.perf_counter() - t0) * 1000, 2),
            "backend": type(st.store).__name__}


@router.get("/status")
async def status(request: Request) -> dict[str, Any]:
    st = _require_admin(request, "get_vxnet_status")
    hub = hub_of(st)
    store = await run_store(_store_health, st)
    try:
        announced = await run_store(servers.list_servers, st.store)
    except Exception:  # noqa: BLE001 - the store is down: say so, with what this server knows
        announced = []
    hosts = operations.build_status(hub.objects(), hub.live, hub.reports, hub.last_change)
    ann = st.announcement
    states: dict[str, int] = {}
    for h in hosts:
        states[h["state"]] = states.get(h["state"], 0) + 1
    return {"status": {
        "server": {"id": getattr(ann, "id", None), "version": buildinfo.version(),
                   "python": buildinfo.python_version(), "view_revision": hub.revision,
                   "streams": sum(len(s) for s in hub.subs.values())},
        "servers": announced,
        "store": store,
        "hosts": hosts,
        "summary": {"hosts": len(hosts), "by_state": states},
    }}


@router.post("/doctor")
async def doctor(request: Request) -> JSONResponse:
    st = _require_admin(request, "create_vxnet_doctor")
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - {"repair", "hosts"}:
        raise bad_request('Body must be {"repair": true|false, "hosts": [host names] or null}')
    repair, hosts = body.get("repair", False), body.get("hosts")
    if not isinstance(repair, bool):
        raise bad_request("'repair' must be true or false")
    if hosts is not None and (not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts)
                              or len(hosts) > 10000):
        raise bad_request("'hosts' must be a list of host names or null")
    hub = hub_of(st)
    doc = await run_store(operations.request_doctor, st.store, repair, hosts)
    expected = sorted(h for h in hub.live if hosts is None or h in hosts)
    return JSONResponse({"doctor": {**doc, "expected": expected}}, status_code=202)


@router.get("/doctor/{request_id}")
async def doctor_results(request_id: str, request: Request) -> dict[str, Any]:
    st = _require_admin(request, "get_vxnet_doctor")
    found = await run_store(operations.results, st.store, request_id)
    return {"doctor": {"id": request_id, "results": found}}


@router.post("/hosts/{host}/doctor/{request_id}")
async def doctor_answer(host: str, request_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    require_agent(st.context(request), host)
    raw = await request.body()        # first: an oversized body is a 413 whatever the id (fuzz-tested)
    operations.check_id(request_id)
    if len(raw) > RESULT_MAX_BYTES:
        raise bad_request(f"A doctor answer is limited to {RESULT_MAX_BYTES} bytes")
    body = await read_json(request)
    if not isinstance(body, dict):
        raise bad_request("Body must be a JSON object")
    await run_store(operations.store_result, st.store, request_id, host, body)
    return {"stored": True}
