"""Port records: building, allocating and deleting ports inside one unit of work.

Used by the ports API and by routers / floating IPs (interface, gateway and floating IP ports),
so every port in the store has the same shape and the same allocation rules.

Invariants:
- A port record is staged together with the claims of its MAC (`/vxnet/mac/<net>/<mac>`) and
  fixed IPs (`/vxnet/ipam/<subnet>/<ip>`) in the caller's transaction: either all of them commit
  or none does (a raising caller stages nothing, see services/repo.py).
- `delete_port_record` releases exactly the keys the record holds and clears floating IP
  associations to the port in the same transaction.
- `binding:vif_type` follows `binding:host_id` as services/bindings.py decides (`unbound`,
  `tap` with a live agent on the host, `binding_failed` without one).
- IPv6 auto-address subnets (services/ipam.py): a new port takes its EUI-64 address on each;
  an update of `fixed_ips` keeps those addresses (Neutron's `_is_ip_required_by_subnet`: only
  router ports drop them) and adds the ones the port lacks (Neutron's `_update_ips_for_port`);
  a MAC change moves them to the new MAC's EUI-64 addresses.
- Ports owned by `network:*` devices get no security groups by default (as in Neutron);
  other ports get the project's `default` group unless port security is off.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

from vxnet.services import bindings, ipam, ipv6, quotas, rbac
from vxnet.services.errors import BadRequest, Conflict, bad_request, not_found
from vxnet.services.repo import ROOT, UnitOfWork, new_id, now_iso
from vxnet.services.secgroups import ensure_default_group

ROUTER_INTERFACE_OWNERS = (
    "network:router_interface",
    "network:router_interface_distributed",
    "network:ha_router_replicated_interface",
    "network:router_centralized_snat",
)


def network_subnets(uow: UnitOfWork, network_id: str) -> list[dict[str, Any]]:
    """The network's subnets (guarded reads), oldest first."""
    subs = uow.list("subnets", lambda s: s["network_id"] == network_id)
    return sorted(subs, key=lambda s: (s.get("created_at", ""), s["id"]))


def normalize_address_pairs(pairs: list[dict[str, Any]], port_mac: str) -> list[dict[str, str]]:
    """Neutron's allowed_address_pairs: `ip_address` (IP or CIDR) and `mac_address` (default:
    the port's). A duplicate pair is a 400."""
    out: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for p in pairs:
        ip = p["ip_address"]
        mac = p.get("mac_address") or port_mac
        if (ip, mac) in seen:
            raise bad_request("Request contains duplicate address pair: mac_address "
                              f"{mac} ip_address {ip}.", "DuplicateAddressPairInRequest")
        seen.add((ip, mac))
        out.append({"ip_address": ip, "mac_address": mac})
    return out


def default_group(uow: UnitOfWork, project_id: str) -> str:
    """The project's default group id (a creation staged earlier in this unit of work is
    reused: the unit of work reads its own writes, so a bulk create makes one group)."""
    return ensure_default_group(uow, project_id)


def check_security_groups(uow: UnitOfWork, group_ids: list[str], project_id: str, is_admin: bool) -> list[str]:
    """The groups, each existing and belonging to the port's project (or shared with it by an
    RBAC policy, services/rbac.py; any for an admin); 404 SecurityGroupNotFound otherwise. All stateful or all stateless: a mix is
    Neutron's 409 SecurityGroupConflict (a port's traffic is either tracked or not). The API
    refuses duplicates before (400); any left here are dropped."""
    out: list[str] = []
    stateful: set[bool] = set()
    for gid in dict.fromkeys(group_ids):
        group = uow.get("security_groups", gid)
        if group is None or not (is_admin or group["project_id"] == project_id or rbac.shared_with(group, project_id)):
            raise not_found("security_group", gid)
        stateful.add(bool(group.get("stateful", True)))
        out.append(gid)
    if len(stateful) > 1:
        raise Conflict("SecurityGroupConflict", "Error Cannot apply both stateful and stateless security groups on "
                       "the same port at the same time while attempting the operation.")
    return out


