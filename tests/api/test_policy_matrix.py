"""The API policy matrix: every rule of the rule table (vxnet.api.policy.RULES) x caller, over HTTP.

Callers, each in its own relation to the object acted on:
- `admin`: the cloud admin.
- `owner`: alice, a member of the project that owns the object (for creates: the creator).
- `reader`: alice_reader, only `reader` in the owner's project (sees it, never writes).
- `other`: bob, a member of an unrelated project.
- `netowner`: carol, a member of the project owning the *shared* network the object lives on.

Expected outcomes are Neutron's defaults written down independently of the rule table (the
`who` classes below), so a wrong rule string fails here as surely as a handler skipping the
check. A denial is a 403 PolicyNotAuthorized when the caller can see the object, else the
object's 404 (for an RBAC policy on a network the caller cannot see: Neutron's 400 InvalidInput);
a denied create leaves nothing behind (no port, no IP or MAC claim, no policy).
`test_every_rule_is_exercised` ties the matrix to the table: every write rule has cases.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.api.helpers import assert_error
from tests.conftest import UNLIMITED, USERS, ServerHandle, get_token, start_server
from tests.support import http
from vxnet.api import policy
from vxnet.config import Config, User, project_id_for

CAROL = User("carol", "carol-pw", "tenant-c", ("member",))
CALLERS = {"admin": "admin", "owner": "alice", "reader": "alice_reader", "other": "bob", "netowner": "carol"}
_n = itertools.count(1)


def who(cls: str, caller: str) -> bool:
    """Neutron's default for a rule class (writes additionally need a writer, see `expected`)."""
    admin = caller == "admin"
    return {
        "any": True,
        "admin": admin,
        "owner": admin or caller in ("owner", "reader"),  # tenant_id:%(tenant_id)s
        "netowner": admin or caller == "netowner",  # tenant_id:%(network:tenant_id)s
        "owner_or_netowner": admin or caller in ("owner", "reader", "netowner"),
        "shared": True,  # rule:shared holds: the objects live on a shared network
        "object_owner": admin or caller in ("owner", "reader"),  # owns the object a create names
    }[cls]


@dataclasses.dataclass(frozen=True)
class Case:
    rule: str  # the attribute (or action) rule this case exercises
    action_cls: str  # who passes the top-level action rule
    attr_cls: str  # who passes the attribute rule ("any" for an action-only case)
    run: Callable[[Lab, str], httpx.Response]  # performs the request as the named caller
    visible: tuple[str, ...] = ("admin", "owner", "reader", "other", "netowner")
    created: str = ""  # a create: collection to check for leftovers on denial
    hidden_status: int = 404  # the answer to a caller not in `visible` (Neutron's RBAC create: 400)

    def expected(self, caller: str) -> bool:
        def holds(cls: str) -> bool:
            # the creator owns what it creates: `owner` holds for every caller of a create
            return True if self.created and cls == "owner" else who(cls, caller)
        return caller != "reader" and holds(self.action_cls) and holds(self.attr_cls)


