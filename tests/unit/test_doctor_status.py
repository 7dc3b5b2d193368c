"""Operations without root: the doctor's read-only diff (L2 against the stateful fake kernel,
nftables against listings), the agent's status report, request ids and drift counting, the
doctor request answered through the control plane, the status assembly, and the log setup."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from tests.support.fake_netlink import FakeKernel
from tests.unit.test_compute_l2 import HOSTS, NET_A, P1, P2, P3, net, view
from tests.unit.test_firewall import base_ports
from tests.unit.test_firewall import view as fw_view
from vxnet import logsetup
from vxnet.agent import doctor
from vxnet.agent.core import Agent, AgentConfig
from vxnet.agent.reconciler import Reconciler
from vxnet.cli.ops import doctor_exit, render_doctor, render_status
from vxnet.compute import naming
from vxnet.compute.firewall import compute_firewall
from vxnet.compute.host import HostSpec
from vxnet.compute.l2 import compute_l2
from vxnet.compute.nft_table import NftTable
from vxnet.dataplane.nft_driver import fingerprint
from vxnet.services.operations import build_status, host_state

ME = HOSTS["h1"]["underlay_ip"]
SPEC = HostSpec("h1", ME)


def listing(t: NftTable, drop_rules_of: str | None = None, extra_set: str | None = None,
            hooks: Mapping[str, str | None] | None = None) -> str:
    """A terse `nft list table` text of `t` (what the kernel would print), optionally damaged;
    `hooks` overrides a chain's hook line (None: a regular chain)."""
    lines = [f"table {t.family} {t.name} {{"]
    for s in t.sets:
        lines += [f"\tset {s.name} {{", "\t}"]
    if extra_set:
        lines += [f"\tset {extra_set} {{", "\t}"]
    for c in t.chains:
        lines.append(f"\tchain {c.name} {{")
        hook = (hooks or {}).get(c.name, c.hook)
        if hook:
            lines.append(f"\t\t{hook}")
        if c.name != drop_rules_of:
            lines += [f'\t\tmeta nfproto ipv4 accept comment "{cm}"' for cm in fingerprint(t)[c.name]]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def test_l2_drift_names_missing_changed_and_foreign_entries() -> None:
    k = FakeKernel()
    k.add_tap(naming.tap_name(P1["id"]))
    want = compute_l2(view([P1, P2, P3], [net(NET_A, 1001)]), "h1", ME)
    Reconciler(ME, kernel=k).reconcile(want)
    assert doctor.l2_drift(want, k) == []

    remote = next(e for e in k.fdb.values() if e.dst == HOSTS["h2"]["underlay_ip"])
    del k.fdb[remote.key]                                                  # deleted behind the agent's back
    other = next(e for e in k.fdb.values() if e.dst == HOSTS["h3"]["underlay_ip"])
    k.fdb[other.key] = type(other)(other.dev, other.mac, "198.51.100.99")  # rewritten: wrong VTEP
    found = doctor.l2_drift(want, k)
    assert sorted((d.kind, d.found is None) for d in found) == [("fdb", False), ("fdb", True)]
    missing = next(d for d in found if d.found is None)
    assert remote.mac in missing.object and f"dst={remote.dst}" in (missing.expected or "")
    changed = next(d for d in found if d.found is not None)
    assert "dst=198.51.100.99" in changed.found and f"dst={other.dst}" in (changed.expected or "")

    rec = Reconciler(ME, kernel=k)       # a pass that reads the kernel (the repair) clears it
    rec.reconcile(want)
    assert doctor.l2_drift(want, k) == []


def test_nft_drift_chain_emptied_table_missing_and_sets() -> None:
    fw = compute_firewall(fw_view(base_ports()), "h1")
    tables = {(t.family, t.name): t for t in fw.tables}
    ok = {k: listing(t) for k, t in tables.items()}
    assert doctor.nft_drift(fw.tables, lambda f, n: ok[(f, n)]) == []

    sg = tables[("inet", "vxnet_sg")]
    chain = next(c for c in sg.chains if c.rules)
    damaged = dict(ok)
    damaged[("inet", "vxnet_sg")] = listing(sg, drop_rules_of=chain.name, extra_set="stray")
    del damaged[("bridge", "vxnet_ps")]

    def read(f: str, n: str) -> str:
        if (f, n) not in damaged:
            raise RuntimeError("No such file or directory")
        return damaged[(f, n)]

    found = doctor.nft_drift(fw.tables, read)
    objs = {d.object: d for d in found}
    assert objs["table bridge vxnet_ps"].found is None
    emptied = objs[f"table inet vxnet_sg chain {chain.name}"]
    assert emptied.expected == f"{len(fingerprint(sg)[chain.name])} rules" and emptied.found.startswith("0 rules")
    assert objs["table inet vxnet_sg set stray"].expected is None
    assert len(found) == 3, found


