"""Schema-driven fuzzing: schemathesis generates requests from `/openapi.json` and sends them to
a real server over HTTP, as an admin and as a member.

For every operation (the endless streams and the calls that would end the run's own session
excepted): no 5xx, every response's status code declared, its body valid against the declared
response schema, JSON where JSON is declared. Positive cases (bodies valid by the schema) must
create objects; how many is printed and checked to be more than a handful.

Operations with a body also get a few negative cases (requests the schema refuses): they too must
be answered without a 5xx, with a declared status and body.

Bounded: a few positive examples per operation (4 as admin, 2 as a member), deterministic
(`derandomize`), about a minute for both. Hostile and invalid inputs are tests/api/test_fuzz.py's.
VXNET_FUZZ_VERBOSE=1 prints which generated cases the API refused (400) and why.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ServerHandle, start_server
from tests.support import http

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = {"admin": 4, "alice": 2}  # positive cases per operation
NEGATIVE_EXAMPLES = 2  # invalid cases per operation with a body (schemathesis breaks one part)
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
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    h = start_server(os.path.join(tmp_path_factory.mktemp("fuzz"), "vxnet.db"))
    yield h
    h.stop()


@pytest.fixture(scope="module")
def admin_api(fuzz_server: ServerHandle) -> Iterator[httpx.Client]:
    """One admin client for the test's own look-ups (a new httpx client costs ~50 ms: its SSL
    context; the look-ups ran ~300 times)."""
    with fuzz_server.api("admin") as c:
        yield c


def real_ids(admin: httpx.Client, path: str) -> dict[str, str]:
    """For `/v2.0/<collection>/{x_id}...`: an existing object's id (the newest), so that the
    item operations reach past the 404 into show/update/delete and their response schemas."""
    m = ITEM_PATH.match(path)
    if m is None or m.group(1) not in CREATED:
        return {}
    r = admin.get(f"/{m.group(1)}", params={"fields": ["id", "created_at"]})
    items = r.json().get(m.group(1).split("/")[-1].replace("-", "_"), []) if r.status_code == 200 else []
    if not items:
        return {}
    return {m.group(2): max(items, key=lambda o: (o.get("created_at", ""), o["id"]))["id"]}


def count_objects(api: httpx.Client) -> int:
    total = 0
    for coll in CREATED:
        r = api.get(f"/{coll}", params={"fields": "id"})
        assert r.status_code == 200, r.text
        total += len(r.json()[coll.split("/")[-1].replace("-", "_")])
    return total


class Tally:
    """What one user's run saw: statuses, check failures, refusals (400s) by operation."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self.refused: Counter[str] = Counter()


def fuzz_operation(server: ServerHandle, admin: httpx.Client, op: Any, headers: dict[str, str], examples: int,
                   tally: Tally, mode: GenerationMode = GenerationMode.POSITIVE) -> None:
    """`examples` cases of one operation (valid by the schema, or with an invalid body), each
    sent and checked."""
    label = f"{op.method.upper()} {op.path}"

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode,
                               path_parameters=real_ids(admin, op.path) or None))
    def run(case: Any) -> None:
        response = case.call(base_url=server.url, headers=headers, timeout=30)
        tally.statuses[response.status_code] += 1
        if response.status_code == 400:
            tally.refused[f"{label}: {response.text[:160]}"] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, BaseExceptionGroup) as e:  # schemathesis: a group of failures
            tally.failures.append(f"{label} -> {response.status_code}: {str(e).splitlines()[0:8]}")

    run()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("user", ["admin", "alice"])
def test_schema_fuzz(fuzz_server: ServerHandle, admin_api: httpx.Client, user: str) -> None:
    doc = http.get(fuzz_server.url + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(doc)
    headers = {"X-Auth-Token": fuzz_server.token(user)}
    before = count_objects(admin_api)
    tally = Tally()
    ran = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if skipped(op.method.lower(), op.path, doc["paths"][op.path][op.method.lower()]):
            continue
        ran += 1
        fuzz_operation(fuzz_server, admin_api, op, headers, EXAMPLES[user], tally)
        if "requestBody" in doc["paths"][op.path][op.method.lower()]:  # negative: what the schema refuses
            fuzz_operation(fuzz_server, admin_api, op, headers, NEGATIVE_EXAMPLES, tally, GenerationMode.NEGATIVE)
    created = count_objects(admin_api) - before
    print(f"\n{user}: {ran} operations, statuses {dict(sorted(tally.statuses.items()))}, objects created {created}")
    if os.environ.get("VXNET_FUZZ_VERBOSE"):
        print(*tally.refused.most_common(60), sep="\n")
    assert ran > 100
    assert not [s for s in tally.statuses if s >= 500], tally.failures
    assert not tally.failures, "\n".join(tally.failures[:40])
    assert created > (5 if user == "admin" else 0), created
