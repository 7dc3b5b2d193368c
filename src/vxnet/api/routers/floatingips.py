"""/v2.0/floatingips: floating IPs on external networks, associated with a fixed IP of a port
behind a router (Neutron's `router` floating IPs plus `fip-port-details`).

Records and invariants:
- A floating IP's address is held by a port with `device_owner` `network:floatingip`,
  `device_id` = the floating IP and project "" (hidden from tenants, as in Neutron), created and
  deleted in the same transaction as the floating IP record (services/ports.py).
- Associated: `port_id`, `fixed_ip_address` (an IPv4 address of that port) and `router_id` (a
  router with an interface on that address's subnet and its gateway on the floating IP's
  network) are all set; unassociated: all three are null. The ports API keeps this shape when it
  deletes an associated port (it nulls the three and sets `status` DOWN).
- `status` is ACTIVE while associated and DOWN otherwise. There is no data plane yet (the
  agent's router issue programs NAT); until then ACTIVE means "associated in the API".
- At most one floating IP per (external network, port, fixed IP): the claim key
  `/vxnet/fip-assoc/<network>/<port>/<ip>` names the holder and every association reads and
  rewrites it, so two concurrent associations of one fixed IP cannot both commit. A key whose
  holder no longer has that association (e.g. its port was deleted) is stale and taken over.
- An association reads its router and rewrites the router's fence key (routers.py), so it is
  serialized with interface removal, gateway changes and router deletion.
- `port_details` is computed from the associated port when the floating IP is shown.
- `PUT {"floatingip": {}}` disassociates (Neutron: 200, `port_id` null); an update naming other
  attributes only (`description`) keeps the association.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from vxnet.api import policy
from vxnet.api.auth import Context
from vxnet.api.collection import ResourceSpec, check_if_match, list_response, show_response
from vxnet.api.errors import ApiError, bad_request, conflict, not_found
from vxnet.api.routers.networks import network_visible, touch
from vxnet.api.routers.ports import port_visible as port_seen
from vxnet.api.routers.routers import INTF_OWNER, touch_fence
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, off_loop, read_json
from vxnet.api.validation import (
    Body,
    Description,
    IpAddr,
    ProjectId,
    Tags,
    Uuid,
    parse_create,
    parse_update,
    resolve_project,
)
from vxnet.services.ports import delete_port_record, network_subnets, new_port_record
from vxnet.services.repo import ROOT, Repo, UnitOfWork, new_id, now_iso

router = Routes(prefix="/v2.0", tags=["floatingips"])

FIP_OWNER = "network:floatingip"
UPDATE_READ_ONLY = ("id", "floating_ip_address", "floating_network_id", "router_id", "status",
                    "project_id", "tenant_id", "subnet_id", "port_details", "port_forwardings")
CREATE_FORBIDDEN = ("id", "router_id", "status", "port_details", "port_forwardings")
PORT_DETAIL_KEYS = ("name", "network_id", "mac_address", "admin_state_up", "status", "device_id", "device_owner")


def bad_fip(msg: str) -> ApiError:
    return bad_request(f"Bad floatingip request: {msg}.")


def fip_visible(ctx: Context, obj: dict[str, Any]) -> bool:
    return ctx.is_admin or obj["project_id"] == ctx.project_id


def port_details(port: dict[str, Any] | None) -> dict[str, Any] | None:
    if port is None:
        return None
    return {k: port.get(k) for k in PORT_DETAIL_KEYS}


def spec_for(repo: Repo) -> ResourceSpec:
    """The floating IPs' spec; `port_details` is looked up in `repo` when an object is shown."""

    def present(ctx: Context, obj: dict[str, Any]) -> dict[str, Any]:
        out = dict(obj)
        out["port_details"] = port_details(repo.get("ports", obj["port_id"])) if obj.get("port_id") else None
        return out

    return ResourceSpec("floatingips", "floatingip", visible=fip_visible, present=present)


