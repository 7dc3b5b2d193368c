"""/v2.0/trunks: VLAN-aware ports (Neutron's `trunk` and `trunk-details` extensions).

    /v2.0/trunks[/{id}]                      GET POST / GET PUT DELETE
    /v2.0/trunks/{id}/add_subports           PUT {"sub_ports": [{port_id, segmentation_type, segmentation_id}]}
    /v2.0/trunks/{id}/remove_subports        PUT {"sub_ports": [{port_id}]}
    /v2.0/trunks/{id}/get_subports           GET

Invariants (records and checks in services/trunks.py):
- Neutron's policy defaults (api/policy.py TRUNKS): the owner of a trunk (or an admin) reads and
  changes it; another project's trunk is a 404. A caller names only ports it can see: the
  parent (404 PortNotFound otherwise) and each subport (404), and must own the parent and
  every subport (403: a network's owner sees other projects' ports on her network, but cannot
  make them carry her VM's traffic).
- Every change is one unit of work: the trunk, its parent's `trunk_details` and the subports'
  owner/device/binding move together or not at all.
- A trunk whose `admin_state_up` is false refuses subport changes (409 TrunkDisabled).
- Deleting a trunk frees its subports (Neutron's drivers that can trunk a bound port allow it
  with the parent bound; the agent removes the VLAN devices). A parent port or a subport cannot
  be deleted while in a trunk (409, ports router).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from vxnet.api import policy
from vxnet.api.auth import Context
from vxnet.api.collection import ResourceSpec
from vxnet.api.errors import ApiError, from_service, not_found
from vxnet.api.resource_routes import Resource
from vxnet.api.routers.networks import touch
from vxnet.api.routers.ports import port_visible
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, off_loop
from vxnet.api.validation import (
    Body,
    Bool,
    Description,
    Name,
    ProjectId,
    Tags,
    Uuid,
    resolve_project,
)
from vxnet.services import trunks as svc
from vxnet.services.errors import ServiceError
from vxnet.services.repo import UnitOfWork

router = Routes(prefix="/v2.0", tags=["trunks"])
SPEC = ResourceSpec("trunks", "trunk")


class TrunkCreate(Body):
    port_id: Uuid
    name: Name = ""
    description: Description = ""
    admin_state_up: Bool = True
    sub_ports: list[dict[str, Any]] = []
    tags: Tags = []
    project_id: ProjectId | None = None
    tenant_id: ProjectId | None = None


class TrunkUpdate(Body):
    name: Name = ""
    description: Description = ""
    admin_state_up: Bool = True


def _visible_port(ctx: Context, uow: UnitOfWork, port_id: Any) -> dict[str, Any]:
    port = uow.get("ports", port_id) if isinstance(port_id, str) else None
    if port is None or not port_visible(ctx, port, uow.get("networks", port["network_id"])):
        raise not_found("port", str(port_id))
    return port


def _show(st: AppState, rec: dict[str, Any]) -> dict[str, Any]:
    return svc.presented(rec, st.repo.get("ports", rec["port_id"]))


RESOURCE = Resource(SPEC, missing=lambda trunk_id: from_service(svc.trunk_not_found(trunk_id)), expand=_show)


def _subports_body(body: Any) -> list[dict[str, Any]]:
    items = body.get("sub_ports") if isinstance(body, dict) else None
    if not isinstance(items, list) or not all(isinstance(s, dict) for s in items):
        raise ApiError(400, "BadRequest", "Bad sub_ports request: a list of objects is expected.")
    return items


def _add(ctx: Context, uow: UnitOfWork, rec: dict[str, Any], parent: dict[str, Any],
         items: list[dict[str, Any]], action: str) -> None:
    try:
        subs = svc.parse_subports(items, rec)
        ports = []
        for s in subs:
            port = _visible_port(ctx, uow, s["port_id"])
            if not ctx.is_admin and port["project_id"] != ctx.project_id:
                # a network's owner sees other projects' ports on it, but may not take them
                raise policy.denied(action)
            ports.append(port)
        svc.check_subports(uow, ports)
        for port in ports:
            svc.attach(uow, rec, parent, port)
    except ServiceError as e:
        raise from_service(e) from None
    rec["sub_ports"] = rec["sub_ports"] + subs


RESOURCE.add_list(router, "/trunks", "list_trunks")
RESOURCE.add_show(router, "/trunks/{trunk_id}", "show_trunk", "trunk_id")


def _build(uow: UnitOfWork, ctx: Context, item: TrunkCreate, pol: policy.Policy) -> dict[str, Any]:
    project = resolve_project(ctx, item.project_id, item.tenant_id)  # another project: admin only (400)
    pol.enforce(ctx, "create_trunk", policy.target("trunk", {"project_id": project}))
    parent = _visible_port(ctx, uow, item.port_id)
    if not ctx.is_admin and parent["project_id"] != ctx.project_id:
        raise policy.denied("create_trunk")
    try:
        svc.check_parent(uow, parent)
    except ServiceError as e:
        raise from_service(e) from None
    rec = svc.new_trunk(project, item.name, item.description, item.admin_state_up, parent["id"], item.tags)
    _add(ctx, uow, rec, parent, item.sub_ports, "create_trunk")
    uow.put("trunks", rec)
    svc.sync_parent(uow, rec, parent)
    return rec


RESOURCE.add_create(router, "/trunks", "create_trunk", TrunkCreate, _build)


def _update(uow: UnitOfWork, ctx: Context, rec: dict[str, Any], fields: dict[str, Any]) -> None:
    touch(rec, fields)


def _remove(uow: UnitOfWork, ctx: Context, rec: dict[str, Any]) -> None:
    for s in rec["sub_ports"]:
        port = uow.get("ports", s["port_id"])
        if port is not None:
            svc.detach(uow, port)
    parent = uow.get("ports", rec["port_id"])
    if parent is not None:
        svc.sync_parent(uow, None, parent)
    uow.delete("trunks", rec["id"])


RESOURCE.add_update(router, "/trunks/{trunk_id}", "update_trunk", "trunk_id", TrunkUpdate, _update,
                    read_only=("id", "project_id", "tenant_id", "port_id", "sub_ports", "status"))
RESOURCE.add_delete(router, "/trunks/{trunk_id}", "delete_trunk", "trunk_id", _remove)


def _subport_change(action: str) -> Any:
    def change(uow: UnitOfWork, ctx: Context, rec: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
        trunk_id = rec["id"]
        if not rec["admin_state_up"]:
            raise ApiError(409, "TrunkDisabled", f"Trunk {trunk_id} is currently disabled.")
        parent = uow.get("ports", rec["port_id"])
        assert parent is not None   # a parent cannot be deleted while in a trunk
        if action == "add_subports":
            _add(ctx, uow, rec, parent, items, action)
        else:
            current = {s["port_id"]: s for s in rec["sub_ports"]}
            gone: dict[str, None] = {}   # ordered, and a set (a body may name ~10^4)
            for s in items:
                pid = s.get("port_id")
                if pid not in current or pid in gone:
                    raise ApiError(404, "SubPortNotFound", f"SubPort on trunk {trunk_id} with parent port "
                                   f"{rec['port_id']} not found.")
                gone[pid] = None
            for pid in gone:
                port = uow.get("ports", pid)
                if port is not None:
                    svc.detach(uow, port)
            rec["sub_ports"] = [s for s in rec["sub_ports"] if s["port_id"] not in gone]
        touch(rec)
        uow.put("trunks", rec)
        svc.sync_parent(uow, rec, parent)
        return rec

    return change


for _action in ("add_subports", "remove_subports"):
    RESOURCE.add_action(router, f"/trunks/{{trunk_id}}/{_action}", _action, "trunk_id", _action, _subports_body,
                        _subport_change(_action), expand_answer=True)


@router.get("/trunks/{trunk_id}/get_subports")
@off_loop
async def get_subports(trunk_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    rec = RESOURCE.fetch(st.repo, ctx, trunk_id)
    policy.of(st.config).enforce(ctx, "get_subports", policy.target("trunk", rec))
    return {"sub_ports": rec["sub_ports"]}
