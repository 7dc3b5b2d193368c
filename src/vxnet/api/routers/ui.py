"""/ui: the web UI (static page + assets) and `/ui/events`, its live change stream (SSE).

The page itself is static (src/vxnet/web/static/); it logs in through `/identity/v3` and then
uses the public REST API like any other client, so it can do and see exactly what the REST API
lets its user do and see. This module adds only what a browser cannot get from the REST API:

`GET /ui/events?token=<X-Auth-Token>` (EventSource cannot set headers, so the token may come in
the query string here, and only here; the header works too). A text/event-stream of
- `event: ready` once, `data: {"revision": N}`: the stream is live from revision N+1; the page
  (re)loads everything it shows after this (also after every automatic reconnect), so a lost
  notification can only delay a refresh, never leave the page wrong (level-triggered).
- `event: change`, `id: <revision>`, `data: {"revision": N, "changes": [{"collection", "id",
  "type": "put"|"delete"}]}`: what changed in one store revision. Notifications only, never
  object bodies: the page re-reads the named collections through the REST API.
- `: keepalive` comments every KEEPALIVE seconds; the stream ends when the token expires or after
  MAX_STREAM seconds (the page reconnects), so no stream outlives a server's graceful shutdown
  by more than that.

Isolation invariant: a caller is told about a change of object O only if O, before or after the
change, is visible to it under the REST API's own rules for O's collection: the resource modules'
own visibility functions (VISIBILITY; those that judge an object with its parent, like a subnet
with its network, get the parent from the snapshot), else "admin or same project" (never more
permissive than the REST API), and admin-only for agents and anything that is not a resource.
A tenant never learns the id of another tenant's private object.

Access that changes with a parent: when a network becomes visible to a caller, or stops being
(an RBAC policy shares it with the caller's project, or no longer does), the caller is also told
of the network's subnets it now sees, or no longer sees (`put` / `delete` notes for subnets that
did not change themselves), so the page re-reads them without waiting for its next reload.

One watch: the feed is a listener of the server's view hub (`vxnet.services.view_hub`), which
parses each store revision once and hands over (collection, id, before, after) and its objects
after the change; a delete is judged by what was deleted. Fan-out runs on the event loop and
does no store I/O. If the hub reloads (its fallback), every stream ends and the page reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from vxnet.api.auth import Context
from vxnet.api.errors import ApiError, unauthorized
from vxnet.api.routers import (
    address_scopes,
    floatingips,
    networks,
    ports,
    qos,
    rbac_policies,
    routers,
    security_groups,
    subnetpools,
    subnets,
)
from vxnet.api.routers.agent_stream import hub_of
from vxnet.api.routing import Routes
from vxnet.api.state import AppState
from vxnet.services.view_hub import Change, Hub, Objects

log = logging.getLogger("vxnet.ui")

router = Routes(tags=["ui"], include_in_schema=False)

KEEPALIVE = 15.0
MAX_STREAM = 60.0
QUEUE_MAX = 1000  # per subscriber; on overflow the stream ends and the page reconnects + reloads

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def static_dir() -> Path:
    """Where the page's files are (inside the installed package)."""
    return Path(str(resources.files("vxnet.web") / "static"))


# --- visibility ---------------------------------------------------------------------------------

Snapshot = dict[str, dict[str, dict[str, Any]]]  # collection -> id -> last known object
Rule = Callable[[Context, dict[str, Any], Snapshot], bool]


def _owner_rule(ctx: Context, obj: dict[str, Any], snap: Snapshot) -> bool:
    return ctx.is_admin or (bool(ctx.project_id) and obj.get("project_id") == ctx.project_id)


def _admin_rule(ctx: Context, obj: dict[str, Any], snap: Snapshot) -> bool:
    return ctx.is_admin