def test_nft_drift_names_a_base_chain_whose_policy_changed_or_that_lost_its_hook() -> None:
    """The rules alone look right in both cases; what filters is the chain's hook and policy."""
    fw = compute_firewall(fw_view(base_ports()), "h1")
    sg = next(t for t in fw.tables if t.name == "vxnet_sg")
    ingress = next(c for c in sg.chains if c.name == "ingress")
    regular = next(c for c in sg.chains if c.hook is None)
    assert ingress.hook and "policy accept" in ingress.hook
    hooks = {"ingress": ingress.hook.replace("policy accept", "policy drop"), "egress": None,
             regular.name: "type filter hook forward priority 5; policy accept;"}
    found = doctor.nft_drift([sg], lambda f, n: listing(sg, hooks=hooks))
    got = {d.object: (d.expected, d.found) for d in found}
    assert got == {
        "table inet vxnet_sg chain ingress hook": ("type filter hook forward priority 10 policy accept",
                                                   "type filter hook forward priority 10 policy drop"),
        "table inet vxnet_sg chain egress hook": ("type filter hook forward priority 0 policy accept", "regular chain"),
        f"table inet vxnet_sg chain {regular.name} hook": ("regular chain",
                                                           "type filter hook forward priority 5 policy accept"),
    }, found


def full_listing(t: NftTable, elements: Mapping[str, frozenset[str]] | None = None) -> str:
    """A full `nft list table` text of `t` (set and map elements in nft's own spelling: wrapped
    over lines, upper-case hex), with `elements` overriding a set's elements."""
    lines = [f"table {t.family} {t.name} {{"]
    for s in t.sets:
        els = sorted((elements or {}).get(s.name, s.elements))
        lines += [f"\t{s.kind} {s.name} {{", f"\t\ttype {s.type}"]
        if els:
            lines.append("\t\telements = { " + ",\n\t\t\t     ".join(e.upper() if ":" in e and "." not in e
                                                                   and " " not in e else e for e in els) + " }")
        lines.append("\t}")
    for c in t.chains:
        lines.append(f"\tchain {c.name} {{")
        if c.hook:
            lines.append(f"\t\t{c.hook}")
        lines += [f'\t\tmeta nfproto ipv4 accept comment "{cm}"' for cm in fingerprint(t)[c.name]]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def test_nft_drift_compares_set_elements_in_full_listings() -> None:
    fw = compute_firewall(fw_view(base_ports()), "h1")
    tables = {(t.family, t.name): t for t in fw.tables}
    full = {k: full_listing(t) for k, t in tables.items()}
    assert doctor.nft_drift(fw.tables, lambda f, n: full[(f, n)], elements=True) == []
    t, s = next((t, s) for t in fw.tables for s in t.sets if len(s.elements) >= 2)
    kept = sorted(s.elements)[1:]
    damaged = dict(full)
    damaged[(t.family, t.name)] = full_listing(t, {s.name: frozenset(kept)})
    found = doctor.nft_drift(fw.tables, lambda f, n: damaged[(f, n)], elements=True)
    assert [(d.object, d.expected, d.found) for d in found] == [
        (f"table {t.family} {t.name} {s.kind} {s.name} elements", f"{len(s.elements)} elements",
         f"{len(kept)} elements (1 missing, 0 not desired)")], found
    # a terse listing (no elements) is not an element drift
    assert doctor.nft_drift(fw.tables, lambda f, n: damaged[(f, n)]) == []


class Control:
    """The agent's control plane, recording what the agent sends."""

    def __init__(self) -> None:
        self.doctor: list[tuple[str, Mapping[str, Any]]] = []
        self.answered = threading.Event()

    def report_doctor(self, request_id: str, result: Mapping[str, Any]) -> None:
        self.doctor.append((request_id, result))
        self.answered.set()


def agent_with_fakes() -> tuple[Agent, FakeKernel, Control]:
    k = FakeKernel()
    k.add_tap(naming.tap_name(P1["id"]))
    ctl = Control()
    a = Agent(AgentConfig("h1", ME), control=ctl, reconciler=Reconciler(ME, kernel=k), features=[])  # type: ignore[arg-type]
    a.doctor_kernel = k
    # the kernel holds exactly the desired tables of the agent's current view
    a.doctor_list_table = lambda f, n: listing(next(t for t in compute_firewall(a.view.view, "h1").tables
                                                    if (t.family, t.name) == (f, n)))
    return a, k, ctl


def snapshot(rev: int, ports: list[dict]) -> dict:
    return {"type": "snapshot", "revision": rev, "view": view(ports, [net(NET_A, 1001)])}


