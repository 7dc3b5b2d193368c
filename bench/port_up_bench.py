"""Port-up latency, vxnet's lab (embedded store, and etcd) against ../shared/peers/ovn-lab.sh, in one run.

Definition (issues 3, 18): bind through the API -> ACTIVE -> first reply to an echo request sent
every 2 ms from a VM on another host. vxnet: `vxnet lab` with 3 hosts (server + 3 real agents in
namespaces), one prober VM per host, then `--ports` (100) new ports round-robin over h1..h3. For
each port its VM namespace and tap exist before the bind (Nova creates the tap first); the prober
on the next host already knows the new VM's MAC (a permanent neighbour entry, so the VM kernel's
1 s ARP retry does not quantise the figure) and sends to it on a fixed 2 ms schedule with the
project's prober (tests/support/probe.py: absolute schedule, kernel receive timestamps; iputils
`ping` sends at most one request per 10 ms while unanswered, which put "first reply" on a 10 ms
grid); t0 is just before `PUT /v2.0/ports/ID {"binding:host_id": H}`; "ACTIVE" is the first GET
that shows it; "first reply" is the receive timestamp of the first echo reply. The measuring
loop is the one of tests/root/test_port_up_latency.py. After the headline rows, one row per
stage of the critical path (STAGES: bind PUT, update at the target agent, pass start, filters
loaded, tap plugged, the pass thread's CPU time, the peer host's FDB entry, first reply), from
the agents' `trace` log lines (agent/core.py) and the benchmark's own timestamps.

vxnet on etcd (issue 6): the same lab and loop, but the lab's agents are given two `vxnet
server`s (`--server URL,URL`) on a fresh 3-member etcd cluster on loopback (the setup of
tests/distributed/test_lab_failover.py, inside the same private namespace). The agents watch the
first server; the benchmark's API calls (create, bind, the ACTIVE poll) go to the second, so a
bind travels API server -> etcd -> the other server's watch -> agent stream, the path of a
deployment with several servers. Rounds alternate (embedded, etcd, OVN, embedded, ...) and the
table has the ratio etcd / embedded.

OVN: the peer script `start`, `measure` with NPORTS=100, `stop` (its own LAB directory under a
temporary directory). Its port-up loop is the same shape: VM netns and veth made first, static
neighbours both ways, t0 just before `ovn-nbctl lsp-add` + `ovs-vsctl add-port`, "up" = the NB
Logical_Switch_Port's up=true (the ACTIVE analogue), "first ping" = the kernel receive time of the
first reply to the same kind of fixed-rate prober (../shared/peers/fixed-rate-probe.py, started
before the port exists) from a VM on another chassis. Ports round-robin over 3 chassis.

Contract: everything created is removed on the way out, also on failure (`lab down`, `ovn-lab.sh
stop`). Neither lab is started when namespaces of that lab already exist (someone else's run):
the benchmark waits a little, then reports why it measured nothing instead of tearing it down.
No figure is ever invented: a part that could not run shows its error output in the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

from bench.common import lab as vxnet_lab
from bench.report import Report, percentile
from bench.servers import import_repo

NAME = "Port-up latency: vxnet lab (embedded store and etcd) vs OVN lab (same run)"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _peer_script(name: str) -> str:
    """../shared/peers/NAME beside the checkout; from a git worktree elsewhere, beside the main
    checkout (the parent of the common .git directory)."""
    own = os.path.normpath(os.path.join(REPO, "..", "shared", "peers", name))
    if os.path.exists(own):
        return own
    try:
        r = subprocess.run(["git", "-C", REPO, "rev-parse", "--path-format=absolute", "--git-common-dir"],
                           capture_output=True, text=True, check=False)
    except OSError:                     # no git: a copy of the tree, not a checkout
        return own
    main = os.path.dirname(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip() else REPO
    found = os.path.normpath(os.path.join(main, "..", "shared", "peers", name))
    return found if os.path.exists(found) else own


OVN_LAB = _peer_script("ovn-lab.sh")
HOSTS = ("h1", "h2", "h3")
NET_CIDR = "100.64.20.0/24"


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f}"


def _stats_row(system: str, what: str, xs: list[float], failed: int, note: str) -> list[str]:
    if not xs:
        return [system, what, "0", "", "", "", "", "", note]
    return [system, what, str(len(xs)) + (f" (+{failed} failed)" if failed else ""),
            _ms(percentile(xs, 50)), _ms(percentile(xs, 90)), _ms(percentile(xs, 99)), _ms(max(xs)),
            _ms(statistics.mean(xs)), note]


# --- the vxnet lab ------------------------------------------------------------------------------


# When the benchmark polls the API for ACTIVE (a GET every ~1 ms): "during" the wait for the
# first reply (default, the method of the earlier figures), or "after" it came. A GET costs the
# server CPU that the first reply's path (server, agents) may wait for; Nova waits for an event
# instead. With "after", a port already ACTIVE at the first GET counts ACTIVE at that GET. In one
# run at load ~12 (2 x 30 ports each) the difference was within the noise (p50 36.1, 36.5 ms
# during vs 30.2, 38.1 ms after).
ACTIVE_POLL = "during"
QUIET = 10.0   # seconds the lab prefix must stay free before a run starts (0 inside a sandbox)
# The agents' nice value (`--portup-agent-nice`; 0: left as started). Set on each agent's main
# thread (its pass thread) once the lab is up: Linux's nice is per thread, and the threads an
# agent starts after that inherit it (seen in a run: all 8 of each agent's threads at -10), so in
# effect the whole agent, as OVS runs ovs-vswitchd at nice -10 by default.
AGENT_NICE = 0


def in_sandbox(call: str, timeout: float) -> object:
    """Evaluate `call` (a Python expression; `p` = this module, `a` = bench.agent_bench) in a child
    process with its own network and mount namespaces and an empty /run/netns, and return its
    JSON result.

    Why: the lab's names are fixed (`vxl-*` namespaces, the `vxlmgmt` link and 100.127.255.254 in
    the root namespace), so a root test run elsewhere on the machine tears down a lab it did not
    start (its fixtures clean up leftovers first). In the sandbox the same lab code builds the
    same topology (same veths, bridges, VXLAN devices, agents, server) where no one else can see
    it; when the child exits, its namespaces go with it, even after a crash.
    """
    os.makedirs("/run/netns", exist_ok=True)  # the tmpfs mount point; absent on a fresh machine
    fd, out = tempfile.mkstemp(prefix="vxnet-bench-", suffix=".json")
    os.close(fd)
    code = ("import json, bench.port_up_bench as p, bench.agent_bench as a; p.QUIET = 0\n"
            f"p.ACTIVE_POLL = {ACTIVE_POLL!r}\np.AGENT_NICE = {AGENT_NICE!r}\n"
            f"r = {call}\nwith open({out!r}, 'w') as f: json.dump(r, f)")
    script = 'mount -t tmpfs vxnet-bench /run/netns && ip link set lo up && exec "$0" -c "$1"'
    try:
        try:
            r = subprocess.run(["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script,
                                sys.executable, code], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                               check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"sandboxed `{call}` timed out after {timeout:.0f} s") from None
        if r.returncode != 0:
            raise RuntimeError(f"sandboxed `{call}` exit {r.returncode}: {_tail(r.stderr, 4)}")
        with open(out) as f:
            return json.load(f)
    finally:
        os.unlink(out)


def wait_lab_free(timeout: float, quiet: float | None = None) -> list[str]:
    """Wait until no `vxl-` namespace and no lab state have existed for `quiet` seconds (so the
    gap between two tests of someone else's suite does not count as free); returns what is still
    there after `timeout`. The lab's names are fixed (one lab per machine), so a run of the root
    tests elsewhere and this benchmark would tear each other's lab down."""
    import_repo()
    from vxnet.lab import lab, topology

    quiet = QUIET if quiet is None else quiet
    deadline = time.time() + timeout
    free_since: float | None = None
    while True:
        busy = topology.lab_namespaces()
        if os.path.exists(os.path.join(lab.state_dir(), "state.json")):
            busy.append(os.path.join(lab.state_dir(), "state.json"))
        now = time.time()
        if busy:
            free_since = None
        elif free_since is None:
            free_since = now
        if free_since is not None and now - free_since >= quiet:
            return []
        if now >= deadline:
            return busy or ["(lab came and went within the quiet period)"]
        time.sleep(1)


@contextlib.contextmanager
def vxnet_lab_etcd(workdir: str) -> Iterator[object]:
    """`vxnet lab up --hosts 3 --server URL1,URL2` with two `vxnet server`s on a fresh 3-member
    etcd cluster on loopback (as tests/distributed's `etcd_lab`); everything stopped afterwards.
    Yields a tests.root.conftest.Lab whose API calls go to the second server (the agents watch
    the first)."""
    import_repo()
    from tests.distributed.conftest import lab_on_etcd
    from tests.root.conftest import Lab
    from tests.support.etcd import EtcdCluster

    cluster = EtcdCluster(3, prefix="vxbench-pu")
    try:
        with lab_on_etcd(cluster, workdir) as env:
            lab3 = Lab(env.state)
            lab3.url = env.servers[1].url
            lab3.etcd_endpoints = cluster.endpoints  # type: ignore[attr-defined]
            yield lab3
    finally:
        cluster.stop()


# The port-up critical path, stage by stage (seconds; key, what it is). Times are wall-clock
# (CLOCK_REALTIME, one clock for every process of the machine): t0 before the bind's PUT, its
# response, and the agents' `trace` log lines (agent/core.py: `recv` first update of the pass
# received, `start` pass start, `fw` plug-first features loaded, `l2` L2 pass done = tap plugged,
# `end` other features done; `cpu_fw` / `cpu_l2` the pass thread's CPU time in the two steps
# before the plug: the rest of those steps is waiting; `cpu_end` its CPU time after the plug). "peer" is the prober's host, whose FDB entry for the new MAC the
# reply needs (until it is there, the request is flooded to every VTEP).
STAGES = (
    ("bind_put", "bind PUT: request -> response (commit)"),
    ("to_recv", "bind -> target agent has the update (server commit + stream)"),
    ("recv_to_start", "target: update received -> pass start (wake-up, coalesce, earlier pass)"),
    ("start_to_fw", "target: pass start -> firewall loaded (plug-path compute + firewall)"),
    ("fw_to_plug", "target: firewall loaded -> tap plugged (L2 pass)"),
    ("cpu_fw", "target: CPU time of the pass thread, start -> firewall loaded"),
    ("cpu_l2", "target: CPU time of the pass thread, firewall loaded -> tap plugged"),
    ("cpu_end", "target: CPU time of the pass thread, tap plugged -> pass end"),
    # Of start -> firewall loaded (the target's trace: `rq_fw`, and its timed `parts`): the pass
    # thread's wait on a run queue for a CPU, and the wall time of its two steps there.
    ("rq_fw", "target: run-queue wait of the pass thread, start -> firewall loaded"),
    ("part_compute_plug", "target: plug-path compute (overlay + firewall: compute_plug, wall)"),
    ("part_compute_firewall", "target: of it, the firewall's compute (compute_firewall, wall)"),
    ("part_apply_firewall", "target: the firewall's apply (diff + nft transaction: apply_firewall, wall)"),
    # The other two agents' passes (their traced passes: a new FDB or neighbour entry, or a
    # plug) that ran while the target's went from start to firewall loaded: 3 agents share
    # this machine's CPUs, each host of a real cloud has its own.
    ("peers_overlap_fw", "target: of start -> firewall loaded, time a peer agent's pass also ran (wall)"),
    ("peers_both_fw", "target: of start -> firewall loaded, time both peer agents' passes also ran (wall)"),
    ("plug_to_end", "target: tap plugged -> pass end (other features' compute and apply; off the path)"),
    ("plug_to_reply", "target: tap plugged -> first reply (prober's 2 ms period + wire)"),
    ("to_plug", "bind -> tap plugged on the target host"),
    ("to_peer_fdb", "bind -> prober's host installed the new MAC's FDB entry"),
    ("peer_fdb_to_reply", "prober's host FDB entry -> first reply (negative: the FDB came after)"),
    # The prober's host's pass for the new remote port (a peer's pass: it plugs nothing): its
    # wall time to the FDB entry, its thread's CPU time to it and in all (its trace line).
    ("peer_start_to_fdb", "prober's host: pass start -> FDB entry installed (its L2 pass done)"),
    ("peer_cpu_fdb", "prober's host: CPU time of the pass thread, start -> FDB entry installed"),
    ("peer_cpu", "prober's host: CPU time of the pass thread, whole pass"),
    # The ACTIVE half: the target agent's status report (`trace-status`: sent, answered) to the
    # server its stream comes from (server 1 on etcd), the commit of the port's ACTIVE status
    # (etcd only: the benchmark's own watch of the ports' keys sees it), the benchmark's GET
    # (through server 2 on etcd) that first shows ACTIVE.
    ("end_to_sent", "target: pass end -> status report sent (reporter thread)"),
    ("report", "status report: request -> answer (the agent's server writes the status)"),
    ("sent_to_commit", "status report sent -> ACTIVE committed in etcd (seen by a watch)"),
    ("commit_to_answer", "ACTIVE committed -> status report answered"),
    ("commit_to_active", "ACTIVE committed -> the client's GET shows it (server 2's mirror, poll)"),
    ("answer_to_active", "status report answered -> the client's GET shows ACTIVE"),
    ("to_sent", "bind -> status report sent"),
    ("to_active", "bind -> ACTIVE (the client's GET; as the headline row)"),
)


def read_traces(state_dir: str, kind: str = "trace") -> dict[str, list[dict[str, object]]]:
    """host -> the agents' `trace` documents (agent/core.py `_trace`), in log order; with
    `kind="trace-status"` their status reports' (`_trace_report`)."""
    out: dict[str, list[dict[str, object]]] = {}
    for name in sorted(os.listdir(state_dir)):
        m = re.match(r"^agent-(.+)\.log$", name)
        if not m:
            continue
        with open(os.path.join(state_dir, name), errors="replace") as f:
            for line in f:
                t = re.search(rf"host=(\S+) {re.escape(kind)} (\{{.*\}})\s*$", line)
                if t:
                    with contextlib.suppress(ValueError):
                        out.setdefault(t.group(1), []).append(json.loads(t.group(2)))
    return out


def port_stages(traces: dict[str, list[dict[str, object]]], t0: float, t_put: float, first: float, host: str,
                tap: str, mac: str, port_id: str | None = None, t_active: float | None = None,
                reports: dict[str, list[dict[str, object]]] | None = None,
                t_commit: float | None = None) -> dict[str, float]:
    """The stages (STAGES) of one port's bind, from the traces (`reports`: the agents'
    `trace-status` documents; `t_commit`: when the port's ACTIVE status was seen committed);
    a stage whose trace is missing is left out."""
    out = {"bind_put": t_put - t0}
    if t_active is not None:
        out["to_active"] = t_active - t0
    rep = next((d for d in (reports or {}).get(host, []) if port_id in d["active"] and float(d["sent"]) >= t0),  # type: ignore[operator, arg-type]
               None)
    if rep is not None:
        sent, answered = float(rep["sent"]), float(rep["answered"])  # type: ignore[arg-type]
        out["report"] = answered - sent
        out["to_sent"] = sent - t0
        if t_active is not None:
            out["answer_to_active"] = t_active - answered
        if t_commit is not None:
            out["sent_to_commit"] = t_commit - sent
            out["commit_to_answer"] = answered - t_commit
    if t_commit is not None and t_active is not None:
        out["commit_to_active"] = t_active - t_commit
    plug = next((d for d in traces.get(host, []) if tap in d["plugged"] and float(d["start"]) >= t0 - 0.001), None)  # type: ignore[operator, arg-type]
    if plug is not None:
        recv, start, fw, l2, end = (float(plug[k]) if plug[k] is not None else None  # type: ignore[arg-type]
                                    for k in ("recv", "start", "fw", "l2", "end"))
        assert start is not None and fw is not None and l2 is not None and end is not None
        if recv is not None and recv >= t0:
            out["to_recv"] = recv - t0
            out["recv_to_start"] = start - recv
        out["start_to_fw"] = fw - start
        out["fw_to_plug"] = l2 - fw
        for k in ("cpu_fw", "cpu_l2", "cpu_end", "rq_fw"):
            if isinstance(plug.get(k), float | int):
                out[k] = float(plug[k])  # type: ignore[arg-type]
        parts = plug.get("parts")
        for k in ("compute_plug", "compute_firewall", "apply_firewall"):
            if isinstance(parts, dict) and isinstance(parts.get(k), float | int):
                out[f"part_{k}"] = float(parts[k])
        busy = [_during(traces.get(h, []), start, fw) for h in HOSTS if h != host]
        out["peers_overlap_fw"] = _length(_union(*busy))
        out["peers_both_fw"] = _length(_intersection(*busy)) if len(busy) == 2 else 0.0
        out["plug_to_end"] = end - l2
        out["plug_to_reply"] = first - l2
        out["to_plug"] = l2 - t0
        if rep is not None:
            out["end_to_sent"] = float(rep["sent"]) - end  # type: ignore[arg-type]
    peer = HOSTS[(HOSTS.index(host) + 1) % 3]
    fdb = next((d for d in traces.get(peer, []) if mac in d["fdb"] and float(d["start"]) >= t0 - 0.001), None)  # type: ignore[operator, arg-type]
    if fdb is not None:
        out["to_peer_fdb"] = float(fdb["l2"]) - t0  # type: ignore[arg-type]
        out["peer_fdb_to_reply"] = first - float(fdb["l2"])  # type: ignore[arg-type]
        out["peer_start_to_fdb"] = float(fdb["l2"]) - float(fdb["start"])  # type: ignore[arg-type]
        cpu = [float(fdb[k]) for k in ("cpu_fw", "cpu_l2", "cpu_end") if isinstance(fdb.get(k), float | int)]  # type: ignore[arg-type]
        if len(cpu) == 3:
            out["peer_cpu_fdb"], out["peer_cpu"] = cpu[0] + cpu[1], sum(cpu)
    return out


def _during(docs: list[dict[str, object]], a: float, b: float) -> list[tuple[float, float]]:
    """The parts of [a, b] that the passes of `docs` (trace documents: start .. end) cover, merged."""
    return _union([(max(a, float(d["start"])), min(b, float(d["end"])))  # type: ignore[arg-type]
                   for d in docs if float(d["start"]) < b and float(d["end"]) > a])  # type: ignore[arg-type]


def _union(*spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for x, y in sorted(iv for ivs in spans for iv in ivs):
        if out and x <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], y))
        else:
            out.append((x, y))
    return out


