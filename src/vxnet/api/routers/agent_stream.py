"""/v2.0/vxnet/hosts/{host}/...: the agents' side of the server (register, heartbeat, view
stream, port status): HTTP only. Callers need the `admin` or `service` role, and a service
user whose configuration lists `hosts` acts only for those (`require_agent`: 403 for any other
host, so one host's credential neither reads nor reports another host's state).

The work is in services: `vxnet.services.agents` (registration, liveness, port status; store
layout there) and `vxnet.services.view_hub` (the server's one store watch, the views, the replay
logs, the stream protocol and its invariants). Store calls run on worker threads (`run_store`);
the hub itself runs on the event loop and does no store I/O there.

Stream messages are those of the contract; the snapshot's `view.host` is the host's own
`hosts` entry, which also appears (and changes) under `hosts` like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from prometheus_client import Gauge, Histogram

from vxnet.api.auth import Context
from vxnet.api.errors import ApiError, bad_request, policy_denied
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, read_json, run_store
from vxnet.api.validation import Body, Bool, IpAddr, ShortStr, validate
from vxnet.services import agents, fip_status
from vxnet.services.agents import agent_id_for, live_key  # noqa: F401 - re-exported for the API
from vxnet.services.view_hub import Hub

router = Routes(prefix="/v2.0/vxnet", tags=["agent control plane"])


def require_service(ctx: Context) -> None:
    """Only the agents' own identity (service role) or an admin may use these endpoints."""
    if not (ctx.is_admin or "service" in ctx.roles):
        raise policy_denied("vxnet_agent")


def require_agent(ctx: Context, host: str) -> None:
    """`require_service`, and the caller acts for `host` (its user's `hosts`, if listed)."""
    require_service(ctx)
    if not ctx.acts_for(host):
        raise ApiError(403, "PolicyNotAuthorized", f"(vxnet_agent) is disallowed by policy for host '{host}'")


def hub_of(st: AppState) -> Hub:
    """The app's hub, started on first use if the lifespan did not start it."""
    hub = st.hub
    assert hub is not None, "agent_stream.setup() was not called"
    if hub.loop is None:
        hub.start(asyncio.get_running_loop())
    return hub


def setup(app: FastAPI, state: AppState) -> None:
    """Create the hub; start it (and the start-up sweep) with the app, stop it after."""
    hub = Hub(state.store)
    hub.freeze_gc = True  # the server process's one hub: its loads freeze the collector's view of them
    state.hub = hub
    down_time = state.config.agent_down_time

    def lost(host: str) -> None:
        assert hub.loop is not None
        hub.loop.call_soon(_off_loop, hub.loop, agents.mark_dead, state.repo, host)

    hub.on_liveness_lost = lost
    registry = getattr(app.state, "metrics_registry", None)
    if registry is not None:
        hub.fanout_seconds = Histogram(
            "vxnet_view_fanout_seconds", "Time to turn one store revision into every host's view update",
            registry=registry, buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1))
        Gauge("vxnet_view_streams", "Open agent view streams", registry=registry).set_function(
            lambda: sum(len(s) for s in hub.subs.values()))
        Gauge("vxnet_view_tracked_hosts", "Hosts whose views this server keeps", registry=registry).set_function(
            lambda: len(hub.index.members))
    previous = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        hub.start(loop)  # before serving: the one blocking load
        # The sweep waits one lease period: agents whose liveness keys are missing only because
        # this store is new to them (a migration, a restored backup) re-register meanwhile and
        # keep their ports ACTIVE; a host that really died is marked dead at the end of it.
        sweep = loop.call_later(agents.lease_ttl(down_time), _off_loop, loop, agents.sweep_dead,
                                state.repo, state.store)
        async with previous(a) as inner:
            yield inner
        sweep.cancel()
        hub.stop()

    app.router.lifespan_context = lifespan


