"""Request bodies: pydantic models with Neutron's error wording.

Each resource module declares `XCreate` and `XUpdate` models (extra attributes forbidden) from
the field types below; `parse_create` / `parse_update` unwrap `{"x": {...}}` or `{"xs": [...]}`
bodies and turn validation errors into Neutron's 400 messages, e.g.
`Invalid input for name. Reason: '7' is not a valid string.` or `Unrecognized attribute(s) 'foo'`.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Collection
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError, WithJsonSchema

from vxnet.api.auth import Context
from vxnet.api.errors import ApiError, bad_request, policy_denied

M = TypeVar("M", bound=BaseModel)


class Body(BaseModel):
    """Base of every request model: unknown attributes are an error."""

    model_config = ConfigDict(extra="forbid", strict=False)


def _strict_str(max_len: int) -> Any:
    def check(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError(f"'{v}' is not a valid string")  # noqa: TRY004 - pydantic reports only ValueError as a validation error
        if len(v) > max_len:
            raise ValueError(f"'{v}' exceeds maximum length of {max_len}")
        return v

    return BeforeValidator(check)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0"):
        return v.strip().lower() in ("true", "1")
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise ValueError(f"'{v}' cannot be converted to boolean")


def _uuid(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"'{v}' is not a valid UUID")  # noqa: TRY004 - pydantic reports only ValueError as a validation error
    try:
        uuid.UUID(v)
    except ValueError:
        raise ValueError(f"'{v}' is not a valid UUID") from None
    return v


def _project_id(v: Any) -> str:
    if not isinstance(v, str) or not v or len(v) > 255:
        raise ValueError(f"'{v}' is not a valid project id")
    return v


_MAC_RE = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")


def _mac(v: Any) -> str:
    if not isinstance(v, str) or not _MAC_RE.match(v):
        raise ValueError(f"'{v}' is not a valid MAC address")
    mac = v.lower()
    if mac == "00:00:00:00:00:00" or int(mac[:2], 16) & 1:
        raise ValueError(f"'{v}' is not a valid MAC address")
    return mac


def _ip(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"'{v}' is not a valid IP address")  # noqa: TRY004 - pydantic reports only ValueError as a validation error
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise ValueError(f"'{v}' is not a valid IP address") from None


def _cidr(v: Any) -> str:
    """Neutron's `validate_subnet`, then its normalisation: host bits are cleared
    (`192.0.2.1/24` -> `192.0.2.0/24`), as Neutron stores `<network>/<prefixlen>`."""
    try:
        net = ipaddress.ip_network(v, strict=False) if isinstance(v, str) else None
    except ValueError:
        net = None
    if net is None:
        raise ValueError(f"'{v}' is not a valid IP subnet")
    if "/" not in v:
        raise ValueError(f"'{v}' isn't a recognized IP subnet cidr, '{net}' is recommended")
    return str(net)


# Ranges no host address may come from: Neutron refuses a subnet inside the first three when
# DHCP is on; vxnet refuses any subnet overlapping one of them (its router namespaces and
# kernel routing could not use such addresses: the kernel treats them as martians).
_NOT_FOR_HOSTS = (
    (ipaddress.ip_network("0.0.0.0/8"), "'this network' range"),
    (ipaddress.ip_network("127.0.0.0/8"), "loopback range"),
    (ipaddress.ip_network("224.0.0.0/4"), "multicast range"),
    (ipaddress.ip_network("240.0.0.0/4"), "reserved range"),
)
_NOT_FOR_HOSTS_V6 = (
    (ipaddress.ip_network("::/127"), "unspecified/loopback range"),
    (ipaddress.ip_network("::ffff:0:0/96"), "IPv4-mapped range"),
    (ipaddress.ip_network("fe80::/10"), "link-local range"),
    (ipaddress.ip_network("ff00::/8"), "multicast range"),
)


def subnet_cidr_problem(net: ipaddress.IPv4Network | ipaddress.IPv6Network, enable_dhcp: bool) -> str | None:
    """What is wrong with `net` as a new subnet's CIDR (None: nothing). Neutron's checks in
    Neutron's order and words (`_validate_subnet`, then `_validate_subnet_cidr`'s /0), then
    vxnet's stricter one: no overlap with a range hosts cannot use, DHCP or not."""
    if enable_dhcp:
        if net.prefixlen > (30 if net.version == 4 else 126):
            return "Subnet has a prefix length that is incompatible with DHCP service enabled"
        if net.is_multicast:
            return "Multicast IP subnet is not supported if enable_dhcp is True"
        if net.is_loopback:
            return "Loopback IP subnet is not supported if enable_dhcp is True"
        if net.version == 4 and int(net.network_address) == 0:
            return "First IP '0.0.0.0' of network is not supported if enable_dhcp is True."
    if net.prefixlen == 0:
        return "0 is not allowed as CIDR prefix length"
    for special, what in _NOT_FOR_HOSTS if net.version == 4 else _NOT_FOR_HOSTS_V6:
        if net.overlaps(special):  # type: ignore[arg-type]
            return f"Subnet {net} overlaps the {what} {special}, whose addresses hosts cannot use"
    return None


def _tags(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(t, str) and 0 < len(t) <= 255 for t in v):
        raise ValueError(f"'{v}' is not a valid list of tags")
    return list(dict.fromkeys(v))