def port_security_conflict_create() -> BadRequest:
    return BadRequest("PortSecurityAndIPRequiredForSecurityGroups",
                      "Port security must be enabled and port must have an IP address in order to use "
                      "security groups.")


def port_security_conflict_update() -> Conflict:
    return Conflict("PortSecurityPortHasSecurityGroup",
                    "Port has security group associated. Cannot disable port security or IP address "
                    "until security group is removed")


def new_port_record(
    uow: UnitOfWork,
    *,
    network: dict[str, Any],
    project_id: str,
    port_id: str | None = None,
    name: str = "",
    fixed_ips: list[dict[str, Any]] | None = None,
    mac_address: str | None = None,
    device_owner: str = "",
    device_id: str = "",
    admin_state_up: bool = True,
    security_groups: list[str] | None = None,
    port_security_enabled: bool | None = None,
    host_id: str = "",
    description: str = "",
    allowed_address_pairs: list[dict[str, Any]] | None = None,
    tags: list[str] | None = None,
    status: str = "DOWN",
    vnic_type: str = "normal",
    binding_profile: dict[str, Any] | None = None,
    is_admin: bool = True,
    qos_policy_id: str | None = None,
) -> dict[str, Any]:
    """Allocate MAC and fixed IPs, resolve security groups, and stage a complete port (the
    admin view). `fixed_ips` None means "one address from the network's subnets"; `[]` means
    none. Raises ServiceError (staging nothing useful: the caller's transaction must not commit)."""
    if fixed_ips is not None:  # refused before anything is allocated, as in Neutron
        quotas.check_fixed_ips_request(uow, len(fixed_ips), device_owner)
    pid = port_id or new_id("ports")
    ps = network.get("port_security_enabled", True) if port_security_enabled is None else port_security_enabled
    mac = ipam.allocate_mac(uow, network["id"], pid, mac_address)
    ips = ipam.allocate_fixed_ips(uow, network, network_subnets(uow, network["id"]), pid, fixed_ips,
                                  device_owner=device_owner, mac=mac)
    if security_groups is None:
        if ps and not device_owner.startswith("network:"):
            groups = [default_group(uow, project_id)]
        else:
            groups = []
    else:
        if security_groups and not ps:
            raise port_security_conflict_create()
        groups = check_security_groups(uow, security_groups, project_id, is_admin)
    pairs = normalize_address_pairs(allowed_address_pairs or [], mac)
    if pairs and not ps:
        raise Conflict("AddressPairAndPortSecurityRequired",
                       "Port Security must be enabled in order to have allowed address pairs on a port.")
    now = now_iso()
    port = {
        "id": pid,
        "name": name,
        "network_id": network["id"],
        "project_id": project_id,
        "tenant_id": project_id,
        "mac_address": mac,
        "admin_state_up": admin_state_up,
        "status": status,
        "device_id": device_id,
        "device_owner": device_owner,
        "fixed_ips": ips,
        "allowed_address_pairs": pairs,
        "security_groups": groups,
        "port_security_enabled": ps,
        "description": description,
        "binding:host_id": "",
        "binding:vif_type": bindings.UNBOUND,
        "binding:vif_details": {},
        "binding:vnic_type": vnic_type,
        "binding:profile": binding_profile or {},
        "qos_policy_id": qos_policy_id,
        "tags": list(tags or []),
        "created_at": now,
        "updated_at": now,
        "revision_number": 0,
    }
    bindings.bind(uow, port, host_id)
    uow.put("ports", port)
    return port


def release_port_addresses(uow: UnitOfWork, port: dict[str, Any]) -> None:
    for ip in port["fixed_ips"]:
        ipam.release_ip(uow, ip["subnet_id"], ip["ip_address"])
    ipam.release_mac(uow, port["network_id"], port["mac_address"])


def fip_assoc_key(network_id: str, port_id: str, ip: str) -> str:
    """The floating IP association claim (written by api/routers/floatingips.py, same format)."""
    return f"{ROOT}fip-assoc/{network_id}/{port_id}/{ip}"


