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
- Scheduling (active/standby, `plan`): the router's gateway port and snat ports all get
  `binding:host_id` = its **active** gateway host and `binding:vif_details.ha_standby_hosts`
  = its **standby** hosts (`STANDBYS` of them when there are enough alive gateway hosts;
  the standbys prepare the router's namespace without serving it, docs/gateway.md "High
  availability"). A router keeps its active while that host is an alive gateway agent;
  otherwise its first alive standby takes over, else the least-loaded alive gateway host
  (ties by name), else "" (unscheduled). Only hosts that have the router's external network's
  physical network are candidates, active or standby (services/physnets.py). A moved port is
  DOWN until its new host reports it, and so are its router's floating IPs (services/fip_status.py).
- `reschedule(uow, rebalance)` applies that rule to every router with a gateway: called when
  an agent is marked dead (its routers go to their standbys) and, with `rebalance`, when a
  gateway agent registers (unscheduled routers get a host, missing standbys are filled, and
  actives are spread: while one host has 2+ more actives than another, a router moves,
  preferably to a host that is its standby).
- Pure decisions (`choose`, `plan`) and store access are separate so they are unit-testable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from vxnet.services import bindings, fip_status, physnets
from vxnet.services.ports import delete_port_record, new_port_record
from vxnet.services.repo import UnitOfWork, now_iso, res_key
from vxnet.store.contract import Put

SNAT_OWNER = "network:router_centralized_snat"
STANDBYS = 1               # standby gateway hosts per router (when there are enough)
HA_KEY = "ha_standby_hosts"  # in the gateway/snat ports' binding:vif_details
GW_OWNER = "network:router_gateway"
INTF_OWNER = "network:router_interface"


def choose(alive: Iterable[str], load: Mapping[str, int]) -> str:
    """The gateway host for one more router: least loaded, ties by name; "" if none alive."""
    hosts = sorted(alive)
    if not hosts:
        return ""
    return min(hosts, key=lambda h: (load.get(h, 0), h))


def plan(routers: Mapping[str, tuple[str, tuple[str, ...]]], alive: Iterable[str],
         rebalance: bool = False, standbys: int = STANDBYS,
         able: Mapping[str, Collection[str]] | None = None) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Pure HA placement: router id -> (active, standbys) from the current placement.

    - `able` (router id -> the hosts that have its external network's physical network,
      services/physnets.py): a router is placed (active or standby) only there; a router not
      in it may go anywhere.

    - An alive active is kept. A router whose active is not alive gets its first alive standby
      (the host that has its namespace ready), else the least-loaded alive host, else "".
    - Standbys: the alive ones are kept (not the active), completed up to `standbys` with the
      hosts holding the fewest standbys (ties by name). With one gateway host there are none.
    - `rebalance` (a gateway host joined or came back): while the most loaded host has 2+
      more actives than the least loaded, one of its routers moves there, preferring a router
      whose standby it is (active and standby swap: the target is prepared); the old active
      stays its standby. Routers are taken in id order (deterministic).
    """
    live = sorted(set(alive))
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    load = dict.fromkeys(live, 0)

    def ok(rid: str, host: str) -> bool:
        return able is None or rid not in able or host in able[rid]

    for rid in sorted(routers):
        act, _ = routers[rid]
        if act in load and ok(rid, act):
            load[act] += 1
    for rid in sorted(routers):
        act, sb = routers[rid]
        if act not in load or not ok(rid, act):
            act = next((h for h in sb if h in load and ok(rid, h)), "") or choose(
                [h for h in live if ok(rid, h)], load)
            if act:
                load[act] += 1
        out[rid] = (act, tuple(h for h in sb if h in load and h != act and ok(rid, h)))
    if rebalance and len(live) > 1:
        for _ in range(len(routers)):
            hi = max(live, key=lambda h: (load[h], h))
            lo = min(live, key=lambda h: (load[h], h))
            if load[hi] - load[lo] < 2:
                break
            mine = [rid for rid in sorted(out) if out[rid][0] == hi and ok(rid, lo)]
            if not mine:
                break
            rid = next((r for r in mine if lo in out[r][1]), mine[0])
            out[rid] = (lo, (hi, *(h for h in out[rid][1] if h not in (lo, hi))))
            load[hi] -= 1
            load[lo] += 1
    sload = dict.fromkeys(live, 0)
    for act, sb in out.values():
        for h in sb:
            sload[h] += 1
    for rid in sorted(out):
        act, sb = out[rid]
        if not act:
            continue
        sb = list(sb)[:standbys]
        while len(sb) < standbys:
            pick = choose([h for h in live if h != act and h not in sb and ok(rid, h)], sload)
            if not pick:
                break
            sb.append(pick)
            sload[pick] += 1
        out[rid] = (act, tuple(sb))
    return out


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


def standbys_of(port: Mapping[str, Any]) -> tuple[str, ...]:
    """The standby hosts recorded on a gateway/snat port."""
    return tuple((port.get("binding:vif_details") or {}).get(HA_KEY) or ())


def _bind(uow: UnitOfWork, port: dict[str, Any], host: str, standby: tuple[str, ...]) -> None:
    moved = (port.get("binding:host_id") or "") != host
    if not moved and standbys_of(port) == standby:
        return
    p = dict(port)
    if moved:  # first: binding sets the vif type's own details (services/bindings.py)
        if p["device_owner"] == GW_OWNER:
            fip_status.router_moved(uow, p["device_id"])   # DOWN until the new host reports them
        bindings.bind(uow, p, host)
        p["status"] = "DOWN"
    details = dict(p.get("binding:vif_details") or {})
    if standby:
        details[HA_KEY] = list(standby)
    else:
        details.pop(HA_KEY, None)
    p["binding:vif_details"] = details
    p.update({"revision_number": p.get("revision_number", 0) + 1, "updated_at": now_iso()})
    uow.put("ports", p)


def _placements(uow: UnitOfWork) -> dict[str, tuple[str, tuple[str, ...]]]:
    """router id -> its (active, standbys) as recorded on its gateway port."""
    return {gw["device_id"]: (gw.get("binding:host_id") or "", standbys_of(gw))
            for gw in _list(uow, "ports", lambda p: p["device_owner"] == GW_OWNER)}


def _apply(uow: UnitOfWork, rid: str, place: tuple[str, tuple[str, ...]]) -> None:
    """Bind the gateway and snat ports of one router to its active, standbys recorded."""
    act, sb = place
    for p in _router_ports(uow, rid):
        if p["device_owner"] in (GW_OWNER, SNAT_OWNER):
            _bind(uow, p, act, sb if act else ())


def _able(uow: UnitOfWork, alive: list[str]) -> dict[str, set[str]]:
    """router id -> the alive hosts that have its external network's physical network."""
    return {gw["device_id"]: set(physnets.able(uow, gw["network_id"], alive))
            for gw in _list(uow, "ports", lambda p: p["device_owner"] == GW_OWNER)}


def _schedule(uow: UnitOfWork, rid: str, alive: list[str]) -> None:
    """Place one router (kept if placed on alive hosts), given the others' placement."""
    current = _placements(uow)
    if rid not in current:
        return
    out = plan(current, alive, able=_able(uow, alive))
    _apply(uow, rid, out[rid])


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
        _schedule(uow, router_id, alive_gateways(uow))


def reschedule(uow: UnitOfWork, rebalance: bool = False) -> None:
    """Re-place every router with a gateway (`plan`): a dead active's router goes to its
    standby, missing standbys are filled; `rebalance` also spreads actives (a gateway joined)."""
    current = _placements(uow)
    alive = alive_gateways(uow)
    out = plan(current, alive, rebalance, able=_able(uow, alive))
    for rid in sorted(out):
        if out[rid] != current[rid]:
            _apply(uow, rid, out[rid])
