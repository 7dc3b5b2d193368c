"""Day-2 operations: the cluster status report and doctor requests (`vxnet status`, `vxnet doctor`).

Status (`build_status`, pure): every host with an agent record or a bound port, from what the
server's view hub holds (agent records, liveness keys, ports, and `last_change[host]`: the
last revision that changed the host's view, known since this server started) plus the agents'
status reports (`services/agents.py`, `agent-status/<host>`, kept by the hub too). A host is
- `dead`: no liveness key (its lease expired: no heartbeat for agent_down_time);
- `behind`: alive, but the revision it has applied is older than the last revision that changed
  its view (it received the change and has not applied it, or has not even received it);
- `failing`: up to date, but its last pass failed on some objects (it retries them);
- `ok`; `no report`: alive, never reported (an agent older than this server);
- `unregistered`: ports are bound to it but no agent ever registered.
Ports bound to a host are counted by status; those not ACTIVE are listed (at most
NOT_ACTIVE_SHOWN per host) with the reason: the agent's own (tap absent, L2 failed, a feature
not applied), "agent not alive", or "not reported yet".

Doctor: `request_doctor` puts `doctor/request` = {"id", "repair", "hosts"} on a lease; every
server's hub sees the put and sends a `doctor` message down the view stream of every agent
named (all when `hosts` is null); each agent answers with `POST .../hosts/<host>/doctor/<id>`,
kept at `doctor/results/<id>/<host>` on a lease of DOCTOR_TTL seconds. Any server can serve the
results: they are in the store. Blocking store I/O: call from worker threads.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from vxnet.services.errors import BadRequest
from vxnet.services.repo import ROOT
from vxnet.store.contract import Put, Store

DOCTOR_KEY = f"{ROOT}doctor/request"
DOCTOR_RESULTS = f"{ROOT}doctor/results/"
DOCTOR_TTL = 300
NOT_ACTIVE_SHOWN = 50
_ID = re.compile(r"[0-9a-f]{32}")

Obj = dict[str, Any]


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def host_state(alive: bool, report: Mapping[str, Any] | None, wanted: int) -> str:
    """dead | no report | behind | failing | ok (see the module docstring)."""
    if not alive:
        return "dead"
    if report is None:
        return "no report"
    applied = _int(report.get("applied_revision"))
    received = _int(report.get("received_revision")) or 0
    if applied is None or applied < max(received, wanted):
        return "behind"
    if report.get("failing"):
        return "failing"
    return "ok"


def build_status(objects: Mapping[str, Mapping[str, Obj]], live: Mapping[str, Any],
                 reports: Mapping[str, Obj], last_change: Mapping[str, int]) -> list[Obj]:
    """One entry per host (see the module docstring), sorted by host name."""
    records = {r.get("host"): r for r in (objects.get("agents") or {}).values() if r.get("host")}
    ports_by_host: dict[str, list[Obj]] = {}
    for p in (objects.get("ports") or {}).values():
        h = p.get("binding:host_id")
        if h:
            ports_by_host.setdefault(h, []).append(p)
    out = []
    for host in sorted(set(records) | set(ports_by_host)):
        rec = records.get(host)
        alive = host in live
        report = reports.get(host)
        received = _int((report or {}).get("received_revision")) or 0
        wanted = max(last_change.get(host, 0), received)
        cfg = (rec or {}).get("configurations") or {}
        entry: Obj = {
            "host": host,
            "registered": rec is not None,
            "alive": alive,
            "state": host_state(alive, report, wanted) if rec is not None else "unregistered",
            "last_heartbeat": (rec or {}).get("heartbeat_timestamp"),
            "started_at": (rec or {}).get("started_at"),
            "underlay_ip": cfg.get("underlay_ip"),
            "gateway": bool(cfg.get("gateway")),
            "version": (report or {}).get("version"),
            "features": (report or {}).get("features") or [],
            "revision": {"applied": _int((report or {}).get("applied_revision")), "wanted": wanted or None},
            "failing": (report or {}).get("failing") or [],
            "drift": (report or {}).get("drift") or {},
        }
        reasons = (report or {}).get("down") or {}
        counts: dict[str, int] = {}
        not_active = []
        for p in sorted(ports_by_host.get(host, ()), key=lambda p: p.get("id", "")):
            status = p.get("status") or "DOWN"
            counts[status] = counts.get(status, 0) + 1
            if status == "ACTIVE":
                continue
            if not alive:
                why = "agent not alive" if rec is not None else "no agent registered for this host"
            elif isinstance(reasons.get(p.get("id")), str):
                why = reasons[p["id"]]
            elif p.get("admin_state_up") is False:
                why = "admin_state_up is false"
            else:
                why = "not reported by the agent yet"
            if len(not_active) < NOT_ACTIVE_SHOWN:
                not_active.append({"id": p.get("id"), "name": p.get("name") or "", "status": status, "why": why})
        entry["ports"] = {"bound": sum(counts.values()), "by_status": counts, "not_active": not_active}
        out.append(entry)
    return out


def request_doctor(store: Store, repair: bool, hosts: list[str] | None) -> Obj:
    """Ask the agents (all, or `hosts`) to compare desired and kernel state; the request."""
    doc = {"id": uuid.uuid4().hex, "repair": bool(repair), "hosts": hosts,
           "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    lease = store.grant_lease(DOCTOR_TTL)
    store.txn([], [Put(DOCTOR_KEY, json.dumps(doc), lease)])
    return doc


def check_id(request_id: str) -> None:
    if not _ID.fullmatch(request_id):
        raise BadRequest("InvalidInput", f"Invalid doctor request id '{request_id}'")


def store_result(store: Store, request_id: str, host: str, result: Mapping[str, Any]) -> None:
    """Keep one agent's answer (for DOCTOR_TTL seconds)."""
    check_id(request_id)
    lease = store.grant_lease(DOCTOR_TTL)
    store.txn([], [Put(f"{DOCTOR_RESULTS}{request_id}/{host}", json.dumps(dict(result)), lease)])


def results(store: Store, request_id: str) -> dict[str, Obj]:
    """The answers received so far, by host."""
    check_id(request_id)
    prefix = f"{DOCTOR_RESULTS}{request_id}/"
    kvs, _ = store.range(prefix)
    out: dict[str, Obj] = {}
    for kv in kvs:
        try:
            out[kv.key[len(prefix):]] = json.loads(kv.value)
        except ValueError:
            continue
    return out
