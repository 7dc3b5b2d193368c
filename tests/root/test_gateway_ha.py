"""Gateway high availability, real packets: `vxnet lab up --hosts 2 --gateways 2 --external`
with every agent run with `--bfd` (one FRR bfdd per host, 100 ms x 3).

Two routers: actives spread over h3/h4, each with the other as its standby. Behind router A:
VM v1 on h1 with a floating IP and VM v2 on h2 without (SNAT). Both take the real path (their
default route is their subnet's gateway: the distributed router, policy-routed to the snat
port). Three streams, each sending every 50 ms:
- the outside client holds a TCP connection to v1 through its floating IP (echoed),
- v2 holds a TCP connection to an outside server through SNAT (echoed),
- the outside pings the floating IP.
(BOUND is 3 s here, for a loaded machine; the 1 s goal is measured in bench/gateway_ha_bench.py.)
Then:
1. `lab host fail` on router A's active gateway (cables down, every process of the host
   SIGKILLed, bfdd and the agent included): both TCP connections survive (the same sockets
   go on) and the longest gap of every stream is <= BOUND, well before the store's lease (8 s)
   expires: BFD moved the path (the standby took over, the computes re-pointed their FDB).
2. `lab host recover`: the host registers again, the scheduler rebalances (actives back on
   both gateways, each router with a standby); the streams still have no gap over BOUND.
   Before the failure, the standby's namespace already holds both flows' conntrack entries
   (conntrackd, FTFW, one per gateway namespace).
3. A planned move: router B's active dies and comes back; the rebalance moves router A (with
   the open connections) to it: no gap over BOUND, the connections survive.
4. A partition (the active's underlay cable alone is cut; its agent and daemons run, the store
   still calls it alive): the standby takes over, the cut-off host fences itself (it lost
   every BFD session), and the outside never gets a duplicate answer; the streams go on.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.root.conftest import Lab, lab_session, needs_root
from tests.root.helpers import PingStream, max_gap, wait_for
from tests.root.test_gateway import allow_outside, ok, router_ports, tenant_router, vm_behind
from tests.support.tcpstream import TcpStream, serve
from vxnet.compute.gateway import router_netns
from vxnet.lab import hostfail, topology

pytestmark = [pytest.mark.root, needs_root]

OUT = topology.EXTERNAL_NS
CLIENT = topology.EXTERNAL_CLIENT_IP
LEASE = 8           # the store's lease: failover must not wait for it
INTERVAL = 0.05
# Longest gap allowed (seconds). Issue 17's goal is 1 s, measured where timings belong
# (bench/gateway_ha_bench.py: 10 failovers, max 712 ms); this pass/fail test shows the failover
# is BFD's (well inside the store's LEASE) and connections survive, with room for a loaded
# machine (a suite run at load 7-20 saw 1.3 s once).
BOUND = 3.0
GW = "network:router_gateway"


@pytest.fixture(scope="module")
def halab(tmp_path_factory) -> Iterator[Lab]:
    with lab_session(tmp_path_factory, "halab", 2, lease=LEASE, agent_args=["--bfd"], gateways=2, external=True,
                     wait_hosts={"h1", "h2", "h3", "h4"}, wait_timeout=60) as g:
        yield g


def placement(g: Lab, rid: str) -> tuple[str, tuple[str, ...]]:
    gw = router_ports(g, rid, GW)[0]
    return gw["binding:host_id"], tuple((gw["binding:vif_details"] or {}).get("ha_standby_hosts") or ())


def bfd_up(host: str, peers: set[str]) -> bool:
    """`host`'s bfdd has a session up with each of `peers` (underlay addresses)."""
    from vxnet.lab.lab import bfd_dir

    r = subprocess.run(["vtysh", "--vty_socket", bfd_dir(host), "-c", "show bfd peers json"],
                       capture_output=True, text=True, check=False)
    try:
        up = {p["peer"] for p in json.loads(r.stdout or "[]") if p.get("status") == "up"}
    except ValueError:
        return False
    return peers <= up


def ul(host: str) -> str:
    return topology.underlay_ip(int(host[1:]))


