"""Trunks (Neutron's `trunk` and `trunk-details` extensions): records and the checks on them.

A trunk names a parent port and sub-ports, each a port of its own (usually on another network)
carried on the parent's device with an 802.1Q VLAN id. Records are stored as `trunks/<id>`.

Invariants (kept in the caller's unit of work):
- A port is the parent of at most one trunk and is never also a subport; a subport belongs to
  one trunk; VLAN ids are unique within a trunk (Neutron's DuplicateSubPort, PortInUseAsSubPort,
  PortInUseAsTrunkParent, TrunkPortInUse).
- A port becomes a subport only while it is free: no device_owner/device_id (Neutron refuses a
  port in use with PortInUse), and it is not the parent itself.
- A subport gets device_owner `trunk:subport`, device_id = the trunk id, and the parent's
  binding (`binding:host_id`): its host's agent carries it on the parent's device. Removing it
  clears all three. When the parent's binding moves, its subports' follow (`follow_parent`).
- The parent carries `trunk_details` ({trunk_id, sub_ports: [{port_id, segmentation_type,
  segmentation_id, mac_address}]}): the host view and clients read the trunk from there.
- A trunk's status follows its parent port (ACTIVE when the parent is ACTIVE, else DOWN).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from vxnet.services import bindings
from vxnet.services.errors import BadRequest, Conflict, NotFound
from vxnet.services.repo import UnitOfWork, now_iso

SUBPORT_OWNER = "trunk:subport"
VLAN_MIN, VLAN_MAX = 1, 4094


def trunk_not_found(trunk_id: str) -> NotFound:
    return NotFound("TrunkNotFound", f"Trunk {trunk_id} could not be found.")


def new_trunk(project: str, name: str, description: str, admin_up: bool, port_id: str,
              tags: list[str]) -> dict[str, Any]:
    now = now_iso()
    return {"id": str(uuid.uuid4()), "name": name, "description": description, "project_id": project,
            "tenant_id": project, "admin_state_up": admin_up, "port_id": port_id, "status": "DOWN",
            "sub_ports": [], "tags": list(tags), "created_at": now, "updated_at": now, "revision_number": 0}


def trunk_of_parent(uow: UnitOfWork, port_id: str) -> dict[str, Any] | None:
    found = uow.list("trunks", lambda t: t["port_id"] == port_id, guard_new=True)
    return found[0] if found else None


def trunk_of_subport(uow: UnitOfWork, port_id: str) -> dict[str, Any] | None:
    found = uow.list("trunks", lambda t: any(s["port_id"] == port_id for s in t["sub_ports"]), guard_new=True)
    return found[0] if found else None


def check_parent(uow: UnitOfWork, port: Mapping[str, Any]) -> None:
    """`port` may become a trunk's parent."""
    pid = port["id"]
    if trunk_of_parent(uow, pid) is not None:
        raise Conflict("TrunkPortInUse", f"Port {pid} is in use by another trunk.")
    sub = trunk_of_subport(uow, pid)
    if sub is not None or port.get("device_owner") == SUBPORT_OWNER:
        raise Conflict("PortInUseAsSubPort", f"Port {pid} is currently a subport for trunk "
                       f"{sub['id'] if sub else port.get('device_id')}.")


