"""`compute.memo`: a recomputed part lets its old value go at once (not after the whole pass),
and `PartsMemo.version` moves exactly when the parts returned are other objects (what the host
computer keys its merged state on, instead of holding the old parts)."""

from __future__ import annotations

import weakref

from vxnet.compute.memo import IdentityMemo, PartsMemo


class Part:
    """A part value (weak-referenceable, compared by its content)."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Part) and other.v == self.v

    __hash__ = None  # type: ignore[assignment]


def test_a_recomputed_key_lets_its_old_value_go_during_the_pass() -> None:
    memo: IdentityMemo[Part] = IdentityMemo()
    a_in, b_in = object(), object()
    memo.begin()
    old_a = memo.get("a", (a_in,), lambda: Part(1))
    memo.get("b", (b_in,), lambda: Part(2))
    gone = weakref.ref(old_a)
    del old_a
    memo.begin()                              # the next pass: "a" changed
    memo.get("a", (object(),), lambda: Part(10))
    assert gone() is None                     # released at once, before the pass goes on
    assert memo.get("b", (b_in,), lambda: Part(20)) == Part(2)   # "b" unchanged: a hit
    assert memo.recomputed == 1


def test_parts_version_moves_only_when_the_parts_are_other_objects() -> None:
    memo: PartsMemo[Part, list[Part]] = PartsMemo(list)
    x, y = object(), object()
    first = memo.parts([("a", (x,), lambda: Part(1)), ("b", (y,), lambda: Part(2))])
    v = memo.version
    assert memo.parts([("a", (x,), lambda: Part(1)), ("b", (y,), lambda: Part(2))]) == first
    assert memo.version == v                  # same inputs: same objects
    same = memo.parts([("a", (object(),), lambda: Part(1)), ("b", (y,), lambda: Part(2))])
    assert same[0] is first[0] and memo.version == v   # recomputed but equal: the old object kept
    memo.parts([("a", (x,), lambda: Part(3)), ("b", (y,), lambda: Part(2))])
    assert memo.version == v + 1              # a part changed
    memo.parts([("a", (x,), lambda: Part(3))])
    assert memo.version == v + 2              # a key went (a network left the view)
    memo.parts([("a", (x,), lambda: Part(3))])
    assert memo.version == v + 2
