"""Token revocation through the unmodified `openstack` CLI: `openstack token issue` hands out a
token that works, `openstack token revoke` (DELETE /v3/auth/tokens) ends it, and a wrong
password gets Keystone's 401 the CLI understands.
"""

from __future__ import annotations

from tests.clients.conftest import Cloud
from tests.support import http


def test_openstack_token_revoke_ends_the_token(vxnet_cloud: Cloud) -> None:
    cli = vxnet_cloud
    tok = cli.openstack("demo", "token", "issue", "-f", "json").json()
    token_id = tok["id"]
    nets = http.get(cli.url + "/v2.0/networks", headers={"X-Auth-Token": token_id}, timeout=30)
    assert nets.status_code == 200, nets.text
    cli.openstack("demo", "token", "revoke", token_id)
    nets = http.get(cli.url + "/v2.0/networks", headers={"X-Auth-Token": token_id}, timeout=30)
    assert nets.status_code == 401, nets.text
    assert cli.server_errors() == []


def test_wrong_password_gets_keystones_401_in_the_cli(vxnet_cloud: Cloud) -> None:
    env = {"OS_AUTH_URL": vxnet_cloud.url + "/identity/v3", "OS_USERNAME": "demo", "OS_PASSWORD": "wrong",
           "OS_PROJECT_NAME": "demo", "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default",
           "OS_IDENTITY_API_VERSION": "3"}
    r = vxnet_cloud.openstack_env(env, "network", "list", check=False)
    assert r.rc != 0 and "requires authentication" in r.stderr and "HTTP 401" in r.stderr, r
