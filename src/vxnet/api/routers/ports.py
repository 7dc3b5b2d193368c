"""/v2.0/ports: ports with fixed IPs, MACs, security groups, address pairs and port binding.

Invariants:
- A port's MAC and fixed IPs are claimed (services/ipam.py) in the transaction that creates or
  changes the port, and released in the one that changes or deletes it: never a duplicate,
  never a leak, even when the request fails half-way (nothing is committed then).
- `status` is DOWN on create and is owned by the host agent afterwards; an update keeps it,
  unless `binding:host_id` changes (then DOWN again until the new host reports).
- Router interface/gateway and floating IP ports are deleted through their owner's API
  (409 ServicePortInUse here) while that owner exists.
- Visibility: admins, the port's project and the network's owner. Changes are decided by the
  policy (api/policy.py, Neutron's rules): the network's owner may delete, not update, another
  project's port on her network; `mac_address`, `fixed_ips` addresses, `port_security_enabled`,
  `allowed_address_pairs` and a `network:*` `device_owner` need admin or the network's owner;
  `binding:host_id`/`binding:profile` need admin or the `service` role (hidden from others).
- `binding:profile`: an object or null (= {}), at most 4095 characters of JSON (400 otherwise).
- `security_groups`: no repeats (400, Neutron's list validator) and all stateful or all stateless
  (409 SecurityGroupConflict).
- A trunk's subport keeps `device_owner`, `device_id` and `binding:host_id` while the trunk
  holds it: a non-admin's change is 409 PortInUseAsSubPort (naming the trunk).
- A port whose `device_owner` makes it part of a router or floating IP may name (`device_id`)
  only an object of its own project (409 DeviceIDNotOwnedByTenant), checked in the same
  transaction that writes the port.
"""

from __future__ import annotations

import collections
import ipaddress
import json
from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BeforeValidator, Field

from vxnet.api import policy
from vxnet.api.auth import Context
from vxnet.api.collection import ResourceSpec, check_if_match, json_response, list_response, show_response
from vxnet.api.errors import ApiError, not_found
from vxnet.api.routers.networks import network_visible
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, off_loop, read_json
from vxnet.api.validation import (
    Body,
    Bool,
    Description,
    IpAddr,
    Mac,
    Name,
    ProjectId,
    ShortStr,
    Tags,
    Uuid,
    parse_create,
    parse_update,
    resolve_project,
)
from vxnet.services import ports as svc
from vxnet.services import qos, rbac, trunks
from vxnet.services.ports import changed_ips  # noqa: F401 - part of this module's API (tests)
from vxnet.services.repo import UnitOfWork

router = Routes(prefix="/v2.0", tags=["ports"])

BINDING_HIDDEN = ("binding:host_id", "binding:vif_type", "binding:vif_details", "binding:profile")
VNIC_TYPES = ("normal", "direct", "macvtap", "baremetal", "direct-physical", "virtio-forwarder",
              "smart-nic", "remote-managed", "vdpa")
READ_ONLY = ("id", "network_id", "project_id", "tenant_id", "status", "binding:vif_type",
             "binding:vif_details", "created_at", "updated_at", "revision_number")
PROTECTED_OWNERS = svc.ROUTER_INTERFACE_OWNERS + ("network:router_gateway", "network:floatingip")


def can_bind(ctx: Context) -> bool:
    """Admins and the service role (Nova) set and see bindings; not a host-limited agent user."""
    return ctx.is_admin or ("service" in ctx.roles and ctx.hosts is None)


def port_visible(ctx: Context, port: dict[str, Any], network: dict[str, Any] | None) -> bool:
    if ctx.is_admin or port["project_id"] == ctx.project_id:
        return True
    return network is not None and network["project_id"] == ctx.project_id


def present_port(ctx: Context, port: dict[str, Any]) -> dict[str, Any]:
    """The port as `ctx` may see it (the object itself for admins: callers only read it)."""
    if can_bind(ctx):
        return port
    return {k: v for k, v in port.items() if k not in BINDING_HIDDEN}


def _fixed_ips_filter(port: dict[str, Any], wanted: list[str]) -> bool:
    """`fixed_ips=subnet_id=X&fixed_ips=ip_address=Y`: every condition holds for one entry
    (Neutron ANDs them)."""
    conds = []
    for w in wanted:
        key, _, value = w.partition("=")
        conds.append((key.strip(), value.strip()))

    def entry_ok(ip: dict[str, str]) -> bool:
        for key, value in conds:
            if key == "ip_address_substr":
                if value not in ip["ip_address"]:
                    return False
            elif key in ("subnet_id", "ip_address"):
                if ip.get(key) != value:
                    return False
            else:
                return False
        return True

    return any(entry_ok(ip) for ip in port["fixed_ips"])


