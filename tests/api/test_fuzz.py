"""Property-based fuzzing of every API route the running server advertises.

Routes come from the server's own `/openapi.json`, so resources added later are fuzzed with no
change here. Attribute names come from the routers' pydantic `Body` models (and Neutron's query
parameters), so generated bodies and queries mix real attributes, unknown ones and wrong types.
Ids in paths and in `*_id` attributes are often real ids of existing objects, so requests get
past the 404s into validation and allocation code.

Identity bodies (password and token logins with every part of the document replaced by wrong
shapes, project creation) and hostile bodies on every route (nesting from just under to far over
the depth limit, balanced or not; sizes around the body limit, with and without
Content-Length) are fuzzed too.

Properties, for every request:
- never a 5xx (nor a dropped connection);
- every 4xx body (but HEAD's, which has none) is exactly `{"NeutronError": {"type": str, "message": str, "detail": str}}`
  (Keystone's `{"error": {"code", "title", "message"}}` under /identity/);
- every 2xx body with content is JSON.

Bounded: a few hundred examples, a minute or two. Deterministic by default (`derandomize`);
set VXNET_FUZZ_RANDOM=1 (and VXNET_FUZZ_EXAMPLES=N) to explore with fresh random seeds.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from tests.support import http
from vxnet.api import app as app_module
from vxnet.api.validation import Body

RANDOM = os.environ.get("VXNET_FUZZ_RANDOM") == "1"
EXAMPLES = int(os.environ.get("VXNET_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
USERS = ("admin", "alice", "alice_reader", "bob", None, "forged")
QUERY_KEYS = ["fields", "limit", "marker", "page_reverse", "sort_key", "sort_dir", "tags", "tags-any",
              "not-tags", "not-tags-any", "id", "name", "project_id", "tenant_id", "shared", "admin_state_up"]
SKIP_PATHS = {"/metrics"}


# --- what the server exposes ---------------------------------------------------------------------


def _models(mod: Any) -> list[type[BaseModel]]:
    return [o for _, o in inspect.getmembers(mod, inspect.isclass)
            if issubclass(o, Body) and o is not Body and o.__module__ == mod.__name__]


def _names(models: list[type[BaseModel]]) -> set[str]:
    return {f.alias or n for m in models for n, f in m.model_fields.items()}


def attribute_pools() -> tuple[list[str], dict[str, list[str]]]:
    """All request attribute names, and per collection those of the module serving it."""
    every: set[str] = set()
    per: dict[str, set[str]] = {}
    for mod in app_module.ROUTER_MODULES:
        names = _names(_models(mod))
        every |= names
        for route in getattr(mod.router, "routes", []):
            m = re.fullmatch(r"/v2\.0/([a-z_-]+)", getattr(route, "path", ""))
            if m and names and "POST" in getattr(route, "methods", ()):
                per.setdefault(m.group(1), set()).update(names)
    return sorted(every), {k: sorted(v) for k, v in per.items()}


ATTRS, COLL_ATTRS = attribute_pools()


@pytest.fixture(scope="module")
def api(shared_server) -> dict[str, Any]:
    """Routes from /openapi.json, tokens, seed objects and a pool of real ids."""
    doc = http.get(shared_server.url + "/openapi.json", timeout=10).json()
    routes = sorted((m.upper(), p) for p, ops in doc["paths"].items() for m in ops
                    if m in ("get", "post", "put", "delete", "patch", "head") and p not in SKIP_PATHS)
    assert ("POST", "/v2.0/networks") in routes and ("GET", "/v2.0/networks/{network_id}") in routes
    tokens = {u: shared_server.token(u) for u in USERS if u and u != "forged"}
    tokens["forged"] = "eyJ1IjoieCJ9.c2lnbmF0dXJl"
    admin = shared_server.api("admin")
    shared_server.api("alice")
    seeds = seed_objects(shared_server, routes)
    client = http.client(base_url=shared_server.url, timeout=30)
    ids, pools, examples, by_collection = observe(admin, routes)
    yield {"routes": routes, "tokens": tokens, "client": client, "admin": admin, "seeds": seeds,
           "ids": ids, "pools": pools, "examples": examples, "by_collection": by_collection}
    client.close()


def seed_objects(server: Any, routes: list[tuple[str, str]]) -> dict[str, str]:
    """A few real objects to reference: networks per project (one shared, one external), a
    subnet on each, a port, a security group, a router. Only what the server implements."""
    have = {p for m, p in routes if m == "POST"}
    admin, alice, bob = server.api("admin"), server.api("alice"), server.api("bob")
    seeds: dict[str, str] = {}

    def make(c: httpx.Client, coll: str, name: str, body: dict[str, Any]) -> None:
        if f"/v2.0/{coll}" in have:
            r = c.post("/" + coll, json={member_of("/v2.0/" + coll): body})
            assert r.status_code == 201, f"seeding {coll}: {r.text}"
            seeds[name] = r.json()[member_of("/v2.0/" + coll)]["id"]

    make(alice, "networks", "net", {"name": "fz-a"})
    make(bob, "networks", "net_b", {"name": "fz-b"})
    make(admin, "networks", "shared", {"name": "fz-shared", "shared": True})
    make(admin, "networks", "ext", {"name": "fz-ext", "router:external": True})
    if "net" in seeds:
        make(alice, "subnets", "subnet", {"network_id": seeds["net"], "cidr": "192.0.2.0/24", "ip_version": 4})
        make(admin, "subnets", "ext_subnet", {"network_id": seeds["ext"], "cidr": "203.0.113.0/24",
                                              "ip_version": 4})
        make(alice, "ports", "port", {"network_id": seeds["net"]})
    make(alice, "security-groups", "sg", {"name": "fz-sg"})
    make(alice, "routers", "router", {"name": "fz-r"})
    return seeds


def base_body(coll: str, seeds: dict[str, str]) -> dict[str, Any]:
    """A minimal valid create body for `coll` (empty for collections not known here)."""
    return {
        "subnets": {"network_id": seeds.get("net", ""), "cidr": "198.51.100.0/28", "ip_version": 4},
        "ports": {"network_id": seeds.get("net", "")},
        "security-group-rules": {"security_group_id": seeds.get("sg", ""), "direction": "ingress"},
        "floatingips": {"floating_network_id": seeds.get("ext", "")},
    }.get(coll, {"name": "fz"})


def observe(admin: httpx.Client, routes: list[tuple[str, str]]) -> tuple[
        list[str], dict[str, list[str]], dict[str, list[Any]], dict[str, list[str]]]:
    """From every object the admin can list: the ids, each collection's writable attributes
    (its module's request attributes that its objects show) and example values per attribute."""
    ids: list[str] = []
    by_collection: dict[str, list[str]] = {}
    pools: dict[str, list[str]] = {}
    examples: dict[str, list[Any]] = {}
    for method, path in routes:
        m = re.fullmatch(r"/v2\.0/([a-z_-]+)", path)
        if method != "GET" or not m:
            continue
        r = admin.get("/" + m.group(1))
        objs = [o for v in (r.json().values() if r.status_code == 200 else []) if isinstance(v, list)
                for o in v if isinstance(o, dict)]
        by_collection[m.group(1)] = [o["id"] for o in objs if "id" in o]
        ids += by_collection[m.group(1)]
        shown = {k for o in objs for k in o}
        own = COLL_ATTRS.get(m.group(1), [])
        pools[m.group(1)] = sorted(shown & set(own)) or own
        for o in objs:
            for k, v in o.items():
                if k != "id" and len(examples.setdefault(k, [])) < 20 and v not in examples[k]:
                    examples[k].append(v)
    return ids, pools, examples, by_collection


# --- strategies ----------------------------------------------------------------------------------

INTERESTING_TEXT = st.sampled_from([
    "", " ", "True", "false", "null", "None", "0", "-1", "1e400", "NaN", "x" * 300, "\x00", "\u202e\ufeff",
    "192.0.2.1", "192.0.2.0/24", "198.51.100.0/30", "203.0.113.0/31", "100.64.0.0/10", "0.0.0.0/0", "1.2.3.4/33",
    "300.1.1.1", "::1", "2001:db8::/64", "fe80::1/128", "fa:16:3e:00:00:01", "01:00:5e:00:00:00", "zz:zz",
    "network:router_interface", "compute:nova", "ingress", "egress", "IPv4", "IPv6", "tcp", "icmp", "udp",
    "ACTIVE", "vxlan", "flat", "admin", "../..", "%2F", "a,b", "{}", "[]",
])
TEXT = st.one_of(INTERESTING_TEXT, st.text(max_size=40), st.uuids().map(str))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                   st.floats(allow_nan=False, allow_infinity=False), TEXT)
JSON = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.sampled_from(ATTRS) | st.text(max_size=8),
                                                                      inner, max_size=4)), max_leaves=12)


