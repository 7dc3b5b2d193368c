"""Security group records and Neutron's rule semantics (shared by ports and the groups API).

Records:
- `security_groups/<id>`: a group without its rules (`security_group_rules` in API responses
  is computed from the rule objects whose `security_group_id` names the group).
- `security_group_rules/<id>`: one object per rule, as the API shows it.

Invariants:
- Each project has at most one group named `default`, claimed at `/vxnet/sgdefault/<project>`
  in the transaction that creates it (and released in the one that deletes it). It is created
  on first need (first port, first listing of groups or rules, first other group) with
  Neutron's four default rules: egress any (IPv4, IPv6) and ingress from members of the same
  group (IPv4, IPv6). Any other new group gets the two egress rules only.
- No group holds two rules with the same `rule_key` (Neutron's duplicate test: a remote prefix
  of 0.0.0.0/0 or ::/0 is the same as none; protocols compare by name and number).

`normalize_rule` is pure: it takes the attributes of a rule request as the client sent them and
returns the values to store, or raises the 400 Neutron raises, with its exception name and text.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from vxnet.services import quotas
from vxnet.services.errors import BadRequest
from vxnet.services.repo import ROOT, UnitOfWork, new_id, now_iso

# neutron_lib.constants.IP_PROTOCOL_MAP
IP_PROTOCOL_MAP: dict[str, int] = {
    "ah": 51, "dccp": 33, "egp": 8, "esp": 50, "gre": 47, "hopopt": 0, "icmp": 1, "igmp": 2,
    "ipip": 4, "ipv6-encap": 41, "ipv6-frag": 44, "ipv6-icmp": 58, "icmpv6": 58,
    "ipv6-nonxt": 59, "ipv6-opts": 60, "ipv6-route": 43, "ospf": 89, "pgm": 113, "rsvp": 46,
    "sctp": 132, "tcp": 6, "udp": 17, "udplite": 136, "vrrp": 112,
}
SUPPORTED_PROTOCOLS: list[str | None] = [None, *sorted(IP_PROTOCOL_MAP)]
PORT_PROTOCOLS = {6: "tcp", 17: "udp", 33: "dccp", 132: "sctp", 136: "udplite"}
ICMP_PROTOCOLS = (1, 58)
# Protocols that only exist over IPv6: an IPv4 rule with one of them is a 400.
IPV6_ONLY = {"ipv6-encap", "ipv6-frag", "ipv6-icmp", "icmpv6", "ipv6-nonxt", "ipv6-opts", "ipv6-route",
             "41", "44", "58", "59", "60", "43"}
ETHERTYPES = ("IPv4", "IPv6")
DIRECTIONS = ("ingress", "egress")
ANY_PREFIXES = ("0.0.0.0/0", "::/0")


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
    normalized_cidr: str | None = None,
    remote_group_id: str | None = None,
    description: str = "",
    project_id: str | None = None,
) -> dict[str, Any]:
    """A rule record belonging to `group` (not yet staged)."""
    now = now_iso()
    project = project_id or group["project_id"]
    return {
        "id": new_id("security_group_rules"),
        "security_group_id": group["id"],
        "direction": direction,
        "ethertype": ethertype,
        "protocol": protocol,
        "port_range_min": port_range_min,
        "port_range_max": port_range_max,
        "remote_ip_prefix": remote_ip_prefix,
        "normalized_cidr": normalized_cidr if normalized_cidr is not None else remote_ip_prefix,
        "remote_group_id": remote_group_id,
        "remote_address_group_id": None,
        "belongs_to_default_sg": group["name"] == "default",
        "description": description,
        "project_id": project,
        "tenant_id": project,
        "created_at": now,
        "updated_at": now,
        "revision_number": 0,
    }


def new_group(project_id: str, name: str, description: str = "", stateful: bool = True,
              tags: list[str] | None = None) -> dict[str, Any]:
    """A group record with no rules (rules are separate `security_group_rules` objects)."""
    now = now_iso()
    return {
        "id": new_id("security_groups"),
        "name": name,
        "description": description,
        "stateful": stateful,
        "shared": False,
        "project_id": project_id,
        "tenant_id": project_id,
        "tags": list(tags or []),
        "created_at": now,
        "updated_at": now,
        "revision_number": 0,
    }


def stage_group(uow: UnitOfWork, group: dict[str, Any]) -> list[dict[str, Any]]:
    """Stage a new group with the rules Neutron gives it; returns those rules."""
    rules = []
    for eth in ETHERTYPES:
        if group["name"] == "default":
            rules.append(new_rule(group, "ingress", eth, remote_group_id=group["id"]))
        rules.append(new_rule(group, "egress", eth))
    uow.put("security_groups", group)
    for r in rules:
        uow.put("security_group_rules", r)
    return rules


def ensure_default_group(uow: UnitOfWork, project_id: str) -> str:
    """The id of the project's `default` group, staging its creation if it does not exist."""
    existing = uow.get_raw(default_key(project_id))
    if existing:
        return existing
    group = new_group(project_id, "default", "Default security group")
    uow.claim(default_key(project_id), group["id"])
    with quotas.exempt(uow):  # implicit: counted, never refused (as in Neutron)
        stage_group(uow, group)
    return group["id"]


