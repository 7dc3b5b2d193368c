"""/v2.0/network-ip-availabilities: Neutron's `network-ip-availability` extension.

Per network: `total_ips` (the size of the allocation pools of its subnets) and `used_ips`
(allocated fixed IPs, i.e. the `/vxnet/ipam/<subnet>/<ip>` claims, wherever they are, gateway
included), and the same per subnet in `subnet_ip_availability`. Filters: `network_id`,
`network_name`, `project_id`/`tenant_id`, `ip_version`; `fields`.

Policy as Neutron's defaults (`get_network_ip_availability`: admin only): a list by anyone
else is empty, a show is 404.
"""

from __future__ import annotations

import collections
import ipaddress
from typing import Any

from fastapi import Request

from vxnet.api.collection import requested_fields, select_fields
from vxnet.api.errors import ApiError
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, off_loop
from vxnet.services.repo import ROOT, Repo

router = Routes(prefix="/v2.0", tags=["network-ip-availabilities"])
IPAM_PREFIX = f"{ROOT}ipam/"


def pool_size(subnet: dict[str, Any]) -> int:
    return sum(int(ipaddress.ip_address(p["end"])) - int(ipaddress.ip_address(p["start"])) + 1
               for p in subnet.get("allocation_pools") or [])


def _used_by_subnet(repo: Repo, subnet_ids: list[str] | None = None) -> collections.Counter[str]:
    """Allocated IPs per subnet id (one range read per subnet, or one for all)."""
    used: collections.Counter[str] = collections.Counter()
    prefixes = [f"{IPAM_PREFIX}{s}/" for s in subnet_ids] if subnet_ids is not None else [IPAM_PREFIX]
    for prefix in prefixes:
        kvs, _ = repo.store.range(prefix)
        for kv in kvs:
            used[kv.key[len(IPAM_PREFIX):].split("/", 1)[0]] += 1
    return used


def availability(net: dict[str, Any], subnets: list[dict[str, Any]], used: collections.Counter[str]) -> dict[str, Any]:
    per_subnet = [{
        "subnet_id": s["id"],
        "subnet_name": s.get("name", ""),
        "cidr": s["cidr"],
        "ip_version": s["ip_version"],
        "total_ips": pool_size(s),
        "used_ips": used.get(s["id"], 0),
    } for s in sorted(subnets, key=lambda s: (s.get("created_at", ""), s["id"]))]
    return {
        "network_id": net["id"],
        "network_name": net.get("name", ""),
        "project_id": net["project_id"],
        "tenant_id": net["project_id"],
        "total_ips": sum(s["total_ips"] for s in per_subnet),
        "used_ips": sum(s["used_ips"] for s in per_subnet),
        "subnet_ip_availability": per_subnet,
    }


def _matches(item: dict[str, Any], query: dict[str, list[str]]) -> bool:
    for key, wanted in query.items():
        if key == "ip_version":
            if not any(str(s["ip_version"]) in wanted for s in item["subnet_ip_availability"]):
                return False
        elif key in ("network_id", "network_name", "project_id", "tenant_id") and str(item[key]) not in wanted:
            return False
    return True


@router.get("/network-ip-availabilities")
@off_loop
async def list_availabilities(request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    if not ctx.is_admin:
        return {"network_ip_availabilities": []}
    by_net: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for s in st.repo.list("subnets"):
        by_net[s["network_id"]].append(s)
    used = _used_by_subnet(st.repo)
    q = request.query_params
    query = {k: q.getlist(k) for k in q if k != "fields"}
    fields = requested_fields(request)
    items = [availability(n, by_net.get(n["id"], []), used) for n in st.repo.list("networks")]
    return {"network_ip_availabilities": [select_fields(i, fields) for i in items if _matches(i, query)]}


@router.get("/network-ip-availabilities/{network_id}")
@off_loop
async def show_availability(network_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    net = st.repo.get("networks", network_id)
    if net is None or not ctx.is_admin:
        raise ApiError(404, "NetworkNotFound", f"Network {network_id} could not be found.")
    subnets = [s for s in st.repo.list("subnets") if s["network_id"] == network_id]
    used = _used_by_subnet(st.repo, [s["id"] for s in subnets])
    fields = requested_fields(request)
    return {"network_ip_availability": select_fields(availability(net, subnets, used), fields)}
