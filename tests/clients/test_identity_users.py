"""tempest's own credential client (tempest.lib.common.cred_client, what its dynamic credentials
use) against vxnet's Keystone user API: it creates a project and a user, grants a role (twice,
as tempest may), the user's credentials get a token that works on the network API, and
everything is deleted again; a deleted user's token is refused."""

from __future__ import annotations

from tempest.lib import auth
from tempest.lib import exceptions as lib_exc
from tempest.lib.common import cred_client
from tempest.lib.services.identity.v3 import (
    domains_client,
    identity_client,
    projects_client,
    roles_client,
    users_client,
)

from tests.conftest import PASSWORDS, ServerHandle
from tests.support import http


def test_tempest_cred_client_creates_and_removes_users(server: ServerHandle) -> None:
    uri = server.url + "/identity/v3"
    admin = auth.get_credentials(uri, fill_in=False, identity_version="v3", username="admin",
                                 password=PASSWORDS["admin"], project_name="admin", user_domain_name="Default",
                                 project_domain_name="Default")
    provider = auth.KeystoneV3AuthProvider(admin, uri)
    kw = {"service": "identity", "region": "RegionOne", "endpoint_type": "publicURL"}
    cc = cred_client.get_creds_client(
        identity_client.IdentityClient(provider, **kw), projects_client.ProjectsClient(provider, **kw),
        users_client.UsersClient(provider, **kw), roles_client.RolesClient(provider, **kw),
        domains_client.DomainsClient(provider, **kw), "Default")
    project = cc.create_project("tdyn-p", "made by tempest's cred client")
    user = cc.create_user("tdyn-u", "tdyn-pw", project, "tdyn@example.org")
    assert user["name"] == "tdyn-u" and "password" not in user
    cc.assign_user_role(user, project, "member")
    cc.assign_user_role(user, project, "member")  # tempest tolerates a repeat; vxnet answers 204
    try:
        cc.assign_user_role(user, project, "no-such-role")
        raise AssertionError("an unknown role was granted")
    except lib_exc.NotFound:
        pass
    creds = cc.get_credentials(user, project, "tdyn-pw")
    tok = auth.KeystoneV3AuthProvider(creds, uri).get_token()
    r = http.post(server.url + "/v2.0/networks", json={"network": {"name": "tdyn"}}, headers={"X-Auth-Token": tok})
    assert r.status_code == 201 and r.json()["network"]["project_id"] == project["id"], r.text
    assert http.delete(f"{server.url}/v2.0/networks/{r.json()['network']['id']}",
                       headers={"X-Auth-Token": tok}).status_code == 204
    cc.delete_user(user["id"])
    cc.delete_project(project["id"])
    assert http.get(server.url + "/v2.0/networks", headers={"X-Auth-Token": tok}).status_code == 401
    names = [u["name"] for u in http.get(uri + "/users", headers={"X-Auth-Token": server.token("admin")}).json()[
        "users"]]
    assert "tdyn-u" not in names


def test_openstack_cli_user_and_role_commands(vxnet_cloud) -> None:
    """The unmodified `openstack` CLI: `user create --project --password`, `role add`, the user's
    own login (environment credentials), `user set --disable`, `user delete`; a member may not."""
    cli = vxnet_cloud
    project = cli.openstack("admin", "project", "create", "cli-users", "-f", "json").json()
    user = cli.openstack("admin", "user", "create", "cli-u", "--password", "cli-pw", "--project", project["id"],
                         "--email", "cli@example.org", "-f", "json").json()
    assert user["name"] == "cli-u" and user["default_project_id"] == project["id"]
    cli.openstack("admin", "role", "add", "--project", project["id"], "--user", "cli-u", "member")
    shown = cli.openstack("admin", "user", "show", "cli-u", "-f", "json").json()
    assert shown["id"] == user["id"]
    env = {"OS_AUTH_URL": cli.url + "/identity/v3", "OS_USERNAME": "cli-u", "OS_PASSWORD": "cli-pw",
           "OS_PROJECT_NAME": "cli-users", "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default",
           "OS_IDENTITY_API_VERSION": "3", "OS_REGION_NAME": "RegionOne"}
    net = cli.openstack_env(env, "network", "create", "cli-net", "-f", "json").json()
    assert net["project_id"] == project["id"]
    r = cli.openstack("demo", "user", "create", "evil", "--password", "x", check=False)
    assert r.rc != 0, r
    cli.openstack("admin", "user", "set", "--disable", "cli-u")
    r = cli.openstack_env(env, "network", "list", check=False)
    assert r.rc != 0, r  # a disabled user gets no token
    cli.openstack("admin", "network", "delete", net["id"])
    cli.openstack("admin", "user", "delete", "cli-u")
    r = cli.openstack("admin", "user", "show", "cli-u", check=False)
    assert r.rc != 0, r
    cli.openstack("admin", "project", "delete", project["id"])
