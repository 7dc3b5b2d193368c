"""/v2.0/agents: the Neutron agent records of the vxnet agents (one per host).

Records are written by the agents' control plane (agent_stream.py: register, heartbeat,
liveness loss) under `/vxnet/res/agents/<id>`. Here they are listed, shown, updated
(`admin_state_up`, `description`) and deleted.

Policy (as Neutron's): admins (and the `service` role) see agents; any other caller gets an
empty list, and 404 on one agent. Only admins update or delete. Deleting an agent also removes
its liveness key, so a running agent's next heartbeat gets 404 and it registers again.

Shown `alive` is the record's flag and the presence of the liveness key (so a record whose lease
expired while no server watched is never shown alive); `configurations.ports` counts the
ports bound to the host.
"""

from __future__ import annotations

import collections
import json
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from vxnet.api.auth import Context
from vxnet.api.collection import ResourceSpec, check_if_match, list_response
from vxnet.api.errors import not_found
from vxnet.api.resource_routes import Resource
from vxnet.api.routers.agent_stream import live_key
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, off_loop, read_json
from vxnet.api.validation import Body, Bool, Description, parse_update
from vxnet.services.repo import UnitOfWork

router = Routes(prefix="/v2.0", tags=["agents"])


def can_see_agents(ctx: Context) -> bool:
    """Admins and the unrestricted service role; a host-limited agent user sees no other host's agent."""
    return ctx.is_admin or ("service" in ctx.roles and ctx.hosts is None)


SPEC = ResourceSpec("agents", "agent", visible=lambda ctx, obj: can_see_agents(ctx))


class AgentUpdate(Body):
    admin_state_up: Bool = True
    description: Description = ""


def present(st: AppState, rec: dict[str, Any], bound: collections.Counter[str]) -> dict[str, Any]:
    out = dict(rec)
    out["alive"] = bool(rec.get("alive")) and st.store.get(live_key(rec["host"])) is not None
    out["configurations"] = {**rec.get("configurations", {}), "ports": bound.get(rec["host"], 0)}
    return out


def _bound_ports(st: AppState) -> collections.Counter[str]:
    return collections.Counter(p.get("binding:host_id") for p in st.repo.list("ports") if p.get("binding:host_id"))


@router.get("/agents")
@off_loop
async def list_agents(request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)
    if not can_see_agents(ctx):
        return list_response(request, ctx, SPEC, [])
    bound = _bound_ports(st)
    return list_response(request, ctx, SPEC, [present(st, r, bound) for r in st.repo.list("agents")])


# one agent's bound-port count needs all ports read: the list reads them once for all agents
RESOURCE = Resource(SPEC, expand=lambda st, rec: present(st, rec, _bound_ports(st)))
RESOURCE.add_show(router, "/agents/{agent_id}", "show_agent", "agent_id")


@router.put("/agents/{agent_id}")
@off_loop
async def update_agent(agent_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    upd = parse_update(await read_json(request), "agent", AgentUpdate)
    fields = {k: getattr(upd, k) for k in upd.model_fields_set}

    def txn(uow: UnitOfWork) -> dict[str, Any]:
        rec = uow.get("agents", agent_id)
        if rec is None or not ctx.is_admin:  # Neutron hides what a caller may not change
            raise not_found("agent", agent_id)
        check_if_match(request, rec)
        rec.update(fields)
        uow.put("agents", rec)
        return rec

    return {"agent": present(st, st.repo.transact(txn), _bound_ports(st))}


@router.delete("/agents/{agent_id}", status_code=204)
@off_loop
async def delete_agent(agent_id: str, request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)

    def txn(uow: UnitOfWork) -> int:
        rec = uow.get("agents", agent_id)
        if rec is None or not ctx.is_admin:
            raise not_found("agent", agent_id)
        check_if_match(request, rec)  # as for PUT: a stale If-Match is a 412
        uow.delete("agents", agent_id)
        live = uow.get_raw(live_key(rec["host"]))
        if live is None:
            return 0
        uow.delete_raw(live_key(rec["host"]))
        return int(json.loads(live).get("lease", 0))

    lease = st.repo.transact(txn)
    if lease:
        st.store.revoke_lease(lease)
    return Response(status_code=204)
