"""QoS: the pure per-tap compute (effective policy, directions, bursts, DSCP ruleset) and the
agent feature against a stateful fake driver (only changed taps converged, removal clears,
unplugged taps wait without backoff, failures retried and reported, restart adopts, a resync
of an unchanged host reports no change while real drift is repaired and reported)."""

from __future__ import annotations

from typing import Any

from vxnet.agent.features import HostContext
from vxnet.agent.qos import QosFeature
from vxnet.compute import naming
from vxnet.compute.qos import Limit, QosState, TapQos, compute_qos, dscp_ruleset
from vxnet.dataplane.qos_driver import QosError
from vxnet.model import parse_view

NET = "a0000000-0000-4000-8000-000000000001"
P1 = "p1000000-0000-4000-8000-000000000001"
P2 = "p2000000-0000-4000-8000-000000000002"


def view(port_qos: str | None = "q1", net_qos: str | None = None, rules: list[dict] | None = None,
         owner: str = "compute:nova") -> Any:
    rules = rules if rules is not None else [
        {"type": "bandwidth_limit", "max_kbps": 10000, "max_burst_kbps": 0, "direction": "egress"},
        {"type": "bandwidth_limit", "max_kbps": 5000, "max_burst_kbps": 400, "direction": "ingress"},
        {"type": "dscp_marking", "dscp_mark": 26},
        {"type": "minimum_bandwidth", "min_kbps": 1000, "direction": "egress"}]
    return parse_view({
        "networks": {NET: {"id": NET, "provider:segmentation_id": 5, "qos_policy_id": net_qos}},
        "ports": {P1: {"id": P1, "network_id": NET, "binding:host_id": "h1", "device_owner": owner,
                       "qos_policy_id": port_qos},
                  P2: {"id": P2, "network_id": NET, "binding:host_id": "h2", "device_owner": "compute:nova",
                       "qos_policy_id": port_qos}},
        "qos_policies": {"q1": {"id": "q1", "rules": rules},
                         "q2": {"id": "q2", "rules": [{"type": "dscp_marking", "dscp_mark": 10}]}},
    })