def spec_for(networks: dict[str, dict[str, Any]]) -> ResourceSpec:
    def visible(ctx: Context, p: dict[str, Any]) -> bool:
        return port_visible(ctx, p, networks.get(p["network_id"]))

    return ResourceSpec("ports", "port", visible=visible, present=present_port,
                        extra_filters={"fixed_ips": _fixed_ips_filter})


def _ip_or_cidr(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"'{v}' is not a valid IP address or CIDR")  # noqa: TRY004 - pydantic reports only ValueError as a validation error
    try:
        if "/" in v:
            ipaddress.ip_network(v, strict=False)
        else:
            ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(f"'{v}' is not a valid IP address or CIDR") from None
    return v


def _vnic(v: Any) -> str:
    if v not in VNIC_TYPES:
        raise ValueError(f"{v!r} is not in {list(VNIC_TYPES)}")
    return v  # type: ignore[no-any-return]


def _unique(v: list[str] | None) -> list[str] | None:
    """Neutron's list validators: a repeated item is a 400."""
    if v is not None:
        dups = [x for x, n in collections.Counter(v).items() if n > 1]  # linear: a body holds ~10^4 ids
        if dups:
            raise ValueError("Duplicate items in the list: '" + ", ".join(dups) + "'")
    return v


def _profile(v: Any) -> dict[str, Any]:
    """Neutron's binding:profile: a dict or null (= {}), stored as at most 4095 characters of
    JSON (Neutron's column size)."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError(f"'{v}' is not a dictionary")  # noqa: TRY004 - pydantic turns only ValueError into a 400
    if len(json.dumps(v, separators=(",", ":"))) > PROFILE_MAX:
        raise ValueError(f"binding:profile exceeds {PROFILE_MAX} characters")
    return v


PROFILE_MAX = 4095
Profile = Annotated[dict[str, Any], BeforeValidator(_profile)]
IpOrCidr = Annotated[str, BeforeValidator(_ip_or_cidr)]
NoneIsEmpty = BeforeValidator(lambda v: [] if v is None else v)  # Neutron's convert_none_to_empty_list
VnicType = Annotated[str, BeforeValidator(_vnic)]


class FixedIp(Body):
    subnet_id: Uuid | None = None
    ip_address: IpAddr | None = None


class AddressPair(Body):
    ip_address: IpOrCidr
    mac_address: Mac | None = None


class PortCreate(Body):
    network_id: Uuid
    name: Name = ""
    description: Description = ""
    admin_state_up: Bool = True
    mac_address: Mac | None = None
    fixed_ips: list[FixedIp] | None = None
    device_id: ShortStr = ""
    device_owner: ShortStr = ""
    security_groups: Annotated[list[Uuid] | None, AfterValidator(_unique)] = None  # absent: default group; null: none
    port_security_enabled: Bool | None = None
    allowed_address_pairs: Annotated[list[AddressPair], NoneIsEmpty] = []
    binding_host_id: ShortStr = Field(default="", alias="binding:host_id")
    binding_profile: Profile = Field(default={}, alias="binding:profile")
    binding_vnic_type: VnicType = Field(default="normal", alias="binding:vnic_type")
    qos_policy_id: Uuid | None = None
    tags: Tags = []
    project_id: ProjectId | None = None
    tenant_id: ProjectId | None = None


class PortUpdate(Body):
    name: Name = ""
    description: Description = ""
    admin_state_up: Bool = True
    mac_address: Mac = ""
    fixed_ips: list[FixedIp] = []
    device_id: ShortStr = ""
    device_owner: ShortStr = ""
    security_groups: Annotated[list[Uuid], NoneIsEmpty, AfterValidator(_unique)] = []
    port_security_enabled: Bool = True
    allowed_address_pairs: Annotated[list[AddressPair], NoneIsEmpty] = []
    binding_host_id: ShortStr | None = Field(default=None, alias="binding:host_id")
    binding_profile: Profile | None = Field(default=None, alias="binding:profile")
    binding_vnic_type: VnicType = Field(default="normal", alias="binding:vnic_type")
    qos_policy_id: Uuid | None = None


_UPDATE_ATTR = {(f.alias or n): n for n, f in PortUpdate.model_fields.items()}  # wire name -> attribute


def _wire(model: Body) -> set[str]:
    return {type(model).model_fields[n].alias or n for n in model.model_fields_set}


def _deny(action: str, what: str = "") -> ApiError:
    return ApiError(403, "PolicyNotAuthorized", f"({action}) is disallowed by policy" + (f": {what}" if what else ""))


def _requested_ips(items: list[FixedIp] | None) -> list[dict[str, Any]] | None:
    if items is None:
        return None
    return [{k: v for k, v in i.model_dump().items() if v is not None} for i in items]


def _network_for_port(ctx: Context, uow: UnitOfWork, network_id: str) -> dict[str, Any]:
    net = uow.get("networks", network_id)
    if net is None or not network_visible(ctx, net):
        raise not_found("network", network_id)
    return net


def check_device_id(ctx: Context, uow: UnitOfWork, device_owner: str, device_id: str, project_id: str) -> None:
    """Neutron's _enforce_device_owner_not_router_intf_or_device_id, for every owner that makes
    a port part of another object (router interface or gateway, floating IP): a non-admin's port
    may name only an object of the port's own project (409 DeviceIDNotOwnedByTenant). Read in the
    transaction that writes the port, so the check and the write cannot be separated."""
    if ctx.is_admin or not device_id or device_owner not in PROTECTED_OWNERS:
        return
    collection = "floatingips" if device_owner == "network:floatingip" else "routers"
    owner = uow.get(collection, device_id)
    if owner is not None and owner["project_id"] != project_id:
        raise ApiError(409, "DeviceIDNotOwnedByTenant", f"The following device_id {device_id} is not owned by "
                       "your tenant or matches another tenants router.")


SUBPORT_FIXED = ("device_owner", "device_id", "binding:host_id")


def check_subport_update(ctx: Context, uow: UnitOfWork, port: dict[str, Any], changes: dict[str, Any]) -> None:
    """A trunk's subport keeps the device the trunk gave it: a non-admin may not change its
    `device_owner`, `device_id` or `binding:host_id` (it follows the parent's) while the trunk
    holds it (409 PortInUseAsSubPort; taking it off the trunk is `remove_subports`). Values equal
    to the current ones are no change."""
    if ctx.is_admin or port["device_owner"] != trunks.SUBPORT_OWNER:
        return
    if not any(f in changes and (changes[f] or "") != (port.get(f) or "") for f in SUBPORT_FIXED):
        return
    trunk = trunks.trunk_of_subport(uow, port["id"])
    if trunk is not None:
        raise ApiError(409, "PortInUseAsSubPort", f"Port {port['id']} is currently a subport for trunk "
                       f"{trunk['id']}.")


# Neutron's _is_attribute_explicitly_set: on create, an attribute given its default value is
# not "set" for the attribute rules (attributes without a default count whenever present).
CREATE_DEFAULTS = {"device_owner": "", "device_id": "", "binding:host_id": "", "binding:vnic_type": "normal"}


def create_attrs(item: PortCreate, fields: set[str]) -> list[str]:
    """The attributes of a create that are explicitly set (with fixed_ips' keys), for the
    `create_port:<attr>` rules."""
    values = item.model_dump(by_alias=True)
    attrs = sorted(f for f in fields if f not in CREATE_DEFAULTS or values.get(f) != CREATE_DEFAULTS[f])
    return attrs + policy.sub_attrs("fixed_ips", _requested_ips(item.fixed_ips))


def build_port(ctx: Context, item: PortCreate, uow: UnitOfWork, pol: policy.Policy) -> dict[str, Any]:
    fields = _wire(item)
    project = resolve_project(ctx, item.project_id, item.tenant_id)
    net = _network_for_port(ctx, uow, item.network_id)
    # Neutron's _validate_network_tenant_ownership: not shared (with the port's project, by
    # RBAC) -> only the network's project.
    if not ctx.is_admin and not rbac.shared_with(net, project) and net["project_id"] != project:
        raise _deny("create_port")
    wanted = {"project_id": project, "device_owner": item.device_owner, "device_id": item.device_id,
              "network_id": net["id"]}
    pol.enforce(ctx, "create_port", policy.target("port", wanted, net), create_attrs(item, fields))
    check_device_id(ctx, uow, item.device_owner, item.device_id, project)
    return svc.new_port_record(
        uow,
        network=net,
        project_id=project,
        name=item.name,
        description=item.description,
        fixed_ips=_requested_ips(item.fixed_ips),
        mac_address=item.mac_address,
        device_owner=item.device_owner,
        device_id=item.device_id,
        admin_state_up=item.admin_state_up,
        security_groups=(item.security_groups or []) if "security_groups" in fields else None,
        port_security_enabled=item.port_security_enabled,
        host_id=item.binding_host_id,
        allowed_address_pairs=[p.model_dump() for p in item.allowed_address_pairs],
        tags=item.tags,
        vnic_type=item.binding_vnic_type,
        binding_profile=item.binding_profile,
        is_admin=ctx.is_admin,
        qos_policy_id=qos.resolve_policy_id(uow, ctx.is_admin, ctx.project_id, item.qos_policy_id),
    )


@router.get("/ports")
@off_loop
async def list_ports(request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)
    nets = {n["id"]: n for n in st.repo.list("networks")}
    return list_response(request, ctx, spec_for(nets), st.repo.list("ports"))


@router.get("/ports/{port_id}")
@off_loop
async def show_port(port_id: str, request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)
    port = st.repo.get("ports", port_id)
    if port is None or not port_visible(ctx, port, st.repo.get("networks", port["network_id"])):
        raise not_found("port", port_id)
    return json_response(show_response(request, ctx, ResourceSpec("ports", "port", present=present_port), port))


@router.post("/ports", status_code=201)
@off_loop
async def create_port(request: Request) -> JSONResponse:
    st = AppState.of(request)
    ctx = st.context(request)
    items, bulk = parse_create(await read_json(request), "port", "ports", PortCreate)

    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> list[dict[str, Any]]:
        return [build_port(ctx, item, uow, pol) for item in items]

    ports = [present_port(ctx, p) for p in st.repo.transact(txn)]
    return JSONResponse({"ports": ports} if bulk else {"port": ports[0]}, status_code=201)


def _get_for_change(ctx: Context, uow: UnitOfWork, port_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The port and its network; 404 when the caller cannot see the port."""
    port = uow.get("ports", port_id)
    if port is None:
        raise not_found("port", port_id)
    net = uow.get("networks", port["network_id"])
    if not port_visible(ctx, port, net):
        raise not_found("port", port_id)
    assert net is not None
    return port, net


@router.put("/ports/{port_id}")
@off_loop
async def update_port(port_id: str, request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)
    body = await read_json(request)
    upd = parse_update(body, "port", PortUpdate, read_only=READ_ONLY)
    fields = _wire(upd)
    attrs = sorted(fields) + (policy.sub_attrs("fixed_ips", _requested_ips(upd.fixed_ips))
                              if "fixed_ips" in fields else [])
    pol = policy.of(st.config)

    changes: dict[str, Any] = {f: getattr(upd, _UPDATE_ATTR[f]) for f in fields}
    if "fixed_ips" in changes:
        changes["fixed_ips"] = _requested_ips(upd.fixed_ips) or []
    if "allowed_address_pairs" in changes:
        changes["allowed_address_pairs"] = [p.model_dump() for p in upd.allowed_address_pairs]

    def txn(uow: UnitOfWork) -> dict[str, Any]:
        port, net = _get_for_change(ctx, uow, port_id)
        # Neutron evaluates the attribute rules on the port as the update would leave it.
        after = {**port, **{f: getattr(upd, f) for f in ("device_owner", "device_id") if f in fields}}
        pol.enforce(ctx, "update_port", policy.target("port", after, net), attrs)
        check_subport_update(ctx, uow, port, changes)
        if {"device_owner", "device_id"} & fields:
            check_device_id(ctx, uow, after["device_owner"], after["device_id"], port["project_id"])
        check_if_match(request, port)
        if "qos_policy_id" in changes:   # another project's non-shared policy: 404, as in Neutron
            changes["qos_policy_id"] = qos.resolve_policy_id(uow, ctx.is_admin, ctx.project_id, upd.qos_policy_id)
        updated = svc.update_port(uow, port, net, changes, is_admin=ctx.is_admin)
        if "binding:host_id" in changes and updated.get("trunk_details"):
            trunks.follow_parent(uow, updated)    # a trunk's subports ride on its parent's device
        return updated

    return json_response({"port": present_port(ctx, st.repo.transact(txn))})


@router.delete("/ports/{port_id}", status_code=204)
@off_loop
async def delete_port(port_id: str, request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)

    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> None:
        port, net = _get_for_change(ctx, uow, port_id)
        pol.enforce(ctx, "delete_port", policy.target("port", port, net))
        check_if_match(request, port)
        owner = port["device_owner"]
        if owner in PROTECTED_OWNERS and port["device_id"]:
            collection = "floatingips" if owner == "network:floatingip" else "routers"
            if uow.get(collection, port["device_id"]) is not None:
                raise ApiError(409, "ServicePortInUse", f"Port {port_id} cannot be deleted directly via the port "
                               f"API: has device owner {owner}.")
        details = port.get("trunk_details")   # kept in step with the trunks (services/trunks.py)
        if details:
            raise ApiError(409, "PortInUseAsTrunkParent", f"Port {port_id} is currently a parent port for trunk "
                           f"{details['trunk_id']}.")
        holder = trunks.trunk_of_subport(uow, port_id) if owner == trunks.SUBPORT_OWNER else None
        if holder is not None:   # the trunk's record decides, not a device_owner the caller may have set
            raise ApiError(409, "PortInUseAsSubPort", f"Port {port_id} is currently a subport for trunk "
                           f"{holder['id']}.")
        svc.delete_port_record(uow, port)

    st.repo.transact(txn)
    return Response(status_code=204)
