"""/v2.0/security-groups and /v2.0/security-group-rules, with Neutron's semantics.

Invariants (see services/secgroups.py for the records and the rule checks):
- A project's `default` group exists once anything needs it: listing groups or rules (any
  role, as in Neutron), creating another group, creating a port. No other group may be named
  `default` (409); it cannot be renamed (409); a non-admin cannot delete it (409).
- A group is visible to its project, to admins and to the projects it is shared with (Neutron's
  `rbac-security-groups`: an `access_as_shared` RBAC policy, services/rbac.py); any other
  project's group is a 404. Its `shared` is shown as it is for the caller (true when a policy
  targets the caller's project or "*"; read-only: sharing is done through rbac-policies). A rule
  is visible to admins, to its own project and to every project that sees its group.
- A project a group is shared with may put its ports in it and name it as the remote group of
  its own rules, but may not change or delete the group or its rules (403, `admin_or_owner`).
  Deleting a group deletes its RBAC policies.
- Creating or deleting rules bumps the group's `revision_number` in the same transaction, so two
  concurrent identical rule creates cannot both pass the duplicate check (one of them retries
  and gets 409 SecurityGroupRuleExists).
- A group referenced by a port's `security_groups` cannot be deleted (409 SecurityGroupInUse);
  deleting a group deletes its rules and the rules of other groups that name it as remote.
- Rules cannot change, except their `description` (the standard-attr-description attribute).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from vxnet.api import policy
from vxnet.api.auth import Context
from vxnet.api.collection import ResourceSpec, check_if_match, list_response, show_response
from vxnet.api.errors import ApiError, bad_request, conflict, not_found
from vxnet.api.resource_routes import Resource
from vxnet.api.routers.networks import touch
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, off_loop, read_json
from vxnet.api.validation import (
    Body,
    Bool,
    Description,
    Name,
    ProjectId,
    Tags,
    changes,
    parse_create,
    parse_update,
    resolve_project,
)
from vxnet.services import rbac
from vxnet.services.repo import Repo, UnitOfWork
from vxnet.services.secgroups import (
    default_key,
    ensure_default_group,
    groups_in_use,
    new_group,
    new_rule,
    normalize_rule,
    rule_key,
    sort_rules,
    stage_group,
)

router = Routes(prefix="/v2.0", tags=["security-groups"])


def group_visible(ctx: Context, obj: dict[str, Any]) -> bool:
    """Admins, the group's project and the projects it is shared with (RBAC)."""
    return rbac.visible(ctx.is_admin, ctx.project_id, obj)


def present_group(obj: dict[str, Any], rules: list[dict[str, Any]]) -> dict[str, Any]:
    """The group with its rules, still as stored (`for_caller` is what a caller is shown)."""
    out = dict(obj)
    out["security_group_rules"] = [dict(r) for r in sort_rules(rules)]
    return out


def for_caller(ctx: Context, obj: dict[str, Any]) -> dict[str, Any]:
    """A group as `ctx` is shown it: no RBAC entries, and `shared` true when the group is shared
    with the caller's project (Neutron's `is_shared_with_project`)."""
    return rbac.present(obj, ctx.project_id)


# Visibility and names; presenting a group needs its rules, so handlers derive specs from this one
# with the rules at hand (_group_spec, show).
SPEC = ResourceSpec("security_groups", "security_group", visible=group_visible,
                    present=lambda ctx, obj: for_caller(ctx, present_group(obj, [])))
RULE_SPEC_BASE = ResourceSpec("security_group_rules", "security_group_rule")