@st.composite
def value_for(draw: st.DrawFn, key: str, api: dict[str, Any]) -> Any:
    """A value for attribute `key`: often plausible (a real id, a value some object has), often wrong."""
    ids, seen = api["ids"], api["examples"].get(key)
    choice = draw(st.integers(0, 5))
    if choice < 2 and (key.endswith(("_id", "_ids")) or key == "id") and ids:
        real = draw(st.sampled_from(ids))
        return [real] if key.endswith("s") and draw(st.booleans()) else real
    if choice < 2 and seen:
        return draw(st.sampled_from(seen))
    if choice == 2 and key in ("fixed_ips", "allowed_address_pairs", "host_routes", "allocation_pools") and ids:
        item = draw(st.dictionaries(st.sampled_from(["subnet_id", "ip_address", "mac_address", "start", "end",
                                                     "destination", "nexthop", "bogus"]),
                                    st.one_of(st.sampled_from(ids), INTERESTING_TEXT), max_size=3))
        return [item]
    return draw(JSON)


@st.composite
def attrs_dict(draw: st.DrawFn, api: dict[str, Any], coll: str = "") -> dict[str, Any]:
    """Attributes mostly of `coll`'s own, sometimes others' or made-up names."""
    own = api["pools"].get(coll) or COLL_ATTRS.get(coll) or ATTRS

    def key(choice: int) -> st.SearchStrategy[str]:  # 8 in 10 of the resource's own attributes
        return st.sampled_from(own) if choice < 8 else st.sampled_from(ATTRS) if choice == 8 else st.text(
            min_size=1, max_size=12)

    keys = draw(st.lists(st.integers(0, 9).flatmap(key), max_size=4, unique=True))
    return {k: draw(value_for(k, api)) for k in keys}