class Lab:
    """One server with the callers and the fixed objects the cases act around."""

    def __init__(self, h: ServerHandle) -> None:
        self.h = h
        users = {u.name: u for u in (*USERS, CAROL)}
        self.c = {role: http.client(base_url=h.url + "/v2.0", timeout=30, headers={"X-Auth-Token": get_token(
            h.url, users[name].name, users[name].password, users[name].project)}) for role, name in CALLERS.items()}
        self.project = {role: project_id_for(users[name].project) for role, name in CALLERS.items()}
        a = self.c["admin"]
        self.shared = self.ok(a.post("/networks", json={"network": {
            "name": "shared", "shared": True, "project_id": self.project["netowner"]}}), "network")
        self.shared_subnet = self.ok(self.c["netowner"].post("/subnets", json={"subnet": {
            "network_id": self.shared["id"], "ip_version": 4, "cidr": "100.64.0.0/16"}}), "subnet")
        self.ext = self.ok(a.post("/networks", json={"network": {"name": "ext", "router:external": True}}), "network")
        self.ext_subnet = self.ok(a.post("/subnets", json={"subnet": {
            "network_id": self.ext["id"], "ip_version": 4, "cidr": "203.0.113.0/24"}}), "subnet")
        # a port of each caller's own project, for the create_trunk case (made now: a denied
        # create is checked to leave no claim behind)
        self.own_port = {role: self.port(project_id=self.project[role]) for role in CALLERS}

    @staticmethod
    def ok(r: httpx.Response, member: str) -> dict[str, Any]:
        assert r.status_code in (200, 201), r.text
        return r.json()[member]  # type: ignore[no-any-return]

    # fresh objects, owned by alice's project unless said otherwise --------------------------
    def port(self, **attrs: Any) -> dict[str, Any]:
        body = {"network_id": self.shared["id"], "project_id": self.project["owner"], **attrs}
        return self.ok(self.c["admin"].post("/ports", json={"port": body}), "port")

    def trunk(self) -> dict[str, Any]:
        """A trunk of alice's project on a fresh port of hers, with one subport (VLAN 10)."""
        return self.ok(self.c["owner"].post("/trunks", json={"trunk": {"port_id": self.port()["id"], "sub_ports": [
            {"port_id": self.port()["id"], "segmentation_type": "vlan", "segmentation_id": 10}]}}), "trunk")

    def network(self) -> dict[str, Any]:
        return self.ok(self.c["owner"].post("/networks", json={"network": {"name": f"n{next(_n)}"}}), "network")

    def subnet_on_shared(self) -> dict[str, Any]:
        cidr = f"100.66.{next(_n) % 250}.0/24"
        return self.ok(self.c["netowner"].post("/subnets", json={"subnet": {
            "network_id": self.shared["id"], "ip_version": 4, "cidr": cidr}}), "subnet")

    def router(self) -> dict[str, Any]:
        return self.ok(self.c["owner"].post("/routers", json={"router": {"name": f"r{next(_n)}"}}), "router")

    def fip(self) -> dict[str, Any]:
        return self.ok(self.c["owner"].post("/floatingips", json={"floatingip": {
            "floating_network_id": self.ext["id"]}}), "floatingip")

    def group(self) -> dict[str, Any]:
        return self.ok(self.c["owner"].post("/security-groups", json={"security_group": {
            "name": f"g{next(_n)}"}}), "security_group")

    def qos_policy(self) -> dict[str, Any]:
        """A QoS policy of alice's project (only admins create them)."""
        return self.ok(self.c["admin"].post("/qos/policies", json={"policy": {
            "name": f"q{next(_n)}", "project_id": self.project["owner"]}}), "policy")

    def rbac_policy(self) -> dict[str, Any]:
        """Alice's network shared by alice with bob's project."""
        net = self.network()
        return self.ok(self.c["owner"].post("/rbac-policies", json={"rbac_policy": {
            "object_type": "network", "object_id": net["id"], "action": "access_as_shared",
            "target_tenant": self.project["other"]}}), "rbac_policy")

    def own_subnet(self) -> dict[str, Any]:
        net = self.network()
        return self.ok(self.c["owner"].post("/subnets", json={"subnet": {
            "network_id": net["id"], "ip_version": 4, "cidr": "192.0.2.0/24"}}), "subnet")

    def subnetpool(self) -> dict[str, Any]:
        return self.ok(self.c["owner"].post("/subnetpools", json={"subnetpool": {
            "prefixes": [f"100.69.{next(_n) % 250}.0/24"]}}), "subnetpool")

    def address_scope(self) -> dict[str, Any]:
        return self.ok(self.c["owner"].post("/address-scopes", json={"address_scope": {
            "name": f"s{next(_n)}", "ip_version": 4}}), "address_scope")

    def claims(self) -> int:
        """IP and MAC claims in the store."""
        return sum(len(self.h.store.range(p)[0]) for p in ("/vxnet/ipam/", "/vxnet/mac/"))


def uniq_ip() -> str:
    n = next(_n)
    return f"100.64.{10 + n // 250}.{1 + n % 250}"


def uniq_mac() -> str:
    n = next(_n)
    return f"fa:16:3e:7{n // 65536 % 10}:{n // 256 % 256:02x}:{n % 256:02x}"


def create_port(attrs: Callable[[Lab], dict[str, Any]]) -> Callable[[Lab, str], httpx.Response]:
    def run(lab: Lab, caller: str) -> httpx.Response:
        return lab.c[caller].post("/ports", json={"port": {"network_id": lab.shared["id"], **attrs(lab)}})
    return run


def update_port(attrs: Callable[[Lab], dict[str, Any]], **port: Any) -> Callable[[Lab, str], httpx.Response]:
    def run(lab: Lab, caller: str) -> httpx.Response:
        p = lab.port(**port)
        return lab.c[caller].put(f"/ports/{p['id']}", json={"port": attrs(lab)})
    return run


def on(factory: str, method: str, path: str, body: Callable[[Lab, dict[str, Any]], Any] | None = None
       ) -> Callable[[Lab, str], httpx.Response]:
    """Make a fresh object with `factory`, then `method path` (path formatted with its id) as the caller."""
    def run(lab: Lab, caller: str) -> httpx.Response:
        obj = getattr(lab, factory)()
        url = path.format(id=obj["id"])
        if body is None:
            return lab.c[caller].request(method, url)
        return lab.c[caller].request(method, url, json=body(lab, obj))
    return run


def post(path: str, body: Callable[[Lab], Any]) -> Callable[[Lab, str], httpx.Response]:
    def run(lab: Lab, caller: str) -> httpx.Response:
        return lab.c[caller].post(path, json=body(lab))
    return run


PORT_SEEN = ("admin", "owner", "reader", "netowner")  # a port on a shared network
OWNER_SEEN = ("admin", "owner", "reader")
SUBNET_ON_SHARED_SEEN = ("admin", "owner", "reader", "other", "netowner")


