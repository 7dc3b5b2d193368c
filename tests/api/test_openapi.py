"""`/openapi.json` describes the API as it behaves, and a wrong method is a 405 with `Allow`.

Over real HTTP: request bodies from the request models, list parameters, the envelope of served
objects, the real error codes with the NeutronError body (no FastAPI 422), the streams marked.
"""

from __future__ import annotations

import jsonschema

from tests.conftest import ServerHandle
from tests.support import http


def doc_of(server: ServerHandle) -> dict:
    r = http.get(server.url + "/openapi.json", timeout=10)
    assert r.status_code == 200
    return r.json()


def resolve(doc: dict, schema: dict) -> dict:
    """The schema with `#/components/...` references resolvable by jsonschema."""
    return {**schema, "components": doc["components"]}


def test_no_422_and_every_operation_declares_the_neutron_errors(shared_server: ServerHandle) -> None:
    doc = doc_of(shared_server)
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "422" not in op["responses"], (method, path)
            for code in ("400", "401", "403", "404", "409"):
                ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                want = "KeystoneError" if path.startswith("/identity") else "NeutronError"
                assert ref == f"#/components/schemas/{want}", (method, path, code)
            if method in ("put", "delete"):
                assert "412" in op["responses"], (method, path)


def test_declared_error_body_matches_a_real_error(shared_server: ServerHandle) -> None:
    doc = doc_of(shared_server)
    r = shared_server.api("alice").post("/networks", json={"network": {"bogus": 1}})
    assert r.status_code == 400
    jsonschema.validate(r.json(), resolve(doc, {"$ref": "#/components/schemas/NeutronError"}))


def test_request_body_is_the_model_the_handler_validates(shared_server: ServerHandle) -> None:
    doc = doc_of(shared_server)
    body = doc["paths"]["/v2.0/networks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = resolve(doc, body)
    good = {"network": {"name": "n1", "mtu": 1400, "router:external": False, "tags": ["a"]}}
    jsonschema.validate(good, schema)
    r = shared_server.api("admin").post("/networks", json=good)
    assert r.status_code == 201, r.text
    # what the schema refuses, the API refuses too (unknown attribute, wrong type)
    for bad in ({"network": {"nope": 1}}, {"network": {"mtu": "big"}}, {"net": {}}):
        assert not jsonschema.Draft202012Validator(schema).is_valid(bad), bad
        assert shared_server.api("admin").post("/networks", json=bad).status_code == 400
    # the served object fits the declared response envelope
    ok = doc["paths"]["/v2.0/networks/{network_id}"]["get"]["responses"]["200"]["content"]["application/json"]
    shown = shared_server.api("admin").get(f"/networks/{r.json()['network']['id']}").json()
    jsonschema.validate(shown, resolve(doc, ok["schema"]))
    assert "mtu" in ok["schema"]["properties"]["network"]["properties"]


def test_list_parameters_declared(shared_server: ServerHandle) -> None:
    doc = doc_of(shared_server)
    names = {p["name"] for p in doc["paths"]["/v2.0/ports"]["get"]["parameters"]}
    assert {"fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse"} <= names
    links = doc["paths"]["/v2.0/ports"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert "ports_links" in links["properties"]


def test_streams_are_marked(shared_server: ServerHandle) -> None:
    doc = doc_of(shared_server)
    view = doc["paths"]["/v2.0/vxnet/hosts/{host}/view"]["get"]
    assert view["x-stream"] is True
    assert "application/x-ndjson" in view["responses"]["200"]["content"]
    # the UI (its event feed included) is left out of the API document, or described as a stream
    feed = doc["paths"].get("/ui/events", {}).get("get")
    assert feed is None or (feed["x-stream"] is True and "text/event-stream" in feed["responses"]["200"]["content"])


def test_wrong_method_is_405_with_allow_and_neutron_body(shared_server: ServerHandle) -> None:
    api = shared_server.api("admin")
    for method, path, allowed in (("PATCH", "/networks", {"GET", "POST"}),
                                  ("POST", "/networks/00000000-0000-0000-0000-000000000000", {"GET", "PUT", "DELETE"}),
                                  ("DELETE", "/routers", {"GET", "POST"})):
        r = api.request(method, path)
        assert r.status_code == 405, (method, path, r.text)
        assert set(r.headers["Allow"].split(", ")) == allowed, r.headers.get("Allow")
        assert r.json()["NeutronError"]["type"] == "HTTPMethodNotAllowed"
    assert "Allow" not in api.get("/no-such-collection").headers
