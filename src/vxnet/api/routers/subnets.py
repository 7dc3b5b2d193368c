"""/v2.0/subnets: IPv4 and IPv6 subnets with allocation pools, gateway, DNS servers and host routes.

Invariants:
- A subnet belongs to one network; its id is in the network's `subnets` list, written in the
  same transaction that creates/deletes the subnet (bumping the network's revision_number).
- Subnets of one network never overlap (checked against the network's subnets, whose list the
  transaction guards through the network object).
- `allocation_pools` lie inside the CIDR (without network and broadcast addresses), do not
  overlap and never contain `gateway_ip`.
- A subnet is deleted only when no port but DHCP ports holds an IP on it (409 SubnetInUse).
  Port creation writes the subnet's allocation key `/vxnet/ipam-subnet/<id>`; the delete guards
  it, so a port allocating concurrently and the delete cannot both commit.
- Visibility: the owner, admins, and the projects the network is shared with (RBAC
  `access_as_shared` to them or to "*"). Subnets of an external, non-shared network are hidden
  from other projects (no subnet-external-network). The `shared` filter is the network's
  `shared` as the caller is shown it.
- IPv6 (Neutron's `_validate_subnet` / `_validate_ipv6_attributes`): `ipv6_ra_mode` and
  `ipv6_address_mode` are null or slaac / dhcpv6-stateful / dhcpv6-stateless; either on an IPv4
  subnet is a 400; either with `enable_dhcp` false is a 400; both set must be equal; an
  auto-address subnet (slaac or dhcpv6-stateless in either) needs a /64 (EUI-64). The gateway
  defaults to the first address (`::1`); the pools run to the last address (no broadcast); a
  link-local gateway outside the CIDR is allowed (Neutron's rule for IPv6). The modes never
  change after create. A network's MTU must be at least 1280 for an IPv6 subnet (409).
- Auto-address subnets (services/ipv6.py): creating one gives every port of the network except
  router interface ports its EUI-64 address there, in the same transaction; deleting one takes
  the address off those ports (409 SubnetInUse only while a router interface holds an address
  on it), as Neutron does.
- Subnet pools (Neutron's subnet_allocation): `subnetpool_id` (or `use_default_subnetpool`)
  with `prefixlen` (default: the pool's default_prefixlen) or a `cidr` inside the pool; the
  prefix is allocated in the create's transaction (services/subnet_alloc.py), so no two subnets
  of a pool ever overlap. A pool the caller cannot see is 404 SubnetPoolNotFound. As Neutron:
  the IPv4 subnets of a network come from one pool, or from pools of one address scope
  (400 NetworkSubnetPoolAffinityError / NetworkAddressScopeAffinityError), and the network's
  `ipv4_address_scope` is that scope, kept in the transactions that create and delete subnets
  (and that change a pool's scope: api/routers/subnetpools.py).
- The gateway address of a subnet does not change (nor become null) while a router port holds it
  (409 GatewayIpInUse, as Neutron): the router's interface would keep the old address.
"""

from __future__ import annotations

import ipaddress
import itertools
from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BeforeValidator, WithJsonSchema

from vxnet.api import policy
from vxnet.api.auth import Context
from vxnet.api.collection import ResourceSpec, check_if_match, list_response, show_response, to_bool
from vxnet.api.errors import bad_request, conflict, invalid_input, not_found
from vxnet.api.routers.networks import IPV4_MIN_MTU, mtu_conflict, network_visible, touch
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
    subnet_cidr_problem,
)
from vxnet.services import ipam, ipv6, rbac, subnet_alloc
from vxnet.services.ports import ROUTER_INTERFACE_OWNERS
from vxnet.services.repo import ROOT, UnitOfWork, new_id, now_iso

IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network

router = Routes(prefix="/v2.0", tags=["subnets"])

MAX_DNS = 5
MAX_ROUTES = 20
READ_ONLY = ("cidr", "network_id", "ip_version", "project_id", "tenant_id", "subnetpool_id",
             "ipv6_ra_mode", "ipv6_address_mode", "id")
