"""Jepsen-style test (issue 14): 3 real etcd members in their own network namespaces, 2 real
`vxnet server` processes, a workload of port and floating-IP creates, updates and deletes
recorded as a history, and a nemesis that kills the etcd leader, pauses a member (SIGSTOP 5 s),
partitions a member (its link cut) and kills an API server mid-write. The checker
(`bench/jepsen_bench.check`) must find no anomaly in 3 iterations: every acknowledged write
present, nothing twice (by unique name), no IP or MAC twice, an unknown outcome present once or
absent, all servers converged; the UI's change feed and an agent's view stream on every server
deliver no revision twice or backwards and end equal to the store (no missed update).
`python -m bench.jepsen_bench --iterations 20` runs more.
"""

from __future__ import annotations

import contextlib
import io
import os

import pytest

from bench import jepsen_bench


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces for the etcd members")
def test_three_iterations_of_faults_leave_no_anomaly(tmp_path) -> None:
    out = io.StringIO()
    try:
        total = jepsen_bench.run(3, str(tmp_path), out=out)
    finally:
        print("\n" + out.getvalue())
    assert not total, f"anomalies: {dict(total)}\n{out.getvalue()}"
    # the history really contained every kind of outcome the checker judges
    text = out.getvalue()
    for kind in ("create-port", "update-port", "delete-port", "create-fip", "update-fip", "delete-fip"):
        assert f"'{kind} ok'" in text, kind
    for fault in ("kill -9 etcd leader", "SIGSTOP", "partition", "kill -9 API server"):
        assert text.count(fault) >= 3, fault
    # the change feeds were recorded and checked (their anomalies are in `total`)
    assert "'ui notifications': 0," not in text and "'view updates': 0," not in text, text


# --- the checker itself (pure logic over a made-up history and listings) ----------------------


class _Srv:
    def __init__(self, url: str) -> None:
        self.url = url


class _Env:
    servers = (_Srv("a"), _Srv("b"))

    def client(self, url: str, timeout: float = 10) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


def _port(id_: str, name: str, ip: str, mac: str) -> dict:
    return {"id": id_, "name": name, "fixed_ips": [{"ip_address": ip}], "mac_address": mac}


def _history(*ops: tuple[str, str, str | None, str, int]) -> jepsen_bench.Workload:
    wl = jepsen_bench.Workload.__new__(jepsen_bench.Workload)
    wl.net, wl.ext = "n", "x"
    wl.history = [jepsen_bench.Op(0, kind, key, id_, 0.0, 0.0, outcome, None, status)
                  for kind, key, id_, outcome, status in ops]
    return wl


def _check(monkeypatch: pytest.MonkeyPatch, wl: jepsen_bench.Workload, views: dict[str, list[dict]]):
    monkeypatch.setattr(jepsen_bench, "_listing", lambda env, url, net, ext: (views[url], []))
    monkeypatch.setattr(jepsen_bench.time, "sleep", lambda s: None)
    return jepsen_bench.check(_Env(), wl)[0]  # type: ignore[arg-type]