def cases() -> list[Case]:
    """The matrix rows: (rule, action class, attribute class, request)."""
    out = [
        # ports: created on carol's shared network by the caller -------------------------------
        Case("create_port", "any", "any", create_port(lambda lab: {}), created="ports"),
        Case("create_port:device_owner", "any", "netowner",
             create_port(lambda lab: {"device_owner": "network:router_interface"}), created="ports"),
        Case("create_port:device_owner", "any", "any",
             create_port(lambda lab: {"device_owner": "compute:nova"}), created="ports"),
        Case("create_port:mac_address", "any", "netowner",
             create_port(lambda lab: {"mac_address": uniq_mac()}), created="ports"),
        Case("create_port:fixed_ips", "any", "shared",
             create_port(lambda lab: {"fixed_ips": [{"subnet_id": lab.shared_subnet["id"]}]}), created="ports"),
        Case("create_port:fixed_ips:subnet_id", "any", "shared",
             create_port(lambda lab: {"fixed_ips": [{"subnet_id": lab.shared_subnet["id"]}]}), created="ports"),
        Case("create_port:fixed_ips:ip_address", "any", "netowner",
             create_port(lambda lab: {"fixed_ips": [{"ip_address": uniq_ip()}]}), created="ports"),
        Case("create_port:port_security_enabled", "any", "netowner",
             create_port(lambda lab: {"port_security_enabled": False, "security_groups": []}), created="ports"),
        Case("create_port:allowed_address_pairs", "any", "netowner",
             create_port(lambda lab: {"allowed_address_pairs": [{"ip_address": "0.0.0.0/0"}]}), created="ports"),
        Case("create_port:binding:host_id", "any", "admin",
             create_port(lambda lab: {"binding:host_id": "h1"}), created="ports"),
        Case("create_port:binding:profile", "any", "admin",
             create_port(lambda lab: {"binding:profile": {}}), created="ports"),
        Case("create_port:binding:vnic_type", "any", "any",
             create_port(lambda lab: {"binding:vnic_type": "direct"}), created="ports"),
        # ports: alice's port on carol's shared network --------------------------------------
        Case("update_port", "owner", "any", update_port(lambda lab: {"name": "x"}), PORT_SEEN),
        Case("update_port", "owner", "any", update_port(lambda lab: {"admin_state_up": False}), PORT_SEEN),
        Case("update_port", "owner", "any", update_port(lambda lab: {"security_groups": []}), PORT_SEEN),
        Case("update_port:device_owner", "owner", "netowner",
             update_port(lambda lab: {"device_owner": "network:router_interface"}), PORT_SEEN),
        Case("update_port:device_owner", "owner", "any",
             update_port(lambda lab: {"device_owner": "compute:nova"}), PORT_SEEN),
        Case("update_port:mac_address", "owner", "admin",
             update_port(lambda lab: {"mac_address": uniq_mac()}), PORT_SEEN),
        Case("update_port:fixed_ips", "owner", "shared",
             update_port(lambda lab: {"fixed_ips": [{"subnet_id": lab.shared_subnet["id"]}]}), PORT_SEEN),
        Case("update_port:fixed_ips:subnet_id", "owner", "shared",
             update_port(lambda lab: {"fixed_ips": [{"subnet_id": lab.shared_subnet["id"]}]}), PORT_SEEN),
        Case("update_port:fixed_ips:ip_address", "owner", "netowner",
             update_port(lambda lab: {"fixed_ips": [{"ip_address": uniq_ip()}]}), PORT_SEEN),
        Case("update_port:port_security_enabled", "owner", "netowner",
             update_port(lambda lab: {"port_security_enabled": False, "security_groups": []}), PORT_SEEN),
        Case("update_port:allowed_address_pairs", "owner", "netowner",
             update_port(lambda lab: {"allowed_address_pairs": [{"ip_address": "0.0.0.0/0"}]}), PORT_SEEN),
        Case("update_port:binding:host_id", "owner", "admin",
             update_port(lambda lab: {"binding:host_id": "h1"}), PORT_SEEN),
        Case("update_port:binding:profile", "owner", "admin",
             update_port(lambda lab: {"binding:profile": {}}), PORT_SEEN),
        Case("update_port:binding:vnic_type", "owner", "owner",
             update_port(lambda lab: {"binding:vnic_type": "direct"}), PORT_SEEN),
        Case("delete_port", "owner_or_netowner", "any", on("port", "DELETE", "/ports/{id}"), PORT_SEEN),
        # networks ---------------------------------------------------------------------------
        Case("create_network", "any", "any", post("/networks", lambda lab: {"network": {}}), created="networks"),
        Case("create_network:shared", "any", "admin",
             post("/networks", lambda lab: {"network": {"shared": True}}), created="networks"),
        Case("create_network:router:external", "any", "admin",
             post("/networks", lambda lab: {"network": {"router:external": True}}), created="networks"),
        Case("create_network:provider:network_type", "any", "admin",
             post("/networks", lambda lab: {"network": {"provider:network_type": "vxlan"}}), created="networks"),
        Case("create_network:provider:segmentation_id", "any", "admin", post("/networks", lambda lab: {"network": {
            "provider:network_type": "vxlan", "provider:segmentation_id": 70000 + next(_n)}}), created="networks"),
        Case("create_network:port_security_enabled", "any", "any",
             post("/networks", lambda lab: {"network": {"port_security_enabled": False}}), created="networks"),
        Case("update_network", "owner", "any",
             on("network", "PUT", "/networks/{id}", lambda lab, o: {"network": {"name": "x"}}), OWNER_SEEN),
        Case("update_network:shared", "owner", "admin",
             on("network", "PUT", "/networks/{id}", lambda lab, o: {"network": {"shared": True}}), OWNER_SEEN),
        Case("update_network:router:external", "owner", "admin",
             on("network", "PUT", "/networks/{id}", lambda lab, o: {"network": {"router:external": True}}),
             OWNER_SEEN),
        Case("update_network:port_security_enabled", "owner", "owner", on(
            "network", "PUT", "/networks/{id}", lambda lab, o: {"network": {"port_security_enabled": False}}),
            OWNER_SEEN),
        Case("delete_network", "owner", "any", on("network", "DELETE", "/networks/{id}"), OWNER_SEEN),
        # subnets: on carol's shared network ---------------------------------------------------
        Case("create_subnet", "netowner", "any", post("/subnets", lambda lab: {"subnet": {
            "network_id": lab.shared["id"], "ip_version": 4, "cidr": f"100.67.{next(_n) % 250}.0/24"}}),
            created="subnets"),
        Case("create_subnet:service_types", "netowner", "admin", post("/subnets", lambda lab: {"subnet": {
            "network_id": lab.shared["id"], "ip_version": 4, "cidr": f"100.68.{next(_n) % 250}.0/24",
            "service_types": ["compute:nova"]}}), created="subnets"),
        Case("update_subnet", "netowner", "any", on("subnet_on_shared", "PUT", "/subnets/{id}",
                                                    lambda lab, o: {"subnet": {"name": "x"}}), SUBNET_ON_SHARED_SEEN),
        Case("update_subnet:service_types", "netowner", "admin", on(
            "subnet_on_shared", "PUT", "/subnets/{id}", lambda lab, o: {"subnet": {"service_types": ["compute:nova"]}}),
            SUBNET_ON_SHARED_SEEN),
        Case("delete_subnet", "netowner", "any", on("subnet_on_shared", "DELETE", "/subnets/{id}"),
             SUBNET_ON_SHARED_SEEN),
        # routers --------------------------------------------------------------------------------
        Case("create_router", "any", "any", post("/routers", lambda lab: {"router": {}}), created="routers"),
        Case("create_router:distributed", "any", "admin",
             post("/routers", lambda lab: {"router": {"distributed": True}}), created="routers"),
        Case("create_router:ha", "any", "admin", post("/routers", lambda lab: {"router": {"ha": False}}),
             created="routers"),
        Case("create_router:external_gateway_info", "any", "owner", post("/routers", lambda lab: {"router": {
            "external_gateway_info": {"network_id": lab.ext["id"]}}}), created="routers"),
        Case("create_router:external_gateway_info:network_id", "any", "owner", post("/routers", lambda lab: {
            "router": {"external_gateway_info": {"network_id": lab.ext["id"]}}}), created="routers"),
        Case("create_router:external_gateway_info:enable_snat", "any", "admin", post("/routers", lambda lab: {
            "router": {"external_gateway_info": {"network_id": lab.ext["id"], "enable_snat": True}}}),
            created="routers"),
        Case("create_router:external_gateway_info:external_fixed_ips", "any", "admin", post(
            "/routers", lambda lab: {"router": {"external_gateway_info": {
                "network_id": lab.ext["id"], "external_fixed_ips": [{"subnet_id": lab.ext_subnet["id"]}]}}}),
            created="routers"),
        Case("update_router", "owner", "any",
             on("router", "PUT", "/routers/{id}", lambda lab, o: {"router": {"name": "x"}}), OWNER_SEEN),
        Case("update_router:distributed", "owner", "admin",
             on("router", "PUT", "/routers/{id}", lambda lab, o: {"router": {"distributed": True}}), OWNER_SEEN),
        Case("update_router:ha", "owner", "admin",
             on("router", "PUT", "/routers/{id}", lambda lab, o: {"router": {"ha": False}}), OWNER_SEEN),
        Case("update_router:external_gateway_info", "owner", "owner", on("router", "PUT", "/routers/{id}", lambda lab, o: {
            "router": {"external_gateway_info": {"network_id": lab.ext["id"]}}}), OWNER_SEEN),
        Case("update_router:external_gateway_info:network_id", "owner", "owner", on(
            "router", "PUT", "/routers/{id}", lambda lab, o: {
                "router": {"external_gateway_info": {"network_id": lab.ext["id"]}}}), OWNER_SEEN),
        Case("update_router:external_gateway_info:enable_snat", "owner", "admin", on(
            "router", "PUT", "/routers/{id}", lambda lab, o: {
                "router": {"external_gateway_info": {"network_id": lab.ext["id"], "enable_snat": False}}}),
            OWNER_SEEN),
        Case("update_router:external_gateway_info:external_fixed_ips", "owner", "admin", on(
            "router", "PUT", "/routers/{id}", lambda lab, o: {"router": {"external_gateway_info": {
                "network_id": lab.ext["id"], "external_fixed_ips": [{"subnet_id": lab.ext_subnet["id"]}]}}}),
            OWNER_SEEN),
        Case("delete_router", "owner", "any", on("router", "DELETE", "/routers/{id}"), OWNER_SEEN),
        Case("add_router_interface", "owner", "any", add_interface, OWNER_SEEN),
        Case("remove_router_interface", "owner", "any", remove_interface, OWNER_SEEN),
        Case("add_extraroutes", "owner", "any", on("router", "PUT", "/routers/{id}/add_extraroutes",
                                                   lambda lab, o: {"router": {"routes": []}}), OWNER_SEEN),
        Case("remove_extraroutes", "owner", "any", on("router", "PUT", "/routers/{id}/remove_extraroutes",
                                                      lambda lab, o: {"router": {"routes": []}}), OWNER_SEEN),
        # floating IPs ---------------------------------------------------------------------------
        Case("create_floatingip", "any", "any", post("/floatingips", lambda lab: {"floatingip": {
            "floating_network_id": lab.ext["id"]}}), created="floatingips"),
        Case("create_floatingip:floating_ip_address", "any", "admin", post("/floatingips", lambda lab: {
            "floatingip": {"floating_network_id": lab.ext["id"], "floating_ip_address": f"203.0.113.{next(_n) % 200 + 20}"}}),
            created="floatingips"),
        Case("update_floatingip", "owner", "any", on("fip", "PUT", "/floatingips/{id}",
                                                     lambda lab, o: {"floatingip": {"description": "x"}}), OWNER_SEEN),
        Case("delete_floatingip", "owner", "any", on("fip", "DELETE", "/floatingips/{id}"), OWNER_SEEN),
        # security groups --------------------------------------------------------------------------
        Case("create_security_group", "owner", "any", post("/security-groups", lambda lab: {"security_group": {
            "name": f"g{next(_n)}"}}), created="security-groups"),
        Case("update_security_group", "owner", "any", on("group", "PUT", "/security-groups/{id}",
                                                         lambda lab, o: {"security_group": {"description": "x"}}),
             OWNER_SEEN),
        Case("delete_security_group", "owner", "any", on("group", "DELETE", "/security-groups/{id}"), OWNER_SEEN),
        Case("create_security_group_rule", "owner", "any", on("group", "POST", "/security-group-rules",
                                                              lambda lab, o: {"security_group_rule": {
                                                                  "security_group_id": o["id"], "direction": "ingress",
                                                                  "protocol": "tcp", "port_range_min": 22,
                                                                  "port_range_max": 22}}), OWNER_SEEN),
        Case("update_security_group_rule", "owner", "any", rule_action("PUT"), OWNER_SEEN),
        Case("delete_security_group_rule", "owner", "any", rule_action("DELETE"), OWNER_SEEN),
        # QoS: only admins write policies and rules (Neutron's defaults); alice's project reads ---
        Case("create_policy", "admin", "any", post("/qos/policies", lambda lab: {"policy": {"name": "q"}})),
        Case("update_policy", "admin", "any", on("qos_policy", "PUT", "/qos/policies/{id}",
                                                 lambda lab, o: {"policy": {"description": "x"}}), OWNER_SEEN),
        Case("delete_policy", "admin", "any", on("qos_policy", "DELETE", "/qos/policies/{id}"), OWNER_SEEN),
        *[Case(f"{op}_policy_{kind}_rule", "admin", "any", qos_rule_action(op, kind), OWNER_SEEN)
          for op in ("create", "update", "delete") for kind in QOS_RULE_BODIES],
        # subnet pools ---------------------------------------------------------------------------
        Case("create_subnetpool", "any", "any", post("/subnetpools", lambda lab: {"subnetpool": {
            "prefixes": [f"100.70.{next(_n) % 250}.0/24"]}}), created="subnetpools"),
        Case("create_subnetpool:shared", "any", "admin", post("/subnetpools", lambda lab: {"subnetpool": {
            "prefixes": [f"100.70.{next(_n) % 250}.0/24"], "shared": True}}), created="subnetpools"),
        # IPv6: the IPv4 default is left free for update_subnetpool:is_default
        Case("create_subnetpool:is_default", "any", "admin", post("/subnetpools", lambda lab: {"subnetpool": {
            "prefixes": ["2001:db8:70::/48"], "is_default": True}}), created="subnetpools"),
        Case("update_subnetpool", "owner", "any",
             on("subnetpool", "PUT", "/subnetpools/{id}", lambda lab, o: {"subnetpool": {"name": "x"}}), OWNER_SEEN),
        Case("update_subnetpool:is_default", "owner", "admin",
             on("subnetpool", "PUT", "/subnetpools/{id}", lambda lab, o: {"subnetpool": {"is_default": True}}),
             OWNER_SEEN),
        Case("delete_subnetpool", "owner", "any", on("subnetpool", "DELETE", "/subnetpools/{id}"), OWNER_SEEN),
        Case("add_prefixes", "owner", "any", on("subnetpool", "PUT", "/subnetpools/{id}/add_prefixes",
                                                lambda lab, o: {"prefixes": [f"100.71.{next(_n) % 250}.0/24"]}),
             OWNER_SEEN),
        Case("remove_prefixes", "owner", "any", on("subnetpool", "PUT", "/subnetpools/{id}/remove_prefixes",
                                                   lambda lab, o: {"prefixes": o["prefixes"]}), OWNER_SEEN),
        # address scopes -------------------------------------------------------------------------
        Case("create_address_scope", "any", "any", post("/address-scopes", lambda lab: {"address_scope": {
            "name": "s", "ip_version": 4}}), created="address-scopes"),
        Case("create_address_scope:shared", "any", "admin", post("/address-scopes", lambda lab: {"address_scope": {
            "name": "s", "ip_version": 4, "shared": True}}), created="address-scopes"),
        Case("update_address_scope", "owner", "any", on("address_scope", "PUT", "/address-scopes/{id}",
                                                        lambda lab, o: {"address_scope": {"name": "x"}}), OWNER_SEEN),
        Case("update_address_scope:shared", "owner", "admin", on(
            "address_scope", "PUT", "/address-scopes/{id}", lambda lab, o: {"address_scope": {"shared": True}}),
            OWNER_SEEN),
        Case("delete_address_scope", "owner", "any", on("address_scope", "DELETE", "/address-scopes/{id}"),
             OWNER_SEEN),
        # network RBAC: alice's network; a project that cannot see it gets Neutron's 400 ----------
        Case("create_rbac_policy", "any", "object_owner", share_own_network("other"), OWNER_SEEN,
             created="rbac-policies", hidden_status=400),
        Case("create_rbac_policy:target_tenant", "any", "admin", share_own_network("*"), created="rbac-policies"),
        Case("update_rbac_policy", "owner", "any", on("rbac_policy", "PUT", "/rbac-policies/{id}", lambda lab, o: {
            "rbac_policy": {"target_tenant": lab.project["netowner"]}}), OWNER_SEEN),
        Case("update_rbac_policy:target_tenant", "owner", "admin", on(
            "rbac_policy", "PUT", "/rbac-policies/{id}", lambda lab, o: {"rbac_policy": {"target_tenant": "*"}}),
            OWNER_SEEN),
        Case("delete_rbac_policy", "owner", "any", on("rbac_policy", "DELETE", "/rbac-policies/{id}"), OWNER_SEEN),
        # trunks: the owner of the trunk (and of its parent port) or an admin ----------------------
        Case("create_trunk", "any", "any", create_trunk, created="trunks"),
        Case("update_trunk", "owner", "any", on("trunk", "PUT", "/trunks/{id}",
                                                lambda lab, o: {"trunk": {"name": "x"}}), OWNER_SEEN),
        Case("delete_trunk", "owner", "any", on("trunk", "DELETE", "/trunks/{id}"), OWNER_SEEN),
        Case("add_subports", "owner", "any", on("trunk", "PUT", "/trunks/{id}/add_subports", lambda lab, o: {
            "sub_ports": [{"port_id": lab.port()["id"], "segmentation_type": "vlan", "segmentation_id": 11}]}),
            OWNER_SEEN),
        Case("remove_subports", "owner", "any", on("trunk", "PUT", "/trunks/{id}/remove_subports", lambda lab, o: {
            "sub_ports": [{"port_id": o["sub_ports"][0]["port_id"]}]}), OWNER_SEEN),
    ]
    return out