def _off_loop(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    """Run store work from a loop callback on a worker thread (its own errors are logged)."""
    if not loop.is_closed():
        loop.run_in_executor(None, fn, *args)


# --- endpoints -------------------------------------------------------------------------------

class RegisterBody(Body):
    underlay_ip: IpAddr
    gateway: Bool = False
    external_interface: ShortStr | None = None
    agent_type: ShortStr = "vxnet agent"


def _check_host(host: str) -> None:
    if not host or len(host) > 255 or any(c.isspace() for c in host):
        raise bad_request(f"Invalid host name '{host}'")


@router.post("/hosts/{host}/register")
async def register(host: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    require_agent(st.context(request), host)
    _check_host(host)
    body = validate(RegisterBody, await read_json(request))
    ttl = agents.lease_ttl(st.config.agent_down_time)
    reg = agents.Registration(body.underlay_ip, body.gateway, body.external_interface, body.agent_type)
    rec = await run_store(agents.register, st.store, st.repo, host, reg, ttl)
    return {"host": host, "agent_id": rec["id"], "lease_ttl": ttl,
            "heartbeat_interval": agents.heartbeat_interval(st.config.agent_down_time)}


@router.post("/hosts/{host}/heartbeat")
async def heartbeat(host: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    require_agent(st.context(request), host)
    status: dict[str, Any] | None = None
    if await request.body():  # the agent's status report (`vxnet status`); older agents send none
        body = await read_json(request)
        if not isinstance(body, dict) or set(body) - {"status"} or not isinstance(body.get("status"), dict):
            raise bad_request('Body must be {"status": {...}} or empty')
        status = body["status"]
        if len(json.dumps(status)) > agents.STATUS_MAX_BYTES:
            raise bad_request(f"A status report is limited to {agents.STATUS_MAX_BYTES} bytes")
    await run_store(agents.heartbeat, st.store, host, status)
    return {"alive": True}


@router.get("/hosts/{host}/view")
async def view(host: str, request: Request) -> StreamingResponse:
    st = AppState.of(request)
    require_agent(st.context(request), host)
    _check_host(host)
    since_s = request.query_params.get("since")
    since: int | None = None
    if since_s is not None:
        try:
            since = int(since_s)
        except ValueError:
            raise bad_request(f"Invalid since '{since_s}': expected a revision number") from None
        if since < 0:
            raise bad_request(f"Invalid since '{since_s}': expected a revision number")
    hub = hub_of(st)
    if request.query_params.get("epoch", hub.epoch) != hub.epoch:
        since = None  # a revision of another store (before a migration): start from a snapshot
    # a `since` beyond the store's revision is another store's; read off the loop unless the
    # store answers from memory (a thread hop per stream costs a cold start of 1,000 streams)
    store = st.store
    store_revision = store.revision() if getattr(store, "revision_in_memory", False) else await run_store(store.revision)
    sub = hub.subscribe(host, since, store_revision)
    # A stream never ends on its own. A vanished client is noticed by the next write (at the
    # latest the next ping); a server shutting down must cancel streams after a grace period
    # (uvicorn's timeout_graceful_shutdown), or it waits for them forever.
    return StreamingResponse(hub.lines(sub), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _status_body(request: Request, what: str) -> dict[str, str]:
    """{"ACTIVE": [ids], "DOWN": [ids]} -> id -> status (ACTIVE wins a duplicate)."""
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - {"ACTIVE", "DOWN"}:
        raise bad_request(f"Body must be {{\"ACTIVE\": [{what} ids], \"DOWN\": [{what} ids]}}")
    wanted: dict[str, str] = {}
    for status in ("DOWN", "ACTIVE"):
        ids = body.get(status, [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise bad_request(f"'{status}' must be a list of {what} ids")
        for i in ids:
            wanted[i] = status
    return wanted


@router.post("/hosts/{host}/floatingips-status")
async def floatingips_status(host: str, request: Request) -> dict[str, Any]:
    """The gateway host's report on the floating IPs it serves (services/fip_status.py)."""
    st = AppState.of(request)
    require_agent(st.context(request), host)
    _check_host(host)
    wanted = await _status_body(request, "floating IP")
    changed = await run_store(fip_status.set_floatingips_status, st.repo, host, wanted, hub_of(st).revision)
    return {"updated": changed}


@router.post("/hosts/{host}/ports-status")
async def ports_status(host: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    require_agent(st.context(request), host)
    _check_host(host)
    wanted = await _status_body(request, "port")

    # The agent reports on what the hub streamed to it: read at least at the hub's revision, or a
    # store mirror behind the hub's own watch would not show the port bound here yet and the
    # report would be dropped as "bound elsewhere" (the agent does not repeat it).
    seen = hub_of(st).revision
    changed = await run_store(agents.set_ports_status, st.repo, host, wanted, seen)
    return {"updated": changed}
