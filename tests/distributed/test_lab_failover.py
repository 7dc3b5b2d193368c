"""Lab agents given both servers' URLs, servers on a 3-member etcd cluster (issue 6, must-show):

- kill (SIGKILL) the server the agents are watching: each agent's connections move to the
  other server within 5 s; a change made through the other server while h3's agent is frozen
  (SIGSTOP, so it is connected to no server when the change is made: a new port and VM on h3)
  is applied once it resumes: the port goes ACTIVE and the VM is reachable from h1;
- kill every server: traffic between VMs continues (0 lost of 300 pings at 10 ms);
- start them again: a change made then (a new VM on h2) converges.
Which server an agent watches is read from its host namespace's TCP connections.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest

from tests.distributed.conftest import LabEnv, api, token
from tests.root.conftest import needs_root
from tests.root.helpers import nsexec, ping, ping_result, start_ping
from vxnet.lab import lab, topology

pytestmark = [pytest.mark.root, needs_root]


def server_ports(host: int) -> set[int]:
    """Ports of the management address the agent of host `host` has connections to."""
    out = nsexec(topology.host_ns(host), "ss", "-tnH", "state", "established").stdout
    return {int(m) for m in re.findall(rf"{re.escape(topology.MGMT_SERVER_IP)}:(\d+)", out)}


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def make_port(env: LabEnv, net_id: str, ip: str) -> dict:
    url = env.live_url()
    with api(url, token(url, "alice")) as c:
        r = c.post("/ports", json={"port": {"network_id": net_id, "fixed_ips": [{"ip_address": ip}]}})
        assert r.status_code == 201, r.text
        return r.json()["port"]


def status(env: LabEnv, port_id: str) -> str:
    url = env.live_url()
    with api(url, token(url)) as c:
        return c.get(f"/ports/{port_id}").json()["port"]["status"]


def wait_until(cond, timeout: float, step: float = 0.02) -> float:  # type: ignore[no-untyped-def]
    """Seconds until `cond()` holds (AssertionError after `timeout`)."""
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(step)
    return time.time() - t0


def test_agents_fail_over_between_servers_and_keep_forwarding(etcd_lab: LabEnv) -> None:
    env = etcd_lab
    url = env.live_url()
    with api(url, token(url, "alice")) as c:
        net = c.post("/networks", json={"network": {"name": "fo"}}).json()["network"]
        r = c.post("/subnets", json={"subnet": {"network_id": net["id"], "cidr": "100.64.40.0/24", "ip_version": 4}})
        assert r.status_code == 201, r.text
    p1, p2 = make_port(env, net["id"], "100.64.40.11"), make_port(env, net["id"], "100.64.40.12")
    lab.vm_add("f1", "h1", p1["id"])
    lab.vm_add("f2", "h2", p2["id"])
    for p in (p1, p2):
        wait_until(lambda p=p: status(env, p["id"]) == "ACTIVE", 15)
    assert ping("f1", "100.64.40.12") == 2

    # 1. Kill the server the agents watch. h3's agent is frozen (SIGSTOP) across the kill and
    # the change, so the change is made while it is connected to no server at all.
    watched = {h: server_ports(h) for h in (1, 2, 3)}
    by_port = {port_of(s.url): s for s in env.servers}
    # All agents start on the first URL that answers (the servers start in order).
    assert watched[1] == watched[2] == watched[3] and len(watched[3]) == 1 and watched[3] <= set(by_port), watched
    victim = by_port[next(iter(watched[3]))]
    other = next(s for s in env.servers if s is not victim)
    moved: dict[int, float] = {}     # host -> when (time.time()) its agent was on `other` only

    def observe(hosts: tuple[int, ...]) -> None:
        deadline = time.time() + 10
        while any(h not in moved for h in hosts) and time.time() < deadline:
            for h in hosts:
                if h not in moved and server_ports(h) == {port_of(other.url)}:
                    moved[h] = time.time()
            time.sleep(0.005)

    h3_agent = env.state["agents"]["h3"]
    os.kill(h3_agent, signal.SIGSTOP)
    try:
        t_kill = time.time()
        victim.kill()                                  # SIGKILL by PID
        watcher = threading.Thread(target=observe, args=((1, 2),), daemon=True)
        watcher.start()
        p3 = make_port(env, net["id"], "100.64.40.13")
        lab.vm_add("f3", "h3", p3["id"])               # bound through the live server
        t_change = time.time() - t_kill
        watcher.join(15)
        time.sleep(0.3)
        assert status(env, p3["id"]) == "DOWN"         # nobody has applied it yet
    finally:
        t_cont = time.time()
        os.kill(h3_agent, signal.SIGCONT)
    observe((3,))
    assert set(moved) == {1, 2, 3}, f"agents not moved to the live server: {moved}"
    wait_until(lambda: status(env, p3["id"]) == "ACTIVE", 5)
    active = time.time() - t_cont
    wait_until(lambda: ping("f1", "100.64.40.13", count=1, wait=0.2) == 1, 5, step=0)
    reach = time.time() - t_cont
    print(f"\nserver killed: h1/h2 agents on the other server after {moved[1] - t_kill:.2f}/{moved[2] - t_kill:.2f} s; "
          f"change (port + VM + binding) made {t_change:.2f} s after the kill while h3's agent was frozen; "
          f"h3's agent, resumed, on the other server after {moved[3] - t_cont:.2f} s, new port ACTIVE after "
          f"{active:.2f} s, its VM reachable from h1 after {reach:.2f} s")
    assert moved[1] - t_kill < 5 and moved[2] - t_kill < 5 and moved[3] - t_cont < 5
    assert active < 5 and reach < 5
    assert ping("f3", "100.64.40.12") == 2

    # 2. Every server gone: the data plane keeps forwarding.
    other.kill()
    assert all(s.pid is None for s in env.servers)
    proc = start_ping("f1", "100.64.40.12", 0.01, 300)
    sent, received, _ = ping_result(proc)
    proc3 = start_ping("f3", "100.64.40.11", 0.01, 100)
    sent3, received3, _ = ping_result(proc3)
    print(f"all servers down: {received}/{sent} and {received3}/{sent3} pings answered")
    assert sent == received == 300 and sent3 == received3 == 100

    # 3. Servers back: a change made now converges.
    t_back = time.time()
    for s in env.servers:
        s.start()
    t_up = time.time() - t_back
    p4 = make_port(env, net["id"], "100.64.40.14")
    lab.vm_add("f4", "h2", p4["id"])
    wait_until(lambda: status(env, p4["id"]) == "ACTIVE", 15)
    converged = time.time() - t_back
    wait_until(lambda: ping("f1", "100.64.40.14", count=1, wait=0.2) == 1, 10, step=0)
    print(f"servers restarted (both answering after {t_up:.2f} s): a new VM's port ACTIVE "
          f"{converged:.2f} s after the restart began")
    for src, dst in (("f1", "100.64.40.14"), ("f4", "100.64.40.13"), ("f3", "100.64.40.11")):
        assert ping(src, dst) == 2, (src, dst)
    url = env.live_url()
    with api(url, token(url)) as c:
        agents = {a["host"]: a["alive"] for a in c.get("/agents").json()["agents"]}
    assert agents == {"h1": True, "h2": True, "h3": True}, agents
