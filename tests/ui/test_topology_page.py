"""The web UI in a real browser (Debian's Chromium, headless, driven by Playwright).

Each test signs in through the page's own form and checks what is drawn against the REST API.
Screenshots of the topology page land in test-output/ui/ (1280x800 and 390x844).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from tests.conftest import ServerHandle
from tests.support import http
from tests.ui.conftest import login

NARROW = (390, 844)


def node(page: Page, kind: str, name: str) -> Any:
    return page.locator(f'#graph svg [data-kind="{kind}"][data-name="{name}"]')


def make_external(h: ServerHandle, cidr: str = "203.0.113.0/24") -> dict[str, Any]:
    adm = h.api("admin")
    net = adm.post("/networks", json={"network": {"name": "public", "router:external": True}}).json()["network"]
    r = adm.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": cidr, "ip_version": 4,
                                              "enable_dhcp": False}})
    assert r.status_code == 201, r.text
    return net


def open_form(page: Page, summary: str) -> None:
    details = page.locator("details.form-card", has=page.locator("summary", has_text=summary))
    if details.get_attribute("open") is None:
        details.locator("summary").click()


def shoot(page: Page, out: Path, name: str) -> None:
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(out / f"{name}-1280x800.png"))
    page.screenshot(path=str(out / f"{name}-1280x800-full.png"), full_page=True)
    page.set_viewport_size({"width": NARROW[0], "height": NARROW[1]})
    deadline = time.monotonic() + 5
    while int(page.locator("#graph svg").get_attribute("width") or 9999) > NARROW[0]:
        assert time.monotonic() < deadline, "the drawing did not follow the narrow viewport"
        page.wait_for_timeout(20)
    page.screenshot(path=str(out / f"{name}-390x844.png"))
    page.screenshot(path=str(out / f"{name}-390x844-full.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})


def test_tenant_builds_a_topology_from_the_page(ui_server: ServerHandle, new_page: Callable[..., Page],
                                                out_dir: Path) -> None:
    ext = make_external(ui_server)
    page = new_page()
    login(page, ui_server.url, "alice")

    page.get_by_label("Name", exact=True).first.fill("web")
    page.get_by_label("Subnet CIDR").fill("100.74.0.0/24")
    page.get_by_role("button", name="Create network").click()
    expect(node(page, "network", "web")).to_be_visible()
    expect(node(page, "network", "web")).to_contain_text("100.74.0.0/24")

    open_form(page, "Create router")
    page.locator("#router-name").fill("r1")
    page.locator("#router-external").select_option(label="public")
    page.get_by_role("button", name="Create router").click()
    expect(node(page, "router", "r1")).to_be_visible()
    expect(node(page, "router", "r1")).to_contain_text("gw 203.0.113.")

    open_form(page, "Connect router to subnet")
    page.locator("#iface-router").select_option(label="r1")
    page.locator("#iface-subnet").select_option(label="web: 100.74.0.0/24 (web-subnet)")
    page.get_by_role("button", name="Add interface").click()

    api = ui_server.api("alice")
    router = api.get("/routers", params={"name": "r1"}).json()["routers"][0]
    net = api.get("/networks", params={"name": "web"}).json()["networks"][0]
    # the interface is drawn as a drop from r1's bus to web, labelled with the router's address
    link = page.locator(f'#graph path[data-link="iface"][data-router="{router["id"]}"][data-network="{net["id"]}"]')
    expect(link).to_have_count(1)
    expect(page.locator("#graph svg .link-label", has_text="100.74.0.1")).to_have_count(1)
    gw = page.locator(f'#graph path[data-link="gateway"][data-router="{router["id"]}"]')
    expect(gw).to_have_count(1)
    # and it is real: the REST API shows the same objects
    assert router["external_gateway_info"]["network_id"] == ext["id"]
    ports = api.get("/ports", params={"device_id": router["id"], "network_id": net["id"],
                                      "device_owner": "network:router_interface"}).json()["ports"]
    assert [ip["ip_address"] for port in ports for ip in port["fixed_ips"]] == ["100.74.0.1"]
    subnets = api.get("/subnets", params={"network_id": net["id"]}).json()["subnets"]
    assert [s["cidr"] for s in subnets] == ["100.74.0.0/24"]

    # a VM port and a floating IP attached from the page, drawn on the port
    port = api.post("/ports", json={"port": {"network_id": net["id"], "name": "vm-1", "device_owner": "compute:nova",
                                             "device_id": "0d3c3c8e-0000-4000-8000-000000000001"}}).json()["port"]
    expect(node(page, "port", "vm-1")).to_contain_text(port["fixed_ips"][0]["ip_address"])
    open_form(page, "Floating IP")
    page.locator("#fip-network").select_option(label="public")
    page.locator("#fip-port").select_option(value=port["id"])
    page.get_by_role("button", name="Allocate floating IP").click()
    expect(node(page, "port", "vm-1")).to_contain_text("⇄ 203.0.113.")
    fips = api.get("/floatingips", params={"port_id": port["id"]}).json()["floatingips"]
    assert len(fips) == 1
    expect(node(page, "port", "vm-1")).to_contain_text("⇄ " + fips[0]["floating_ip_address"])

    page.wait_for_timeout(200)
    shoot(page, out_dir, "tenant-topology")


def test_rest_change_appears_without_reload(ui_server: ServerHandle, new_page: Callable[..., Page]) -> None:
    page = new_page()
    login(page, ui_server.url, "alice")
    page.evaluate("window.__sameDocument = true")
    api = ui_server.api("alice")

    t0 = time.monotonic()
    net = api.post("/networks", json={"network": {"name": "from-cli"}}).json()["network"]
    node(page, "network", "from-cli").wait_for(timeout=1000)
    appeared = time.monotonic() - t0

    t0 = time.monotonic()
    sub = api.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.94.0.0/24", "ip_version": 4}})
    assert sub.status_code == 201, sub.text
    expect(node(page, "network", "from-cli")).to_contain_text("100.94.0.0/24", timeout=1000)
    subnet_shown = time.monotonic() - t0

    t0 = time.monotonic()
    assert api.delete(f"/networks/{net['id']}").status_code == 204
    node(page, "network", "from-cli").wait_for(state="detached", timeout=1000)
    gone = time.monotonic() - t0

    assert page.evaluate("window.__sameDocument") is True  # never reloaded
    print(f"\nREST change -> drawn: create {appeared * 1000:.0f} ms, subnet {subnet_shown * 1000:.0f} ms, "
          f"delete {gone * 1000:.0f} ms")


def test_tenant_b_never_sees_tenant_a(ui_server: ServerHandle, new_page: Callable[..., Page], out_dir: Path) -> None:
    make_external(ui_server)
    bob_page = new_page()
    login(bob_page, ui_server.url, "bob")
    alice = ui_server.api("alice")
    net = alice.post("/networks", json={"network": {"name": "alice-secret"}}).json()["network"]
    alice.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.104.0.0/24", "ip_version": 4}})
    alice.post("/routers", json={"router": {"name": "alice-router"}})
    alice.post("/ports", json={"port": {"network_id": net["id"], "name": "alice-vm", "device_owner": "compute:nova"}})

    # bob's own change is the positive control: once it is drawn, alice's (made earlier) would be too
    bob = ui_server.api("bob")
    bob.post("/networks", json={"network": {"name": "bob-net"}})
    expect(node(bob_page, "network", "bob-net")).to_be_visible(timeout=2000)
    text = bob_page.locator("body").inner_text()
    for secret in ("alice-secret", "alice-router", "alice-vm", "100.104.0."):
        assert secret not in text
    assert net["id"] not in bob_page.content()
    shoot(bob_page, out_dir, "tenant-b-view")


def test_event_stream_tells_a_tenant_only_its_own_changes(ui_server: ServerHandle) -> None:
    """/ui/events at the HTTP level: bob's stream carries bob's changes and nothing of alice's."""
    alice, bob = ui_server.api("alice"), ui_server.api("bob")
    seen: list[dict[str, Any]] = []
    url = ui_server.url + "/ui/events"
    with http.stream("GET", url, params={"token": ui_server.token("bob")}, timeout=10) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        event = _next_event(lines)
        assert event[0] == "ready"
        a_net = alice.post("/networks", json={"network": {"name": "a"}}).json()["network"]
        alice.post("/subnets", json={"subnet": {"network_id": a_net["id"], "cidr": "100.114.0.0/24", "ip_version": 4}})
        a_router = alice.post("/routers", json={"router": {"name": "ar"}}).json()["router"]
        alice.delete(f"/routers/{a_router['id']}")
        b_net = bob.post("/networks", json={"network": {"name": "b"}}).json()["network"]
        while True:
            kind, data = _next_event(lines)
            if kind == "change":
                seen.extend(data["changes"])
                if any(c["id"] == b_net["id"] for c in seen):
                    break
    alice_ids = {a_net["id"], a_router["id"]}
    for coll in ("networks", "subnets", "ports", "routers", "security-groups", "security-group-rules"):
        key = coll.replace("-", "_")
        alice_ids |= {o["id"] for o in alice.get(f"/{coll}").json()[key] if o["project_id"] != b_net["project_id"]}
    assert len(alice_ids) >= 4  # network, subnet, router, default group (+ its rules)
    assert not alice_ids & {c["id"] for c in seen}
    assert b_net["id"] in {c["id"] for c in seen}
    assert {c["collection"] for c in seen} <= {"networks", "security_groups", "security-groups",
                                               "security_group_rules", "security-group-rules", "ports"}