def test_agent_reports_revisions_request_ids_drift_and_reasons(caplog: pytest.LogCaptureFixture) -> None:
    a, k, _ = agent_with_fakes()
    a.on_message(snapshot(5, [P1, P3]))
    assert a.run_once() is not None
    rep = a.status_report()
    assert rep["received_revision"] == rep["applied_revision"] == 5 and rep["ports"] == {"active": 1, "down": 0}
    p2 = dict(P2, **{"binding:host_id": "h1"})   # bound here, no tap: DOWN with the reason
    a.on_message({"type": "update", "revision": 9, "request_id": "req-abc", "put": {"ports": {p2["id"]: p2}}})
    a.on_message({"type": "ping", "revision": 12})
    assert a.status_report()["received_revision"] == 9 and a.status_report()["applied_revision"] == 5
    with caplog.at_level(logging.INFO, logger="vxnet.agent"):
        a.run_once()
    assert any("revision=12 request_ids=req-abc applied" in r.getMessage() for r in caplog.records)
    rep = a.status_report()
    assert rep["applied_revision"] == 9 and rep["down"][p2["id"]].startswith("tap ") and rep["drift"]["repaired"] == 0

    # Drift: an entry deleted behind the agent's back, repaired by a pass that reads the kernel.
    e = next(iter(k.fdb.values()))
    del k.fdb[e.key]
    a.kernel_changed(invalidate=True)
    a.run_once()
    assert a.status_report()["drift"]["repaired"] == 1 and a.status_report()["drift"]["last_repair_at"]
    json.dumps(a.status_report())      # what a heartbeat sends


def test_doctor_request_is_answered_with_the_drift() -> None:
    a, k, ctl = agent_with_fakes()
    a.on_message(snapshot(5, [P1, P3]))
    a.run_once()
    e = next(iter(k.fdb.values()))
    del k.fdb[e.key]
    a.on_message({"type": "doctor", "id": "d" * 32, "repair": False, "hosts": ["h2"]})
    assert not ctl.answered.wait(0.3), "a request for other hosts only is not answered"
    a.on_message({"type": "doctor", "id": "e" * 32, "repair": False, "hosts": None})
    assert ctl.answered.wait(10)
    rid, result = ctl.doctor[0]
    assert rid == "e" * 32 and result["drift_count"] == 1 and result["drift"][0]["kind"] == "fdb"
    assert result["drift"][0]["found"] is None and e.mac in result["drift"][0]["object"]
    assert a.view.revision == 5, "a doctor message is not a view change"


def test_doctor_repair_runs_passes_until_clean() -> None:
    a, k, _ = agent_with_fakes()
    a.on_message(snapshot(5, [P1, P3]))
    a.run_once()
    del k.fdb[next(iter(k.fdb))]
    stop = threading.Event()

    def loop() -> None:                 # the reconcile thread's part: a pass when woken
        while not stop.is_set():
            if a._wake.wait(0.05):
                a._wake.clear()
                a.run_once()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        out = a.doctor(repair=True, timeout=10)
    finally:
        stop.set()
        t.join(5)
    assert out["drift_count"] == 1 and out["after_repair"] == []


def test_status_states_and_port_reasons() -> None:
    assert host_state(False, None, 0) == "dead"
    assert host_state(True, None, 0) == "no report"
    assert host_state(True, {"applied_revision": 7, "received_revision": 7}, 9) == "behind"
    assert host_state(True, {"applied_revision": 7, "received_revision": 8}, 0) == "behind"
    assert host_state(True, {"applied_revision": 9, "received_revision": 9, "failing": ["x"]}, 9) == "failing"
    assert host_state(True, {"applied_revision": 9, "received_revision": 9}, 9) == "ok"
    rec = {"host": "h1", "configurations": {"underlay_ip": ME}}
    ports = {"a": {"id": "a", "binding:host_id": "h1", "status": "DOWN"},
             "b": {"id": "b", "binding:host_id": "h1", "status": "ACTIVE"},
             "c": {"id": "c", "binding:host_id": "ghost", "status": "DOWN"}}
    out = build_status({"agents": {"x": rec}, "ports": ports}, {}, {"h1": {"applied_revision": 3}}, {"h1": 4})
    ghost, h1 = out      # sorted by host name
    assert h1["state"] == "dead" and h1["ports"]["by_status"] == {"DOWN": 1, "ACTIVE": 1}
    assert h1["ports"]["not_active"] == [{"id": "a", "name": "", "status": "DOWN", "why": "agent not alive"}]
    assert ghost["state"] == "unregistered" and ghost["ports"]["not_active"][0]["why"].startswith("no agent")
    out = build_status({"agents": {"x": rec}, "ports": ports}, {"h1": {}},
                       {"h1": {"applied_revision": 4, "received_revision": 4, "down": {"a": "tap t not present"}}},
                       {"h1": 4})
    assert out[1]["state"] == "ok" and out[1]["ports"]["not_active"][0]["why"] == "tap t not present"
    lines = render_status({"server": {"id": "s"}, "servers": [], "store": {"ok": True}, "hosts": out})
    assert any(line.startswith("h1 ") and " ok " in line for line in lines)


