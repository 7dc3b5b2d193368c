"""Long stored values held deflated in memory (store/packing.py, contract.PackedKeyValue): the
text read back is exactly the text written, and a packed KeyValue is indistinguishable from a
plain one (equality, hash, copies, pickles), whatever is attached to it."""

from __future__ import annotations

import copy
import json
import os
import pickle

from vxnet.store import packing
from vxnet.store.contract import KeyValue, PackedKeyValue, Sharer, stored_kv

PORT = json.dumps({"id": "6f1c2a9e-1b2c-4d5e-8f90-0a1b2c3d4e5f", "name": "web-1", "network_id":
                   "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d", "project_id": "3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c",
                   "mac_address": "fa:16:3e:12:34:56", "admin_state_up": True, "status": "ACTIVE",
                   "fixed_ips": [{"subnet_id": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "ip_address": "100.64.3.7"}],
                   "binding:host_id": "compute-17", "binding:vif_type": "tap", "tags": [], "revision_number": 3},
                  separators=(",", ":"))


def test_long_values_round_trip_exactly_and_shrink() -> None:
    for text in (PORT, PORT.replace("web-1", "r\u00e9seau \u7db2\u7d61 \U0001f310"), "\ud800" + PORT,
                 PORT + "\\u0000\x00\n"):
        packed = packing.pack(text)
        assert packed is not None and len(packed) < len(text) // 2
        assert packing.unpack(packed) == text


def test_short_or_incompressible_values_stay_text() -> None:
    assert packing.pack("a" * (packing.MIN_LENGTH - 1)) is None
    noise = "".join(chr(0x4E00 + b) for b in os.urandom(400))   # 400 random bytes' worth: cannot shrink
    assert packing.pack(noise) is None
    assert stored_kv("k", noise, 1, 1, 1).value == noise
    kv = stored_kv("k", "short", 1, 2, 1)
    assert type(kv) is KeyValue and kv.value == "short"


def test_a_packed_key_value_is_a_key_value() -> None:
    kv = stored_kv("/vxnet/res/ports/p", PORT, 5, 9, 2, 7)
    plain = KeyValue("/vxnet/res/ports/p", PORT, 5, 9, 2, 7)
    assert isinstance(kv, PackedKeyValue) and kv.value == PORT
    assert kv == plain and plain == kv and hash(kv) == hash(plain)
    assert kv != KeyValue("/vxnet/res/ports/p", PORT + " ", 5, 9, 2, 7)
    assert kv != KeyValue("/vxnet/res/ports/p", PORT, 5, 10, 2, 7)
    kv.attach({"id": "p"})                      # not part of the key
    assert kv == plain and kv.parsed == {"id": "p"} and plain.parsed is None
    for other in (pickle.loads(pickle.dumps(kv)), copy.copy(kv), copy.deepcopy(kv)):
        assert type(other) is KeyValue and other == plain
    assert repr(kv).startswith("PackedKeyValue(key='/vxnet/res/ports/p', value='{")
    assert PackedKeyValue("k", "text kept as text", 1, 1, 1).value == "text kept as text"


def test_a_load_packs_long_values_and_shares_short_ones() -> None:
    share = Sharer()
    a = share.kv("/vxnet/mac/n/fa:16:3e:00:00:01", "port-id-1", 10, 10, 1)
    b = share.kv("/vxnet/ipam/s/100.64.0.2", "port-id-1", 10, 10, 1)
    p = share.kv("/vxnet/res/ports/port-id-1", PORT, 10, 10, 1)
    assert a.value is b.value and a.mod_revision is b.mod_revision
    assert isinstance(p, PackedKeyValue) and p.value == PORT
