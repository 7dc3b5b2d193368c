"""Run as a child process: an agent whose view holds N ports, applied to namespace argv[1]; prints
its peak RSS in MB. The view arrives as one snapshot message through the agent's own code path."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

from vxnet.agent.core import Agent, AgentConfig
from vxnet.heap import limit_malloc_arenas

NS, N, NETS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
FEATURES = sys.argv[4] if len(sys.argv) > 4 else "all"     # "all" (the real agent) or "none" (L2 only)
# "dict": the snapshot is handed over as Python objects (the figures before December 2026);
# "json": as one line of JSON text decoded as agent/client.py decodes it (the text and the
# decoded dict coexist; strings come from the decoder, not shared constants).
DELIVERY = sys.argv[5] if len(sys.argv) > 5 else "dict"
# "agent": only the agent's own modules (the figures before December 2026); "cli": also what the
# `vxnet agent` process loads besides (its entry point vxnet.cli.main with typer and every
# sub-command's module; typer's parameter adapters, which load pydantic when a command runs, as
# `python -X importtime` of a real `vxnet agent` shows; the HTTP client, httpx), without talking
# to a server.
IMPORTS = sys.argv[6] if len(sys.argv) > 6 else "agent"
if IMPORTS == "cli":
    import typer._adapters  # noqa: F401

    import vxnet.agent.client
    import vxnet.cli.main  # noqa: F401
limit_malloc_arenas()       # as `vxnet agent` does


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
    return {"hosts": {f"h{i}": {"underlay_ip": f"198.51.100.{i}"} for i in (1, 2, 3)}, "networks": nets, "ports": ports}


class Once:
    def register(self) -> dict:
        return {}

    def heartbeat(self, report: dict | None = None) -> bool:
        return True

    def stream(self, since: int | None) -> Iterator[dict]:
        if DELIVERY == "json":
            import json

            from vxnet.compute.view import decode_message

            line = json.dumps({"type": "snapshot", "revision": 1, "view": view()})
            msg = decode_message(line)
            del line
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
# VmHWM, not getrusage's ru_maxrss: the latter keeps the high-water mark of the process image
# before exec(), i.e. of the (large) pytest process this child was forked from.
with open("/proc/self/status") as f:
    hwm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(f"{hwm_kb / 1024:.1f} {r.diff.counts()} {r.seconds:.2f}")
