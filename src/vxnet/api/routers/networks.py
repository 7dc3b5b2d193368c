"""/v2.0/networks: tenant networks (one VXLAN VNI each) and admin external/flat networks.

Invariants:
- Every `vxlan` network holds exactly one VNI, claimed at `/vxnet/vni/<vni>` in the same
  transaction that creates it and released in the one that deletes it.
- `subnets` lists the network's subnet ids; subnet create/delete update it (and so bump the
  network's revision_number, as Neutron does).
- Sharing is network RBAC (services/rbac.py): `shared` and `router:external` stand for "*"
  policies, created and removed with the flags; other projects see the network and its
  `shared` attribute as those policies grant them; `_rbac` (the network's policy entries) is
  never shown.
- `mtu` may be any non-negative value (0: the default, the underlay's minus VXLAN's 50 bytes);
  below 68 (IPv4's minimum) the network can have no IPv4 subnet: adding one, or lowering the MTU
  of a network that has one, is a 409 (Neutron). Agents never program a link MTU below 68.
- A network with ports other than its own service ports cannot be deleted (409 NetworkInUse);
  unassociated floating IPs on an external network do not count and are deleted with it;
  deleting it deletes its subnets and its RBAC policies.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from vxnet.api import policy
from vxnet.api.auth import Context
from vxnet.api.collection import ResourceSpec, check_if_match, get_visible, list_response, show_response
from vxnet.api.errors import ApiError, bad_request, conflict, not_found
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, off_loop, read_json
from vxnet.api.validation import (
    Body,
    Bool,
    Description,
    Name,
    ProjectId,
    Tags,
    Uuid,
    parse_create,
    parse_update,
    resolve_project,
)
from vxnet.services import qos, rbac
from vxnet.services.ipam import allocate_vni, subnet_alloc_key, vni_key
from vxnet.services.ports import delete_port_record
from vxnet.services.repo import ROOT, UnitOfWork, new_id, now_iso

router = Routes(prefix="/v2.0", tags=["networks"])

# Neutron's policy: these are admin-only on create and update (shared included).
SERVICE_OWNERS = ("network:dhcp",)
FIP_OWNER = "network:floatingip"
GW_OWNER = "network:router_gateway"


def network_visible(ctx: Context, obj: dict[str, Any]) -> bool:
    """Admins, the owner, and the projects RBAC policies let see it (services/rbac.py)."""
    return ctx.is_admin or rbac.visible_to(obj, ctx.project_id)


def present_network(ctx: Context, obj: dict[str, Any]) -> dict[str, Any]:
    """`shared` as the caller's project is granted it (Neutron), internal entries and (for
    non-admins) the provider attributes removed."""
    out = rbac.strip(obj)
    out["shared"] = rbac.shared_with(obj, ctx.project_id)
    if not ctx.is_admin:
        for k in ("provider:network_type", "provider:physical_network", "provider:segmentation_id"):
            out.pop(k, None)
    return out


SPEC = ResourceSpec("networks", "network", visible=network_visible, present=present_network)


class NetworkCreate(Body):
    name: Name = ""
    description: Description = ""
    admin_state_up: Bool = True
    shared: Bool = False
    port_security_enabled: Bool = True
    mtu: int | None = Field(default=None, ge=0, le=9000)  # Neutron: non-negative; 0 = the default
    tags: Tags = []
    availability_zone_hints: list[str] = []
    project_id: ProjectId | None = None
    tenant_id: ProjectId | None = None
    router_external: Bool = Field(default=False, alias="router:external")
    is_default: Bool = False
    provider_network_type: str | None = Field(default=None, alias="provider:network_type")
    provider_physical_network: str | None = Field(default=None, alias="provider:physical_network")
    provider_segmentation_id: int | None = Field(default=None, alias="provider:segmentation_id")
    qos_policy_id: Uuid | None = None


# Neutron's attributes of a network that exist but may not be updated (allow_put false): naming
# one is "Cannot update read-only attribute", not "Unrecognized attribute".
READ_ONLY = ("id", "project_id", "tenant_id", "status", "subnets", "created_at", "updated_at", "revision_number")


class NetworkUpdate(Body):
    name: Name = ""
    description: Description = ""
    admin_state_up: Bool = True
    shared: Bool = False
    port_security_enabled: Bool = True
    mtu: int = Field(default=1450, ge=1, le=9000)
    router_external: Bool = Field(default=False, alias="router:external")
    is_default: Bool = False
    qos_policy_id: Uuid | None = None


def _aliased(model: Body) -> dict[str, Any]:
    """Set attributes under their wire names."""
    out = {}
    for name in model.model_fields_set:
        alias = type(model).model_fields[name].alias or name
        out[alias] = getattr(model, name)
    return out


def max_mtu(st: AppState) -> int:
    return st.config.underlay_mtu - 50


IPV4_MIN_MTU = 68  # RFC 791: every IPv4 link carries 68-byte datagrams unfragmented


IPV6_MIN_MTU = 1280  # RFC 8200: every IPv6 link carries 1280-byte packets


def mtu_conflict(network_id: str, mtu: int, version: int = 4) -> ApiError:
    """409: an IPv4 (IPv6) subnet on a network whose MTU is below IPv4's (IPv6's) minimum
    (Neutron refuses the subnet, or the MTU change, with a Conflict; the network itself may have
    such an MTU)."""
    least = IPV4_MIN_MTU if version == 4 else IPV6_MIN_MTU
    return conflict("Conflict", f"Unable to complete operation on network {network_id}: its MTU {mtu} is below "
                    f"the minimum MTU of IPv{version} ({least}), so it cannot have an IPv{version} subnet.")


CREATE_DEFAULTS = {"shared": False, "is_default": False}


def _wire_set(item: Body) -> set[str]:
    return {(type(item).model_fields[n].alias or n) for n in item.model_fields_set}


PHYSNET_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def checked_physnet(name: str | None) -> str:
    """The physical network name ("external" by default): letters, digits, '.', '_', '-', up to
    64 (it names a claim key and an agent's `PHYSNET:IF` mapping: no '/', ':' or ',')."""
    physnet = "external" if name is None else name
    if not PHYSNET_RE.fullmatch(physnet):
        raise bad_request(f"Invalid input for operation: physical_network '{physnet[:80]}' must be 1 to 64 letters, "
                          "digits, '.', '_' or '-'.")
    return physnet


def physnet_key(physnet: str, vlan: int | None) -> str:
    """The claim of a flat network (the whole physical network) or of one VLAN on it."""
    return f"{ROOT}physnet/{physnet}" + (f"/vlan/{vlan}" if vlan is not None else "")


def build_network(st: AppState, ctx: Context, item: NetworkCreate, uow: UnitOfWork) -> dict[str, Any]:
    project = resolve_project(ctx, item.project_id, item.tenant_id)
    values = item.model_dump(by_alias=True)
    # Neutron's _is_attribute_explicitly_set: an attribute given its default is not "set".
    set_fields = sorted(f for f in values if f in _wire_set(item) and values[f] != CREATE_DEFAULTS.get(f, ...))
    policy.of(st.config).enforce(ctx, "create_network", policy.target("network", {**values, "project_id": project}),
                                 set_fields)
    if item.mtu is not None and item.mtu > max_mtu(st):
        raise bad_request(f"Requested MTU is too big, maximum is {max_mtu(st)}")
    net_type = item.provider_network_type or "vxlan"
    if net_type not in ("vxlan", "flat", "vlan"):
        raise bad_request(f"Invalid input for operation: network_type value '{net_type}' not supported.")
    # qos-default: a network created without a policy gets its project's default one.
    qos_policy = (qos.resolve_policy_id(uow, ctx.is_admin, ctx.project_id, item.qos_policy_id)
                  if "qos_policy_id" in item.model_fields_set else qos.default_policy_id(uow, project))
    nid = new_id("networks")
    now = now_iso()
    vni = None
    physnet = None
    if net_type == "vxlan":
        if item.provider_physical_network:
            raise bad_request("Invalid input for operation: physical_network not allowed for vxlan provider network.")
        vni = allocate_vni(uow, nid, item.provider_segmentation_id)
    elif net_type == "flat":
        physnet = checked_physnet(item.provider_physical_network)
        if item.provider_segmentation_id is not None:
            raise bad_request("Invalid input for operation: segmentation_id not allowed for flat provider network.")
        key = physnet_key(physnet, None)
        if uow.is_claimed(key):
            raise conflict("FlatNetworkInUse", f"Unable to create the flat network. Physical network {physnet} is in use.")
        uow.claim(key, nid)
    else:
        # VLAN: accepted as in Neutron (an admin names the physical network and the VLAN); a
        # gateway agent whose kernel has no 802.1Q refuses it with that reason (docs/gateway.md).
        physnet = checked_physnet(item.provider_physical_network)
        vni = item.provider_segmentation_id
        if vni is None or not 1 <= vni <= 4094:
            raise bad_request(f"Invalid input for operation: segmentation_id {vni} out of range (1 through 4094).")
        key = physnet_key(physnet, vni)
        if uow.is_claimed(key):
            raise conflict("VlanIdInUse", f"Unable to create the network. The VLAN {vni} on physical network "
                                          f"{physnet} is in use.")
        uow.claim(key, nid)
    net = {
        "id": nid,
        "name": item.name,
        "description": item.description,
        "admin_state_up": item.admin_state_up,
        "status": "ACTIVE",
        "subnets": [],
        "shared": item.shared,
        "router:external": item.router_external,
        "is_default": item.is_default,
        "mtu": item.mtu or max_mtu(st),
        "port_security_enabled": item.port_security_enabled,
        "availability_zone_hints": item.availability_zone_hints,
        "availability_zones": ["nova"],
        "ipv4_address_scope": None,
        "ipv6_address_scope": None,
        "l2_adjacency": True,
        "provider:network_type": net_type,
        "provider:physical_network": physnet,
        "provider:segmentation_id": vni,
        "qos_policy_id": qos_policy,
        "project_id": project,
        "tenant_id": project,
        "tags": item.tags,
        "created_at": now,
        "updated_at": now,
        "revision_number": 0,
    }
    rbac.initial_entries(uow, net)
    return net


@router.get("/networks")
@off_loop
async def list_networks(request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)
    return list_response(request, ctx, SPEC, st.repo.list("networks"))


@router.get("/networks/{network_id}")
@off_loop
async def show_network(network_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    return show_response(request, ctx, SPEC, get_visible(st.repo, ctx, SPEC, network_id))


@router.post("/networks", status_code=201)
@off_loop
async def create_network(request: Request) -> JSONResponse:
    st = AppState.of(request)
    ctx = st.context(request)
    items, bulk = parse_create(await read_json(request), "network", "networks", NetworkCreate)

    def txn(uow: UnitOfWork) -> list[dict[str, Any]]:
        nets = [build_network(st, ctx, item, uow) for item in items]
        for n in nets:
            uow.put("networks", n)
        return nets

    nets = st.repo.transact(txn)
    shown = [present_network(ctx, n) for n in nets]
    return JSONResponse({"networks": shown} if bulk else {"network": shown[0]}, status_code=201)


@router.put("/networks/{network_id}")
@off_loop
async def update_network(network_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    upd = parse_update(await read_json(request), "network", NetworkUpdate, read_only=READ_ONLY)
    fields = _aliased(upd)
    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> dict[str, Any]:
        net = uow.get("networks", network_id)
        if net is None or not network_visible(ctx, net):
            raise not_found("network", network_id)
        pol.enforce(ctx, "update_network", policy.target("network", {**net, **fields}), sorted(fields))
        check_if_match(request, net)
        if "qos_policy_id" in fields:   # another project's non-shared policy: 404, as in Neutron
            fields["qos_policy_id"] = qos.resolve_policy_id(uow, ctx.is_admin, ctx.project_id, fields["qos_policy_id"])
        if "mtu" in fields and fields["mtu"] > max_mtu(st):
            raise bad_request(f"Requested MTU is too big, maximum is {max_mtu(st)}")
        if "shared" in fields or "router:external" in fields:
            rbac.materialize(uow, net)
        if "mtu" in fields and fields["mtu"] < IPV6_MIN_MTU and net["subnets"]:
            versions = {s["ip_version"] for s in uow.list("subnets", lambda s: s["network_id"] == network_id)}
            if 4 in versions and fields["mtu"] < IPV4_MIN_MTU:
                raise mtu_conflict(network_id, fields["mtu"])
            if 6 in versions:
                raise mtu_conflict(network_id, fields["mtu"], 6)
        if fields.get("shared") is False and net["shared"]:
            # Neutron's _validate_shared_update: projects with their own policy keep access
            allowed = rbac.projects_with_own_entry(net, rbac.SHARED) | {net["project_id"]}
            foreign = uow.list("ports", lambda p: p["network_id"] == network_id and p["project_id"] not in allowed
                               and not p["device_owner"].startswith("network:"), guard_new=True)
            foreign += uow.list("subnets", lambda s: s["network_id"] == network_id and s["project_id"] not in allowed)
            if foreign:
                raise conflict("InvalidSharedSetting",
                               f"Unable to reconfigure sharing settings for network {network_id}. "
                               "Multiple tenants are using it.")
        if fields.get("router:external") is False and net["router:external"] and uow.list(
                "ports", lambda p: p["network_id"] == network_id and p["device_owner"] == GW_OWNER, guard_new=True):
            raise conflict("ExternalNetworkInUse",
                           f"External network {network_id} cannot be updated to be made non-external, "
                           "since it has existing gateway ports.")
        if "shared" in fields:
            rbac.set_shared(uow, net, bool(fields["shared"]))
        if "router:external" in fields:
            rbac.set_external(uow, net, bool(fields["router:external"]))
        touch(net, fields)
        uow.put("networks", net)
        return net

    return {"network": present_network(ctx, st.repo.transact(txn))}


def touch(obj: dict[str, Any], fields: dict[str, Any] | None = None) -> None:
    """Apply changed attributes and bump revision_number / updated_at (Neutron's standard attrs)."""
    if fields:
        obj.update(fields)
    obj["revision_number"] = obj.get("revision_number", 0) + 1
    obj["updated_at"] = now_iso()


def network_in_use(uow: UnitOfWork, network_id: str, doomed_fips: frozenset[str] = frozenset()) -> bool:
    """Ports other than service ports, and other than those of the floating IPs `doomed_fips`
    (deleted together with the network), are on the network."""
    # guard_new: a port created on the network meanwhile makes the delete rerun and see it
    ports = uow.list("ports", lambda p: p["network_id"] == network_id, guard_new=True)
    return any(
        p["device_owner"] not in SERVICE_OWNERS
        and not (p["device_owner"] == FIP_OWNER and p["device_id"] in doomed_fips)
        for p in ports
    )


@router.delete("/networks/{network_id}", status_code=204)
@off_loop
async def delete_network(network_id: str, request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)

    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> None:
        net = uow.get("networks", network_id)
        if net is None or not network_visible(ctx, net):
            raise not_found("network", network_id)
        pol.enforce(ctx, "delete_network", policy.target("network", net))
        check_if_match(request, net)
        # Neutron deletes an external network's unassociated floating IPs with it (ml2
        # delete_network -> l3 delete_disassociated_floatingips); an associated one keeps its
        # network:floatingip port, so the network stays in use.
        loose_fips = uow.list("floatingips", lambda f: f.get("floating_network_id") == network_id
                              and not f.get("port_id"))
        if network_in_use(uow, network_id, frozenset(f["id"] for f in loose_fips)):
            raise conflict(
                "NetworkInUse",
                f"Unable to complete operation on network {network_id}. "
                "There are one or more ports still in use on the network.",
            )
        for f in loose_fips:
            uow.delete("floatingips", f["id"])
        for p in uow.list("ports", lambda p: p["network_id"] == network_id):
            delete_port_record(uow, p)
        for sid in net["subnets"]:
            uow.delete("subnets", sid)
            uow.delete_raw(subnet_alloc_key(sid))
        if net["provider:segmentation_id"] is not None and net["provider:network_type"] == "vxlan":
            uow.delete_raw(vni_key(net["provider:segmentation_id"]))
        if net["provider:physical_network"]:
            vid = net["provider:segmentation_id"] if net["provider:network_type"] == "vlan" else None
            uow.delete_raw(physnet_key(net["provider:physical_network"], vid))
        rbac.delete_all(uow, net)
        uow.delete("networks", network_id)

    st.repo.transact(txn)
    return Response(status_code=204)