def member_of(path: str) -> str:
    """`/v2.0/security-groups/...` -> `security_group` (the body wrapper Neutron expects)."""
    m = re.match(r"/v2\.0/([a-z_-]+)", path)
    coll = m.group(1) if m else "x"
    return coll[:-1].replace("-", "_") if coll.endswith("s") else coll


@st.composite
def request_body(draw: st.DrawFn, path: str, api: dict[str, Any]) -> tuple[bytes | None, str | None]:
    """(raw body, content type): structured Neutron-like bodies, random JSON, or garbage bytes."""
    member = member_of(path)
    coll = path.split("/")[2] if path.startswith("/v2.0/") else ""
    kind = draw(st.sampled_from(["member", "member", "member", "bulk", "json", "bytes", "none", "tags"]))
    if kind == "none":
        return None, None
    if kind == "bytes":
        return draw(st.binary(max_size=64)), draw(st.sampled_from(["application/json", "text/plain", None]))
    if kind == "json":
        payload: Any = draw(JSON)
    elif kind == "tags":
        payload = {"tags": draw(st.lists(TEXT, max_size=4)) if draw(st.booleans()) else draw(JSON)}
    elif kind == "bulk":
        payload = {member + "s": draw(st.lists(st.one_of(attrs_dict(api, coll),
                                                         attrs_dict(api, coll).map(lambda d: {member: d}), JSON),
                                               max_size=3))}
    else:
        payload = {member: draw(attrs_dict(api, coll))}
        if draw(st.booleans()):
            payload[draw(st.sampled_from(["extra", member + "s", "tenant_id"]))] = draw(JSON)
    return json.dumps(payload).encode(), "application/json"