def create_trunk(lab: Lab, caller: str) -> httpx.Response:
    """A trunk on a fresh port of the caller's own project (naming another's port is a 404)."""
    parent = lab.own_port[caller]
    return lab.c[caller].post("/trunks", json={"trunk": {"port_id": parent["id"]}})


QOS_RULE_BODIES = {"bandwidth_limit": {"max_kbps": 1000}, "dscp_marking": {"dscp_mark": 26},
                   "minimum_bandwidth": {"min_kbps": 1000}}


def qos_rule_action(op: str, kind: str) -> Callable[[Lab, str], httpx.Response]:
    """Create, update or delete a `kind` rule of a fresh policy of alice's project, as the caller."""
    def run(lab: Lab, caller: str) -> httpx.Response:
        pol = lab.qos_policy()
        url = f"/qos/policies/{pol['id']}/{kind}_rules"
        body = {f"{kind}_rule": QOS_RULE_BODIES[kind]}
        if op == "create":
            return lab.c[caller].post(url, json=body)
        rule = lab.ok(lab.c["admin"].post(url, json=body), f"{kind}_rule")
        if op == "update":
            return lab.c[caller].put(f"{url}/{rule['id']}", json=body)
        return lab.c[caller].delete(f"{url}/{rule['id']}")
    return run


