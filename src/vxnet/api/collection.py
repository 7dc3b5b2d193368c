"""Generic Neutron collection behaviour shared by every resource router.

- `ResourceSpec` says how one resource is seen: who may see an object, how it is presented to
  a caller (admin-only attributes stripped), which extra filters it understands.
- `list_response` applies Neutron's query language: attribute filters (repeated key = OR,
  booleans as `True`/`true`/`1`), `tags`/`tags-any`/`not-tags`/`not-tags-any`, `fields`,
  `sort_key`/`sort_dir` pairs, `limit`/`marker`/`page_reverse` with `<collection>_links`.
  Pages are capped by `[server] max_page_size` like Neutron's `pagination_max_limit`: a list
  without `limit` (or with a bigger one) returns that many objects and a `next` link.
- `get_visible` fetches one object or raises the resource's 404 (another project's object is
  indistinguishable from a missing one).
- `check_if_match` implements `If-Match: revision_number=N` (412 on mismatch).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import Request
from fastapi.responses import Response

from vxnet.api.auth import Context
from vxnet.api.errors import ApiError, not_found, precondition_failed
from vxnet.api.state import AppState
from vxnet.services.repo import Repo

RESERVED = {"fields", "limit", "marker", "page_reverse", "sort_key", "sort_dir",
            "tags", "tags-any", "not-tags", "not-tags-any"}

Presenter = Callable[[Context, dict[str, Any]], dict[str, Any]]
Visibility = Callable[[Context, dict[str, Any]], bool]
ExtraFilter = Callable[[dict[str, Any], list[str]], bool]


def owner_visible(ctx: Context, obj: dict[str, Any]) -> bool:
    """Default visibility: admins see all, others their own project's objects."""
    return ctx.is_admin or obj.get("project_id") == ctx.project_id


def identity_present(ctx: Context, obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj)


@dataclasses.dataclass(frozen=True)
class ResourceSpec:
    collection: str  # e.g. "networks"
    member: str  # e.g. "network"
    visible: Visibility = owner_visible
    present: Presenter = identity_present
    extra_filters: dict[str, ExtraFilter] = dataclasses.field(default_factory=dict)
    sortable: bool = True


def to_bool(text: str) -> bool | None:
    t = text.strip().lower()
    if t in ("true", "1", "yes", "on"):
        return True
    if t in ("false", "0", "no", "off"):
        return False
    return None


def _matches(value: Any, wanted: list[str]) -> bool:
    """Whether an attribute value matches any of the query values (OR)."""
    for w in wanted:
        if isinstance(value, bool):
            if to_bool(w) == value:
                return True
        elif isinstance(value, list):
            if w in [str(v) for v in value]:
                return True
        elif value is None:
            if w in ("", "None", "null"):
                return True
        elif str(value) == w:
            return True
    return False


def _tag_filters(q: Request) -> list[tuple[str, set[str]]]:
    """The request's tag filters, parsed once: (kind, tags) pairs."""
    out = []
    for kind in ("tags", "tags-any", "not-tags", "not-tags-any"):
        for v in q.query_params.getlist(kind):
            out.append((kind, {t for t in v.split(",") if t}))
    return out


def _tags_match(obj: dict[str, Any], filters: list[tuple[str, set[str]]]) -> bool:
    tags = set(obj.get("tags", []))
    for kind, want in filters:
        if kind == "tags" and not want <= tags:
            return False
        if kind == "tags-any" and not want & tags:
            return False
        if kind == "not-tags" and want and want <= tags:
            return False
        if kind == "not-tags-any" and want & tags:
            return False
    return True


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, "")
    if isinstance(value, bool | int | float):
        return (1, value)
    return (2, str(value))


def _by_id(items: list[dict[str, Any]]) -> bool:
    return all(items[i]["id"] <= items[i + 1]["id"] for i in range(len(items) - 1))


def requested_fields(request: Request) -> list[str]:
    """The attributes `fields=` asks for (repeated or comma-separated); empty: all."""
    out: list[str] = []
    for f in request.query_params.getlist("fields"):
        out.extend(x for x in f.split(",") if x)
    return out