def clear_floating_ips(uow: UnitOfWork, port_id: str) -> None:
    """Disassociate floating IPs from a port that goes away (Neutron does this on port delete),
    releasing their association claims."""
    for fip in uow.list("floatingips", lambda f: f.get("port_id") == port_id):
        fip = dict(fip)
        if fip.get("fixed_ip_address"):
            key = fip_assoc_key(fip["floating_network_id"], port_id, fip["fixed_ip_address"])
            if uow.get_raw(key) == fip["id"]:
                uow.delete_raw(key)
        fip.update({"port_id": None, "fixed_ip_address": None, "router_id": None, "status": "DOWN"})
        if "port_details" in fip:
            fip["port_details"] = None
        fip["revision_number"] = fip.get("revision_number", 0) + 1
        fip["updated_at"] = now_iso()
        uow.put("floatingips", fip)


def delete_port_record(uow: UnitOfWork, port: dict[str, Any]) -> None:
    """Stage the deletion of `port`, the release of its IPs and MAC, and the disassociation
    of floating IPs pointing at it."""
    release_port_addresses(uow, port)
    clear_floating_ips(uow, port["id"])
    bindings.release(uow, port)
    uow.delete("ports", port["id"])


def changed_ips(original: list[dict[str, str]], requested: list[dict[str, Any]]
                ) -> tuple[list[dict[str, str]], list[dict[str, Any]], list[dict[str, str]]]:
    """Neutron's matching of a fixed_ips update: (kept, to add, to remove). An entry naming an
    address the port has keeps it; a subnet-only entry reuses the port's address there."""
    kept: list[dict[str, str]] = []
    add: list[dict[str, Any]] = []
    by_ip = {ip["ip_address"]: ip for ip in original}
    for r in requested:
        if "ip_address" not in r:
            continue
        orig = by_ip.pop(r["ip_address"], None)
        if orig is not None and r.get("subnet_id", orig["subnet_id"]) == orig["subnet_id"]:
            kept.append(orig)
        else:
            if orig is not None:
                by_ip[orig["ip_address"]] = orig
            add.append(r)
    by_subnet: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
    for ip in by_ip.values():
        by_subnet[ip["subnet_id"]].append(ip)
    for r in requested:
        if "ip_address" in r:
            continue
        pool = by_subnet.get(r.get("subnet_id", ""))
        if pool:
            kept.append(pool.pop())
        else:
            add.append(r)
    remove = [ip for ips in by_subnet.values() for ip in ips]
    return kept, add, remove