DHCP_OWNER = "network:dhcp"
GW_OWNER = "network:router_gateway"
ROUTER_PORT_OWNERS = (*ROUTER_INTERFACE_OWNERS, "network:router_gateway")


def subnet_visible(ctx: Context, subnet: dict[str, Any], network: dict[str, Any] | None) -> bool:
    if ctx.is_admin or subnet["project_id"] == ctx.project_id:
        return True
    if network is None:
        return False
    return rbac.shared_with(network, ctx.project_id) or network["project_id"] == ctx.project_id


def spec_for(networks: dict[str, dict[str, Any]], project: str | None = None) -> ResourceSpec:
    """The subnets' ResourceSpec over a snapshot of the networks (visibility, `shared` as seen
    by a caller of `project`)."""

    def visible(ctx: Context, s: dict[str, Any]) -> bool:
        return subnet_visible(ctx, s, networks.get(s["network_id"]))

    def shared(s: dict[str, Any], wanted: list[str]) -> bool:
        net = networks.get(s["network_id"])
        value = bool(net and rbac.shared_with(net, project))
        return any(to_bool(w) == value for w in wanted)

    return ResourceSpec("subnets", "subnet", visible=visible, extra_filters={"shared": shared})


def _ip_version(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ValueError(f"'{v}' is not an integer")  # noqa: TRY004 - pydantic reports only ValueError as a validation error
    try:
        n = int(v)
    except ValueError:
        raise ValueError(f"'{v}' is not an integer") from None
    if n not in (4, 6):
        raise ValueError(f"{n} is not in valid values [4, 6]")
    return n


IpVersion = Annotated[int, BeforeValidator(_ip_version)]


def _prefixlen(v: Any) -> int:
    """Neutron's convert_to_int (the openstack CLI sends `--prefix-length` as a string)."""
    if isinstance(v, bool):
        raise ValueError(f"'{v}' is not an integer")  # noqa: TRY004 - pydantic reports only ValueError as a validation error
    try:
        n = int(v)
    except (TypeError, ValueError):
        raise ValueError(f"'{v}' is not an integer") from None
    if not 0 <= n <= 128:
        raise ValueError(f"'{v}' is not a valid prefix length")
    return n


PrefixLen = Annotated[int, BeforeValidator(_prefixlen)]


def _ipv6_mode(v: Any) -> str:
    """Neutron's validate_values over constants.IPV6_MODES."""
    if v not in ipv6.MODES:
        raise ValueError(f"'{v}' is not in {list(ipv6.MODES)}")
    return str(v)


Ipv6Mode = Annotated[str, BeforeValidator(_ipv6_mode), WithJsonSchema({"type": "string", "enum": list(ipv6.MODES)})]
NoneIsEmpty = BeforeValidator(lambda v: [] if v is None else v)  # Neutron's convert_none_to_empty_list


class Pool(Body):
    start: IpAddr
    end: IpAddr


class HostRoute(Body):
    destination: Cidr
    nexthop: IpAddr


class SubnetCreate(Body):
    network_id: Uuid
    ip_version: IpVersion
    cidr: Cidr | None = None
    name: Name = ""
    description: Description = ""
    gateway_ip: IpAddr | None = None
    allocation_pools: list[Pool] | None = None
    enable_dhcp: Bool = True
    dns_nameservers: Annotated[list[IpAddr], NoneIsEmpty] = []
    host_routes: Annotated[list[HostRoute], NoneIsEmpty] = []
    ipv6_ra_mode: Ipv6Mode | None = None
    ipv6_address_mode: Ipv6Mode | None = None
    subnetpool_id: Uuid | None = None
    use_default_subnetpool: Bool = False
    prefixlen: PrefixLen | None = None
    segment_id: None = None
    service_types: list[str] = []
    tags: Tags = []
    project_id: ProjectId | None = None
    tenant_id: ProjectId | None = None


class SubnetUpdate(Body):
    name: Name = ""
    description: Description = ""
    gateway_ip: IpAddr | None = None
    allocation_pools: list[Pool] = []
    enable_dhcp: Bool = True
    dns_nameservers: Annotated[list[IpAddr], NoneIsEmpty] = []
    host_routes: Annotated[list[HostRoute], NoneIsEmpty] = []
    service_types: list[str] = []
    segment_id: None = None


# validation (pure) ----------------------------------------------------------------------------
def _pool_str(start: Any, end: Any) -> str:
    return f"{start}-{end}"


def host_range(net: IpNet) -> tuple[int, int]:
    """First and last address a pool may hold: Neutron's generate_pools / validate_allocation_pools
    (no network address; no broadcast address in IPv4; IPv4 /31 and /32 keep every address)."""
    if net.version == 4 and net.prefixlen >= 31:
        return int(net.network_address), int(net.broadcast_address)
    if net.num_addresses == 1:
        return int(net.network_address), int(net.network_address)
    return int(net.network_address) + 1, int(net.broadcast_address) - (net.version == 4)


def default_pools(net: IpNet, gateway: str | None) -> list[dict[str, str]]:
    """The CIDR's host range minus the gateway (one or two pools)."""
    first, last = host_range(net)
    ranges = [(first, last)]
    if gateway is not None:
        g = int(ipaddress.ip_address(gateway))
        ranges = []
        if first <= g - 1:
            ranges.append((first, min(last, g - 1)))
        if g + 1 <= last:
            ranges.append((max(first, g + 1), last))
        if not (first <= g <= last):
            ranges = [(first, last)]
    return [{"start": str(ipaddress.ip_address(a)), "end": str(ipaddress.ip_address(b))} for a, b in ranges if a <= b]


def validate_pools(net: IpNet, pools: list[dict[str, str]]) -> list[dict[str, str]]:
    """Given pools, sorted: each inside the host range, start <= end, no overlaps."""
    lo, hi = host_range(net)
    first, last = ipaddress.ip_address(lo), ipaddress.ip_address(hi)
    spans = []
    for p in pools:
        start, end = ipaddress.ip_address(p["start"]), ipaddress.ip_address(p["end"])
        if start.version != net.version or end.version != net.version or start > end:
            raise bad_request(f"The allocation pool {_pool_str(start, end)} is not valid.", "InvalidAllocationPool")
        if start < first or end > last:
            raise bad_request(f"The allocation pool {_pool_str(start, end)} spans beyond the subnet cidr {net}.",
                              "OutOfBoundsAllocationPool")
        spans.append((start, end))
    spans.sort()
    for (s1, e1), (s2, e2) in itertools.pairwise(spans):
        if s2 <= e1:
            raise conflict("OverlappingAllocationPools",
                           f"Found overlapping allocation pools: {_pool_str(s1, e1)} and {_pool_str(s2, e2)} "
                           f"for subnet {net}.")
    return [{"start": str(s), "end": str(e)} for s, e in spans]


def check_gateway(net: IpNet, gateway: str | None, pools: list[dict[str, str]]) -> None:
    if gateway is None:
        return
    gw = ipaddress.ip_address(gateway)
    if gw.version != net.version:
        raise invalid_input(f"gateway_ip '{gateway}' does not match the ip_version '{net.version}'")
    if gw not in net and not (gw.version == 6 and gw.is_link_local):  # Neutron: a v6 gateway may be link-local
        raise invalid_input(f"Gateway is not valid on subnet {net}: {gateway} is outside it")
    if gw == net.network_address and (net.version == 6 or net.prefixlen < 31):
        raise invalid_input(f"Gateway is not valid on subnet {net}: {gateway} is its network address")
    if net.version == 4 and net.prefixlen < 31 and gw == net.broadcast_address:
        raise invalid_input(f"Gateway is not valid on subnet {net}: {gateway} is its broadcast address")
    for p in pools:
        if ipaddress.ip_address(p["start"]) <= gw <= ipaddress.ip_address(p["end"]):
            raise conflict("GatewayConflictWithAllocationPools",
                           f"Gateway ip {gateway} conflicts with allocation pool {_pool_str(p['start'], p['end'])}")


def check_dns(servers: list[str]) -> list[str]:
    if len(servers) > MAX_DNS:
        raise bad_request(f"Number of DNS nameservers exceeds the limit {MAX_DNS}", "DNSNameServersExhausted")
    seen: set[str] = set()
    for s in servers:
        if s in seen:
            raise bad_request(f"Invalid input for dns_nameservers. Reason: Duplicate nameserver '{s}'.")
        seen.add(s)
    return servers


def check_routes(routes: list[HostRoute], version: int) -> list[dict[str, str]]:
    if len(routes) > MAX_ROUTES:
        raise bad_request(f"Number of host routes exceeds the limit {MAX_ROUTES}", "HostRoutesExhausted")
    out: list[dict[str, str]] = []
    for r in routes:
        dest = ipaddress.ip_network(r.destination)
        hop = ipaddress.ip_address(r.nexthop)
        if dest.version != version or hop.version != version:
            raise invalid_input(f"host_route {r.destination} via {r.nexthop} does not match the ip_version '{version}'")
        item = {"destination": r.destination, "nexthop": r.nexthop}
        if item in out:
            raise bad_request(f"Invalid input for host_routes. Reason: Duplicate hostroute '{item}'.")
        out.append(item)
    return out


def check_ipv6_modes(version: int, ra_mode: str | None, address_mode: str | None, enable_dhcp: bool) -> None:
    """Neutron's `_validate_subnet` (modes on IPv4) and `_validate_ipv6_attributes` (DHCP off,
    the combination); the /64 rule needs the CIDR (check_eui64_applicable)."""
    if version == 4:
        if ra_mode is not None:
            raise invalid_input("ipv6_ra_mode is not valid when ip_version is 4")
        if address_mode is not None:
            raise invalid_input("ipv6_address_mode is not valid when ip_version is 4")
        return
    if (ra_mode is not None or address_mode is not None) and not enable_dhcp:
        raise invalid_input("ipv6_ra_mode or ipv6_address_mode cannot be set when enable_dhcp is set to False.")
    if ra_mode is not None and address_mode is not None and ra_mode != address_mode:
        raise invalid_input(f"ipv6_ra_mode set to '{ra_mode}' with ipv6_address_mode set to '{address_mode}' is "
                            "not valid. If both attributes are set, they must be the same value")


def check_eui64_applicable(subnet: dict[str, Any]) -> None:
    """Neutron's `_validate_eui64_applicable`: SLAAC addresses need a /64."""
    if ipv6.is_auto_address_subnet(subnet) and ipaddress.ip_network(subnet["cidr"]).prefixlen != 64:
        raise invalid_input(f"Invalid CIDR {subnet['cidr']} for IPv6 address mode. OpenStack uses the EUI-64 "
                            "address format, which requires the prefix to be /64.")


def check_request(item: SubnetCreate) -> None:
    """Neutron's checks of how the CIDR is asked for (`_create_subnet_precommit`)."""
    if item.ip_version not in (4, 6):
        raise bad_request(f"Invalid input for ip_version. Reason: {item.ip_version} is not in valid values [4, 6].")
    check_ipv6_modes(item.ip_version, item.ipv6_ra_mode, item.ipv6_address_mode, item.enable_dhcp)
    if item.cidr is not None and item.prefixlen is not None:
        raise bad_request("Bad subnets request: cidr and prefixlen must not be supplied together.")
    if item.subnetpool_id is not None and item.use_default_subnetpool:
        raise bad_request("Bad subnets request: subnetpool_id and use_default_subnetpool cannot both be specified.")
    pooled = item.subnetpool_id is not None or item.use_default_subnetpool
    if not pooled and item.cidr is None:
        raise bad_request("Bad subnets request: a subnetpool must be specified in the absence of a cidr.")
    if pooled and item.cidr is None and item.allocation_pools is not None:
        raise bad_request("Bad subnets request: allocation_pools allowed only for specific subnet requests.")


def resolve_pool(uow: UnitOfWork, ctx: Context, item: SubnetCreate) -> dict[str, Any] | None:
    """The pool the subnet is to come from (read guarded), None for a plain CIDR."""
    if item.use_default_subnetpool:
        pool_id = uow.get_raw(subnet_alloc.default_key(item.ip_version))
        pool = uow.get("subnetpools", pool_id) if pool_id else None
        if pool is None or not rbac.visible(ctx.is_admin, ctx.project_id, pool):
            raise bad_request(f"Bad subnets request: No default subnetpool found for IPv{item.ip_version}.")
        return pool
    if item.subnetpool_id is None:
        return None
    pool = uow.get("subnetpools", item.subnetpool_id)
    if pool is None or not rbac.visible(ctx.is_admin, ctx.project_id, pool):
        raise not_found("subnetpool", item.subnetpool_id)
    if pool["ip_version"] != item.ip_version:
        raise invalid_input(f"ip_version {item.ip_version} does not match the ip_version {pool['ip_version']} of "
                            f"subnet pool {pool['id']}")
    return pool


def check_affinity(net: dict[str, Any], others: list[dict[str, Any]], pool: dict[str, Any] | None,
                   version: int) -> None:
    """Neutron's _validate_network_subnetpools: a network's subnets of one IP version come from one
    pool, or from pools of one address scope; a network with pool subnets (of that IP version)
    takes no plain CIDR of that version."""
    scope = net.get(f"ipv{version}_address_scope")
    if scope and pool is not None and pool["address_scope_id"] != scope:
        raise bad_request("Subnets of the same address family hosted on the same network must all participate "
                          "in the same address scope.", "NetworkAddressScopeAffinityError")
    for s in others:
        if s["ip_version"] != version:
            continue
        if pool is not None:
            if s.get("subnetpool_id") != pool["id"] and not scope:
                raise bad_request("Subnets hosted on the same network must be allocated from the same subnet pool.",
                                  "NetworkSubnetPoolAffinityError")
        elif s.get("subnetpool_id"):
            raise bad_request("Subnets hosted on the same network must be allocated from the same subnet pool.",
                              "NetworkSubnetPoolAffinityError")


def check_cidr(cidr: str, ip_version: int, enable_dhcp: bool) -> IpNet:
    net = ipaddress.ip_network(cidr)
    if net.version != ip_version:
        raise invalid_input(f"cidr '{cidr}' does not match the ip_version '{ip_version}'")
    problem = subnet_cidr_problem(net, enable_dhcp)
    if problem:
        raise invalid_input(problem)
    return net


def check_gateway_free(uow: UnitOfWork, subnet: dict[str, Any]) -> None:
    """Neutron's GatewayIpInUse: the current gateway address may not move (nor go away) while a
    router port holds it. The read guards the address's claim, so a router interface added
    concurrently and this update cannot both commit."""
    current = subnet["gateway_ip"]
    if current is None:
        return
    holder = uow.get_raw(ipam.ip_key(subnet["id"], current))
    port = uow.get("ports", holder) if holder else None
    if port is not None and port["device_owner"] in ROUTER_PORT_OWNERS:
        raise conflict("GatewayIpInUse", f"Current gateway ip {current} already in use by port {port['id']}. "
                       "Unable to update.")


# transactions --------------------------------------------------------------------------------
def build_subnet(ctx: Context, item: SubnetCreate, uow: UnitOfWork, nets: dict[str, dict[str, Any]],
                 staged: dict[str, list[dict[str, Any]]], pol: policy.Policy) -> dict[str, Any]:
    net = nets.get(item.network_id)
    if net is None:
        net = uow.get("networks", item.network_id)
        if net is None or not network_visible(ctx, net):
            raise not_found("network", item.network_id)
        nets[item.network_id] = net
    project = resolve_project(ctx, item.project_id, item.tenant_id)
    fields = sorted(type(item).model_fields[n].alias or n for n in item.model_fields_set)
    pol.enforce(ctx, "create_subnet", policy.target("subnet", {"project_id": project, "network_id": net["id"]}, net),
                fields)
    check_request(item)
    pool = resolve_pool(uow, ctx, item)
    if item.ip_version == 4 and int(net.get("mtu") or IPV4_MIN_MTU) < IPV4_MIN_MTU:
        raise mtu_conflict(net["id"], net["mtu"])
    if item.ip_version == 6 and int(net.get("mtu") or ipv6.IPV6_MIN_MTU) < ipv6.IPV6_MIN_MTU:
        raise mtu_conflict(net["id"], net["mtu"], 6)
    others = uow.list("subnets", lambda s: s["network_id"] == net["id"]) + staged.get(net["id"], [])
    check_affinity(net, others, pool, item.ip_version)
    requested = item.cidr
    if pool is not None:
        requested = subnet_alloc.allocate(uow, pool, project, cidr=item.cidr, prefixlen=item.prefixlen,
                                          staged=[s for group in staged.values() for s in group])
    cidr = check_cidr(requested, item.ip_version, item.enable_dhcp)  # type: ignore[arg-type]
    for other in others:
        if ipaddress.ip_network(other["cidr"]).overlaps(cidr):
            raise invalid_input(f"Requested subnet with cidr: {cidr} for network: {net['id']} overlaps with "
                                "another subnet")
    fields = item.model_fields_set
    if "gateway_ip" in fields:
        gateway = item.gateway_ip
    else:
        gateway = str(cidr.network_address + 1) if cidr.prefixlen < cidr.max_prefixlen - 1 else None
    if item.allocation_pools is not None:
        pools = validate_pools(cidr, [p.model_dump() for p in item.allocation_pools])
    else:
        pools = default_pools(cidr, gateway)
    check_gateway(cidr, gateway, pools)
    now = now_iso()
    sid = new_id("subnets")
    subnet = {
        "id": sid,
        "name": item.name,
        "description": item.description,
        "network_id": net["id"],
        "project_id": project,
        "tenant_id": project,
        "ip_version": item.ip_version,
        "cidr": str(cidr),
        "gateway_ip": gateway,
        "allocation_pools": pools,
        "enable_dhcp": item.enable_dhcp,
        "dns_nameservers": check_dns(item.dns_nameservers),
        "host_routes": check_routes(item.host_routes, item.ip_version),
        "ipv6_ra_mode": item.ipv6_ra_mode,
        "ipv6_address_mode": item.ipv6_address_mode,
        "subnetpool_id": pool["id"] if pool is not None else None,
        "segment_id": None,
        "service_types": item.service_types,
        "tags": item.tags,
        "created_at": now,
        "updated_at": now,
        "revision_number": 0,
    }
    check_eui64_applicable(subnet)
    staged.setdefault(net["id"], []).append(subnet)
    net["subnets"] = net["subnets"] + [sid]
    if pool is not None:
        net[f"ipv{item.ip_version}_address_scope"] = pool["address_scope_id"]
    return subnet


def add_auto_addresses(uow: UnitOfWork, subnet: dict[str, Any]) -> None:
    """Neutron's `_add_auto_addrs_on_network_ports`: a new auto-address subnet gives every port
    of its network but router interface ports its EUI-64 address."""
    if not ipv6.is_auto_address_subnet(subnet):
        return
    # guard_new: a port created meanwhile (it did not see this subnet) makes this unit rerun
    for p in uow.list("ports", lambda p: p["network_id"] == subnet["network_id"], guard_new=True):
        if not ipam.takes_auto_address(p["device_owner"]):
            continue
        port = uow.get("ports", p["id"]) or dict(p)  # a bulk create's earlier subnet may have staged it
        ip = ipam.allocate_ip(uow, subnet, port["id"], ipv6.eui64_address(subnet["cidr"], port["mac_address"]))
        port["fixed_ips"] = [*port["fixed_ips"], {"subnet_id": subnet["id"], "ip_address": ip}]
        touch(port)
        uow.put("ports", port)
        sync_gateway_info(uow, port)


def sync_gateway_info(uow: UnitOfWork, port: dict[str, Any]) -> None:
    """Keep a router's `external_gateway_info.external_fixed_ips` equal to its gateway port's
    addresses when a subnet change adds or takes one (api/routers/routers.py's invariant)."""
    if port["device_owner"] != GW_OWNER or not port["device_id"]:
        return
    rtr = uow.get("routers", port["device_id"])
    if rtr is None or not rtr.get("external_gateway_info"):
        return
    info = dict(rtr["external_gateway_info"])
    info["external_fixed_ips"] = [{"subnet_id": ip["subnet_id"], "ip_address": ip["ip_address"]}
                                  for ip in port["fixed_ips"]]
    touch(rtr, {"external_gateway_info": info})
    uow.put("routers", rtr)


@router.get("/subnets")
@off_loop
async def list_subnets(request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)
    nets = {n["id"]: n for n in st.repo.list("networks")}
    return list_response(request, ctx, spec_for(nets, ctx.project_id), st.repo.list("subnets"))


def _get_visible(st: AppState, ctx: Context, subnet_id: str) -> dict[str, Any]:
    subnet = st.repo.get("subnets", subnet_id)
    if subnet is None:
        raise not_found("subnet", subnet_id)
    net = st.repo.get("networks", subnet["network_id"])
    if not subnet_visible(ctx, subnet, net):
        raise not_found("subnet", subnet_id)
    return subnet


@router.get("/subnets/{subnet_id}")
@off_loop
async def show_subnet(subnet_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    subnet = _get_visible(st, ctx, subnet_id)
    return show_response(request, ctx, ResourceSpec("subnets", "subnet"), subnet)


@router.post("/subnets", status_code=201)
@off_loop
async def create_subnet(request: Request) -> JSONResponse:
    st = AppState.of(request)
    ctx = st.context(request)
    items, bulk = parse_create(await read_json(request), "subnet", "subnets", SubnetCreate)
    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> list[dict[str, Any]]:
        nets: dict[str, dict[str, Any]] = {}
        staged: dict[str, list[dict[str, Any]]] = {}
        subnets = [build_subnet(ctx, item, uow, nets, staged, pol) for item in items]
        for s in subnets:
            uow.put("subnets", s)
            add_auto_addresses(uow, s)
        for net in nets.values():
            touch(net)
            uow.put("networks", net)
        return subnets

    subnets = st.repo.transact(txn)
    return JSONResponse({"subnets": subnets} if bulk else {"subnet": subnets[0]}, status_code=201)


@router.put("/subnets/{subnet_id}")
@off_loop
async def update_subnet(subnet_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    body = await read_json(request)
    upd = parse_update(body, "subnet", SubnetUpdate, read_only=READ_ONLY)
    fields = upd.model_fields_set
    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> dict[str, Any]:
        subnet = uow.get("subnets", subnet_id)
        if subnet is None:
            raise not_found("subnet", subnet_id)
        net = uow.get("networks", subnet["network_id"])
        if not subnet_visible(ctx, subnet, net):
            raise not_found("subnet", subnet_id)
        pol.enforce(ctx, "update_subnet", policy.target("subnet", subnet, net), sorted(fields))
        check_if_match(request, subnet)
        cidr = ipaddress.ip_network(subnet["cidr"])
        changed: dict[str, Any] = {}
        for f in ("name", "description", "enable_dhcp", "service_types"):
            if f in fields:
                changed[f] = getattr(upd, f)
        if ("enable_dhcp" in fields and not upd.enable_dhcp
                and (subnet.get("ipv6_ra_mode") or subnet.get("ipv6_address_mode"))):
            raise invalid_input("Cannot disable enable_dhcp with ipv6 attributes set")  # _validate_ipv6_update_dhcp
        if (upd.enable_dhcp and "enable_dhcp" in fields and not subnet["enable_dhcp"]
                and cidr.prefixlen > cidr.max_prefixlen - 2):
            raise invalid_input("Subnet has a prefix length that is incompatible with DHCP service enabled")
        if "dns_nameservers" in fields:
            changed["dns_nameservers"] = check_dns(upd.dns_nameservers)
        if "host_routes" in fields:
            changed["host_routes"] = check_routes(upd.host_routes, cidr.version)
        gateway = upd.gateway_ip if "gateway_ip" in fields else subnet["gateway_ip"]
        pools = subnet["allocation_pools"]
        if "allocation_pools" in fields:
            pools = validate_pools(cidr, [p.model_dump() for p in upd.allocation_pools])  # type: ignore[arg-type]
            changed["allocation_pools"] = pools
        if "gateway_ip" in fields and gateway != subnet["gateway_ip"]:
            check_gateway_free(uow, subnet)
        if "gateway_ip" in fields and gateway != subnet["gateway_ip"] and gateway is not None:
            holder = uow.get_raw(ipam.ip_key(subnet_id, gateway))
            if holder is not None:
                port = uow.get("ports", holder)
                if port is None or not port["device_owner"].startswith("network:router_interface"):
                    raise conflict("IpAddressInUse",
                                   f"Unable to complete operation for network {subnet['network_id']}. "
                                   f"The IP address {gateway} is in use.")
        if "gateway_ip" in fields or "allocation_pools" in fields:
            check_gateway(cidr, gateway, pools)  # type: ignore[arg-type]
        if "gateway_ip" in fields:
            changed["gateway_ip"] = gateway
        touch(subnet, changed)
        uow.put("subnets", subnet)
        return subnet

    return {"subnet": st.repo.transact(txn)}


@router.delete("/subnets/{subnet_id}", status_code=204)
@off_loop
async def delete_subnet(subnet_id: str, request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)
    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> None:
        subnet = uow.get("subnets", subnet_id)
        if subnet is None:
            raise not_found("subnet", subnet_id)
        net = uow.get("networks", subnet["network_id"])
        if not subnet_visible(ctx, subnet, net):
            raise not_found("subnet", subnet_id)
        pol.enforce(ctx, "delete_subnet", policy.target("subnet", subnet, net))
        check_if_match(request, subnet)
        uow.get_raw(ipam.subnet_alloc_key(subnet_id))  # guard: no allocation may commit meanwhile
        holders = uow.list("ports", lambda p: any(ip["subnet_id"] == subnet_id for ip in p["fixed_ips"]))
        auto = ipv6.is_auto_address_subnet(subnet)
        if any(p["device_owner"] in ipam.ROUTER_INTERFACE_OWNERS_SNAT if auto else p["device_owner"] != DHCP_OWNER
               for p in holders):
            raise conflict("SubnetInUse", f"Unable to complete operation on subnet {subnet_id}: "
                           "One or more ports have an IP allocation from this subnet.")
        for p in holders:  # DHCP ports (any port on an auto-address subnet): drop their address there
            port = dict(p)
            for ip in port["fixed_ips"]:
                if ip["subnet_id"] == subnet_id:
                    ipam.release_ip(uow, subnet_id, ip["ip_address"])
            port["fixed_ips"] = [ip for ip in port["fixed_ips"] if ip["subnet_id"] != subnet_id]
            touch(port)
            uow.put("ports", port)
            sync_gateway_info(uow, port)
        kvs, _ = uow.repo.store.range(f"{ROOT}ipam/{subnet_id}/")
        for kv in kvs:  # defensive: nothing should be left; never leave orphans behind
            uow.delete_raw(kv.key)
        uow.delete_raw(ipam.subnet_alloc_key(subnet_id))
        uow.delete("subnets", subnet_id)
        if net is not None:
            changed: dict[str, Any] = {"subnets": [s for s in net["subnets"] if s != subnet_id]}
            if subnet.get("subnetpool_id") and not uow.list(
                    "subnets", lambda s: s["network_id"] == net["id"] and s["id"] != subnet_id
                    and s["ip_version"] == subnet["ip_version"] and bool(s.get("subnetpool_id"))):
                changed[f"ipv{subnet['ip_version']}_address_scope"] = None  # its last pool subnet: out of the scope
            touch(net, changed)
            uow.put("networks", net)

    st.repo.transact(txn)
    return Response(status_code=204)
