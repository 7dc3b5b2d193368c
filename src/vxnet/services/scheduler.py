"""Centralized SNAT: a router's snat ports and the gateway host that serves them.

Model (Neutron DVR's centralized SNAT): a router with an external gateway has, besides its
distributed interfaces, one **snat port** per subnet of its interfaces (IPv4: SNAT; IPv6: routed
north-south without NAT, as Neutron DVR's centralized port does)
(`device_owner` `network:router_centralized_snat`, `device_id` = the router, project "" like
Neutron's (plumbing: admins see it, the tenant's port lists, `router show` and the UI do not),
one fixed IP on that subnet, allocated from its pool). The distributed routers send
north-south traffic to it; the gateway namespace on the gateway host owns it.

Contract:
- `sync_router(uow, router_id)` makes the snat ports match the router as staged in `uow`
  (created for every interface subnet while a gateway is set, deleted otherwise: gateway
  cleared, interface removed, router deleted) and then schedules it. Callers run it last in the
  same transaction as the router change, so the ports commit or vanish with it.
- Scheduling: the router's gateway port and snat ports all get `binding:host_id` = its
  gateway host. A router keeps its host while that host is an alive gateway agent; otherwise
  it gets `choose(...)` of the alive gateway hosts (least routers first, ties by name), or ""
  (unscheduled) when there is none. Only hosts that have the router's external network's
  physical network are candidates (services/physnets.py). A moved port is DOWN until its new
  host reports it.
- `reschedule(uow)` applies that rule to every router with a gateway: called when a gateway
  agent registers (unscheduled routers get a host) and when an agent is marked dead (its
  routers move), in the transaction that changes the agent's record or right after it.
- Pure decision (`choose`) and store access are separate so the choice is unit-testable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from vxnet.services import bindings, fip_status, physnets
from vxnet.services.ports import delete_port_record, new_port_record
from vxnet.services.repo import UnitOfWork, now_iso, res_key
from vxnet.store.contract import Put

SNAT_OWNER = "network:router_centralized_snat"
GW_OWNER = "network:router_gateway"
INTF_OWNER = "network:router_interface"


def choose(alive: Iterable[str], load: Mapping[str, int]) -> str:
    """The gateway host for one more router: least loaded, ties by name; "" if none alive."""
    hosts = sorted(alive)
    if not hosts:
        return ""
    return min(hosts, key=lambda h: (load.get(h, 0), h))


def _list(uow: UnitOfWork, collection: str, where: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """`uow.list` plus this unit of work's own staged writes (which `list` does not show): the
    router change that calls us has just staged ports (an interface, the gateway port)."""
    objs = {o["id"]: o for o in uow.list(collection, where)}
    prefix = res_key(collection, "")
    for key, op in list(uow._ops.items()):
        if not key.startswith(prefix):
            continue
        id_ = key[len(prefix):]
        obj = json.loads(op.value) if isinstance(op, Put) else None
        if obj is not None and where(obj):
            objs[id_] = obj
        else:
            objs.pop(id_, None)
    return sorted(objs.values(), key=lambda o: o["id"])


def alive_gateways(uow: UnitOfWork) -> list[str]:
    """Hosts whose agent registered with `gateway: true` and is alive (record state)."""
    recs = _list(uow, "agents", lambda a: bool(a.get("alive")) and bool((a.get("configurations") or {}).get("gateway")))
    return sorted(a["host"] for a in recs)


def _router_ports(uow: UnitOfWork, router_id: str) -> list[dict[str, Any]]:
    return _list(uow, "ports", lambda p: p["device_id"] == router_id
                    and p["device_owner"] in (INTF_OWNER, GW_OWNER, SNAT_OWNER))


def _load(uow: UnitOfWork, alive: list[str]) -> dict[str, int]:
    """Routers per alive gateway host (counted by their gateway ports)."""
    load = dict.fromkeys(alive, 0)
    for p in _list(uow, "ports", lambda p: p["device_owner"] == GW_OWNER):
        h = p.get("binding:host_id") or ""
        if h in load:
            load[h] += 1
    return load


def _bind(uow: UnitOfWork, port: dict[str, Any], host: str) -> None:
    if (port.get("binding:host_id") or "") == host:
        return
    p = dict(port)
    if p["device_owner"] == GW_OWNER:
        fip_status.router_moved(uow, p["device_id"])   # DOWN until the new host reports them
    bindings.bind(uow, p, host)
    p.update({"status": "DOWN", "revision_number": p.get("revision_number", 0) + 1, "updated_at": now_iso()})
    uow.put("ports", p)


def _schedule(uow: UnitOfWork, ports: list[dict[str, Any]], alive: list[str]) -> None:
    """Bind the gateway and snat ports of one router to its (kept or newly chosen) host."""
    gw = next((p for p in ports if p["device_owner"] == GW_OWNER), None)
    if gw is None:
        return
    alive = physnets.able(uow, gw["network_id"], alive)   # hosts with the network's physical network
    current = gw.get("binding:host_id") or ""
    host = current if current in alive else choose(alive, _load(uow, alive))
    for p in ports:
        if p["device_owner"] in (GW_OWNER, SNAT_OWNER):
            _bind(uow, p, host)


def sync_router(uow: UnitOfWork, router_id: str) -> None:
    """Create/delete the router's snat ports to match it, then schedule it (see contract)."""
    rtr = uow.get("routers", router_id)
    ports = _router_ports(uow, router_id)
    snat = {p["fixed_ips"][0]["subnet_id"]: p for p in ports if p["device_owner"] == SNAT_OWNER and p["fixed_ips"]}
    wanted: dict[str, str] = {}   # subnet id -> network id
    if rtr is not None and rtr.get("external_gateway_info"):
        for p in ports:
            if p["device_owner"] != INTF_OWNER:
                continue
            for ip in p["fixed_ips"]:
                sub = uow.get("subnets", ip["subnet_id"])
                if sub is not None:
                    wanted[sub["id"]] = p["network_id"]
    for p in ports:
        if p["device_owner"] == SNAT_OWNER and (not p["fixed_ips"] or p["fixed_ips"][0]["subnet_id"] not in wanted):
            delete_port_record(uow, p)
    for sid, nid in sorted(wanted.items()):
        if sid in snat:
            continue
        net = uow.get("networks", nid)
        if net is None:
            continue
        new_port_record(uow, network=net, project_id="", fixed_ips=[{"subnet_id": sid}],  # type: ignore[index]
                        device_owner=SNAT_OWNER, device_id=router_id)
    if rtr is not None:
        _schedule(uow, _router_ports(uow, router_id), alive_gateways(uow))


def reschedule(uow: UnitOfWork) -> None:
    """Give every router with a gateway an alive gateway host (keeping a still-alive one)."""
    alive = alive_gateways(uow)
    gws = sorted(_list(uow, "ports", lambda p: p["device_owner"] == GW_OWNER), key=lambda p: p["device_id"])
    for gw in gws:
        if (gw.get("binding:host_id") or "") in alive and alive:
            continue
        _schedule(uow, _router_ports(uow, gw["device_id"]), alive)
