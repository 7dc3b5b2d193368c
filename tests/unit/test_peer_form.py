"""The peer form of a port (services/host_view.py `peer_copy`): what hosts it is not bound to
are shown. It must carry everything an agent computes on, i.e. the typed model parses it as it
parses the whole port, less the port's own host's business (status, revision); and it must
drop what no agent reads, so a change to only that reaches no peer."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vxnet.model.resources import _port
from vxnet.services.host_view import PEER_HIDDEN, peer_copy
from vxnet.services.view_index import ViewIndex

_text = st.text(alphabet="abcdef0123456789-", max_size=8)
_ip = st.sampled_from(["192.0.2.5", "198.51.100.7", "2001:db8::9", "203.0.113.1"])
_fixed = st.fixed_dictionaries({"subnet_id": _text, "ip_address": _ip})
_pair = st.fixed_dictionaries({"ip_address": _ip}, optional={"mac_address": st.sampled_from(["FA:16:3E:00:00:01", ""])})
_details = st.one_of(st.none(), st.just({}), st.fixed_dictionaries(
    {}, optional={"ha_standby_hosts": st.lists(_text, max_size=2), "port_filter": st.booleans(),
                  "bridge_name": _text}))
_trunk = st.one_of(st.none(), st.fixed_dictionaries({"trunk_id": _text, "sub_ports": st.lists(
    st.fixed_dictionaries({"port_id": _text, "segmentation_type": st.just("vlan"),
                           "segmentation_id": st.integers(0, 5000)}), max_size=2)}))

ports = st.fixed_dictionaries(
    {"id": _text, "network_id": _text},
    optional={
        "name": _text, "description": _text, "tags": st.lists(_text, max_size=2),
        "mac_address": st.sampled_from(["fa:16:3e:00:00:02", "FA:16:3E:0A:0B:0C"]),
        "binding:host_id": _text, "admin_state_up": st.booleans(),
        "device_owner": st.sampled_from(["compute:nova", "network:router_gateway", "network:dhcp",
                                         "trunk:subport", ""]),
        "device_id": _text, "fixed_ips": st.lists(_fixed, max_size=3),
        "allowed_address_pairs": st.lists(_pair, max_size=2), "security_groups": st.lists(_text, max_size=3),
        "port_security_enabled": st.sampled_from([True, False, None]), "dns_name": _text,
        "status": st.sampled_from(["ACTIVE", "DOWN", "BUILD"]), "revision_number": st.integers(0, 9),
        "qos_policy_id": st.one_of(st.none(), _text), "trunk_details": _trunk,
        "project_id": _text, "tenant_id": _text, "binding:vif_details": _details,
        "binding:profile": st.just({}), "binding:vif_type": st.sampled_from(["tap", "binding_failed"]),
        "binding:vnic_type": st.just("normal"), "created_at": _text, "updated_at": _text,
    })


@settings(max_examples=200, deadline=None)
@given(ports)
def test_the_model_reads_a_peer_form_as_the_whole_port(port: dict[str, Any]) -> None:
    peer = peer_copy(port)
    assert _port(peer) == dataclasses.replace(_port(port), status=None, revision=None)
    assert not set(peer) & set(PEER_HIDDEN)
    assert port == port | peer   # a copy: the stored port is untouched, values shared


def test_a_peer_form_drops_what_no_agent_reads() -> None:
    port = {"id": "p", "network_id": "n", "name": "vm-1", "description": "d", "tags": ["t"],
            "project_id": "pr", "tenant_id": "pr", "binding:vif_details": {"port_filter": True},
            "binding:profile": {}, "binding:vif_type": "tap", "binding:vnic_type": "normal",
            "created_at": "x", "updated_at": "y", "status": "ACTIVE", "revision_number": 3}
    assert peer_copy(port) == {"id": "p", "network_id": "n", "project_id": "pr"}
    gw = {"id": "g", "network_id": "n", "tenant_id": "pr", "binding:vif_details": {"ha_standby_hosts": ["h2"]}}
    assert peer_copy(gw) == gw   # standby hosts are read; tenant_id stands in for a missing project_id


def _index() -> tuple[ViewIndex, dict[str, Any]]:
    index = ViewIndex()
    objects: dict[str, dict[str, dict[str, Any]]] = {"networks": {"n": {"id": "n"}}, "ports": {}}
    for h in range(4):
        objects["ports"][f"p{h}"] = {"id": f"p{h}", "network_id": "n", "binding:host_id": f"h{h}", "name": f"vm{h}",
                                     "device_owner": "compute:nova", "device_id": "vm", "security_groups": [],
                                     "fixed_ips": [{"subnet_id": "s", "ip_address": f"192.0.2.{h + 2}"}]}
    index.load(objects, {})
    for h in range(4):
        index.track(f"h{h}")
    return index, objects["ports"]["p1"]


def test_a_rename_or_new_tags_reach_only_the_ports_own_host() -> None:
    index, port = _index()
    renamed = dict(port, name="web-1", tags=["blue"], description="new", revision_number=2)
    out = index.apply([("ports", "p1", renamed)])
    assert set(out) == {"h1"} and out["h1"].put == {"ports": {"p1": renamed}}
    assert index.snapshot("h0")["ports"]["p1"] == peer_copy(renamed)


def test_a_change_an_agent_computes_on_reaches_every_holder() -> None:
    index, port = _index()
    moved = dict(port, fixed_ips=[{"subnet_id": "s", "ip_address": "192.0.2.99"}], name="x")
    out = index.apply([("ports", "p1", moved)])
    assert set(out) == {"h0", "h1", "h2", "h3"}
    assert out["h0"].put == {"ports": {"p1": peer_copy(moved)}} and "name" not in out["h0"].put["ports"]["p1"]