def select_fields(obj: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    if not fields:
        return obj
    return {f: obj[f] for f in fields if f in obj}


def _page_params(request: Request) -> tuple[int | None, str | None, bool]:
    """(limit, marker, page_reverse) with Neutron's `pagination_max_limit` rule: the server's
    `max_page_size` caps any `limit`, and `limit` absent or 0 means that cap (None: no cap)."""
    q = request.query_params
    cap = AppState.of(request).config.max_page_size or None
    limit_s = q.get("limit")
    limit = None
    if limit_s is not None:
        try:
            limit = int(limit_s)
        except ValueError:
            raise ApiError(400, "BadRequest", f"Limit must be an integer 0 or greater and not '{limit_s}'") from None
        if limit < 0:
            raise ApiError(400, "BadRequest", f"Limit must be an integer 0 or greater and not '{limit}'")
    if cap is not None:
        limit = min(limit, cap) if limit else cap
    if not limit:
        return None, None, False  # no pagination: `marker` and `page_reverse` are ignored
    reverse = to_bool(q.get("page_reverse", "false")) or False
    return limit, q.get("marker") or None, reverse


def _sort_order(request: Request) -> list[tuple[str, str]]:
    """`sort_key`/`sort_dir` pairs, then `id` ascending (Neutron's tie-break)."""
    q = request.query_params
    sort_keys = q.getlist("sort_key")
    sort_dirs = q.getlist("sort_dir")
    if sort_dirs and len(sort_dirs) != len(sort_keys):
        raise ApiError(400, "BadRequest", "The number of sort_keys and sort_dirs must be same")
    for d in sort_dirs:
        if d not in ("asc", "desc"):
            raise ApiError(400, "BadRequest", f"{d} is invalid value for sort_dir, valid value is 'asc' and 'desc'")
    return list(zip(sort_keys, sort_dirs or ["asc"] * len(sort_keys), strict=False)) + [("id", "asc")]


def list_response(request: Request, ctx: Context, spec: ResourceSpec, objects: list[dict[str, Any]]) -> Response:
    """The answer to `GET /v2.0/<collection>` over `objects` (all of the collection), written by
    orjson (`json_body`).

    A page holds at most `limit` objects, and never more than the server's `max_page_size`
    (also when no `limit` is given): a full page carries a `next` link, which clients follow.
    Without a `limit` from the client only that `next` link is given (no `previous`)."""
    q = request.query_params
    filters = {k: q.getlist(k) for k in q if k not in RESERVED}
    tag_filters = _tag_filters(request)
    order = _sort_order(request)
    limit, marker, reverse = _page_params(request)

    def matching() -> Iterator[dict[str, Any]]:
        for obj in objects:
            if not spec.visible(ctx, obj):
                continue
            shown = spec.present(ctx, obj)
            ok = True
            for k, wanted in filters.items():
                if k in spec.extra_filters:
                    ok = spec.extra_filters[k](shown, wanted)
                elif k in shown:
                    ok = _matches(shown[k], wanted)
                if not ok:
                    break
            if ok and (not tag_filters or _tags_match(shown, tag_filters)):
                yield shown

    page = None
    if order == [("id", "asc")] and limit is not None and not reverse:
        page = _first_page_by_id(matching(), marker, limit)  # stops after `limit` matches
    if page is None:
        items = list(matching())
        if items:
            known = set(items[0])
            for k, _ in order[:-1]:
                if k not in known:
                    raise ApiError(400, "BadRequest", f"{k} is invalid attribute for sort_key")
        if order != [("id", "asc")] or not _by_id(items):  # the store lists by key, i.e. by id, already
            for key, direction in reversed(order):
                items.sort(key=lambda o, k=key: _sort_key(o.get(k)), reverse=direction == "desc")
        if marker:  # only with a limit
            idx = next((i for i, o in enumerate(items) if o["id"] == marker), None)
            if idx is None:
                raise not_found(spec.member, marker)
            items = items[:idx] if reverse else items[idx + 1 :]
        page = (items[-limit:] if reverse else items[:limit]) if limit else items
    links = _links(request, spec, page, limit, reverse) if limit else []
    if limit and q.get("limit", "0").strip() in ("", "0"):  # the cap alone paged: say where the rest is
        links = [link for link in links if link["rel"] == "next"]
    fields = requested_fields(request)
    body: dict[str, Any] = {spec.collection: [select_fields(o, fields) for o in page]}
    if links:
        body[f"{spec.collection}_links"] = links
    return json_response(body)


def json_response(body: Any) -> Response:
    """A 200 answer of `body` written by `json_body`. A handler that returns a dict instead has
    FastAPI validate it against the return type and write it through pydantic, several times
    orjson's cost (the port-up path's bind PUT and status GET answer this way)."""
    return Response(json_body(body), media_type="application/json")


def json_body(body: Any) -> bytes:
    """`body` as compact JSON, by orjson: the listed objects are the server's shared parsed copies
    (services/repo.py), whose empty lists and dicts are subclasses that refuse changes
    (services/compact.py); pydantic's serializer, FastAPI's default, writes those several times
    slower (10,000 ports: ~100-200 ms against ~40 for plain ones; orjson: ~10). What orjson
    refuses (an integer beyond 64 bits, a string that is not valid Unicode) goes through the
    standard library."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, separators=(",", ":")).encode()


def _first_page_by_id(matching: Iterator[dict[str, Any]], marker: str | None, limit: int) -> list[dict[str, Any]] | None:
    """The page after `marker` of objects that come in id order: read only as far as needed.
    None when they turn out not to be in id order (the caller sorts them all then)."""
    page: list[dict[str, Any]] = []
    found = marker is None
    last = ""
    for shown in matching:
        if shown["id"] < last:
            return None
        last = shown["id"]
        if not found:
            found = shown["id"] == marker
            continue
        page.append(shown)
        if len(page) == limit:
            return page
    if not found:
        return None  # the caller answers the marker's 404 (or finds it after sorting)
    return page


def _links(request: Request, spec: ResourceSpec, page: list[dict[str, Any]], limit: int, reverse: bool) -> list[dict[str, str]]:
    """Neutron's rule (api_common.get_pagination_links): `next` unless a forward page came back
    short, `previous` unless a reverse page came back short. An empty page has no marker to
    give: past the last page, `previous` (no marker, reverse) leads back to the last page."""
    base = str(request.url).split("?", 1)[0]
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("marker", "page_reverse")]
    out = []
    if not (len(page) < limit and not reverse):
        marker = [("marker", page[-1]["id"])] if page else []
        out.append({"rel": "next", "href": base + "?" + urlencode(params + marker)})
    if not (len(page) < limit and reverse):
        marker = [("marker", page[0]["id"])] if page else []
        out.append({"rel": "previous", "href": base + "?" + urlencode(params + marker + [("page_reverse", "True")])})
    return out


def get_visible(repo: Repo, ctx: Context, spec: ResourceSpec, id_: str) -> dict[str, Any]:
    """The object as stored (a private copy), or the resource's 404."""
    obj = repo.get(spec.collection, id_)
    if obj is None or not spec.visible(ctx, obj):
        raise not_found(spec.member, id_)
    return obj


def show_response(request: Request, ctx: Context, spec: ResourceSpec, obj: dict[str, Any]) -> dict[str, Any]:
    return {spec.member: select_fields(spec.present(ctx, obj), requested_fields(request))}


def check_if_match(request: Request, obj: dict[str, Any]) -> None:
    """`If-Match: revision_number=N`: 412 unless the object is at revision N."""
    header = request.headers.get("If-Match")
    if not header:
        return
    for part in header.split(","):
        part = part.strip()
        if part.startswith("revision_number="):
            try:
                want = int(part.split("=", 1)[1])
            except ValueError:
                raise ApiError(400, "BadRequest", f"Invalid If-Match header {header!r}") from None
            if obj.get("revision_number") != want:
                raise precondition_failed(
                    f"Constraint not met. Expected revision {want}, current is {obj.get('revision_number')}"
                )