@st.composite
def query(draw: st.DrawFn, ids: list[str]) -> list[tuple[str, str]]:
    keys = st.sampled_from(QUERY_KEYS + ATTRS) | st.text(min_size=1, max_size=10)
    vals = st.one_of(TEXT, st.sampled_from(ids) if ids else TEXT, st.sampled_from(["asc", "desc", "True", "0", "1",
                                                                                  "-5", "name", "id"]))
    return draw(st.lists(st.tuples(keys, vals), max_size=5))


@st.composite
def fuzz_request(draw: st.DrawFn, api: dict[str, Any]) -> dict[str, Any]:
    method, template = draw(st.sampled_from(api["routes"]))
    ids = api["ids"]

    def fill(m: re.Match[str]) -> str:
        if m.group(1) == "tag":
            raw = draw(TEXT)
        elif ids and draw(st.integers(0, 2)):
            raw = draw(st.sampled_from(ids))
        else:
            raw = draw(st.one_of(st.uuids().map(str), TEXT))
        return quote(raw, safe="") or "x"

    path = re.sub(r"\{([^}]+)\}", fill, template)
    if method == "GET" and draw(st.booleans()):
        method = draw(st.sampled_from(["PATCH", "POST", "PUT", "DELETE"]))  # also wrong methods
    body, ctype = (None, None) if method in ("GET", "HEAD", "DELETE") and draw(st.integers(0, 3)) else draw(
        request_body(template, api))
    headers = {}
    user = draw(st.sampled_from(USERS))
    if user:
        headers["X-Auth-Token"] = api["tokens"][user]
    if ctype:
        headers["Content-Type"] = ctype
    if method in ("PUT", "DELETE") and draw(st.integers(0, 4)) == 0:
        headers["If-Match"] = draw(st.sampled_from(["revision_number=0", "revision_number=x", "revision_number=",
                                                    "*", "revision_number=1, revision_number=2"]))
    if template.startswith("/identity/v3/auth/tokens") and draw(st.booleans()):
        headers["X-Subject-Token"] = draw(st.sampled_from(list(api["tokens"].values()) + ["nope"]))
    return {"method": method, "url": path, "params": draw(query(ids)), "content": body, "headers": headers}


