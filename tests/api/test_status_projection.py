"""Port status is the port's own host's business: a status report reaches that host's view
stream only, and wakes no other host's agent (services/host_view.py `project`)."""

from __future__ import annotations

from typing import Any

from tests.api.test_host_view import StreamReader, _port, _put, agent_client, srv  # noqa: F401 - fixture
from tests.conftest import ServerHandle
from vxnet.agent.core import Agent, AgentConfig
from vxnet.agent.reconciler import ReconcileResult
from vxnet.compute.diff import diff_host
from vxnet.compute.state import HostState

HOSTS = {"hv1": "198.51.100.1", "hv2": "198.51.100.2", "hv3": "198.51.100.3"}


class _Recorder:
    """The agent's kernel side, recording: every pass ends here."""

    owned_ifindexes: frozenset[int] = frozenset()

    def reconcile(self, desired: HostState, hold: frozenset[str] = frozenset()) -> ReconcileResult:
        local = frozenset(lp.port_id for lp in desired.local_ports)
        return ReconcileResult(diff_host(desired, HostState()), (), local, frozenset(), 0.0, False)

    def invalidate(self) -> None:
        pass

    def close(self) -> None:
        pass


def _passes(agent: Agent, lines: list[tuple[float, dict[str, Any]]]) -> None:
    """Feed stream lines to an agent as its stream thread does, one pass per non-ping line."""
    for _, m in lines:
        agent.on_message(m)
        if m["type"] != "ping":
            agent.run_once()


def test_a_status_report_reaches_only_its_own_host(srv: ServerHandle) -> None:  # noqa: F811
    c = agent_client(srv)
    for host, ip in HOSTS.items():
        assert c.post(f"/hosts/{host}/register", json={"underlay_ip": ip}).status_code == 200
    net = srv.api("admin").post("/networks", json={"network": {"name": "n1"}}).json()["network"]["id"]
    for i, host in enumerate(HOSTS, 1):
        _put(srv, "ports", _port(net, host, f"p{i}", mac_address=f"fa:16:3e:00:00:0{i}",
                                 fixed_ips=[{"subnet_id": "s", "ip_address": f"192.0.2.1{i}"}]))
    streams = {h: StreamReader(srv, h) for h in HOSTS}
    for s in streams.values():
        _, snap = s.wait(lambda m: m["type"] == "snapshot")
        assert set(snap["view"]["ports"]) == {"p1", "p2", "p3"}
    mine = streams["hv1"].wait(lambda m: m["type"] == "snapshot")[1]["view"]["ports"]
    assert mine["p1"]["status"] == "DOWN" and "status" not in mine["p2"] and "revision_number" not in mine["p3"]
    agents = {h: Agent(AgentConfig(h, ip), control=None, reconciler=_Recorder(), features=[])  # type: ignore[arg-type]
              for h, ip in HOSTS.items()}
    for h, a in agents.items():
        _passes(a, list(streams[h].lines))
    before = {h: (len(streams[h].lines), agents[h].passes) for h in HOSTS}

    r = c.post("/hosts/hv1/ports-status", json={"ACTIVE": ["p1"]})
    assert r.status_code == 200 and r.json()["updated"] == ["p1"]
    _, upd = streams["hv1"].wait(lambda m: m["type"] == "update" and "p1" in m["put"].get("ports", {}))
    assert upd["put"]["ports"]["p1"]["status"] == "ACTIVE"
    # A barrier every host sees: a new port on the network. Whatever the status report sent
    # the peers would have arrived before it (one ordered stream per host).
    rev = _put(srv, "ports", _port(net, "hv3", "p9", mac_address="fa:16:3e:00:00:09"))
    for h, s in streams.items():
        s.wait(lambda m: m.get("revision") == rev)
        new = [m for _, m in s.lines[before[h][0]:] if m["type"] == "update"]
        expected = 2 if h == "hv1" else 1           # hv1: its status, then p9; the peers: p9 only
        assert len(new) == expected, f"{h} got {new}"
        assert new[-1]["revision"] == rev
        _passes(agents[h], [(0.0, m) for m in new])
        assert agents[h].passes - before[h][1] == expected
    # The agent's own status echo is its only extra pass, and it is an "unchanged" one.
    assert agents["hv1"].unchanged_passes == 1 and agents["hv2"].unchanged_passes == 0
    assert agents["hv3"].unchanged_passes == 0
    for s in streams.values():
        s.close()
