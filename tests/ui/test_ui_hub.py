"""UiHub's fan-out on its own: store events in, per-subscriber notifications out (no HTTP)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from vxnet.api.auth import Context
from vxnet.api.routers.ui import Subscriber, UiHub
from vxnet.services.view_hub import Hub
from vxnet.store.contract import Event, EventType, KeyValue
from vxnet.store.sqlite_store import SqliteStore

ALICE = Context("ua", "alice", "pa", "tenant-a", ("member",))
BOB = Context("ub", "bob", "pb", "tenant-b", ("member",))
ADMIN = Context("u0", "admin", "p0", "admin", ("admin",))


def _put(rev: int, coll: str, obj: dict[str, Any]) -> Event:
    return Event(EventType.PUT, KeyValue(f"/vxnet/res/{coll}/{obj['id']}", json.dumps(obj), rev, rev, 1))


def _delete(rev: int, coll: str, id_: str) -> Event:
    return Event(EventType.DELETE, KeyValue(f"/vxnet/res/{coll}/{id_}", "", 0, rev, 0))


def _net(id_: str, project: str, shared: bool = False) -> dict[str, Any]:
    return {"id": id_, "project_id": project, "shared": shared, "router:external": False}


def _drain(sub: Subscriber) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    while not sub.queue.empty():
        item = sub.queue.get_nowait()
        assert item is not None
        out.extend((c["collection"], c["id"], c["type"]) for c in item["changes"])
    return out


def test_fan_out_by_visibility_in_any_event_order(tmp_path: Path) -> None:
    async def run() -> None:
        store = SqliteStore(str(tmp_path / "s.db"))
        view_hub = Hub(store)  # the server's one watch; the UI feed listens to it
        view_hub.start(asyncio.get_running_loop())
        hub = UiHub(view_hub)
        hub.ensure_started()
        subs = {name: Subscriber(ctx) for name, ctx in (("alice", ALICE), ("bob", BOB), ("admin", ADMIN))}
        hub.subscribers.update(subs.values())
        shared = _net("n-shared", "p0", shared=True)
        private = _net("n-alice", "pa")
        view_hub._apply([_put(2, "networks", shared), _put(2, "networks", private)])
        view_hub._apply([_put(3, "subnets", {"id": "s-shared", "network_id": "n-shared", "project_id": "p0"}),
                    _put(3, "subnets", {"id": "s-alice", "network_id": "n-alice", "project_id": "pa"}),
                    _put(3, "routers", {"id": "r-alice", "project_id": "pa"}),
                    _put(3, "agents", {"id": "agent-1", "host": "h1"})])
        # the parent first: its subnet must still be judged with it
        view_hub._apply([_delete(4, "networks", "n-shared"), _delete(4, "subnets", "s-shared")])
        view_hub._apply([_put(5, "networks", {**private, "shared": True})])  # alice shares her network
        view_hub._apply([_put(6, "networks", private)])  # and unshares it: bob hears of that too
        got = {name: _drain(sub) for name, sub in subs.items()}
        # with the network, bob gains and loses sight of its unchanged subnet, and is told so
        assert got["bob"] == [("networks", "n-shared", "put"), ("subnets", "s-shared", "put"),
                              ("networks", "n-shared", "delete"), ("subnets", "s-shared", "delete"),
                              ("networks", "n-alice", "put"), ("subnets", "s-alice", "put"),
                              ("networks", "n-alice", "put"), ("subnets", "s-alice", "delete")]
        assert ("routers", "r-alice", "put") in got["alice"] and ("subnets", "s-alice", "put") in got["alice"]
        assert all(c != "agents" for c, _, _ in got["alice"] + got["bob"])
        assert ("agents", "agent-1", "put") in got["admin"] and len(got["admin"]) == 10
        hub.stop()
        view_hub.stop()
        store.close()

    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    errors: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(run())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=main)
    t.start()
    t.join(30)
    if errors:
        raise errors[0]
    assert not t.is_alive()
