"""/v2.0/ports over real HTTP: shape and defaults, fixed IP allocation (pools, requested,
in use, exhaustion, updates), MACs, port binding and status, security groups and port
security, allowed address pairs, filters, the isolation/policy matrix, service ports, and
that failed requests leak nothing (the store's IPAM keys always match the ports' addresses).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import httpx
import pytest

from tests.api.helpers import assert_error, network, port, subnet
from vxnet.config import project_id_for
from vxnet.services.repo import Repo

TENANT_A = project_id_for("tenant-a")
TENANT_B = project_id_for("tenant-b")
MAC = re.compile(r"^fa:16:3e(:[0-9a-f]{2}){3}$")
BINDING_HIDDEN = ("binding:host_id", "binding:vif_type", "binding:vif_details", "binding:profile")






def ips(p: dict[str, Any]) -> list[str]:
    return [ip["ip_address"] for ip in p["fixed_ips"]]


def netsub(c: httpx.Client, cidr: str = "192.0.2.0/24", **attrs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    net = network(c, **attrs)
    return net, subnet(c, net, cidr)


def ipam_consistent(h: Any) -> None:
    """The store's IP/MAC claims are exactly the addresses the ports hold (no leak, no orphan)."""
    admin = h.api("admin")
    ports = admin.get("/ports").json()["ports"]
    want_ips = {(ip["subnet_id"], ip["ip_address"]) for p in ports for ip in p["fixed_ips"]}
    want_macs = {(p["network_id"], p["mac_address"]) for p in ports}
    kvs, _ = h.store.range("/vxnet/ipam/")
    have_ips = {tuple(kv.key.split("/")[3:5]) for kv in kvs}
    kvs, _ = h.store.range("/vxnet/mac/")
    have_macs = {tuple(kv.key.split("/")[3:5]) for kv in kvs}
    assert have_ips == want_ips
    assert have_macs == want_macs


# --- shape and defaults --------------------------------------------------------------------------


def test_create_defaults_member_view(shared_server) -> None:
    alice = shared_server.api("alice")
    net, sub = netsub(alice)
    p = port(alice, net, name="p1")
    uuid.UUID(p["id"])
    assert MAC.match(p["mac_address"]), p["mac_address"]
    assert p["fixed_ips"] == [{"subnet_id": sub["id"], "ip_address": "192.0.2.2"}]
    assert p["status"] == "DOWN" and p["admin_state_up"] is True
    assert p["device_id"] == "" and p["device_owner"] == "" and p["name"] == "p1" and p["description"] == ""
    assert p["project_id"] == p["tenant_id"] == TENANT_A and p["network_id"] == net["id"]
    assert p["port_security_enabled"] is True and p["allowed_address_pairs"] == []
    assert p["binding:vnic_type"] == "normal"
    for k in BINDING_HIDDEN:
        assert k not in p
    assert p["revision_number"] == 0 and p["tags"] == []
    groups = alice.get("/security-groups", params={"name": "default"}).json()["security_groups"]
    assert [g["id"] for g in groups] == p["security_groups"]
    assert alice.get(f"/ports/{p['id']}").json()["port"] == p
    second = port(alice, net)
    assert ips(second) == ["192.0.2.3"] and second["mac_address"] != p["mac_address"]
    assert second["security_groups"] == p["security_groups"]  # one default group per project


def test_admin_view_has_binding_attributes(shared_server) -> None:
    admin = shared_server.api("admin")
    net, _ = netsub(admin)
    p = port(admin, net)
    assert p["binding:host_id"] == "" and p["binding:vif_type"] == "unbound"
    assert p["binding:vif_details"] == {} and p["binding:profile"] == {}
    bound = port(admin, net, **{"binding:host_id": "host-1", "binding:profile": {"k": "v"}})
    assert bound["binding:host_id"] == "host-1" and bound["binding:vif_type"] == "binding_failed"  # no agent there
    assert bound["binding:profile"] == {"k": "v"} and bound["status"] == "DOWN"


def test_port_on_network_without_subnets_has_no_ips(shared_server) -> None:
    alice = shared_server.api("alice")
    net = network(alice)
    assert port(alice, net)["fixed_ips"] == []


# --- fixed IPs -----------------------------------------------------------------------------------


