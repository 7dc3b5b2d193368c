"""Neutron's API policy, evaluated by oslo.policy.

Contract:
- `RULES` is the rule table: Neutron's rule names with Neutron's legacy (pre-Wallaby,
  `admin_or_owner`) check strings, taken from `neutron/conf/policies/*.py`, with two additions
  from Neutron's 2023+ defaults: every top-level write also needs `rule:writer` (a token whose
  only role is `reader` never writes; Neutron's PROJECT_MEMBER), and `binding:host_id` /
  `binding:profile` may also be set by the `service` role (`rule:service_api`).
- `Policy` wraps one `oslo_policy.policy.Enforcer`, built once per policy file. An operator file
  (`[server] policy_file`, YAML or JSON, oslo's format) overrides any rule by name; oslo re-reads
  it when its mtime changes.
- Credentials come from the request's `Context`: `user_id`, `project_id` (= `tenant_id`),
  `roles`, `is_admin`, and `writer`.
- Targets are plain dicts: the object's attributes (as the request would leave them), its
  `project_id`/`tenant_id`, and the attributes of the network it lives on as `network:<attr>`
  (Neutron's `%(network:tenant_id)s`; `network:shared` is whether the network is shared with
  the target's project, by RBAC); see `target()`.
- `enforce(ctx, action, target, attrs)` checks `action`, then `action:<attr>` for every
  attribute the request sets that has a rule of its own (Neutron's attribute-based policy),
  raising 403 `PolicyNotAuthorized` naming the first rule that failed.

Reads (who sees which object, which attributes are hidden) are the handlers' fixed visibility
functions, which implement Neutron's `get_*` defaults; they are not overridable here, because a
listing evaluates them once per object.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from oslo_config import cfg
from oslo_policy import _checks, policy

from vxnet.api.auth import Context
from vxnet.api.errors import ApiError
from vxnet.services import rbac


def _fast_check(rule: Any, target: Any, creds: Any, enforcer: Any, current_rule: str | None) -> bool:
    """oslo.policy's `_checks._check`, with the check's call arity looked up once per class.

    oslo calls `inspect.getfullargspec(rule.__call__)` on every node of every evaluation (about
    0.1 ms each, most of a request's policy cost); the answer depends only on the class."""
    if _takes_current_rule(type(rule)):
        return bool(rule(target, creds, enforcer, current_rule))
    return bool(rule(target, creds, enforcer))  # legacy checks without current_rule


@functools.cache
def _takes_current_rule(cls: type) -> bool:
    return len(inspect.getfullargspec(cls.__call__).args) > 4


if hasattr(_checks, "_check"):  # the private hook this relies on (oslo.policy >= 3)
    _checks._check = _fast_check


@policy.register("field")
class FieldCheck(policy.Check):  # type: ignore[misc]
    """Neutron's `field:<resource>:<attr>=<value>` (or `=~<regex>`) check on the target.

    The attribute is read as `<singular>:<attr>` (a parent's attribute, e.g. `network:shared`
    on a port's target) or, failing that, as `<attr>` of the target itself when the target is of
    that resource."""

    def __init__(self, kind: str, match: str) -> None:
        super().__init__(kind, match)
        resource, _, rest = match.partition(":")
        self.singular = resource.removesuffix("s")
        if "=~" in rest:
            self.field, _, pattern = rest.partition("=~")
            self.regex: re.Pattern[str] | None = re.compile(pattern)
            self.value = ""
        else:
            self.field, _, self.value = rest.partition("=")
            self.regex = None

    def __call__(self, target: Mapping[str, Any], creds: Mapping[str, Any], enforcer: Any,
                 current_rule: str | None = None) -> bool:
        key = f"{self.singular}:{self.field}"
        if key in target:
            value = target[key]
        elif target.get("resource") == self.singular:
            value = target.get(self.field)
        else:
            return False
        if self.regex is not None:
            return isinstance(value, str) and self.regex.match(value) is not None
        if isinstance(value, bool):
            return str(value).lower() == self.value.lower()
        return str(value) == self.value


ANY = "rule:regular_user"
ADMIN_ONLY = "rule:admin_only"
ADMIN_OR_OWNER = "rule:admin_or_owner"
ADMIN_OR_NET_OWNER = "rule:admin_or_network_owner"
ADVSVC = "rule:context_is_advsvc"
WRITER = "rule:writer"


def _or(*checks: str) -> str:
    return " or ".join(checks)


def _write(check: str) -> str:
    """A top-level write: the caller must be a writer, and `check` must hold."""
    return WRITER if check == ANY else f"{WRITER} and ({check})"


def _rule(name: str, check: str, description: str = "") -> policy.RuleDefault:
    return policy.RuleDefault(name, check, description=description or name)


BASE = [
    _rule("context_is_admin", "role:admin", "Rule for cloud admin access"),
    _rule("owner", "tenant_id:%(tenant_id)s", "Rule for resource owner access"),
    _rule("admin_or_owner", _or("rule:context_is_admin", "rule:owner")),
    _rule("context_is_advsvc", "role:advsvc", "Rule for advsvc role access"),
    _rule("admin_or_network_owner", _or("rule:context_is_admin", "tenant_id:%(network:tenant_id)s")),
    _rule("admin_owner_or_network_owner", _or("rule:owner", ADMIN_OR_NET_OWNER)),
    _rule("network_owner", "tenant_id:%(network:tenant_id)s"),
    _rule("admin_only", "rule:context_is_admin"),
    _rule("regular_user", "", "Rule for regular user access"),
    _rule("shared", "field:networks:shared=True", "Rule of shared network"),
    _rule("external", "field:networks:router:external=True", "Definition of an external network"),
    _rule("default", ADMIN_OR_OWNER, "Default access rule"),
    _rule("writer", "writer:True", "The token has a role other than reader (Neutron 2023+ PROJECT_MEMBER)"),
    _rule("service_api", "role:service", "The service role (agents binding ports)"),
    _rule("network_device", "field:port:device_owner=~^network:", "Rule of port with network device_owner"),
]

NETWORK_ADMIN_ATTRS = ("shared", "router:external", "is_default", "segments", "provider:network_type",
                       "provider:physical_network", "provider:segmentation_id")

NETWORKS = [
    _rule("create_network", _write(ANY)),
    *[_rule(f"create_network:{a}", ADMIN_ONLY) for a in NETWORK_ADMIN_ATTRS],
    _rule("create_network:port_security_enabled", ANY),
    _rule("update_network", _write(ADMIN_OR_OWNER)),
    *[_rule(f"update_network:{a}", ADMIN_ONLY) for a in NETWORK_ADMIN_ATTRS],
    _rule("update_network:port_security_enabled", ADMIN_OR_OWNER),
    _rule("delete_network", _write(ADMIN_OR_OWNER)),
]

SUBNETS = [
    _rule("create_subnet", _write(ADMIN_OR_NET_OWNER)),
    _rule("create_subnet:segment_id", ADMIN_ONLY),
    _rule("create_subnet:service_types", ADMIN_ONLY),
    _rule("update_subnet", _write(ADMIN_OR_NET_OWNER)),
    _rule("update_subnet:segment_id", ADMIN_ONLY),
    _rule("update_subnet:service_types", ADMIN_ONLY),
    _rule("delete_subnet", _write(ADMIN_OR_NET_OWNER)),
]

_NET_DEVICE = _or("not rule:network_device", ADVSVC, ADMIN_OR_NET_OWNER)
_NET_OWNER = _or(ADVSVC, ADMIN_OR_NET_OWNER)
_NET_OWNER_OR_SHARED = _or(ADVSVC, ADMIN_OR_NET_OWNER, "rule:shared")
_BINDER = _or(ADMIN_ONLY, "rule:service_api")

PORTS = [
    _rule("create_port", _write(ANY)),
    _rule("create_port:device_owner", _NET_DEVICE),
    _rule("create_port:mac_address", _NET_OWNER),
    _rule("create_port:fixed_ips", _NET_OWNER_OR_SHARED),
    _rule("create_port:fixed_ips:ip_address", _NET_OWNER),
    _rule("create_port:fixed_ips:subnet_id", _NET_OWNER_OR_SHARED),
    _rule("create_port:port_security_enabled", _NET_OWNER),
    _rule("create_port:binding:host_id", _BINDER),
    _rule("create_port:binding:profile", _BINDER),
    _rule("create_port:binding:vnic_type", ANY),
    _rule("create_port:allowed_address_pairs", ADMIN_OR_NET_OWNER),
    _rule("update_port", _write(_or(ADMIN_OR_OWNER, ADVSVC))),
    _rule("update_port:device_owner", _NET_DEVICE),
    _rule("update_port:mac_address", _or(ADMIN_ONLY, ADVSVC)),
    _rule("update_port:fixed_ips", _NET_OWNER_OR_SHARED),
    _rule("update_port:fixed_ips:ip_address", _NET_OWNER),
    _rule("update_port:fixed_ips:subnet_id", _NET_OWNER_OR_SHARED),
    _rule("update_port:port_security_enabled", _NET_OWNER),
    _rule("update_port:binding:host_id", _BINDER),
    _rule("update_port:binding:profile", _BINDER),
    _rule("update_port:binding:vnic_type", _or(ADMIN_OR_OWNER, ADVSVC)),
    _rule("update_port:allowed_address_pairs", ADMIN_OR_NET_OWNER),
    _rule("delete_port", _write(_or(ADVSVC, "rule:admin_owner_or_network_owner"))),
]

_GW = "external_gateway_info"
ROUTERS = [
    _rule("create_router", _write(ANY)),
    _rule("create_router:distributed", ADMIN_ONLY),
    _rule("create_router:ha", ADMIN_ONLY),
    _rule(f"create_router:{_GW}", ADMIN_OR_OWNER),
    _rule(f"create_router:{_GW}:network_id", ADMIN_OR_OWNER),
    _rule(f"create_router:{_GW}:enable_snat", ADMIN_ONLY),
    _rule(f"create_router:{_GW}:external_fixed_ips", ADMIN_ONLY),
    _rule("update_router", _write(ADMIN_OR_OWNER)),
    _rule("update_router:distributed", ADMIN_ONLY),
    _rule("update_router:ha", ADMIN_ONLY),
    _rule(f"update_router:{_GW}", ADMIN_OR_OWNER),
    _rule(f"update_router:{_GW}:network_id", ADMIN_OR_OWNER),
    _rule(f"update_router:{_GW}:enable_snat", ADMIN_ONLY),
    _rule(f"update_router:{_GW}:external_fixed_ips", ADMIN_ONLY),
    _rule("delete_router", _write(ADMIN_OR_OWNER)),
    _rule("add_router_interface", _write(ADMIN_OR_OWNER)),
    _rule("remove_router_interface", _write(ADMIN_OR_OWNER)),
    _rule("add_extraroutes", _write(ADMIN_OR_OWNER)),
    _rule("remove_extraroutes", _write(ADMIN_OR_OWNER)),
]

FLOATINGIPS = [
    _rule("create_floatingip", _write(ANY)),
    _rule("create_floatingip:floating_ip_address", ADMIN_ONLY),
    _rule("update_floatingip", _write(ADMIN_OR_OWNER)),
    _rule("delete_floatingip", _write(ADMIN_OR_OWNER)),
]

SECURITY_GROUPS = [
    _rule("create_security_group", _write(ADMIN_OR_OWNER)),
    _rule("update_security_group", _write(ADMIN_OR_OWNER)),
    _rule("delete_security_group", _write(ADMIN_OR_OWNER)),
    _rule("create_security_group_rule", _write(ADMIN_OR_OWNER)),
    _rule("update_security_group_rule", _write(ADMIN_OR_OWNER)),
    _rule("delete_security_group_rule", _write(ADMIN_OR_OWNER)),
]

# Neutron's QoS defaults: admins write policies and rules and read rule types; reads of
# policies and rules are the handlers' visibility (own project's or shared).
QOS = [
    *[_rule(f"{op}_policy", _write(ADMIN_ONLY)) for op in ("create", "update", "delete")],
    *[_rule(f"{op}_policy_{kind}_rule", _write(ADMIN_ONLY)) for op in ("create", "update", "delete")
      for kind in ("bandwidth_limit", "dscp_marking", "minimum_bandwidth")],
    _rule("get_rule_type", ADMIN_ONLY),
]

SUBNETPOOLS = [
    _rule("shared_subnetpools", "field:subnetpools:shared=True", "Definition of a shared subnetpool"),
    _rule("create_subnetpool", _write(ANY)),
    _rule("create_subnetpool:shared", ADMIN_ONLY),
    _rule("create_subnetpool:is_default", ADMIN_ONLY),
    _rule("update_subnetpool", _write(ADMIN_OR_OWNER)),
    _rule("update_subnetpool:is_default", ADMIN_ONLY),
    _rule("delete_subnetpool", _write(ADMIN_OR_OWNER)),
    _rule("add_prefixes", _write(ADMIN_OR_OWNER)),
    _rule("remove_prefixes", _write(ADMIN_OR_OWNER)),
]

ADDRESS_SCOPES = [
    _rule("shared_address_scopes", "field:address_scopes:shared=True", "Definition of a shared address scope"),
    _rule("create_address_scope", _write(ANY)),
    _rule("create_address_scope:shared", ADMIN_ONLY),
    _rule("update_address_scope", _write(ADMIN_OR_OWNER)),
    _rule("update_address_scope:shared", ADMIN_ONLY),
    _rule("delete_address_scope", _write(ADMIN_OR_OWNER)),
]

RBAC_POLICIES = [
    _rule("restrict_wildcard", _or("(not field:rbac_policy:target_tenant=*)", ADMIN_ONLY),
          "Definition of a wildcard target_tenant"),
    _rule("create_rbac_policy", _write(ANY)),
    _rule("create_rbac_policy:target_tenant", "rule:restrict_wildcard"),
    _rule("update_rbac_policy", _write(ADMIN_OR_OWNER)),
    _rule("update_rbac_policy:target_tenant", f"rule:restrict_wildcard and {ADMIN_OR_OWNER}"),
    _rule("delete_rbac_policy", _write(ADMIN_OR_OWNER)),
]

# Neutron's trunk defaults: the owner (or an admin) creates, reads and changes a trunk and its
# subports (the handlers also require owning the parent port and seeing every subport).
TRUNKS = [
    _rule("create_trunk", _write(ADMIN_OR_OWNER)),
    _rule("get_trunk", ADMIN_OR_OWNER),
    _rule("update_trunk", _write(ADMIN_OR_OWNER)),
    _rule("delete_trunk", _write(ADMIN_OR_OWNER)),
    _rule("get_subports", ADMIN_OR_OWNER),
    _rule("add_subports", _write(ADMIN_OR_OWNER)),
    _rule("remove_subports", _write(ADMIN_OR_OWNER)),
]

RULES: list[policy.RuleDefault] = (BASE + NETWORKS + SUBNETS + PORTS + ROUTERS + FLOATINGIPS + SECURITY_GROUPS
                                   + QOS + SUBNETPOOLS + ADDRESS_SCOPES + RBAC_POLICIES + TRUNKS)
RULE_NAMES = frozenset(r.name for r in RULES)


def credentials(ctx: Context) -> dict[str, Any]:
    """oslo.policy credentials for a request context."""
    return {
        "user_id": ctx.user_id,
        "project_id": ctx.project_id,
        "tenant_id": ctx.project_id,
        # A host-limited user (`hosts = [...]`) is an agent's identity: the agent endpoints check
        # its `service` role themselves; Neutron's `service_api` (binding ports: Nova's) is not its.
        "roles": list(ctx.roles) if ctx.hosts is None else [r for r in ctx.roles if r != "service"],
        "is_admin": ctx.is_admin,
        "writer": ctx.can_write,
    }


def target(resource: str, obj: Mapping[str, Any], network: Mapping[str, Any] | None = None,
           **extra: Any) -> dict[str, Any]:
    """The policy target of `obj` (a `resource`, e.g. "port"): its attributes, `tenant_id`, and
    its network's attributes as `network:<attr>`."""
    out: dict[str, Any] = {k: v for k, v in obj.items() if isinstance(v, str | bool | int | float) or v is None}
    out["resource"] = resource
    project = obj.get("project_id") or obj.get("tenant_id") or ""
    out["project_id"] = out["tenant_id"] = project
    if resource == "network":
        network = obj
    if network is not None:
        out["network:tenant_id"] = network.get("project_id") or network.get("tenant_id") or ""
        out["network:project_id"] = out["network:tenant_id"]
        # Neutron's FieldCheck reads `shared` of a parent network as the target's project sees it
        # (RBAC: shared with that project or with everyone)
        out["network:shared"] = (bool(network.get("shared")) if resource == "network"
                                 else rbac.shared_with(network, project))
        out["network:router:external"] = bool(network.get("router:external"))
    out.update(extra)
    return out


class Policy:
    """One oslo.policy enforcer with vxnet's rule table and an optional operator file."""

    def __init__(self, policy_file: str | None = None) -> None:
        conf = cfg.ConfigOpts()
        conf([], project="vxnet", default_config_files=[], default_config_dirs=[])
        if policy_file is not None:
            policy_file = os.path.abspath(policy_file)
            if not os.path.isfile(policy_file):
                raise ValueError(f"policy_file {policy_file} does not exist")
        self.enforcer = policy.Enforcer(conf, policy_file=policy_file or "vxnet-no-policy-file.yaml")
        conf.set_override("policy_dirs", [], "oslo_policy")  # only the one file, no policy.d
        self.enforcer.register_defaults(RULES)
        self.enforcer.load_rules()
        # Without an operator file there is nothing to re-read: stop oslo looking for one on
        # every call. With one, oslo stats it per call and reloads it when it changes.
        self.enforcer.use_conf = policy_file is not None
        # One evaluation at a time: handlers run on worker threads, and oslo's generic checks
        # call ast.literal_eval, which on this CPython (3.11) raises "SystemError: AST
        # constructor recursion depth mismatch" when two threads parse at once (seen as a 500
        # in test_concurrent_overlapping_creates_one_wins). A check costs tens of microseconds.
        self._lock = threading.Lock()

    def check(self, ctx: Context | Mapping[str, Any], rule: str, tgt: Mapping[str, Any]) -> bool:
        """Whether `rule` holds for the caller on `tgt` (an unknown rule name uses `default`)."""
        creds = credentials(ctx) if isinstance(ctx, Context) else ctx
        with self._lock:
            return bool(self.enforcer.enforce(rule, tgt, creds))

    def enforce(self, ctx: Context, action: str, tgt: Mapping[str, Any], attrs: Iterable[str] = ()) -> None:
        """`action`, then `action:<attr>` for each given attribute that has a rule of its own;
        403 PolicyNotAuthorized naming the first rule that fails."""
        creds = credentials(ctx)
        with self._lock:
            if not self.enforcer.enforce(action, tgt, creds):
                raise denied(action)
            for attr in attrs:
                name = f"{action}:{attr}"
                if name in self.enforcer.rules and not self.enforcer.enforce(name, tgt, creds):
                    raise denied(name)


def denied(rule: str) -> ApiError:
    """Neutron's 403 body for a failed policy check."""
    return ApiError(403, "PolicyNotAuthorized", f"({rule}) is disallowed by policy")


@functools.lru_cache(maxsize=8)
def for_file(policy_file: str | None) -> Policy:
    """The process-wide `Policy` of a policy file (None: the defaults only)."""
    return Policy(policy_file)


def of(config: Any) -> Policy:
    """The `Policy` of a server configuration (`[server] policy_file`)."""
    return for_file(getattr(config, "policy_file", None))


def sub_attrs(name: str, items: Iterable[Mapping[str, Any]] | None) -> list[str]:
    """`<name>:<key>` for every key set in a list of dicts (Neutron's list-of-dict sub-rules,
    e.g. `fixed_ips:ip_address`)."""
    keys: dict[str, None] = {}
    for item in items or []:
        for k, v in item.items():
            if v is not None:
                keys[f"{name}:{k}"] = None
    return list(keys)