def parse_subports(items: Iterable[Mapping[str, Any]], trunk: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Validated `sub_ports` entries (400 on a bad or duplicate one, within the request and with
    the trunk's existing subports)."""
    out: list[dict[str, Any]] = []
    vids = {s["segmentation_id"] for s in trunk["sub_ports"]}
    ports = {s["port_id"] for s in trunk["sub_ports"]}
    for s in items:
        pid, stype, vid = s.get("port_id"), s.get("segmentation_type", "vlan"), s.get("segmentation_id")
        if not isinstance(pid, str) or not pid:
            raise BadRequest("InvalidInput", "Invalid input for operation: A subport needs a port_id.")
        if stype != "vlan":
            raise BadRequest("InvalidInput", f"Invalid input for operation: segmentation_type {stype!r} is not "
                             "supported (vlan).")
        if isinstance(vid, bool) or not isinstance(vid, int) or not VLAN_MIN <= vid <= VLAN_MAX:
            raise BadRequest("InvalidInput", f"Invalid input for operation: segmentation_id {vid!r} is not in "
                             f"range [{VLAN_MIN}, {VLAN_MAX}].")
        if vid in vids:
            raise BadRequest("DuplicateSubPort", f"segmentation_type vlan and segmentation_id {vid} already in "
                             f"use on trunk {trunk['id']}.")
        if pid in ports or pid == trunk["port_id"]:
            raise BadRequest("DuplicateSubPort", f"Port {pid} is already a subport of (or the parent of) trunk "
                             f"{trunk['id']}.")
        vids.add(vid)
        ports.add(pid)
        out.append({"port_id": pid, "segmentation_type": "vlan", "segmentation_id": vid})
    return out


def check_subports(uow: UnitOfWork, ports: list[Mapping[str, Any]]) -> None:
    """Each of `ports` (visible to the caller) may become a subport, checked in order. The
    trunks are scanned once for all of them (a scan per port was O(ports x every trunk's
    subports): a body names up to 4,094)."""
    wanted = {p["id"] for p in ports}
    parents = {t["port_id"]: t for t in uow.list("trunks", lambda t: t["port_id"] in wanted, guard_new=True)}
    subs: dict[str, dict[str, Any]] = {}
    for t in uow.list("trunks", lambda t: any(s["port_id"] in wanted for s in t["sub_ports"]), guard_new=True):
        for s in t["sub_ports"]:
            subs.setdefault(s["port_id"], t)
    for port in ports:
        _check_subport(port, parents.get(port["id"]), subs.get(port["id"]))


def _check_subport(port: Mapping[str, Any], parent_of: Mapping[str, Any] | None, sub: Mapping[str, Any] | None) -> None:
    pid = port["id"]
    if parent_of is not None:
        raise Conflict("PortInUseAsTrunkParent", f"Port {pid} is currently a parent port for trunk "
                       f"{parent_of['id']}.")
    if sub is not None:
        raise Conflict("PortInUseAsSubPort", f"Port {pid} is currently a subport for trunk {sub['id']}.")
    if port.get("device_owner") or port.get("device_id"):
        raise Conflict("PortInUse", f"Unable to complete operation for network {port['network_id']}. The port "
                       f"{pid} is in use: device_owner {port.get('device_owner')!r}, device_id "
                       f"{port.get('device_id')!r}.")


def _touch(obj: dict[str, Any]) -> None:
    obj["revision_number"] = obj.get("revision_number", 0) + 1
    obj["updated_at"] = now_iso()


def sync_parent(uow: UnitOfWork, trunk: Mapping[str, Any] | None, parent: dict[str, Any]) -> None:
    """Write the parent's `trunk_details` (or drop them when `trunk` is None) and stage it."""
    if trunk is None:
        parent.pop("trunk_details", None)
    else:
        subs = []
        for s in trunk["sub_ports"]:
            sp = uow.get("ports", s["port_id"])
            subs.append({**s, "mac_address": sp["mac_address"] if sp else None})
        parent["trunk_details"] = {"trunk_id": trunk["id"], "sub_ports": subs}
    _touch(parent)
    uow.put("ports", parent)


def attach(uow: UnitOfWork, trunk: Mapping[str, Any], parent: Mapping[str, Any], port: dict[str, Any]) -> None:
    """Make `port` a subport of `trunk` (owner, device id, the parent's binding) and stage it."""
    port["device_owner"] = SUBPORT_OWNER
    port["device_id"] = trunk["id"]
    host = parent.get("binding:host_id") or ""
    if host != (port.get("binding:host_id") or ""):
        bindings.bind(uow, port, host)
        port["status"] = "DOWN"
    _touch(port)
    uow.put("ports", port)


def detach(uow: UnitOfWork, port: dict[str, Any]) -> None:
    """`port` stops being a subport: free again, unbound, DOWN."""
    port["device_owner"] = ""
    port["device_id"] = ""
    if port.get("binding:host_id"):
        bindings.bind(uow, port, "")
    port["status"] = "DOWN"
    _touch(port)
    uow.put("ports", port)


def follow_parent(uow: UnitOfWork, parent: Mapping[str, Any]) -> None:
    """After the parent's binding changed: its subports' bindings follow (same unit of work)."""
    details = parent.get("trunk_details") or {}
    host = parent.get("binding:host_id") or ""
    for s in details.get("sub_ports") or ():
        port = uow.get("ports", s["port_id"])
        if port is None or (port.get("binding:host_id") or "") == host:
            continue
        bindings.bind(uow, port, host)
        port["status"] = "DOWN"
        _touch(port)
        uow.put("ports", port)


def presented(trunk: Mapping[str, Any], parent: Mapping[str, Any] | None) -> dict[str, Any]:
    """The trunk with its status derived from its parent port."""
    status = "ACTIVE" if parent is not None and parent.get("status") == "ACTIVE" else "DOWN"
    return {**trunk, "status": status}