def test_requested_fixed_ips(shared_server) -> None:
    alice = shared_server.api("alice")
    net, sub = netsub(alice)
    sub2 = subnet(alice, net, "198.51.100.0/24")
    p = port(alice, net, fixed_ips=[{"ip_address": "192.0.2.50"}])
    assert p["fixed_ips"] == [{"subnet_id": sub["id"], "ip_address": "192.0.2.50"}]
    p = port(alice, net, fixed_ips=[{"subnet_id": sub2["id"]}])
    assert p["fixed_ips"] == [{"subnet_id": sub2["id"], "ip_address": "198.51.100.2"}]
    p = port(alice, net, fixed_ips=[{"subnet_id": sub2["id"], "ip_address": "198.51.100.200"},
                                    {"subnet_id": sub["id"]}])
    assert ips(p) == ["198.51.100.200", "192.0.2.2"]
    # outside the pools but inside the CIDR is allowed when asked for explicitly
    subnet_small = subnet(alice, network(alice), "203.0.113.0/24",
                          allocation_pools=[{"start": "203.0.113.10", "end": "203.0.113.20"}])
    p = port(alice, {"id": subnet_small["network_id"]}, fixed_ips=[{"ip_address": "203.0.113.99"}])
    assert ips(p) == ["203.0.113.99"]


def test_fixed_ip_errors_leave_nothing_behind(server) -> None:
    alice = server.api("alice")
    net, sub = netsub(alice)
    other_net, other_sub = netsub(alice, "198.51.100.0/24")
    taken = port(alice, net, fixed_ips=[{"ip_address": "192.0.2.10"}])
    cases = [
        ([{"ip_address": "192.0.2.10"}], 409, "IpAddressAlreadyAllocated", "IP address 192.0.2.10 already allocated"),
        ([{"subnet_id": sub["id"], "ip_address": "192.0.2.10"}], 409, "IpAddressAlreadyAllocated", None),
        ([{"ip_address": "198.51.100.7"}], 400, "InvalidIpForNetwork", "is not a valid IP for any of the subnets"),
        ([{"subnet_id": sub["id"], "ip_address": "198.51.100.7"}], 400, "InvalidIpForSubnet",
         "IP address 198.51.100.7 is not a valid IP for the specified subnet."),
        ([{"subnet_id": sub["id"], "ip_address": "192.0.2.0"}], 400, "InvalidIpForSubnet", None),
        ([{"subnet_id": sub["id"], "ip_address": "192.0.2.255"}], 400, "InvalidIpForSubnet", None),
        ([{"subnet_id": other_sub["id"]}], 400, "InvalidInput", "because fixed_ips included invalid subnet"),
        ([{"subnet_id": str(uuid.uuid4())}], 400, "InvalidInput", None),
        ([{"ip_address": "192.0.2.300"}], 400, None, "not a valid IP address"),
        ([{"ip_address": 12}], 400, None, None),
        ([{"subnet_id": "nope"}], 400, None, None),
        ([{}], 400, None, None),
        ([{"ip_address": "192.0.2.20", "extra": 1}], 400, None, None),
        ("192.0.2.20", 400, None, None),
        # the first address is fine, the second in use: the first must not stay claimed
        ([{"ip_address": "192.0.2.30"}, {"ip_address": "192.0.2.10"}], 409, "IpAddressAlreadyAllocated", None),
    ]
    for fixed, status, type_, message in cases:
        r = alice.post("/ports", json={"port": {"network_id": net["id"], "fixed_ips": fixed}})
        assert_error(r, status, type_, message)
    assert [p["id"] for p in alice.get("/ports", params={"network_id": net["id"]}).json()["ports"]] == [taken["id"]]
    assert ips(port(alice, net, fixed_ips=[{"ip_address": "192.0.2.30"}])) == ["192.0.2.30"]
    assert port(alice, other_net)["fixed_ips"][0]["ip_address"] == "198.51.100.2"
    ipam_consistent(server)


def test_exhaustion_is_409_and_delete_frees(server) -> None:
    alice = server.api("alice")
    net, sub = netsub(alice, "192.0.2.0/29")  # .1 gateway, .2-.6 usable
    made = [port(alice, net) for _ in range(5)]
    assert sorted(ips(p)[0] for p in made) == [f"192.0.2.{i}" for i in range(2, 7)]
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"]}}), 409, "IpAddressGenerationFailure",
                 f"No more IP addresses available on network {net['id']}.")
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "fixed_ips": [{"subnet_id": sub["id"]}]}}),
                 409, "IpAddressGenerationFailure")
    assert alice.delete(f"/ports/{made[2]['id']}").status_code == 204
    assert ips(port(alice, net)) == [ips(made[2])[0]]
    ipam_consistent(server)


