"""Trunks over real HTTP: Neutron's shapes (trunk, sub_ports, trunk_details on the parent),
its checks (duplicate VLAN, port in use, parent/subport exclusivity, disabled trunk), its
policy defaults (owner or admin; another project's trunk or port is a 404), subports taking
the parent's binding and following it, and the in-trunk port delete conflicts."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.helpers import assert_error, network, port, subnet


@pytest.fixture(scope="module")
def h(shared_server):
    return shared_server


def _nets(c: httpx.Client) -> tuple[dict[str, Any], dict[str, Any]]:
    a, b = network(c), network(c)
    subnet(c, a, "192.0.2.0/24")
    subnet(c, b, "198.51.100.0/24")
    return a, b


def trunk(c: httpx.Client, parent: str, subs: list[dict[str, Any]] | None = None, **kw: Any) -> httpx.Response:
    return c.post("/trunks", json={"trunk": {"port_id": parent, "sub_ports": subs or [], **kw}})


def sp(pid: str, vid: int) -> dict[str, Any]:
    return {"port_id": pid, "segmentation_type": "vlan", "segmentation_id": vid}


def test_extensions_advertised(h) -> None:
    with h.api("alice") as c:
        aliases = {e["alias"] for e in c.get("/extensions").json()["extensions"]}
    assert {"trunk", "trunk-details"} <= aliases


def test_trunk_lifecycle(h) -> None:
    with h.api("alice") as c:
        a, b = _nets(c)
        parent, s1, s2 = port(c, a), port(c, b), port(c, b)
        r = trunk(c, parent["id"], [sp(s1["id"], 101)], name="t1")
        assert r.status_code == 201, r.text
        t = r.json()["trunk"]
        assert t["port_id"] == parent["id"] and t["name"] == "t1" and t["admin_state_up"] is True
        assert t["sub_ports"] == [sp(s1["id"], 101)] and t["status"] == "DOWN"
        assert {"tags", "created_at", "updated_at", "revision_number", "project_id"} <= set(t)
        p = c.get(f"/ports/{parent['id']}").json()["port"]
        assert p["trunk_details"] == {"trunk_id": t["id"], "sub_ports": [{**sp(s1["id"], 101),
                                                                          "mac_address": s1["mac_address"]}]}
        s = c.get(f"/ports/{s1['id']}").json()["port"]
        assert s["device_owner"] == "trunk:subport" and s["device_id"] == t["id"]

        r = c.put(f"/trunks/{t['id']}/add_subports", json={"sub_ports": [sp(s2["id"], 102)]})
        assert r.status_code == 200, r.text
        assert [x["segmentation_id"] for x in r.json()["sub_ports"]] == [101, 102]
        assert c.put(f"/trunks/{t['id']}/tags/blue").status_code == 201
        assert c.get("/trunks", params={"tags": "blue"}).json()["trunks"][0]["id"] == t["id"]
        got = c.get(f"/trunks/{t['id']}/get_subports")
        assert got.status_code == 200 and len(got.json()["sub_ports"]) == 2
        # duplicate VLAN, the same port twice, an unknown subport to remove
        assert_error(c.put(f"/trunks/{t['id']}/add_subports", json={"sub_ports": [sp(port(c, b)["id"], 101)]}),
                     400, "DuplicateSubPort")
        assert_error(c.put(f"/trunks/{t['id']}/add_subports", json={"sub_ports": [sp(s2["id"], 150)]}),
                     400, "DuplicateSubPort")
        assert_error(c.put(f"/trunks/{t['id']}/remove_subports", json={"sub_ports": [{"port_id": parent["id"]}]}),
                     404, "SubPortNotFound")
        assert_error(c.put(f"/trunks/{t['id']}/add_subports", json={"sub_ports": [sp(port(c, b)["id"], 4095)]}),
                     400)
        # in-trunk ports cannot be deleted
        assert_error(c.delete(f"/ports/{parent['id']}"), 409, "PortInUseAsTrunkParent")
        assert_error(c.delete(f"/ports/{s1['id']}"), 409, "PortInUseAsSubPort")
        # a parent cannot be a subport elsewhere, a subport cannot be a parent
        other = port(c, a)
        assert_error(trunk(c, s1["id"]), 409, "PortInUseAsSubPort")
        assert_error(trunk(c, parent["id"]), 409, "TrunkPortInUse")
        assert_error(trunk(c, other["id"], [sp(parent["id"], 5)]), 409, "PortInUseAsTrunkParent")
        assert_error(trunk(c, other["id"], [sp(s2["id"], 5)]), 409, "PortInUseAsSubPort")
        # nothing half-written by the refused creates
        assert c.get(f"/ports/{other['id']}").json()["port"].get("trunk_details") is None

        r = c.put(f"/trunks/{t['id']}/remove_subports", json={"sub_ports": [{"port_id": s1["id"]}]})
        assert r.status_code == 200 and r.json()["sub_ports"] == [sp(s2["id"], 102)]
        s = c.get(f"/ports/{s1['id']}").json()["port"]
        assert s["device_owner"] == "" and s["device_id"] == ""
        # disabled trunk: no subport changes
        assert c.put(f"/trunks/{t['id']}", json={"trunk": {"admin_state_up": False}}).status_code == 200
        assert_error(c.put(f"/trunks/{t['id']}/add_subports", json={"sub_ports": [sp(s1["id"], 101)]}),
                     409, "TrunkDisabled")
        assert c.delete(f"/trunks/{t['id']}").status_code == 204
        assert c.get(f"/ports/{parent['id']}").json()["port"].get("trunk_details") is None
        assert c.get(f"/ports/{s2['id']}").json()["port"]["device_owner"] == ""
        assert c.delete(f"/ports/{s2['id']}").status_code == 204
        assert_error(c.get(f"/trunks/{t['id']}"), 404, "TrunkNotFound")


def test_port_in_use_cannot_be_subport(h) -> None:
    with h.api("alice") as c:
        a, b = _nets(c)
        parent, used = port(c, a), port(c, b, device_owner="compute:nova", device_id="vm-1")
        assert_error(trunk(c, parent["id"], [sp(used["id"], 7)]), 409, "PortInUse")
        assert c.get(f"/ports/{parent['id']}").json()["port"].get("trunk_details") is None
        assert c.get("/trunks", params={"port_id": parent["id"]}).json()["trunks"] == []


def test_subports_follow_parent_binding(h) -> None:
    with h.api() as c:
        a, b = _nets(c)
        parent, s1 = port(c, a, **{"binding:host_id": "hv-1"}), port(c, b)
        t = trunk(c, parent["id"], [sp(s1["id"], 101)]).json()["trunk"]
        assert c.get(f"/ports/{s1['id']}").json()["port"]["binding:host_id"] == "hv-1"
        assert c.put(f"/ports/{parent['id']}", json={"port": {"binding:host_id": "hv-2"}}).status_code == 200
        assert c.get(f"/ports/{s1['id']}").json()["port"]["binding:host_id"] == "hv-2"
        # removed subports are unbound; deleting a trunk with a bound parent is allowed (the
        # agent can untrunk a bound port)
        c.put(f"/trunks/{t['id']}/remove_subports", json={"sub_ports": [{"port_id": s1["id"]}]})
        assert c.get(f"/ports/{s1['id']}").json()["port"]["binding:host_id"] == ""
        assert c.delete(f"/trunks/{t['id']}").status_code == 204


def test_policy_other_project(h) -> None:
    with h.api("alice") as ca, h.api("bob") as cb:
        a, b = _nets(ca)
        parent, s1 = port(ca, a), port(ca, b)
        t = trunk(ca, parent["id"]).json()["trunk"]
        # bob sees nothing of alice's trunk and cannot name her ports
        assert_error(cb.get(f"/trunks/{t['id']}"), 404, "TrunkNotFound")
        assert t["id"] not in {x["id"] for x in cb.get("/trunks").json()["trunks"]}
        assert_error(cb.put(f"/trunks/{t['id']}/add_subports", json={"sub_ports": [sp(s1["id"], 9)]}), 404)
        assert_error(cb.delete(f"/trunks/{t['id']}"), 404)
        nb = network(cb)
        subnet(cb, nb, "203.0.113.0/24")
        mine = port(cb, nb)
        assert_error(trunk(cb, parent["id"]), 404, "PortNotFound")
        assert_error(trunk(cb, mine["id"], [sp(s1["id"], 9)]), 404, "PortNotFound")
        assert c_free(ca, s1["id"])
        # alice cannot put bob's port into her trunk either
        assert_error(ca.put(f"/trunks/{t['id']}/add_subports", json={"sub_ports": [sp(mine["id"], 9)]}), 404)
        assert cb.get(f"/ports/{mine['id']}").json()["port"]["device_owner"] == ""


def c_free(c: httpx.Client, pid: str) -> bool:
    return c.get(f"/ports/{pid}").json()["port"]["device_owner"] == ""


def test_network_owner_cannot_take_another_projects_port(h) -> None:
    """Alice sees bob's port on her network (Neutron lets a network's owner), but cannot make it
    her trunk's subport or parent: 403, and bob's port is untouched."""
    with h.api("alice") as ca, h.api("bob") as cb, h.api() as admin:
        a, b = _nets(ca)
        bob_project = cb.get("/security-groups").json()["security_groups"][0]["project_id"]
        bobs = admin.post("/ports", json={"port": {"network_id": b["id"], "project_id": bob_project}}).json()["port"]
        assert ca.get(f"/ports/{bobs['id']}").status_code == 200
        parent = port(ca, a)
        assert_error(trunk(ca, parent["id"], [sp(bobs["id"], 8)]), 403, "PolicyNotAuthorized")
        assert_error(trunk(ca, bobs["id"]), 403, "PolicyNotAuthorized")
        t = trunk(ca, parent["id"]).json()["trunk"]
        assert_error(ca.put(f"/trunks/{t['id']}/add_subports", json={"sub_ports": [sp(bobs["id"], 8)]}), 403)
        after = admin.get(f"/ports/{bobs['id']}").json()["port"]
        assert after["device_owner"] == "" and after["device_id"] == "" and after["revision_number"] == bobs[
            "revision_number"]
        assert admin.get(f"/trunks/{t['id']}").json()["trunk"]["sub_ports"] == []



def test_trunk_details_cannot_be_written_through_the_port_api(h) -> None:
    """The agents read a parent's subports from `trunk_details`: only the trunk API writes it."""
    with h.api("alice") as c:
        a, b = _nets(c)
        p, other = port(c, a), port(c, b)
        forged = {"trunk_id": "x", "sub_ports": [sp(other["id"], 5)]}
        assert_error(c.put(f"/ports/{p['id']}", json={"port": {"trunk_details": forged}}), 400)
        assert_error(c.post("/ports", json={"port": {"network_id": a["id"], "trunk_details": forged}}), 400)
        assert c.get(f"/ports/{p['id']}").json()["port"].get("trunk_details") is None


