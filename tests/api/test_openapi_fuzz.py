"""Schema-driven fuzzing: schemathesis generates requests from `/openapi.json` and sends them to
a real server over HTTP, as an admin and as a member.

For every operation (the endless streams and the calls that would end the run's own session
excepted): no 5xx, every response's status code declared, its body valid against the declared
response schema, JSON where JSON is declared. Positive cases (bodies valid by the schema) must
create objects; how many is printed and checked to be more than a handful.

Bounded: a few examples per operation and mode, so the run takes well under two minutes.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ServerHandle, start_server  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = {"admin": 4, "alice": 2}  # positive cases per operation
ITEM_PATH = re.compile(r"^/v2\.0/([a-z-]+(?:/policies)?)/\{(\w+)\}")
CREATED = ("networks", "subnets", "ports", "routers", "security-groups", "security-group-rules",
           "address-scopes", "subnetpools", "qos/policies", "rbac-policies", "floatingips")


def skipped(method: str, path: str, op: dict[str, Any]) -> bool:
    """Streams never end; identity writes and key rotation would end the run's own tokens
    (or trip the login limits); quota writes would starve the positive cases; the UI is HTML."""
    if op.get("x-stream"):
        return True
    if path.startswith("/identity") and method != "get":
        return True
    if path.startswith("/v2.0/quotas") and method in ("put", "delete"):
        return True
    return path.startswith("/ui")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory) -> ServerHandle:
    h = start_server(os.path.join(tmp_path_factory.mktemp("fuzz"), "vxnet.db"))
    yield h
    h.stop()


def real_ids(server: ServerHandle, path: str) -> dict[str, str]:
    """For `/v2.0/<collection>/{x_id}...`: an existing object's id (the newest), so that the
    item operations reach past the 404 into show/update/delete and their response schemas."""
    m = ITEM_PATH.match(path)
    if m is None or m.group(1) not in CREATED:
        return {}
    r = server.api("admin").get(f"/{m.group(1)}", params={"fields": ["id", "created_at"]})
    items = r.json().get(m.group(1).split("/")[-1].replace("-", "_"), []) if r.status_code == 200 else []
    if not items:
        return {}
    return {m.group(2): max(items, key=lambda o: (o.get("created_at", ""), o["id"]))["id"]}


def count_objects(server: ServerHandle) -> int:
    api = server.api("admin")
    total = 0
    for coll in CREATED:
        r = api.get(f"/{coll}", params={"fields": "id"})
        assert r.status_code == 200, r.text
        total += len(r.json()[coll.split("/")[-1].replace("-", "_")])
    return total


@pytest.mark.timeout(300)
@pytest.mark.parametrize("user", [u for u in ["admin", "alice"] if u in os.environ.get("FUZZ_USERS", "admin alice")])
def test_schema_fuzz(fuzz_server: ServerHandle, user: str) -> None:
    url = fuzz_server.url
    doc = httpx.get(url + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(doc)
    headers = {"X-Auth-Token": fuzz_server.token(user)}
    before = count_objects(fuzz_server)
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    ran = 0
    slow: list[tuple[float, str]] = []
    refused: Counter[str] = Counter()
    for result in schema.get_all_operations():
        op = result.ok()
        if skipped(op.method.lower(), op.path, doc["paths"][op.path][op.method.lower()]):
            continue
        ran += 1
        for mode, n in ((GenerationMode.POSITIVE, EXAMPLES[user]),):

            @settings(max_examples=n, deadline=None, database=None, derandomize=True,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode, path_parameters=real_ids(fuzz_server, op.path) or None))
            def run(case: Any) -> None:
                response = case.call(base_url=url, headers=headers, timeout=30)
                statuses[response.status_code] += 1
                if response.status_code == 400:
                    refused[f"{op.method} {op.path}: {response.text[:160]}"] += 1
                try:
                    case.validate_response(response, checks=CHECKS)
                except (AssertionError, BaseExceptionGroup) as e:  # schemathesis: a group of failures
                    failures.append(f"{op.method.upper()} {op.path} -> {response.status_code}: "
                                    f"{str(e).splitlines()[0:8]}")

            t0 = time.perf_counter()
            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters)
                assert mode == GenerationMode.NEGATIVE, f"{op.method} {op.path}: no valid case"
            slow.append((time.perf_counter() - t0, f"{op.method} {op.path}"))
    created = count_objects(fuzz_server) - before
    print(f"\n{user}: {ran} operations, statuses {dict(sorted(statuses.items()))}, objects created {created}")
    if os.environ.get("FUZZ_VERBOSE"):
        print(sorted(slow)[-12:], *refused.most_common(60), sep="\n")
    assert ran > 100
    assert not [s for s in statuses if s >= 500], failures
    assert not failures, "\n".join(failures[:40])
    assert created > (5 if user == "admin" else 0), created