def test_update_fixed_ips_releases_and_claims_in_one_step(server) -> None:
    alice = server.api("alice")
    net, sub = netsub(alice)
    p = port(alice, net, fixed_ips=[{"ip_address": "192.0.2.10"}])
    other = port(alice, net, fixed_ips=[{"ip_address": "192.0.2.11"}])
    url = f"/ports/{p['id']}"
    # keep .10 (named by subnet only), add .12
    r = alice.put(url, json={"port": {"fixed_ips": [{"subnet_id": sub["id"]}, {"ip_address": "192.0.2.12"}]}})
    assert r.status_code == 200, r.text
    assert ips(r.json()["port"]) == ["192.0.2.10", "192.0.2.12"]
    assert r.json()["port"]["revision_number"] == p["revision_number"] + 1
    # move to .20 only: .10 and .12 are released
    r = alice.put(url, json={"port": {"fixed_ips": [{"ip_address": "192.0.2.20"}]}})
    assert ips(r.json()["port"]) == ["192.0.2.20"]
    assert ips(port(alice, net, fixed_ips=[{"ip_address": "192.0.2.10"}])) == ["192.0.2.10"]
    # a failed update (address in use) changes nothing and leaks nothing
    assert_error(alice.put(url, json={"port": {"fixed_ips": [{"ip_address": "192.0.2.21"}, {"ip_address": "192.0.2.11"}]}}),
                 409, "IpAddressAlreadyAllocated")
    assert ips(alice.get(url).json()["port"]) == ["192.0.2.20"]
    assert ips(alice.get(f"/ports/{other['id']}").json()["port"]) == ["192.0.2.11"]
    # no addresses at all
    assert alice.put(url, json={"port": {"fixed_ips": []}}).json()["port"]["fixed_ips"] == []
    ipam_consistent(server)


# --- MACs ----------------------------------------------------------------------------------------


def test_mac_addresses(server) -> None:
    alice, admin = server.api("alice"), server.api("admin")
    net, _ = netsub(alice)
    p = port(alice, net, mac_address="FA:16:3E:00:00:01")
    assert p["mac_address"] == "fa:16:3e:00:00:01"
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "mac_address": "fa:16:3e:00:00:01"}}),
                 409, "MacAddressInUse", "The mac address fa:16:3e:00:00:01 is in use.")
    for bad in ("fa:16:3e:00:00", "zz:16:3e:00:00:01", "01:00:5e:00:00:01", "00:00:00:00:00:00", 5):
        assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "mac_address": bad}}), 400,
                     message="mac_address")
    # the same MAC on another network is fine
    assert port(alice, network(alice), mac_address="fa:16:3e:00:00:01")["mac_address"] == "fa:16:3e:00:00:01"
    # only admins change a MAC; the old one is released
    assert_error(alice.put(f"/ports/{p['id']}", json={"port": {"mac_address": "fa:16:3e:00:00:02"}}), 403)
    r = admin.put(f"/ports/{p['id']}", json={"port": {"mac_address": "fa:16:3e:00:00:02"}})
    assert r.status_code == 200 and r.json()["port"]["mac_address"] == "fa:16:3e:00:00:02"
    assert port(alice, net, mac_address="fa:16:3e:00:00:01")["mac_address"] == "fa:16:3e:00:00:01"
    assert alice.delete(f"/ports/{p['id']}").status_code == 204
    assert port(alice, net, mac_address="fa:16:3e:00:00:02")["mac_address"] == "fa:16:3e:00:00:02"
    ipam_consistent(server)


# --- binding and status --------------------------------------------------------------------------


def test_binding_is_admin_only_and_status_is_kept(server) -> None:
    alice, admin = server.api("alice"), server.api("admin")
    net, _ = netsub(alice)
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "binding:host_id": "h1"}}), 403,
                 "PolicyNotAuthorized")
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "binding:profile": {}}}), 403)
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "binding:vnic_type": "weird"}}), 400)
    p = port(alice, net, **{"binding:vnic_type": "normal"})
    assert_error(alice.put(f"/ports/{p['id']}", json={"port": {"binding:host_id": "h1"}}), 403)
    r = admin.put(f"/ports/{p['id']}", json={"port": {"binding:host_id": "h1"}})
    assert r.status_code == 200
    assert r.json()["port"]["binding:vif_type"] == "binding_failed" and r.json()["port"]["status"] == "DOWN"
    # the host agent reports the port up (through the store, as the agent's module does)
    repo = Repo(server.store)

    def activate(uow: Any) -> None:
        obj = uow.get("ports", p["id"])
        obj["status"] = "ACTIVE"
        uow.put("ports", obj)

    repo.transact(activate)
    r = alice.put(f"/ports/{p['id']}", json={"port": {"name": "renamed", "admin_state_up": False}})
    assert r.json()["port"]["status"] == "ACTIVE" and r.json()["port"]["name"] == "renamed"
    r = admin.put(f"/ports/{p['id']}", json={"port": {"binding:host_id": "h1", "name": "same-host"}})
    assert r.json()["port"]["status"] == "ACTIVE"
    r = admin.put(f"/ports/{p['id']}", json={"port": {"binding:host_id": "h2"}})
    assert r.json()["port"]["status"] == "DOWN" and r.json()["port"]["binding:host_id"] == "h2"
    r = admin.put(f"/ports/{p['id']}", json={"port": {"binding:host_id": ""}})
    assert r.json()["port"]["binding:vif_type"] == "unbound"
    assert_error(alice.put(f"/ports/{p['id']}", json={"port": {"status": "ACTIVE"}}), 400, message="read-only")
    listed = admin.get("/ports", params={"binding:host_id": "h2"}).json()["ports"]
    assert listed == []