def _next_event(lines: Any) -> tuple[str, Any]:
    import json

    kind, data = "", None
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and kind:
            return kind, data
    raise AssertionError("stream ended")


def test_overlapping_cidr_shows_the_api_message(ui_server: ServerHandle, new_page: Callable[..., Page],
                                                out_dir: Path) -> None:
    api = ui_server.api("alice")
    net = api.post("/networks", json={"network": {"name": "web"}}).json()["network"]
    assert api.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.124.0.0/24",
                                                 "ip_version": 4}}).status_code == 201
    page = new_page()
    login(page, ui_server.url, "alice")
    open_form(page, "Add subnet")
    page.locator("#subnet-network").select_option(label="web")
    page.locator("#subnet-cidr").fill("100.124.0.128/25")
    page.get_by_role("button", name="Add subnet").click()
    error = page.locator("#form-subnet .form-error")
    expect(error).not_to_be_empty()

    # the very message the API gives for the same request, and nothing was created
    same = api.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.124.0.128/25",
                                                 "ip_version": 4, "enable_dhcp": True}})
    assert same.status_code == 400
    message = same.json()["NeutronError"]["message"]
    assert "overlap" in message.lower()
    expect(error).to_have_text(message)
    expect(page.locator("#banner-text")).to_have_text(message)
    assert len(api.get("/subnets", params={"network_id": net["id"]}).json()["subnets"]) == 1
    page.screenshot(path=str(out_dir / "overlap-error-1280x800.png"))

    # the combined "network + subnet" form keeps nothing when the subnet is refused
    page.get_by_label("Name", exact=True).first.fill("bad")
    page.get_by_label("Subnet CIDR").fill("100.134.0.0/33")
    page.get_by_role("button", name="Create network").click()
    expect(page.locator("#form-network .form-error")).not_to_be_empty()
    assert api.get("/networks", params={"name": "bad"}).json()["networks"] == []