def share_own_network(target: str) -> Callable[[Lab, str], httpx.Response]:
    """The caller shares a fresh network of alice's with `target` (a caller's project, or "*")."""
    def run(lab: Lab, caller: str) -> httpx.Response:
        net = lab.network()
        return lab.c[caller].post("/rbac-policies", json={"rbac_policy": {
            "object_type": "network", "object_id": net["id"], "action": "access_as_shared",
            "target_tenant": lab.project.get(target, target)}})
    return run


def add_interface(lab: Lab, caller: str) -> httpx.Response:
    """Alice's router, alice's subnet (so only the router's ownership decides)."""
    rtr, sub = lab.router(), lab.own_subnet()
    return lab.c[caller].put(f"/routers/{rtr['id']}/add_router_interface", json={"subnet_id": sub["id"]})


def remove_interface(lab: Lab, caller: str) -> httpx.Response:
    rtr, sub = lab.router(), lab.own_subnet()
    lab.ok(lab.c["owner"].put(f"/routers/{rtr['id']}/add_router_interface", json={"subnet_id": sub["id"]}), "subnet_id")
    return lab.c[caller].put(f"/routers/{rtr['id']}/remove_router_interface", json={"subnet_id": sub["id"]})


def rule_action(method: str) -> Callable[[Lab, str], httpx.Response]:
    def run(lab: Lab, caller: str) -> httpx.Response:
        g = lab.group()
        rule = lab.ok(lab.c["owner"].post("/security-group-rules", json={"security_group_rule": {
            "security_group_id": g["id"], "direction": "ingress", "protocol": "udp"}}), "security_group_rule")
        body = {"security_group_rule": {"description": "x"}} if method == "PUT" else None
        return lab.c[caller].request(method, f"/security-group-rules/{rule['id']}", json=body)
    return run