def test_subport_device_cannot_be_changed_by_its_owner(h) -> None:
    """While a trunk holds a subport, its owner may not take it over through the port API
    (device_owner, device_id, a binding of its own): 409 PortInUseAsSubPort naming the trunk,
    and the port is unchanged; other attributes still change. Removed from the
    trunk, the port is free again."""
    with h.api("alice") as c, h.api() as admin:
        a, b = _nets(c)
        parent, s1 = port(c, a, **{"binding:host_id": ""}), port(c, b)
        t = trunk(c, parent["id"], [sp(s1["id"], 101)]).json()["trunk"]
        before = c.get(f"/ports/{s1['id']}").json()["port"]
        for change in ({"device_owner": "compute:nova"}, {"device_owner": ""}, {"device_id": "vm-1"},
                       {"device_id": ""}, {"device_owner": "compute:nova", "device_id": "vm-1"}):
            assert_error(c.put(f"/ports/{s1['id']}", json={"port": change}), 409, "PortInUseAsSubPort", t["id"])
        # a binding of its own: binding:host_id is admin/service only anyway
        assert_error(c.put(f"/ports/{s1['id']}", json={"port": {"binding:host_id": "hv-9"}}), 403,
                     "PolicyNotAuthorized")
        after = c.get(f"/ports/{s1['id']}").json()["port"]
        assert after["revision_number"] == before["revision_number"]
        assert (after["device_owner"], after["device_id"]) == ("trunk:subport", t["id"])
        # the same values are no change; other attributes change as usual
        r = c.put(f"/ports/{s1['id']}", json={"port": {"device_owner": "trunk:subport", "device_id": t["id"],
                                                        "name": "renamed"}})
        assert r.status_code == 200, r.text
        assert r.json()["port"]["name"] == "renamed"
        assert admin.get(f"/trunks/{t['id']}").json()["trunk"]["sub_ports"] == [sp(s1["id"], 101)]
        # removed from the trunk, the owner may use it elsewhere
        c.put(f"/trunks/{t['id']}/remove_subports", json={"sub_ports": [{"port_id": s1["id"]}]})
        r = c.put(f"/ports/{s1['id']}", json={"port": {"device_owner": "compute:nova", "device_id": "vm-1"}})
        assert r.status_code == 200, r.text


