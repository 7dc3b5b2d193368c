"""BGP with gateway high availability, real daemons: `vxnet lab up --hosts 1 --gateways 2
--external --bgp` with agents run with `--bfd` (h2, h3: one active, one standby per router).

- Only the active announces the floating IP (a prepared standby copy does not).
- `vxnet lab host fail` on the active: the standby takes over on BFD (not on the store lease,
  long here) and announces it; once the dead host's session expires (BGP hold time) the
  upstream router's only path for the /32 is the standby's, with the same next hop (the
  router's gateway address, which moved with the takeover), and the floating IP answers.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.root.conftest import USERS_TOML, Lab, needs_root
from tests.root.test_bgp import learned, mgmt
from tests.root.test_gateway import OUT, external_network, gateway_ip, ok, router_ports, tenant_router, wait_for
from vxnet.lab import bgp as lab_bgp

pytestmark = [pytest.mark.root, needs_root]

LEASE = 30      # far longer than the failover: the announcement must follow BFD, not the lease


@pytest.fixture(scope="module")
def hlab(tmp_path_factory) -> Iterator[Lab]:
    from tests.conftest import free_port
    from vxnet.lab import lab

    d = tmp_path_factory.mktemp("bgpha")
    cfg = d / "lab.toml"
    toml = USERS_TOML.format(port=free_port(), db=d / "vxnet.db")
    cfg.write_text(toml.replace("underlay_mtu = 1500", f"underlay_mtu = 1500\nagent_down_time = {LEASE}"))
    old = os.environ.get("VXNET_LAB_DIR")
    os.environ["VXNET_LAB_DIR"] = str(d / "state")
    try:
        lab.down(quiet=True)
        st = lab.up(1, str(cfg), agent_args=["--bfd"], gateways=2, external=True, bgp=True)
        g = Lab(st)
        g.state_dir = str(d / "state")  # type: ignore[attr-defined]

        def registered() -> bool:
            with g.api("admin") as c:
                agents = c.get("/agents").json()["agents"]
            return {a["host"] for a in agents if a["alive"]} >= {"h1", "h2", "h3"}
        wait_for(registered, timeout=30, interval=0.2)
        yield g
    finally:
        try:
            lab.down()
        finally:
            if old is None:
                os.environ.pop("VXNET_LAB_DIR", None)
            else:
                os.environ["VXNET_LAB_DIR"] = old


def pings(addr: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", OUT, "ping", "-c", "1", "-W", "0.5", addr],
                          capture_output=True, check=False).returncode == 0


def test_announcement_follows_the_failover(hlab: Lab) -> None:
    from vxnet.lab import hostfail

    g = hlab
    net, _, r = tenant_router(g, "alice", "100.64.95.0/24", "ha")
    p = g.port("alice", net["id"], "100.64.95.11")
    g.vm("f1", "h1", p)
    g.wait_status(p["id"], "ACTIVE", timeout=20)
    ext = external_network(g)
    with g.api("alice") as c:
        sg = ok(c.get("/security-groups", params={"name": "default"}))["security_groups"][0]
        rr = c.post("/security-group-rules", json={"security_group_rule": {
            "security_group_id": sg["id"], "direction": "ingress", "ethertype": "IPv4", "protocol": "icmp",
            "remote_ip_prefix": "203.0.113.0/24"}})
        assert rr.status_code in (201, 409), rr.text
        fip = ok(c.post("/floatingips", json={"floatingip": {"floating_network_id": ext["id"], "port_id": p["id"]}}),
                 201)["floatingip"]
    addr, gw = fip["floating_ip_address"], gateway_ip(r)
    gwp = router_ports(g, r["id"], "network:router_gateway")[0]
    act = gwp["binding:host_id"]
    standby = ({"h2", "h3"} - {act}).pop()
    assert (gwp.get("binding:vif_details") or {}).get("ha_standby_hosts") == [standby]
    wait_for(lambda: learned(g, f"{addr}/32") == [(gw, mgmt(act))], timeout=20)
    wait_for(lambda: pings(addr), timeout=20)
    time.sleep(2)                                # the standby copy is prepared: still one path only
    assert learned(g, f"{addr}/32") == [(gw, mgmt(act))]

    t0 = time.time()
    hostfail.fail(g.state, act)
    wait_for(lambda: (gw, mgmt(standby)) in learned(g, f"{addr}/32"), timeout=15, interval=0.1)
    announced = time.time() - t0
    wait_for(lambda: learned(g, f"{addr}/32") == [(gw, mgmt(standby))], timeout=30, interval=0.2)
    only = time.time() - t0
    assert pings(addr)
    print(f"\nactive {act} failed: the standby {standby} announces {addr}/32 after {announced:.2f} s; the "
          f"dead host's path is gone after {only:.1f} s (BGP hold time 9 s; store lease {LEASE} s)")
    assert announced < LEASE / 2, "the announcement waited for the store, not the failover"
    hostfail.recover(g.state, act)
    with open(os.path.join(lab_bgp.bgp_dir(g.state_dir, standby), "bgpd.pid")) as f:  # type: ignore[attr-defined]
        assert int(f.read())
