"""Session 14's attacker's audit of the API: each test is a request that got through (or failed
with a 500) before its fix, and checks the denial and that nothing changed.

Projects: alice (tenant-a), bob (tenant-b), admin.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.api.helpers import CountingStr as _Str
from tests.api.helpers import assert_error, network
from tests.conftest import ServerHandle
from tests.support import http


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
    r = http.post(shared_server.url + "/identity/v3/users", headers={"X-Auth-Token": shared_server.token("admin")},
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


def test_list_validators_do_linear_work() -> None:
    """A body of ~1 MB holds ~10^5 tags or ~2.5*10^4 ids. The duplicate checks of tag lists and
    of a port's security_groups compared every item with every other (`list.count` per item):
    minutes of CPU per request, holding the interpreter lock the event loop needs. Counted in
    comparisons, not seconds: n items may cost O(n), not n^2/2."""
    from vxnet.api.routers import ports, tags

    n = 2000
    items = [_Str(f"t{i:05d}") for i in range(n)]
    _Str.compared = 0
    assert tags.validate_tags({"tags": items}) == items
    assert _Str.compared < 4 * n, _Str.compared
    _Str.compared = 0
    assert ports._unique(list(items)) == items
    assert _Str.compared < 4 * n, _Str.compared


def test_subnet_pool_prefix_changes_do_linear_work(shared_server: ServerHandle, monkeypatch: Any) -> None:
    """A pool may hold ~10^4 disjoint prefixes and one add/remove_prefixes or update names as
    many. Their checks (overlap, subset, the rest after a removal) compared every prefix with
    every other, each parsed anew: hours of CPU for one member's request. Counted in prefix
    parses, and the answers are the same sets as before."""
    import ipaddress

    alice = shared_server.api("alice")
    n = 1000
    mine = [f"100.64.{i // 128}.{(i % 128) * 2}/32" for i in range(n)]        # even addresses
    pool = alice.post("/subnetpools", json={"subnetpool": {"name": "many", "prefixes": mine}}).json()["subnetpool"]
    parses = 0
    real = ipaddress.ip_network

    def counting(*args: Any, **kw: Any) -> Any:
        nonlocal parses
        parses += 1
        return real(*args, **kw)

    monkeypatch.setattr(ipaddress, "ip_network", counting)
    gone = mine[: n // 2] + [f"100.64.{i // 128}.{(i % 128) * 2 + 1}/32" for i in range(n // 2)]   # half odd: not held
    r = alice.put(f"/subnetpools/{pool['id']}/remove_prefixes", json={"prefixes": gone})
    assert r.status_code == 200, r.text
    assert r.json()["prefixes"] == mine[n // 2:]
    r = alice.put(f"/subnetpools/{pool['id']}/add_prefixes", json={"prefixes": mine[: n // 2]})
    assert r.status_code == 200 and r.json()["prefixes"] == mine, r.text
    r = alice.put(f"/subnetpools/{pool['id']}", json={"subnetpool": {"prefixes": mine[1:]}})   # shrinks: refused
    assert_error(r, 400, "IllegalSubnetPoolPrefixUpdate")
    assert parses < 30 * n, parses   # linear: ~15 per prefix; pairwise: ~n * n / 2