def test_keyboard_only_create_select_and_delete(ui_server: ServerHandle, new_page: Callable[..., Page]) -> None:
    page = new_page()
    login(page, ui_server.url, "alice")
    page.locator("#net-name").focus()
    page.keyboard.type("kbd-net")
    page.keyboard.press("Tab")
    page.keyboard.type("100.144.0.0/24")
    page.keyboard.press("Enter")  # submits the form
    target = node(page, "network", "kbd-net")
    expect(target).to_be_visible()
    target.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#details-body h3")).to_have_text("Network kbd-net")
    focused = page.evaluate("document.activeElement.textContent")
    assert focused == "Delete subnet"  # focus moved into the details, on its first action
    page.get_by_role("button", name="Delete network").focus()
    page.keyboard.press("Enter")
    expect(target).to_have_count(0)
    assert ui_server.api("alice").get("/networks", params={"name": "kbd-net"}).json()["networks"] == []


def test_security_group_rule_from_the_page(ui_server: ServerHandle, new_page: Callable[..., Page]) -> None:
    api = ui_server.api("alice")
    assert api.get("/security-groups").status_code == 200  # creates the default group
    page = new_page()
    login(page, ui_server.url, "alice")
    open_form(page, "Security group rule")
    page.locator("#rule-group").select_option(label="default")
    page.locator("#rule-protocol").select_option("tcp")
    page.locator("#rule-min").fill("22")
    page.locator("#rule-remote").fill("198.51.100.0/24")
    page.get_by_role("button", name="Add rule").click()
    item = page.locator("#sg-list li", has_text="ingress IPv4 tcp 22 from 198.51.100.0/24")
    expect(item).to_have_count(1)
    rules = [r for r in api.get("/security-group-rules").json()["security_group_rules"]
             if r["remote_ip_prefix"] == "198.51.100.0/24"]
    assert [(r["port_range_min"], r["port_range_max"], r["protocol"]) for r in rules] == [(22, 22, "tcp")]
    # a bad rule shows the API's message
    page.locator("#rule-protocol").select_option("tcp")
    page.locator("#rule-min").fill("90")
    page.locator("#rule-max").fill("80")
    page.get_by_role("button", name="Add rule").click()
    expect(page.locator("#form-rule .form-error")).not_to_be_empty()
    item.get_by_role("button", name="Delete rule").click()
    expect(item).to_have_count(0)
    assert not [r for r in api.get("/security-group-rules").json()["security_group_rules"]
                if r["remote_ip_prefix"] == "198.51.100.0/24"]