CASES = cases()
NOT_EXERCISED = {
    # rules of attributes vxnet's API refuses to everyone (400) or does not have
    "create_network:is_default", "update_network:is_default", "create_network:segments", "update_network:segments",
    "create_network:provider:physical_network", "update_network:provider:physical_network",
    "update_network:provider:network_type", "update_network:provider:segmentation_id",
    "create_subnet:segment_id", "update_subnet:segment_id",
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    cfg = Config(users=(*USERS, CAROL), quotas=UNLIMITED)
    h = start_server(os.path.join(tmp_path_factory.mktemp("policy"), "vxnet.db"), cfg)
    yield Lab(h)
    h.stop()


def test_every_rule_is_exercised() -> None:
    writes = {r.name for r in policy.RULES if r.name.split("_")[0] in ("create", "update", "delete", "add", "remove")}
    covered = {c.rule for c in CASES}
    assert writes - covered - NOT_EXERCISED == set()
    assert covered <= policy.RULE_NAMES
    assert len(CASES) * len(CALLERS) >= 300


def _listing(lab: Lab, collection: str) -> set[str]:
    key = collection.replace("-", "_")
    return {o["id"] for o in lab.c["admin"].get(f"/{collection}").json()[key]}


@pytest.mark.parametrize("caller", list(CALLERS))
@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c.rule}" for i, c in enumerate(CASES)])
def test_matrix(lab: Lab, case: Case, caller: str) -> None:
    before = _listing(lab, case.created) if case.created else set()
    claims = lab.claims()
    r = case.run(lab, caller)
    if case.expected(caller):
        assert r.status_code in (200, 201, 204), f"{case.rule} as {caller}: {r.status_code} {r.text}"
        return
    status = 403 if caller in case.visible else case.hidden_status
    err = assert_error(r, status)
    if status == 403:
        assert err["type"] == "PolicyNotAuthorized", err
    if case.created:  # a denied create leaves nothing: no object, no IP or MAC claim
        assert _listing(lab, case.created) == before
        assert lab.claims() == claims