# --- security groups and port security -----------------------------------------------------------


def test_binding_fails_without_a_live_agent_until_one_registers(tmp_path) -> None:
    """Neutron (ML2): binding a port to a host with no live agent gives `binding_failed`; once an
    agent on that host is alive the port is bound (`tap`). A host with a live agent binds at
    once; a bound port stays bound when its agent goes away; unbinding gives `unbound`."""
    import os

    from tests.api.test_host_view import agent_client, start_agent_server
    h = start_agent_server(os.path.join(tmp_path, "vxnet.db"))
    try:
        admin, c = h.api("admin"), agent_client(h)
        net, _ = netsub(admin)
        late = port(admin, net, **{"binding:host_id": "hv-late"})
        moved = port(admin, net)
        assert late["binding:vif_type"] == "binding_failed" and late["status"] == "DOWN"
        r = admin.put(f"/ports/{moved['id']}", json={"port": {"binding:host_id": "hv-late"}})
        assert r.json()["port"]["binding:vif_type"] == "binding_failed"
        # a failed binding is not a bound port: its MAC may still change (Neutron's PortBound rule)
        r = admin.put(f"/ports/{moved['id']}", json={"port": {"mac_address": "fa:16:3e:00:aa:01"}})
        assert r.status_code == 200 and r.json()["port"]["mac_address"] == "fa:16:3e:00:aa:01", r.text
        # moved away again before the agent comes: that port is not rebound to hv-late later
        r = admin.put(f"/ports/{moved['id']}", json={"port": {"binding:host_id": "hv-other"}})
        assert r.json()["port"]["binding:vif_type"] == "binding_failed"
        assert c.post("/hosts/hv-late/register", json={"underlay_ip": "198.51.100.7"}).status_code == 200
        got = admin.get(f"/ports/{late['id']}").json()["port"]
        assert got["binding:vif_type"] == "tap" and got["binding:host_id"] == "hv-late"
        assert got["revision_number"] > late["revision_number"] and got["status"] == "DOWN"
        assert admin.get(f"/ports/{moved['id']}").json()["port"]["binding:vif_type"] == "binding_failed"
        # the agent reports the port up, as it does for any port bound to it
        assert c.post("/hosts/hv-late/ports-status", json={"ACTIVE": [late["id"]]}).status_code == 200
        assert admin.get(f"/ports/{late['id']}").json()["port"]["status"] == "ACTIVE"
        # a host with a live agent binds at once; a bound port cannot change its MAC
        now = port(admin, net, **{"binding:host_id": "hv-late"})
        assert now["binding:vif_type"] == "tap"
        assert_error(admin.put(f"/ports/{now['id']}", json={"port": {"mac_address": "fa:16:3e:00:aa:02"}}), 409,
                     "PortBound")
        # the agent goes away: bound ports stay bound (as Neutron); new bindings there fail again
        aid = admin.get("/agents", params={"host": "hv-late"}).json()["agents"][0]["id"]
        assert admin.delete(f"/agents/{aid}").status_code == 204
        assert admin.get(f"/ports/{late['id']}").json()["port"]["binding:vif_type"] == "tap"
        assert port(admin, net, **{"binding:host_id": "hv-late"})["binding:vif_type"] == "binding_failed"
        r = admin.put(f"/ports/{late['id']}", json={"port": {"binding:host_id": ""}})
        assert r.json()["port"]["binding:vif_type"] == "unbound"
        # deleting a port whose binding failed leaves no record behind
        assert admin.delete(f"/ports/{moved['id']}").status_code == 204
        records = [kv.key for kv in h.store.range("/vxnet/binding-failed/")[0]]
        assert records and all("hv-late/" in k for k in records) and moved["id"] not in "".join(records)
    finally:
        h.stop()