def present_fip(fip: dict[str, Any], port: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(fip)
    out["port_details"] = port_details(port) if fip.get("port_id") else None
    return out


class FloatingIPCreate(Body):
    floating_network_id: Uuid
    port_id: Uuid | None = None
    fixed_ip_address: IpAddr | None = None
    floating_ip_address: IpAddr | None = None
    subnet_id: Uuid | None = None
    description: Description = ""
    tags: Tags = []
    project_id: ProjectId | None = None
    tenant_id: ProjectId | None = None


class FloatingIPUpdate(Body):
    port_id: Uuid | None = None
    fixed_ip_address: IpAddr | None = None
    description: Description = ""


@dataclasses.dataclass(frozen=True)
class Association:
    port: dict[str, Any]
    fixed_ip_address: str
    router_id: str


def assoc_key(network_id: str, port_id: str, ip: str) -> str:
    return f"{ROOT}fip-assoc/{network_id}/{port_id}/{ip}"


def find_router(uow: UnitOfWork, port: dict[str, Any], subnet: dict[str, Any], ext_net_id: str) -> str:
    """Neutron's get_router_for_floatingip: a router with an interface on `subnet` and its
    gateway on `ext_net_id`, preferring the one whose interface holds the subnet's gateway IP."""
    candidates: list[tuple[str, str]] = []
    for p in uow.list("ports", lambda p: p["device_owner"] == INTF_OWNER and p["network_id"] == port["network_id"]):
        for ip in p["fixed_ips"]:
            if ip["subnet_id"] == subnet["id"]:
                candidates.append((p["device_id"], ip["ip_address"]))
    first = None
    for router_id, ip in sorted(candidates):
        rtr = uow.get("routers", router_id)
        gw = rtr and rtr.get("external_gateway_info")
        if not gw or gw["network_id"] != ext_net_id:
            continue
        if ip == subnet.get("gateway_ip"):
            return router_id
        first = first or router_id
    if first:
        return first
    raise ApiError(404, "ExternalGatewayForFloatingIPNotFound",
                   f"External network {ext_net_id} is not reachable from subnet {subnet['id']}.  Therefore, "
                   f"cannot associate Port {port['id']} with a Floating IP.")


def resolve_association(uow: UnitOfWork, ctx: Context, fip: dict[str, Any], port_id: str,
                        fixed_ip: str | None) -> Association:
    """Neutron's _internal_fip_assoc_data + router lookup, for floating IP `fip`."""
    port = uow.get("ports", port_id)
    # Neutron looks the port up with the caller's rights (get_port: its project, or the owner of
    # its network): a port the caller cannot see is a 404, one it sees but does not own a 400.
    if port is None or not port_seen(ctx, port, uow.get("networks", port["network_id"])):
        raise not_found("port", port_id)
    if port["project_id"] != fip["project_id"] and not ctx.is_admin:
        raise bad_fip(f"Cannot process floating IP association with Port {port_id}, since that port is owned by a "
                      "different tenant")
    if port["device_owner"].startswith("network:"):
        raise bad_fip(f"Port {port_id} is unable to be assigned a floating IP")
    v4 = [ip for ip in port["fixed_ips"] if ipaddress.ip_address(ip["ip_address"]).version == 4]
    if fixed_ip is not None:
        if ipaddress.ip_address(fixed_ip).version != 4:
            raise bad_fip(f"Cannot process floating IP association with {fixed_ip}, since that is not an IPv4 address")
        chosen = next((ip for ip in port["fixed_ips"] if ip["ip_address"] == fixed_ip), None)
        if chosen is None:
            raise bad_fip(f"Port {port_id} does not have fixed ip {fixed_ip}")
    else:
        if not v4:
            raise bad_fip(f"Cannot add floating IP to port {port_id} that has no fixed IPv4 addresses")
        if len(v4) > 1:
            raise bad_fip(f"Port {port_id} has multiple fixed IPv4 addresses.  Must provide a specific IPv4 address "
                          "when assigning a floating IP")
        chosen = v4[0]
    subnet = uow.get("subnets", chosen["subnet_id"])
    if subnet is None:
        raise not_found("subnet", chosen["subnet_id"])
    router_id = find_router(uow, port, subnet, fip["floating_network_id"])
    return Association(port, chosen["ip_address"], router_id)


def claim_association(uow: UnitOfWork, fip: dict[str, Any], assoc: Association,
                      staged: dict[str, str] | None = None) -> None:
    """409 FloatingIPPortAlreadyAssociated if another floating IP on the same external network
    holds this fixed IP; otherwise record `fip` as the holder (see the module docstring).
    `staged` maps the keys claimed earlier in the same transaction (bulk create) to their holder."""
    key = assoc_key(fip["floating_network_id"], assoc.port["id"], assoc.fixed_ip_address)
    staged = {} if staged is None else staged
    holder = uow.get_raw(key)
    if key in staged and staged[key] != fip["id"]:
        taken = True
    elif holder and holder != fip["id"]:
        other = uow.get("floatingips", holder)
        taken = bool(other and other.get("port_id") == assoc.port["id"]
                     and other.get("fixed_ip_address") == assoc.fixed_ip_address)
    else:
        taken = False
    if taken:
            raise conflict("FloatingIPPortAlreadyAssociated",
                           f"Cannot associate floating IP {fip['floating_ip_address']} ({fip['id']}) with port "
                           f"{assoc.port['id']} using fixed IP {assoc.fixed_ip_address}, as that fixed IP already "
                           f"has a floating IP on external network {fip['floating_network_id']}.")
    uow.put_raw(key, fip["id"])
    staged[key] = fip["id"]
    touch_fence(uow, assoc.router_id)


def release_association(uow: UnitOfWork, fip: dict[str, Any]) -> None:
    """Drop `fip`'s claim key, if it still holds it."""
    if not fip.get("port_id") or not fip.get("fixed_ip_address"):
        return
    key = assoc_key(fip["floating_network_id"], fip["port_id"], fip["fixed_ip_address"])
    if uow.get_raw(key) == fip["id"]:
        uow.delete_raw(key)


def apply_association(fip: dict[str, Any], assoc: Association | None) -> None:
    """Set the association. `status` is the serving gateway host's business (its agent reports
    ACTIVE once the addresses and NAT rules are programmed, services/agents.py): a changed
    association is DOWN until then, and an unassociated floating IP is DOWN."""
    if assoc is None:
        fip.update({"port_id": None, "fixed_ip_address": None, "router_id": None, "status": "DOWN"})
        return
    new = {"port_id": assoc.port["id"], "fixed_ip_address": assoc.fixed_ip_address, "router_id": assoc.router_id}
    if any(fip.get(k) != v for k, v in new.items()):
        new["status"] = "DOWN"
    fip.update(new)


def build_fip(uow: UnitOfWork, ctx: Context, item: FloatingIPCreate, staged: dict[str, str],
              pol: policy.Policy) -> tuple[dict[str, Any], dict[str, Any] | None]:
    project = resolve_project(ctx, item.project_id, item.tenant_id)
    attrs = sorted(f for f in item.model_fields_set if getattr(item, f) is not None)
    pol.enforce(ctx, "create_floatingip", policy.target("floatingip", {"project_id": project}), attrs)
    net_id = item.floating_network_id
    net = uow.get("networks", net_id)
    if net is None or not network_visible(ctx, net):
        raise not_found("network", net_id)
    if not net["router:external"]:
        raise bad_fip(f"Network {net_id} is not a valid external network")
    if not any(s.get("ip_version", 4) == 4 for s in network_subnets(uow, net_id)):
        raise bad_fip(f"Network {net_id} does not contain any IPv4 subnet")
    if item.fixed_ip_address is not None and item.port_id is None:
        raise bad_fip("fixed_ip_address cannot be specified without a port_id")
    fip_id = new_id("floatingips")
    wanted: dict[str, str] = {}
    if item.subnet_id is not None:
        wanted["subnet_id"] = item.subnet_id
    if item.floating_ip_address is not None:
        wanted["ip_address"] = item.floating_ip_address
    port = new_port_record(uow, network=net, project_id="", fixed_ips=[wanted] if wanted else None,
                           device_owner=FIP_OWNER, device_id=fip_id, status="N/A")
    v4 = [ip for ip in port["fixed_ips"] if ipaddress.ip_address(ip["ip_address"]).version == 4]
    if not v4:
        raise bad_request(f"Unable to find any IP address on external network {net_id}.", "ExternalIpAddressExhausted")
    now = now_iso()
    fip: dict[str, Any] = {
        "id": fip_id,
        "floating_ip_address": v4[0]["ip_address"],
        "floating_network_id": net_id,
        "router_id": None,
        "port_id": None,
        "fixed_ip_address": None,
        "status": "DOWN",
        "description": item.description,
        "port_forwardings": [],
        "qos_policy_id": None,
        "project_id": project,
        "tenant_id": project,
        "tags": item.tags,
        "created_at": now,
        "updated_at": now,
        "revision_number": 0,
    }
    internal = None
    if item.port_id is not None:
        assoc = resolve_association(uow, ctx, fip, item.port_id, item.fixed_ip_address)
        claim_association(uow, fip, assoc, staged)
        apply_association(fip, assoc)
        internal = assoc.port
    return fip, internal


def _reject_create_keys(body: Any) -> None:
    items: list[Any] = []
    if isinstance(body, dict):
        if isinstance(body.get("floatingip"), dict):
            items = [body["floatingip"]]
        elif isinstance(body.get("floatingips"), list):
            items = [i.get("floatingip", i) if isinstance(i, dict) else i for i in body["floatingips"]]
    for item in items:
        if isinstance(item, dict):
            for k in CREATE_FORBIDDEN:
                if k in item:
                    raise ApiError(400, "HTTPBadRequest", f"Attribute '{k}' not allowed in POST")


@router.get("/floatingips")
@off_loop
async def list_floatingips(request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)
    return list_response(request, ctx, spec_for(st.repo), st.repo.list("floatingips"))


@router.get("/floatingips/{fip_id}")
@off_loop
async def show_floatingip(fip_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    obj = st.repo.get("floatingips", fip_id)
    if obj is None or not fip_visible(ctx, obj):
        raise not_found("floatingip", fip_id)
    return show_response(request, ctx, spec_for(st.repo), obj)


@router.post("/floatingips", status_code=201)
@off_loop
async def create_floatingip(request: Request) -> JSONResponse:
    st = AppState.of(request)
    ctx = st.context(request)
    body = await read_json(request)
    _reject_create_keys(body)
    items, bulk = parse_create(body, "floatingip", "floatingips", FloatingIPCreate)
    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> list[dict[str, Any]]:
        out = []
        staged: dict[str, str] = {}
        for item in items:
            fip, port = build_fip(uow, ctx, item, staged, pol)
            uow.put("floatingips", fip)
            out.append(present_fip(fip, port))
        return out

    fips = st.repo.transact(txn)
    return JSONResponse({"floatingips": fips} if bulk else {"floatingip": fips[0]}, status_code=201)


@router.put("/floatingips/{fip_id}")
@off_loop
async def update_floatingip(fip_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    body = await read_json(request)
    if isinstance(body, dict) and body.get("floatingip") == {}:
        # Neutron: an update that names no port_id is a disassociation (its
        # _check_and_get_fip_assoc finds no port), so an empty body clears the association.
        upd, fields = FloatingIPUpdate(), {"port_id"}
    else:
        upd = parse_update(body, "floatingip", FloatingIPUpdate, read_only=UPDATE_READ_ONLY)
        fields = upd.model_fields_set
    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> dict[str, Any]:
        fip = uow.get("floatingips", fip_id)
        if fip is None or not fip_visible(ctx, fip):
            raise not_found("floatingip", fip_id)
        pol.enforce(ctx, "update_floatingip", policy.target("floatingip", fip), sorted(fields))
        check_if_match(request, fip)
        if upd.fixed_ip_address is not None and not upd.port_id:
            raise bad_fip("fixed_ip_address cannot be specified without a port_id")
        internal = uow.get("ports", fip["port_id"]) if fip.get("port_id") else None
        if "port_id" in fields:
            if upd.port_id is None:
                release_association(uow, fip)
                apply_association(fip, None)
                internal = None
            else:
                assoc = resolve_association(uow, ctx, fip, upd.port_id, upd.fixed_ip_address)
                if (fip.get("port_id"), fip.get("fixed_ip_address")) != (assoc.port["id"], assoc.fixed_ip_address):
                    release_association(uow, fip)
                if fip.get("router_id") and fip["router_id"] != assoc.router_id:
                    touch_fence(uow, fip["router_id"])
                claim_association(uow, fip, assoc)
                apply_association(fip, assoc)
                internal = assoc.port
        changed = {"description": upd.description} if "description" in fields else {}
        touch(fip, changed)
        uow.put("floatingips", fip)
        return present_fip(fip, internal)

    return {"floatingip": st.repo.transact(txn)}


@router.delete("/floatingips/{fip_id}", status_code=204)
@off_loop
async def delete_floatingip(fip_id: str, request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)
    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> None:
        fip = uow.get("floatingips", fip_id)
        if fip is None or not fip_visible(ctx, fip):
            raise not_found("floatingip", fip_id)
        pol.enforce(ctx, "delete_floatingip", policy.target("floatingip", fip))
        check_if_match(request, fip)
        release_association(uow, fip)
        for port in uow.list("ports", lambda p: p["device_owner"] == FIP_OWNER and p["device_id"] == fip_id):
            delete_port_record(uow, port)
        uow.delete("floatingips", fip_id)

    st.repo.transact(txn)
    return Response(status_code=204)