def _intersection(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(max(x, u), min(y, v)) for x, y in a for u, v in b if max(x, u) < min(y, v)]


def _length(spans: list[tuple[float, float]]) -> float:
    return sum(y - x for x, y in spans)


def stage_rows(system: str, stages: dict[str, list[float]]) -> list[list[str]]:
    """One table row per stage: p50 / p90 / p99 / max / mean (ms)."""
    rows = []
    for key, what in STAGES:
        xs = stages.get(key) or []
        if xs:
            rows.append(_stats_row(system, f"stage: {what}", xs, 0, ""))
    return rows


@contextlib.contextmanager
def _active_commits(endpoints: list[str] | None) -> Iterator[dict[str, float]]:
    """port id -> when a watch of the ports' keys on etcd (`endpoints`) first saw the port
    ACTIVE: its status write's commit, plus a watch hop (~1 ms); empty without etcd."""
    seen: dict[str, float] = {}
    if not endpoints:
        yield seen
        return
    import_repo()
    from vxnet.store.etcd_store import EtcdStore

    store = EtcdStore(endpoints, cache=False)

    def on_events(events: list[object]) -> None:
        now = time.time()
        for ev in events:
            kv = ev.kv  # type: ignore[attr-defined]
            if kv.value and '"status":"ACTIVE"' in kv.value:
                seen.setdefault(kv.key.rsplit("/", 1)[1], now)

    try:
        store.watch("/vxnet/res/ports/", store.revision() + 1, on_events)
        yield seen
    finally:
        store.close()


