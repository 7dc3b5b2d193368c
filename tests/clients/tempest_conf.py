"""tempest.conf and accounts.yaml for running tempest's `tempest.api.network` tests against vxnet.

Pure functions: inputs in, file text out. The recipe is ../shared/NEUTRON-API-NOTES.md section 3.

Invariants:
- `[network-feature-enabled] api_extensions` is exactly `vxnet.api.extensions.ALIASES`, so a test
  gated on an extension runs if and only if the server advertises that extension.
- `[network] build_timeout` is short (10 s): without agents nothing in vxnet changes state on
  its own, so a test waiting for a status only an agent sets fails fast instead of in 300 s.
- Credentials are pre-provisioned (no Keystone admin API needed). `tempest run --concurrency N`
  locks one account per role per test class, so the accounts come in `sets` copies: each set has
  a member project and an alt project, each with a member+reader and a reader-only user, plus an
  admin. Member accounts are listed first: tempest hands out `alt` credentials as "the first free
  non-admin account", and listing members first keeps that account out of the primary's project.
"""

from __future__ import annotations

import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class TempestAccount:
    """One pre-provisioned tempest account (also declared as a user in the server config)."""

    username: str
    password: str
    project: str
    roles: tuple[str, ...]


def tempest_accounts(sets: int) -> list[TempestAccount]:
    """`sets` copies of tempest's usual accounts; set 1 uses the canonical names (demo, alt_demo...)."""
    members: list[TempestAccount] = []
    readers: list[TempestAccount] = []
    admins: list[TempestAccount] = []
    for i in range(1, sets + 1):
        sfx = "" if i == 1 else str(i)
        demo, alt = f"demo{sfx}", f"alt_demo{sfx}"
        members += [TempestAccount(demo, "demo", demo, ("member", "reader")),
                    TempestAccount(alt, "alt_demo", alt, ("member", "reader"))]
        readers += [TempestAccount(f"demo_reader{sfx}", "demo", demo, ("reader",)),
                    TempestAccount(f"alt_reader{sfx}", "alt_demo", alt, ("reader",))]
        admins.append(TempestAccount(f"admin{sfx}", "admin", "admin", ("admin",)))
    return members + readers + admins


def accounts_yaml(accounts: list[TempestAccount]) -> str:
    """tempest's accounts file (a JSON document, which is valid YAML)."""
    return json.dumps([
        {"username": a.username, "password": a.password, "project_name": a.project,
         "user_domain_name": "Default", "project_domain_name": "Default", "roles": list(a.roles)}
        for a in accounts
    ], indent=2) + "\n"


@dataclasses.dataclass(frozen=True)
class TempestSettings:
    """Everything tempest.conf depends on."""

    url: str                      # server base URL, e.g. http://127.0.0.1:9696
    workspace: str                # tempest workspace directory
    public_network_id: str
    public_network_name: str
    api_extensions: tuple[str, ...]
    ipv6: bool = False
    project_network_cidr: str = "100.64.0.0/16"
    project_network_mask_bits: int = 28
    project_network_v6_cidr: str = "2001:db8::/48"   # the documentation prefix only
    project_network_v6_mask_bits: int = 64


def tempest_conf(s: TempestSettings) -> str:
    """The text of etc/tempest.conf."""
    ext = ", ".join(s.api_extensions)
    return f"""\
[DEFAULT]
log_dir = {s.workspace}/logs
log_file = tempest.log
debug = False
use_stderr = False

[auth]
use_dynamic_credentials = False
test_accounts_file = {s.workspace}/etc/accounts.yaml
default_credentials_domain_name = Default
create_isolated_networks = False
admin_domain_scope = False

[identity]
uri_v3 = {s.url}/identity/v3
auth_version = v3
region = RegionOne
v3_endpoint_type = public
disable_ssl_certificate_validation = True
admin_role = admin

[identity-feature-enabled]
api_v2 = False
api_v3 = True

[service_available]
neutron = True
nova = False
glance = False
cinder = False
swift = False
keystone = True
horizon = False
heat = False

[network]
public_network_id = {s.public_network_id}
floating_network_name = {s.public_network_name}
project_network_cidr = {s.project_network_cidr}
project_network_mask_bits = {s.project_network_mask_bits}
project_network_v6_cidr = {s.project_network_v6_cidr}
project_network_v6_mask_bits = {s.project_network_v6_mask_bits}
project_networks_reachable = False
build_timeout = 10
build_interval = 1

[network-feature-enabled]
ipv6 = {s.ipv6}
ipv6_subnet_attributes = {s.ipv6}
api_extensions = {ext}
port_security = {"port-security" in s.api_extensions}
floating_ips = {"router" in s.api_extensions}

[validation]
run_validation = False

[oslo_concurrency]
lock_path = {s.workspace}/tempest_lock
"""