# -- references: every object a caller names must be hers (or she is admin) ---------------------

def test_router_hijack_by_device_id_is_refused(lab: Lab) -> None:
    """Bob's port on his own network naming alice's router as its router is a 409
    DeviceIDNotOwnedByTenant (Neutron), on create and on update; alice's router keeps no leg of
    his; an admin may still do it."""
    rtr = lab.router()
    bob = lab.c["other"]
    net = lab.ok(bob.post("/networks", json={"network": {"name": "bobnet"}}), "network")
    lab.ok(bob.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                 "cidr": "198.51.100.0/24"}}), "subnet")
    for owner in ("network:router_interface", "network:router_interface_distributed", "network:router_gateway"):
        before = lab.claims()
        r = bob.post("/ports", json={"port": {"network_id": net["id"], "device_owner": owner, "device_id": rtr["id"]}})
        assert_error(r, 409, "DeviceIDNotOwnedByTenant", rtr["id"])
        assert lab.claims() == before
    port = lab.ok(bob.post("/ports", json={"port": {"network_id": net["id"]}}), "port")
    for body in ({"device_owner": "network:router_interface", "device_id": rtr["id"]}, {"device_id": rtr["id"]}):
        if "device_owner" not in body:
            lab.ok(bob.put(f"/ports/{port['id']}", json={"port": {"device_owner": "network:router_interface"}}), "port")
        assert_error(bob.put(f"/ports/{port['id']}", json={"port": body}), 409, "DeviceIDNotOwnedByTenant")
    # carol, owner of the shared network, cannot attach it to alice's router either
    r = lab.c["netowner"].post("/ports", json={"port": {"network_id": lab.shared["id"],
                                                         "device_owner": "network:router_interface",
                                                         "device_id": rtr["id"]}})
    assert_error(r, 409, "DeviceIDNotOwnedByTenant")
    ports = lab.c["admin"].get("/ports", params={"device_id": rtr["id"]}).json()["ports"]
    assert ports == []
    # a floating IP named by another project's port
    fip = lab.fip()
    r = bob.post("/ports", json={"port": {"network_id": net["id"], "device_owner": "network:floatingip",
                                          "device_id": fip["id"]}})
    assert_error(r, 409, "DeviceIDNotOwnedByTenant")
    # alice's own port may name her own router (Neutron's port-first interface flow)
    alice_net = lab.network()
    lab.ok(lab.c["owner"].post("/ports", json={"port": {"network_id": alice_net["id"],
                                                         "device_owner": "network:router_interface",
                                                         "device_id": rtr["id"]}}), "port")


