"""A store's in-memory value held as its attached parsed object (contract.StoredKeyValue): the
text read back is exactly the text written, before and after a parse is attached; text that the
parsed object would not write out identically stays text; a shared object changed in place is
refused loudly; and such a KeyValue is indistinguishable from a plain one (equality, hash,
copies, pickles)."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

from vxnet.services.compact import parse_resource
from vxnet.store.contract import _RAW_VALUE, KeyValue, Sharer, StoredKeyValue, ValueChanged, stored_kv

PORT_OBJ = {"id": "6f1c2a9e-1b2c-4d5e-8f90-0a1b2c3d4e5f", "name": "web-1", "network_id":
            "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d", "project_id": "3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c",
            "mac_address": "fa:16:3e:12:34:56", "admin_state_up": True, "status": "ACTIVE",
            "fixed_ips": [{"subnet_id": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "ip_address": "100.64.3.7"}],
            "binding:host_id": "compute-17", "binding:vif_type": "tap", "binding:profile": {}, "tags": [],
            "revision_number": 3, "mtu": None, "weight": 0.25}
PORT = json.dumps(PORT_OBJ, separators=(",", ":"))   # as the repo writes a resource


def held_as_text(kv: KeyValue) -> bool:
    return isinstance(_RAW_VALUE.__get__(kv), str)


def test_a_matching_parse_replaces_the_text() -> None:
    kv = stored_kv("/vxnet/res/ports/p", PORT, 5, 9, 2, 7)
    assert isinstance(kv, StoredKeyValue) and held_as_text(kv) and kv.value == PORT
    kv.attach(parse_resource(kv.value))
    assert not held_as_text(kv)
    assert kv.value == PORT and json.loads(kv.value) == PORT_OBJ


@pytest.mark.parametrize("text", [
    json.dumps({**PORT_OBJ, "name": "r\u00e9seau \u7db2\u7d61 \U0001f310"}, separators=(",", ":")),  # escaped
    json.dumps({**PORT_OBJ, "name": "r\u00e9seau"}, separators=(",", ":"), ensure_ascii=False),
    json.dumps({**PORT_OBJ, "weight": 1e-7}, separators=(",", ":")),     # 1e-07 vs orjson's 1e-7
    json.dumps({**PORT_OBJ, "big": 2 ** 70}, separators=(",", ":")),     # orjson refuses it
    json.dumps(PORT_OBJ),                                                # spaces: not the compact form
    json.dumps([PORT_OBJ], separators=(",", ":")),                       # not an object
    "\ud800" + PORT,                                                     # not JSON at all
])
def test_text_the_parse_would_not_reproduce_stays_text(text: str) -> None:
    kv = stored_kv("/vxnet/res/ports/p", text, 1, 1, 1)
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = {"id": "p"}
    kv.attach(parsed)
    assert held_as_text(kv) and kv.value == text


def test_an_object_that_is_not_the_parse_keeps_the_text() -> None:
    kv = stored_kv("/vxnet/res/ports/p", PORT, 1, 1, 1)
    kv.attach({**PORT_OBJ, "name": "other"})
    assert held_as_text(kv) and kv.value == PORT


def test_a_shared_object_changed_in_place_is_refused() -> None:
    kv = stored_kv("/vxnet/res/ports/p", PORT, 1, 1, 1)
    obj = parse_resource(PORT)
    kv.attach(obj)
    obj["name"] = "web-2"   # a bug: attached objects are read-only
    with pytest.raises(ValueChanged):
        kv.value  # noqa: B018


def test_short_values_are_plain_key_values() -> None:
    kv = stored_kv("k", "short", 1, 2, 1)
    assert type(kv) is KeyValue and kv.value == "short"
    kv.attach("short")
    assert kv.value == "short"


def test_a_stored_key_value_is_a_key_value() -> None:
    kv = stored_kv("/vxnet/res/ports/p", PORT, 5, 9, 2, 7)
    plain = KeyValue("/vxnet/res/ports/p", PORT, 5, 9, 2, 7)
    kv.attach(parse_resource(PORT))
    assert not held_as_text(kv)
    assert kv == plain and plain == kv and hash(kv) == hash(plain)
    assert kv != KeyValue("/vxnet/res/ports/p", PORT + " ", 5, 9, 2, 7)
    assert kv != KeyValue("/vxnet/res/ports/p", PORT, 5, 10, 2, 7)
    assert plain.parsed is None
    for other in (pickle.loads(pickle.dumps(kv)), copy.copy(kv), copy.deepcopy(kv)):
        assert type(other) is KeyValue and other == plain and other.value == PORT
    assert repr(kv).startswith("StoredKeyValue(key='/vxnet/res/ports/p', value='{")


def test_a_load_shares_short_values_and_keeps_long_ones_for_a_parse() -> None:
    share = Sharer()
    a = share.kv("/vxnet/mac/n/fa:16:3e:00:00:01", "port-id-1", 10, 10, 1)
    b = share.kv("/vxnet/ipam/s/100.64.0.2", "port-id-1", 10, 10, 1)
    p = share.kv("/vxnet/res/ports/port-id-1", PORT, 10, 10, 1)
    assert a.value is b.value and a.mod_revision is b.mod_revision
    assert isinstance(p, StoredKeyValue) and p.value == PORT



def test_a_claims_value_and_the_parsed_ports_id_are_one_string() -> None:
    """Short values, loaded or written, and a parsed resource's id are interned: the server
    holds a port's id once, as its MAC and IP claims' value and as its parsed object's `id`
    (100,000 ports: ~8 MiB; docs/benchmarks.md, session 17)."""
    n = 7
    pid = f"port-id-{n}"   # made at run time: no constant the compiler interned
    loaded = Sharer().kv("/vxnet/mac/n/fa:16:3e:00:00:07", pid, 3, 3, 1)
    written = stored_kv("/vxnet/ipam/s/100.64.0.7", f"port-id-{n}", 4, 4, 1)
    port = parse_resource(json.dumps({"id": "port-id-7", "name": "vm-7"}))   # a parse makes new strings
    assert loaded.value == written.value == port["id"] == "port-id-7"
    assert loaded.value is written.value is port["id"]