def test_security_groups_and_port_security(server) -> None:
    alice, bob = server.api("alice"), server.api("bob")
    net, _ = netsub(alice)
    sg = alice.post("/security-groups", json={"security_group": {"name": "web"}}).json()["security_group"]
    bob_sg = bob.post("/security-groups", json={"security_group": {"name": "b"}}).json()["security_group"]
    p = port(alice, net, security_groups=[sg["id"]])
    assert p["security_groups"] == [sg["id"]]
    assert port(alice, net, security_groups=[])["security_groups"] == []
    assert port(alice, net, security_groups=None)["security_groups"] == []  # null means none, as in Neutron
    assert port(alice, net, allowed_address_pairs=None)["allowed_address_pairs"] == []
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "security_groups": [bob_sg["id"]]}}),
                 404, "SecurityGroupNotFound")
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "security_groups": [str(uuid.uuid4())]}}),
                 404, "SecurityGroupNotFound")
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "security_groups": "x"}}), 400)
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "port_security_enabled": False,
                                                     "security_groups": [sg["id"]]}}),
                 400, "PortSecurityAndIPRequiredForSecurityGroups")
    off = port(alice, net, port_security_enabled=False)
    assert off["port_security_enabled"] is False and off["security_groups"] == []
    # disabling port security while groups are attached: 409; with the groups removed: fine
    assert_error(alice.put(f"/ports/{p['id']}", json={"port": {"port_security_enabled": False}}), 409,
                 "PortSecurityPortHasSecurityGroup", "Port has security group associated")
    r = alice.put(f"/ports/{p['id']}", json={"port": {"port_security_enabled": False, "security_groups": []}})
    assert r.status_code == 200 and r.json()["port"]["port_security_enabled"] is False
    assert_error(alice.put(f"/ports/{p['id']}", json={"port": {"security_groups": [sg["id"]]}}), 400,
                 "PortSecurityAndIPRequiredForSecurityGroups")
    r = alice.put(f"/ports/{p['id']}", json={"port": {"port_security_enabled": True, "security_groups": [sg["id"]]}})
    assert r.json()["port"]["security_groups"] == [sg["id"]]
    # the network's port_security_enabled is the default
    insecure = network(alice, port_security_enabled=False)
    q = port(alice, insecure)
    assert q["port_security_enabled"] is False and q["security_groups"] == []
    got = alice.get("/ports", params={"security_groups": sg["id"]}).json()["ports"]
    assert [x["id"] for x in got] == [p["id"]]


def test_port_groups_must_agree_on_stateful_and_not_repeat(server) -> None:
    """Neutron: a port's groups are all stateful or all stateless (409 SecurityGroupConflict),
    and a repeated group is a 400 (its list validator), on create and on update; a refused
    request leaves nothing behind (no port, no address taken)."""
    alice = server.api("alice")
    net, _ = netsub(alice)
    full = alice.post("/security-groups", json={"security_group": {"name": "tracked"}}).json()["security_group"]
    bare = alice.post("/security-groups", json={"security_group": {"name": "untracked", "stateful": False}}).json()[
        "security_group"]
    assert full["stateful"] is True and bare["stateful"] is False
    before = alice.get("/ports").json()["ports"]
    body = {"port": {"network_id": net["id"], "security_groups": [full["id"], bare["id"]]}}
    err = assert_error(alice.post("/ports", json=body), 409, "SecurityGroupConflict")
    assert "both stateful and stateless security groups on the same port" in err["message"]
    err = assert_error(alice.post("/ports", json={"port": {"network_id": net["id"],
                                                           "security_groups": [full["id"], full["id"]]}}), 400)
    assert err["message"] == f"Invalid input for security_groups. Reason: Duplicate items in the list: '{full['id']}'."
    assert alice.get("/ports").json()["ports"] == before
    ipam_consistent(server)
    p = port(alice, net, security_groups=[bare["id"]])
    url = f"/ports/{p['id']}"
    assert_error(alice.put(url, json={"port": {"security_groups": [bare["id"], full["id"]]}}), 409,
                 "SecurityGroupConflict")
    assert_error(alice.put(url, json={"port": {"security_groups": [bare["id"], bare["id"]]}}), 400,
                 message="Duplicate items in the list")
    assert alice.get(url).json()["port"] == p
    r = alice.put(url, json={"port": {"security_groups": [full["id"]]}})
    assert r.status_code == 200 and r.json()["port"]["security_groups"] == [full["id"]]