def test_admin_sees_hosts_and_agents_and_switches_project(ui_server: ServerHandle, new_page: Callable[..., Page],
                                                          out_dir: Path) -> None:
    adm = ui_server.api("admin")
    r = adm.post("/vxnet/hosts/compute-1/register", json={"underlay_ip": "192.0.2.11"})
    assert r.status_code == 200, r.text
    a_net = ui_server.api("alice").post("/networks", json={"network": {"name": "a-net"}}).json()["network"]
    ui_server.api("alice").post("/subnets", json={"subnet": {"network_id": a_net["id"], "cidr": "100.154.0.0/24",
                                                             "ip_version": 4}})
    ui_server.api("bob").post("/networks", json={"network": {"name": "b-net"}})
    port = adm.post("/ports", json={"port": {"network_id": a_net["id"], "name": "vm-a", "device_owner": "compute:nova",
                                             "binding:host_id": "compute-1", "project_id": a_net["project_id"]}})
    assert port.status_code == 201, port.text
    vni = adm.get(f"/networks/{a_net['id']}").json()["network"]["provider:segmentation_id"]

    page = new_page()
    login(page, ui_server.url, "admin")
    row = page.locator('#hosts-table tr[data-host="compute-1"]')
    expect(row).to_contain_text("alive")
    expect(row.locator("td").nth(3)).to_have_text(str(1))  # one port bound there
    expect(row.locator("td").nth(4)).to_have_text(str(vni))
    age = float(row.locator("td[data-age]").get_attribute("data-age") or "nan")
    assert 0 <= age < 30
    expect(node(page, "network", "a-net")).to_be_visible()
    expect(node(page, "network", "b-net")).to_be_visible()
    expect(node(page, "network", "a-net")).to_contain_text(f"VNI {vni}")
    expect(node(page, "network", "a-net")).to_contain_text("project tenant-a")  # all projects: labelled
    expect(node(page, "network", "b-net")).to_contain_text("project tenant-b")
    expect(node(page, "port", "vm-a")).to_contain_text("@ compute-1")

    page.get_by_label("Project to show").select_option(label="tenant-b")
    expect(node(page, "network", "a-net")).to_have_count(0)
    expect(node(page, "network", "b-net")).not_to_contain_text("project tenant-b")  # one project: no label
    expect(node(page, "network", "b-net")).to_be_visible()
    page.get_by_label("Project to show").select_option(label="tenant-a")
    expect(node(page, "network", "b-net")).to_have_count(0)
    expect(node(page, "network", "a-net")).to_be_visible()

    # a second host registering shows up live in the operator table
    adm.post("/vxnet/hosts/compute-2/register", json={"underlay_ip": "192.0.2.12"})
    expect(page.locator('#hosts-table tr[data-host="compute-2"]')).to_contain_text("alive", timeout=1000)
    shoot(page, out_dir, "admin-view")