def test_directions_bursts_and_marks() -> None:
    s = compute_qos(view(), "h1")
    assert [t.tap for t in s.taps] == [naming.tap_name(P1)]          # only this host's port
    t = s.taps[0]
    assert t.egress == Limit(10000, 8000 * 1000 // 8)               # burst 0: 80% of the rate, in bytes
    assert t.ingress == Limit(5000, 400 * 1000 // 8)
    assert t.dscp == 26 and t.min_egress_kbps == 1000 and s.min_egress_kbps == 1000
    assert t.ifb == naming.qos_ifb_name(P1) and len(t.ifb) <= 15


def test_effective_policy_port_over_network_and_network_devices() -> None:
    assert compute_qos(view(port_qos=None), "h1") == QosState()
    assert compute_qos(view(port_qos=None, net_qos="q2"), "h1").taps[0].dscp == 10     # inherited
    assert compute_qos(view(port_qos="q1", net_qos="q2"), "h1").taps[0].dscp == 26     # its own wins
    # a network device does not inherit the network's policy (and has no tap here anyway)
    assert compute_qos(view(port_qos=None, net_qos="q2", owner="network:dhcp"), "h1") == QosState()
    assert compute_qos(view(port_qos="gone"), "h1") == QosState()                       # policy not in view


def test_zero_rate_is_no_limit_and_tiny_burst_is_raised() -> None:
    s = compute_qos(view(rules=[{"type": "bandwidth_limit", "max_kbps": 0, "direction": "egress"},
                                {"type": "bandwidth_limit", "max_kbps": 100, "max_burst_kbps": 1,
                                 "direction": "ingress"}]), "h1")
    assert s.taps[0].egress is None and s.taps[0].ingress is not None and s.taps[0].ingress.burst == 16_000


def test_dscp_ruleset() -> None:
    text = dscp_ruleset(compute_qos(view(), "h1"))
    tap = naming.tap_name(P1)
    assert f'iifname "{tap}" ip dscp set 26' in text and f'iifname "{tap}" ip6 dscp set 26' in text
    assert text.startswith("table bridge vxnet_qos {}\ndelete table bridge vxnet_qos\n")
    assert dscp_ruleset(QosState()) == "table bridge vxnet_qos {}\ndelete table bridge vxnet_qos\n"


class FakeDriver:
    """Taps and IFBs with what QoS put on them."""

    def __init__(self, taps: set[str]) -> None:
        self.taps = set(taps)
        self.on: dict[str, TapQos] = {}
        self.ifbs: set[str] = set()
        self.dscp = ""
        self.calls = 0
        self.dscp_writes = 0
        self.fail = False

    def links(self) -> set[str]:
        return self.taps | self.ifbs

    def owned(self) -> tuple[set[str], set[str]]:
        return set(self.on), set(self.ifbs)

    def apply_tap(self, t: TapQos) -> bool:
        self.calls += 1
        if self.fail:
            raise QosError("tc: boom")
        before = (self.on.get(t.tap), t.ifb in self.ifbs)
        self.on[t.tap] = t
        if t.egress is not None:
            self.ifbs.add(t.ifb)
        else:
            self.ifbs.discard(t.ifb)
        return before != (t, t.ifb in self.ifbs)          # the real driver writes only what differs

    def clear_tap(self, tap: str, port_id: str) -> None:
        if self.fail:
            raise QosError("tc: boom")
        self.on.pop(tap, None)
        self.ifbs.discard(naming.qos_ifb_name(port_id))

    def delete_ifb(self, name: str) -> None:
        self.ifbs.discard(name)

    def apply_dscp(self, text: str, marked: bool = True, verify: bool = False) -> bool:
        if verify and text == self.dscp:
            return False
        self.dscp = text
        self.dscp_writes += 1
        return True

    def close(self) -> None:
        pass


def feature(drv: FakeDriver, now: list[float]) -> QosFeature:
    return QosFeature(HostContext("h1", "198.51.100.1"), drv, clock=lambda: now[0])  # type: ignore[arg-type]


def test_feature_converges_changes_only_and_clears_on_removal() -> None:
    tap = naming.tap_name(P1)
    drv, now = FakeDriver({tap}), [0.0]
    f = feature(drv, now)
    res = f.apply(compute_qos(view(), "h1"))
    assert not res.failed and not res.down and drv.on[tap].egress is not None and "dscp set 26" in drv.dscp
    assert drv.ifbs == {naming.qos_ifb_name(P1)}
    f.apply(compute_qos(view(), "h1"))
    assert drv.calls == 1                                    # nothing changed: nothing done
    f.apply(compute_qos(view(rules=[{"type": "bandwidth_limit", "max_kbps": 2000, "direction": "ingress"}]), "h1"))
    assert drv.calls == 2 and drv.on[tap].egress is None and drv.ifbs == set() and "dscp" not in drv.dscp.split(
        "delete")[1]
    f.apply(compute_qos(view(port_qos=None), "h1"))          # policy detached: everything cleared
    assert drv.on == {} and drv.ifbs == set()


def test_unplugged_tap_waits_without_backoff_and_failures_retry() -> None:
    tap = naming.tap_name(P1)
    drv, now = FakeDriver(set()), [0.0]
    f = feature(drv, now)
    res = f.apply(compute_qos(view(), "h1"))
    assert P1 in res.down and not res.failed and drv.calls == 0      # not plugged: DOWN, not a failure
    drv.taps.add(tap)
    res = f.apply(compute_qos(view(), "h1"))                          # at once, no backoff
    assert not res.down and drv.on[tap].ingress is not None
    drv.fail = True
    res = f.apply(compute_qos(view(rules=[{"type": "dscp_marking", "dscp_mark": 46}]), "h1"))
    assert res.failed and P1 in res.down
    calls = drv.calls
    res = f.apply(compute_qos(view(rules=[{"type": "dscp_marking", "dscp_mark": 46}]), "h1"))
    assert drv.calls == calls and P1 in res.down                      # backing off
    drv.fail = False
    now[0] += 1.0
    res = f.apply(compute_qos(view(rules=[{"type": "dscp_marking", "dscp_mark": 46}]), "h1"))
    assert not res.failed and not res.down and drv.on[tap].dscp == 46


def test_restart_adopts_and_removes_leftovers() -> None:
    tap = naming.tap_name(P1)
    other = naming.tap_name("zz000000-0000-4000-8000-000000000009")
    drv, now = FakeDriver({tap, other}), [0.0]
    feature(drv, now).apply(compute_qos(view(), "h1"))
    drv.on[other] = TapQos(other, "zz000000-0000-4000-8000-000000000009", Limit(1, 16000))   # a leftover
    drv.ifbs.add(naming.QOS_IFB_PREFIX + "stale000000")
    kept = drv.on[tap]
    f2 = feature(drv, now)                                   # a restarted agent: no memory
    res = f2.apply(compute_qos(view(), "h1"))
    assert not res.failed and set(drv.on) == {tap} and drv.on[tap] == kept
    assert drv.ifbs == {naming.qos_ifb_name(P1)}


def test_failed_removal_is_retried_from_the_kernel() -> None:
    tap = naming.tap_name(P1)
    drv, now = FakeDriver({tap}), [0.0]
    f = feature(drv, now)
    f.apply(compute_qos(view(), "h1"))
    drv.fail = True
    res = f.apply(compute_qos(view(port_qos=None), "h1"))
    assert res.failed and tap in drv.on
    drv.fail = False
    res = f.apply(compute_qos(view(port_qos=None), "h1"))    # the kernel is read again: the leftover goes
    assert not res.failed and drv.on == {} and drv.ifbs == set()


def test_resync_of_an_unchanged_host_is_no_change_but_drift_is() -> None:
    tap = naming.tap_name(P1)
    drv, now = FakeDriver({tap}), [0.0]
    f = feature(drv, now)
    res = f.apply(compute_qos(view(), "h1"))
    assert res.changes == {"taps": 1, "taps_cleared": 0, "dscp": 1}
    for _ in range(3):                                       # resyncs: the kernel is read, nothing differs
        f.invalidate()
        res = f.apply(compute_qos(view(), "h1"))
        assert not res.failed and not any(res.changes.values()), res.changes
    assert drv.dscp_writes == 1
    del drv.on[tap]                                          # drift: the tap's objects deleted
    drv.dscp = ""                                            # ... and the DSCP table
    f.invalidate()
    res = f.apply(compute_qos(view(), "h1"))
    assert res.changes == {"taps": 1, "taps_cleared": 0, "dscp": 1} and drv.on[tap].dscp == 26