def test_allowed_address_pairs(shared_server) -> None:
    alice = shared_server.api("alice")
    net, _ = netsub(alice)
    p = port(alice, net, allowed_address_pairs=[{"ip_address": "192.0.2.200"},
                                                {"ip_address": "100.65.0.0/16", "mac_address": "fa:16:3e:aa:bb:cc"}])
    assert p["allowed_address_pairs"] == [{"ip_address": "192.0.2.200", "mac_address": p["mac_address"]},
                                          {"ip_address": "100.65.0.0/16", "mac_address": "fa:16:3e:aa:bb:cc"}]
    for pairs, status in ([{"ip_address": "192.0.2.1"}, {"ip_address": "192.0.2.1"}], 400),\
            ([{"ip_address": "nope"}], 400), ([{"mac_address": "fa:16:3e:aa:bb:cc"}], 400),\
            ([{"ip_address": "192.0.2.1", "mac_address": "bad"}], 400):
        assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "allowed_address_pairs": pairs}}),
                     status)
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "port_security_enabled": False,
                                                     "allowed_address_pairs": [{"ip_address": "192.0.2.9"}]}}),
                 409, "AddressPairAndPortSecurityRequired")
    r = alice.put(f"/ports/{p['id']}", json={"port": {"allowed_address_pairs": []}})
    assert r.json()["port"]["allowed_address_pairs"] == []


# --- filters -------------------------------------------------------------------------------------


def test_filters(shared_server) -> None:
    alice = shared_server.api("alice")
    net, sub = netsub(alice)
    sub2 = subnet(alice, net, "198.51.100.0/24")
    dev = str(uuid.uuid4())
    p1 = port(alice, net, fixed_ips=[{"ip_address": "192.0.2.40"}], device_id=dev, device_owner="compute:nova")
    p2 = port(alice, net, fixed_ips=[{"subnet_id": sub2["id"], "ip_address": "198.51.100.40"}])

    def listed(params: Any) -> list[str]:
        r = alice.get("/ports", params=params)
        assert r.status_code == 200, r.text
        return sorted(p["id"] for p in r.json()["ports"])

    assert listed({"network_id": net["id"]}) == sorted([p1["id"], p2["id"]])
    assert listed([("fixed_ips", f"subnet_id={sub['id']}")]) == [p1["id"]]
    assert listed([("fixed_ips", "ip_address=198.51.100.40")]) == [p2["id"]]
    assert listed([("fixed_ips", f"subnet_id={sub['id']}"), ("fixed_ips", "ip_address=192.0.2.40")]) == [p1["id"]]
    assert listed([("fixed_ips", f"subnet_id={sub['id']}"), ("fixed_ips", "ip_address=198.51.100.40")]) == []
    assert listed([("network_id", net["id"]), ("fixed_ips", "ip_address_substr=.40")]) == sorted([p1["id"], p2["id"]])
    assert listed({"device_id": dev}) == [p1["id"]]
    assert listed({"device_owner": "compute:nova", "network_id": net["id"]}) == [p1["id"]]
    assert listed({"mac_address": p2["mac_address"]}) == [p2["id"]]
    r = alice.get("/ports", params={"device_id": dev, "fields": ["id", "fixed_ips"]}).json()
    assert r == {"ports": [{"id": p1["id"], "fixed_ips": p1["fixed_ips"]}]}


# --- isolation and policy ------------------------------------------------------------------------


def test_isolation_matrix(shared_server) -> None:
    alice, reader, bob, admin = (shared_server.api(u) for u in ("alice", "alice_reader", "bob", "admin"))
    net, _ = netsub(alice)
    p = port(alice, net)
    url = f"/ports/{p['id']}"
    assert reader.get(url).status_code == 200
    assert_error(reader.post("/ports", json={"port": {"network_id": net["id"]}}), 403, "PolicyNotAuthorized")
    assert_error(reader.put(url, json={"port": {"name": "r"}}), 403)
    assert_error(reader.delete(url), 403)
    assert_error(bob.get(url), 404, "PortNotFound", f"Port {p['id']} could not be found.")
    assert p["id"] not in [x["id"] for x in bob.get("/ports").json()["ports"]]
    assert_error(bob.put(url, json={"port": {"name": "b"}}), 404, "PortNotFound")
    assert_error(bob.delete(url), 404, "PortNotFound")
    assert_error(bob.post("/ports", json={"port": {"network_id": net["id"]}}), 404, "NetworkNotFound")
    assert admin.get(url).status_code == 200
    assert admin.put(url, json={"port": {"name": "adm"}}).json()["port"]["name"] == "adm"
    r = admin.post("/ports", json={"port": {"network_id": net["id"], "project_id": TENANT_B}})
    assert r.status_code == 201 and r.json()["port"]["project_id"] == TENANT_B
    assert_error(alice.post("/ports", json={"port": {"network_id": net["id"], "project_id": TENANT_B}}), 400,
                 "HTTPBadRequest")
    assert alice.delete(url).status_code == 204
    assert_error(alice.get(url), 404, "PortNotFound")


