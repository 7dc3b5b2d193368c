"""The unmodified `openstack` CLI for trunks against a running `vxnet server`: a project member
makes a trunk on her port with a subport (created with the parent's MAC, as VLAN-aware VM
recipes do), adds and removes subports (`trunk set/unset --subport`), lists them, sees
`trunk_details` on the parent; duplicate VLAN ids and in-trunk port deletes are refused; another
project cannot see the trunk."""

from __future__ import annotations

import pytest

from tests.clients.conftest import Cloud


@pytest.fixture(scope="module")
def cli(vxnet_cloud: Cloud) -> Cloud:
    return vxnet_cloud


def test_trunk_lifecycle(cli: Cloud) -> None:
    o = cli.openstack
    o("demo", "network", "create", "tnet-a", "-f", "json")
    o("demo", "subnet", "create", "tsub-a", "--network", "tnet-a", "--subnet-range", "192.0.2.0/24", "-f", "json")
    o("demo", "network", "create", "tnet-b", "-f", "json")
    o("demo", "subnet", "create", "tsub-b", "--network", "tnet-b", "--subnet-range", "198.51.100.0/24", "-f", "json")
    parent = o("demo", "port", "create", "tparent", "--network", "tnet-a", "-f", "json").json()
    sub1 = o("demo", "port", "create", "tsub1", "--network", "tnet-b", "--mac-address", parent["mac_address"],
             "-f", "json").json()
    assert sub1["mac_address"] == parent["mac_address"]
    sub2 = o("demo", "port", "create", "tsub2", "--network", "tnet-b", "-f", "json").json()

    t = o("demo", "network", "trunk", "create", "--parent-port", "tparent", "--subport",
          "port=tsub1,segmentation-type=vlan,segmentation-id=101", "trunk1", "-f", "json").json()
    assert t["name"] == "trunk1" and t["port_id"] == parent["id"]
    subs = o("demo", "network", "subport", "list", "--trunk", "trunk1", "-f", "json").json()
    assert [(s["Port"], s["Segmentation Type"], s["Segmentation ID"]) for s in subs] == [(sub1["id"], "vlan", 101)]

    o("demo", "network", "trunk", "set", "--subport", "port=tsub2,segmentation-type=vlan,segmentation-id=102",
      "trunk1")
    subs = o("demo", "network", "subport", "list", "--trunk", "trunk1", "-f", "json").json()
    assert sorted(s["Segmentation ID"] for s in subs) == [101, 102]
    details = o("demo", "port", "show", "tparent", "-f", "json").json()["trunk_details"]
    assert details["trunk_id"] == t["id"] and len(details["sub_ports"]) == 2
    assert o("demo", "port", "show", "tsub2", "-f", "json").json()["device_owner"] == "trunk:subport"

    o("demo", "port", "create", "tspare", "--network", "tnet-b", "-f", "json")
    dup = o("demo", "network", "trunk", "set", "--subport",
            "port=tspare,segmentation-type=vlan,segmentation-id=101", "trunk1", check=False)
    assert dup.rc != 0 and "already in use" in dup.stderr, dup.stderr
    assert o("demo", "port", "delete", "tsub1", check=False).rc != 0       # in a trunk
    assert o("demo", "port", "delete", "tparent", check=False).rc != 0
    assert o("alt_demo", "network", "trunk", "show", t["id"], check=False).rc != 0   # another project

    o("demo", "network", "trunk", "unset", "--subport", "tsub1", "trunk1")
    subs = o("demo", "network", "subport", "list", "--trunk", "trunk1", "-f", "json").json()
    assert [s["Port"] for s in subs] == [sub2["id"]]
    o("demo", "network", "trunk", "set", "--disable", "--description", "off", "trunk1")
    shown = o("demo", "network", "trunk", "show", "trunk1", "-f", "json").json()
    assert shown["is_admin_state_up"] is False and shown["description"] == "off"
    listed = o("demo", "network", "trunk", "list", "-f", "json").json()
    assert [x["Name"] for x in listed] == ["trunk1"]
    o("demo", "network", "trunk", "delete", "trunk1")
    assert not o("demo", "port", "show", "tparent", "-f", "json").json().get("trunk_details")
    for p in ("tsub1", "tsub2", "tspare", "tparent"):
        o("demo", "port", "delete", p)
    assert cli.server_errors() == []
