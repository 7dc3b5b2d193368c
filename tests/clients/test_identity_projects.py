"""Keystone project management (`POST/GET/DELETE /v3/projects`) through the real `openstack` CLI
and plain HTTP: admins create and delete extra projects; names stay unique; members cannot.
"""

from __future__ import annotations

from tests.clients.conftest import Cloud
from tests.support import http


def test_admin_creates_lists_and_deletes_a_project_with_the_cli(vxnet_cloud: Cloud) -> None:
    cli = vxnet_cloud
    created = cli.openstack("admin", "project", "create", "extra", "--description", "made by admin",
                            "-f", "json").json()
    assert created["name"] == "extra" and created["description"] == "made by admin"
    assert len(created["id"]) == 32
    names = {p["Name"]: p["ID"] for p in cli.openstack("admin", "project", "list", "-f", "json").json()}
    assert names["extra"] == created["id"]
    assert {"admin", "demo", "alt_demo"} <= set(names)
    shown = cli.openstack("admin", "project", "show", "extra", "-f", "json").json()
    assert shown["id"] == created["id"]
    # an admin may own a network in it on that project's behalf
    net = cli.openstack("admin", "network", "create", "owned", "--project", created["id"], "-f", "json").json()
    assert net["project_id"] == created["id"]
    cli.openstack("admin", "network", "delete", net["id"])
    cli.openstack("admin", "project", "delete", created["id"])
    names_after = {p["Name"] for p in cli.openstack("admin", "project", "list", "-f", "json").json()}
    assert "extra" not in names_after
    r = cli.openstack("admin", "project", "show", created["id"], check=False)
    assert r.rc != 0, r


def test_project_names_are_unique_and_admin_only(vxnet_cloud: Cloud) -> None:
    url = vxnet_cloud.url + "/identity/v3/projects"
    admin = {"X-Auth-Token": vxnet_cloud.token("admin")}
    demo = {"X-Auth-Token": vxnet_cloud.token("demo")}
    r = http.post(url, json={"project": {"name": "p-uniq"}}, headers=admin)
    assert r.status_code == 201, r.text
    pid = r.json()["project"]["id"]
    assert http.post(url, json={"project": {"name": "p-uniq"}}, headers=admin).status_code == 409
    # a name from the config file is taken too
    assert http.post(url, json={"project": {"name": "demo"}}, headers=admin).status_code == 409
    assert http.post(url, json={"project": {}}, headers=admin).status_code == 400
    assert http.post(url, json={"project": {"name": "p-member"}}, headers=demo).status_code == 403
    assert http.delete(f"{url}/{pid}", headers=demo).status_code == 403
    # members do not see other projects
    assert http.get(f"{url}/{pid}", headers=demo).status_code == 404
    assert [p["name"] for p in http.get(url, headers=demo).json()["projects"]] == ["demo"]
    # config projects are fixed
    demo_pid = http.get(url, params={"name": "demo"}, headers=admin).json()["projects"][0]["id"]
    assert http.delete(f"{url}/{demo_pid}", headers=admin).status_code == 403
    assert http.delete(f"{url}/{pid}", headers=admin).status_code == 204
    assert http.delete(f"{url}/{pid}", headers=admin).status_code == 404
    # the name is free again
    r = http.post(url, json={"project": {"name": "p-uniq"}}, headers=admin)
    assert r.status_code == 201 and r.json()["project"]["id"] != pid
