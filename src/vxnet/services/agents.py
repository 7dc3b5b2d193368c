"""Agents: registration, liveness and port status (the service behind the agents' endpoints).

Store layout:
- `/vxnet/res/agents/<agent id>`: the Neutron agent record (durable; id derived from the host
  name, so every server computes the same one). `alive` there is what the server last decided.
- `/vxnet/agents/<host>`: the liveness key, attached to the agent's lease. Heartbeats refresh
  the lease (no write); the record's `heartbeat_timestamp` is rewritten at most every
  HEARTBEAT_RECORD_INTERVAL seconds.
- `/vxnet/agent-status/<host>`: the agent's last status report (applied revision, ports,
  drift repairs, features; `vxnet status`), sent with every heartbeat and written only when it
  differs from the stored one (a report changes when something happens, not with time). Not
  leased: a dead host's last report stays readable.
- A registration binds the ports whose binding to this host failed for want of a live agent
  (services/bindings.py).
- Port statuses are written STATUS_CHUNK ports per transaction (each port's status stands
  alone): a host reporting, or losing, all its ports at once stays within etcd's --max-txn-ops.
- When the liveness key disappears (lease expired or revoked) and has not been recreated, the
  host's ACTIVE ports go DOWN, then the record becomes `alive: false`, each transaction only
  while the key is still missing. Every server does this (idempotently); at start each server
  also repairs records left `alive` without a liveness key.

Every function here does blocking store I/O: call it from a worker thread, never on the event
loop. Failures are `vxnet.services.errors` (or store errors), never API errors.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
import uuid
from typing import Any

from vxnet.services import bindings, scheduler
from vxnet.services.bindings import LIVE_PREFIX, live_key  # noqa: F401 - LIVE_PREFIX: part of this module's API
from vxnet.services.errors import Conflict, NotFound
from vxnet.services.repo import ROOT, Repo, UnitOfWork, now_iso, res_key
from vxnet.store.contract import Compare, LeaseNotFound, Put, Store, StoreError, key_missing

log = logging.getLogger("vxnet.agents")

HEARTBEAT_RECORD_INTERVAL = 10.0
STATUS_PREFIX = f"{ROOT}agent-status/"
STATUS_MAX_BYTES = 64 * 1024
# Ports per status transaction. A port costs a compare and a put, and a Nova event a put more
# (services/nova_events.py): 40 keep a transaction within etcd's default --max-txn-ops (128) and
# the group commit's MAX_OPS (services/txn_batch.py), so a host reporting all its ports at once
# (back after a failure) is not refused.
STATUS_CHUNK = 40
_AGENT_NS = uuid.UUID("0c5d1a7e-3f0b-4d2a-8a51-6e1f4b2c9d07")


def agent_id_for(host: str) -> str:
    """The agent record id of a host (the same on every server)."""
    return str(uuid.uuid5(_AGENT_NS, "agent:" + host))


def agent_time(t: float | None = None) -> str:
    """Neutron's agent timestamp format."""
    return dt.datetime.fromtimestamp(time.time() if t is None else t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def lease_ttl(agent_down_time: float) -> int:
    """The liveness lease's TTL for the configured agent_down_time."""
    return max(2, int(agent_down_time))


def heartbeat_interval(agent_down_time: float) -> float:
    """How often agents heartbeat: three times per lease."""
    return max(0.5, lease_ttl(agent_down_time) / 3)


def _touch(obj: dict[str, Any]) -> None:
    obj["revision_number"] = obj.get("revision_number", 0) + 1
    obj["updated_at"] = now_iso()


@dataclasses.dataclass(frozen=True)
class Registration:
    """What an agent says about itself when it registers."""

    underlay_ip: str
    gateway: bool = False
    external_interface: str | None = None
    agent_type: str = "vxnet agent"


def register(store: Store, repo: Repo, host: str, reg: Registration, ttl: int) -> dict[str, Any]:
    """Write the host's record and a liveness key on a new lease (revoking the previous lease);
    the stored record. A gateway host (now or before) triggers a reschedule of routers."""
    lease = store.grant_lease(ttl)
    rkey, lkey = res_key("agents", agent_id_for(host)), live_key(host)
    for _ in range(50):
        rec_kv, live_kv = store.get(rkey), store.get(lkey)
        old = json.loads(rec_kv.value) if rec_kv else None
        now = agent_time()
        rec = {
            "id": agent_id_for(host),
            "agent_type": reg.agent_type,
            "binary": "vxnet-agent",
            "host": host,
            "topic": "N/A",
            "alive": True,
            "admin_state_up": old["admin_state_up"] if old else True,
            "heartbeat_timestamp": now,
            "created_at": old["created_at"] if old else now,
            "started_at": now,
            "configurations": {"underlay_ip": reg.underlay_ip, "gateway": reg.gateway,
                               "external_interface": reg.external_interface},
            "availability_zone": None,
            "description": old["description"] if old else "",
            "resources_synced": None,
        }
        compares = [Compare(rkey, "mod", "==", rec_kv.mod_revision) if rec_kv else key_missing(rkey),
                    Compare(lkey, "mod", "==", live_kv.mod_revision) if live_kv else key_missing(lkey)]
        live = json.dumps({"host": host, "lease": lease, "registered_at": now})
        if store.txn(compares, [Put(rkey, json.dumps(rec)), Put(lkey, live, lease)]).succeeded:
            break
    else:
        store.revoke_lease(lease)
        raise Conflict("Conflict", f"Agent {host} is registering concurrently; try again")
    if live_kv is not None and live_kv.lease and live_kv.lease != lease:
        # The key now belongs to the new lease, so revoking the old one deletes nothing.
        store.revoke_lease(live_kv.lease)
    if reg.gateway or (old and (old.get("configurations") or {}).get("gateway")):
        # Spread actives only when the host joined or came back (no liveness key: never
        # registered, or its lease expired). A restart within the lease keeps every router
        # where it is: a move costs its connections a gap for nothing.
        rebalance = live_kv is None
        repo.transact(lambda uow: scheduler.reschedule(uow, rebalance=rebalance))
    if bindings.has_failed(store, host):  # ports bound here before this agent was alive
        repo.transact(lambda uow: bindings.rebind_host(uow, host))
    return rec


def status_key(host: str) -> str:
    """Where the host's last status report is kept."""
    return STATUS_PREFIX + host


def heartbeat(store: Store, host: str, status: dict[str, Any] | None = None) -> None:
    """Refresh the host's lease (and, at most every HEARTBEAT_RECORD_INTERVAL, its record);
    store `status` when it differs from the stored report. NotFound (AgentNotFound) when the
    host is not registered."""
    kv = store.get(live_key(host))
    not_registered = NotFound("AgentNotFound", f"Agent for host {host} is not registered")
    if kv is None or not kv.lease:
        raise not_registered
    try:
        store.refresh_lease(kv.lease)
    except LeaseNotFound:
        raise not_registered from None
    rkey = res_key("agents", agent_id_for(host))
    rec_kv = store.get(rkey)
    if rec_kv is None:
        raise not_registered
    rec = json.loads(rec_kv.value)
    stamp = dt.datetime.strptime(rec["heartbeat_timestamp"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
    if not rec["alive"] or time.time() - stamp.timestamp() >= HEARTBEAT_RECORD_INTERVAL:
        if not rec["alive"]:
            log.warning("agent %s is alive again: a heartbeat on its lease found its record dead", host)
        rec["alive"] = True
        rec["heartbeat_timestamp"] = agent_time()
        # Best effort: a concurrent change of the record wins; the next heartbeat retries.
        store.txn([Compare(rkey, "mod", "==", rec_kv.mod_revision)], [Put(rkey, json.dumps(rec))])
    if status is not None:
        text = json.dumps(status, sort_keys=True, separators=(",", ":"))
        skey = status_key(host)
        old = store.get(skey)
        if old is None or old.value != text:
            store.txn([], [Put(skey, text)])


def set_ports_status(repo: Repo, host: str, wanted: dict[str, str], seen_revision: int = 0) -> list[str]:
    """Set the status of the host's own ports (port id -> ACTIVE/DOWN); the ids changed.
    Ports bound elsewhere or missing are ignored. `seen_revision`: the store revision the report
    is based on (the view hub's); the reads see at least that revision. Written STATUS_CHUNK
    ports per transaction: each port's status stands alone, so a report that fails half-way
    leaves only statuses that are true, and the agent's retry finds those already set."""
    if not wanted:
        return []
    read_after = getattr(repo.store, "read_after", None)
    if seen_revision and read_after is not None:
        read_after(seen_revision)
    changed, unknown, _ = _write_statuses(repo, host, wanted)
    catch_up = getattr(repo.store, "catch_up", None)
    if unknown and catch_up is not None:
        # Missing or bound elsewhere in this server's mirror: the port may have been created or
        # bound through another server a moment ago (the agent can learn it from a server that
        # is ahead of this one). Read again at the cluster's current revision before dropping
        # the report (the agent does not repeat it).
        catch_up()
        changed += _write_statuses(repo, host, {pid: wanted[pid] for pid in unknown})[0]
    return changed


def _write_statuses(repo: Repo, host: str, wanted: dict[str, str],
                    dead: bool = False) -> tuple[list[str], list[str], bool]:
    """(ids changed, ids missing or bound elsewhere, done), one transaction per STATUS_CHUNK
    ports. With `dead`, each transaction only while the host has no liveness key: once it has
    one, the rest is left and `done` is False."""
    changed: list[str] = []
    unknown: list[str] = []
    items = list(wanted.items())
    for start in range(0, len(items), STATUS_CHUNK):
        chunk = items[start:start + STATUS_CHUNK]

        def txn(uow: UnitOfWork, chunk: list[tuple[str, str]] = chunk) -> tuple[list[str], list[str]] | None:
            if dead and uow.get_raw(live_key(host)) is not None:
                return None  # registered again meanwhile
            done: list[str] = []
            missing: list[str] = []
            for pid, status in chunk:
                port = uow.get("ports", pid)
                if port is None or port.get("binding:host_id") != host:
                    missing.append(pid)
                    continue
                if port.get("status") == status:
                    continue
                port["status"] = status
                _touch(port)
                uow.put("ports", port)
                done.append(pid)
            return done, missing

        got = repo.transact(txn)
        if got is None:
            return changed, unknown, False
        changed += got[0]
        unknown += got[1]
    return changed, unknown, True


def mark_dead(repo: Repo, host: str) -> None:
    """If `host` has no liveness key: its ACTIVE ports go DOWN, then its record says not alive
    (and a dead gateway host's routers move), each transaction only while the key is still
    missing. The ports go STATUS_CHUNK per transaction, before the record: a failure half-way
    leaves the record alive, so the next sweep does the rest. Logs failures."""

    def record(uow: UnitOfWork) -> bool | None:
        if uow.get_raw(live_key(host)) is not None:
            return None  # registered again meanwhile
        rec = uow.get("agents", agent_id_for(host))
        was_alive = rec is not None and bool(rec.get("alive"))
        if rec is not None and was_alive:
            rec["alive"] = False
            uow.put("agents", rec)
        scheduler.reschedule(uow)  # a dead gateway host's routers move to an alive one
        return was_alive

    try:
        active = [p["id"] for p in repo.list("ports") if p.get("binding:host_id") == host and p.get("status") == "ACTIVE"]
        downed, _, still_dead = _write_statuses(repo, host, dict.fromkeys(active, "DOWN"), dead=True)
        was_alive = repo.transact(record) if still_dead else None
    except Exception:  # the next start-up sweep or expiry retries; the watch must go on
        log.exception("marking agent %s dead failed", host)
        return
    down = len(downed)
    if was_alive or down:
        # The event an operator looks for first when a host's ports went DOWN.
        log.warning("agent %s declared dead (its liveness lease ended without a heartbeat): "
                    "record alive=false, %d ACTIVE port(s) set DOWN", host, down)


def sweep_dead(repo: Repo, store: Store) -> None:
    """Records left alive without a liveness key (e.g. a server was down at expiry)."""
    try:
        for rec in repo.list("agents"):
            if rec.get("alive") and store.get(live_key(rec["host"])) is None:
                mark_dead(repo, rec["host"])
    except StoreError:
        log.exception("start-up sweep of dead agents failed; expiries seen from now on still count")
