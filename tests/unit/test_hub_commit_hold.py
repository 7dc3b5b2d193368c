"""The view hub prepares a revision while its COMMIT runs and shows nothing of it before it is
durable (real embedded store, no HTTP).

The embedded store tells the hub a group of revisions just before the group's COMMIT, so the
hub applies them to its index and writes their lines while the committing thread waits in the
fsync. Those lines are held: until the COMMIT returns, no stream line, replay log entry, ping
revision, snapshot or listener call may show the revision (after a failed COMMIT the store
closes, and a restarted server would number other content with that revision: an agent told
R would skip the new R forever). The store's COMMIT is held by the test (`_commit`, its seam)
to look at the hub in that window; a failed COMMIT must send nothing of R at all.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.aio import run_in_thread
from vxnet.services.view_hub import Change, Hub, Objects
from vxnet.store.contract import StoreError, put
from vxnet.store.sqlite_store import SqliteStore


class _HeldCommitStore(SqliteStore):
    """The embedded store whose COMMIT, once `hold` is set, waits for `go` (and then fails if
    `fail` is set, as a full disk would)."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.hold = False
        self.fail = False
        self.in_commit = threading.Event()
        self.go = threading.Event()

    def _commit(self) -> None:
        if self.hold:
            self.in_commit.set()
            assert self.go.wait(20), "the test never let the COMMIT go"
            if self.fail:
                raise sqlite3.OperationalError("disk I/O error (test)")
        super()._commit()


class _Listener:
    def __init__(self) -> None:
        self.revisions: list[int] = []

    def on_changes(self, revision: int, changes: list[Change], objects: Objects) -> None:
        self.revisions.append(revision)

    def on_reload(self, revision: int) -> None:
        self.revisions.append(-revision)


def _port(pid: str, host: str) -> str:
    return json.dumps({"id": pid, "network_id": "n1", "binding:host_id": host, "device_owner": "compute:nova",
                       "device_id": "vm", "security_groups": [], "mac_address": "fa:16:3e:00:00:01",
                       "fixed_ips": [], "status": "DOWN"})


def _msgs(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines()]


async def _until(cond: Any, what: str) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def _bind_while_held(tmp_path: Path, fail: bool) -> dict[str, Any]:
    """Bind port p1 to hv1 with the COMMIT held; what the hub shows meanwhile and after."""
    loop = asyncio.get_running_loop()
    store = _HeldCommitStore(str(tmp_path / "s.db"))
    hub = Hub(store)
    hub.start(loop)
    listener = _Listener()
    hub.listeners.append(listener)
    out: dict[str, Any] = {}
    try:
        await loop.run_in_executor(None, put, store, "/vxnet/res/ports/p0", _port("p0", "hv1"))
        await _until(lambda: hub.revision == store.revision(), "the first port")
        sub = hub.subscribe("hv1", None, store.revision())
        assert _msgs(sub.take())[0]["type"] == "snapshot"
        before = hub.revision
        store.hold, store.fail = True, fail
        bind = loop.run_in_executor(None, put, store, "/vxnet/res/ports/p1", _port("p1", "hv1"))
        await loop.run_in_executor(None, store.in_commit.wait, 20)
        rev = store.revision()
        await _until(lambda: rev in hub._held, "the hub to prepare the revision during the COMMIT")
        late = hub.subscribe("hv1", None, store.revision())  # a stream opened while R is held
        out["held"] = {
            "lines": sub.take(), "late_lines": late.take(), "revision": hub.revision,
            "log": [r for r, _ in hub.logs.get("hv1", ())],
            "ping": json.loads(hub.ping_line(sub))["revision"],
            "listener": list(listener.revisions), "last_change": hub.last_change.get("hv1"),
        }
        store.go.set()
        if fail:
            with pytest.raises(StoreError):
                await bind
            await _until(lambda: hub.failed, "the hub to hear of the failed COMMIT")
            for _ in range(5):
                await asyncio.sleep(0)
            again = hub.subscribe("hv1", None, rev - 1)
            out["after"] = {"lines": sub.take(), "late_lines": late.take(), "revision": hub.revision,
                            "log": [r for r, _ in hub.logs.get("hv1", ())], "closed": sub.closed and late.closed,
                            "listener": list(listener.revisions), "again": again.take(), "again_closed": again.closed,
                            "held": dict(hub._held)}
        else:
            assert await bind == rev
            await _until(lambda: hub.revision == rev and late.lines, "the revision to be shown")
            out["after"] = {"lines": sub.take(), "late_lines": late.take(), "revision": hub.revision,
                            "log": [r for r, _ in hub.logs.get("hv1", ())], "listener": list(listener.revisions)}
        out["rev"], out["before"] = rev, before
    finally:
        store.go.set()
        hub.stop()
        store.close()
    return out


def test_nothing_of_a_revision_is_shown_before_its_commit_returns(tmp_path: Path) -> None:
    out = run_in_thread(lambda: _bind_while_held(tmp_path, fail=False))
    rev, before, held, after = out["rev"], out["before"], out["held"], out["after"]
    # while the COMMIT runs: prepared (above), but nothing shown
    assert held["lines"] == b"", "a line of a revision that is not durable yet"
    assert held["late_lines"] == b"", "a snapshot that holds a revision that is not durable yet"
    assert held["revision"] == before and held["ping"] == before
    assert rev not in held["log"] and rev not in held["listener"] and held["last_change"] != rev
    # once it returns: the update, the late stream's snapshot at R (with the port), the log, the listener
    updates = _msgs(after["lines"])
    assert [(m["type"], m["revision"]) for m in updates] == [("update", rev)]
    assert "p1" in updates[0]["put"]["ports"]
    snap = _msgs(after["late_lines"])
    assert [(m["type"], m["revision"]) for m in snap] == [("snapshot", rev)]
    assert set(snap[0]["view"]["ports"]) == {"p0", "p1"}
    assert after["revision"] == rev and rev in after["log"] and after["listener"][-1] == rev


def test_a_failed_commit_sends_nothing_of_its_revision(tmp_path: Path) -> None:
    out = run_in_thread(lambda: _bind_while_held(tmp_path, fail=True))
    rev, before, held, after = out["rev"], out["before"], out["held"], out["after"]
    assert held["lines"] == b"" and held["late_lines"] == b"" and held["ping"] == before
    assert after["lines"] == b"" and after["late_lines"] == b"", "a line of a revision that never became durable"
    assert after["revision"] == before and rev not in after["log"] and rev not in after["listener"]
    assert after["held"] == {}
    # every stream ends (the index is ahead of the file), and no new one gets a snapshot
    assert after["closed"] and after["again_closed"] and after["again"] == b""
