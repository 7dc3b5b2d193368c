"""The port-up trace: the agent's `trace` line for a pass that plugs a tap or adds entries, and
bench/port_up_bench.py's join of those lines into per-stage times of one bind."""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest

from vxnet.agent import core
from vxnet.agent.reconciler import ReconcileResult
from vxnet.compute.diff import diff_host
from vxnet.compute.state import Fdb, HostState, Neigh, Plug

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bench import port_up_bench as pub

TAP = "tapaaaa0000-00"
MAC = "fa:16:3e:00:00:01"


EMPTY = HostState()


def result(desired: HostState, actual: HostState = EMPTY) -> ReconcileResult:
    return ReconcileResult(diff_host(desired, actual), (), frozenset(), frozenset(), 0.001, False,
                           phases=(("read_links", 0.0002), ("plugs", 0.0008)))


def traced(caplog: pytest.LogCaptureFixture, r: ReconcileResult) -> list[dict]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vxnet.agent.trace"):
        core._trace("h1", r, 100.0, 100.001, 100.004, 100.006, ["firewall"], (0.002, 0.001, 0.003))
    return [json.loads(m.split(" trace ", 1)[1]) for m in caplog.messages]


def test_a_pass_that_plugs_logs_its_times_and_what_it_added(caplog: pytest.LogCaptureFixture) -> None:
    plug = Plug(TAP, "vxbaaaa", 1450)
    want = HostState(plugs=frozenset({plug}), fdb=frozenset({Fdb(TAP, MAC)}),
                     neighs=frozenset({Neigh("vxbaaaa", "100.64.20.10", MAC)}))
    [doc] = traced(caplog, result(want))
    assert doc["plugged"] == [TAP] and doc["fdb"] == [MAC] and doc["neigh"] == ["100.64.20.10"]
    assert (doc["recv"], doc["start"], doc["fw"], doc["l2"]) == (100.0, 100.001, 100.004, 100.006)
    assert doc["end"] >= doc["l2"] and doc["first"] == ["firewall"]
    assert (doc["cpu_fw"], doc["cpu_l2"], doc["cpu_end"]) == (0.002, 0.001, 0.003)
    assert doc["l2_phases"]["plugs"] == 0.0008
    # an unplugged tap that gets its bridge is an update of the plug, and counts as plugged
    [doc] = traced(caplog, result(HostState(plugs=frozenset({plug})),
                                  HostState(plugs=frozenset({Plug(TAP, "", 1450)}))))
    assert doc["plugged"] == [TAP]


def test_a_pass_that_adds_nothing_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    same = HostState(fdb=frozenset({Fdb("vxvaaaa", MAC, "198.51.100.2")}))
    assert traced(caplog, result(same, same)) == []
    assert traced(caplog, result(HostState(), same)) == []     # deletions only