def sort_rules(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules in creation order (id breaks ties), as a group shows them."""
    return sorted(rules, key=lambda r: (r.get("created_at", ""), r["id"]))


# rule semantics ----------------------------------------------------------------------------------

def _invalid(type_: str, message: str) -> BadRequest:
    return BadRequest(type_, message)


def convert_port(value: Any) -> int | None:
    """Neutron's convert_validate_port_value: None, or an integer 0..65535."""
    if value is None:
        return None
    try:
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise ValueError
        port = int(value)
    except (ValueError, TypeError, OverflowError):
        raise _invalid("SecurityGroupInvalidPortValue", f"Invalid value for port {value}.") from None
    if not 0 <= port <= 65535:
        raise _invalid("SecurityGroupInvalidPortValue", f"Invalid value for port {value}.")
    return port


def convert_protocol(value: Any) -> str | None:
    """Neutron's convert_protocol: None ("any" too), a known name (lower case) or a number
    0..255 kept as its decimal string."""
    if value is None:
        return None
    bad = _invalid("SecurityGroupRuleInvalidProtocol",
                   f"Security group rule protocol {value} not supported. Only protocol values "
                   f"{SUPPORTED_PROTOCOLS} and integer representations [0 to 255] are supported.")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int):
        if 0 <= value <= 255:
            return str(value)
        raise bad
    if not isinstance(value, str):
        raise bad
    text = value.strip()
    if text.lower() == "any":
        return None
    if text.isdigit() or (text.startswith(("-", "+")) and text[1:].isdigit()):
        num = int(text)
        if 0 <= num <= 255:
            return str(num)
        raise bad
    if text.lower() in IP_PROTOCOL_MAP:
        return text.lower()
    raise bad


def convert_ethertype(value: Any) -> str:
    """`IPv4`/`IPv6`, case-insensitively."""
    if isinstance(value, str):
        for e in ETHERTYPES:
            if e.lower() == value.lower():
                return e
    raise _invalid("SecurityGroupRuleInvalidEtherType",
                   f"Security group rule for ethertype '{value}' not supported. "
                   f"Allowed values are {list(ETHERTYPES)}.")