def test_shared_and_external_networks(shared_server) -> None:
    admin, alice, bob = shared_server.api("admin"), shared_server.api("alice"), shared_server.api("bob")
    # sharing a network is admin-only (Neutron's create_network:shared); it belongs to tenant-a
    shared, sub = netsub(admin, "100.64.30.0/24", shared=True, project_id=TENANT_A)
    bp = port(bob, shared)
    assert bp["project_id"] == TENANT_B
    assert alice.get(f"/ports/{bp['id']}").status_code == 200  # the network's owner sees it
    assert_error(bob.post("/ports", json={"port": {"network_id": shared["id"], "fixed_ips": [{"ip_address": "100.64.30.9"}]}}),
                 403, "PolicyNotAuthorized")
    assert_error(bob.post("/ports", json={"port": {"network_id": shared["id"], "mac_address": "fa:16:3e:01:02:03"}}), 403)
    assert_error(bob.post("/ports", json={"port": {"network_id": shared["id"], "device_owner": "network:dhcp"}}), 403)
    assert port(bob, shared, fixed_ips=[{"subnet_id": sub["id"]}])["fixed_ips"][0]["subnet_id"] == sub["id"]
    ext, _ = netsub(admin, "203.0.113.0/24", **{"router:external": True})
    assert_error(alice.post("/ports", json={"port": {"network_id": ext["id"]}}), 403, "PolicyNotAuthorized")
    assert port(admin, ext)["fixed_ips"][0]["ip_address"] == "203.0.113.2"


# --- bulk, validation, service ports -------------------------------------------------------------


def test_bulk_create_all_or_nothing(server) -> None:
    alice = server.api("alice")
    net, _ = netsub(alice)
    r = alice.post("/ports", json={"ports": [{"network_id": net["id"]}, {"network_id": net["id"]}]})
    assert r.status_code == 201, r.text
    made = r.json()["ports"]
    assert [ips(p) for p in made] == [["192.0.2.2"], ["192.0.2.3"]]
    assert made[0]["security_groups"] == made[1]["security_groups"]
    assert len(server.api("alice").get("/security-groups", params={"name": "default"}).json()["security_groups"]) == 1
    r = alice.post("/ports", json={"ports": [{"network_id": net["id"]},
                                             {"network_id": net["id"], "fixed_ips": [{"ip_address": "192.0.2.2"}]}]})
    assert_error(r, 409, "IpAddressAlreadyAllocated")
    assert len(alice.get("/ports", params={"network_id": net["id"]}).json()["ports"]) == 2
    ipam_consistent(server)


@pytest.mark.parametrize("body,message", [
    (b"{", "JSON"),
    (b"[]", None),
    (b'{"port": []}', None),
    (b'{"port": {}}', "'network_id' not specified"),
    (b'{"port": {"network_id": "x"}}', "network_id"),
    (json.dumps({"port": {"network_id": str(uuid.uuid4()), "bogus": 1}}).encode(), "Unrecognized attribute(s) 'bogus'"),
    (json.dumps({"port": {"network_id": str(uuid.uuid4()), "admin_state_up": "perhaps"}}).encode(), "admin_state_up"),
    (json.dumps({"port": {"network_id": str(uuid.uuid4()), "name": ["x"]}}).encode(), "name"),
])
def test_malformed_creates(shared_server, body: bytes, message: str | None) -> None:
    r = shared_server.api("alice").post("/ports", content=body, headers={"Content-Type": "application/json"})
    assert_error(r, 400, message=message)


def test_update_errors_and_if_match(shared_server) -> None:
    alice = shared_server.api("alice")
    net, _ = netsub(alice)
    p = port(alice, net)
    url = f"/ports/{p['id']}"
    assert_error(alice.put(url, json={"port": {"network_id": net["id"]}}), 400, message="read-only attribute network_id")
    assert_error(alice.put(url, json={"port": {"bogus": 1}}), 400, message="Unrecognized")
    assert_error(alice.put(url, json={"port": {"admin_state_up": "x"}}), 400)
    assert_error(alice.put(url, content=b"{", headers={"Content-Type": "application/json"}), 400)
    assert_error(alice.put(url, json={"port": {"name": "x"}}, headers={"If-Match": "revision_number=42"}), 412)
    assert alice.get(url).json()["port"] == p
    assert_error(alice.put(f"/ports/{uuid.uuid4()}", json={"port": {"name": "x"}}), 404, "PortNotFound")
    assert_error(alice.delete(f"/ports/{uuid.uuid4()}"), 404, "PortNotFound")


