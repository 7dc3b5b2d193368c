"""store/keyset.py: the stores' sorted key set answers prefix ranges exactly as a scan of a
sorted list does, through inserts and deletes, including prefixes whose last character is the
largest code point (no bumped end key exists) and the empty prefix."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vxnet.store.keyset import KeySet

ALPHABET = st.sampled_from(["a", "b", "/", "\0", "\U0010ffff", "\ud800", "z"])
KEYS = st.text(ALPHABET, max_size=4)


def naive_under(keys: set[str], prefix: str) -> list[str]:
    return sorted(k for k in keys if k.startswith(prefix))


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), KEYS), max_size=60), prefixes=st.lists(KEYS, max_size=8))
def test_under_matches_a_scan(ops: list[tuple[bool, str]], prefixes: list[str]) -> None:
    ks = KeySet()
    model: set[str] = set()
    for add, key in ops:
        if add:
            if key not in model:
                ks.add(key)
                model.add(key)
        else:
            ks.discard(key)
            model.discard(key)
        assert len(ks) == len(model)
    for prefix in prefixes + ["", "\U0010ffff", "a\U0010ffff"]:
        assert ks.under(prefix) == naive_under(model, prefix), prefix
    for key in model:
        assert key in ks


def test_built_from_unsorted_keys() -> None:
    ks = KeySet(["/vxnet/res/ports/2", "/vxnet/binding-failed/h/1", "/vxnet/res/ports/1", "/vxnet/res/portsx"])
    assert ks.under("/vxnet/res/ports/") == ["/vxnet/res/ports/1", "/vxnet/res/ports/2"]
    assert ks.under("/vxnet/res/ports") == ["/vxnet/res/ports/1", "/vxnet/res/ports/2", "/vxnet/res/portsx"]
    assert ks.under("/vxnet/binding-failed/h/") == ["/vxnet/binding-failed/h/1"]
    assert ks.under("/vxnet/nothing/") == []