def test_checker_finds_each_anomaly(monkeypatch: pytest.MonkeyPatch) -> None:
    p1, p2 = _port("1", "port1", "192.0.2.1", "m1"), _port("2", "port2", "192.0.2.2", "m2")
    ok = _history(("create-port", "port1", "1", "ok", 201), ("create-port", "port2", "2", "ok", 201))
    assert _check(monkeypatch, ok, {"a": [p1, p2], "b": [p1, p2]}) == {}
    assert _check(monkeypatch, ok, {"a": [p1], "b": [p1]}) == {"port-acknowledged-create-lost": 1}
    twice = [p1, p2, _port("3", "port1", "192.0.2.3", "m3")]
    assert _check(monkeypatch, ok, {"a": twice, "b": twice}) == {"port-twice": 1}
    same_ip = [p1, _port("2", "port2", "192.0.2.1", "m2")]
    assert _check(monkeypatch, ok, {"a": same_ip, "b": same_ip}) == {"ip-twice": 1}
    monkeypatch.setattr(jepsen_bench.time, "time", iter(range(0, 10_000, 30)).__next__)
    assert _check(monkeypatch, ok, {"a": [p1, p2], "b": [p1]})["servers-diverged"] == 1
    monkeypatch.undo()
    failed = _history(("create-port", "port1", None, "fail", 409))
    assert _check(monkeypatch, failed, {"a": [p1], "b": [p1]}) == {"port-failed-create-present": 1}
    unknown = _history(("create-port", "port1", None, "unknown", 503), ("create-port", "port2", None, "unknown", 500))
    assert _check(monkeypatch, unknown, {"a": [p1], "b": [p1]}) == {"http-500": 1}
    deleted = _history(("create-port", "port1", "1", "ok", 201), ("delete-port", "", "1", "ok", 204))
    assert _check(monkeypatch, deleted, {"a": [p1], "b": [p1]}) == {"port-deleted-but-present": 1}
    assert _check(monkeypatch, _history(), {"a": [p1], "b": [p1]}) == {"port-never-invoked": 1}


# --- the feed checks (pure logic over made-up messages) -------------------------------------


def test_ui_feed_record_finds_doubled_and_missed(monkeypatch: pytest.MonkeyPatch) -> None:
    f = jepsen_bench.UiFeed(None, "a")  # type: ignore[arg-type]
    monkeypatch.setattr(f, "reload", lambda: {"ports": {"p1"}, "floatingips": set()})
    f.handle("ready", {"revision": 10})
    f.handle("change", {"revision": 11, "changes": [{"collection": "ports", "id": "p2", "type": "put"}]})
    f.handle("change", {"revision": 12, "changes": [{"collection": "ports", "id": "p1", "type": "delete"},
                                                    {"collection": "networks", "id": "n", "type": "put"}]})
    assert f.state() == {"ports": {"p2"}, "floatingips": set()} and not f.anomalies
    f.handle("change", {"revision": 12, "changes": []})
    assert f.anomalies == {"ui-feed-revision-doubled-or-backwards": 1}
    f.handle("ready", {"revision": 5})   # a reconnect: reload, revisions start over
    f.handle("change", {"revision": 6, "changes": []})
    assert f.anomalies == {"ui-feed-revision-doubled-or-backwards": 1} and f.state()["ports"] == {"p1"}

    g = jepsen_bench.UiFeed(None, "a")  # type: ignore[arg-type]
    g.objs = {"ports": {"p1"}, "floatingips": set()}
    v = jepsen_bench.ViewFeed(None, "a")  # type: ignore[arg-type]
    v.handle({"type": "snapshot", "revision": 3, "view": {"ports": {}}})
    truth = [{"id": "p1", "network_id": "n", "binding:host_id": jepsen_bench.VIEW_HOST},
             {"id": "p2", "network_id": "n", "binding:host_id": ""}]
    monkeypatch.setattr(jepsen_bench, "_all_pages", lambda c, path, key, params: truth if key == "ports" else [])
    monkeypatch.setattr(jepsen_bench.time, "time", iter(range(0, 10_000, 30)).__next__)
    monkeypatch.setattr(jepsen_bench.time, "sleep", lambda s: None)
    anomalies, _ = jepsen_bench.check_feeds(_Env(), [g, v])  # type: ignore[arg-type]
    assert anomalies == {"ui-feed-missed": 1, "view-missed": 2}


def test_view_feed_record_finds_a_doubled_update() -> None:
    v = jepsen_bench.ViewFeed(None, "a")  # type: ignore[arg-type]
    v.handle({"type": "snapshot", "revision": 3, "view": {}})
    v.handle({"type": "update", "revision": 4, "put": {}, "delete": {}})
    v.handle({"type": "ping", "revision": 6})
    assert not v.anomalies
    v.handle({"type": "update", "revision": 6, "put": {}, "delete": {}})   # not after the ping's 6
    assert v.anomalies == {"view-update-doubled-or-backwards": 1}