def test_doctor_exit_codes_and_text() -> None:
    drift = [{"kind": "fdb", "object": "o", "expected": "e", "found": None}]
    assert doctor_exit({"h1": {"drift": []}}, [], False) == 0
    assert doctor_exit({"h1": {"drift": drift}}, [], False) == 1
    assert doctor_exit({"h1": {"drift": drift, "after_repair": []}}, [], True) == 0
    assert doctor_exit({"h1": {"drift": drift, "after_repair": drift}}, [], True) == 1
    assert doctor_exit({"h1": {"drift": []}}, ["h2"], False) == 2
    assert doctor_exit({"h1": {"error": "boom", "drift": []}}, [], False) == 2
    text = "\n".join(render_doctor({"h1": {"drift": drift, "after_repair": []}}, ["h2"], True))
    assert "h1: 1 drift(s)" in text and "(missing)" in text and "repaired: yes" in text and "h2: NO ANSWER" in text


def test_json_log_lines_and_runtime_level(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logsetup.configure("warning", "json")
        logging.getLogger("vxnet.test").info("hidden")
        logging.getLogger("vxnet.test").warning("req-1 shown %s", "here")
        assert logsetup.set_level("debug") and root.level == logging.DEBUG
        assert not logsetup.set_level("loud") and root.level == logging.DEBUG   # a typo changes nothing
        err = capsys.readouterr().err.strip().splitlines()
        docs = [json.loads(line) for line in err]
        assert docs[0]["msg"] == "req-1 shown here" and docs[0]["level"] == "WARNING" and docs[0]["logger"] == "vxnet.test"
        assert "hidden" not in "".join(err) and docs[0]["ts"].endswith("+00:00")
        with pytest.raises(ValueError):
            logsetup.configure("info", "xml")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_control_socket_serves_doctor_to_root_only(tmp_path) -> None:
    import os
    import socket
    import stat

    from vxnet.agent.control import ControlSocket, ask_agent

    path = str(tmp_path / "run" / "agent.sock")
    assert ask_agent(path, False) is None                      # no agent: the caller falls back
    calls: list[bool] = []

    def doctor_fn(repair: bool) -> dict:
        calls.append(repair)
        return {"host": "h1", "drift": [], "after_repair": [] if repair else None}

    srv = ControlSocket(path, doctor_fn)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert ask_agent(path, True) == {"host": "h1", "drift": [], "after_repair": []}
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b'{"op": "shutdown"}\n')
            answer = json.loads(s.makefile().readline())
        assert "error" in answer and calls == [True]
    finally:
        srv.close()
    assert not os.path.exists(path) and ask_agent(path, False) is None


def test_agent_config_file_settings(tmp_path) -> None:
    from vxnet.cli.agent import agent_settings

    assert agent_settings(None) == {}
    f = tmp_path / "agent.toml"
    f.write_text('[agent]\nlog_level = "debug"\nlog_format = "json"\n')
    assert agent_settings(str(f)) == {"log_level": "debug", "log_format": "json"}
    f.write_text('[agent]\nlog_levle = "debug"\n')
    with pytest.raises(ValueError, match="unknown"):
        agent_settings(str(f))
    f.write_text("[agent\n")
    with pytest.raises(ValueError):
        agent_settings(str(f))


def test_agent_logs_every_request_of_a_merged_revision(caplog: pytest.LogCaptureFixture) -> None:
    """On etcd one revision may carry several requests (services/txn_batch.py): the hub sends
    their ids comma-separated, and the agent logs each in full (not cut at 80 characters)."""
    a, _, _ = agent_with_fakes()
    a.on_message(snapshot(5, [P1, P3]))
    a.run_once()
    ids = [f"req-{i}" + "0" * 35 for i in range(3)]  # the length of req-<uuid>
    p2 = dict(P2, **{"binding:host_id": "h1"})
    a.on_message({"type": "update", "revision": 9, "request_id": ",".join(ids), "put": {"ports": {p2["id"]: p2}}})
    with caplog.at_level(logging.INFO, logger="vxnet.agent"):
        a.run_once()
    assert any(f"revision=9 request_ids={','.join(ids)} applied" in r.getMessage() for r in caplog.records)
