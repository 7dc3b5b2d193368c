"""`compute.diff.against`: a kernel read compared with the desired set without a copy of it; an
entry read twice never stands in for a missing one (the resync must then read again and repair)."""

from __future__ import annotations

from vxnet.compute.diff import Without, against
from vxnet.compute.state import Fdb, Parts

A, B, C = Fdb("vx-1", "02:00:00:00:00:0a", "198.51.100.2"), Fdb("vx-1", "02:00:00:00:00:0b"), Fdb("tap1", "02:00:00:00:00:0c")
D = Fdb("vx-2", "02:00:00:00:00:0d", "198.51.100.3")


def test_a_kernel_holding_what_is_wanted_gives_the_wanted_set_itself() -> None:
    want = frozenset({A, B, C})
    read = [Fdb(e.dev, e.mac, e.dst) for e in (C, A, B)]          # equal objects, read from the kernel
    assert against(iter(read), want) is want
    extra = Fdb("vx-1", "02:00:00:00:00:0d")
    got = against(iter([*read, extra]), want)
    assert got == want | {extra}
    assert against(iter(read), None) == want


def test_a_missing_entry_is_seen_even_when_another_is_read_twice() -> None:
    want = frozenset({A, B, C})
    assert against(iter([A, B]), want) is None                    # C missing
    assert against(iter([A, B, B]), want) is None                 # C missing, B read twice (e.g. per VLAN)
    assert against(iter([A, A, B, C]), want) is None              # one too many: read again (safe side)


def test_a_read_against_a_set_minus_a_few_keeps_it_and_sees_a_left_out_entry() -> None:
    # The reconciler reads the kernel against its wanted FDB set, the desired one minus the
    # entries of taps not plugged (a `Without`): a kernel holding just that gives it back (no
    # copy); a left-out entry found in the kernel is an extra one (the diff deletes it).
    want = Without(frozenset({A, B, C}), [C])
    assert against(iter([A, B]), want) is want
    got = against(iter([A, B, C]), want)
    assert got is not None and set(got) == {A, B, C} and C in got
    assert against(iter([A]), want) is None                         # B missing
    assert against(iter([A, C]), want) is None                      # B missing, C (left out) read instead


def test_a_read_against_parts_keeps_them_and_adds_an_extra_entry_as_one_part_more() -> None:
    # compute.state.Parts (the agent's per-network entries): read against them as against the
    # merged set; a drifted kernel's extra entry makes a part more, a missing one a read again.
    want = Parts([frozenset({A, B}), frozenset({C})])
    assert against(iter([C, A, B]), want) is want
    got = against(iter([A, B, C, D]), want)
    assert isinstance(got, Parts) and set(got) == {A, B, C, D} and len(got) == 4
    assert against(iter([A, C, D]), want) is None                   # B missing
    assert against(iter([A, B, C]), Without(want, [C])) is not None
    assert set(against(iter([A, B]), Without(want, [C])) or ()) == {A, B}