def dump(hosts: tuple[str, ...]) -> None:
    """On a failure: the agents' HA log lines and the taps' state (the lab's logs go with it)."""
    from vxnet.lab.lab import state_dir

    for h in hosts:
        try:
            with open(os.path.join(state_dir(), f"agent-{h}.log")) as f:
                lines = [ln for ln in f if "vxnet.agent.ha" in ln or "bfd" in ln or "ERROR" in ln or "WARN" in ln]
        except OSError:
            lines = []
        print(f"--- {h}:", "".join(lines[-30:]))
        print(subprocess.run(["ip", "-n", topology.host_ns(int(h[1:])), "-br", "link"], capture_output=True,
                             text=True, check=False).stdout)
        from vxnet.lab.lab import bfd_dir

        print(subprocess.run(["vtysh", "--vty_socket", bfd_dir(h), "-c", "show bfd peers brief"],
                             capture_output=True, text=True, check=False).stdout)
        print(subprocess.run(["tail", "-5", os.path.join(bfd_dir(h), "bfdd.log")], capture_output=True, text=True,
                             check=False).stdout)
        print(subprocess.run(["ip", "netns", "pids", topology.host_ns(int(h[1:]))], capture_output=True, text=True,
                             check=False).stdout)


def synced(ns: str, fip: str) -> bool:
    """The namespace's conntrack table holds the two streams' established flows (the floating
    IP's DNAT one and the SNAT one), as conntrackd copied them from the active."""
    out = subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-L", "-p", "tcp"], capture_output=True,
                         text=True, check=False).stdout
    lines = [ln for ln in out.splitlines() if "ESTABLISHED" in ln]
    return (any(f"dst={fip}" in ln and "dport=8081" in ln for ln in lines)
            and any(f"dst={CLIENT}" in ln and "dport=8090" in ln for ln in lines))


def ns_exists(ns: str) -> bool:
    return os.path.exists(f"/run/netns/{ns}")


class Streams:
    """The three 50 ms streams of the module docstring."""

    def __init__(self, fip: str, snat_vm: str) -> None:
        self.fip_tcp = TcpStream(OUT, fip, 8081, INTERVAL)
        self.snat_tcp = TcpStream(topology.vm_ns(snat_vm), CLIENT, 8090, INTERVAL)
        self.ping = PingStream(OUT, fip, INTERVAL)
        for s in (self.fip_tcp, self.snat_tcp):
            s.wait_replies(10, timeout=20)
        self.ping.wait_replies(10, timeout=20)

    def gaps(self, since: float) -> dict[str, float]:
        return {"fip_tcp": self.fip_tcp.max_gap(since), "snat_tcp": self.snat_tcp.max_gap(since),
                "ping": max_gap([t for t in self.ping.stamps if t >= since])}

    def flowing_after(self, t: float, n: int = 10, timeout: float = 20) -> None:
        """Every stream has `n` answers after time `t` (events, not sleeps)."""
        def count() -> bool:
            return all(sum(1 for x in s.stamps if x > t) >= n for s in (self.fip_tcp, self.snat_tcp, self.ping))
        wait_for(count, timeout=timeout, interval=0.05)

    def alive(self) -> bool:
        return self.fip_tcp.alive and self.snat_tcp.alive

    def stop(self) -> dict[str, str]:
        with self.ping:
            pass
        return {"fip_tcp": self.fip_tcp.stop(), "snat_tcp": self.snat_tcp.stop()}


@pytest.fixture(scope="module")
def topo(halab: Lab) -> Iterator[dict[str, Any]]:
    g = halab
    na, _, r1 = tenant_router(g, "alice", "192.0.2.0/24", "ha-a")
    nb, _, r2 = tenant_router(g, "alice", "100.64.20.0/24", "ha-b")
    # router A (the VMs' one) is the one with the lower id: the one a rebalance moves first
    (net, base, ra), (_, _, rb) = sorted([(na, "192.0.2", r1), (nb, "100.64.20", r2)], key=lambda x: x[2]["id"])
    allow_outside(g, "alice")
    p1 = g.port("alice", net["id"], f"{base}.11")
    p2 = g.port("alice", net["id"], f"{base}.12")
    vm_behind(g, "v1", "h1", p1, ra["id"], via_snat=False)
    vm_behind(g, "v2", "h2", p2, ra["id"], via_snat=False)
    with g.api("alice") as c:
        ext = ra["external_gateway_info"]["network_id"]
        fip = ok(c.post("/floatingips", json={"floatingip": {"floating_network_id": ext, "port_id": p1["id"]}}),
                 201)["floatingip"]["floating_ip_address"]
    servers = [serve(topology.vm_ns("v1"), 8081), serve(OUT, 8090)]
    try:
        yield {"ra": ra["id"], "rb": rb["id"], "fip": fip}
    finally:
        for p in servers:
            p.kill()
            p.wait()