def update_port(uow: UnitOfWork, port: dict[str, Any], net: dict[str, Any], changes: Mapping[str, Any], *,
                is_admin: bool) -> dict[str, Any]:
    """Apply a validated update to `port` (on `net`) and stage it; the updated record.
    `changes`: the fields the caller sent, by wire name (`fixed_ips` as requested entries,
    `allowed_address_pairs` as dicts). Moving the binding sets status DOWN; a MAC change needs
    an unbound port; removed addresses are released and new ones claimed in the same unit of
    work. Who may change which field is the API policy's business (api/policy.py, checked by
    the caller in the same unit of work); `is_admin` only widens which groups may be named."""
    if "fixed_ips" in changes:  # refused before anything is released or allocated, as in Neutron
        quotas.check_fixed_ips_request(uow, len(changes["fixed_ips"] or []),
                                       changes.get("device_owner", port["device_owner"]) or "",
                                       current=len(port["fixed_ips"]))
    changed: dict[str, Any] = {}
    for f in ("name", "description", "admin_state_up", "device_id", "qos_policy_id"):
        if f in changes:
            changed[f] = changes[f]
    if "device_owner" in changes:
        changed["device_owner"] = changes["device_owner"]
    if "binding:vnic_type" in changes:
        changed["binding:vnic_type"] = changes["binding:vnic_type"]
    if "binding:profile" in changes:
        changed["binding:profile"] = changes["binding:profile"] or {}
    new_host = None
    if "binding:host_id" in changes:
        host = changes["binding:host_id"] or ""
        if host != port["binding:host_id"]:
            new_host = host
            changed["status"] = "DOWN"
    mac = port["mac_address"]
    if "mac_address" in changes and changes["mac_address"] != port["mac_address"]:
        if port["binding:vif_type"] not in (bindings.UNBOUND, bindings.FAILED):  # Neutron's PortBound rule
            raise Conflict("PortBound", f"Unable to complete operation on port {port['id']}, port is already "
                           f"bound, port type: {port['binding:vif_type']}, old_mac {port['mac_address']}, "
                           f"new_mac {changes['mac_address']}.")
        ipam.release_mac(uow, net["id"], port["mac_address"])
        mac = ipam.allocate_mac(uow, net["id"], port["id"], changes["mac_address"])
        changed["mac_address"] = mac
    owner = changed.get("device_owner", port["device_owner"])
    subnets = network_subnets(uow, net["id"]) if "fixed_ips" in changes or "mac_address" in changed else []
    auto = {s["id"]: s for s in subnets if ipv6.is_auto_address_subnet(s)}
    fixed = port["fixed_ips"]
    if "fixed_ips" in changes:
        requested = changes["fixed_ips"] or []
        kept, add, remove = changed_ips(fixed, requested)
        if ipam.takes_auto_address(owner):  # Neutron keeps automatic addresses of non-router ports
            kept += [ip for ip in remove if ip["subnet_id"] in auto]
            remove = [ip for ip in remove if ip["subnet_id"] not in auto]
        for ip in remove:
            ipam.release_ip(uow, ip["subnet_id"], ip["ip_address"])
        new = ipam.allocate_fixed_ips(uow, net, subnets, port["id"], add, device_owner=owner, mac=mac,
                                      add_auto=False) if add else []
        if ipam.takes_auto_address(owner):  # Neutron's _update_ips_for_port: auto subnets not handled
            handled = {ip["subnet_id"] for ip in kept + new + remove}
            new += ipam.auto_address_ips(uow, subnets, port["id"], mac, skip=handled)
        fixed = kept + new
        changed["fixed_ips"] = fixed
    if "mac_address" in changed:  # the EUI-64 addresses follow the MAC
        moved = []
        for ip in fixed:
            s = auto.get(ip["subnet_id"])
            if s is not None and ip["ip_address"] == ipv6.eui64_address(s["cidr"], port["mac_address"]):
                ipam.release_ip(uow, ip["subnet_id"], ip["ip_address"])
                ip = {"subnet_id": s["id"], "ip_address": ipam.allocate_ip(
                    uow, s, port["id"], ipv6.eui64_address(s["cidr"], mac), owner)}
            moved.append(ip)
        changed["fixed_ips"] = moved
    ps = changes["port_security_enabled"] if "port_security_enabled" in changes else port["port_security_enabled"]
    groups = port["security_groups"]
    if "security_groups" in changes:
        groups = check_security_groups(uow, changes["security_groups"], port["project_id"], is_admin)
        if groups and not ps:
            raise port_security_conflict_create()
        changed["security_groups"] = groups
    pairs = port["allowed_address_pairs"]
    if "allowed_address_pairs" in changes:
        pairs = normalize_address_pairs(changes["allowed_address_pairs"], mac)
        changed["allowed_address_pairs"] = pairs
    if "port_security_enabled" in changes:
        if not ps and groups:
            raise port_security_conflict_update()
        changed["port_security_enabled"] = ps
    if pairs and not ps:
        raise Conflict("AddressPairAndPortSecurityRequired",
                       "Port Security must be enabled in order to have allowed address pairs on a port.")
    port.update(changed)
    if new_host is not None:
        bindings.bind(uow, port, new_host)
    port["revision_number"] = port.get("revision_number", 0) + 1
    port["updated_at"] = now_iso()
    uow.put("ports", port)
    return port
