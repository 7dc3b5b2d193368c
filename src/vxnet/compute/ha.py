"""Gateway high availability on every host (pure): which host serves a router's gateway and
snat ports *now*, and which hosts to run BFD sessions with (docs/gateway.md "High
availability").

Contract:
- The scheduler records on a router's gateway and snat ports its active host
  (`binding:host_id`, `Port.host`) and its standbys (`Port.standby`, in order).
- `serving_host(port, down)`: the active, unless this host's BFD session to it is down; then
  the first standby not down; "" (nobody) if every standby is down too. A fenced gateway host
  (it lost every BFD session, agent/gateway.py) puts itself in `down`: its routers' ports
  are then served by a standby or nobody, never by itself.
- `failover_view(view, down)`: the view with every gateway/snat port's host replaced by its
  serving host. Every compute of the host (L2 FDB toward the snat port's VTEP, the gateway
  feature's active/standby role) then follows a failover without waiting for the store. The
  same `View` object is returned when nothing changes (the incremental computes keep their
  caches).
- `bfd_peers(view, host, gateway)`: host name -> underlay IP of the hosts to watch: every
  gateway host of the view (except itself) and, on a gateway host, every other host of its
  view (they send it north-south traffic; losing all of them fences it).
"""

from __future__ import annotations

import dataclasses

from vxnet.model import Port, View

GW_OWNER = "network:router_gateway"
SNAT_OWNER = "network:router_centralized_snat"
HA_OWNERS = frozenset({GW_OWNER, SNAT_OWNER})


def serving_host(port: Port, down: frozenset[str]) -> str:
    """The host serving `port` now (see the module contract)."""
    if port.host not in down or not port.standby:
        return port.host
    return next((h for h in port.standby if h not in down), "")


def failover_view(view: View, down: frozenset[str]) -> View:
    """`view` with gateway/snat ports moved to their serving hosts (same object if none moves)."""
    if not down:
        return view
    moved = {}
    for pid, p in view.ports.items():
        if p.device_owner in HA_OWNERS and p.host in down:
            h = serving_host(p, down)
            if h != p.host:
                moved[pid] = dataclasses.replace(p, host=h, standby=(p.host, *(s for s in p.standby if s != h)))
    if not moved:
        return view
    return dataclasses.replace(view, ports={**view.ports, **moved})


def bfd_peers(view: View, host: str, gateway: bool) -> dict[str, str]:
    """Hosts to keep a BFD session with: name -> underlay IP (see the module contract)."""
    return {h.name: h.underlay_ip for h in view.hosts.values()
            if h.name != host and h.underlay_ip and (gateway or h.gateway)}