def measure_vxnet(nports: int, store: str = "embedded") -> dict[str, object]:
    """Per-port bind->ACTIVE and bind->first reply (seconds) on a fresh 3-host lab whose server
    uses the embedded store (`store="embedded"`) or which has 2 servers on etcd (`"etcd"`)."""
    import_repo()
    from tests.root.helpers import nsexec
    from tests.support import probe
    from vxnet.compute import naming
    from vxnet.lab import lab, topology

    workdir = tempfile.mkdtemp(prefix="vxnet-bench-portup-")
    active: list[float] = []
    reply: list[float] = []
    failures: list[str] = []
    stages: dict[str, list[float]] = {k: [] for k, _ in STAGES}
    # t0, put done, reply, ACTIVE seen, host, tap, mac, port id
    ports_seen: list[tuple[float, float, float, float, str, str, str, str]] = []
    agent_rss: dict[str, float] = {}
    make_lab = {"embedded": vxnet_lab, "etcd": vxnet_lab_etcd}[store]
    try:
        with make_lab(workdir) as lab3, _active_commits(getattr(lab3, "etcd_endpoints", None)) as commits:
            if AGENT_NICE:
                for pid in lab.load_state()["agents"].values():
                    os.setpriority(os.PRIO_PROCESS, pid, AGENT_NICE)   # its main thread (and later ones)
            net, _ = lab3.network("alice", NET_CIDR, "portup")
            probers = {}
            for i, h in enumerate(HOSTS):
                p = lab3.port("alice", net["id"], f"100.64.20.{201 + i}")
                lab3.vm(f"pr{i + 1}", h, p)
                lab3.wait_status(p["id"], "ACTIVE")
                probers[h] = f"pr{i + 1}"
            st = lab.load_state()
            with lab3.api("admin") as api:
                for n in range(nports):
                    host = HOSTS[n % 3]
                    prober = probers[HOSTS[(n + 1) % 3]]
                    ip = f"100.64.20.{10 + n}"
                    port = lab3.port("alice", net["id"], ip)
                    lab.vm_add(f"u{n}", host, port["id"], bind=False)
                    nsexec(topology.vm_ns(prober), "ip", "neigh", "replace", ip, "lladdr", port["mac_address"],
                           "dev", "eth0", "nud", "permanent")
                    proc = probe.start_probe(topology.vm_ns(prober), ip, 0.002, 2500)
                    try:
                        t0 = time.time()
                        lab.bind_port(st, port["id"], host, api)
                        t_put = time.time()
                        first = probe.first_reply(proc, deadline=t0 + 5) if ACTIVE_POLL == "after" else None
                        t_active = None
                        while time.time() - t0 < 10:
                            if api.get(f"/ports/{port['id']}").json()["port"]["status"] == "ACTIVE":
                                t_active = time.time()
                                break
                            time.sleep(0.001)
                        if ACTIVE_POLL != "after":
                            first = probe.first_reply(proc, deadline=t0 + 5)
                    finally:
                        probe.stop(proc)
                    if t_active is None or first is None:
                        failures.append(f"port {n} on {host}: " + ("never ACTIVE in 10 s" if t_active is None
                                                                     else "no reply within 5 s"))
                        continue
                    active.append(t_active - t0)
                    reply.append(first - t0)
                    ports_seen.append((t0, t_put, first, t_active, host, naming.tap_name(port["id"]),
                                       port["mac_address"], port["id"]))
            traces = read_traces(lab.state_dir())
            reports = read_traces(lab.state_dir(), "trace-status")
            for t0, t_put, first, t_active, host, tap, mac, pid in ports_seen:
                for k, v in port_stages(traces, t0, t_put, first, host, tap, mac, pid, t_active, reports,
                                        commits.get(pid)).items():
                    stages[k].append(v)
            for h, pid in lab.load_state()["agents"].items():
                with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
                    agent_rss[h] = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"active": active, "reply": reply, "failures": failures, "agent_rss": agent_rss, "stages": stages}


