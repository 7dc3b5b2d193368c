"""Floating IP status: reported by the gateway host that serves it (as Neutron's L3 agent does).

Contract:
- A floating IP is served by the host its router's gateway port (`network:router_gateway`,
  `device_id` = the router) is bound to. `set_floatingips_status(repo, host, wanted)` sets
  the status (ACTIVE / DOWN) of the floating IPs in `wanted` that `host` serves and that are
  associated; every other id (missing, unassociated, served elsewhere: a stale report of a host
  the router has left) is ignored. Returns the ids changed.
- `router_moved(uow, router_id)`: the router's gateway port is being bound to another host (or
  none): its ACTIVE floating IPs become DOWN in the same transaction, until the new host
  reports them (the scheduler calls it).
- The API sets DOWN on creation, disassociation and any change of association
  (api/routers/floatingips.py); nothing else sets ACTIVE.

Blocking store I/O: call from a worker thread.
"""

from __future__ import annotations

from typing import Any

from vxnet.services.repo import Repo, UnitOfWork, now_iso

GW_OWNER = "network:router_gateway"
STATUSES = ("ACTIVE", "DOWN")


def _touch(fip: dict[str, Any], status: str) -> dict[str, Any]:
    out = dict(fip)
    out["status"] = status
    out["revision_number"] = out.get("revision_number", 0) + 1
    out["updated_at"] = now_iso()
    return out


def serving_host(uow: UnitOfWork, router_id: str) -> str:
    """The host the router's gateway port is bound to ("" if none)."""
    for p in uow.list("ports", lambda p: p.get("device_id") == router_id and p.get("device_owner") == GW_OWNER):
        return p.get("binding:host_id") or ""
    return ""


def set_floatingips_status(repo: Repo, host: str, wanted: dict[str, str], seen_revision: int = 0) -> list[str]:
    """See the module contract. `seen_revision`: the store revision the report is based on."""
    if not wanted:
        return []
    read_after = getattr(repo.store, "read_after", None)
    if seen_revision and read_after is not None:
        read_after(seen_revision)

    def txn(uow: UnitOfWork) -> list[str]:
        changed = []
        hosts: dict[str, str] = {}
        for fid, status in sorted(wanted.items()):
            fip = uow.get("floatingips", fid)
            if fip is None or status not in STATUSES or fip.get("status") == status:
                continue
            rid = fip.get("router_id")
            if not rid or not fip.get("port_id"):
                continue
            if rid not in hosts:
                hosts[rid] = serving_host(uow, rid)
            if hosts[rid] != host:
                continue
            uow.put("floatingips", _touch(fip, status))
            changed.append(fid)
        return changed

    return repo.transact(txn)


def router_moved(uow: UnitOfWork, router_id: str) -> None:
    """The router's floating IPs DOWN until their new gateway host reports them."""
    for fip in uow.list("floatingips", lambda f: f.get("router_id") == router_id and f.get("status") == "ACTIVE"):
        uow.put("floatingips", _touch(fip, "DOWN"))
