"""The typed view of one host: what every compute function takes.

Contract: `View` holds one mapping per kind (id -> typed object; `hosts`: name -> `Host`).
`parse_view(raw)` builds it from the raw buckets of the view stream (each object parsed once;
already typed objects are kept, so a `ViewState` whose objects were parsed on arrival wraps
for free). `as_view(x)` accepts either form, so tests and benches may hand raw dicts to the
compute functions; the agent and `vxnet trace` hand typed views.

Identity matters: a view update replaces only the objects it changes, so an object that is the
very same Python object as in the previous view is unchanged. The incremental caches in
compute/ rely on this (`compute.host.HostComputer`).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

from vxnet.model import resources as r

KINDS = ("hosts", "networks", "subnets", "ports", "routers", "floatingips", "security_groups",
         "security_group_rules", "qos_policies")
_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


@dataclasses.dataclass(frozen=True, eq=False)
class View:
    """A host's view (typed). Buckets are read-only by convention (never mutated once built)."""

    hosts: Mapping[str, r.Host] = dataclasses.field(default_factory=lambda: _EMPTY)
    networks: Mapping[str, r.Network] = dataclasses.field(default_factory=lambda: _EMPTY)
    subnets: Mapping[str, r.Subnet] = dataclasses.field(default_factory=lambda: _EMPTY)
    ports: Mapping[str, r.Port] = dataclasses.field(default_factory=lambda: _EMPTY)
    routers: Mapping[str, r.Router] = dataclasses.field(default_factory=lambda: _EMPTY)
    floatingips: Mapping[str, r.FloatingIP] = dataclasses.field(default_factory=lambda: _EMPTY)
    security_groups: Mapping[str, r.SecurityGroup] = dataclasses.field(default_factory=lambda: _EMPTY)
    security_group_rules: Mapping[str, r.Rule] = dataclasses.field(default_factory=lambda: _EMPTY)
    qos_policies: Mapping[str, r.QosPolicy] = dataclasses.field(default_factory=lambda: _EMPTY)

    def bucket(self, kind: str) -> Mapping[str, Any]:
        return getattr(self, kind)  # type: ignore[no-any-return]

    def underlay_ip(self, host: str) -> str:
        h = self.hosts.get(host)
        return h.underlay_ip if h is not None else ""


def parse_bucket(kind: str, objs: Mapping[str, Any], consume: bool = False) -> dict[str, Any]:
    """Every object of one bucket in its typed form. `consume`: `objs` is a dict the caller
    owns and gives up; each raw object is removed from it as it is parsed, so the raw and the
    typed forms of a large view are never alive together (the agent's snapshot)."""
    if not consume or not isinstance(objs, dict):
        return {k: r.parse(kind, k, o) for k, o in objs.items()}
    out: dict[str, Any] = {}
    while objs:
        k, o = objs.popitem()
        out[k] = r.parse(kind, k, o)
    return out


def _typed(kind: str, objs: Mapping[str, Any]) -> Mapping[str, Any]:
    if all(not isinstance(o, Mapping) for o in objs.values()):
        return objs                      # already typed: wrap, do not copy (identity kept)
    return parse_bucket(kind, objs)


def parse_view(raw: Mapping[str, Mapping[str, Any]]) -> View:
    """A raw view (or a mix of raw and typed buckets) as a typed `View`."""
    return View(**{k: _typed(k, raw.get(k) or _EMPTY) for k in KINDS})


def as_view(view: View | Mapping[str, Mapping[str, Any]]) -> View:
    """`view` if it is typed, else `parse_view(view)`."""
    return view if isinstance(view, View) else parse_view(view)