def convert_prefix(value: Any) -> tuple[str, str] | None:
    """A remote prefix as given but always with a mask (`10.0.0.5` -> `10.0.0.5/32`), and its
    network (`normalized_cidr`); None for none. 400 InvalidCIDR when it is not a prefix."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _invalid("InvalidCIDR", f"Invalid CIDR {value} given as IP prefix.")
    try:
        iface = ipaddress.ip_interface(value.strip())
    except ValueError:
        raise _invalid("InvalidCIDR", f"Invalid CIDR {value} given as IP prefix.") from None
    return str(iface), str(iface.network)


def protocol_number(protocol: str | None) -> int | None:
    if protocol is None:
        return None
    return IP_PROTOCOL_MAP[protocol] if protocol in IP_PROTOCOL_MAP else int(protocol)


def check_port_range(protocol: str | None, pmin: int | None, pmax: int | None) -> None:
    """Neutron's _validate_port_range."""
    if pmin is None and pmax is None:
        return
    if protocol is None:
        raise _invalid("SecurityGroupProtocolRequiredWithPorts",
                       "Must also specify protocol if port range is given.")
    num = protocol_number(protocol)
    if num in PORT_PROTOCOLS:
        if pmin == 0 or pmax == 0:
            raise _invalid("SecurityGroupInvalidPortValue", "Invalid value for port 0.")
        if pmin is None or pmax is None or pmin > pmax:
            raise _invalid("SecurityGroupInvalidPortRange",
                           "For TCP/UDP protocols, port_range_min must be <= port_range_max")
    elif num in ICMP_PROTOCOLS:
        for value, attr, field in ((pmin, "port_range_min", "type"), (pmax, "port_range_max", "code")):
            if value is not None and not 0 <= value <= 255:
                raise _invalid("SecurityGroupInvalidIcmpValue",
                               f"Invalid value for ICMP {field} ({attr}) {value}. It must be 0 to 255.")
        if pmin is None:
            raise _invalid("SecurityGroupMissingIcmpType",
                           f"ICMP code (port-range-max) {pmax} is provided but ICMP type "
                           "(port-range-min) is missing.")
    else:
        valid = ", ".join(p.upper() for p in PORT_PROTOCOLS.values())
        raise _invalid("SecurityGroupInvalidProtocolForPort",
                       f"Ports cannot be specified for protocol {num}. Ports are only supported for {valid}.")


def normalize_rule(
    *,
    direction: Any,
    ethertype: Any = "IPv4",
    protocol: Any = None,
    port_range_min: Any = None,
    port_range_max: Any = None,
    remote_ip_prefix: Any = None,
    remote_group_id: Any = None,
) -> dict[str, Any]:
    """The stored attributes of a rule request (Neutron's conversions and checks, in its order)."""
    if direction not in DIRECTIONS:
        raise _invalid("BadRequest",
                       f"Invalid input for direction. Reason: '{direction}' is not in {list(DIRECTIONS)}.")
    pmin = convert_port(port_range_min)
    pmax = convert_port(port_range_max)
    proto = convert_protocol(protocol)
    eth = convert_ethertype(ethertype)
    prefix = convert_prefix(remote_ip_prefix)
    if remote_group_id is not None and not isinstance(remote_group_id, str):
        raise _invalid("BadRequest", f"Invalid input for remote_group_id. Reason: '{remote_group_id}' "
                       "is not a valid UUID.")
    if eth == "IPv6":  # legacy IPv6 ICMP names and number (Neutron stores the canonical ones)
        if proto in ("icmp", "icmpv6"):
            proto = "ipv6-icmp"
        elif proto == "1":
            proto = "58"
    check_port_range(proto, pmin, pmax)
    if prefix is not None:
        version = ipaddress.ip_interface(prefix[0]).version
        if eth != f"IPv{version}":
            raise _invalid("SecurityGroupRuleParameterConflict",
                           f"Conflicting value ethertype {eth} for CIDR {remote_ip_prefix}")
    if proto in IPV6_ONLY and eth == "IPv4":
        raise _invalid("SecurityGroupEthertypeConflictWithProtocol",
                       f"Invalid ethertype {eth} for protocol {proto}.")
    if prefix is not None and remote_group_id:
        raise _invalid("SecurityGroupRemoteGroupAndRemoteIpPrefix",
                       "Only remote_ip_prefix or remote_group_id may be provided.")
    return {
        "direction": direction,
        "ethertype": eth,
        "protocol": proto,
        "port_range_min": pmin,
        "port_range_max": pmax,
        "remote_ip_prefix": prefix[0] if prefix else None,
        "normalized_cidr": prefix[1] if prefix else None,
        "remote_group_id": remote_group_id or None,
    }


def rule_key(rule: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two rules of a group the same rule (Neutron's _rule_to_key)."""
    cidr = rule.get("normalized_cidr") or rule.get("remote_ip_prefix")
    if cidr in ANY_PREFIXES:
        cidr = None
    return (
        rule["direction"],
        rule["ethertype"],
        rule.get("port_range_min"),
        rule.get("port_range_max"),
        protocol_number(rule.get("protocol")),
        rule.get("remote_group_id"),
        cidr,
        rule["security_group_id"],
    )


def groups_in_use(ports: list[dict[str, Any]]) -> set[str]:
    """Ids of the groups referenced by any of `ports`."""
    return {gid for p in ports for gid in (p.get("security_groups") or [])}