def _ready(g: Lab, t: dict[str, Any]) -> tuple[str, str]:
    """Router A's (active, standby) once both namespaces and every BFD session are up."""
    act, sb = placement(g, t["ra"])
    assert act in ("h3", "h4") and len(sb) == 1 and sb[0] != act, (act, sb)
    g.wait_status(router_ports(g, t["ra"], GW)[0]["id"], "ACTIVE", timeout=30)
    wait_for(lambda: ns_exists(router_netns(t["ra"], act)) and ns_exists(router_netns(t["ra"], sb[0])), timeout=30)
    gws = {"h3", "h4"}
    wait_for(lambda: all(bfd_up(h, {ul(x) for x in gws - {h}}) for h in ("h1", "h2"))
             and bfd_up(act, {ul(sb[0])}) and bfd_up(sb[0], {ul(act)}), timeout=30, interval=0.2)
    return act, sb[0]


def test_placement_spreads_actives_with_standbys(halab: Lab, topo: dict[str, Any]) -> None:
    a, b = placement(halab, topo["ra"]), placement(halab, topo["rb"])
    assert {a[0], b[0]} == {"h3", "h4"}, (a, b)
    assert a[1] == (b[0],) and b[1] == (a[0],)
    # the standby's namespace is prepared but off the bridges: its taps are down
    _act, sb = _ready(halab, topo)
    tap = router_ports(halab, topo["ra"], GW)[0]["id"][:11]
    out = subprocess.run(["ip", "-n", topology.host_ns(int(sb[1:])), "-o", "link", "show", f"tap{tap}"],
                         capture_output=True, text=True, check=True).stdout
    assert "state DOWN" in out and "master" not in out, out


def test_host_failure_and_recovery_keep_connections(halab: Lab, topo: dict[str, Any]) -> None:
    g = halab
    act, sb = _ready(g, topo)
    streams = Streams(topo["fip"], "v2")
    down: str | None = None
    try:
        # conntrackd (FTFW) has put both established flows in the standby's table already
        wait_for(lambda: synced(router_netns(topo["ra"], sb), topo["fip"]), timeout=20, interval=0.2)
        t_fail = time.time()
        down = act
        killed = hostfail.fail(g.state, act)
        assert killed, "no process killed"
        streams.flowing_after(t_fail + 0.1, n=20)
        t_back = time.time()
        # the path moved before the store could (its lease is LEASE s): BFD did it
        assert t_back - t_fail < LEASE - 2, t_back - t_fail
        gaps = streams.gaps(t_fail - 1)
        print(f"host fail {act}: gaps {gaps}, flowing again after {t_back - t_fail:.2f} s")
        assert streams.alive(), streams.fip_tcp.output[-3:] + streams.snat_tcp.output[-3:]
        assert all(v <= BOUND for v in gaps.values()), gaps
        # the store catches up: router A's active is the standby, no standby left
        wait_for(lambda: placement(g, topo["ra"]) == (sb, ()), timeout=LEASE + 20, interval=0.2)
        t_rec = time.time()
        down = None
        hostfail.recover(g.state, act)
        wait_for(lambda: act in g.alive_hosts(), timeout=60, interval=0.2)
        # rebalanced: one active on each gateway host, each router has the other as standby
        def balanced() -> bool:
            a, b = placement(g, topo["ra"]), placement(g, topo["rb"])
            return {a[0], b[0]} == {"h3", "h4"} and a[1] == (b[0],) and b[1] == (a[0],)
        wait_for(balanced, timeout=30, interval=0.2)
        _ready(g, topo)
        streams.flowing_after(time.time(), n=20)
        gaps = streams.gaps(t_rec)
        print(f"recover {act}: gaps {gaps}; router A now {placement(g, topo['ra'])}")
        assert streams.alive()
        assert all(v <= BOUND for v in gaps.values()), gaps
    finally:
        print(streams.stop())
        _recover_after_failure(g, down)


