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
import time
from collections.abc import Iterator

import pytest

from tests.root.conftest import Lab, lab_session, needs_root
from tests.root.helpers import wait_for
from tests.root.test_bgp import learned, mgmt, pings_from_outside, vm_with_icmp_floating_ip
from tests.root.test_gateway import gateway_ip, router_ports
from vxnet.lab import bgp as lab_bgp

pytestmark = [pytest.mark.root, needs_root]

LEASE = 30      # far longer than the failover: the announcement must follow BFD, not the lease


@pytest.fixture(scope="module")
def hlab(tmp_path_factory) -> Iterator[Lab]:
    with lab_session(tmp_path_factory, "bgpha", 1, lease=LEASE, agent_args=["--bfd"], gateways=2, external=True,
                     bgp=True, wait_hosts={"h1", "h2", "h3"}) as g:
        yield g


def test_announcement_follows_the_failover(hlab: Lab) -> None:
    from vxnet.lab import hostfail

    g = hlab
    r, _, fip = vm_with_icmp_floating_ip(g, "f1", "100.64.95.0/24", "ha", "100.64.95.11")
    addr, gw = fip["floating_ip_address"], gateway_ip(r)
    gwp = router_ports(g, r["id"], "network:router_gateway")[0]
    act = gwp["binding:host_id"]
    standby = ({"h2", "h3"} - {act}).pop()
    assert (gwp.get("binding:vif_details") or {}).get("ha_standby_hosts") == [standby]
    wait_for(lambda: learned(g, f"{addr}/32") == [(gw, mgmt(act))], timeout=20)
    wait_for(lambda: pings_from_outside(addr), timeout=20)
    time.sleep(2)                                # the standby copy is prepared: still one path only
    assert learned(g, f"{addr}/32") == [(gw, mgmt(act))]

    t0 = time.time()
    hostfail.fail(g.state, act)
    wait_for(lambda: (gw, mgmt(standby)) in learned(g, f"{addr}/32"), timeout=15, interval=0.1)
    announced = time.time() - t0
    wait_for(lambda: learned(g, f"{addr}/32") == [(gw, mgmt(standby))], timeout=30, interval=0.2)
    only = time.time() - t0
    assert pings_from_outside(addr)
    print(f"\nactive {act} failed: the standby {standby} announces {addr}/32 after {announced:.2f} s; the "
          f"dead host's path is gone after {only:.1f} s (BGP hold time 9 s; store lease {LEASE} s)")
    assert announced < LEASE / 2, "the announcement waited for the store, not the failover"
    hostfail.recover(g.state, act)
    with open(os.path.join(lab_bgp.bgp_dir(g.state_dir, standby), "bgpd.pid")) as f:
        assert int(f.read())
