"""Request bodies: the one place a request's bytes become a Python value.

`parse_json(raw, max_depth)`:
- the body must be JSON (UTF-8, or UTF-16/32 as `json.loads` detects): anything else is a 400 `MalformedRequestBody`;
- its arrays and objects may nest at most `max_depth` deep: deeper is a 400 `BadRequest` naming
  the limit. So no body can make the validation models, an error message or a store encoder
  recurse deeply (Python's RecursionError: a 500, or a dropped connection).

How the depth is bounded without recursion of our own: the C parser guards its own recursion
(RecursionError after ~1000 levels, raised cleanly within microseconds: it becomes the same 400);
what it returns is then measured by an iterative walk that stops at the first container deeper
than the limit. The walk is skipped when the body holds no more brackets than the limit (almost
every request), and costs less than the parse itself otherwise (it visits containers only).

The body's size is bounded before this runs (`api/middleware.py`, `[server] max_body_bytes`),
so the parse and the walk are bounded too.
"""

from __future__ import annotations

import json
from typing import Any

from vxnet.api.errors import ApiError


def too_deep(value: Any, limit: int) -> bool:
    """Whether `value`'s lists and dicts nest more than `limit` deep (iterative, early exit)."""
    if type(value) is not list and type(value) is not dict:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if type(node) is dict else node:
            if type(child) is list or type(child) is dict:
                stack.append((child, depth + 1))
    return False


def depth_error(limit: int) -> ApiError:
    return ApiError(400, "BadRequest", f"Request body nests arrays/objects deeper than the limit of {limit} levels")


def parse_json(raw: bytes, max_depth: int) -> Any:
    """The body as JSON, at most `max_depth` levels deep; a 400 naming the problem otherwise."""
    if not raw:
        raise ApiError(400, "BadRequest", "Request body is empty or is not valid JSON")
    try:
        value = json.loads(raw)
    except RecursionError:
        raise depth_error(max_depth) from None
    except ValueError:  # also UnicodeDecodeError
        raise ApiError(400, "MalformedRequestBody", "Malformed request body: body is not valid JSON") from None
    if raw.count(b"[") + raw.count(b"{") > max_depth and too_deep(value, max_depth):
        raise depth_error(max_depth)
    return value
