"""What the agent process loads (its memory: docs/benchmarks.md, agent RSS with 10k ports).

Each check runs in a fresh interpreter (this test process has imported everything already):
- the L2 agent (core, reconciler, kernel seam, HTTP client) loads no pyroute2 (~25 MB: its
  package imports every netlink family it supports) and none of the server's stack;
- the feature modules load only when the features are built, and the gateway's (BGP, conntrack
  sync, the gateway driver) and HA's (BFD) only on hosts configured for them; a compute host's
  features (DHCP, metadata, routing before it has a router) load no pyroute2.
"""

from __future__ import annotations

import json
import subprocess
import sys

SERVER_ONLY = ("pyroute2", "fastapi", "pydantic", "starlette", "uvicorn", "sqlite3")


def _modules(code: str) -> set[str]:
    r = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))"],
                       capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(r.stdout.strip().splitlines()[-1]))


def test_l2_agent_loads_no_pyroute2_and_no_server_stack() -> None:
    mods = _modules("import vxnet.agent.core, vxnet.agent.reconciler, vxnet.dataplane.host_kernel, vxnet.agent.client")
    assert "vxnet.dataplane.rtnl_links" in mods          # the check sees the agent's kernel seam
    loaded = sorted(m for m in mods if m.split(".")[0] in SERVER_ONLY)
    assert loaded == []
    features = ("vxnet.agent.dhcp", "vxnet.agent.firewall", "vxnet.agent.metadata", "vxnet.agent.routing",
                "vxnet.agent.qos", "vxnet.agent.gateway", "vxnet.agent.ha")
    assert [m for m in features if m in mods] == []


def test_features_load_gateway_and_bfd_code_only_when_configured() -> None:
    build = ("from vxnet.agent.core import build_features\nfrom vxnet.agent.features import HostContext\n"
             "fs = build_features(HostContext('h1', '198.51.100.1', gateway={gw}))\n"
             "print([f.name for f in fs])\n"
             "for f in fs: f.close()")
    compute_host = _modules(build.format(gw=False))
    assert "vxnet.agent.dhcp" in compute_host and "vxnet.agent.routing" in compute_host
    gateway_only = ("vxnet.agent.gateway", "vxnet.dataplane.gateway_driver", "vxnet.dataplane.bgp",
                    "vxnet.dataplane.ctsync", "vxnet.agent.ha", "vxnet.dataplane.bfd")
    assert [m for m in gateway_only if m in compute_host] == []
    # DHCP and metadata speak rtnetlink themselves; the router driver (pyroute2) loads only on a
    # host with routers (agent/routing.py), the gateway's on gateway hosts.
    assert [m for m in compute_host if m.split(".")[0] == "pyroute2" or m == "vxnet.dataplane.router_driver"] == []
    gateway_host = _modules(build.format(gw=True))
    assert {"vxnet.agent.gateway", "vxnet.dataplane.gateway_driver"} <= gateway_host


def test_vxnet_agent_command_loads_no_typer_pydantic_or_other_commands() -> None:
    # The real entry point with arguments that fail after the agent's imports (BGP without
    # --gateway): what a running `vxnet agent` has loaded besides its view and features.
    mods = _modules("import sys\nsys.argv = ['vxnet', 'agent', '--server', 'http://192.0.2.1:1', '--host', 'h1',\n"
                    "            '--underlay-ip', '198.51.100.1', '--bgp-as', '65001']\n"
                    "from vxnet.cli.main import main\n"
                    "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 2, e.code")
    assert {"vxnet.agent.core", "vxnet.agent.client", "httpx"} <= mods
    cli_only = ("typer", "pydantic", "pydantic_core", "click", "rich", "pygments", "vxnet.cli.app", "vxnet.store",
                "vxnet.cli.lab", "vxnet.cli.trace", "httpx._main")
    assert sorted(m for m in mods if m in cli_only or m.split(".")[0] in ("typer", "pydantic", "rich", "click")) == []
