"""The host form of every kind but ports (services/host_view.py `host_form`): what hosts are
shown of networks, subnets, routers, groups, rules, floating IPs and QoS policies. It must carry
everything an agent computes on (the typed model parses it as it parses the whole object), and
nothing else: a member's megabyte of tags or description on a network reaches no host."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vxnet.model.resources import READ_FIELDS, parse
from vxnet.services.host_view import full_view, host_form
from vxnet.services.view_index import ViewIndex

_text = st.text(alphabet="abcdef0123456789-", max_size=8)
_opt = st.one_of(st.none(), _text)
_ip = st.sampled_from(["192.0.2.5", "198.51.100.7", "2001:db8::9", "203.0.113.1"])
_route = st.fixed_dictionaries({"destination": st.sampled_from(["192.0.2.0/24", "0.0.0.0/0"]), "nexthop": _ip})
_noise = {"name": _text, "description": _text, "tags": st.lists(_text, max_size=3), "created_at": _text,
          "updated_at": _text, "project_id": _text, "tenant_id": _text, "shared": st.booleans(),
          "_rbac": st.lists(st.fixed_dictionaries({"id": _text}), max_size=2)}

KINDS: dict[str, dict[str, Any]] = {
    "networks": {"provider:network_type": st.sampled_from(["vxlan", "flat", "vlan"]),
                 "provider:segmentation_id": st.one_of(st.none(), st.integers(1, 5000)),
                 "provider:physical_network": _opt, "mtu": st.one_of(st.none(), st.integers(0, 9000)),
                 "router:external": st.booleans(), "qos_policy_id": _opt, "ipv4_address_scope": _opt,
                 "ipv6_address_scope": _opt, "subnets": st.lists(_text, max_size=2), "status": _text,
                 "revision_number": st.integers(0, 9)},
    "subnets": {"network_id": _text, "cidr": st.sampled_from(["192.0.2.0/24", "2001:db8::/64"]),
                "ip_version": st.sampled_from([4, 6]), "gateway_ip": st.one_of(st.none(), _ip),
                "enable_dhcp": st.sampled_from([True, False, None]), "dns_nameservers": st.lists(_ip, max_size=2),
                "host_routes": st.lists(_route, max_size=2), "ipv6_ra_mode": _opt, "ipv6_address_mode": _opt,
                "allocation_pools": st.lists(st.fixed_dictionaries({"start": _ip, "end": _ip}), max_size=2),
                "subnetpool_id": _opt, "revision_number": st.integers(0, 9)},
    "routers": {"admin_state_up": st.sampled_from([True, False, None]), "routes": st.lists(_route, max_size=2),
                "external_gateway_info": st.one_of(st.none(), st.fixed_dictionaries(
                    {"network_id": _text}, optional={"enable_snat": st.sampled_from([True, False, None])})),
                "status": _text, "flavor_id": _opt},
    "security_groups": {"stateful": st.sampled_from([True, False, None]), "revision_number": st.integers(0, 9)},
    "security_group_rules": {"security_group_id": _text, "direction": st.sampled_from(["ingress", "egress"]),
                             "ethertype": st.sampled_from(["IPv4", "IPv6"]),
                             "protocol": st.one_of(st.none(), st.sampled_from(["tcp", "6", "icmp"])),
                             "port_range_min": st.one_of(st.none(), st.integers(1, 99)),
                             "port_range_max": st.one_of(st.none(), st.integers(1, 99)),
                             "normalized_cidr": st.one_of(st.none(), st.just("192.0.2.0/24")),
                             "remote_ip_prefix": st.one_of(st.none(), st.just("192.0.2.1/24")),
                             "remote_group_id": _opt, "revision_number": st.integers(0, 9)},
    "floatingips": {"floating_ip_address": _ip, "fixed_ip_address": st.one_of(st.none(), _ip), "router_id": _opt,
                    "port_id": _opt, "status": st.sampled_from(["ACTIVE", "DOWN"]),
                    "revision_number": st.integers(0, 9), "floating_network_id": _text, "dns_name": _text},
    "qos_policies": {"rules": st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["bandwidth_limit", "dscp_marking"])},
        optional={"direction": st.sampled_from(["ingress", "egress"]), "max_kbps": st.integers(0, 9),
                  "dscp_mark": st.integers(0, 63), "id": _text}), max_size=2)},
}

objects = st.sampled_from(sorted(KINDS)).flatmap(
    lambda kind: st.tuples(st.just(kind), st.fixed_dictionaries({"id": _text}, optional={**KINDS[kind], **_noise})))


@settings(max_examples=400, deadline=None)
@given(objects)
def test_the_model_reads_a_host_form_as_the_whole_object(kind_obj: tuple[str, dict[str, Any]]) -> None:
    kind, obj = kind_obj
    shown = host_form(kind, obj)
    assert parse(kind, obj["id"], shown) == parse(kind, obj["id"], obj)
    assert set(shown) <= set(READ_FIELDS[kind])
    assert not set(shown) & set(_noise)


def test_every_kind_but_ports_has_a_host_form() -> None:
    from vxnet.model.resources import PARSERS
    assert set(READ_FIELDS) == set(PARSERS) - {"ports"} == set(KINDS)


MB = 1 << 20


def _world() -> tuple[ViewIndex, dict[str, dict[str, dict[str, Any]]]]:
    big = {"id": "n", "name": "net", "description": "d" * (MB // 2), "tags": [f"t{i:07d}" for i in range(MB // 20)],
           "provider:network_type": "vxlan", "provider:segmentation_id": 1001, "mtu": 1450, "shared": True}
    objects: dict[str, dict[str, dict[str, Any]]] = {
        "networks": {"n": big},
        "subnets": {"s": {"id": "s", "network_id": "n", "cidr": "192.0.2.0/24", "ip_version": 4,
                          "gateway_ip": "192.0.2.1", "description": "x" * MB, "tags": ["t"] * 1000}},
        "ports": {f"p{h}": {"id": f"p{h}", "network_id": "n", "binding:host_id": f"h{h}", "device_owner": "compute:nova",
                            "device_id": "vm", "security_groups": [],
                            "fixed_ips": [{"subnet_id": "s", "ip_address": f"192.0.2.{h + 2}"}]} for h in range(3)},
    }
    index = ViewIndex()
    index.load(objects, {})
    for h in range(3):
        index.track(f"h{h}")
    return index, objects


def test_a_megabyte_of_tags_and_description_reaches_no_host() -> None:
    """A network and a subnet each with ~1 MB of tags and description: every host's view of them
    (snapshot, the reference `full_view`, and an update) holds a few hundred bytes. Before, every
    host on the network received and parsed the whole megabyte on each change."""
    index, objects = _world()
    for h in ("h0", "h1", "h2"):
        sections = {k: dict(zip(ids, values, strict=True)) for k, ids, values, _ in index.snapshot_items(h)}
        for coll in ("networks", "subnets"):
            assert len(json.dumps(sections[coll])) < 400, coll
            assert len(json.dumps(full_view(objects, {}, h)[coll])) < 400, coll
            assert index.snapshot(h)[coll] == sections[coll]
    new = {**objects["networks"]["n"], "mtu": 1400}
    messages = index.apply([("networks", "n", new)])
    assert sorted(messages) == ["h0", "h1", "h2"]
    for msg in messages.values():
        assert len(json.dumps(msg.wire())) < 400


def test_a_change_to_tags_or_description_wakes_no_host() -> None:
    index, objects = _world()
    net = objects["networks"]["n"]
    assert index.apply([("networks", "n", {**net, "tags": ["x"], "description": "", "name": "new"})]) == {}
    sub = objects["subnets"]["s"]
    assert index.apply([("subnets", "s", {**sub, "description": "y", "updated_at": "now"})]) == {}
