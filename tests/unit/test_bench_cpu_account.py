"""bench/cpu_account.py: the parsing of /proc/stat, /proc/softirqs and /proc/<pid>/stat, the
quartile and paired-ratio maths the data-plane benchmark's median [IQR] figures come from, and
the CPU per Gbit of one iperf3 run; plus bench/dataplane_bench.py's row selection and pinning."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bench import cpu_account as ca
from bench import dataplane_bench as dp

PROC_STAT = """cpu  2181983 13164 312939 1790499 16887 0 27367 27954 0 0
cpu0 995766 5439 147279 1006282 4388 0 11523 14011 0 0
cpu1 1186217 7725 165659 784216 12499 0 15843 13942 0 0
intr 123 4 5
ctxt 999
"""

SOFTIRQS = """                    CPU0       CPU1
          HI:          1          0
       TIMER:     100200     100300
      NET_TX:      38037      35214
      NET_RX:    7542574    7575328
"""


def test_proc_stat_is_read_per_cpu_by_field_name() -> None:
    st = ca.parse_proc_stat(PROC_STAT)
    assert set(st) == {"cpu", "cpu0", "cpu1"}
    assert st["cpu0"]["softirq"] == 11523 and st["cpu1"]["steal"] == 13942 and st["cpu"]["user"] == 2181983


def test_proc_stat_pads_missing_trailing_fields_with_zero() -> None:
    assert ca.parse_proc_stat("cpu0 1 2 3 4\n")["cpu0"] == {
        "user": 1, "nice": 2, "system": 3, "idle": 4, "iowait": 0, "irq": 0, "softirq": 0, "steal": 0}


def test_delta_is_per_cpu_and_skips_cpus_seen_once() -> None:
    a = ca.parse_proc_stat("cpu0 0 0 0 0 0 0 10 0\ncpu1 0 0 0 0 0 0 20 0\n")
    b = ca.parse_proc_stat("cpu0 0 0 0 0 0 0 15 0\ncpu1 0 0 0 0 0 0 27 0\ncpu2 0 0 0 0 0 0 9 0\n")
    assert ca.delta(a, b, "softirq") == {"cpu0": 5, "cpu1": 7}


def test_softirqs_counts_per_cpu() -> None:
    s = ca.parse_softirqs(SOFTIRQS)
    assert s["NET_RX"] == [7542574, 7575328] and s["NET_TX"] == [38037, 35214] and s["HI"] == [1, 0]


def test_task_ticks_counts_after_the_last_parenthesis_of_the_comm() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
    line = "4242 (a (b) c) S 1 1 1 0 -1 4194304 10 0 0 0 137 42 0 0 20 0 1 0 100"
    assert ca.task_ticks(line) == 137 + 42


def test_quartiles_interpolate_between_order_statistics() -> None:
    assert ca.quartiles([5, 1, 4, 2, 3]) == (2, 3, 4)
    assert ca.quartiles([1, 2, 3, 4]) == (1.75, 2.5, 3.25)
    assert ca.quartiles([7.0]) == (7.0, 7.0, 7.0)
    with pytest.raises(ValueError):
        ca.quartiles([])


def test_ratio_stats_pairs_rounds_and_skips_missing_or_zero() -> None:
    st = ca.ratio_stats([2.0, None, 3.0, 4.0, 5.0], [1.0, 1.0, 0.0, 2.0, 2.0])
    assert st is not None
    assert ca.paired_ratios([2.0, None, 3.0, 4.0, 5.0], [1.0, 1.0, 0.0, 2.0, 2.0]) == [2.0, 2.0, 2.5]
    assert (st.q1, st.median, st.q3, st.n) == (2.0, 2.0, 2.25, 3)
    assert st.iqr == pytest.approx(0.25)
    assert st.text("{:.2f}") == "2.00 [2.00-2.25], n=3"
    assert ca.ratio_stats([None], [1.0]) is None


def test_speed_by_cpu_is_the_inverse_ratio_of_cpu_per_gbit() -> None:
    # a costs 1.25x the CPU per Gbit of b in every round: a reaches 0.8x of b when CPU-bound
    st = ca.speed_by_cpu([0.125, 0.25], [0.1, 0.2])
    assert st is not None and st.median == pytest.approx(0.8) and st.iqr == pytest.approx(0.0)


def test_cpu_per_gbit_adds_ksoftirqd_to_the_processes_and_divides_by_gbit_received() -> None:
    run = {"cpu_proc_s": 1.5, "ksoftirqd_s": 0.5, "bytes": 1_250_000_000}   # 10 Gbit
    assert ca.cpu_s_per_gbit(run) == pytest.approx(0.2)
    assert ca.cpu_s_per_gbit({"gbps": 3.0}) is None
    assert ca.cpu_s_per_gbit({**run, "bytes": 0}) is None


def test_account_reports_ksoftirqd_seconds_softirq_per_cpu_and_net_rx() -> None:
    s0 = ca.Snapshot(ca.parse_proc_stat("cpu 0 0 0 0 0 0 10 0\ncpu0 0 0 0 0 0 0 4 0\ncpu1 0 0 0 0 0 0 6 0\n"),
                     {"NET_RX": [100, 200], "NET_TX": [1, 1]}, 50)
    s1 = ca.Snapshot(ca.parse_proc_stat("cpu 0 0 0 0 0 0 60 0\ncpu0 0 0 0 0 0 0 54 0\ncpu1 0 0 0 0 0 0 6 0\n"),
                     {"NET_RX": [700, 210], "NET_TX": [1, 3]}, 75)
    assert ca.account(s0, s1, 250) == {"ksoftirqd_s": 0.1, "softirq_s": {"cpu0": 0.2, "cpu1": 0.0},
                                       "net_rx": [600, 10], "net_tx": [0, 2]}


def test_goal_rows_select_exactly_the_goal_rows_and_the_control() -> None:
    chosen = {dp.ROWS[i][:2] for i in dp.selected(("=goals",))}
    assert chosen == set(dp.GOAL_ROWS)
    assert (dp.PLAIN_AGAIN, dp.CROSS) in chosen and len(chosen) == 5
    assert len(dp.selected(())) == len(dp.ROWS)
    assert {dp.ROWS[i][0] for i in dp.selected(("ovn",))} == {"OVN"}


def test_pin_option() -> None:
    assert dp.parse_pin("0,1") == (0, 1)
    assert dp.parse_pin("none") is None and dp.parse_pin("") is None


def _round(gbps: float, cpu_s: float, p50: float) -> dict:
    nbytes = int(gbps * 2 * 1e9 / 8)   # 2 s runs
    return {"load1": 1.0, "iperf": {"gbps": gbps, "bytes": nbytes, "cpu_proc_s": cpu_s, "ksoftirqd_s": 0.0,
                                    "softirq_s": {"cpu0": 0.1, "cpu1": 0.0}, "net_rx": [10, 0], "net_tx": [0, 0]},
            "ping": {"rtts": [p50], "lost": 0}}


def test_cpu_tables_judge_a_goal_only_when_the_iqr_is_on_one_side() -> None:
    row = lambda s, p, rs: {"system": s, "path": p, "error": None, "rounds": rs}
    by = {(dp.VX, dp.CROSS): row(dp.VX, dp.CROSS, [_round(5, 2.0, 0.1), _round(5, 2.0, 0.1)]),
          dp.UL: row(*dp.UL, [_round(10, 2.0, 0.05), _round(10, 2.0, 0.05)]),
          (dp.VXPS, dp.CROSS): row(dp.VXPS, dp.CROSS, [_round(8, 2.0, 0.1), _round(12, 2.0, 0.1)]),
          (dp.PLAIN, dp.CROSS): row(dp.PLAIN, dp.CROSS, [_round(10, 2.0, 0.1), _round(10, 2.0, 0.1)])}
    md, goals = dp.cpu_tables(by)
    assert "| vxnet (default group) | underlay |" in md
    # default group: 2 CPU-s for 10 Gbit vs 2 for 20: 0.50 in both rounds -> NOT met
    assert "0.50 [0.50-0.50], n=2 here (NOT met)" in goals[0]
    # port security off: 0.8 and 1.2 -> the IQR [0.9-1.1] straddles 0.95: undecided, neither verdict
    assert "undecided" in goals[1]


def test_a_rate_cap_keeps_gbit_ratios_out_of_the_goal_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    def row(system: str, path: str, gbps: float, cpu_s: float) -> dict:
        return {"system": system, "path": path, "error": None, "rounds": [_round(gbps, cpu_s, 0.1)] * 3}
    res = {"rows": {"0": row(dp.VX, dp.CROSS, 2.0, 2.0), "1": row(*dp.UL, 2.0, 1.0),
                    "2": row(dp.VXPS, dp.CROSS, 2.0, 1.0), "3": row(dp.PLAIN, dp.CROSS, 2.0, 1.0)},
           "settings": {}, "notes": []}
    monkeypatch.setattr(dp, "in_sandbox", lambda call, timeout: res)
    monkeypatch.setattr(dp.os, "geteuid", lambda: 0)
    opts = argparse.Namespace(quick=False, dp_rounds=3, dp_seconds=2.0, dp_pings=1, dp_only=["=goals"], dp_pin="0,0",
                              dp_rate="2G", dp_json=None, ovn_lab="x")
    goals = dp.run(opts).goals
    # same Gbit/s everywhere (capped): no "met" from Gbit/s; the CPU lines judge (0.50: NOT met; 1.00: met)
    assert all("not judged by Gbit/s" in g for g in goals[:2])
    assert "0.50 [0.50-0.50], n=3 here (NOT met)" in goals[2] and "1.00 [1.00-1.00], n=3 here (met)" in goals[3]
    opts.dp_rate = ""
    assert "1.00x here (met)" in dp.run(opts).goals[0]
