"""services/compact.py: the compact copies the hub and the repo's cache hold are equal to what was
parsed in every way a caller can see (fields, order, JSON), whatever the field names, and smaller."""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import orjson

from vxnet.services.compact import SPLIT_MAX, compact

PORT = ('{"id": "%s", "name": "vm-%s", "network_id": "net-1", "project_id": "proj", "tenant_id": "proj", '
        '"mac_address": "fa:16:3e:00:00:%s", "admin_state_up": true, "status": "DOWN", "device_id": "vm", '
        '"device_owner": "compute:nova", "fixed_ips": [{"subnet_id": "s1", "ip_address": "192.0.2.%s"}], '
        '"allowed_address_pairs": [], "security_groups": ["sg"], "description": "", "binding:host_id": "hv1", '
        '"binding:vif_type": "tap", "binding:vif_details": {"port_filter": true, "mac_address": "fe:16:3e:00:00:%s"}, '
        '"binding:profile": {}, "qos_policy_id": null, "tags": [], "created_at": "2026-12-06T15:05:39Z", '
        '"updated_at": "2026-12-06T15:06:03Z", "revision_number": 1}')


def _port(i: int) -> dict[str, Any]:
    return json.loads(PORT % ((f"p{i}",) + (f"{i:02x}",) * 4))


def test_equal_in_fields_order_and_json() -> None:
    for i in range(3):
        raw = _port(i)
        c = compact(json.loads(json.dumps(raw)))
        assert type(c) is dict and c == raw and list(c) == list(raw)
        assert orjson.dumps(c) == orjson.dumps(raw) and json.dumps(c) == json.dumps(raw)
        assert list(c["binding:vif_details"]) == list(raw["binding:vif_details"])
        assert copy.deepcopy(c) == raw and dict(c) == raw


def test_smaller_and_sharing() -> None:
    a, b = compact(_port(1)), compact(_port(2))
    assert sys.getsizeof(a) < sys.getsizeof(_port(1)) / 2, "not a key-sharing dict"
    assert a["network_id"] is b["network_id"] and a["updated_at"] is b["updated_at"]
    assert a["fixed_ips"][0]["subnet_id"] is b["fixed_ips"][0]["subnet_id"]
    assert all(x is y for x, y in zip(a, b, strict=True))
    assert all(x is y for x, y in zip(a["binding:vif_details"], b["binding:vif_details"], strict=True))


def test_any_field_names_and_changes_behave_as_a_dict() -> None:
    """Names that are attributes of every object, many fields, and later changes."""
    odd = {"__class__": 1, "__dict__": {"__init__": 2}, "items": 3, "keys": [{"__len__": 4}]}
    assert compact(json.loads(json.dumps(odd))) == odd
    wide = {f"f{i}": i for i in range(SPLIT_MAX + 5)}
    assert list(compact(dict(wide))) == list(wide) and compact(dict(wide)) == wide
    c = compact(_port(3))
    c["extra"] = 1
    del c["name"]
    c["status"] = "ACTIVE"
    want = _port(3)
    want["extra"] = 1
    del want["name"]
    want["status"] = "ACTIVE"
    assert c == want and list(c) == list(want)
    assert compact({}) == {} and compact({"a": {}})["a"] == {}


def test_shared_empties_refuse_changes_and_copy_as_ordinary() -> None:
    """`share_empty` (the hub's objects): every empty list and dict is one shared object, equal
    and written as `[]` / `{}`, that refuses a change; copies of it are ordinary."""
    from vxnet.services.compact import EMPTY_DICT, EMPTY_LIST

    a, b = compact(_port(1), share_empty=True), compact(_port(2), share_empty=True)
    assert a == _port(1) and orjson.dumps(a) == orjson.dumps(_port(1)) and json.dumps(a) == json.dumps(_port(1))
    assert a["tags"] is b["tags"] is EMPTY_LIST and a["binding:profile"] is EMPTY_DICT
    for change in (lambda: a["tags"].append(1), lambda: a["tags"].extend([1]), lambda: a["binding:profile"].update(x=1),
                   lambda: a["binding:profile"].__setitem__("x", 1), lambda: a["binding:profile"].setdefault("x", 1)):
        try:
            change()
        except TypeError:
            pass
        else:
            raise AssertionError("a shared empty accepted a change")
    assert EMPTY_LIST == [] and EMPTY_DICT == {}
    mine = copy.deepcopy(a)
    mine["tags"].append("t")
    mine["binding:profile"]["k"] = "v"
    assert mine["tags"] == ["t"] and EMPTY_LIST == [] and a["tags"] == [] and b["binding:profile"] == {}
    assert type(copy.copy(a["tags"])) is list and type(list(a["tags"])) is list
    assert compact(_port(1))["tags"] is not EMPTY_LIST  # only when asked


def test_lists_are_held_at_their_length() -> None:
    """A parsed list of one or two items keeps room for four; the compact copy holds its items
    only (equal, in order, the input's list untouched)."""
    raw = json.loads('{"fixed_ips": [{"subnet_id": "s", "ip_address": "192.0.2.7"}], "groups": ["g1", "g2"]}')
    c = compact(raw, share_empty=True)
    assert c == raw and c["groups"] is not raw["groups"]
    for k in ("fixed_ips", "groups"):
        assert sys.getsizeof(c[k]) == sys.getsizeof(raw[k][:]) < sys.getsizeof(raw[k])
    assert type(raw["fixed_ips"][0]) is dict and raw["fixed_ips"][0] == c["fixed_ips"][0]
