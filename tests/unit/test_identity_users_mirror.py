"""The identity mirror's users (services/identity_state.py + identity_users.py): records parse
and round-trip, role changes are per project, and a server's own write is never undone by an
older watch event still in flight (an etcd watch can deliver after the writer noted its write)."""

from __future__ import annotations

import os

from vxnet.config import User
from vxnet.services.identity_state import IdentityState
from vxnet.services.identity_users import USERS_PREFIX, StoredUser, dump, parse, roles_on
from vxnet.store.contract import Event, EventType, KeyValue
from vxnet.store.sqlite_store import SqliteStore


def test_record_round_trip_and_roles_per_project() -> None:
    u = StoredUser("u1", "n", "$scrypt$x", default_project_id="p1")
    u = u.with_role("p1", "member", True).with_role("p1", "reader", True).with_role("p2", "admin", True)
    assert parse(dump(u)) == u and u.roles_on("p1") == ("member", "reader") and u.roles_on("p3") == ()
    assert u.with_role("p2", "admin", False).roles_on("p2") == () and u.without_project("p1").roles_on("p1") == ()
    cfg = User("alice", "pw", "tenant-a", ("member",))
    assert roles_on(cfg, cfg.project_id) == ("member",) and roles_on(cfg, "elsewhere") == ()
    for bad in ("", "{}", '{"id": "u", "name": "n", "password_hash": ""}', "[1]"):
        try:
            parse(bad)
            raise AssertionError(f"parsed {bad!r}")
        except ValueError:
            pass


def test_an_older_event_does_not_undo_a_noted_write(tmp_path) -> None:
    store = SqliteStore(os.path.join(tmp_path, "s.db"))
    try:
        ident = IdentityState(store)
        old = StoredUser("u1", "n", "$scrypt$old")
        new = StoredUser("u1", "n", "$scrypt$new")
        ident.note_user("u1", new, 10)
        key = USERS_PREFIX + "u1"
        gen = ident._generation
        ident._on_events(gen, [Event(EventType.PUT, KeyValue(key, dump(old), 9, 9, 1))])
        assert ident.stored_user("u1") == new
        ident._on_events(gen, [Event(EventType.PUT, KeyValue(key, dump(old), 9, 11, 2))])
        assert ident.stored_user("u1") == old  # a newer store value wins
        ident.note_user("u1", None, 12)  # deleted here
        ident._on_events(gen, [Event(EventType.PUT, KeyValue(key, dump(new), 9, 11, 2))])
        assert ident.stored_user("u1") is None
        ident._on_events(gen, [Event(EventType.DELETE, KeyValue(key, "", 0, 12, 0))])
        assert ident.stored_user("u1") is None and ident.stored_users() == []
        ident.close()
    finally:
        store.close()