# WithJsonSchema: what /openapi.json says each type accepts (validation is the BeforeValidator's)
_STR255 = WithJsonSchema({"type": "string", "maxLength": 255})
Name = Annotated[str, _strict_str(255), _STR255]
Description = Annotated[str, _strict_str(255), _STR255]
Bool = Annotated[bool, BeforeValidator(_bool), WithJsonSchema({"type": "boolean"})]
Uuid = Annotated[str, BeforeValidator(_uuid), WithJsonSchema({"type": "string", "format": "uuid"})]
ProjectId = Annotated[str, BeforeValidator(_project_id),
                      WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 255})]
Mac = Annotated[str, BeforeValidator(_mac),
                WithJsonSchema({"type": "string", "pattern": "^([0-9a-f][02468ace])(:[0-9a-f]{2}){5}$"})]
IpAddr = Annotated[str, BeforeValidator(_ip),
                   WithJsonSchema({"anyOf": [{"type": "string", "format": "ipv4"}, {"type": "string", "format": "ipv6"}]})]
Cidr = Annotated[str, BeforeValidator(_cidr), WithJsonSchema({"type": "string", "pattern": r"^[0-9a-fA-F.:]+/[0-9]{1,3}$"})]
Tags = Annotated[list[str], BeforeValidator(_tags),
                 WithJsonSchema({"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 255}})]
ShortStr = Annotated[str, _strict_str(255), _STR255]


def _non_negative(v: int) -> int:
    if v < 0:
        raise ValueError(f"'{v}' should be non-negative")
    return v


NonNegInt = Annotated[int, AfterValidator(_non_negative)]


def _message(err: ValidationError) -> str:
    unknown = [str(e["loc"][0]) for e in err.errors() if e["type"] == "extra_forbidden"]
    if unknown:
        return "Unrecognized attribute(s) '" + ", ".join(unknown) + "'"
    e = err.errors()[0]
    field = ".".join(str(x) for x in e["loc"]) or "body"
    reason = str(e.get("ctx", {}).get("error", "")) or e["msg"]
    if e["type"] == "missing":
        return f"Failed to parse request. Required attribute '{e['loc'][0]}' not specified"
    return f"Invalid input for {field}. Reason: {reason}."


def validate(model: type[M], data: Any) -> M:
    """Validate one object; a 400 with Neutron's wording on failure."""
    if not isinstance(data, dict):
        raise bad_request("Body contains invalid data")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise bad_request(_message(e)) from None


def parse_create(body: Any, member: str, collection: str, model: type[M]) -> tuple[list[M], bool]:
    """Items of a create body and whether it was a bulk request."""
    if not isinstance(body, dict) or len(body) != 1 or not (member in body or collection in body):
        raise bad_request(f"Resource body required: expected '{member}' or '{collection}'")
    if collection in body:
        items = body[collection]
        if not isinstance(items, list) or not items:
            raise bad_request(f"Resources required: '{collection}' must be a non-empty list")
        return [validate(model, (i or {}).get(member, i) if isinstance(i, dict) else i) for i in items], True
    return [validate(model, body[member])], False


def parse_update(body: Any, member: str, model: type[M], read_only: Collection[str] = ()) -> M:
    """The update model; only attributes present in the body are in `model_fields_set`.
    Naming an attribute of `read_only` is Neutron's 400 "Cannot update read-only attribute"."""
    if not isinstance(body, dict) or member not in body or not isinstance(body[member], dict):
        raise bad_request(f"Resource body required: expected '{member}'")
    for attr in read_only:
        if attr in body[member]:
            raise ApiError(400, "HTTPBadRequest", f"Cannot update read-only attribute {attr}")
    if not body[member]:
        raise bad_request("Resource body contains no attributes to update")
    return validate(model, body[member])


def changes(update: BaseModel) -> dict[str, Any]:
    """The attributes an update body set, with their values."""
    return {k: getattr(update, k) for k in update.model_fields_set}


def resolve_project(ctx: Context, project_id: str | None, tenant_id: str | None) -> str:
    """The project a new object belongs to. Naming another project needs admin: otherwise a 400
    with neutron-lib's text (its `populate_project_id` runs before any policy check), and
    nothing is created anywhere."""
    if project_id and tenant_id and project_id != tenant_id:
        raise ApiError(400, "HTTPBadRequest", "'project_id' and 'tenant_id' do not match")
    wanted = project_id or tenant_id or ctx.project_id
    if wanted != ctx.project_id and not ctx.is_admin:
        raise ApiError(400, "HTTPBadRequest", "Specifying 'project_id' or 'tenant_id' other than the authenticated "
                       "project in request is not allowed for current user.")
    return wanted


def require_writer(ctx: Context, action: str) -> None:
    """Reader-only callers may not change anything (403)."""
    if not ctx.can_write:
        raise policy_denied(action)


def require_admin_for(ctx: Context, fields: set[str], admin_only: set[str], action: str) -> None:
    """403 if a non-admin sets an admin-only attribute."""
    bad = fields & admin_only
    if bad and not ctx.is_admin:
        raise ApiError(403, "PolicyNotAuthorized", f"({action}) is disallowed by policy: {', '.join(sorted(bad))}")
