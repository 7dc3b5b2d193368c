"""Session 14's attacker's audit of the API: each test is a request that got through (or failed
with a 500) before its fix, and checks the denial and that nothing changed.

Projects: alice (tenant-a), bob (tenant-b), admin.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.helpers import assert_error, network
from tests.conftest import ServerHandle


def _names(c: httpx.Client) -> list[str]:
    return [n["name"] for n in c.get("/networks").json()["networks"]]


def test_lone_surrogates_in_a_body_are_a_400_and_store_nothing(shared_server: ServerHandle) -> None:
    """A JSON string may spell a lone UTF-16 surrogate (an escape, or the bytes UTF-8 would give
    it, which `json.loads` lets through): no Unicode text. It used to be stored, then the
    create's own answer failed to encode (500 after the commit: a half-written network) and so
    did every later show or update of it."""
    alice = shared_server.api("alice")
    before = _names(alice)
    net = network(alice, name="kept")
    utf16 = '{"network": {"name": "\ud800x"}}'.encode("utf-16-le", "surrogatepass")
    bodies = [b'{"network": {"name": "\\ud800x"}}', b'{"network": {"name": "a\\udfffb"}}',
              b'{"network": {"name": "\xed\xa0\x80"}}', b'{"network": {"\\ud800": 1}}', utf16]
    for raw in bodies:
        assert_error(alice.post("/networks", content=raw), 400, "MalformedRequestBody", "surrogate")
        assert_error(alice.put(f"/networks/{net['id']}", content=raw), 400, "MalformedRequestBody", "surrogate")
    assert sorted(_names(alice)) == sorted([*before, "kept"])
    r = alice.get(f"/networks/{net['id']}")
    assert r.status_code == 200 and r.json()["network"]["name"] == "kept"
    # a bulk create is refused whole; the identity API parses bodies the same way (Keystone's shape)
    bulk = b'{"networks": [{"name": "ok"}, {"name": "\\ud800"}]}'
    assert_error(alice.post("/networks", content=bulk), 400, "MalformedRequestBody")
    r = httpx.post(shared_server.url + "/identity/v3/users", headers={"X-Auth-Token": shared_server.token("admin")},
                   content=b'{"user": {"name": "\\udc00", "password": "pw-1234567"}}')
    assert r.status_code == 400 and r.json()["error"]["code"] == 400, r.text


def test_valid_non_ascii_text_is_still_accepted(shared_server: ServerHandle) -> None:
    """Pairs of surrogates (one character), Hangul (UTF-8 bytes starting 0xED) and UTF-16 bodies
    are text: accepted and answered as sent."""
    alice = shared_server.api("alice")
    cases: list[tuple[bytes, str]] = [
        (b'{"network": {"name": "\\ud83d\\ude00"}}', "\U0001f600"),
        ('{"network": {"name": "\ud55c"}}'.encode(), "\ud55c"),
        ('{"network": {"name": "utf16 \u00e9"}}'.encode("utf-16"), "utf16 \u00e9"),
    ]
    for raw, name in cases:
        r = alice.post("/networks", content=raw)
        assert r.status_code == 201, r.text
        got: dict[str, Any] = r.json()["network"]
        assert got["name"] == name
        assert alice.get(f"/networks/{got['id']}").json()["network"]["name"] == name
