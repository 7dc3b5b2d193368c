"""/v2.0/routers: routers with interfaces, an external gateway and extra routes (Neutron's
`router`, `ext-gw-mode`, `extraroute` and `extraroute-atomic` semantics). Only the API and the
records live here; the data plane (distributed routing, SNAT, floating IPs) is the agent's.

Records and invariants:
- A router record holds what the API shows an admin. `external_gateway_info` is null or
  `{network_id, enable_snat, external_fixed_ips}`, kept equal to the router's gateway port.
- Interfaces are ports with `device_owner` `network:router_interface` and `device_id` = the
  router (project = the router's project); the gateway is the port with `network:router_gateway`
  on an external network (project "" as in Neutron, so tenants do not see it). Every port is
  made and deleted through `services/ports.py`, in the same transaction as the router change.
  An interface is ACTIVE from the start, like the router itself: vxnet routers are
  distributed, so an interface lives on every host that needs it and no single host could
  report it up (tempest, without the `dvr` extension, waits for ACTIVE). The gateway port is
  DOWN until the gateway host's agent (the router data-plane issue) reports it.
- Every interface or gateway change rewrites the router record (revision_number + 1), so two
  concurrent changes of one router conflict in the store and one of them is rerun: the overlap
  and "already attached" checks cannot both pass on a stale view.
- Floating IP associations depend on a router's interfaces and gateway. Association and the
  changes that could break it (interface removal, gateway change, router delete) all rewrite
  the router's fence key `/vxnet/fence/router/<id>` after reading it, so they are serialized
  too: an interface in use by a floating IP cannot be removed by a concurrent request.
- IPv6 (Neutron's `_add_interface_by_subnet`): an interface on an IPv6 subnet takes its
  gateway_ip (not on an address-mode-only subnet, whose RAs come from an outside router: 400); when the router already has an interface port with an IPv6 address on that
  network, the new address is added to that port (one port, several IPv6 prefixes), and
  removing one of its subnets removes only that address (the port goes with its last one).
  A port with an IPv6 address can be attached only if the router has no other IPv6 port on
  its network (Neutron's `_validate_one_router_ipv6_port_per_network`). The gateway port on an
  external network with IPv4 and IPv6 subnets gets an address on each (EUI-64 on SLAAC
  subnets). Routing IPv6 is never NAT; floating IPs stay IPv4 (api/routers/floatingips.py).
- While a gateway is set, every IPv4 interface subnet also has a snat port, and the gateway
  and snat ports are bound to the router's gateway host (services/scheduler.py, called last in
  every transaction that changes interfaces or the gateway).
- Extra routes: each nexthop lies in a subnet connected to the router and is none of the
  router's own addresses; an interface whose subnet holds a nexthop cannot be removed (409).
- vxnet routers are distributed by construction: `distributed` is always true, `ha` false.
  Both are admin-only to set and to see, as in Neutron's policy.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from vxnet.api import policy
from vxnet.api.auth import Context
from vxnet.api.collection import ResourceSpec, check_if_match, list_response, show_response
from vxnet.api.errors import ApiError, bad_request, conflict, not_found
from vxnet.api.routers.networks import network_visible, touch
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, off_loop, read_json
from vxnet.api.validation import (
    Body,
    Bool,
    Cidr,
    Description,
    IpAddr,
    Name,
    ProjectId,
    Tags,
    Uuid,
    parse_create,
    parse_update,
    resolve_project,
    validate,
)
from vxnet.services import ipam, ipv6, rbac, scheduler
from vxnet.services.ports import delete_port_record, network_subnets, new_port_record
from vxnet.services.repo import ROOT, UnitOfWork, new_id, now_iso

router = Routes(prefix="/v2.0", tags=["routers"])

INTF_OWNER = "network:router_interface"
GW_OWNER = "network:router_gateway"
INTF_STATUS = "ACTIVE"  # see the module docstring
MAX_ROUTES = 30  # Neutron's default `max_routes`
ADMIN_ONLY = {"distributed", "ha"}
AVAILABILITY_ZONES = ("nova",)
CREATE_FORBIDDEN = ("routes", "status", "id", "gw_port_id", "availability_zones")
UPDATE_READ_ONLY = ("id", "status", "project_id", "tenant_id", "availability_zone_hints",
                    "availability_zones", "flavor_id", "gw_port_id")


# -- errors with Neutron's wording ------------------------------------------------------------

def router_not_found(router_id: str) -> ApiError:
    return ApiError(404, "RouterNotFound", f"Router {router_id} could not be found")


def bad_router(msg: str) -> ApiError:
    return bad_request(f"Bad router request: {msg}.")


def invalid_routes(routes: list[dict[str, str]], reason: str) -> ApiError:
    return ApiError(400, "InvalidRoutes", f"Invalid format for routes: {routes}, {reason}")


# -- visibility and presentation --------------------------------------------------------------

def router_visible(ctx: Context, obj: dict[str, Any]) -> bool:
    return ctx.is_admin or obj["project_id"] == ctx.project_id


def present_router(ctx: Context, obj: dict[str, Any]) -> dict[str, Any]:
    out = dict(obj)
    if not ctx.is_admin:
        for k in ADMIN_ONLY:
            out.pop(k, None)
    return out


def port_visible(ctx: Context, port: dict[str, Any]) -> bool:
    """Ports are seen by admins and their own project (Neutron's get_port policy)."""
    return ctx.is_admin or port["project_id"] == ctx.project_id


def subnet_visible(ctx: Context, subnet: dict[str, Any], network: dict[str, Any] | None) -> bool:
    if ctx.is_admin or subnet["project_id"] == ctx.project_id:
        return True
    return network is not None and (rbac.shared_with(network, ctx.project_id) or network["project_id"] == ctx.project_id)


SPEC = ResourceSpec("routers", "router", visible=router_visible, present=present_router)


# -- request models ---------------------------------------------------------------------------

class RouteItem(Body):
    destination: Cidr
    nexthop: IpAddr


class ExternalFixedIp(Body):
    subnet_id: Uuid | None = None
    ip_address: IpAddr | None = None


class GatewayInfo(Body):
    network_id: Uuid
    enable_snat: Bool | None = None
    external_fixed_ips: list[ExternalFixedIp] | None = None


class RouterCreate(Body):
    name: Name = ""
    description: Description = ""
    admin_state_up: Bool = True
    tags: Tags = []
    project_id: ProjectId | None = None
    tenant_id: ProjectId | None = None
    external_gateway_info: dict[str, Any] | None = None
    distributed: Bool | None = None
    ha: Bool | None = None
    availability_zone_hints: list[str] = []
    flavor_id: Uuid | None = None


class RouterUpdate(Body):
    name: Name = ""
    description: Description = ""
    admin_state_up: Bool = True
    external_gateway_info: dict[str, Any] | None = None
    routes: list[RouteItem] | None = None
    distributed: Bool | None = None
    ha: Bool | None = None


class RoutesBody(Body):
    routes: list[RouteItem] = Field(default_factory=list)


def parse_gateway(raw: dict[str, Any] | None) -> GatewayInfo | None:
    """`external_gateway_info`: null or {} clears the gateway; otherwise `network_id` is needed."""
    if not raw:
        return None
    allowed = {"network_id", "enable_snat", "external_fixed_ips"}
    if "network_id" not in raw or set(raw) - allowed:
        provided = "{" + ", ".join(repr(k) for k in sorted(raw)) + "}"
        raise bad_request("Invalid input for external_gateway_info. Reason: Validation of dictionary's keys "
                          f"failed. Expected keys: {{'network_id'}} Provided keys: {provided}.")
    return validate(GatewayInfo, raw)


def router_attrs(fields: set[str], gw: GatewayInfo | None) -> list[str]:
    """The attributes a create/update sets, with the gateway's keys as
    `external_gateway_info:<key>` (Neutron's sub-attribute rules: `distributed`, `ha`, a
    gateway's `enable_snat` / `external_fixed_ips` are admin-only)."""
    attrs = sorted(fields)
    if gw is not None:
        attrs += [f"external_gateway_info:{f}" for f in sorted(gw.model_fields_set)]
    return attrs


def check_distribution(distributed: bool | None, ha: bool | None) -> None:
    if distributed is False:
        raise bad_router("vxnet routers are always distributed; distributed=False is not supported")
    if ha is True:
        raise bad_router("vxnet routers are distributed and do not support ha=True")


def normalize_routes(routes: list[RouteItem]) -> list[dict[str, str]]:
    """The routes as dicts; a repeated route is a 400 (Neutron's hostroutes validator). Seen
    routes are kept in a set: a body of ~10^4 routes (the count is checked later) compared
    pairwise took minutes."""
    out: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for r in routes:
        d = {"destination": r.destination, "nexthop": r.nexthop}
        if (r.destination, r.nexthop) in seen:
            raise bad_request(f"Invalid input for routes. Reason: Duplicate hostroute '{d}'.")
        seen.add((r.destination, r.nexthop))
        out.append(d)
    return out


# -- reads inside a transaction ---------------------------------------------------------------

def router_ports(uow: UnitOfWork, router_id: str) -> list[dict[str, Any]]:
    """The router's interface and gateway ports (guarded reads)."""
    return uow.list("ports", lambda p: p["device_id"] == router_id and p["device_owner"] in (INTF_OWNER, GW_OWNER))


def interface_ports(ports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in ports if p["device_owner"] == INTF_OWNER]


def gateway_port(ports: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((p for p in ports if p["device_owner"] == GW_OWNER), None)


def fence_key(router_id: str) -> str:
    return f"{ROOT}fence/router/{router_id}"


def touch_fence(uow: UnitOfWork, router_id: str) -> None:
    """Read and rewrite the router's fence key (see the module docstring)."""
    uow.get_raw(fence_key(router_id))
    uow.touch(fence_key(router_id))


def get_router_for_update(uow: UnitOfWork, ctx: Context, router_id: str, action: str, pol: policy.Policy,
                          attrs: list[str] | None = None) -> dict[str, Any]:
    """The router (private copy): 404 if the caller cannot see it, 403 if the policy denies
    `action` (or one of its attribute rules)."""
    obj = uow.get("routers", router_id)
    if obj is None or not router_visible(ctx, obj):
        raise router_not_found(router_id)
    pol.enforce(ctx, action, policy.target("router", obj), attrs or ())
    return obj


def get_subnet_visible(uow: UnitOfWork, ctx: Context, subnet_id: str) -> dict[str, Any]:
    subnet = uow.get("subnets", subnet_id)
    if subnet is None:
        raise not_found("subnet", subnet_id)
    if (not ctx.is_admin and subnet["project_id"] != ctx.project_id
            and not subnet_visible(ctx, subnet, uow.get("networks", subnet["network_id"]))):
        raise not_found("subnet", subnet_id)
    return subnet


def overlaps(a: str, b: str) -> bool:
    return ipaddress.ip_network(a).overlaps(ipaddress.ip_network(b))


def check_dup_router_subnets(uow: UnitOfWork, ports: list[dict[str, Any]], new_subnets: list[dict[str, Any]]) -> None:
    """Neutron's _check_for_dup_router_subnets: a subnet already on the router, or a CIDR
    overlapping one of the router's subnets (all subnets of its gateway network included), is a 400."""
    new_ids = {s["id"] for s in new_subnets}
    existing: list[str] = []
    for p in ports:
        for ip in p["fixed_ips"]:
            if ip["subnet_id"] in new_ids:
                raise bad_router(f"Router already has a port on subnet {ip['subnet_id']}")
            if p["device_owner"] == GW_OWNER:
                existing.extend(s["id"] for s in network_subnets(uow, p["network_id"]))
            else:
                existing.append(ip["subnet_id"])
    for sid in dict.fromkeys(existing):
        sub = uow.get("subnets", sid)
        if sub is None:
            continue
        for s in new_subnets:
            if overlaps(sub["cidr"], s["cidr"]):
                raise bad_router(f"Cidr {s['cidr']} of subnet {s['id']} overlaps with cidr {sub['cidr']} "
                                 f"of subnet {sub['id']}")


def validate_routes(uow: UnitOfWork, router_id: str, routes: list[dict[str, str]], ports: list[dict[str, Any]]) -> None:
    """Every nexthop in a subnet of the router's ports and not one of the router's own
    addresses (InvalidRoutes); at most MAX_ROUTES routes (RoutesExhausted)."""
    if len(routes) > MAX_ROUTES:
        raise bad_request(f"Unable to complete operation for {router_id}. The number of routes exceeds the "
                          f"maximum {MAX_ROUTES}.", "RoutesExhausted")
    if not routes:
        return
    cidrs: list[str] = []
    ips = set()
    for p in ports:
        if p["device_owner"] == GW_OWNER:  # Neutron counts every subnet of the gateway network
            cidrs.extend(s["cidr"] for s in network_subnets(uow, p["network_id"]))
        for ip in p["fixed_ips"]:
            sub = uow.get("subnets", ip["subnet_id"])
            if sub is not None:
                cidrs.append(sub["cidr"])
            ips.add(ip["ip_address"])
    for r in routes:
        hop = ipaddress.ip_address(r["nexthop"])
        if not any(hop.version == ipaddress.ip_network(c).version and hop in ipaddress.ip_network(c) for c in cidrs):
            raise invalid_routes(routes, "the nexthop is not connected with router")
        if r["nexthop"] in ips:
            raise invalid_routes(routes, "the nexthop is used by router")


def fips_of_router(uow: UnitOfWork, router_id: str) -> list[dict[str, Any]]:
    return uow.list("floatingips", lambda f: f.get("router_id") == router_id)


# -- gateway ----------------------------------------------------------------------------------

def gw_info_of(port: dict[str, Any], enable_snat: bool) -> dict[str, Any]:
    return {
        "network_id": port["network_id"],
        "enable_snat": enable_snat,
        "external_fixed_ips": [{"subnet_id": ip["subnet_id"], "ip_address": ip["ip_address"]}
                               for ip in port["fixed_ips"]],
    }


def _requested_ips(gw: GatewayInfo) -> list[dict[str, str]]:
    out = []
    for item in gw.external_fixed_ips or []:
        d = {k: v for k, v in (("subnet_id", item.subnet_id), ("ip_address", item.ip_address)) if v is not None}
        out.append(d)
    return out


def replace_fixed_ips(uow: UnitOfWork, port: dict[str, Any], network: dict[str, Any],
                      wanted: list[dict[str, str]]) -> None:
    """Change a port's fixed IPs in place (Neutron's update semantics): an entry naming an
    address the port holds keeps it, a subnet-only entry keeps the port's address on that subnet,
    anything else is allocated; addresses no longer wanted are released, but for the EUI-64
    addresses on auto-address subnets, which a gateway port keeps (Neutron)."""
    old = list(port["fixed_ips"])
    kept: list[dict[str, str]] = []
    new_req: list[dict[str, str]] = []
    for w in wanted:
        match = None
        for ip in old:
            if ip in kept:
                continue
            if "ip_address" in w:
                if ip["ip_address"] == w["ip_address"] and w.get("subnet_id", ip["subnet_id"]) == ip["subnet_id"]:
                    match = ip
            elif ip["subnet_id"] == w.get("subnet_id"):
                match = ip
            if match:
                break
        if match:
            kept.append(match)
        else:
            new_req.append(w)
    subnets = network_subnets(uow, network["id"])
    auto = {s["id"] for s in subnets if ipv6.is_auto_address_subnet(s)}
    kept += [ip for ip in old if ip not in kept and ip["subnet_id"] in auto]  # Neutron keeps them (a gateway port)
    added = ipam.allocate_fixed_ips(uow, network, subnets, port["id"], new_req, device_owner=port["device_owner"],
                                    mac=port["mac_address"], add_auto=False) if new_req else []
    for ip in old:
        if ip not in kept:
            ipam.release_ip(uow, ip["subnet_id"], ip["ip_address"])
    touch(port, {"fixed_ips": kept + added})
    uow.put("ports", port)


def set_gateway(uow: UnitOfWork, ctx: Context, rtr: dict[str, Any], gw: GatewayInfo | None,
                ports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set, change or clear the router's gateway (Neutron's _update_router_gw_info with
    ext-gw-mode); returns the router's ports afterwards. Mutates `rtr`."""
    current = gateway_port(ports)
    interfaces = interface_ports(ports)
    if gw is None:
        if current is not None:
            ensure_gateway_unused(uow, rtr)
            delete_port_record(uow, current)
        rtr["external_gateway_info"] = None
        return interfaces
    net = uow.get("networks", gw.network_id)
    if net is None or not network_visible(ctx, net):
        raise not_found("network", gw.network_id)
    if not net["router:external"]:
        raise bad_router(f"Network {gw.network_id} is not an external network")
    wanted = _requested_ips(gw)
    subnets = network_subnets(uow, net["id"])
    for w in wanted:
        for s in subnets:
            if s.get("gateway_ip") and w.get("ip_address") == s["gateway_ip"]:
                raise bad_router(f"External IP {w['ip_address']} is the same as the gateway IP")
    enable_snat = True if gw.enable_snat is None else gw.enable_snat  # Neutron: enable_snat_by_default
    if current is not None and current["network_id"] == net["id"]:
        port = dict(current)
        if wanted and _ips_changed(current, wanted):
            replace_fixed_ips(uow, port, net, wanted)
    else:
        if current is not None:
            ensure_gateway_unused(uow, rtr)
            delete_port_record(uow, current)
        check_dup_router_subnets(uow, interfaces, subnets)
        port = new_port_record(uow, network=net, project_id="", fixed_ips=wanted or None,
                               device_owner=GW_OWNER, device_id=rtr["id"])
        if not port["fixed_ips"]:
            raise bad_request(f"Unable to find any IP address on external network {net['id']}.",
                              "ExternalIpAddressExhausted")
    rtr["external_gateway_info"] = gw_info_of(port, enable_snat)
    return interfaces + [port]


def _ips_changed(port: dict[str, Any], wanted: list[dict[str, str]]) -> bool:
    """Neutron's _check_for_external_ip_change."""
    subnets = {ip["subnet_id"] for ip in port["fixed_ips"]}
    new_subnets = {w["subnet_id"] for w in wanted if w.get("subnet_id")}
    if new_subnets != subnets:
        return True
    return {ip["ip_address"] for ip in port["fixed_ips"]} != {w["ip_address"] for w in wanted if w.get("ip_address")}


def ensure_gateway_unused(uow: UnitOfWork, rtr: dict[str, Any]) -> None:
    """409 while floating IPs are served through this router's gateway."""
    touch_fence(uow, rtr["id"])
    if fips_of_router(uow, rtr["id"]):
        net = (rtr.get("external_gateway_info") or {}).get("network_id")
        raise conflict("RouterExternalGatewayInUseByFloatingIp",
                       f"Gateway cannot be updated for router {rtr['id']}, since a gateway to external network "
                       f"{net} is required by one or more floating IPs.")


# -- create / read ----------------------------------------------------------------------------

def build_router(uow: UnitOfWork, ctx: Context, item: RouterCreate, pol: policy.Policy) -> dict[str, Any]:
    fields = set(item.model_fields_set)
    gw = parse_gateway(item.external_gateway_info)
    project = resolve_project(ctx, item.project_id, item.tenant_id)
    pol.enforce(ctx, "create_router", policy.target("router", {"project_id": project}), router_attrs(fields, gw))
    check_distribution(item.distributed, item.ha)
    for az in item.availability_zone_hints:
        if az not in AVAILABILITY_ZONES:
            raise ApiError(404, "AvailabilityZoneNotFound", f"AvailabilityZone {az} could not be found.")
    if item.flavor_id is not None:
        raise ApiError(404, "FlavorNotFound", f"Flavor {item.flavor_id} could not be found.")
    now = now_iso()
    rtr: dict[str, Any] = {
        "id": new_id("routers"),
        "name": item.name,
        "description": item.description,
        "admin_state_up": item.admin_state_up,
        "status": "ACTIVE",
        "external_gateway_info": None,
        "routes": [],
        "distributed": True,
        "ha": False,
        "availability_zone_hints": list(item.availability_zone_hints),
        "availability_zones": list(AVAILABILITY_ZONES),
        "flavor_id": None,
        "project_id": project,
        "tenant_id": project,
        "tags": item.tags,
        "created_at": now,
        "updated_at": now,
        "revision_number": 0,
    }
    if gw is not None:
        set_gateway(uow, ctx, rtr, gw, [])
    return rtr


def _reject_keys(body: Any, member: str, collection: str, keys: tuple[str, ...], message: str) -> None:
    items: list[Any] = []
    if isinstance(body, dict):
        if isinstance(body.get(member), dict):
            items = [body[member]]
        elif isinstance(body.get(collection), list):
            items = [i.get(member, i) if isinstance(i, dict) else i for i in body[collection]]
    for item in items:
        if isinstance(item, dict):
            for k in keys:
                if k in item:
                    raise ApiError(400, "HTTPBadRequest", message.format(k))


@router.get("/routers")
@off_loop
async def list_routers(request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)
    return list_response(request, ctx, SPEC, st.repo.list("routers"))


@router.get("/routers/{router_id}")
@off_loop
async def show_router(router_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    obj = st.repo.get("routers", router_id)
    if obj is None or not router_visible(ctx, obj):
        raise router_not_found(router_id)
    return show_response(request, ctx, SPEC, obj)


@router.post("/routers", status_code=201)
@off_loop
async def create_router(request: Request) -> JSONResponse:
    st = AppState.of(request)
    ctx = st.context(request)
    pol = policy.of(st.config)
    body = await read_json(request)
    _reject_keys(body, "router", "routers", CREATE_FORBIDDEN, "Attribute '{}' not allowed in POST")
    items, bulk = parse_create(body, "router", "routers", RouterCreate)

    def txn(uow: UnitOfWork) -> list[dict[str, Any]]:
        routers = [build_router(uow, ctx, item, pol) for item in items]
        for r in routers:
            uow.put("routers", r)
            scheduler.sync_router(uow, r["id"])   # snat ports + gateway host (services/scheduler.py)
        return routers

    routers = st.repo.transact(txn)
    shown = [present_router(ctx, r) for r in routers]
    return JSONResponse({"routers": shown} if bulk else {"router": shown[0]}, status_code=201)


# -- update / delete --------------------------------------------------------------------------

@router.put("/routers/{router_id}")
@off_loop
async def update_router(router_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    body = await read_json(request)
    upd = parse_update(body, "router", RouterUpdate, read_only=UPDATE_READ_ONLY)
    fields = set(upd.model_fields_set)
    gw = parse_gateway(upd.external_gateway_info) if "external_gateway_info" in fields else None
    routes = normalize_routes(upd.routes or []) if "routes" in fields else None
    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> dict[str, Any]:
        rtr = get_router_for_update(uow, ctx, router_id, "update_router", pol, router_attrs(fields, gw))
        check_distribution(upd.distributed if "distributed" in fields else None,
                           upd.ha if "ha" in fields else None)
        check_if_match(request, rtr)
        ports = router_ports(uow, router_id)
        if "external_gateway_info" in fields:
            ports = set_gateway(uow, ctx, rtr, gw, ports)
        if routes is not None or "external_gateway_info" in fields:
            # Neutron re-validates the routes against a changed gateway, too.
            validate_routes(uow, router_id, routes if routes is not None else rtr["routes"], ports)
        changed = {f: getattr(upd, f) for f in ("name", "description", "admin_state_up") if f in fields}
        if routes is not None:
            changed["routes"] = routes
        touch(rtr, changed)
        uow.put("routers", rtr)
        scheduler.sync_router(uow, router_id)
        return rtr

    return {"router": present_router(ctx, st.repo.transact(txn))}


async def _change_routes(router_id: str, request: Request, adding: bool) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("router"), dict):
        raise bad_request("Resource body required: expected 'router'")
    delta = normalize_routes(validate(RoutesBody, body["router"]).routes)
    action = "add_extraroutes" if adding else "remove_extraroutes"
    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> dict[str, Any]:
        rtr = get_router_for_update(uow, ctx, router_id, action, pol)
        old = rtr["routes"]
        have = {(r["destination"], r["nexthop"]) for r in (old if adding else delta)}
        if adding:
            new = old + [r for r in delta if (r["destination"], r["nexthop"]) not in have]
        else:
            new = [r for r in old if (r["destination"], r["nexthop"]) not in have]
        validate_routes(uow, router_id, new, router_ports(uow, router_id))
        touch(rtr, {"routes": new})
        uow.put("routers", rtr)
        return rtr

    return {"router": present_router(ctx, st.repo.transact(txn))}


@router.put("/routers/{router_id}/add_extraroutes")
@off_loop
async def add_extraroutes(router_id: str, request: Request) -> dict[str, Any]:
    return await _change_routes(router_id, request, adding=True)


@router.put("/routers/{router_id}/remove_extraroutes")
@off_loop
async def remove_extraroutes(router_id: str, request: Request) -> dict[str, Any]:
    return await _change_routes(router_id, request, adding=False)


@router.delete("/routers/{router_id}", status_code=204)
@off_loop
async def delete_router(router_id: str, request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)
    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> None:
        rtr = get_router_for_update(uow, ctx, router_id, "delete_router", pol)
        check_if_match(request, rtr)
        ports = router_ports(uow, router_id)
        attached = [p["id"] for p in interface_ports(ports)]
        if attached:
            raise conflict("RouterInUse", f"Router {router_id} has ports still attached: " + ", ".join(attached))
        gw = gateway_port(ports)
        if gw is not None:
            ensure_gateway_unused(uow, rtr)
            delete_port_record(uow, gw)
        uow.delete("routers", router_id)
        uow.delete_raw(fence_key(router_id))
        scheduler.sync_router(uow, router_id)

    st.repo.transact(txn)
    return Response(status_code=204)


# -- interfaces -------------------------------------------------------------------------------

def _interface_request(body: Any, for_removal: bool) -> tuple[str | None, str | None]:
    """Neutron's _validate_interface_info over the unwrapped body."""
    if not isinstance(body, dict):
        raise bad_router("Either subnet_id or port_id must be specified")
    port_id = body.get("port_id") if "port_id" in body else None
    subnet_id = body.get("subnet_id") if "subnet_id" in body else None
    if "port_id" not in body and "subnet_id" not in body:
        raise bad_router("Either subnet_id or port_id must be specified")
    for key in ("port_id", "subnet_id"):
        if key in body and not _is_uuid(body[key]):
            raise bad_router(f"'{body[key]}' is not a valid UUID")
    if not for_removal and "port_id" in body and "subnet_id" in body:
        raise bad_router("Cannot specify both subnet-id and port-id")
    return port_id, subnet_id


def _is_uuid(v: Any) -> bool:
    try:
        return isinstance(v, str) and bool(uuid.UUID(v))
    except ValueError:
        return False


def interface_info(rtr: dict[str, Any], port: dict[str, Any], subnet_ids: list[str], last: bool) -> dict[str, Any]:
    return {
        "id": rtr["id"],
        "tenant_id": port["project_id"],
        "project_id": port["project_id"],
        "port_id": port["id"],
        "network_id": port["network_id"],
        "subnet_id": subnet_ids[-1] if last else subnet_ids[0],
        "subnet_ids": subnet_ids,
    }


def _add_by_subnet(uow: UnitOfWork, ctx: Context, rtr: dict[str, Any], ports: list[dict[str, Any]],
                   subnet_id: str) -> tuple[dict[str, Any], list[str]]:
    subnet = get_subnet_visible(uow, ctx, subnet_id)
    if not subnet.get("gateway_ip"):
        raise bad_router("Subnet for router interface must have a gateway IP")
    if not ctx.is_admin and subnet["project_id"] != ctx.project_id:
        raise bad_router(f"Cannot add interface to router because subnet {subnet_id} is not owned by project "
                         "making the request")
    if subnet["ip_version"] == 6 and subnet.get("ipv6_ra_mode") is None and subnet.get("ipv6_address_mode"):
        raise bad_router(f"IPv6 subnet {subnet_id} configured to receive RAs from an external router cannot be "
                         "added to Neutron Router.")
    check_dup_router_subnets(uow, ports, [subnet])
    net = uow.get("networks", subnet["network_id"])
    if net is None:
        raise not_found("subnet", subnet_id)
    if subnet["ip_version"] == 6:
        shared = ipv6_port_on_network(ports, net["id"])
        if shared is not None:  # one router port per network carries every IPv6 prefix
            port = dict(shared)
            ip = ipam.allocate_ip(uow, subnet, port["id"], subnet["gateway_ip"], INTF_OWNER)
            touch(port, {"fixed_ips": [*port["fixed_ips"], {"subnet_id": subnet_id, "ip_address": ip}]})
            uow.put("ports", port)
            return port, [subnet_id]
    port = new_port_record(uow, network=net, project_id=rtr["project_id"],
                           fixed_ips=[{"subnet_id": subnet_id, "ip_address": subnet["gateway_ip"]}],
                           device_owner=INTF_OWNER, device_id=rtr["id"], status=INTF_STATUS)
    return port, [subnet_id]


def has_ipv6_address(port: dict[str, Any]) -> bool:
    return any(ipaddress.ip_address(ip["ip_address"]).version == 6 for ip in port["fixed_ips"])


def ipv6_port_on_network(ports: list[dict[str, Any]], network_id: str) -> dict[str, Any] | None:
    """The router's interface port with an IPv6 address on `network_id` (Neutron's
    `_find_ipv6_router_port_by_network`), if any."""
    return next((p for p in interface_ports(ports) if p["network_id"] == network_id and p["device_owner"] == INTF_OWNER
                 and has_ipv6_address(p)), None)


def _add_by_port(uow: UnitOfWork, ctx: Context, rtr: dict[str, Any], ports: list[dict[str, Any]],
                 port_id: str) -> tuple[dict[str, Any], list[str]]:
    port = uow.get("ports", port_id)
    if port is None or not port_visible(ctx, port):
        raise not_found("port", port_id)
    if port["device_id"] != "":
        raise conflict("PortInUse", f"Unable to complete operation on port {port_id} for network "
                       f"{port['network_id']}. Port already has an attached device {port['device_id']}.")
    if not port["fixed_ips"]:
        raise bad_router("Router port must have at least one fixed IP")
    subnets = []
    for ip in port["fixed_ips"]:
        sub = uow.get("subnets", ip["subnet_id"])
        if sub is None:
            raise not_found("subnet", ip["subnet_id"])
        subnets.append(sub)
    check_dup_router_subnets(uow, ports, subnets)
    if len([s for s in subnets if s.get("ip_version", 4) == 4]) > 1:
        raise bad_router("Cannot have multiple IPv4 subnets on router port")
    other = ipv6_port_on_network(ports, port["network_id"]) if has_ipv6_address(port) else None
    if other is not None and other["id"] != port["id"]:
        raise bad_router(f"Router already contains IPv6 port {other['id']} belonging to network id "
                         f"{port['network_id']}. Only one IPv6 port from the same network subnet can be connected "
                         "to a router.")
    if not ctx.is_admin:
        for ip, sub in zip(port["fixed_ips"], subnets, strict=True):
            if sub["project_id"] != ctx.project_id and not ipam.in_pools(sub, ip["ip_address"]):
                raise bad_router(f"Cannot add interface to router because specified port {port_id} has an IP "
                                 f"address out of the allocation pool of subnet {sub['id']}, which is not owned "
                                 "by the project making the request")
    touch(port, {"device_id": rtr["id"], "device_owner": INTF_OWNER, "status": INTF_STATUS})
    uow.put("ports", port)
    return port, [s["id"] for s in subnets]


@router.put("/routers/{router_id}/add_router_interface")
@off_loop
async def add_router_interface(router_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    port_id, subnet_id = _interface_request(await read_json(request), for_removal=False)
    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> dict[str, Any]:
        rtr = get_router_for_update(uow, ctx, router_id, "add_router_interface", pol)
        ports = router_ports(uow, router_id)
        if port_id is not None:
            port, subnet_ids = _add_by_port(uow, ctx, rtr, ports, port_id)
        else:
            port, subnet_ids = _add_by_subnet(uow, ctx, rtr, ports, subnet_id)  # type: ignore[arg-type]
        touch(rtr)  # serializes concurrent interface changes of this router
        uow.put("routers", rtr)
        scheduler.sync_router(uow, router_id)
        return interface_info(rtr, port, subnet_ids, last=True)

    return st.repo.transact(txn)


def _confirm_not_in_use(uow: UnitOfWork, rtr: dict[str, Any], subnet: dict[str, Any]) -> None:
    """Neutron: an interface serving floating IPs (409 RouterInterfaceInUseByFloatingIP) or a
    route's nexthop (409 RouterInterfaceInUseByRoute) cannot be removed."""
    net = ipaddress.ip_network(subnet["cidr"])
    on_subnet = {p["id"] for p in uow.list("ports", lambda p: any(ip["subnet_id"] == subnet["id"]
                                                                   for ip in p["fixed_ips"]))}
    for fip in fips_of_router(uow, rtr["id"]):
        if fip.get("fixed_ip_address") and ipaddress.ip_address(fip["fixed_ip_address"]) in net \
                and fip.get("port_id") in on_subnet:
            raise conflict("RouterInterfaceInUseByFloatingIP",
                           f"Router interface for subnet {subnet['id']} on router {rtr['id']} cannot be deleted, "
                           "as it is required by one or more floating IPs.")
    for r in rtr["routes"]:
        hop = ipaddress.ip_address(r["nexthop"])
        if hop.version == net.version and hop in net:
            raise conflict("RouterInterfaceInUseByRoute",
                           f"Router interface for subnet {subnet['id']} on router {rtr['id']} cannot be deleted, "
                           "as it is required by one or more routes.")


def _remove_subnet_from_port(uow: UnitOfWork, port: dict[str, Any], subnet_id: str) -> None:
    port = dict(port)
    for ip in port["fixed_ips"]:
        if ip["subnet_id"] == subnet_id:
            ipam.release_ip(uow, subnet_id, ip["ip_address"])
    touch(port, {"fixed_ips": [ip for ip in port["fixed_ips"] if ip["subnet_id"] != subnet_id]})
    uow.put("ports", port)


@router.put("/routers/{router_id}/remove_router_interface")
@off_loop
async def remove_router_interface(router_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    port_id, subnet_id = _interface_request(await read_json(request), for_removal=True)
    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> dict[str, Any]:
        rtr = get_router_for_update(uow, ctx, router_id, "remove_router_interface", pol)
        touch_fence(uow, router_id)
        interfaces = interface_ports(router_ports(uow, router_id))
        if port_id is not None:
            port = next((p for p in interfaces if p["id"] == port_id), None)
            if port is None:
                raise ApiError(404, "RouterInterfaceNotFound",
                               f"Router {router_id} does not have an interface with id {port_id}")
            subnet_ids = [ip["subnet_id"] for ip in port["fixed_ips"]]
            if subnet_id is not None and subnet_id not in subnet_ids:
                raise bad_request(f"Subnet on port {port_id} does not match the requested subnet {subnet_id}.",
                                  "SubnetMismatchForPort")
            for sid in subnet_ids:
                sub = uow.get("subnets", sid)
                if sub is not None:
                    _confirm_not_in_use(uow, rtr, sub)
        else:
            subnet = get_subnet_visible(uow, ctx, subnet_id)  # type: ignore[arg-type]
            on_net = [p for p in interfaces if p["network_id"] == subnet["network_id"]]
            if on_net:
                _confirm_not_in_use(uow, rtr, subnet)
            port = next((p for p in on_net if any(ip["subnet_id"] == subnet_id for ip in p["fixed_ips"])), None)
            if port is None:
                raise ApiError(404, "RouterInterfaceNotFoundForSubnet",
                               f"Router {router_id} has no interface on subnet {subnet_id}")
            subnet_ids = [subnet_id]
            if len({ip["subnet_id"] for ip in port["fixed_ips"]}) > 1:  # a multi-prefix port: drop one
                _remove_subnet_from_port(uow, port, subnet_id)
                touch(rtr)
                uow.put("routers", rtr)
                scheduler.sync_router(uow, router_id)
                return interface_info(rtr, port, subnet_ids, last=False)
        delete_port_record(uow, port)
        touch(rtr)
        uow.put("routers", rtr)
        scheduler.sync_router(uow, router_id)
        return interface_info(rtr, port, subnet_ids, last=False)

    return st.repo.transact(txn)

