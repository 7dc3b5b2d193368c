"""The OpenAPI document at `/openapi.json`, describing the API as it really behaves.

Request bodies are parsed by hand (`api/state.py` `read_json`, then `api/validation.py`), so
FastAPI sees no body parameters; this module post-processes FastAPI's document from the same
pydantic models the handlers validate with, without changing how anything is parsed:

- request bodies: `{"<member>": <XCreate>}` or `{"<collection>": [{"<member>": ...}]}` for
  creates, `{"<member>": <XUpdate>}` for updates (`model_json_schema`, extra attributes refused);
- query parameters of list operations: `fields`, `limit`, `marker`, `sort_key`, `sort_dir`,
  `page_reverse` and the common filters;
- responses: the envelope (`{"network": {...}}`, `{"networks": [...], "networks_links": [...]}`)
  with the object's attributes typed as served (the model's types, constraints left out: a served
  object may hold values only the server sets), and for every error the real codes
  (400/401/403/404/409/412/413/503) with the NeutronError body (Keystone's error body under
  /identity). FastAPI's 422 is removed: a body
  or parameter the API refuses is a 400.
- the endless streams (the agent's host view, the UI's event feed) are marked `x-stream: true`
  with their real media types (application/x-ndjson, text/event-stream).
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from vxnet.api.routers import (
    address_scopes,
    agent_stream,
    agents,
    floatingips,
    networks,
    ports,
    qos,
    rbac_policies,
    routers,
    security_groups,
    subnetpools,
    subnets,
    trunks,
)
from vxnet.services import qos as qos_svc

# path of the collection -> (collection key, member key, create model or None, update model or None)
RESOURCES: dict[str, tuple[str, str, type[BaseModel] | None, type[BaseModel] | None]] = {
    "/v2.0/networks": ("networks", "network", networks.NetworkCreate, networks.NetworkUpdate),
    "/v2.0/subnets": ("subnets", "subnet", subnets.SubnetCreate, subnets.SubnetUpdate),
    "/v2.0/subnetpools": ("subnetpools", "subnetpool", subnetpools.SubnetPoolCreate, subnetpools.SubnetPoolUpdate),
    "/v2.0/address-scopes": ("address_scopes", "address_scope", address_scopes.AddressScopeCreate,
                             address_scopes.AddressScopeUpdate),
    "/v2.0/ports": ("ports", "port", ports.PortCreate, ports.PortUpdate),
    "/v2.0/routers": ("routers", "router", routers.RouterCreate, routers.RouterUpdate),
    "/v2.0/floatingips": ("floatingips", "floatingip", floatingips.FloatingIPCreate, floatingips.FloatingIPUpdate),
    "/v2.0/security-groups": ("security_groups", "security_group", security_groups.GroupCreate,
                              security_groups.GroupUpdate),
    "/v2.0/security-group-rules": ("security_group_rules", "security_group_rule", security_groups.RuleCreate,
                                   security_groups.RuleUpdate),
    "/v2.0/agents": ("agents", "agent", None, agents.AgentUpdate),
    "/v2.0/qos/policies": ("policies", "policy", qos.PolicyCreate, qos.PolicyUpdate),
    "/v2.0/rbac-policies": ("rbac_policies", "rbac_policy", rbac_policies.RbacPolicyCreate,
                            rbac_policies.RbacPolicyUpdate),
    "/v2.0/trunks": ("trunks", "trunk", trunks.TrunkCreate, trunks.TrunkUpdate),
}
for _type, (_coll, _member, _) in qos_svc.RULE_TYPES.items():
    _create, _update = qos.RULE_MODELS[_type]
    RESOURCES[f"/v2.0/qos/policies/{{policy_id}}/{_coll}"] = (_coll, _member, _create, _update)

# other bodies: (method, path) -> JSON schema (models by name are hoisted into components)
_UUID = {"type": "string", "format": "uuid"}
_PREFIXES = {"type": "object", "required": ["prefixes"], "properties": {"prefixes": {
    "type": "array", "items": {"type": "string", "pattern": r"^[0-9a-fA-F.:]+/[0-9]{1,3}$"}}}}
_ROUTES = {"type": "object", "required": ["router"], "properties": {"router": {"$ref": "#/components/schemas/RoutesBody"}}}
_INTERFACE = {"type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
              "properties": {"subnet_id": _UUID, "port_id": _UUID}}
_PORT_STATUS = {"type": "object", "additionalProperties": False, "properties": {
    "ACTIVE": {"type": "array", "items": {"type": "string"}}, "DOWN": {"type": "array", "items": {"type": "string"}}}}
_SUBPORTS = {"type": "object", "required": ["sub_ports"], "properties": {"sub_ports": {"type": "array", "items": {
    "type": "object", "required": ["port_id"], "properties": {
        "port_id": _UUID, "segmentation_type": {"type": "string", "enum": ["vlan"]},
        "segmentation_id": {"type": "integer", "minimum": 1, "maximum": 4094}}}}}}
EXTRA_BODIES: dict[tuple[str, str], dict[str, Any] | type[BaseModel]] = {
    ("put", "/v2.0/trunks/{trunk_id}/add_subports"): _SUBPORTS,
    ("put", "/v2.0/trunks/{trunk_id}/remove_subports"): _SUBPORTS,
    ("post", "/v2.0/vxnet/hosts/{host}/register"): agent_stream.RegisterBody,
    ("post", "/v2.0/vxnet/hosts/{host}/ports-status"): _PORT_STATUS,
    ("post", "/v2.0/vxnet/hosts/{host}/floatingips-status"): _PORT_STATUS,
    ("put", "/v2.0/subnetpools/{pool_id}/add_prefixes"): _PREFIXES,
    ("put", "/v2.0/subnetpools/{pool_id}/remove_prefixes"): _PREFIXES,
    ("put", "/v2.0/routers/{router_id}/add_extraroutes"): _ROUTES,
    ("put", "/v2.0/routers/{router_id}/remove_extraroutes"): _ROUTES,
    ("put", "/v2.0/routers/{router_id}/add_router_interface"): _INTERFACE,
    ("put", "/v2.0/routers/{router_id}/remove_router_interface"): _INTERFACE,
}

STREAMS = {
    ("get", "/v2.0/vxnet/hosts/{host}/view"): "application/x-ndjson",
    ("get", "/ui/events"): "text/event-stream",
}

# answers whose status the handler sets itself (FastAPI's document assumes 200)
OTHER_SUCCESS = {
    ("get", "/identity"): ("300", "Keystone's version list (Multiple Choices, as Keystone answers)"),
    ("get", "/identity/"): ("300", "Keystone's version list (Multiple Choices, as Keystone answers)"),
}

ERROR_CODES = {
    "400": "Bad request: malformed JSON, too deep, invalid attribute, unknown attribute",
    "401": "No valid token",
    "403": "Disallowed by policy",
    "404": "Not found (or not visible to the caller)",
    "409": "Conflict (in use, quota exceeded, address taken)",
    "412": "If-Match does not match the revision_number",
    "413": "Request body larger than [server] max_body_bytes",
    "503": "The store is unavailable (Retry-After)",
}

NEUTRON_ERROR = {
    "type": "object",
    "required": ["NeutronError"],
    "properties": {"NeutronError": {
        "type": "object",
        "required": ["type", "message", "detail"],
        "properties": {"type": {"type": "string"}, "message": {"type": "string"}, "detail": {"type": "string"}},
    }},
}

KEYSTONE_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["code", "title", "message"],
        "properties": {"code": {"type": "integer"}, "title": {"type": "string"}, "message": {"type": "string"}},
    }},
}

# attributes every served Neutron object has (standard attributes), typed as served
STANDARD = {
    "id": {"type": "string"},
    "project_id": {"type": "string"},
    "tenant_id": {"type": "string"},
    "created_at": {"type": "string"},
    "updated_at": {"type": "string"},
    "revision_number": {"type": "integer"},
    "tags": {"type": "array", "items": {"type": "string"}},
}

LINKS = {"type": "array", "items": {"type": "object", "required": ["rel", "href"],
                                    "properties": {"rel": {"type": "string"}, "href": {"type": "string"}}}}

LIST_PARAMS: list[dict[str, Any]] = [
    {"name": "fields", "in": "query", "required": False, "style": "form", "explode": True,
     "schema": {"type": "array", "items": {"type": "string", "pattern": "^[a-z_:]{1,64}$"}}},
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0}},
    {"name": "marker", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "sort_key", "in": "query", "required": False, "schema": {"type": "string", "pattern": "^[a-z_]{1,32}$"}},
    {"name": "sort_dir", "in": "query", "required": False, "schema": {"type": "string", "enum": ["asc", "desc"]}},
    {"name": "page_reverse", "in": "query", "required": False, "schema": {"type": "boolean"}},
    {"name": "id", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "name", "in": "query", "required": False, "schema": {"type": "string"}},
    {"name": "project_id", "in": "query", "required": False, "schema": {"type": "string"}},
]


def install(app: FastAPI) -> None:
    """Replace `app.openapi` with the described document (built once, at first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                              description="vxnet: Neutron v2.0 API and a Keystone v3 subset")
            describe(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _model_schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """The model's validation schema, its sub-models hoisted into `components`."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components.setdefault(model.__name__, schema)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _loose(prop: dict[str, Any]) -> dict[str, Any]:
    """A property's type as served: the type (and item type) without value constraints."""
    if "anyOf" in prop:
        return {"anyOf": [_loose(p) for p in prop["anyOf"]]}
    t = prop.get("type")
    if t == "array":
        return {"type": "array", "items": _loose(prop.get("items", {}))}
    if t in ("string", "integer", "boolean", "null"):
        return {"type": t}
    if t == "number":
        return {"type": "number"}
    if t == "object" or "$ref" in prop:
        return {"type": "object"}
    return {}


def served_object(model: type[BaseModel] | None) -> dict[str, Any]:
    """The object as served: standard attributes and the model's attributes, loosely typed;
    the server's own attributes (status, ...) are allowed beyond them."""
    props: dict[str, Any] = {}
    if model is not None:
        schema = model.model_json_schema(mode="validation")
        for name, prop in schema.get("properties", {}).items():
            props[name] = _loose(prop)
    props.update(STANDARD)
    return {"type": "object", "properties": props}  # `fields` may leave out any attribute


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


TAGS = {"type": "object", "required": ["tags"], "additionalProperties": False,
        "properties": {"tags": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 255}}}}


