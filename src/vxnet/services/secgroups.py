"""Security group records shared by several resources (ports need the project's default group).

Invariant: each project has at most one group named `default`, claimed at
`/vxnet/sgdefault/<project_id>` in the transaction that creates it. It is created on first need
(first port, first listing of groups) with Neutron's four default rules: egress any (IPv4, IPv6)
and ingress from members of the same group (IPv4, IPv6).
"""

from __future__ import annotations

import uuid
from typing import Any

from vxnet.services.repo import ROOT, UnitOfWork, now_iso


def default_key(project_id: str) -> str:
    return f"{ROOT}sgdefault/{project_id}"


def new_rule(
    group: dict[str, Any],
    direction: str,
    ethertype: str,
    *,
    protocol: str | None = None,
    port_range_min: int | None = None,
    port_range_max: int | None = None,
    remote_ip_prefix: str | None = None,
    remote_group_id: str | None = None,
    description: str = "",
) -> dict[str, Any]:
    """A rule record belonging to `group` (not yet staged)."""
    now = now_iso()
    return {
        "id": str(uuid.uuid4()),
        "security_group_id": group["id"],
        "direction": direction,
        "ethertype": ethertype,
        "protocol": protocol,
        "port_range_min": port_range_min,
        "port_range_max": port_range_max,
        "remote_ip_prefix": remote_ip_prefix,
        "normalized_cidr": remote_ip_prefix,
        "remote_group_id": remote_group_id,
        "remote_address_group_id": None,
        "belongs_to_default_sg": group["name"] == "default",
        "description": description,
        "project_id": group["project_id"],
        "tenant_id": group["project_id"],
        "tags": [],
        "created_at": now,
        "updated_at": now,
        "revision_number": 0,
    }


def new_group(project_id: str, name: str, description: str = "", stateful: bool = True) -> dict[str, Any]:
    """A group record with no rules (rules are separate `security_group_rules` objects)."""
    now = now_iso()
    return {
        "id": str(uuid.uuid4()),
        "name": name,
        "description": description,
        "stateful": stateful,
        "shared": False,
        "project_id": project_id,
        "tenant_id": project_id,
        "tags": [],
        "created_at": now,
        "updated_at": now,
        "revision_number": 0,
    }


def ensure_default_group(uow: UnitOfWork, project_id: str) -> str:
    """The id of the project's `default` group, staging its creation if it does not exist."""
    existing = uow.get_raw(default_key(project_id))
    if existing:
        return existing
    group = new_group(project_id, "default", "Default security group")
    uow.claim(default_key(project_id), group["id"])
    uow.put("security_groups", group)
    for eth in ("IPv4", "IPv6"):
        uow.put("security_group_rules", new_rule(group, "egress", eth))
        uow.put("security_group_rules", new_rule(group, "ingress", eth, remote_group_id=group["id"]))
    return group["id"]
