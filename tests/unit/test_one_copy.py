"""One parsed copy of each resource in a server (real embedded store, real hub, no HTTP).

The view hub attaches the object it parses to the store's KeyValue; the repo's listings return
that object instead of parsing one of their own, and the hub adopts a copy a listing parsed
first (a listing between a commit and the hub's apply). What must hold: a listing is never
stale (a changed key is read at its new value, whoever parsed it), `Repo.get` stays a private
copy, and a store that hands out new KeyValues at every read keeps working through the repo's
own cache.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.aio import run_in_thread
from vxnet.services.repo import Repo, UnitOfWork
from vxnet.services.view_hub import Hub
from vxnet.store.contract import KeyValue
from vxnet.store.sqlite_store import SqliteStore


def _port(pid: str, name: str = "") -> dict[str, Any]:
    return {"id": pid, "name": name, "network_id": "n1", "binding:host_id": "hv1", "device_owner": "compute:nova",
            "device_id": "vm", "security_groups": [], "mac_address": "fa:16:3e:00:00:01", "tags": [],
            "fixed_ips": [{"subnet_id": "s1", "ip_address": "100.64.0.2"}], "status": "DOWN",
            "description": "x" * 200}


def _put(repo: Repo, *ports: dict[str, Any]) -> None:
    def fn(uow: UnitOfWork) -> None:
        for p in ports:
            uow.put("ports", p)
    repo.transact(fn)


async def _caught_up(hub: Hub, store: SqliteStore) -> None:
    for _ in range(500):
        if hub.revision >= store.revision():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the hub did not apply the store's last revision")


def test_listing_returns_the_hubs_objects_and_is_never_stale(tmp_path: Path) -> None:
    async def run() -> None:
        store = SqliteStore(str(tmp_path / "s.db"))
        repo = Repo(store)
        _put(repo, *(_port(f"p{i}") for i in range(3)))
        hub = Hub(store)
        hub.start(asyncio.get_running_loop())
        held = hub.index.objects["ports"]

        listed = repo.list("ports")
        assert [o["id"] for o in listed] == ["p0", "p1", "p2"]
        assert all(o is held[o["id"]] for o in listed), "a listing parsed copies of its own"

        _put(repo, _port("p0", "renamed"))   # committed; the hub applies it on the loop, later
        early = {o["id"]: o for o in repo.list("ports")}
        assert early["p0"]["name"] == "renamed"           # not the hub's stale object
        assert held["p0"]["name"] == ""                   # the hub has not applied it yet
        await _caught_up(hub, store)
        assert held["p0"] is early["p0"], "the hub parsed a second copy of what the listing had parsed"
        assert all(o is held[o["id"]] for o in repo.list("ports"))

        _put(repo, _port("p1", "again"))
        await _caught_up(hub, store)
        late = {o["id"]: o for o in repo.list("ports")}
        assert late["p1"]["name"] == "again" and late["p1"] is held["p1"]

        own = repo.get("ports", "p0")            # a private copy, not the shared one
        assert own == held["p0"] and own is not held["p0"]
        own["tags"].append("mine")
        assert held["p0"]["tags"] == []
        with pytest.raises(TypeError):           # the shared objects' empties refuse changes
            held["p1"]["tags"].append("x")

        before = dict(held)
        hub.resync()                              # a reload keeps the attached copies: no second one
        assert all(hub.index.objects["ports"][k] is v for k, v in before.items())
        hub.stop()
        store.close()

    run_in_thread(run)


class _FreshKeyValues(SqliteStore):
    """A store whose reads hand out new KeyValues every time (as etcd without its mirror)."""

    keeps_key_values = False

    def range(self, prefix: str) -> Any:
        kvs, rev = super().range(prefix)
        return [type(kv)(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
                for kv in kvs], rev


def test_a_store_with_fresh_key_values_lists_through_the_repo_cache(tmp_path: Path) -> None:
    store = _FreshKeyValues(str(tmp_path / "s.db"))
    try:
        repo = Repo(store)
        _put(repo, _port("p0"), _port("p1"))
        first = repo.list("ports")
        again = repo.list("ports")
        assert [a is b for a, b in zip(first, again, strict=True)] == [True, True]   # parsed once
        _put(repo, _port("p1", "renamed"))
        after = repo.list("ports")
        assert after[0] is first[0] and after[1]["name"] == "renamed"
        assert json.loads(store.get("/vxnet/res/ports/p1").value)["name"] == "renamed"
    finally:
        store.close()


def test_list_answers_write_the_shared_objects_as_plain_json() -> None:
    """A listing's body holds the shared objects (change-refusing empties): written by orjson as
    plain JSON, and what orjson refuses (an integer beyond 64 bits) by the standard library."""
    from vxnet.api.collection import json_body
    from vxnet.services.compact import parse_resource

    port = _port("p0", "r\u00e9seau")
    shared = parse_resource(json.dumps(port))
    body = {"ports": [shared, {**port, "extra": {}}]}
    assert json.loads(json_body(body)) == {"ports": [port, {**port, "extra": {}}]}
    assert "r\u00e9seau".encode() in json_body(body)
    big = {"ports": [{**port, "binding:profile": {"n": 2**70}}]}
    assert json.loads(json_body(big))["ports"][0]["binding:profile"]["n"] == 2**70


class _AttachedMeanwhile(KeyValue):
    """A KeyValue to which a listing on another thread attaches its parsed copy just after the
    hub first looked (the hub saw none, then one is there)."""

    __slots__ = ("_late", "_looked")

    def _get(self) -> Any:
        if getattr(self, "_looked", False):
            return getattr(self, "_late", None)
        object.__setattr__(self, "_looked", True)
        return None

    def _set(self, obj: Any) -> None:
        object.__setattr__(self, "_late", obj)

    parsed = property(_get, _set)  # type: ignore[assignment]


def test_a_reload_keeps_each_object_with_its_key_when_a_listing_attaches_meanwhile(tmp_path: Path) -> None:
    from vxnet.services.compact import parse_resource

    store = SqliteStore(str(tmp_path / "s.db"))
    try:
        hub = Hub(store)
        kvs: list[KeyValue] = []
        for i in range(6):
            value = json.dumps(_port(f"p{i}", f"name-{i}"))
            kv = (_AttachedMeanwhile if i % 2 == 0 else KeyValue)(f"/vxnet/res/ports/p{i}", value, 1, 1, 1)
            if i % 2 == 0:
                kv.attach(parse_resource(value))   # what the listing will have attached
            kvs.append(kv)
        hub._load_all((kvs, 1, [], []))
        ports = hub.index.objects["ports"]
        assert {pid: o["name"] for pid, o in ports.items()} == {f"p{i}": f"name-{i}" for i in range(6)}
    finally:
        store.close()


def test_the_store_drops_texts_after_the_hubs_load_and_on_its_changes(tmp_path: Path) -> None:
    """After the hub's load (off the start path, in steps on the loop) and after each change it
    applies, the store holds a resource's value as the hub's object (contract.StoredKeyValue);
    every read still gives the text written, also after a restart."""
    from vxnet.store.contract import _RAW_VALUE

    def held_as_text(kv: KeyValue) -> bool:
        return isinstance(_RAW_VALUE.__get__(kv), str)

    texts = {f"p{i}": json.dumps(_port(f"p{i}"), separators=(",", ":")) for i in range(5)}

    async def run() -> None:
        store = SqliteStore(str(tmp_path / "s.db"))
        repo = Repo(store)
        _put(repo, *(_port(f"p{i}") for i in range(5)))
        store.close()
        store = SqliteStore(str(tmp_path / "s.db"))   # loaded from the file: every value is text
        repo = Repo(store)
        kvs, _ = store.range("/vxnet/res/ports/")
        assert all(held_as_text(kv) for kv in kvs)
        hub = Hub(store)
        hub.start(asyncio.get_running_loop())
        assert all(held_as_text(kv) for kv in kvs), "dropped on the start path"
        for _ in range(100):
            if not any(held_as_text(kv) for kv in kvs):
                break
            await asyncio.sleep(0.01)
        assert not any(held_as_text(kv) for kv in kvs)
        assert all(kv.parsed is hub.index.objects["ports"][kv.key.rsplit("/", 1)[1]] for kv in kvs)
        assert {kv.key.rsplit("/", 1)[1]: kv.value for kv in store.range("/vxnet/res/ports/")[0]} == texts
        assert repo.get("ports", "p1") == _port("p1")
        _put(repo, _port("p1", name="renamed"))
        await _caught_up(hub, store)
        kv = store.get("/vxnet/res/ports/p1")
        assert not held_as_text(kv) and json.loads(kv.value) == _port("p1", name="renamed")
        hub.stop()
        store.close()
        store = SqliteStore(str(tmp_path / "s.db"))   # the file holds the texts written
        assert json.loads(store.get("/vxnet/res/ports/p1").value) == _port("p1", name="renamed")
        assert store.get("/vxnet/res/ports/p2").value == texts["p2"]
        store.close()

    run_in_thread(run)
