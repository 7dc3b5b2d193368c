"""Run as a child process: an agent whose view holds N ports, applied to namespace argv[1]; prints
its peak RSS in MB. The view arrives as one snapshot message through the agent's own code path.

Arguments: NS N NETS [FEATURES [DELIVERY [IMPORTS [VIEW]]]] (see below). What it leaves out of a
real `vxnet agent` process even with `cli` imports and the `cloud` view: the HTTP connection
(the stream's and the heartbeat's buffers), the server's updates after the snapshot (the real
process sees each batch of new ports as an update), the control socket and the log handlers'
setup; its resync is one forced re-read of the kernel (a real agent's every 30 s).
bench/agent_bench.py measures a real process beside it (`measure_lab_agent`)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator

from vxnet import memprofile
from vxnet.agent.core import Agent, AgentConfig
from vxnet.heap import limit_malloc_arenas

NS, N, NETS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
FEATURES = sys.argv[4] if len(sys.argv) > 4 else "all"     # "all" (the real agent) or "none" (L2 only)
# "dict": the snapshot is handed over as Python objects (the figures before December 2026);
# "json": as one line of JSON text decoded as agent/client.py decodes it (strings come from the
# decoder, not shared constants). The text is written by a child process (this file with
# SNAPSHOT_TEXT set), so the probe's own raw view and its `json.dumps` are never in this
# process (before December 7 they were, and set its high-water mark before the agent ran: ~59
# MB); it is read from the child's pipe in 64 KiB pieces. With `cli` imports (httpx loaded
# anyway) through the agent's own client (`ServerClient.stream` over an httpx mock transport:
# its line buffer and copies as they are); else read whole and decoded as the client decodes it.
DELIVERY = sys.argv[5] if len(sys.argv) > 5 else "dict"
# "agent": only the agent's own modules (the figures before December 2026); "cli": also what the
# `vxnet agent` process loads besides (its entry point vxnet.cli.main with typer and every
# sub-command's module; typer's parameter adapters, which load pydantic when a command runs, as
# `python -X importtime` of a real `vxnet agent` shows; the HTTP client, httpx), without talking
# to a server.
IMPORTS = sys.argv[6] if len(sys.argv) > 6 else "agent"
# "plain": networks without subnets, ports whose group is not in the view (no firewall sets, no
# DHCP; the figures before this argument); "cloud": what the lab's real agent sees: a /23
# subnet per network (DHCP and metadata on it) and every port in the project's default
# security group (ingress from the group itself, IPv4 and IPv6; egress anywhere), whose
# remote-group rule puts every port's address in the firewall's sets; and then one resync
# pass (the kernel re-read, as a real agent does every 30 s), whose read-back is part of the peak.
VIEW = sys.argv[7] if len(sys.argv) > 7 else "plain"
if IMPORTS == "cli":
    # What `vxnet agent` loads besides the agent: its entry point and argparse command line
    # (vxnet/cli/main.py, cli/agent.py, without typer since December 2026) and the HTTP client.
    import vxnet.cli.main
    from vxnet.cli import agent as cli_agent

    if hasattr(cli_agent, "parser"):
        cli_agent.skip_httpx_cli()
        cli_agent.parser().parse_args(["--server", "http://192.0.2.1:9696", "--host", "h1", "--underlay-ip",
                                       "198.51.100.1"])
    else:   # a tree before December 2026 (old and new measured alike): typer, its adapters, every command
        import typer._adapters  # noqa: F401
    import vxnet.agent.client  # noqa: F401
limit_malloc_arenas()       # as `vxnet agent` does
PROFILE = memprofile.install()  # VXNET_MEMPROFILE set: a report at the end (a debugging aid, not for a figure)
GROUP = "5ec0" + "0" * 28 + "0001"


def view() -> dict:
    nets = {f"{i:08x}-0000-4000-8000-000000000000": {"id": f"{i:08x}-0000-4000-8000-000000000000",
            "provider:network_type": "vxlan", "provider:segmentation_id": 5000 + i, "mtu": 1450,
            "name": f"net{i}", "project_id": "p" * 32, "subnets": [], "status": "ACTIVE"} for i in range(NETS)}
    ids = list(nets)
    ports = {}
    for i in range(N):
        pid = f"{i:08x}-1111-4000-8000-000000000000"
        ports[pid] = {"id": pid, "network_id": ids[i % NETS], "binding:host_id": "h1" if i < NETS else f"h{2 + i % 2}",
                      "mac_address": f"02:01:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:01",
                      "fixed_ips": [{"subnet_id": "s" * 36, "ip_address": f"100.{64 + (i >> 16)}.{i >> 8 & 255}.{i & 255}"}],
                      "status": "DOWN", "revision_number": 1, "name": "", "description": "", "admin_state_up": True,
                      "device_owner": "compute:nova", "device_id": "d" * 36, "project_id": "p" * 32,
                      "security_groups": ["g" * 36], "allowed_address_pairs": [], "tags": []}
    out = {"hosts": {f"h{i}": {"underlay_ip": f"198.51.100.{i}"} for i in (1, 2, 3)}, "networks": nets, "ports": ports}
    if VIEW == "cloud":
        subnets = {}
        for k, nid in enumerate(ids):
            sid = f"{k:08x}-2222-4000-8000-000000000000"
            subnets[sid] = {"id": sid, "network_id": nid, "ip_version": 4, "cidr": f"100.64.{2 * k}.0/23",
                            "gateway_ip": f"100.64.{2 * k}.1", "enable_dhcp": True, "dns_nameservers": [],
                            "host_routes": [], "allocation_pools": [{"start": f"100.64.{2 * k}.2",
                                                                     "end": f"100.64.{2 * k + 1}.254"}]}
            nets[nid]["subnets"] = [sid]
        for i, (pid, p) in enumerate(ports.items()):
            k = i % NETS
            host_part = 2 + i // NETS
            p["fixed_ips"] = [{"subnet_id": f"{k:08x}-2222-4000-8000-000000000000",
                               "ip_address": f"100.64.{2 * k + host_part // 256}.{host_part % 256}"}]
            p["security_groups"] = [GROUP]
        rules = {}
        for j, (direction, eth, remote) in enumerate((("ingress", "IPv4", GROUP), ("ingress", "IPv6", GROUP),
                                                      ("egress", "IPv4", None), ("egress", "IPv6", None))):
            rid = f"{j:08x}-3333-4000-8000-000000000000"
            rules[rid] = {"id": rid, "security_group_id": GROUP, "direction": direction, "ethertype": eth,
                          "protocol": None, "port_range_min": None, "port_range_max": None,
                          "remote_ip_prefix": None, "remote_group_id": remote}
        out.update(subnets=subnets, security_groups={GROUP: {"id": GROUP, "name": "default", "stateful": True}},
                   security_group_rules=rules)
    return out


SNAPSHOT_TEXT = "VXNET_RSS_PROBE_SNAPSHOT_TEXT"
if os.environ.get(SNAPSHOT_TEXT):       # the child: the snapshot's JSON line on stdout, nothing else
    import json

    sys.stdout.write(json.dumps({"type": "snapshot", "revision": 1, "view": view()}) + "\n")
    sys.exit(0)


def snapshot_pipe() -> subprocess.Popen[bytes]:
    """A child writing the snapshot's JSON line (this file with SNAPSHOT_TEXT set)."""
    return subprocess.Popen([sys.executable, __file__, *sys.argv[1:]], stdout=subprocess.PIPE,
                            env={**os.environ, SNAPSHOT_TEXT: "1"})