def _body_for(method: str, path: str, components: dict[str, Any]) -> dict[str, Any] | None:
    if path.endswith("/tags") and method in ("put", "post"):
        return TAGS
    extra = EXTRA_BODIES.get((method, path))
    if extra is not None:
        return extra if isinstance(extra, dict) else _model_schema(extra, components)
    if path in RESOURCES and method == "post":
        coll, member, create, _ = RESOURCES[path]
        if create is None:
            return None
        ref = _model_schema(create, components)
        return {"oneOf": [
            {"type": "object", "required": [member], "additionalProperties": False, "properties": {member: ref}},
            {"type": "object", "required": [coll], "additionalProperties": False, "properties": {coll: {
                "type": "array", "minItems": 1, "items": {
                    "type": "object", "required": [member], "additionalProperties": False,
                    "properties": {member: ref}}}}},
        ]}
    base, _, last = path.rpartition("/")
    if base in RESOURCES and method == "put" and last.startswith("{"):
        _, member, _, update = RESOURCES[base]
        if update is None:
            return None
        ref = _model_schema(update, components)
        return {"type": "object", "required": [member], "additionalProperties": False,
                "properties": {member: {"allOf": [ref], "minProperties": 1}}}
    return None


def _success_schema(method: str, path: str) -> dict[str, Any] | None:
    if path.endswith("/tags") and method in ("get", "put", "post"):
        return TAGS
    if path in RESOURCES:
        coll, member, create, update = RESOURCES[path]
        obj = served_object(create or update)
        if method == "get":
            return {"type": "object", "required": [coll],
                    "properties": {coll: {"type": "array", "items": obj}, f"{coll}_links": LINKS}}
        if method == "post":
            return {"type": "object", "oneOf": [
                {"required": [member], "properties": {member: obj}},
                {"required": [coll], "properties": {coll: {"type": "array", "items": obj}}}]}
    base, _, last = path.rpartition("/")
    if base in RESOURCES and last.startswith("{") and method in ("get", "put"):
        coll, member, create, update = RESOURCES[base]
        return {"type": "object", "required": [member], "properties": {member: served_object(create or update)}}
    return None