# --- the OVN lab --------------------------------------------------------------------------------


def _ovn_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.split() and re.match(r"^ovn-(ch\d+|vm\d+|ul|b[12])$",
                                                                                 ln.split()[0])]


def _tail(text: str, lines: int = 8) -> str:
    return " / ".join(ln.strip() for ln in text.strip().splitlines()[-lines:] if ln.strip())


def measure_ovn(nports: int, script: str, wait_free: float) -> dict[str, object]:
    """`ovn-lab.sh start`, `measure` (NPORTS), `stop`; parsed per-port rows, or the error."""
    res: dict[str, object] = {"up": [], "ping": [], "failures": [], "error": None, "summary": [],
                            "calibration": []}
    if not os.path.exists(script):
        res["error"] = f"{script} not found"
        return res
    missing = [b for b in ("ovsdb-server", "ovs-vswitchd", "ovn-northd", "ovn-controller", "ovn-nbctl", "iperf3",
                           "ethtool") if shutil.which(b) is None]
    if missing:
        res["error"] = ("not run: missing " + ", ".join(missing) +
                        " (apt-get install openvswitch-switch ovn-central ovn-host iperf3 ethtool)")
        return res
    deadline = time.time() + wait_free
    while _ovn_namespaces() and time.time() < deadline:
        time.sleep(2)
    if _ovn_namespaces():
        res["error"] = "not run: OVN lab namespaces already exist (someone else's run?): " + " ".join(_ovn_namespaces())
        return res
    tmp = tempfile.mkdtemp(prefix="vxnet-bench-ovn-")
    env = dict(os.environ, LAB=os.path.join(tmp, "ovnlab"), NPORTS=str(nports), NCH="3")

    def sh(cmd: str, timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(["bash", script, cmd], env=env, capture_output=True, text=True, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            return subprocess.CompletedProcess(e.cmd, 124, out, err + f"\ntimed out after {timeout:.0f} s")

    try:
        r = sh("start", 300)
        if r.returncode != 0:
            res["error"] = f"`ovn-lab.sh start` failed (exit {r.returncode}): {_tail(r.stdout + r.stderr)}"
            return res
        r = sh("measure", 120 + 5 * nports)
        res["raw"] = r.stdout
        for line in r.stdout.splitlines():
            m = re.match(r"^lp(\d+)\tch(\d+)\tvm(\d+)\t(\S+)\t(\S+)\t(\d+)$", line)
            if not m:
                if line.startswith(("###", "vm", "   CPU", "port-up")):
                    res["summary"].append(line)   # type: ignore[union-attr]
                continue
            up, first, rc = m.group(4), float(m.group(5)), int(m.group(6))
            if rc != 0 or up == "nan":
                res["failures"].append(f"lp{m.group(1)}@ch{m.group(2)}: ping rc {rc}, up {up}")  # type: ignore[union-attr]
                continue
            res["up"].append(float(up))       # type: ignore[union-attr]
            res["ping"].append(first)         # type: ignore[union-attr]
        # Calibration: the same `ping -c 1 -i 0.002` to a port that is already up (vm1@ch1 -> vm2@ch2),
        # timed the same way (process start to exit): what the measuring tool itself adds.
        cal = []
        for _ in range(20):
            t = time.time()
            c = subprocess.run(["ip", "netns", "exec", "ovn-vm1", "ping", "-q", "-n", "-c", "1", "-i", "0.002",
                                "-w", "5", "198.51.100.2"], capture_output=True, text=True, check=False)
            if c.returncode == 0:
                cal.append(time.time() - t)
        res["calibration"] = cal
        if r.returncode != 0:
            res["error"] = f"`ovn-lab.sh measure` failed (exit {r.returncode}): {_tail(r.stdout + r.stderr)}"
    finally:
        s = sh("stop", 120)
        if s.returncode != 0:
            res["stop_error"] = f"`ovn-lab.sh stop` exit {s.returncode}: {_tail(s.stdout + s.stderr)}"
        shutil.rmtree(tmp, ignore_errors=True)
    return res


# --- the benchmark ------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--portup-ports", type=int, default=100, help="ports per lab in the port-up benchmark (100)")
    p.add_argument("--portup-rounds", type=int, default=2,
                   help="rounds of (vxnet lab, OVN lab), alternating; the table pools them (2)")
    p.add_argument("--ovn-lab", default=OVN_LAB, help="path of the OVN peer lab script")
    p.add_argument("--lab-wait", type=float, default=900.0,
                   help="seconds to wait for a lab someone else is running before giving up (900)")
    p.add_argument("--portup-stores", default="embedded,etcd",
                   help="vxnet labs to measure: embedded (the lab's own server), etcd (2 servers on a 3-member "
                        "cluster); default both")
    p.add_argument("--portup-active-poll", choices=("during", "after"), default="during",
                   help="poll the API for ACTIVE during the wait for the first reply (default, as before) or after it")
    p.add_argument("--portup-agent-nice", type=int, default=0,
                   help="nice value of the vxnet agents during the run, set on their main thread (the pass "
                        "thread) once the lab is up (default 0: as started; OVS runs ovs-vswitchd at -10)")
    p.add_argument("--skip-ovn", action="store_true", help="do not run the OVN lab (default: run it)")


def _shown(script: str) -> str:
    """A peer script's path as the docs name it: ../shared/peers/NAME when it is the one found
    beside the (main) checkout, else relative to this checkout."""
    return os.path.join("..", "shared", "peers", os.path.basename(script)) if script == OVN_LAB else os.path.relpath(script, REPO)


def ovn_notes(nports: int, ovn_lab: str) -> list[str]:
    """What the OVN rows are and how they were made."""
    return [
        ("OVN lab: OVS userspace datapath (netdev), Geneve, ovn-lab.sh `start` / `measure` with "
         f"NPORTS={nports} / `stop`; its first-reply time is the kernel receive timestamp of a fixed-rate "
         "prober's first reply (every 2 ms), the same method as vxnet's."),
        (f"OVN commands run: `LAB=$TMP/ovnlab NCH=3 NPORTS={nports} bash {_shown(ovn_lab)} "
         "start`, then `... measure`, then `... stop` (needs Debian's openvswitch-switch, ovn-central, "
         "ovn-host; their packaged services are not used)."),
    ]


def run(opts: argparse.Namespace) -> Report:
    nports = max(9, opts.portup_ports // (10 if opts.quick else 1))
    global ACTIVE_POLL, AGENT_NICE
    ACTIVE_POLL = opts.portup_active_poll
    AGENT_NICE = opts.portup_agent_nice
    cols = ["system", "measurement", "ports", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms", "notes"]
    rows: list[list[str]] = []
    notes: list[str] = []
    load0 = os.getloadavg()
    if os.geteuid() != 0:
        return Report(NAME, cols, [["vxnet", "not run", "", "", "", "", "", "", "needs root (namespaces)"],
                                   ["OVN", "not run", "", "", "", "", "", "", "needs root (namespaces)"]])
    # Rounds alternate the labs (vxnet embedded, vxnet on etcd, OVN, vxnet embedded, ...) so load
    # from elsewhere on the machine falls on all; the table pools every round, one row per round
    # shows the spread.
    stores = [x for x in opts.portup_stores.split(",") if x]
    system = {"embedded": "vxnet", "etcd": "vxnet on etcd"}
    vxs: dict[str, dict[str, object]] = {}
    ovn: dict[str, object] = {"up": [], "ping": [], "failures": [], "error": None, "summary": [], "calibration": []}
    per_round: list[list[str]] = []
    flat_rows: list[list[str]] = []
    rounds = max(1, opts.portup_rounds)
    for rnd in range(1, rounds + 1):
        for store in stores:
            got: dict[str, object] = {}
            for attempt in range(1, 3):
                try:
                    got = in_sandbox(f"p.measure_vxnet({nports}, {store!r})", 300 + 10 * nports)  # type: ignore[assignment]
                    break
                except Exception as e:  # noqa: BLE001 - the table says what broke
                    msg = f"{type(e).__name__}: {e}"[:600].replace("|", "/")
                    notes.append(f"{system[store]} round {rnd} attempt {attempt} failed (not counted): {msg}")
            if got:
                acc = vxs.setdefault(store, {"reply": [], "active": [], "failures": [], "agent_rss": {}, "flat": [],
                                             "stages": {}})
                for k, xs in (got.get("stages") or {}).items():  # type: ignore[union-attr]
                    acc["stages"].setdefault(k, []).extend(xs)  # type: ignore[union-attr]
                for k in ("reply", "active", "failures"):
                    acc[k] += got[k]  # type: ignore[operator]
                rep: list[float] = got["reply"]  # type: ignore[assignment]
                half = min(50, len(rep) // 2)
                if half:
                    first, last = percentile(rep[:half], 50), percentile(rep[-half:], 50)
                    acc["flat"].append((first, last))  # type: ignore[union-attr]
                    flat_rows.append([system[store], f"round {rnd}: p50 of the first {half} / last {half} ports",
                                      str(2 * half), _ms(first), _ms(last), "", "", "",
                                      f"last / first {last / first:.2f}x"])
                acc["agent_rss"] = got["agent_rss"]
                per_round.append(_stats_row(system[store], f"round {rnd}: bind -> first reply", got["reply"],  # type: ignore[arg-type]
                                            len(got["failures"]), ""))  # type: ignore[arg-type]
        if opts.skip_ovn:
            continue
        o = measure_ovn(nports, opts.ovn_lab, opts.lab_wait)
        for k in ("up", "ping", "failures", "calibration"):
            ovn[k] += o.get(k) or []  # type: ignore[operator]
        ovn["summary"] += [f"[round {rnd}] {x}" for x in o["summary"]]  # type: ignore[operator, union-attr]
        ovn["error"] = ovn["error"] or o["error"]
        if o.get("stop_error"):
            ovn["stop_error"] = o["stop_error"]
        if o["ping"]:
            per_round.append(_stats_row("OVN", f"round {rnd}: lsp-add + plug -> first reply", o["ping"],  # type: ignore[arg-type]
                                        len(o["failures"]), ""))  # type: ignore[arg-type]
    for store in stores:
        vxi = vxs.get(store)
        if not vxi:
            rows.append([system[store], "failed", "", "", "", "", "", "", "every attempt failed; see notes"])
            continue
        fails = vxi["failures"]
        where = "other host" + ("; bind through server 2, agents on server 1" if store == "etcd" else "")
        rows.append(_stats_row(system[store], f"bind -> first reply (ping every 2 ms, {where})",
                               vxi["reply"], len(fails), "headline"))  # type: ignore[arg-type]
        rows.append(_stats_row(system[store], "bind -> ACTIVE (API)", vxi["active"], len(fails), ""))  # type: ignore[arg-type]
        rows += stage_rows(system[store], vxi["stages"])  # type: ignore[arg-type]
        notes += [f"{system[store]} failure: {f}" for f in fails]  # type: ignore[attr-defined]
        if vxi["agent_rss"]:
            notes.append(f"{system[store]}: agents' RSS after the run: " + ", ".join(
                f"{h} {v:.1f} MB" for h, v in sorted(vxi["agent_rss"].items())))  # type: ignore[attr-defined]
    vx = vxs.get("embedded", {})
    ve = vxs.get("etcd", {})
    if vx and ve and vx["reply"] and ve["reply"]:
        for key, what in (("reply", "first reply"), ("active", "ACTIVE")):
            a, b = ve[key], vx[key]
            rows.append(["etcd / embedded", f"ratio of bind -> {what} latencies", "",
                         *(f"{percentile(a, q) / percentile(b, q):.2f}x" for q in (50, 90, 99)),  # type: ignore[arg-type]
                         f"{max(a) / max(b):.2f}x", f"{statistics.mean(a) / statistics.mean(b):.2f}x",  # type: ignore[arg-type]
                         "> 1 means etcd is slower"])
    if ovn["ping"] or ovn["up"]:
        fails = ovn["failures"]
        rows.append(_stats_row("OVN", "lsp-add + plug -> first reply (ping every 2 ms, other chassis)",
                               ovn["ping"], len(fails), "headline"))  # type: ignore[arg-type]
        rows.append(_stats_row("OVN", "lsp-add + plug -> NB up=true", ovn["up"], len(fails), ""))  # type: ignore[arg-type]
        notes += [f"OVN failure: {f}" for f in fails]  # type: ignore[attr-defined]
    if ovn.get("calibration"):
        rows.append(_stats_row("OVN", "calibration: the same ping to an already-up port (tool overhead)",
                               ovn["calibration"], 0, "not port-up; what the measuring ping adds"))  # type: ignore[arg-type]
    if ovn["error"]:
        rows.append(["OVN", "not measured" if not ovn["ping"] else "error", "", "", "", "", "", "",
                     str(ovn["error"]).replace("|", "/")[:600]])
    if ovn.get("stop_error"):
        notes.append(str(ovn["stop_error"]))
    if vx and vx["reply"] and ovn["ping"]:
        a, b = vx["reply"], ovn["ping"]
        rows.append(["OVN / vxnet", "ratio of first-reply latencies", "",
                     *(f"{percentile(b, q) / percentile(a, q):.2f}x" for q in (50, 90, 99)),  # type: ignore[arg-type]
                     f"{max(b) / max(a):.2f}x", f"{statistics.mean(b) / statistics.mean(a):.2f}x",  # type: ignore[arg-type]
                     "> 1 means vxnet is faster"])
    if rounds > 1:
        rows += per_round
    rows += flat_rows
    goals = [("Goal (issue 18): vxnet bind -> first reply p50 <= 10 ms and p99 <= 20 ms, flat as ports "
              "accumulate (p50 of the first 50 vs the last 50 ports of a lab within 1.2x), ahead of OVN here.")]
    if vx and vx["reply"]:
        r = vx["reply"]
        p50, p99 = percentile(r, 50), percentile(r, 99)  # type: ignore[arg-type]
        ahead = ovn["ping"] and p50 < percentile(ovn["ping"], 50) and p99 < percentile(ovn["ping"], 99)  # type: ignore[arg-type]
        flat = vx.get("flat") or []
        worst = max((b / a for a, b in flat), default=float("nan"))  # type: ignore[union-attr]
        goals.append(f"Met here: p50 {'yes' if p50 <= 0.010 else 'NO'} ({_ms(p50)} ms), p99 "
                     f"{'yes' if p99 <= 0.020 else 'NO'} ({_ms(p99)} ms), flat {'yes' if worst <= 1.2 else 'NO'} "
                     f"(last 50 / first 50 p50: {', '.join(f'{b / a:.2f}x' for a, b in flat)}), ahead of OVN at "
                     f"p50 and p99 {'yes' if ahead else 'NO' if ovn['ping'] else 'unknown (OVN not measured)'}.")
    labs = [system[x] for x in stores] + ([] if opts.skip_ovn else ["OVN"])
    notes.append(f"Percentiles are nearest-rank over {rounds} x {nports} ports per system; the labs ({', '.join(labs)}) "
                 "ran alternately in this run (never at the same time), each on 3 hosts/chassis in namespaces. The vxnet labs "
                 "ran in a private network + mount namespace (`unshare --mount --net`, empty /run/netns), the "
                 "same topology and code as `vxnet lab up`, so root tests running elsewhere on the machine "
                 "could not tear them down.")
    if "etcd" in stores:
        notes.append("vxnet on etcd: a fresh 3-member etcd cluster on loopback (in the same private namespace) and two "
                     "`vxnet server`s on it (gRPC, the store's watch-fed read cache on); agents started with "
                     "`--server URL1,URL2` watch server 1; the benchmark creates, binds and polls ACTIVE through "
                     "server 2, so each bind crosses etcd and the other server's watch before reaching an agent.")
    if opts.skip_ovn:
        notes.append("OVN was not run in this run (`--skip-ovn`).")
    if AGENT_NICE:
        notes.append(f"The vxnet agents ran at nice {AGENT_NICE} (`--portup-agent-nice`: set on their main thread, "
                     "the pass thread, once the lab was up; threads they start later inherit it; the server and the "
                     "benchmark at their own).")
    if not opts.skip_ovn:
        notes += ovn_notes(nports, opts.ovn_lab)
    notes.append("Load average (1/5/15 min) at the start: " + " / ".join(f"{x:.1f}" for x in load0) +
                 "; at the end: " + " / ".join(f"{x:.1f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs "
                 "(other sessions' tests may share them).")
    extra = ""
    series = [("vxnet bind -> first reply", vx.get("reply") if vx else None),
              ("vxnet on etcd bind -> first reply", ve.get("reply") if ve else None),
              ("OVN lsp-add + plug -> first reply", ovn["ping"])]
    for label, xs in series:
        if xs:
            q = max(1, len(xs) // 4)  # type: ignore[arg-type]
            extra += (f"{label}, per port in creation order, rounds one after the other (ms; mean of the first {q}: "
                      f"{_ms(statistics.mean(xs[:q]))}, of the last {q}: {_ms(statistics.mean(xs[-q:]))}):\n\n"  # type: ignore[index]
                      "`" + " ".join(f"{x * 1e3:.0f}" for x in xs) + "`\n\n")  # type: ignore[union-attr]
    if ovn["summary"]:
        extra += ("OVN lab's own summary lines from `measure` (same run):\n\n```\n" +
                 "\n".join(ovn["summary"]) + "\n```")  # type: ignore[arg-type]
    return Report(NAME, cols, rows, notes=notes, goals=goals, extra_markdown=extra)


if __name__ == "__main__":
    from bench.__main__ import main

    sys.exit(main(["--only", "port_up_bench", *sys.argv[1:]]))
