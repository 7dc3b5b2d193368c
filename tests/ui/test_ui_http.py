"""/ui over plain HTTP: the page and its assets, and the event stream's authentication."""

from __future__ import annotations

import httpx

from tests.conftest import ServerHandle


def test_page_and_assets_are_served_with_a_strict_policy(ui_server: ServerHandle) -> None:
    r = httpx.get(ui_server.url + "/ui")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/ui/app.js"' in r.text
    for asset, kind in (("app.js", "javascript"), ("topology.js", "javascript"), ("app.css", "text/css")):
        a = httpx.get(f"{ui_server.url}/ui/{asset}")
        assert a.status_code == 200 and kind in a.headers["content-type"], asset
    assert httpx.get(ui_server.url + "/ui/", follow_redirects=True).url.path == "/ui"


def test_nothing_outside_the_static_folder(ui_server: ServerHandle) -> None:
    for path in ("/ui/../api/app.py", "/ui/%2e%2e/%2e%2e/config.py", "/ui/..%2f..%2fapi%2fapp.py", "/ui/nope.js"):
        r = httpx.get(ui_server.url + path)
        assert r.status_code == 404, path
        assert r.json()["NeutronError"]["type"] == "HTTPNotFound"


def test_event_stream_needs_a_valid_token(ui_server: ServerHandle) -> None:
    url = ui_server.url + "/ui/events"
    for params in ({}, {"token": "garbage"}, {"token": ui_server.token("alice")[:-4] + "AAAA"}):
        r = httpx.get(url, params=params, timeout=5)
        assert r.status_code == 401, params
        assert "NeutronError" in r.json() or "error" in r.json()
    with httpx.stream("GET", url, headers={"X-Auth-Token": ui_server.token("alice")}, timeout=5) as r:
        assert r.status_code == 200
        first = next(r.iter_lines())
        assert first.startswith("retry:") or first.startswith("event: ready")
