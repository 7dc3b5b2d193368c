"""The clouds.yaml the demo writes, so the unmodified `openstack` CLI drives the demo cloud."""

from __future__ import annotations

from vxnet.config import load_config

CLOUDS = """clouds:
{entries}
"""
ENTRY = """  vxnet-{user}:
    auth_type: password
    auth:
      auth_url: {url}/identity/v3
      username: {user}
      password: {password}
      project_name: {project}
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
    identity_api_version: 3
"""


def clouds_yaml(url: str, config_path: str) -> str:
    """A clouds.yaml with one cloud per configured human user."""
    cfg = load_config(config_path)
    entries = [
        ENTRY.format(url=url, user=u.name, password=u.password, project=u.project)
        for u in cfg.users
        if "service" not in u.roles
    ]
    return CLOUDS.format(entries="".join(entries).rstrip("\n"))