# collection (as stored) -> (visibility function, parent collection and the attribute naming the
# parent for functions that judge an object together with its parent, whether the function is a
# factory taking the parents by id). Imported, not looked up: a broken resource module fails the
# start instead of silently widening what the feed tells to "admin or same project".
VISIBILITY: dict[str, tuple[Callable[..., Any], tuple[str, str] | None, bool]] = {
    "networks": (networks.network_visible, None, False),
    "subnets": (subnets.subnet_visible, ("networks", "network_id"), False),
    "ports": (ports.port_visible, ("networks", "network_id"), False),
    "routers": (routers.router_visible, None, False),
    "floatingips": (floatingips.fip_visible, None, False),
    "security_groups": (security_groups.group_visible, None, False),
    "security_group_rules": (security_groups._rule_visible_fn, ("security_groups", "security_group_id"), True),
    "subnetpools": (subnetpools.pool_visible, None, False),
    "address_scopes": (address_scopes.scope_visible, None, False),
    "qos_policies": (qos.policy_visible, None, False),
    "rbac_policies": (rbac_policies.policy_visible, None, False),
}


def _rule(fn: Any, parent: tuple[str, str] | None, factory: bool) -> Rule:
    if factory:  # fn(parents_by_id) -> visible(ctx, obj)
        coll = parent[0] if parent else ""
        return lambda ctx, obj, snap: bool(fn(snap.get(coll, {}))(ctx, obj))
    if parent is None:
        return lambda ctx, obj, snap: bool(fn(ctx, obj))
    coll, attr = parent
    return lambda ctx, obj, snap: bool(fn(ctx, obj, snap.get(coll, {}).get(obj.get(attr, ""))))


def visibility_rules() -> dict[str, Rule]:
    """Collection (as stored) -> who may hear of an object: the resource modules' own rules.
    A collection not in VISIBILITY falls back to "admin or same project" (`rule_for`)."""
    return {coll: _rule(fn, parent, factory) for coll, (fn, parent, factory) in VISIBILITY.items()}


def rule_for(rules: dict[str, Rule], collection: str) -> Rule:
    if collection == "agents":
        return _admin_rule
    for name in (collection, collection.replace("_", "-"), collection.replace("-", "_")):
        if name in rules:
            return rules[name]
    return _owner_rule


# --- the feed -----------------------------------------------------------------------------------