def test_the_bench_joins_target_and_peer_traces_into_stages(tmp_path) -> None:
    t0 = 1000.0
    lines = {
        "h1": [{"recv": t0 - 5, "start": t0 - 5, "fw": t0 - 5, "l2": t0 - 5, "end": t0 - 5, "plugged": [TAP],
                "fdb": [], "neigh": []},   # an older pass of the same tap (before t0): not this bind's
               {"recv": t0 + 0.010, "start": t0 + 0.011, "fw": t0 + 0.014, "l2": t0 + 0.016, "end": t0 + 0.030,
                "plugged": [TAP], "fdb": [MAC], "neigh": [], "cpu_fw": 0.002, "cpu_l2": 0.001, "cpu_end": 0.005,
                "rq_fw": 0.0007, "parts": {"compute_l2": 0.0002, "compute_firewall": 0.0006, "compute_plug": 0.0009,
                                           "apply_firewall": 0.0015}}],
        "h2": [{"recv": t0 + 0.009, "start": t0 + 0.009, "fw": t0 + 0.009, "l2": t0 + 0.012, "end": t0 + 0.013,
                "plugged": [], "fdb": [MAC], "neigh": [], "cpu_fw": 0.0005, "cpu_l2": 0.001, "cpu_end": 0.0015}],
        # the third host's pass (another port's FDB entry) from t0 + 12.5 ms: with h2's, it covers
        # the target's start -> firewall loaded (11 -> 14 ms) from 11 to 14, both from 12.5 to 13
        "h3": [{"recv": t0 + 0.012, "start": t0 + 0.0125, "fw": t0 + 0.0125, "l2": t0 + 0.015, "end": t0 + 0.020,
                "plugged": [], "fdb": ["02:00:00:00:00:99"], "neigh": []}],
    }
    for host, docs in lines.items():
        with open(tmp_path / f"agent-{host}.log", "w") as f:
            f.write("2026-12-06 INFO vxnet.agent host=h1 revision=3 applied {} in 1.0 ms\n")
            f.writelines(f"2026-12-06 INFO vxnet.agent.trace host={host} trace {json.dumps(d)}\n" for d in docs)
    (tmp_path / "server.log").write_text(f"host=h1 trace {json.dumps(lines['h1'][1])}\n")   # not an agent's
    traces = pub.read_traces(str(tmp_path))
    assert {h: len(v) for h, v in traces.items()} == {"h1": 2, "h2": 1, "h3": 1}
    st = pub.port_stages(traces, t0, t0 + 0.008, t0 + 0.017, "h1", TAP, MAC)
    want = {"bind_put": 0.008, "to_recv": 0.010, "recv_to_start": 0.001, "start_to_fw": 0.003, "fw_to_plug": 0.002,
            "cpu_fw": 0.002, "cpu_l2": 0.001, "cpu_end": 0.005, "rq_fw": 0.0007, "part_compute_plug": 0.0009,
            "part_compute_firewall": 0.0006, "part_apply_firewall": 0.0015, "peers_overlap_fw": 0.003,
            "peers_both_fw": 0.0005, "plug_to_end": 0.014, "plug_to_reply": 0.001, "to_plug": 0.016,
            "to_peer_fdb": 0.012, "peer_fdb_to_reply": 0.005, "peer_start_to_fdb": 0.003, "peer_cpu_fdb": 0.0015,
            "peer_cpu": 0.003}
    assert st.keys() == want.keys()
    for k, v in want.items():
        assert st[k] == pytest.approx(v, abs=1e-6), k
    # no trace of the port at all: only the benchmark's own stage
    assert pub.port_stages({}, t0, t0 + 0.008, t0 + 0.017, "h1", TAP, MAC) == {"bind_put": pytest.approx(0.008)}
    rows = pub.stage_rows("vxnet", {k: [v] for k, v in st.items()})
    assert len(rows) == len(want) and rows[0][1].startswith("stage: bind PUT")


def test_the_agent_logs_each_accepted_status_report(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vxnet.agent.trace"):
        core._trace_report("h1", 100.0, ["p1", "p2"], ["p3"])
    [msg] = caplog.messages
    assert msg.startswith("host=h1 trace-status ")
    doc = json.loads(msg.split(" trace-status ", 1)[1])
    assert doc["sent"] == 100.0 and doc["answered"] >= 100.0
    assert (doc["active"], doc["down"]) == (["p1", "p2"], ["p3"])


def test_the_bench_joins_the_status_report_and_the_commit_into_the_active_stages(tmp_path) -> None:
    t0 = 1000.0
    plug = {"recv": t0 + 0.010, "start": t0 + 0.011, "fw": t0 + 0.014, "l2": t0 + 0.016, "end": t0 + 0.030,
            "plugged": [TAP], "fdb": [], "neigh": []}
    reports = [{"sent": t0 - 3, "answered": t0 - 2.9, "active": ["p1"], "down": []},   # an earlier bind's
               {"sent": t0 + 0.031, "answered": t0 + 0.040, "active": ["p0"], "down": []},   # another port's
               {"sent": t0 + 0.032, "answered": t0 + 0.041, "active": ["p1", "p2"], "down": []}]
    with open(tmp_path / "agent-h1.log", "w") as f:
        f.write(f"2026-12-06 INFO vxnet.agent.trace host=h1 trace {json.dumps(plug)}\n")
        f.writelines(f"2026-12-06 INFO vxnet.agent.trace host=h1 trace-status {json.dumps(d)}\n" for d in reports)
    traces = pub.read_traces(str(tmp_path))
    got = pub.read_traces(str(tmp_path), "trace-status")
    assert len(traces["h1"]) == 1 and len(got["h1"]) == 3     # each reader only its own lines
    st = pub.port_stages(traces, t0, t0 + 0.008, t0 + 0.017, "h1", TAP, MAC, "p1", t0 + 0.045, got, t0 + 0.036)
    want = {"end_to_sent": 0.002, "report": 0.009, "to_sent": 0.032, "sent_to_commit": 0.004,
            "commit_to_answer": 0.005, "commit_to_active": 0.009, "answer_to_active": 0.004, "to_active": 0.045}
    for k, v in want.items():
        assert st[k] == pytest.approx(v, abs=1e-6), k
    # the embedded store: no commit time, the rest as before
    st = pub.port_stages(traces, t0, t0 + 0.008, t0 + 0.017, "h1", TAP, MAC, "p1", t0 + 0.045, got)
    assert not {"sent_to_commit", "commit_to_answer", "commit_to_active"} & st.keys()
    assert st["report"] == pytest.approx(0.009) and st["answer_to_active"] == pytest.approx(0.004)
