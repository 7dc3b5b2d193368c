"""The keyed diff: applying diff(desired, actual) to actual gives desired, whatever the sets."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vxnet.compute.diff import Diff, Without, apply, diff
from vxnet.compute.state import Fdb, Neigh, Parts

macs = st.sampled_from([f"02:00:00:00:00:0{i}" for i in range(6)])
fdbs = st.builds(Fdb, st.sampled_from(["vxv-a", "vxv-b"]), macs,
                 st.one_of(st.none(), st.sampled_from(["198.51.100.1", "198.51.100.2"])))


def test_create_update_delete_split() -> None:
    desired = {Neigh("vxb-a", "192.0.2.1", "02:00:00:00:00:01"), Neigh("vxb-a", "192.0.2.2", "02:00:00:00:00:02")}
    actual = {Neigh("vxb-a", "192.0.2.2", "02:00:00:00:00:09"), Neigh("vxb-a", "192.0.2.3", "02:00:00:00:00:03")}
    d = diff(desired, actual)
    assert d.create == (Neigh("vxb-a", "192.0.2.1", "02:00:00:00:00:01"),)
    assert d.update == ((Neigh("vxb-a", "192.0.2.2", "02:00:00:00:00:09"), Neigh("vxb-a", "192.0.2.2", "02:00:00:00:00:02")),)
    assert d.delete == (Neigh("vxb-a", "192.0.2.3", "02:00:00:00:00:03"),)
    assert len(d) == 3 and not d.empty


def test_equal_sets_give_empty_diff() -> None:
    s = {Fdb("vxv-a", "02:00:00:00:00:01", "198.51.100.1"), Fdb("vxv-a", "02:00:00:00:00:01")}
    assert diff(s, set(s)).empty


def test_self_and_master_entries_are_distinct_keys() -> None:
    d = diff({Fdb("vxv-a", "02:00:00:00:00:01", "198.51.100.1")}, {Fdb("vxv-a", "02:00:00:00:00:01")})
    assert len(d.create) == 1 and len(d.delete) == 1 and not d.update


def test_failed_entries_stay_as_they_were() -> None:
    a = Fdb("vxv-a", "02:00:00:00:00:01", "198.51.100.1")
    b = Fdb("vxv-a", "02:00:00:00:00:01", "198.51.100.2")
    d = diff({b}, {a})
    assert apply({a}, d, failed=[b]) == {a}
    assert apply({a}, d) == {b}


def test_without_drops_selected_entries() -> None:
    d = diff({Fdb("vxv-a", "02:00:00:00:00:01")}, {Fdb("vxv-b", "02:00:00:00:00:02")})
    assert d.without(lambda e: e.dev == "vxv-b") == Diff(d.create, (), ())


@given(st.lists(fdbs), st.lists(fdbs))
def test_apply_of_diff_converges(desired: list[Fdb], actual: list[Fdb]) -> None:
    # Duplicated keys are not meaningful sets of entries; keep the last per key like the kernel.
    want = frozenset({e.key: e for e in desired}.values())
    have = frozenset({e.key: e for e in actual}.values())
    d = diff(want, have)
    assert apply(have, d) == want
    assert diff(want, apply(have, d)).empty


def _keyed(entries: list[Fdb]) -> frozenset[Fdb]:
    return frozenset({e.key: e for e in entries}.values())


@given(st.lists(fdbs), st.lists(fdbs), st.lists(fdbs), st.lists(fdbs), st.booleans())
def test_a_set_minus_a_few_diffs_as_its_copy_would(a: list[Fdb], x: list[Fdb], b: list[Fdb], y: list[Fdb],
                                                  same_base: bool) -> None:
    # Without(base, out): the reconciler's wanted and applied FDB sets without a copy of the
    # desired one; diff and apply must see exactly the set base - out, whichever side it is on.
    want_base = _keyed(a)
    have_base = want_base if same_base else _keyed(b)
    want, have = Without(want_base, x), Without(have_base, y)
    want_copy, have_copy = want_base - frozenset(x), have_base - frozenset(y)
    assert set(want) == want_copy and len(want) == len(want_copy) and all(e in want for e in want_copy)
    assert not any(e in want for e in want_base - want_copy)
    for d, ref in ((diff(want, have), diff(want_copy, have_copy)), (diff(want, have_copy), diff(want_copy, have_copy)),
                   (diff(want_copy, have), diff(want_copy, have_copy))):
        assert d == ref
    assert apply(have, diff(want, have)) == want_copy
    assert diff(want, Without(want_base, x)).empty          # the same set given twice: no change


@given(st.lists(fdbs), st.lists(fdbs), st.lists(fdbs), st.integers(0, 3))
def test_parts_diff_as_their_merged_copy_would(a: list[Fdb], b: list[Fdb], x: list[Fdb], shared: int) -> None:
    # compute.state.Parts: disjoint parts (one per device here, as one per network in the agent)
    # diff against each other, against plain sets and inside a Without as the merged set would.
    def parts(entries: list[Fdb]) -> list[frozenset[Fdb]]:
        by_dev: dict[str, set[Fdb]] = {"vxv-a": set(), "vxv-b": set()}
        for e in _keyed(entries):
            by_dev[e.dev].add(e)
        return [frozenset(v) for v in by_dev.values()]

    mine, theirs = parts(a), parts(b)
    if shared % 2:
        theirs[0] = mine[0]                       # an unchanged part: the very same object
    want, have = Parts(mine), Parts(theirs)
    want_set, have_set = frozenset(want), frozenset(have)
    assert len(want) == len(want_set) and all(e in want for e in want_set)
    assert (want == have) == (want_set == have_set) and want == want_set and want_set == want
    assert diff(want, have) == diff(want_set, have_set)
    assert diff(want, have_set) == diff(want_set, have) == diff(want_set, have_set)
    assert diff(Without(want, x), have) == diff(want_set - frozenset(x), have_set)
    assert diff(have, Without(want, x)) == diff(have_set, want_set - frozenset(x))
    assert apply(have, diff(want, have)) == want_set


def _paired(desired: frozenset[Fdb], actual: frozenset[Fdb]) -> Diff[Fdb]:
    """The keyed diff written out plainly (two dicts by key), for entries unique by key."""
    new, old = {e.key: e for e in desired - actual}, {e.key: e for e in actual - desired}
    by = lambda e: repr(e.key)
    return Diff(tuple(sorted((new[k] for k in new.keys() - old.keys()), key=by)),
                tuple(sorted(((old[k], new[k]) for k in new.keys() & old.keys()), key=lambda p: by(p[0]))),
                tuple(sorted((old[k] for k in old.keys() - new.keys()), key=by)))


def _as_parts(s: frozenset[Fdb]) -> Parts[Fdb]:
    return Parts(frozenset(e for e in s if e.dev == dev) for dev in ("vxv-a", "vxv-b"))


@given(st.lists(fdbs), st.lists(fdbs), st.lists(fdbs), st.sampled_from(["set", "parts", "without"]))
def test_creates_only_and_deletes_only_are_the_keyed_diff(a: list[Fdb], b: list[Fdb], x: list[Fdb], form: str) -> None:
    """The paths without pairing by key (an empty kernel, only creates, only deletes; the
    desired side as a set, `Parts` or a `Without` of them) give the keyed diff exactly."""
    want = _keyed(a)
    out = frozenset(x) & want if form == "without" else frozenset()
    given_want = {"set": want, "parts": _as_parts(want), "without": Without(_as_parts(want), out)}[form]
    want = want - out
    have = _keyed(b) & want          # a part of what is wanted: creates only
    for actual in (frozenset(), have, Parts([have])):
        assert diff(given_want, actual) == _paired(want, frozenset(actual))
    assert diff(have, given_want) == _paired(have, want)          # deletes only


def test_an_empty_kernel_gets_one_create_per_key() -> None:
    """Two wanted entries with one key (two VTEPs for a MAC): one create, as a dict by key keeps."""
    two = {Fdb("vxv-a", "02:00:00:00:00:01", "198.51.100.1"), Fdb("vxv-a", "02:00:00:00:00:01", "198.51.100.2")}
    other = Fdb("vxv-a", "02:00:00:00:00:00", "198.51.100.1")
    d = diff(frozenset(two | {other}), frozenset())
    assert len(d.create) == 2 and d.create[0] == other and d.create[1] in two and not d.update and not d.delete


def test_a_first_pass_diff_holds_no_dict_of_its_entries() -> None:
    """The diff of 20,000 wanted entries (20 networks' parts) against an empty kernel (a host's
    first pass) peaks at its result and one part's sort keys: the pairing by key held two dicts,
    a key set and every entry's sort key, ~6 MB (agent peak RSS, docs/benchmarks.md)."""
    import tracemalloc

    want = Parts(frozenset(Fdb(f"vxv-{n:02d}", f"02:00:00:{n:02x}:{i >> 8:02x}:{i & 255:02x}", "198.51.100.2")
                           for i in range(1000)) for n in range(20))
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        d = diff(want, frozenset())
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert len(d.create) == 20000 and not d.update and not d.delete
    assert peak < 1_000_000, peak