def pieces(proc: subprocess.Popen[bytes]) -> Iterator[bytes]:
    """The child's output in the pieces a socket read gives httpx (64 KiB)."""
    assert proc.stdout is not None
    while chunk := proc.stdout.read(65536):
        yield chunk
    proc.wait()


def client_stream(proc: subprocess.Popen[bytes]) -> Iterator[dict]:
    """The agent's own client (`ServerClient.stream`) reading the child's output as its HTTP body."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from tests.support.view_stream import client_over

    yield from client_over(pieces(proc)).stream(None)


class Once:
    def register(self) -> dict:
        return {}

    def heartbeat(self, report: dict | None = None) -> bool:
        return True

    def stream(self, since: int | None) -> Iterator[dict]:
        if DELIVERY == "json" and IMPORTS == "cli":
            yield from client_stream(snapshot_pipe())
        elif DELIVERY == "json":
            import inspect

            from vxnet.compute.view import decode_message

            line = b"".join(pieces(snapshot_pipe())).decode()
            typed = {"typed": True} if "typed" in inspect.signature(decode_message).parameters else {}  # older trees
            msg = decode_message(line, **typed)
            del line                                # as the client: the text goes before the agent takes it
            yield msg
            del msg
        else:
            yield {"type": "snapshot", "revision": 1, "view": view()}
        threading.Event().wait()

    def report_status(self, active, down) -> None:
        pass


a = Agent(AgentConfig(host="h1", underlay_ip="198.51.100.1", netns=NS, resync_interval=3600), Once(),
          features=None if FEATURES == "all" else [])
a.start()
assert a.wait_applied(1, timeout=120)
r = a.last_result
assert r is not None and not r.failed, r
if VIEW == "cloud":         # one resync: every manager re-reads the kernel (the read-back's peak counts)
    with a.applied:
        n = a.passes
        a.kernel_changed(True)
        assert a.applied.wait_for(lambda: a.passes > n, 120)
    assert a.last_result is not None and not a.last_result.failed, a.last_result
# VmHWM, not getrusage's ru_maxrss: the latter keeps the high-water mark of the process image
# before exec(), i.e. of the (large) pytest process this child was forked from.
with open("/proc/self/status") as f:
    hwm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
if PROFILE:
    memprofile.write(os.environ[memprofile.ENV])
print(f"{hwm_kb / 1024:.1f} {r.diff.counts()} {r.seconds:.2f}")
