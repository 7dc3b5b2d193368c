"""Gateway failover on this host, driven by BFD (docs/gateway.md "High availability").

Contract:
- `HaFailover(cfg-like fields, wake)`: owns this host's `BfdMonitor` (dataplane/bfd.py);
  `start()` starts/adopts bfdd (a failure is logged and leaves failover to the store's lease).
- `view(v)`: the view the pass computes from: `compute.ha.failover_view(v, down)` where `down`
  = the peers whose BFD session went down, plus this host itself on a gateway host that is
  isolated (every session it had up is down: it is the one cut off, so it fences itself: its
  routers become standby here, their taps leave the bridges). The result is memoized on the
  ports bucket and `down`, so passes with nothing new reuse every compute cache.
- `after_pass(v)`: BFD peers follow the view (`compute.ha.bfd_peers`).
- A BFD state change calls `wake()` (an agent pass at once).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from vxnet.compute.ha import bfd_peers, failover_view
from vxnet.dataplane.bfd import BfdError, BfdMonitor
from vxnet.model import View

log = logging.getLogger("vxnet.agent.ha")


class HaFailover:
    def __init__(self, host: str, underlay_ip: str, gateway: bool, run_dir: str, wake: Callable[[], None],
                 netns: str | None = None) -> None:
        self.host, self.gateway = host, gateway
        self.bfd = BfdMonitor(host, underlay_ip, run_dir, wake, netns)
        self.ok = False
        self._memo: tuple[object, frozenset[str], object] | None = None
        self.last_down: frozenset[str] = frozenset()

    def start(self) -> None:
        try:
            self.bfd.start()
            self.ok = True
        except (BfdError, OSError) as e:
            log.warning("host=%s BFD unavailable (failover waits for the store's lease): %s", self.host, e)

    def close(self) -> None:
        self.bfd.close()

    def down(self) -> frozenset[str]:
        if not self.ok:
            return frozenset()
        down = set(self.bfd.down())
        if self.gateway and self.bfd.isolated():
            down.add(self.host)
        return frozenset(down)

    def view(self, v: View) -> View:
        down = self.down()
        if down != self.last_down:
            log.info("host=%s BFD down: %s", self.host, ",".join(sorted(down)) or "-")
            self.last_down = down
        if not down:
            return v
        m = self._memo
        if m is not None and m[0] is v.ports and m[1] == down:
            return dataclasses.replace(v, ports=m[2])  # type: ignore[arg-type]
        out = failover_view(v, down)
        self._memo = (v.ports, down, out.ports)
        return out

    def after_pass(self, v: View) -> None:
        if not self.ok:
            return
        try:
            self.bfd.set_peers(bfd_peers(v, self.host, self.gateway))
        except (BfdError, OSError) as e:
            log.warning("host=%s BFD peers: %s", self.host, e)