def test_rich_topology_is_drawn_completely(ui_server: ServerHandle, new_page: Callable[..., Page],
                                           out_dir: Path) -> None:
    """A realistic project: two routers, four networks, VMs on two hosts, a floating IP."""
    ext = make_external(ui_server)
    api, adm = ui_server.api("alice"), ui_server.api("admin")
    nets, subnets = {}, {}
    for name, cidr in (("web", "100.65.0.0/24"), ("app", "100.66.0.0/24"), ("db", "100.67.0.0/24"),
                       ("scratch", "100.68.0.0/24")):
        nets[name] = api.post("/networks", json={"network": {"name": name}}).json()["network"]
        subnets[name] = api.post("/subnets", json={"subnet": {"network_id": nets[name]["id"], "cidr": cidr,
                                                              "ip_version": 4, "name": f"{name}-v4"}}).json()["subnet"]
    gateway = {"network_id": ext["id"]}
    r1 = api.post("/routers", json={"router": {"name": "edge", "external_gateway_info": gateway}}).json()["router"]
    r2 = api.post("/routers", json={"router": {"name": "backend"}}).json()["router"]
    for router, name in ((r1, "web"), (r1, "app"), (r2, "db"), (r2, "app")):
        sid = subnets[name]["id"]
        body: dict[str, Any] = {"subnet_id": sid}
        if router is r2 and name == "app":  # a second router on the same subnet needs its own port
            p = api.post("/ports", json={"port": {"network_id": nets["app"]["id"],
                                                  "fixed_ips": [{"subnet_id": sid, "ip_address": "100.66.0.254"}]}})
            body = {"port_id": p.json()["port"]["id"]}
        r = api.put(f"/routers/{router['id']}/add_router_interface", json=body)
        assert r.status_code == 200, r.text
    vms = {}
    for name, net, host in (("web-1", "web", "compute-1"), ("web-2", "web", "compute-2"),
                            ("app-1", "app", "compute-1"), ("db-1", "db", "compute-2")):
        port = api.post("/ports", json={"port": {"network_id": nets[net]["id"], "name": name,
                                                 "device_owner": "compute:nova"}}).json()["port"]
        r = adm.put(f"/ports/{port['id']}", json={"port": {"binding:host_id": host}})
        assert r.status_code == 200, r.text
        vms[name] = port
    fip = api.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"],
                                                        "port_id": vms["web-1"]["id"]}}).json()["floatingip"]

    page = new_page()
    login(page, ui_server.url, "alice")
    expect(page.locator('#graph svg [data-kind="network"]')).to_have_count(4)
    expect(page.locator('#graph svg [data-kind="router"]')).to_have_count(2)
    expect(page.locator('#graph svg [data-kind="port"]')).to_have_count(4)
    expect(page.locator('#graph svg [data-kind="external"]')).to_have_count(1)
    # a network reached by two routers hangs under the first (gateway routers first) and names the other
    expect(node(page, "network", "app")).to_contain_text("also via backend 100.66.0.254")
    expect(node(page, "port", "web-1")).to_contain_text("⇄ " + fip["floating_ip_address"])
    expect(node(page, "port", "db-1")).to_contain_text("100.67.0.")
    assert "compute-" not in page.locator("#graph").inner_text()  # binding:host_id is admin-only in the API
    expect(page.locator('#graph path[data-link="iface"]')).to_have_count(3)  # web, app under edge; db under backend
    expect(page.locator('#graph path[data-link="gateway"]')).to_have_count(1)
    expect(page.locator("#graph svg .section-label", has_text="Networks without a router")).to_have_count(1)
    node(page, "router", "edge").click()
    expect(page.locator("#details-body")).to_contain_text("Interfaces")
    expect(page.locator("#details-body li")).to_have_count(2)  # web and app
    shoot(page, out_dir, "rich-topology")

    admin_page = new_page()
    login(admin_page, ui_server.url, "admin")
    expect(node(admin_page, "port", "db-1")).to_contain_text("@ compute-2")
    expect(admin_page.locator('#hosts-table tr[data-host="compute-1"] td').nth(3)).to_have_text("2")
    shoot(admin_page, out_dir, "admin-rich")


def test_router_gateway_and_interfaces_managed_from_the_page(ui_server: ServerHandle,
                                                             new_page: Callable[..., Page]) -> None:
    ext = make_external(ui_server)
    api = ui_server.api("alice")
    net = api.post("/networks", json={"network": {"name": "lan"}}).json()["network"]
    sub = api.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.75.0.0/24",
                                                "ip_version": 4}}).json()["subnet"]
    router = api.post("/routers", json={"router": {"name": "gw-r"}}).json()["router"]
    assert api.put(f"/routers/{router['id']}/add_router_interface", json={"subnet_id": sub["id"]}).status_code == 200
    page = new_page()
    login(page, ui_server.url, "alice")
    expect(node(page, "router", "gw-r")).to_contain_text("no gateway")

    open_form(page, "Router gateway")
    page.locator("#gw-router").select_option(label="gw-r")
    page.locator("#gw-network").select_option(label="public")
    page.get_by_role("button", name="Set gateway").click()
    expect(node(page, "router", "gw-r")).to_contain_text("gw 203.0.113.")
    assert api.get(f"/routers/{router['id']}").json()["router"]["external_gateway_info"]["network_id"] == ext["id"]

    # deleting a router with an interface: the API refuses, and the page says why
    node(page, "router", "gw-r").click()
    page.get_by_role("button", name="Delete router").click()
    same = api.delete(f"/routers/{router['id']}")
    assert same.status_code == 409
    expect(page.locator("#banner-text")).to_have_text(same.json()["NeutronError"]["message"])

    page.get_by_role("button", name="Remove interface").click()
    expect(page.locator('#graph path[data-link="iface"]')).to_have_count(0)
    expect(node(page, "network", "lan")).to_be_visible()  # now among the networks without a router
    page.get_by_role("button", name="Clear gateway").click()
    expect(node(page, "router", "gw-r")).to_contain_text("no gateway")
    assert api.get(f"/routers/{router['id']}").json()["router"]["external_gateway_info"] is None
    page.get_by_role("button", name="Delete router").click()
    expect(node(page, "router", "gw-r")).to_have_count(0)
    assert api.get(f"/routers/{router['id']}").status_code == 404


