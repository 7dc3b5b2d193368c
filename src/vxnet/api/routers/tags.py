"""/v2.0/<collection>/<id>/tags: Neutron's tag sub-resource (standard-attr-tag).

    GET    .../tags          200 {"tags": [...]}
    PUT    .../tags          200 {"tags": [...]}   replace all (body {"tags": [...]})
    POST   .../tags          201 {"tags": [...]}   add these (body {"tags": [...]})
    DELETE .../tags          204                   remove all
    GET    .../tags/<tag>    204, or 404 TagNotFound
    PUT    .../tags/<tag>    201 (empty body)      add one
    DELETE .../tags/<tag>    204, or 404 TagNotFound

Invariants:
- The parent is seen exactly as its own API shows it: another project's invisible object is
  its 404 (e.g. NetworkNotFound); a visible object the caller does not own (a shared network,
  a subnet pool, QoS policy or security group shared with its project by RBAC) is 403 for writes; a
  reader-only caller gets 403 for writes. Address scopes and RBAC policies have no standard
  attributes in Neutron, hence no tags.
- Tags live in the parent object's `tags` list (insertion order, no duplicates); a write that
  changes them bumps the parent's `revision_number` and `updated_at` in the same transaction,
  and a write that changes nothing leaves the object alone.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from vxnet.api.auth import Context
from vxnet.api.errors import ApiError, invalid_input, not_found, policy_denied
from vxnet.api.routers.networks import network_visible, touch
from vxnet.api.routers.subnets import subnet_visible
from vxnet.api.routing import Routes
from vxnet.api.state import AppState, off_loop, read_json
from vxnet.services import rbac
from vxnet.services.repo import UnitOfWork

router = Routes(prefix="/v2.0", tags=["tags"])

MAX_TAG_LEN = 255


# URL collection -> (store collection, member name used in its 404)
TAGGABLE: dict[str, tuple[str, str]] = {
    "networks": ("networks", "network"),
    "subnets": ("subnets", "subnet"),
    "ports": ("ports", "port"),
    "routers": ("routers", "router"),
    "floatingips": ("floatingips", "floatingip"),
    "security-groups": ("security_groups", "security_group"),
    "subnetpools": ("subnetpools", "subnetpool"),
    "qos/policies": ("qos_policies", "qos_policy"),
    "trunks": ("trunks", "trunk"),
}
# Collections whose objects only admins change (Neutron's QoS defaults): their tags too.
ADMIN_WRITES = frozenset({"qos_policies"})

Getter = Callable[[str, str], "dict[str, Any] | None"]


def parent_visible(collection: str, ctx: Context, obj: dict[str, Any], get: Getter) -> bool:
    """Whether the caller may see `obj` (the rule of the resource's own API). `get` fetches
    related objects (a subnet's or port's network)."""
    if ctx.is_admin or obj.get("project_id") == ctx.project_id:
        return True
    if collection == "networks":
        return network_visible(ctx, obj)
    if collection == "subnets":
        return subnet_visible(ctx, obj, get("networks", obj.get("network_id", "")))
    if collection == "ports":  # Neutron lets a network's owner see the ports on it
        net = get("networks", obj.get("network_id", ""))
        return net is not None and net["project_id"] == ctx.project_id
    if collection in ("subnetpools", "qos_policies", "security_groups"):  # shared with all or, by RBAC, this project
        return rbac.visible_to(obj, ctx.project_id)
    return False


def validate_tag(tag: Any) -> str:
    """Neutron's validate_tag: a string of at most 255 characters."""
    if not isinstance(tag, str):
        raise invalid_input(f"'{tag}' is not a valid string")
    if len(tag) > MAX_TAG_LEN:
        raise invalid_input(f"'{tag}' exceeds maximum length of {MAX_TAG_LEN}")
    if not tag:
        raise invalid_input("'' is not a valid tag: tags must not be empty")
    return tag


def validate_tags(body: Any) -> list[str]:
    """Neutron's validate_tags: `{"tags": [unique strings]}`."""
    if not isinstance(body, dict) or "tags" not in body:
        raise invalid_input("Invalid tags body")
    tags = body["tags"]
    if not isinstance(tags, list):
        raise invalid_input(f"'{tags}' is not a list")
    for t in tags:
        validate_tag(t)
    dups = sorted(t for t, n in collections.Counter(tags).items() if n > 1)  # linear: a body holds ~10^5 tags
    if dups:
        raise invalid_input(f"Duplicate items in the list: '{', '.join(dups)}'")
    return list(tags)


def tag_not_found(tag: str) -> ApiError:
    return ApiError(404, "TagNotFound", f"Tag {tag} could not be found.")


class _Parent:
    """How one taggable collection is reached."""

    def __init__(self, url_collection: str) -> None:
        self.collection, self.member = TAGGABLE[url_collection]

    def read(self, request: Request, resource_id: str) -> dict[str, Any]:
        """The parent as stored, or its 404 (read-only path)."""
        st = AppState.of(request)
        return self._fetch(st.context(request), st.repo.get, resource_id)

    def _fetch(self, ctx: Context, get: Getter, resource_id: str) -> dict[str, Any]:
        """The parent if the caller may see it, else its 404 (another project's reads as missing)."""
        obj = get(self.collection, resource_id)
        if obj is None or not parent_visible(self.collection, ctx, obj, get):
            raise not_found(self.member, resource_id)
        return obj

    def change(self, request: Request, resource_id: str, fn: Callable[[list[str]], list[str]]) -> list[str]:
        """Apply `fn` to the parent's tags in one transaction; bump the revision if they changed."""
        st = AppState.of(request)
        ctx = st.context(request)
        def txn(uow: UnitOfWork) -> list[str]:
            obj = self._fetch(ctx, uow.get, resource_id)
            if not ctx.owns(obj) or not ctx.can_write or (self.collection in ADMIN_WRITES and not ctx.is_admin):
                raise policy_denied(f"update_{self.member}_tags")
            old = list(obj.get("tags") or [])
            new = fn(old)
            if new != old:
                touch(obj, {"tags": new})
                uow.put(self.collection, obj)
            return new

        return st.repo.transact(txn)


def _register(url_collection: str) -> None:
    parent = _Parent(url_collection)
    base = f"/{url_collection}/{{resource_id}}/tags"
    op = url_collection.replace("-", "_").replace("/", "_")

    async def list_tags(resource_id: str, request: Request) -> dict[str, Any]:
        return {"tags": list(parent.read(request, resource_id).get("tags") or [])}

    async def check_tag(resource_id: str, tag: str, request: Request) -> Response:
        validate_tag(tag)
        if tag not in (parent.read(request, resource_id).get("tags") or []):
            raise tag_not_found(tag)
        return Response(status_code=204)

    async def replace_tags(resource_id: str, request: Request) -> dict[str, Any]:
        tags = validate_tags(await read_json(request))
        return {"tags": parent.change(request, resource_id, lambda old: tags)}

    async def add_tags(resource_id: str, request: Request) -> JSONResponse:
        tags = validate_tags(await read_json(request))
        def add(old: list[str]) -> list[str]:
            have = set(old)
            return old + [t for t in tags if t not in have]

        result = parent.change(request, resource_id, add)
        return JSONResponse({"tags": result}, status_code=201)

    async def add_tag(resource_id: str, tag: str, request: Request) -> Response:
        validate_tag(tag)
        parent.change(request, resource_id, lambda old: old if tag in old else [*old, tag])
        return Response(status_code=201)

    async def delete_tag(resource_id: str, tag: str, request: Request) -> Response:
        validate_tag(tag)

        def remove(old: list[str]) -> list[str]:
            if tag not in old:
                raise tag_not_found(tag)
            return [t for t in old if t != tag]

        parent.change(request, resource_id, remove)
        return Response(status_code=204)

    async def delete_all_tags(resource_id: str, request: Request) -> Response:
        parent.change(request, resource_id, lambda old: [])
        return Response(status_code=204)

    one = base + "/{tag:path}"
    router.add_api_route(base, off_loop(list_tags), methods=["GET"], name=f"list_{op}_tags")
    router.add_api_route(base, off_loop(replace_tags), methods=["PUT"], name=f"replace_{op}_tags")
    router.add_api_route(base, off_loop(add_tags), methods=["POST"], status_code=201, name=f"add_{op}_tags")
    router.add_api_route(base, off_loop(delete_all_tags), methods=["DELETE"], status_code=204, name=f"delete_all_{op}_tags")
    router.add_api_route(one, off_loop(check_tag), methods=["GET"], status_code=204, name=f"check_{op}_tag")
    router.add_api_route(one, off_loop(add_tag), methods=["PUT"], status_code=201, name=f"add_{op}_tag")
    router.add_api_route(one, off_loop(delete_tag), methods=["DELETE"], status_code=204, name=f"delete_{op}_tag")


for _collection in TAGGABLE:
    _register(_collection)
