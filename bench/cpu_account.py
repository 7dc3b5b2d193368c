"""CPU per byte of a data-plane measurement, and the statistics of paired per-round ratios.

Why CPU per byte (issue 18, "the data plane, measured as users run it"): on this CPU-bound 2-vCPU
VM a single TCP stream's Gbit/s is the CPU it gets divided by the CPU each byte costs; the first
factor swings 1.5-8x with other sessions' load, the second hardly. So the data-plane benchmark
counts, per iperf3 run:
- the iperf3 client's and server's own CPU (user + system seconds, `os.wait4` rusage: exact,
  scaled to the scheduler's runtime). With this kernel's tick accounting
  (CONFIG_IRQ_TIME_ACCOUNTING unset) softirq work runs and is charged in the context it
  interrupts: the veth -> bridge -> netfilter -> VXLAN -> veth chain a sender's `netif_rx`
  raises is run at its `local_bh_enable`, i.e. charged to the iperf3 process;
- the ksoftirqd threads' CPU over the run (`/proc/<pid>/stat` utime + stime): softirq work the
  kernel deferred out of the processes' context (it does so when a softirq pass exceeds its
  budget), which the first figure misses;
- per CPU, the softirq jiffies of /proc/stat (work in softirq context whatever the process;
  it overlaps the two figures above, and includes other sessions' softirq work) and the
  NET_RX/NET_TX counts of /proc/softirqs: context for where the work ran, not summed.

Everything here but the small readers is pure: parsing of those files, quartiles, and paired
ratios with their median and interquartile range (tests/unit/test_bench_cpu_account.py).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Sequence

PROC_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def parse_proc_stat(text: str) -> dict[str, dict[str, int]]:
    """Per-CPU jiffies from /proc/stat: {"cpu": {...all...}, "cpu0": {...}, ...}, the fields of
    PROC_STAT_FIELDS (missing trailing ones count 0)."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or not parts[0].startswith("cpu"):
            continue
        vals = [int(x) for x in parts[1:1 + len(PROC_STAT_FIELDS)]]
        vals += [0] * (len(PROC_STAT_FIELDS) - len(vals))
        out[parts[0]] = dict(zip(PROC_STAT_FIELDS, vals, strict=True))
    return out


def parse_softirqs(text: str) -> dict[str, list[int]]:
    """/proc/softirqs: softirq name (NET_RX, ...) -> count per CPU."""
    lines = text.splitlines()
    if not lines:
        return {}
    ncpu = len(lines[0].split())
    out = {}
    for line in lines[1:]:
        name, _, rest = line.partition(":")
        if rest:
            out[name.strip()] = [int(x) for x in rest.split()[:ncpu]]
    return out


def task_ticks(stat_text: str) -> int:
    """utime + stime (clock ticks) from a /proc/<pid>/stat line (the comm may hold spaces and
    parentheses: the fields are counted after its last ')')."""
    fields = stat_text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], field: str) -> dict[str, int]:
    """Per CPU, `after - before` of one /proc/stat field (CPUs in both)."""
    return {cpu: after[cpu][field] - before[cpu][field] for cpu in after if cpu in before}


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(Q1, median, Q3) of `values`, linear interpolation between order statistics (the
    "inclusive" method: Q1 and Q3 of [1, 2, 3, 4, 5] are 2 and 4); one value gives it three times."""
    if not values:
        raise ValueError("no values")
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


@dataclasses.dataclass(frozen=True)
class RatioStats:
    """Per-round ratios a/b: median, interquartile range, how many rounds."""

    median: float
    q1: float
    q3: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def text(self, fmt: str = "{:.3f}") -> str:
        """"0.912 [0.890-0.931], n=15"."""
        return f"{fmt.format(self.median)} [{fmt.format(self.q1)}-{fmt.format(self.q3)}], n={self.n}"


def paired_ratios(a: Sequence[float | None], b: Sequence[float | None]) -> list[float]:
    """a[i] / b[i] for the rounds where both were measured (and b[i] > 0)."""
    return [x / y for x, y in zip(a, b, strict=False) if x is not None and y is not None and y > 0]


def ratio_stats(a: Sequence[float | None], b: Sequence[float | None]) -> RatioStats | None:
    """Median and IQR of the per-round ratios a/b (None when no round has both)."""
    r = paired_ratios(a, b)
    if not r:
        return None
    q1, med, q3 = quartiles(r)
    return RatioStats(med, q1, q3, len(r))


# --- the small readers (not pure) --------------------------------------------------------------


def read_proc_stat() -> dict[str, dict[str, int]]:
    with open("/proc/stat") as f:
        return parse_proc_stat(f.read())


def read_softirqs() -> dict[str, list[int]]:
    with open("/proc/softirqs") as f:
        return parse_softirqs(f.read())


def ksoftirqd_pids() -> list[int]:
    """PIDs of the ksoftirqd/N kernel threads (seen from any network namespace: no PID namespace)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().startswith("ksoftirqd/"):
                        pids.append(int(d))
            except OSError:
                continue
    return pids


def ticks_of(pids: Sequence[int]) -> int:
    """Sum of utime + stime ticks of `pids` (vanished ones count 0)."""
    t = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                t += task_ticks(f.read())
        except (OSError, IndexError, ValueError):
            continue
    return t


@dataclasses.dataclass
class Snapshot:
    """What `take()` reads before and after a run."""

    stat: dict[str, dict[str, int]]
    softirqs: dict[str, list[int]]
    ksoftirqd_ticks: int


def take(ksoftirqd: Sequence[int]) -> Snapshot:
    return Snapshot(read_proc_stat(), read_softirqs(), ticks_of(ksoftirqd))


def account(s0: Snapshot, s1: Snapshot, hz: int) -> dict[str, object]:
    """The run's CPU outside the iperf3 processes: ksoftirqd seconds, per-CPU softirq seconds
    (/proc/stat) and NET_RX/NET_TX counts (/proc/softirqs)."""
    soft = delta(s0.stat, s1.stat, "softirq")
    return {"ksoftirqd_s": (s1.ksoftirqd_ticks - s0.ksoftirqd_ticks) / hz,
            "softirq_s": {cpu: v / hz for cpu, v in soft.items() if cpu != "cpu"},
            "net_rx": [b - a for a, b in zip(s0.softirqs.get("NET_RX", []), s1.softirqs.get("NET_RX", []),
                                             strict=False)],
            "net_tx": [b - a for a, b in zip(s0.softirqs.get("NET_TX", []), s1.softirqs.get("NET_TX", []),
                                             strict=False)]}


def cpu_s_per_gbit(iperf: dict[str, object]) -> float | None:
    """CPU-seconds per Gbit received of one run (bench.kernel_lab.iperf3_run's result): both
    iperf3 processes' rusage plus ksoftirqd's time; None when the run has no such figures."""
    proc, ksoft, nbytes = iperf.get("cpu_proc_s"), iperf.get("ksoftirqd_s"), iperf.get("bytes")
    if not isinstance(proc, float | int) or not isinstance(ksoft, float | int) or not isinstance(nbytes, int) \
            or nbytes <= 0:
        return None
    return (proc + ksoft) / (nbytes * 8 / 1e9)


def speed_by_cpu(a: Sequence[float | None], b: Sequence[float | None]) -> RatioStats | None:
    """How fast row a is relative to row b if both are CPU-bound: per round, b's CPU per Gbit
    over a's (a figure of 0.8 means a costs 1.25x the CPU per byte of b)."""
    return ratio_stats(b, a)
