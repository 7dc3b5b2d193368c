"""Agent memory and apply time with 10,000 ports in its view (20 networks, ~30,000 FDB/neighbour
entries), measured in a child process (peak RSS).

Budgets: the L2 agent alone measured 72-73 MB while it imported pyroute2 for its links, 56-57
MB since it speaks rtnetlink itself (dataplane/rtnl_links.py) and trims malloc's free pages after
a snapshot; its budget is issue 18's goal, 60 MB (this probe hands the snapshot over as objects;
as JSON text, as a real agent gets it, the same agent measured 60.0-60.5 MB: docs/benchmarks.md).
tests/unit/test_agent_imports.py checks deterministically that the L2 agent loads no pyroute2. The whole agent (with the DHCP, firewall, routing and metadata features)
measured 80-82 MB when they landed (libnftables loaded in-process is most of the difference
then), 77.7 MB once `vxnet agent` capped glibc's malloc arenas, 85.6 MB in December 2026 while
the DHCP, metadata and routing drivers imported pyroute2, and 72-73 MB (snapshot as JSON text)
since those speak rtnetlink themselves and the router driver loads only on a host with routers:
its budget is 80 MB (issue 18's 60 MB is not met by the whole agent).

The honest probe (`cloud` view as JSON text, with what the `vxnet agent` process imports): a
/23 subnet per network, every port in a default security group whose remote-group rules put all
10,000 addresses in the firewall's sets, and one resync pass (the kernel read back) measured 112
MB in December 2026 (an interval set that libnftables kept in memory, typer and pydantic in the
process, a second copy of the applied FDB/neighbour sets...), 66-67 MB after that work, and
62.2-62.4 MB once the resync no longer read the firewall's table back after the agent's own
commits (dataplane/nft_ledger.py) nor kept a copy of the pass's diff or a set of every read
entry's hash; its budget is 66 MB (72 before). The same work took the probe's L2-only agent to
50 MB and its whole agent (plain view, objects) to 59 MB; their budgets stay as they were. A
real `vxnet agent` in a lab with the same view: 59.9-60.5 MB peak, 56.6-56.8 MB resident
(docs/benchmarks.md). Since the FDB/neighbour sets have no second copy (compute.state.Parts,
compute.diff.Without, the L2 cache's own port memo; December 2026): L2 only 48.0-48.3 MB, the
whole agent (objects) 53.3-54.5 MB, this probe 61.2-62.3 MB (its peak is the first pass after the
JSON snapshot), the real lab agent 55.9-56.6 MB peak. Since the probe reads its JSON snapshot
from a child's pipe through the agent's own client (its own raw view and json.dumps were in the
measured process: ~59 MB before the agent ran) and the agent decodes a snapshot object by object
into the typed view, drops its text before the parse, diffs and applies a first pass's 30,000
entries without their keyed copies and trims between its features (December 7, 2026): this
probe ~56 MB (main with the same probe: 62 MB); its budget is issue 18's goal, 60 MB."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.root.conftest import needs_root

pytestmark = [pytest.mark.root, needs_root]


def _probe(ns: str, features: str, *more: str) -> tuple[float, str]:
    probe = os.path.join(os.path.dirname(__file__), "rss_probe.py")
    r = subprocess.run([sys.executable, probe, ns, "10000", "20", features, *more], capture_output=True, text=True,
                       timeout=180, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    rss, rest = r.stdout.split(" ", 1)
    seconds = float(rest.rsplit(" ", 1)[1])
    print(f"\n10k ports in view ({features} features): peak RSS {rss} MB, first apply {seconds:.2f} s "
          f"({rest.rsplit(' ', 1)[0]})")
    return float(rss), rest


def test_rss_and_apply_time_with_10k_ports(underlay3: list[str]) -> None:
    rss_l2, rest = _probe(underlay3[0], "none")          # applies everything in a fresh namespace
    # 10,000 port neighbours + one 169.254.169.254 entry (the metadata service, docs/metadata.md)
    # per network with a local port (20)
    assert "'fdb': 19960" in rest and "'neighs': 10020" in rest
    assert rss_l2 <= 60.0
    rss_all, _ = _probe(underlay3[1], "all")             # the whole agent, on another fresh host
    assert rss_all <= 80.0
    # as a real `vxnet agent` holds it: JSON snapshot, its imports, subnets, the default group, a resync
    rss_real, rest = _probe(underlay3[2], "all", "json", "cli", "cloud")
    assert "'fdb': 20000" in rest and "'plugs': 40" in rest     # + the DHCP and metadata service ports
    assert rss_real <= 60.0