@st.composite
def auth_body(draw: st.DrawFn, api: dict[str, Any]) -> Any:
    """A Keystone token request: a valid password or token login with any part of it (the
    whole document included) replaced by a wrong shape, e.g. `{"password": "x"}`."""
    user = draw(st.sampled_from(["alice", "bob", "admin", "nobody", ""]))
    password = {"user": {"name": user, "domain": {"id": "default"}, "password": draw(st.sampled_from(
        [f"{user}-pw", "s3cret", "", "x"]))}}
    token = {"id": draw(st.sampled_from(list(api["tokens"].values()) + ["", "x.y"]))}
    method = draw(st.sampled_from(["password", "token"]))
    doc: Any = {"auth": {"identity": {"methods": [method], method: password if method == "password" else token},
                         "scope": {"project": {"name": draw(st.sampled_from(["tenant-a", "tenant-b", "admin"])),
                                               "domain": {"id": "default"}}}}}
    wrong = st.one_of(SCALAR, st.lists(SCALAR, max_size=2), st.dictionaries(st.text(max_size=6), SCALAR, max_size=2))
    for _ in range(draw(st.integers(0, 3))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        doc = _replace(doc, path, draw(wrong))
    return doc


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _replace(copy[path[0]], path[1:], value)
    return copy


DEPTHS = [1, 31, 32, 33, 64, 999, 1000, 1001, 5000, 200_000]


@st.composite
def deep_body(draw: st.DrawFn, path: str) -> bytes:
    """JSON nested `depth` levels at a random spot of a Neutron-shaped body; sometimes unbalanced."""
    depth = draw(st.sampled_from(DEPTHS))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"b":', "}]")]))
    leaf = draw(st.sampled_from(["1", '"x"', "null", "[]", "{}"]))
    inner = opener * depth + leaf + closer * (0 if draw(st.integers(0, 4)) == 0 else depth)
    shape = draw(st.sampled_from(["bare", "member", "attr", "list"]))
    member = member_of(path)
    key = draw(st.sampled_from(ATTRS or ["name"]))
    return {"bare": inner, "member": f'{{"{member}": {inner}}}', "attr": f'{{"{member}": {{"{key}": {inner}}}}}',
            "list": f'{{"{member}s": [{inner}]}}'}[shape].encode()


# --- properties ----------------------------------------------------------------------------------


def check(r: httpx.Response, req: dict[str, Any]) -> None:
    where = f"{req['method']} {r.request.url} body={req['content']!r:.300}"
    assert r.status_code < 500, f"{where} -> {r.status_code} {r.text[:500]}"
    if req["method"] == "HEAD":
        assert not r.content, f"{where} -> a HEAD response with a body"
    elif r.status_code >= 400:
        try:
            body = r.json()
        except ValueError:
            raise AssertionError(f"{where} -> {r.status_code} non-JSON error body {r.text[:200]!r}") from None
        if r.request.url.path.startswith("/identity/") and set(body) != {"NeutronError"}:  # routing's 404/405
            assert set(body) == {"error"} and set(body["error"]) == {"code", "title", "message"}, f"{where} -> {body}"
            assert body["error"]["code"] == r.status_code and body["error"]["message"], f"{where} -> {body}"
            return
        assert isinstance(body, dict) and set(body) == {"NeutronError"}, f"{where} -> {body}"
        err = body["NeutronError"]
        assert isinstance(err, dict) and set(err) == {"type", "message", "detail"}, f"{where} -> {body}"
        assert all(isinstance(err[k], str) for k in err) and err["type"] and err["message"], f"{where} -> {body}"
    elif r.content:
        try:
            r.json()
        except ValueError:
            raise AssertionError(f"{where} -> {r.status_code} non-JSON body {r.text[:200]!r}") from None


STREAMING = ("application/x-ndjson", "text/event-stream")


def send(api: dict[str, Any], req: dict[str, Any]) -> httpx.Response:
    """Send one request and check it. A successful stream (an agent's view, the UI's events)
    never ends by design: its status and headers are checked, its body is not read."""
    with api["client"].stream(req["method"], req["url"], params=req["params"], content=req["content"],
                              headers=req["headers"]) as r:
        if r.status_code < 300 and r.headers.get("content-type", "").split(";")[0] in STREAMING:
            return r
        r.read()
    check(r, req)
    return r


@FUZZ
@given(data=st.data())
def test_random_requests_never_5xx(api: dict[str, Any], data: st.DataObject) -> None:
    send(api, data.draw(fuzz_request(api)))


@FUZZ
@given(data=st.data())
def test_create_bodies_never_5xx(api: dict[str, Any], data: st.DataObject) -> None:
    """POST to every collection with Neutron-shaped bodies (the deepest code paths)."""
    posts = [p for m, p in api["routes"] if m == "POST" and re.fullmatch(r"/v2\.0/[a-z_-]+", p)]
    path = data.draw(st.sampled_from(posts))
    coll = path.split("/")[2]
    attrs = dict(base_body(coll, api["seeds"]))
    if attrs and data.draw(st.integers(0, 4)) == 0:
        attrs.pop(data.draw(st.sampled_from(sorted(attrs))))
    attrs.update(data.draw(attrs_dict(api, coll)))
    body = {member_of(path): attrs}
    user = data.draw(st.sampled_from(["admin", "alice", "bob"]))
    req = {"method": "POST", "url": path, "params": [], "content": json.dumps(body).encode(),
           "headers": {"X-Auth-Token": api["tokens"][user], "Content-Type": "application/json"}}
    send(api, req)


@FUZZ
@given(data=st.data())
def test_updates_of_real_objects_never_5xx(api: dict[str, Any], data: st.DataObject) -> None:
    """PUT on existing objects with one or a few attributes set to random values."""
    puts = [p for m, p in api["routes"] if m == "PUT" and re.fullmatch(r"/v2\.0/[a-z_-]+/\{[a-z_]+\}", p)]
    template = data.draw(st.sampled_from(puts))
    coll = template.split("/")[2]
    existing = api["by_collection"].get(coll)  # a snapshot: the draws must not depend on server state
    obj_id = data.draw(st.sampled_from(existing)) if existing else str(uuid.uuid4())
    path = re.sub(r"\{[^}]+\}", obj_id, template)
    attrs = data.draw(attrs_dict(api, coll))
    body = {member_of(path): attrs or {"name": "fz"}}
    user = data.draw(st.sampled_from(["admin", "alice", "bob", "alice_reader"]))
    req = {"method": "PUT", "url": path, "params": [], "content": json.dumps(body).encode(),
           "headers": {"X-Auth-Token": api["tokens"][user], "Content-Type": "application/json"}}
    send(api, req)


IDENTITY_POSTS = ["/identity/v3/auth/tokens", "/identity/v3/projects"]


@FUZZ
@given(data=st.data())
def test_identity_bodies_never_5xx(api: dict[str, Any], data: st.DataObject) -> None:
    """Token requests and project creation with every part of the body in a wrong shape,
    with or without a token; also validation (GET/HEAD) of random subject tokens."""
    path = data.draw(st.sampled_from(IDENTITY_POSTS))
    if path.endswith("/tokens"):
        body: Any = data.draw(auth_body(api))
    else:
        body = {"project": data.draw(attrs_dict(api))} if data.draw(st.booleans()) else data.draw(JSON)
    headers = {"Content-Type": "application/json"}
    user = data.draw(st.sampled_from(USERS))
    if user:
        headers["X-Auth-Token"] = api["tokens"][user]
    send(api, {"method": "POST", "url": path, "params": data.draw(query(api["ids"])),
               "content": json.dumps(body).encode(), "headers": headers})
    if user and data.draw(st.booleans()):
        subject = data.draw(st.sampled_from([*api["tokens"].values(), "", "a.b", "x" * 300, "\u00e9."]))
        send(api, {"method": data.draw(st.sampled_from(["GET", "HEAD", "DELETE"])), "url": "/identity/v3/auth/tokens",
                   "params": [], "content": None, "headers": {**headers, "X-Subject-Token": subject.encode()}})


HOSTILE = settings(FUZZ, max_examples=max(20, EXAMPLES // 5))


@HOSTILE
@given(data=st.data())
def test_deep_and_big_bodies_never_5xx(api: dict[str, Any], data: st.DataObject) -> None:
    """Every route that takes a body, with bodies nested around and far over the depth limit
    (a 400), or sized around the 1 MiB body limit (a 413 above it), announced by Content-Length
    or streamed in chunks; with a token or without."""
    writes = [(m, p) for m, p in api["routes"] if m in ("POST", "PUT")]
    method, template = data.draw(st.sampled_from(writes))
    path = re.sub(r"\{[^}]+\}", lambda m: data.draw(st.sampled_from(api["ids"] or ["x"])), template)
    user = data.draw(st.sampled_from(["admin", "alice", None]))
    headers = {"Content-Type": "application/json"}
    if user:
        headers["X-Auth-Token"] = api["tokens"][user]
    if data.draw(st.booleans()):
        body = data.draw(deep_body(template))
    else:
        size = data.draw(st.sampled_from([(1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 << 20]))
        body = (b'{"x": "' + b"a" * size)[:size - 2] + b'"}'
    chunked = data.draw(st.booleans())
    content: Any = body
    if chunked:
        content = iter([body[i:i + 65536] for i in range(0, len(body), 65536)])
    req = {"method": method, "url": path, "params": [], "content": content, "headers": headers}
    r = send(api, req)
    if len(body) > 1 << 20:  # refused unread: at once if announced, else when the route reads it
        allowed = (413, 401, 403, 404, 405) if chunked else (413,)
        assert r.status_code in allowed, f"{method} {path} {len(body)} bytes -> {r.status_code} {r.text[:200]}"


def test_server_still_healthy_after_fuzzing(api: dict[str, Any], shared_server) -> None:
    """The fuzzing left the server answering normally, and the metrics saw no 5xx."""
    r = api["admin"].get("/networks")
    assert r.status_code == 200
    metrics = http.get(shared_server.url + "/metrics", headers={"X-Auth-Token": api["tokens"]["admin"]},
                       timeout=10).text
    fives = [line for line in metrics.splitlines()
             if line.startswith("vxnet_api_requests_total") and re.search(r'status="5\d\d"', line)]
    assert fives == []


def test_fuzzing_left_no_orphan_allocations(api: dict[str, Any], shared_server) -> None:
    """Failed and successful requests alike left the allocation keys consistent with the
    resources: every claimed IP, MAC and VNI belongs to an existing object that holds it, and
    every port's IPs and MAC and every network's VNI are claimed (no leak, no double use)."""
    store = shared_server.store

    def objs(coll: str) -> dict[str, dict[str, Any]]:
        return {kv.key.rsplit("/", 1)[1]: json.loads(kv.value) for kv in store.range(f"/vxnet/res/{coll}/")[0]}

    ports, nets = objs("ports"), objs("networks")
    problems = []
    for kv in store.range("/vxnet/ipam/")[0]:
        subnet_id, ip = kv.key.split("/")[-2:]
        port = ports.get(kv.value)
        if port is None or {"subnet_id": subnet_id, "ip_address": ip} not in port["fixed_ips"]:
            problems.append(f"orphan IP claim {kv.key} -> {kv.value}")
    for kv in store.range("/vxnet/mac/")[0]:
        port = ports.get(kv.value)
        if port is None or port["mac_address"] != kv.key.rsplit("/", 1)[1]:
            problems.append(f"orphan MAC claim {kv.key} -> {kv.value}")
    for kv in store.range("/vxnet/vni/")[0]:
        net = nets.get(kv.value)
        if net is None or str(net["provider:segmentation_id"]) != kv.key.rsplit("/", 1)[1]:
            problems.append(f"orphan VNI claim {kv.key} -> {kv.value}")
    for pid, port in ports.items():
        for ip in port["fixed_ips"]:
            kv = store.get(f"/vxnet/ipam/{ip['subnet_id']}/{ip['ip_address']}")
            if kv is None or kv.value != pid:
                problems.append(f"port {pid} holds unclaimed IP {ip}")
        kv = store.get(f"/vxnet/mac/{port['network_id']}/{port['mac_address']}")
        if kv is None or kv.value != pid:
            problems.append(f"port {pid} holds unclaimed MAC {port['mac_address']}")
    for nid, net in nets.items():
        if net["provider:segmentation_id"] is not None:
            kv = store.get(f"/vxnet/vni/{net['provider:segmentation_id']}")
            if kv is None or kv.value != nid:
                problems.append(f"network {nid} holds unclaimed VNI {net['provider:segmentation_id']}")
    assert problems == [], problems[:10]
    assert ports and nets  # the check looked at something
