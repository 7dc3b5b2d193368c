"""Which gateway hosts can serve a router's external network (scheduling by physical network).

Contract: `able(uow, network_id, hosts)` keeps, of `hosts` (alive gateway hosts, in order),
those that can serve external network `network_id`:
- a flat or VLAN network with `provider:physical_network` P: hosts whose agent registered an
  interface for P (`--external-interface P:IF`, its record's `configurations.external_interface`),
  and hosts registered the legacy way (one bare interface, or none), which the scheduler cannot
  tell apart (they are kept: what vxnet did before several external networks);
- any other network (or an unknown one): every host.
Pure over the unit of work's reads; no writes.
"""

from __future__ import annotations

from vxnet.compute.gateway import parse_external_interfaces
from vxnet.services.repo import UnitOfWork


def served(spec: str | None) -> set[str] | None:
    """The physical networks a host's `external_interface` names; None: legacy (any)."""
    try:
        mapping, bare = parse_external_interfaces(spec)
    except ValueError:
        return None
    return set(mapping) if mapping and bare is None else None


def able(uow: UnitOfWork, network_id: str, hosts: list[str]) -> list[str]:
    net = uow.get("networks", network_id)
    if net is None or net.get("provider:network_type") not in ("flat", "vlan"):
        return hosts
    phys = net.get("provider:physical_network") or ""
    wanted = set(hosts)
    conf = {a["host"]: (a.get("configurations") or {}).get("external_interface")
            for a in uow.list("agents", lambda a: a.get("host") in wanted)}
    out = []
    for h in hosts:
        names = served(conf.get(h))
        if names is None or phys in names:
            out.append(h)
    return out
