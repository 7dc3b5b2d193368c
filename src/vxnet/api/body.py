"""Request bodies: the one place a request's bytes become a Python value.

`parse_json(raw, max_depth)`:
- the body must be JSON (UTF-8, or UTF-16/32 as `json.loads` detects): anything else is a 400 `MalformedRequestBody`;
- its strings must be Unicode text: a lone UTF-16 surrogate (`"\\ud800"`, valid JSON escape
  syntax but no character) is the same 400. Accepted, it would be stored and then fail every
  UTF-8 encoding of the object: the create's own answer (a 500 after the commit, i.e. a
  half-written object) and every later show or update of it;
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


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a string (or key) in `value` holds a lone UTF-16 surrogate (called on a value
    already bounded in depth, so the encoder's recursion is too)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


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
    # A surrogate comes from a `\u` escape, or encoded in the bytes (`json.loads` decodes with
    # "surrogatepass"): in UTF-8 as 0xED 0xA0-0xBF, in UTF-16/32 (NUL bytes) as itself. Bodies
    # with any of these are rare; only they pay for the check.
    if (b"\\u" in raw or b"\xed" in raw or b"\0" in raw) and _has_lone_surrogate(value):
        raise ApiError(400, "MalformedRequestBody", "Malformed request body: a string holds a lone UTF-16 "
                                                    "surrogate (\\ud800-\\udfff), which is not Unicode text")
    return value