def _rules_by_group(rules: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rules:
        out[r["security_group_id"]].append(r)
    return out


def _group_spec(st: AppState) -> ResourceSpec:
    by_group = _rules_by_group(st.repo.list("security_group_rules"))
    return dataclasses.replace(SPEC, present=lambda ctx, obj: for_caller(
        ctx, present_group(obj, by_group.get(obj["id"], []))))


def _rule_visible_fn(groups: dict[str, dict[str, Any]]) -> Any:
    def visible(ctx: Context, rule: dict[str, Any]) -> bool:
        if ctx.is_admin or rule["project_id"] == ctx.project_id:
            return True
        group = groups.get(rule["security_group_id"])
        return group is not None and group_visible(ctx, group)

    return visible


def _rule_spec(groups: dict[str, dict[str, Any]]) -> ResourceSpec:
    return dataclasses.replace(RULE_SPEC_BASE, visible=_rule_visible_fn(groups))


def _ensure_default(st: AppState, project_id: str) -> None:
    """Create the project's default group unless it exists (cheap check first)."""
    if st.store.get(default_key(project_id)) is None:
        st.repo.transact(lambda uow: ensure_default_group(uow, project_id))


def _listing_project(request: Request, ctx: Context) -> str:
    """Whose default group a listing ensures: the caller's, or for an admin the filtered project."""
    if ctx.is_admin:
        wanted = request.query_params.get("project_id") or request.query_params.get("tenant_id")
        if wanted:
            return wanted
    return ctx.project_id


def _group_rules(uow: UnitOfWork, group_id: str) -> list[dict[str, Any]]:
    return uow.list("security_group_rules", lambda r: r["security_group_id"] == group_id)


def _with_rules(st: AppState, group: dict[str, Any]) -> dict[str, Any]:
    return present_group(group, [r for r in st.repo.list("security_group_rules") if r["security_group_id"] == group["id"]])


# one group as served: the spec's visibility, its rules read beside it
GROUP = Resource(dataclasses.replace(SPEC, present=for_caller), expand=_with_rules)
_get_group = GROUP.fetch


# security groups ---------------------------------------------------------------------------------

class GroupCreate(Body):
    name: Name = ""
    description: Description = ""
    stateful: Bool = True
    tags: Tags = []
    project_id: ProjectId | None = None
    tenant_id: ProjectId | None = None


class GroupUpdate(Body):
    name: Name = ""
    description: Description = ""
    stateful: Bool = True


def default_exists() -> ApiError:
    return conflict("SecurityGroupDefaultAlreadyExists", "Default security group already exists.")


@router.get("/security-groups")
@off_loop
async def list_security_groups(request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)
    _ensure_default(st, _listing_project(request, ctx))
    return list_response(request, ctx, _group_spec(st), st.repo.list("security_groups"))


GROUP.add_show(router, "/security-groups/{group_id}", "show_security_group", "group_id")


@router.post("/security-groups", status_code=201)
@off_loop
async def create_security_group(request: Request) -> JSONResponse:
    st = AppState.of(request)
    ctx = st.context(request)
    items, bulk = parse_create(await read_json(request), "security_group", "security_groups", GroupCreate)
    projects = [resolve_project(ctx, item.project_id, item.tenant_id) for item in items]
    pol = policy.of(st.config)
    for project in projects:
        pol.enforce(ctx, "create_security_group", policy.target("security_group", {"project_id": project}))
    for item in items:
        if item.name.lower() == "default":
            raise default_exists()

    def txn(uow: UnitOfWork) -> list[dict[str, Any]]:
        out = []
        for project in dict.fromkeys(projects):
            ensure_default_group(uow, project)
        for item, project in zip(items, projects, strict=True):
            group = new_group(project, item.name, item.description, item.stateful, item.tags)
            out.append(for_caller(ctx, present_group(group, stage_group(uow, group))))
        return out

    groups = st.repo.transact(txn)
    return JSONResponse({"security_groups": groups} if bulk else {"security_group": groups[0]}, status_code=201)


def _update_group(uow: UnitOfWork, ctx: Context, group: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    group_id = group["id"]
    if "name" in fields:
        if group["name"] == "default":
            raise conflict("SecurityGroupCannotUpdateDefault", "Updating default security group not allowed.")
        if fields["name"].lower() == "default":
            raise default_exists()
    if "stateful" in fields and fields["stateful"] != group["stateful"]:
        ports = uow.list("ports", lambda p: group_id in (p.get("security_groups") or []))
        if ports:
            raise conflict("SecurityGroupInUse", f"Security Group {group_id} in use.")
    touch(group, fields)
    return present_group(group, _group_rules(uow, group_id))


GROUP.add_update(router, "/security-groups/{group_id}", "update_security_group", "group_id", GroupUpdate,
                 _update_group, read_only=("id", "project_id", "tenant_id", "shared"))


def _remove_group(uow: UnitOfWork, ctx: Context, group: dict[str, Any]) -> None:
    group_id = group["id"]
    # guard_new: a port created meanwhile with this group makes the commit fail and rerun
    users = uow.list("ports", lambda p: group_id in (p.get("security_groups") or []), guard_new=True)
    if group_id in groups_in_use(users):
        raise conflict("SecurityGroupInUse", f"Security Group {group_id} in use.")
    if group["name"] == "default" and not ctx.is_admin:
        raise conflict("SecurityGroupCannotRemoveDefault",
                       "Insufficient rights for removing default security group.")
    touched: set[str] = set()
    for rule in uow.list("security_group_rules",
                         lambda r: r["security_group_id"] == group_id or r.get("remote_group_id") == group_id):
        uow.delete("security_group_rules", rule["id"])
        if rule["security_group_id"] != group_id:
            touched.add(rule["security_group_id"])
    for other_id in touched:
        other = uow.get("security_groups", other_id)
        if other is not None:
            touch(other)
            uow.put("security_groups", other)
    if group["name"] == "default" and uow.get_raw(default_key(group["project_id"])) == group_id:
        uow.delete_raw(default_key(group["project_id"]))
    rbac.delete_all(uow, group)
    uow.delete("security_groups", group_id)


GROUP.add_delete(router, "/security-groups/{group_id}", "delete_security_group", "group_id", _remove_group)


# security group rules ----------------------------------------------------------------------------

class RuleCreate(Body):
    security_group_id: Any
    direction: Any
    ethertype: Any = "IPv4"
    protocol: Any = None
    port_range_min: Any = None
    port_range_max: Any = None
    remote_ip_prefix: Any = None
    remote_group_id: Any = None
    remote_address_group_id: Any = None
    description: Description = ""
    project_id: ProjectId | None = None
    tenant_id: ProjectId | None = None


class RuleUpdate(Body):
    description: Description = ""


READ_ONLY_RULE_ATTRS = ("security_group_id", "direction", "ethertype", "protocol", "port_range_min",
                        "port_range_max", "remote_ip_prefix", "remote_group_id", "remote_address_group_id",
                        "project_id", "tenant_id", "id", "normalized_cidr", "belongs_to_default_sg")


@router.get("/security-group-rules")
@off_loop
async def list_security_group_rules(request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)
    _ensure_default(st, _listing_project(request, ctx))
    groups = {g["id"]: g for g in st.repo.list("security_groups")}
    return list_response(request, ctx, _rule_spec(groups), st.repo.list("security_group_rules"))


def _get_rule(reader: Repo | UnitOfWork, ctx: Context, rule_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The rule if the caller may see it (given its group), else the rule's 404; and its group."""
    rule = reader.get("security_group_rules", rule_id)
    group = reader.get("security_groups", rule["security_group_id"]) if rule else None
    if rule is None:
        raise not_found("security_group_rule", rule_id)
    groups = {group["id"]: group} if group else {}
    if not _rule_visible_fn(groups)(ctx, rule):
        raise not_found("security_group_rule", rule_id)
    return rule, group


@router.get("/security-group-rules/{rule_id}")
@off_loop
async def show_security_group_rule(rule_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    rule, _ = _get_rule(st.repo, ctx, rule_id)
    return show_response(request, ctx, RULE_SPEC_BASE, rule)


def _single(values: list[str], exc: ApiError) -> str:
    if len(set(values)) > 1:
        raise exc
    return values[0]


@router.post("/security-group-rules", status_code=201)
@off_loop
async def create_security_group_rule(request: Request) -> JSONResponse:
    st = AppState.of(request)
    ctx = st.context(request)
    items, bulk = parse_create(await read_json(request), "security_group_rule", "security_group_rules", RuleCreate)
    pol = policy.of(st.config)
    specs = []
    for item in items:
        if item.remote_address_group_id is not None:
            raise bad_request("Remote address groups are not supported by this server.")
        if not isinstance(item.security_group_id, str):
            raise bad_request(f"Invalid input for security_group_id. Reason: '{item.security_group_id}' "
                              "is not a valid UUID.")
        specs.append(normalize_rule(
            direction=item.direction, ethertype=item.ethertype, protocol=item.protocol,
            port_range_min=item.port_range_min, port_range_max=item.port_range_max,
            remote_ip_prefix=item.remote_ip_prefix, remote_group_id=item.remote_group_id))
    group_id = _single([i.security_group_id for i in items], bad_request(
        "Only allowed to update rules for one security profile at a time", "SecurityGroupNotSingleGroupRules"))
    explicit = [resolve_project(ctx, i.project_id, i.tenant_id) if (i.project_id or i.tenant_id) else None
                for i in items]
    _single([e or ctx.project_id for e in explicit], bad_request(
        "Multiple tenant_ids in bulk security group rule create not allowed", "SecurityGroupRulesNotSingleTenant"))

    def txn(uow: UnitOfWork) -> list[dict[str, Any]]:
        for spec in specs:
            remote = spec["remote_group_id"]
            if remote and remote != group_id:
                _get_group(uow, ctx, remote)
        group = _get_group(uow, ctx, group_id)
        # The rule belongs to its group's project (Neutron: the group must be the rule tenant's).
        pol.enforce(ctx, "create_security_group_rule", policy.target("security_group_rule", group))
        new_keys: dict[tuple[Any, ...], None] = {}
        for spec in specs:
            key = rule_key({**spec, "security_group_id": group_id})
            if key in new_keys:
                raise conflict("DuplicateSecurityGroupRuleInPost", "Duplicate Security Group Rule in POST.")
            new_keys[key] = None
        for existing in _group_rules(uow, group_id):
            if rule_key(existing) in new_keys:
                raise conflict("SecurityGroupRuleExists",
                               f"Security group rule already exists. Rule id is {existing['id']}.")
        rules = [new_rule(group, **spec, description=item.description, project_id=project)
                 for spec, item, project in zip(specs, items, explicit, strict=True)]
        for r in rules:
            uow.put("security_group_rules", r)
        touch(group)
        uow.put("security_groups", group)
        return rules

    rules = st.repo.transact(txn)
    return JSONResponse({"security_group_rules": rules} if bulk else {"security_group_rule": rules[0]},
                        status_code=201)


@router.put("/security-group-rules/{rule_id}")
@off_loop
async def update_security_group_rule(rule_id: str, request: Request) -> dict[str, Any]:
    st = AppState.of(request)
    ctx = st.context(request)
    body = await read_json(request)
    upd = parse_update(body, "security_group_rule", RuleUpdate, read_only=READ_ONLY_RULE_ATTRS)

    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> dict[str, Any]:
        rule, _ = _get_rule(uow, ctx, rule_id)
        pol.enforce(ctx, "update_security_group_rule", policy.target("security_group_rule", rule))
        check_if_match(request, rule)
        touch(rule, changes(upd))
        uow.put("security_group_rules", rule)
        return rule

    return {"security_group_rule": st.repo.transact(txn)}


@router.delete("/security-group-rules/{rule_id}", status_code=204)
@off_loop
async def delete_security_group_rule(rule_id: str, request: Request) -> Response:
    st = AppState.of(request)
    ctx = st.context(request)

    pol = policy.of(st.config)

    def txn(uow: UnitOfWork) -> None:
        rule, group = _get_rule(uow, ctx, rule_id)
        pol.enforce(ctx, "delete_security_group_rule", policy.target("security_group_rule", rule))
        check_if_match(request, rule or {})
        uow.delete("security_group_rules", rule_id)
        if group is not None:
            touch(group)
            uow.put("security_groups", group)

    st.repo.transact(txn)
    return Response(status_code=204)