def test_references_to_other_projects_objects(lab: Lab) -> None:
    """Router interfaces, gateways, floating IP ports, remote groups, port groups, subnets'
    networks: naming another project's object is refused (404 as if it did not exist, or
    Neutron's 400), and nothing is written."""
    alice, bob = lab.c["owner"], lab.c["other"]
    rtr = lab.router()
    bnet = lab.ok(bob.post("/networks", json={"network": {"name": "b2"}}), "network")
    bsub = lab.ok(bob.post("/subnets", json={"subnet": {"network_id": bnet["id"], "ip_version": 4,
                                                        "cidr": "192.0.2.0/25"}}), "subnet")
    bport = lab.ok(bob.post("/ports", json={"port": {"network_id": bnet["id"]}}), "port")
    # alice may not plug bob's subnet or port into her router
    assert_error(alice.put(f"/routers/{rtr['id']}/add_router_interface", json={"subnet_id": bsub["id"]}), 404)
    assert_error(alice.put(f"/routers/{rtr['id']}/add_router_interface", json={"port_id": bport["id"]}), 404)
    # bob may not plug his into hers
    assert_error(bob.put(f"/routers/{rtr['id']}/add_router_interface", json={"subnet_id": bsub["id"]}), 404)
    assert lab.c["admin"].get("/ports", params={"device_id": rtr["id"]}).json()["ports"] == []
    # a gateway needs an external network: bob's private one is not even visible to alice
    r = alice.put(f"/routers/{rtr['id']}", json={"router": {"external_gateway_info": {"network_id": bnet["id"]}}})
    assert_error(r, 404)
    # floating IP association with bob's port
    fip = lab.fip()
    assert_error(alice.put(f"/floatingips/{fip['id']}", json={"floatingip": {"port_id": bport["id"]}}), 404)
    # a subnet on bob's network; a port on it
    assert_error(alice.post("/subnets", json={"subnet": {"network_id": bnet["id"], "ip_version": 4,
                                                         "cidr": "192.0.2.128/25"}}), 404)
    assert_error(alice.post("/ports", json={"port": {"network_id": bnet["id"]}}), 404)
    # security groups: bob's group as a port's group or as a remote group
    bgroup = lab.ok(bob.post("/security-groups", json={"security_group": {"name": "bg"}}), "security_group")
    anet = lab.network()
    assert_error(alice.post("/ports", json={"port": {"network_id": anet["id"], "security_groups": [bgroup["id"]]}}), 404)
    agroup = lab.group()
    r = alice.post("/security-group-rules", json={"security_group_rule": {
        "security_group_id": agroup["id"], "direction": "ingress", "remote_group_id": bgroup["id"]}})
    assert_error(r, 404)
    # a network owner may delete, not change, another project's port on her shared network
    p = lab.port()
    carol = lab.c["netowner"]
    for body in ({"security_groups": []}, {"port_security_enabled": False}, {"admin_state_up": False},
                 {"device_id": "x"}, {"device_owner": "compute:x"}):
        assert_error(carol.put(f"/ports/{p['id']}", json={"port": body}), 403, "PolicyNotAuthorized")
    assert carol.delete(f"/ports/{p['id']}").status_code == 204


def test_operator_policy_file_overrides_rules(tmp_path: Any) -> None:
    """`[server] policy_file`: an operator lets members create shared networks and forbids
    them routers; the rest keeps Neutron's defaults; a changed file applies without a restart."""
    path = tmp_path / "policy.yaml"
    path.write_text('"create_network:shared": "rule:regular_user"\n"create_router": "rule:admin_only"\n')
    h = start_server(os.path.join(tmp_path, "vxnet.db"), Config(users=USERS, policy_file=str(path), quotas=UNLIMITED))
    try:
        bob = h.api("bob")
        assert bob.post("/networks", json={"network": {"shared": True}}).status_code == 201
        assert_error(bob.post("/routers", json={"router": {}}), 403, "PolicyNotAuthorized", "create_router")
        assert_error(bob.post("/networks", json={"network": {"router:external": True}}), 403)
        assert h.api("admin").post("/routers", json={"router": {}}).status_code == 201
        assert_error(h.api("alice_reader").post("/networks", json={"network": {}}), 403)
        # the file is re-read when it changes: routers back to Neutron's default
        path.write_text('"create_network:shared": "rule:regular_user"\n')
        os.utime(path, (time.time() + 5, time.time() + 5))
        assert bob.post("/routers", json={"router": {}}).status_code == 201
    finally:
        h.stop()


def test_missing_policy_file_fails_the_start(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="policy_file"):
        start_server(os.path.join(tmp_path, "vxnet.db"),
                     Config(users=USERS, policy_file=str(tmp_path / "nope.yaml")))