def test_keyboard_focus_survives_live_updates(ui_server: ServerHandle, new_page: Callable[..., Page]) -> None:
    api = ui_server.api("alice")
    api.post("/networks", json={"network": {"name": "steady"}})
    page = new_page()
    login(page, ui_server.url, "alice")
    node(page, "network", "steady").focus()
    renders = int(page.locator("#graph").get_attribute("data-renders") or 0)
    api.post("/networks", json={"network": {"name": "other"}})
    expect(node(page, "network", "other")).to_be_visible()
    assert int(page.locator("#graph").get_attribute("data-renders") or 0) > renders  # it was redrawn
    assert page.evaluate("document.activeElement.dataset.name") == "steady"


def test_stream_reconnects_and_page_catches_up(ui_server: ServerHandle, new_page: Callable[..., Page],
                                               monkeypatch: Any) -> None:
    """A stream the server ends (here after 0.5 s) is reopened by the page, which re-reads
    everything: a change made while it was away still appears."""
    from vxnet.api.routers import ui

    monkeypatch.setattr(ui, "MAX_STREAM", 0.5)
    page = new_page()
    login(page, ui_server.url, "alice")
    deadline = time.monotonic() + 10
    while page.evaluate("window.vxState.connects") < 2:  # the stream ended after 0.5 s; retry: 1 s
        assert time.monotonic() < deadline, "the page did not reconnect"
        page.wait_for_timeout(50)
    ui_server.api("alice").post("/networks", json={"network": {"name": "after-reconnect"}})
    expect(node(page, "network", "after-reconnect")).to_be_visible(timeout=5000)


def test_floating_ip_detach_and_release_from_the_page(ui_server: ServerHandle, new_page: Callable[..., Page]) -> None:
    ext = make_external(ui_server)
    api = ui_server.api("alice")
    net = api.post("/networks", json={"network": {"name": "lan"}}).json()["network"]
    sub = api.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.76.0.0/24",
                                                "ip_version": 4}}).json()["subnet"]
    router = api.post("/routers", json={"router": {"name": "r", "external_gateway_info": {"network_id": ext["id"]}}})
    api.put(f"/routers/{router.json()['router']['id']}/add_router_interface", json={"subnet_id": sub["id"]})
    port = api.post("/ports", json={"port": {"network_id": net["id"], "name": "vm",
                                             "device_owner": "compute:nova"}}).json()["port"]
    fip = api.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"],
                                                        "port_id": port["id"]}}).json()["floatingip"]
    address = fip["floating_ip_address"]
    page = new_page()
    login(page, ui_server.url, "alice")
    expect(node(page, "port", "vm")).to_contain_text("⇄ " + address)
    node(page, "port", "vm").click()
    expect(page.locator("#details-body h3")).to_have_text("Port vm")
    page.get_by_role("button", name="Detach").click()
    expect(node(page, "port", "vm")).not_to_contain_text(address)
    expect(node(page, "external", "public")).to_contain_text(f"{address} (free)")
    assert api.get(f"/floatingips/{fip['id']}").json()["floatingip"]["port_id"] is None
    node(page, "external", "public").click()
    page.locator("#details-body li", has_text=address).get_by_role("button", name="Release").click()
    expect(node(page, "external", "public")).to_contain_text("no floating IPs")
    assert api.get(f"/floatingips/{fip['id']}").status_code == 404


