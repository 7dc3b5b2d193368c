"""compute/view.decode_message: the same dict as json.loads, with equal strings shared in a large
message (agent memory), or (`typed`, the agent's client) a large message's view objects parsed
one by one as they are decoded; and model parsing that shares the strings ports repeat."""

from __future__ import annotations

import json

import pytest

from vxnet.compute.view import SHARE_STRINGS_ABOVE, ViewState, apply_message, decode_message
from vxnet.model import Host, Port, parse_view


def _snapshot(n: int) -> dict:
    ports = {}
    for i in range(n):
        pid = f"{i:08x}-1111-4000-8000-000000000000"
        ports[pid] = {"id": pid, "network_id": "net-" + "a" * 32, "binding:host_id": f"h{2 + i % 2}",
                      "mac_address": f"02:01:00:00:{i >> 8 & 255:02x}:{i & 255:02x}", "status": "DOWN",
                      "fixed_ips": [{"subnet_id": "sub-" + "b" * 32, "ip_address": f"100.64.{i >> 8 & 255}.{i & 255}"}],
                      "security_groups": ["sg-" + "c" * 33], "project_id": "p" * 32, "device_owner": "compute:nova",
                      "allowed_address_pairs": [], "tags": [], "admin_state_up": True, "revision_number": 3}
    return {"type": "snapshot", "revision": 7, "view": {"ports": ports, "networks": {}}}


def test_large_message_equals_json_loads_and_shares_equal_strings() -> None:
    text = json.dumps(_snapshot(3000))
    assert len(text) >= SHARE_STRINGS_ABOVE
    got, want = decode_message(text), json.loads(text)
    assert got == want
    ports = list(got["view"]["ports"].values())
    assert ports[0]["network_id"] is ports[1]["network_id"]
    assert ports[0]["fixed_ips"][0]["subnet_id"] is ports[2999]["fixed_ips"][0]["subnet_id"]
    assert ports[0]["security_groups"][0] == ports[1]["security_groups"][0]     # list items: left as decoded
    plain = list(want["view"]["ports"].values())
    assert plain[0]["network_id"] is not plain[1]["network_id"]                  # what it saves


def test_small_message_is_plain_json() -> None:
    text = json.dumps({"type": "update", "revision": 8, "put": {"ports": {}}, "delete": {}})
    assert len(text) < SHARE_STRINGS_ABOVE
    assert decode_message(text) == json.loads(text)
    assert decode_message(text.encode()) == json.loads(text)


def test_a_view_of_a_few_hundred_ports_is_decoded_without_the_sharing_hook() -> None:
    """A 400-port snapshot (the scale bench's view) is plain `json.loads` (the typed parse shares
    the repeated strings): no per-object Python hook at every agent's restart."""
    text = json.dumps(_snapshot(400))
    assert len(text) < SHARE_STRINGS_ABOVE
    ports = list(decode_message(text)["view"]["ports"].values())
    assert ports[0]["network_id"] == ports[1]["network_id"] and ports[0]["network_id"] is not ports[1]["network_id"]


def test_parsed_ports_share_repeated_ids_and_keep_their_values() -> None:
    raw = json.loads(json.dumps(_snapshot(3)))       # every string its own copy, as from the wire
    view = parse_view(raw["view"])
    a, b, c = view.ports.values()
    assert a.network_id == "net-" + "a" * 32 and a.network_id is b.network_id is c.network_id
    assert a.fixed_ips[0].subnet_id is b.fixed_ips[0].subnet_id
    assert a.security_groups == ("sg-" + "c" * 33,) and a.security_groups[0] is c.security_groups[0]
    assert a.project_id is b.project_id and a.status == "DOWN" and a.device_owner == "compute:nova"
    assert a.host == "h2" and b.host == "h3" and a.host is c.host
    assert a.mac == "02:01:00:00:00:00" and a.id != b.id


def _cloud_snapshot(n: int) -> dict:
    msg = _snapshot(n)
    msg["epoch"] = "e1"
    view = msg["view"]
    view["host"] = {"host": "h1", "underlay_ip": "198.51.100.1"}
    view["hosts"] = {"h2": {"underlay_ip": "198.51.100.2"}, "h3": {"underlay_ip": "198.51.100.3", "gateway": True}}
    view["networks"] = {"net-" + "a" * 32: {"id": "net-" + "a" * 32, "provider:network_type": "vxlan",
                                            "provider:segmentation_id": 5001, "mtu": 1450}}
    view["subnets"] = {"sub-" + "b" * 32: {"id": "sub-" + "b" * 32, "network_id": "net-" + "a" * 32, "ip_version": 4,
                                           "cidr": "100.64.0.0/16", "gateway_ip": "100.64.0.1"}}
    view["extra"] = {"x": [1, {"y": None}]}        # a key this agent does not know: left as decoded
    return msg


def test_typed_decode_of_a_large_snapshot_is_the_parsed_view() -> None:
    """`typed`: each view object parsed as it is decoded (no dict of the whole view); the
    message and the view it gives are those of json.loads and the usual parse."""
    msg = _cloud_snapshot(3000)
    text = json.dumps(msg, indent=1)        # with whitespace between every token (compact is tested below)
    assert len(text) >= SHARE_STRINGS_ABOVE
    got = decode_message(text, typed=True)
    assert {k: v for k, v in got.items() if k != "view"} == {"type": "snapshot", "revision": 7, "epoch": "e1"}
    assert got["view"]["host"] == msg["view"]["host"] and got["view"]["extra"] == msg["view"]["extra"]
    port = got["view"]["ports"]["00000000-1111-4000-8000-000000000000"]
    assert isinstance(port, Port) and port.network_id == "net-" + "a" * 32
    assert got["view"]["hosts"]["h3"] == Host("h3", "198.51.100.3", True)
    compact = json.dumps(msg, separators=(",", ":")).encode()     # bytes, as a server writes it
    assert decode_message(compact, typed=True) == got
    want = apply_message(ViewState(), json.loads(text), consume=True)
    assert apply_message(ViewState(), got, consume=True) == want


def test_typed_decode_of_a_large_update_parses_what_it_puts() -> None:
    msg = {"type": "update", "revision": 9, "put": _snapshot(3000)["view"], "delete": {"ports": ["gone"]}}
    got = decode_message(json.dumps(msg), typed=True)
    assert got["delete"] == {"ports": ["gone"]} and got["revision"] == 9
    assert all(isinstance(p, Port) for p in got["put"]["ports"].values()) and len(got["put"]["ports"]) == 3000


def test_typed_decode_rejects_what_json_rejects() -> None:
    good = json.dumps(_snapshot(3000))
    for bad in (good[:-1], good + "x", good.replace('"ports": {', '"ports": {,', 1),
                good.replace('"revision": 7', '"revision" 7', 1), good.replace('{"id"', '{id"', 1)):
        with pytest.raises(json.JSONDecodeError):
            json.loads(bad)
        with pytest.raises(json.JSONDecodeError):
            decode_message(bad, typed=True)


def test_typed_decode_of_a_small_message_is_plain_json() -> None:
    text = json.dumps(_snapshot(3))
    assert decode_message(text, typed=True) == json.loads(text)
