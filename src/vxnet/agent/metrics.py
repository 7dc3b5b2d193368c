"""Prometheus metrics of the agent (one process = one agent, so the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from vxnet.buildinfo import register_build_info

VIEW_OBJECTS = Gauge("vxnet_agent_view_objects", "Objects in this host's view", ["kind"])
VIEW_REVISION = Gauge("vxnet_agent_view_revision", "Store revision of the view")
UPDATE_REVISION = Gauge("vxnet_agent_update_revision", "Store revision of the last update or snapshot received "
                        "(pings excluded): applied_revision is behind it until a pass applied it")
APPLIED_REVISION = Gauge("vxnet_agent_applied_revision", "Last view revision fully applied to the kernel")
DESIRED_OBJECTS = Gauge("vxnet_agent_desired_objects", "Kernel objects in the desired state", ["kind"])
RECONCILES = Counter("vxnet_agent_reconciles_total", "Reconcile passes", ["full_read"])
RECONCILE_SECONDS = Histogram("vxnet_agent_reconcile_seconds", "Duration of a reconcile pass",
                              buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
PASS_PART_SECONDS = Histogram("vxnet_agent_pass_part_seconds", "Duration of one part of a pass (compute, "
                              "compute_plug, compute_rest, compute_<part>, apply_<feature>, l2, l2_rest, "
                              "l2_after, plug_path)", ["part"],
                              buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2))
KERNEL_CHANGES = Counter("vxnet_agent_kernel_changes_total", "Kernel objects created/updated/deleted",
                         ["kind", "op"])
ERRORS = Counter("vxnet_agent_errors_total", "Errors", ["where"])
STREAM_CONNECTED = Gauge("vxnet_agent_stream_connected", "1 while the view stream is connected")
PORTS = Gauge("vxnet_agent_local_ports", "Local ports by data-path status", ["status"])
PASSES = Counter("vxnet_agent_passes_total", "Reconcile passes by whether the host's desired state changed "
                 "(`unchanged`: the pass was woken by something no compute reads, or by the kernel)", ["desired"])
VIEW_UPDATES = Counter("vxnet_agent_view_updates_total", "View stream updates received, by collection", ["kind"])
RETRY_SECONDS = Gauge("vxnet_agent_retry_delay_seconds", "Delay before the retry of the last failed pass")
DRIFT_REPAIRS = Counter("vxnet_agent_drift_repairs_total", "Kernel objects changed by passes whose desired state had "
                        "not changed (drift repaired; also a tap that appeared being plugged, or a failed change "
                        "retried)", ["kind"])
BUILD_INFO = register_build_info()