def _recover_after_failure(g: Lab, host: str | None, partition: bool = False) -> None:
    """A test that failed between `fail` and `recover` brings its host back, so the next tests
    start from two gateways again instead of failing in `_ready`."""
    if host is not None:
        hostfail.recover(g.state, host, partition=partition)
        wait_for(lambda: host in g.alive_hosts(), timeout=60, interval=0.2)


def test_partitioned_gateway_stops_serving(halab: Lab, topo: dict[str, Any]) -> None:
    g = halab
    act, _sb = _ready(g, topo)
    streams = Streams(topo["fip"], "v2")
    down: str | None = None
    try:
        t0 = time.time()
        down = act
        hostfail.fail(g.state, act, partition=True)
        streams.flowing_after(t0 + 0.1, n=20)
        # the cut-off host fenced itself: its copy of router A is off the external bridge
        tap = "tap" + router_ports(g, topo["ra"], GW)[0]["id"][:11]

        def fenced() -> bool:
            out = subprocess.run(["ip", "-n", topology.host_ns(int(act[1:])), "-o", "link", "show", tap],
                                 capture_output=True, text=True, check=False).stdout
            return "state DOWN" in out and "master" not in out
        wait_for(fenced, timeout=10)
        assert act in g.alive_hosts()          # the store still calls it alive: BFD fenced it
        streams.flowing_after(time.time(), n=20)
        gaps = streams.gaps(t0 - 1)
        print(f"partition {act}: gaps {gaps}")
        assert streams.alive()
        assert all(v <= BOUND for v in gaps.values()), gaps
        t1 = time.time()
        down = None
        hostfail.recover(g.state, act, partition=True)
        _ready(g, topo)
        streams.flowing_after(time.time(), n=20)
        gaps = streams.gaps(t1)
        print(f"partition healed: gaps {gaps}")
        assert streams.alive() and all(v <= BOUND for v in gaps.values()), gaps
    except AssertionError:
        dump(("h1", "h3", "h4"))
        raise
    finally:
        print(streams.stop())
        _recover_after_failure(g, down, partition=True)
    dups = [ln for ln in streams.ping.output if "DUP" in ln]
    assert dups == [], dups[:5]


def test_rebalance_moves_a_router_with_live_connections(halab: Lab, topo: dict[str, Any]) -> None:
    """A planned move: router B's active dies, so both routers are on one host; when it comes
    back, the rebalance moves router A (the lower id, no standby to prefer) to it while both
    connections are open: they survive, no gap over BOUND."""
    g = halab
    act, other = _ready(g, topo)
    assert placement(g, topo["rb"])[0] == other
    streams = Streams(topo["fip"], "v2")
    down: str | None = None
    try:
        down = other
        hostfail.fail(g.state, other)
        wait_for(lambda: placement(g, topo["rb"])[0] == act and placement(g, topo["ra"]) == (act, ()),
                 timeout=LEASE + 30, interval=0.2)
        t_rec = time.time()
        down = None
        hostfail.recover(g.state, other)
        wait_for(lambda: placement(g, topo["ra"]) == (other, (act,)), timeout=60, interval=0.2)
        _ready(g, topo)
        streams.flowing_after(time.time(), n=20)
        gaps = streams.gaps(t_rec)
        print(f"rebalance moved router A {act} -> {other}: gaps {gaps}")
        assert streams.alive(), streams.fip_tcp.output[-3:] + streams.snat_tcp.output[-3:]
        assert all(v <= BOUND for v in gaps.values()), gaps
        assert placement(g, topo["rb"]) == (act, (other,))
    except AssertionError:
        dump(("h1", "h3", "h4"))
        raise
    finally:
        print(streams.stop())
        _recover_after_failure(g, down)