def test_forged_subport_owner_locks_nothing(h) -> None:
    """A port that only claims `trunk:subport` of a trunk that does not hold it is no subport:
    it changes and deletes freely (the trunk's own record decides)."""
    with h.api("alice") as c:
        a, b = _nets(c)
        parent = port(c, a)
        t = trunk(c, parent["id"]).json()["trunk"]
        fake = port(c, b, device_owner="trunk:subport", device_id=t["id"])
        r = c.put(f"/ports/{fake['id']}", json={"port": {"device_owner": "compute:nova", "device_id": "vm-2"}})
        assert r.status_code == 200, r.text
        c.put(f"/ports/{fake['id']}", json={"port": {"device_owner": "trunk:subport", "device_id": t["id"]}})
        assert c.delete(f"/ports/{fake['id']}").status_code == 204


def test_member_cannot_create_a_trunk_for_another_project(h) -> None:
    """A member naming another project (`project_id` / `tenant_id`) gets neutron-lib's 400, as
    for every other resource, instead of a trunk silently made its own; nothing is created."""
    with h.api("alice") as ca, h.api("bob") as cb:
        alice_project = ca.get("/security-groups").json()["security_groups"][0]["project_id"]
        a, b = _nets(cb)
        parent, s1 = port(cb, a), port(cb, b)
        for key in ("project_id", "tenant_id"):
            assert_error(trunk(cb, parent["id"], [sp(s1["id"], 5)], **{key: alice_project}), 400, "HTTPBadRequest",
                         "other than the authenticated project")
        assert cb.get("/trunks", params={"port_id": parent["id"]}).json()["trunks"] == []
        assert c_free(cb, s1["id"]) and cb.get(f"/ports/{parent['id']}").json()["port"].get("trunk_details") is None
        own = cb.get("/security-groups").json()["security_groups"][0]["project_id"]
        t = trunk(cb, parent["id"], project_id=own)
        assert t.status_code == 201 and t.json()["trunk"]["project_id"] == own, t.text
