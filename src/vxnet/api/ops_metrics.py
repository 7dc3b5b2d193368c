"""Operational gauges of the server, computed from the store at each scrape (docs/metrics.md):

- `vxnet_store_up`: 1 when the store answered this scrape's reads, 0 when it did not (etcd
  without a quorum, unreachable). The other gauges below are then left out of the scrape
  (absent, not zero: an alert on them must not fire on missing data).
- `vxnet_agents{alive}`: agent records, alive as the API shows it (the record's flag and its
  liveness key present).
- `vxnet_ports{status,bound}`: ports by status, `bound="true"` when a host is set in
  `binding:host_id` (an unbound port is DOWN in Neutron too and is no sign of trouble).

Reading the store never raises out of a scrape: a store error is `vxnet_store_up 0`.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vxnet.services.agents import LIVE_PREFIX
from vxnet.store.contract import Store, StoreError

log = logging.getLogger(__name__)


def revision_or_nan(store: Store) -> float:
    """The store's revision, NaN when the store does not answer (so /metrics still answers)."""
    try:
        return float(store.revision())
    except StoreError:
        return math.nan


class OpsCollector(Collector):
    """The store-derived gauges of one server (see the module docstring)."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("vxnet_store_up", "1 when the store answered this scrape's reads, else 0")
        try:
            repo = self._state.repo
            records = repo.list("agents")
            live = {kv.key[len(LIVE_PREFIX):] for kv in self._state.store.range(LIVE_PREFIX)[0]}
            ports = repo.list("ports")
        except StoreError as e:
            log.warning("metrics: the store did not answer: %s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        agents = GaugeMetricFamily("vxnet_agents", "Agent records by liveness (as GET /v2.0/agents shows it)",
                                   labels=["alive"])
        n_alive = sum(1 for r in records if r.get("alive") and r.get("host") in live)
        agents.add_metric(["true"], n_alive)
        agents.add_metric(["false"], len(records) - n_alive)
        yield agents
        counts: collections.Counter[tuple[str, str]] = collections.Counter(
            (str(p.get("status", "DOWN")), "true" if p.get("binding:host_id") else "false") for p in ports)
        fam = GaugeMetricFamily("vxnet_ports", "Ports by status, and whether bound to a host",
                                labels=["status", "bound"])
        for status in ("ACTIVE", "DOWN", "BUILD"):
            for bound in ("true", "false"):
                counts.setdefault((status, bound), 0)
        for (status, bound), n in sorted(counts.items()):
            fam.add_metric([status, bound], n)
        yield fam


def register(registry: CollectorRegistry, state: Any) -> None:
    registry.register(OpsCollector(state))