def _random_collections(rng: Any) -> dict[str, list[dict[str, Any]]]:
    """REST-shaped collections of a random project (ids are short but unique)."""
    nets = [{"id": f"ext{i}", "name": f"ext-{i}", "router:external": True, "shared": False, "project_id": "p",
             "status": "ACTIVE"} for i in range(rng.randint(0, 2))]
    subnets, ports, routers = [], [], []
    for i in range(rng.randint(0, 9)):
        nets.append({"id": f"n{i}", "name": "net-" + "x" * rng.randint(1, 40), "router:external": False,
                     "shared": False, "project_id": "p", "status": "ACTIVE", "provider:segmentation_id": 1000 + i})
        for j in range(rng.randint(0, 3)):
            subnets.append({"id": f"s{i}-{j}", "network_id": f"n{i}", "cidr": f"100.{64 + i}.{j}.0/24",
                            "gateway_ip": f"100.{64 + i}.{j}.1", "name": "", "project_id": "p"})
        for k in range(rng.randint(0, 6)):
            ports.append({"id": f"p{i}-{k}", "network_id": f"n{i}", "name": f"vm-{i}-{k}",
                          "device_owner": "compute:nova",
                          "status": "ACTIVE", "fixed_ips": [{"subnet_id": "", "ip_address": f"100.{64 + i}.0.{k + 2}"}],
                          "project_id": "p", "device_id": f"d{i}{k}"})
    internal = [n["id"] for n in nets if not n["router:external"]]
    externals = [n["id"] for n in nets if n["router:external"]]
    for r in range(rng.randint(0, 4)):
        gw = {"network_id": rng.choice(externals), "external_fixed_ips": [{"ip_address": "203.0.113.9"}]} \
            if externals and rng.random() < 0.6 else None
        routers.append({"id": f"r{r}", "name": f"router-{r}", "status": "ACTIVE", "project_id": "p",
                        "external_gateway_info": gw})
        for n in rng.sample(internal, rng.randint(0, len(internal))):
            ports.append({"id": f"rp{r}-{n}", "network_id": n, "device_owner": "network:router_interface",
                          "device_id": f"r{r}", "fixed_ips": [{"subnet_id": "", "ip_address": "100.64.0.1"}],
                          "project_id": "p", "status": "ACTIVE", "name": ""})
    return {"networks": nets, "subnets": subnets, "ports": ports, "routers": routers, "floatingips": []}


def test_layout_boxes_never_overlap_and_fit_the_width(ui_server: ServerHandle, new_page: Callable[..., Page]) -> None:
    """The pure layout, run in the browser on random projects at widths from a phone to a wide screen."""
    import random

    page = new_page()
    page.goto(ui_server.url + "/ui")
    page.wait_for_function("() => !!window.VxTopology")
    rng = random.Random(7)
    checked = 0
    for _ in range(25):
        data = _random_collections(rng)
        for width in (300, 360, 390, 768, 1000, 1280, 1920):
            result = page.evaluate("""([data, width]) => {
                const m = VxTopology.buildModel(data, {projectId: null});
                const lay = VxTopology.layout(m, width);
                const boxes = lay.items.filter(i => ["ext", "router", "network"].includes(i.type))
                  .map(i => ({x: i.x, y: i.y, w: i.w, h: i.h, kind: i.type}));
                return {width: lay.width, height: lay.height, boxes,
                        networks: m.networks.length, routers: m.routers.length,
                        drawnNetworks: lay.items.filter(i => i.type === "network").length};
            }""", [data, width])
            boxes = result["boxes"]
            for b in boxes:
                assert b["x"] >= 0 and b["x"] + b["w"] <= result["width"], (width, b)
                assert b["y"] >= 0 and b["y"] + b["h"] <= result["height"], (width, b)
                assert b["w"] > 0 and b["h"] > 0
            for i, a in enumerate(boxes):
                for b in boxes[i + 1:]:
                    apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                             or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
                    assert apart, (width, a, b)
            assert result["drawnNetworks"] == result["networks"]  # every network drawn exactly once
            checked += 1
    assert checked == 25 * 7


def test_operator_sees_port_status_and_agent_death_live(ui_server: ServerHandle,
                                                        new_page: Callable[..., Page]) -> None:
    """An agent reports a port ACTIVE, then dies (its lease is revoked): both show without reload."""
    import json

    adm = ui_server.api("admin")
    assert adm.post("/vxnet/hosts/compute-9/register", json={"underlay_ip": "192.0.2.19"}).status_code == 200
    net = ui_server.api("alice").post("/networks", json={"network": {"name": "n"}}).json()["network"]
    ui_server.api("alice").post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.77.0.0/24",
                                                             "ip_version": 4}})
    port = adm.post("/ports", json={"port": {"network_id": net["id"], "name": "vm-9", "device_owner": "compute:nova",
                                             "binding:host_id": "compute-9", "project_id": net["project_id"]}})
    assert port.status_code == 201, port.text
    page = new_page()
    login(page, ui_server.url, "admin")
    expect(node(page, "port", "vm-9")).to_contain_text("DOWN")
    row = page.locator('#hosts-table tr[data-host="compute-9"]')
    expect(row).to_contain_text("alive")

    r = adm.post("/vxnet/hosts/compute-9/ports-status", json={"ACTIVE": [port.json()["port"]["id"]]})
    assert r.status_code == 200 and r.json()["updated"] == [port.json()["port"]["id"]]
    expect(node(page, "port", "vm-9")).to_contain_text("ACTIVE", timeout=1000)

    live = ui_server.store.get("/vxnet/agents/compute-9")
    assert live is not None
    ui_server.store.revoke_lease(json.loads(live.value)["lease"])
    expect(row.locator("td").nth(1)).to_have_text("DOWN", timeout=3000)
    expect(node(page, "port", "vm-9")).to_contain_text("DOWN", timeout=3000)  # the server marks its ports DOWN