def describe(doc: dict[str, Any]) -> None:
    """Rewrite FastAPI's document in place (see the module docstring)."""
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    components["NeutronError"] = NEUTRON_ERROR
    components["KeystoneError"] = KEYSTONE_ERROR
    _model_schema(routers.RoutesBody, components)
    for path, ops in doc.get("paths", {}).items():
        error = _json({"$ref": "#/components/schemas/" + ("KeystoneError" if path.startswith("/identity")
                                                          else "NeutronError")})
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            stream = STREAMS.get((method, path))
            if stream is not None:
                op["x-stream"] = True
                responses["200"] = {"description": "An endless stream (ends when the client disconnects)",
                                    "content": {stream: {"schema": {"type": "string"}}}}
            if (method, path) in OTHER_SUCCESS:
                code, text = OTHER_SUCCESS[method, path]
                responses.pop("200", None)
                responses[code] = {"description": text, **_json({"type": "object"})}
            ok = next((c for c in responses if c.startswith("2")), None)
            schema = _success_schema(method, path)
            if ok is not None and ok != "204" and schema is not None:
                responses[ok] = {"description": responses[ok].get("description", "Success"), **_json(schema)}
            if ok == "204" or (path.endswith("/tags/{tag}") and method == "put"):
                responses[ok] = {"description": "No content"}
            for code, text in ERROR_CODES.items():
                if code == "412" and method not in ("put", "delete", "patch"):
                    continue
                if code == "413" and method not in ("post", "put", "patch"):
                    continue
                responses.setdefault(code, {"description": text, **copy.deepcopy(error)})
            if method in ("post", "put", "patch"):
                body = _body_for(method, path, components)
                if body is not None:
                    op["requestBody"] = {"required": True, **_json(body)}
            if method == "get" and path in RESOURCES:
                have = {p["name"] for p in op.get("parameters", [])}
                op.setdefault("parameters", []).extend(copy.deepcopy(p) for p in LIST_PARAMS if p["name"] not in have)
