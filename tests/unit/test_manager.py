"""The generic manager: desired / applied / dirty per key, backoff per failing key."""

from __future__ import annotations

from vxnet.agent.manager import Manager


def test_only_differences_are_dirty_and_failures_back_off_per_key() -> None:
    m: Manager[str, int] = Manager(initial=1.0, maximum=4.0)
    m.want({"a": 1, "b": 2})
    ups, dels = m.dirty(0.0)
    assert ups == [("a", 1, None), ("b", 2, None)] and dels == []
    m.ok("a", 1)
    assert m.failed("b", 0.0) >= 0.9
    assert m.dirty(0.5) == ([], [])                       # b waits for its backoff; a is done
    assert m.dirty(1.2)[0] == [("b", 2, None)]            # due again
    d2 = m.failed("b", 1.2)
    assert 1.8 <= d2 <= 2.2 and m.next_retry() is not None  # doubled
    m.ok("b", 2)
    assert m.next_retry() is None and m.dirty(10.0) == ([], [])
    m.want({"b": 3})                                      # a goes, b changes
    assert m.dirty(10.0) == ([("b", 3, 2)], [("a", 1)])


def test_invalidate_makes_every_desired_key_dirty_and_unknown() -> None:
    m: Manager[str, int] = Manager()
    m.want({"a": 1})
    m.ok("a", 1)
    m.mark_known()
    assert m.known and m.dirty(0.0) == ([], [])
    m.invalidate()
    assert not m.known and m.dirty(0.0) == ([("a", 1, None)], [])


def test_observe_adopts_deletes_leftovers_and_recreates_what_vanished() -> None:
    m: Manager[str, int] = Manager()
    m.want({"a": 1, "b": 2})
    m.ok("b", 2)
    m.observe({"a", "x"})                 # a exists (never applied by us), x is a leftover, b vanished
    ups, dels = m.dirty(0.0)
    assert sorted(ups) == [("a", 1, None), ("b", 2, None)] and dels == [("x", None)]
    assert sorted(m.pending()) == ["a", "b"]
    m.ok("a", 1)
    m.ok("b", 2)
    assert m.failed("x", 0.0) > 0         # a failed delete stays to delete, after its backoff
    assert not m.due("x", 0.0) and m.dirty(0.0) == ([], [])
    assert m.dirty(10.0) == ([], [("x", None)])
    m.ok("x", None)
    assert m.pending() == [] and m.dirty(10.0) == ([], [])


def test_an_identical_object_is_not_compared_deeply() -> None:
    class NoEq:
        def __eq__(self, other: object) -> bool:
            raise AssertionError("compared")
        __hash__ = object.__hash__

    v = NoEq()
    m: Manager[str, NoEq] = Manager()
    m.want({"a": v})
    m.ok("a", v)
    assert m.dirty(0.0) == ([], [])