def test_reader_sees_the_topology_with_forms_disabled(ui_server: ServerHandle, new_page: Callable[..., Page]) -> None:
    ui_server.api("alice").post("/networks", json={"network": {"name": "shown"}})
    page = new_page()
    login(page, ui_server.url, "alice_reader")
    expect(node(page, "network", "shown")).to_be_visible()
    expect(page.locator("#readonly-note")).to_be_visible()
    expect(page.get_by_role("button", name="Create network")).to_be_disabled()
    expect(page.locator("#net-name")).to_be_disabled()


def test_page_shows_every_object_past_the_page_cap(tmp_path: Path, new_page: Callable[..., Page],
                                                   monkeypatch: Any) -> None:
    """The server caps list pages ([server] max_page_size, here 3): the page follows the
    `next` links and draws all 8 networks."""
    import functools

    from tests.ui import conftest as ui_conftest

    monkeypatch.setattr(ui_conftest, "Config", functools.partial(ui_conftest.Config, max_page_size=3))
    h = ui_conftest.start_ui_server(str(tmp_path / "vxnet.db"))
    try:
        api = h.api("alice")
        for i in range(8):
            assert api.post("/networks", json={"network": {"name": f"capped-{i}"}}).status_code == 201
        assert len(api.get("/networks").json()["networks"]) == 3
        page = new_page()
        login(page, h.url, "alice")
        for i in range(8):
            node(page, "network", f"capped-{i}").wait_for(timeout=5000)
    finally:
        h.stop()


def test_dual_stack_network_shows_v6_subnets_and_addresses(ui_server: ServerHandle, new_page: Callable[..., Page],
                                                          out_dir: Path) -> None:
    page = new_page()
    login(page, ui_server.url, "alice")
    page.get_by_label("Name", exact=True).first.fill("ds")
    page.get_by_label("Subnet CIDR").fill("2001:db8:7::/64")
    page.locator("#net-v6mode").select_option("slaac")
    page.get_by_role("button", name="Create network").click()
    expect(node(page, "network", "ds")).to_contain_text("2001:db8:7::/64")
    expect(node(page, "network", "ds")).to_contain_text("slaac")

    open_form(page, "Add subnet")
    page.locator("#subnet-network").select_option(label="ds")
    page.locator("#subnet-cidr").fill("100.77.0.0/24")
    page.get_by_role("button", name="Add subnet").click()
    expect(node(page, "network", "ds")).to_contain_text("100.77.0.0/24")

    api = ui_server.api("alice")
    net = api.get("/networks", params={"name": "ds"}).json()["networks"][0]
    subs = {s["ip_version"]: s for s in api.get("/subnets", params={"network_id": net["id"]}).json()["subnets"]}
    assert (subs[6]["ipv6_ra_mode"], subs[6]["ipv6_address_mode"]) == ("slaac", "slaac")
    assert subs[4]["cidr"] == "100.77.0.0/24"

    r = api.post("/ports", json={"port": {"network_id": net["id"], "name": "vm-ds", "device_owner": "compute:nova",
                                          "device_id": "0d3c3c8e-0000-4000-8000-0000000000d5"}})
    assert r.status_code == 201, r.text
    ips = {4 if ":" not in f["ip_address"] else 6: f["ip_address"] for f in r.json()["port"]["fixed_ips"]}
    assert set(ips) == {4, 6}, ips           # one IPv4 address and the SLAAC (EUI-64) one
    port_node = node(page, "port", "vm-ds")
    expect(port_node).to_contain_text(ips[4])
    v6_line = port_node.locator(".port-v6")
    expect(v6_line).to_have_text(ips[6])      # on its own line, whole
    box, line = port_node.locator("rect.port-box").bounding_box(), v6_line.bounding_box()
    assert box and line and box["y"] <= line["y"] and line["y"] + line["height"] <= box["y"] + box["height"] + 1
    page.wait_for_timeout(200)
    shoot(page, out_dir, "dual-stack")
