"""What an agent tells the servers about itself (`vxnet status`), computed from its passes (pure).

- `drift_counts`: the changes of a pass whose desired state had not changed since the previous
  clean pass, by kind (L2 kinds, and feature names for features' changes): that is drift that
  the pass repaired (someone else changed the kernel).
- `down_reasons`: why each local port is not ACTIVE: its tap is absent (the VM is not started
  here), its L2 apply failed (retried), or a feature (e.g. the firewall) is not applied.
- `status_report`: the report sent with every heartbeat. It contains no clock except the last
  drift repair's time, so it changes only when something happens and the server stores it only
  then. At most DOWN_SHOWN port reasons.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vxnet import buildinfo
from vxnet.agent.features import FeatureResult
from vxnet.agent.reconciler import ReconcileResult
from vxnet.compute.state import LocalPort

DOWN_SHOWN = 100


def drift_counts(result: ReconcileResult, features: Sequence[str], fresults: Sequence[FeatureResult]) -> dict[str, int]:
    """Kind -> objects changed by this pass (call it for passes whose desired state is unchanged)."""
    counts = {k: v for k, v in result.diff.counts().items() if v}
    for name, r in zip(features, fresults, strict=False):
        n = sum(r.changes.values())
        if n:
            counts[name] = n
    return counts


def down_reasons(local_ports: Iterable[LocalPort], l2: ReconcileResult, features: Sequence[str],
                 fresults: Sequence[FeatureResult]) -> dict[str, str]:
    """Port id -> why it is not ACTIVE after this pass (`l2`: the L2 reconciler's own result)."""
    bad_devs = {getattr(f, "name", None) or getattr(f, "tap", None) or getattr(f, "dev", None) for f in l2.failed}
    ports = {lp.port_id: lp for lp in local_ports}
    reasons: dict[str, str] = {}
    for pid in l2.down:
        lp = ports.get(pid)
        if lp is not None and bad_devs & {lp.tap, lp.bridge}:
            reasons[pid] = "L2 apply failed (retrying)"
        else:
            reasons[pid] = f"tap {lp.tap if lp else '?'} not present (VM not started here?)"
    for name, r in zip(features, fresults, strict=False):
        for pid in (l2.active | l2.down) if r.all_down else r.down:
            reasons.setdefault(pid, f"feature {name} not applied")
    return reasons


def status_report(received: int | None, applied: int | None, last: ReconcileResult | None,
                  features: Sequence[str], failing: Sequence[str], reasons: Mapping[str, str],
                  drift_repaired: int, last_drift_at: str | None) -> dict[str, Any]:
    """The heartbeat's status report (see the module docstring)."""
    return {
        "version": buildinfo.version(),
        "features": list(features),
        "received_revision": received,      # the last view change received (update or snapshot)
        "applied_revision": applied,        # the last view change a clean pass applied
        "failing": list(failing),
        "ports": {"active": len(last.active) if last else 0, "down": len(last.down) if last else 0},
        "down": dict(sorted(reasons.items())[:DOWN_SHOWN]),
        "drift": {"repaired": drift_repaired, "last_repair_at": last_drift_at},
    }
