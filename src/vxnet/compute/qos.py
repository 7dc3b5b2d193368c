"""QoS desired state of one host (pure): per VM tap, the bandwidth limits and DSCP mark of its
port's effective QoS policy.

Contract: `compute_qos(view, host) -> QosState`.
- A local VM port (bound here, not a network device) has the policy of its own
  `qos_policy_id`, else of its network's (Neutron: a network's policy applies to its ports
  that are not network devices). A policy missing from the view means no QoS.
- Directions are Neutron's, from the VM's side. `egress` (leaving the VM) enters the host on
  the tap's ingress: the agent redirects it to an IFB device shaped by a TBF (`ifb`); `ingress`
  (to the VM) leaves the host by the tap: a TBF at the tap's root. A rate of 0 means no limit
  (Neutron's `max_kbps` 0 is accepted and enforces nothing).
- Burst: `max_burst_kbps`, or 80% of `max_kbps` when 0 (Neutron's recommended default), in
  bytes, at least `MIN_BURST_BYTES` (a TBF whose bucket is smaller than a frame, or than what
  the rate fills in one timer tick, passes less than its rate).
- DSCP marks are set on IPv4 and IPv6 packets from the VM, in one nftables table
  (`naming.QOS_TABLE`, `dscp_ruleset`).
- Minimum bandwidth rules are accounted, not enforced: `TapQos.min_*_kbps` and the host's sums
  in `QosState` (Linux has no shared bottleneck qdisc here that could guarantee a tap a minimum:
  VM traffic leaves through the VXLAN device and the underlay, both shared with other hosts'
  flows).
Only rates and marks go into `TapQos`, so a change of anything else leaves the state equal.
"""

from __future__ import annotations

import dataclasses

from vxnet.compute import naming
from vxnet.model import Port, QosPolicy, View

MIN_BURST_BYTES = 16_000
DEFAULT_BURST_RATIO = 0.8
TBF_LATENCY_MS = 50


@dataclasses.dataclass(frozen=True)
class Limit:
    """A token bucket: `kbps` (1000 bit/s units, as Neutron) and `burst` in bytes."""

    kbps: int
    burst: int


@dataclasses.dataclass(frozen=True)
class TapQos:
    """What one VM tap needs."""

    tap: str
    port_id: str
    egress: Limit | None = None        # from the VM: shaped on the IFB its tap's ingress goes to
    ingress: Limit | None = None       # to the VM: shaped at the tap's root
    dscp: int | None = None            # set on the VM's IPv4/IPv6 packets
    min_egress_kbps: int = 0           # accounted only
    min_ingress_kbps: int = 0

    @property
    def ifb(self) -> str:
        return naming.qos_ifb_name(self.port_id)

    @property
    def empty(self) -> bool:
        return self.egress is None and self.ingress is None and self.dscp is None


@dataclasses.dataclass(frozen=True)
class QosState:
    taps: tuple[TapQos, ...] = ()      # sorted by tap, only taps with a limit or a mark
    min_egress_kbps: int = 0           # sums of the minimum bandwidth rules of local ports
    min_ingress_kbps: int = 0

    @property
    def by_tap(self) -> dict[str, TapQos]:
        return {t.tap: t for t in self.taps}


def _limit(max_kbps: int, max_burst_kbps: int) -> Limit | None:
    if max_kbps <= 0:
        return None
    burst_kbit = max_burst_kbps or int(max_kbps * DEFAULT_BURST_RATIO)
    return Limit(max_kbps, max(burst_kbit * 1000 // 8, MIN_BURST_BYTES))


def tap_qos(tap: str, port_id: str, pol: QosPolicy) -> TapQos:
    """The tap's state under policy `pol` (pure)."""
    egress = ingress = None
    dscp = None
    mins = {"egress": 0, "ingress": 0}
    for r in pol.rules:
        if r.type == "bandwidth_limit":
            lim = _limit(r.max_kbps, r.max_burst_kbps)
            if r.direction == "ingress":
                ingress = lim
            else:
                egress = lim
        elif r.type == "dscp_marking":
            dscp = r.dscp_mark
        elif r.type == "minimum_bandwidth":
            mins[r.direction if r.direction in mins else "egress"] = r.min_kbps
    return TapQos(tap, port_id, egress, ingress, dscp, mins["egress"], mins["ingress"])


def reads_port(port: Port, host: str) -> bool:
    """Whether `compute_qos(view, host)` reads `port`: only this host's ports (a port of another
    host joining, leaving or changing leaves the result as it was)."""
    return port.host == host


def compute_qos(v: View, host: str) -> QosState:
    """The QoS state of `host`'s VM taps (see the module contract)."""
    if not v.qos_policies:
        return QosState()
    taps = []
    for pid, p in v.ports.items():
        if p.host != host or p.is_infra:
            continue
        net = v.networks.get(p.network_id)
        policy_id = p.qos_policy_id or (net.qos_policy_id if net is not None else "")
        pol = v.qos_policies.get(policy_id) if policy_id else None
        if pol is None:
            continue
        t = tap_qos(naming.port_device(pid, p.is_subport), pid, pol)
        if not t.empty or t.min_egress_kbps or t.min_ingress_kbps:
            taps.append(t)
    taps.sort(key=lambda t: t.tap)
    return QosState(tuple(taps), sum(t.min_egress_kbps for t in taps), sum(t.min_ingress_kbps for t in taps))


def dscp_ruleset(state: QosState) -> str:
    """One nftables transaction replacing the QoS table: marks set on packets entering the
    bridge from each marked tap (prerouting, before the port-security filter sees them).
    With no mark the table is deleted (create-then-delete: no error when it is absent)."""
    family, name = naming.QOS_TABLE
    head = f"table {family} {name} {{}}\ndelete table {family} {name}\n"
    marked = [t for t in state.taps if t.dscp is not None]
    if not marked:
        return head
    lines = [f"table {family} {name} {{", "  chain marking {",
             "    type filter hook prerouting priority -200; policy accept;"]
    for t in marked:
        lines.append(f'    iifname "{t.tap}" ip dscp set {t.dscp}')
        lines.append(f'    iifname "{t.tap}" ip6 dscp set {t.dscp}')
    lines += ["  }", "}"]
    return head + "\n".join(lines) + "\n"