def test_router_interface_port_cannot_be_deleted_directly(server) -> None:
    alice = server.api("alice")
    net, sub = netsub(alice)
    r = alice.post("/routers", json={"router": {"name": "r"}})
    assert r.status_code == 201, r.text
    rid = r.json()["router"]["id"]
    r = alice.put(f"/routers/{rid}/add_router_interface", json={"subnet_id": sub["id"]})
    assert r.status_code == 200, r.text
    pid = r.json()["port_id"]
    assert_error(alice.delete(f"/ports/{pid}"), 409, "ServicePortInUse",
                 f"Port {pid} cannot be deleted directly via the port API: has device owner network:router_interface.")
    assert alice.get(f"/ports/{pid}").status_code == 200
    assert_error(alice.delete(f"/subnets/{sub['id']}"), 409, "SubnetInUse")
    # a port claiming a router that does not exist is an ordinary port
    stray = port(alice, net, device_owner="network:router_interface", device_id=str(uuid.uuid4()))
    assert alice.delete(f"/ports/{stray['id']}").status_code == 204
    ipam_consistent(server)


def test_deleting_a_port_disassociates_its_floating_ip(server) -> None:
    admin, alice = server.api("admin"), server.api("alice")
    ext, _ = netsub(admin, "203.0.113.0/24", **{"router:external": True})
    net, sub = netsub(alice)
    r = alice.post("/routers", json={"router": {"name": "r", "external_gateway_info": {"network_id": ext["id"]}}})
    assert r.status_code == 201, r.text
    rid = r.json()["router"]["id"]
    assert alice.put(f"/routers/{rid}/add_router_interface", json={"subnet_id": sub["id"]}).status_code == 200
    p = port(alice, net)
    r = alice.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"], "port_id": p["id"]}})
    assert r.status_code == 201, r.text
    fip = r.json()["floatingip"]
    assert fip["port_id"] == p["id"] and fip["router_id"] == rid
    assert server.store.range("/vxnet/fip-assoc/")[0]
    assert alice.delete(f"/ports/{p['id']}").status_code == 204
    got = alice.get(f"/floatingips/{fip['id']}").json()["floatingip"]
    assert (got["port_id"], got["fixed_ip_address"], got["router_id"], got["status"]) == (None, None, None, "DOWN")
    assert got["revision_number"] > fip["revision_number"]
    assert server.store.range("/vxnet/fip-assoc/")[0] == []  # the association claim went with it
    ipam_consistent(server)


# --- the pure matching of a fixed_ips update ------------------------------------------------------


@pytest.mark.parametrize("requested,kept,add,remove", [
    # same address named: kept
    ([{"ip_address": "100.64.0.5"}], ["100.64.0.5"], [], ["100.64.1.5"]),
    # subnet only: reuses the port's address on that subnet
    ([{"subnet_id": "s1"}], ["100.64.0.5"], [], ["100.64.1.5"]),
    ([{"subnet_id": "s1"}, {"subnet_id": "s1"}], ["100.64.0.5"], [{"subnet_id": "s1"}], ["100.64.1.5"]),
    # a new address on a subnet the port is on: added, the old one removed
    ([{"subnet_id": "s1", "ip_address": "100.64.0.6"}, {"subnet_id": "s2"}], ["100.64.1.5"],
     [{"subnet_id": "s1", "ip_address": "100.64.0.6"}], ["100.64.0.5"]),
    # an address the port has, claimed for another subnet: not a match
    ([{"subnet_id": "s2", "ip_address": "100.64.0.5"}], [], [{"subnet_id": "s2", "ip_address": "100.64.0.5"}],
     ["100.64.0.5", "100.64.1.5"]),
    ([], [], [], ["100.64.0.5", "100.64.1.5"]),
])
def test_changed_ips(requested: list[dict[str, str]], kept: list[str], add: list[dict[str, str]], remove: list[str]) -> None:
    from vxnet.api.routers.ports import changed_ips

    original = [{"subnet_id": "s1", "ip_address": "100.64.0.5"}, {"subnet_id": "s2", "ip_address": "100.64.1.5"}]
    k, a, r = changed_ips(original, requested)
    assert [ip["ip_address"] for ip in k] == kept
    assert a == add
    assert sorted(ip["ip_address"] for ip in r) == sorted(remove)