class Subscriber:
    """One open /ui/events stream."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE_MAX)


class UiHub:
    """The UI's change feed: a listener of the server's one store watch (the view hub), fanned
    out to the open streams by visibility. It keeps no watch and no copy of the data: `before`
    and the objects come from the view hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.subscribers: set[Subscriber] = set()
        self.rules: dict[str, Rule] = {}
        self._attached = False

    @property
    def revision(self) -> int:
        return self.hub.revision

    def ensure_started(self) -> None:
        """Attach to the view hub (on the loop, at the first subscriber)."""
        if not self._attached:
            self.rules = visibility_rules()
            self.hub.listeners.append(self)
            self._attached = True

    def stop(self) -> None:
        if self._attached:
            with contextlib.suppress(ValueError):
                self.hub.listeners.remove(self)
            self._attached = False
        for sub in list(self.subscribers):
            self._end(sub)

    def _end(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        with contextlib.suppress(asyncio.QueueEmpty):
            while sub.queue.full():
                sub.queue.get_nowait()
        sub.queue.put_nowait(None)

    def on_reload(self, revision: int) -> None:
        """The hub reloaded: notifications may be missing; every page reconnects and reloads."""
        for sub in list(self.subscribers):
            self._end(sub)

    def on_changes(self, revision: int, changes: list[Change], objects: Objects) -> None:
        """One store revision (after the hub applied it) to every subscriber allowed to know."""
        if not self.subscribers:
            return
        notes = [({"collection": coll, "id": id_, "type": "put" if after is not None else "delete"}, before, after)
                 for coll, id_, before, after in changes]
        # An object deleted together with its parent (a network's subnets) is judged with the parent.
        gone: dict[str, dict[str, dict[str, Any]]] = {}
        for coll, id_, before, after in changes:
            if after is None and before is not None:
                gone.setdefault(coll, {})[id_] = before
        snap: Snapshot = objects
        if gone:
            snap = dict(objects)
            for coll, objs in gone.items():
                snap[coll] = {**objects.get(coll, {}), **objs}
        regranted = [(id_, before, after) for coll, id_, before, after in changes
                     if coll == "networks" and before is not None and after is not None]
        for sub in list(self.subscribers):
            mine = [note for note, before, after in notes
                    if self._may_know(sub.ctx, note["collection"], before, after, snap)]
            if regranted:
                mine += self._children_of_regranted(sub.ctx, regranted, snap, {(n["collection"], n["id"]) for n in mine})
            if not mine:
                continue
            try:
                sub.queue.put_nowait({"revision": revision, "changes": mine})
            except asyncio.QueueFull:
                self._end(sub)  # a stuck client: end its stream, it will reload

    def _children_of_regranted(self, ctx: Context, nets: list[tuple[str, dict[str, Any], dict[str, Any]]],
                               snap: Snapshot, told: set[tuple[str, str]]) -> list[dict[str, Any]]:
        """Notes for the unchanged subnets of networks the caller gained (`put`) or lost
        (`delete`) sight of in this revision, each judged with the network it is seen through."""
        net_rule, sub_rule = rule_for(self.rules, "networks"), rule_for(self.rules, "subnets")
        out: list[dict[str, Any]] = []
        for net_id, before, after in nets:
            try:
                saw, sees = net_rule(ctx, before, snap), net_rule(ctx, after, snap)
            except (KeyError, TypeError, AttributeError):
                continue
            if saw == sees:
                continue
            judge: Snapshot = {"networks": {net_id: after if sees else before}}
            for sid, subnet in snap.get("subnets", {}).items():
                if subnet.get("network_id") != net_id or ("subnets", sid) in told:
                    continue
                try:
                    if sub_rule(ctx, subnet, judge):
                        out.append({"collection": "subnets", "id": sid, "type": "put" if sees else "delete"})
                except (KeyError, TypeError, AttributeError):
                    continue
        return out

    def _may_know(self, ctx: Context, coll: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
                  snap: Snapshot) -> bool:
        rule = rule_for(self.rules, coll)
        for obj in (before, after):
            if obj is None:
                continue
            try:
                if rule(ctx, obj, snap):
                    return True
            except (KeyError, TypeError, AttributeError):
                continue  # an object a rule cannot judge is not shown
        return False


def setup(app: FastAPI, state: AppState) -> None:
    """Attach the feed to the application's view hub (it listens from the first stream on)."""
    if state.hub is not None:
        app.state.ui_hub = UiHub(state.hub)


def _hub(request: Request) -> UiHub:
    hub = getattr(request.app.state, "ui_hub", None)
    if hub is None:
        st = AppState.of(request)
        hub = UiHub(hub_of(st))
        request.app.state.ui_hub = hub
    return hub


def _sse(event: str | None, data: Any, id_: int | None = None) -> str:
    lines = []
    if event:
        lines.append(f"event: {event}")
    if id_ is not None:
        lines.append(f"id: {id_}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


# --- routes -------------------------------------------------------------------------------------

@router.get("/ui/events")
async def events(request: Request) -> StreamingResponse:
    st = AppState.of(request)
    token = request.headers.get("X-Auth-Token") or request.query_params.get("token")
    if not token:
        raise unauthorized()
    ctx = st.check_token(token)
    hub = _hub(request)
    hub.ensure_started()
    sub = Subscriber(ctx)
    hub.subscribers.add(sub)
    start_rev = hub.revision

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 1000\n" + _sse("ready", {"revision": start_rev, "project_id": ctx.project_id,
                                                  "admin": ctx.is_admin})
            end = min(time.monotonic() + MAX_STREAM, time.monotonic() + (ctx.expires_at - time.time()))
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    return
                try:
                    item = await asyncio.wait_for(sub.queue.get(), timeout=min(KEEPALIVE, left))
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if item is None:
                    return
                yield _sse("change", item, item["revision"])
        finally:
            hub.subscribers.discard(sub)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.get("/ui")
async def index() -> Response:
    return _file("index.html")


@router.get("/ui/")
async def index_slash() -> Response:
    return RedirectResponse("/ui", status_code=308)


@router.get("/ui/{path:path}")
async def asset(path: str) -> Response:
    return _file(path)


def _file(path: str) -> Response:
    """A file under the static directory (nothing outside it), or a NeutronError 404."""
    root = static_dir().resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise ApiError(404, "HTTPNotFound", f"The resource could not be found: /ui/{path}")
    kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "image/svg+xml"):
        kind += "; charset=utf-8"
    return Response(target.read_bytes(), media_type=kind, headers=SECURITY_HEADERS)
