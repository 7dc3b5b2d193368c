"""What this vxnet is: its version (from the installed package's metadata) and the Python
running it, for `vxnet --version` and the `vxnet_build_info` metric of server and agent.

The metric follows Prometheus' `*_build_info` convention: a gauge that is always 1 and whose
labels (`version`, `python`) carry the information, so a query can join on it.
"""

from __future__ import annotations

import os
import sys

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import registry as prom_registry

METRIC = "vxnet_build_info"


def version() -> str:
    """The installed vxnet's version ("unknown" when run from a tree that was never installed).

    Read from the distribution's METADATA on sys.path directly: `importlib.metadata` pulls in
    the email and zipfile packages (about 7 MB of RSS), which the agent's memory budget notices."""
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith("vxnet-") and name.endswith(".dist-info"):
                try:
                    with open(os.path.join(entry or ".", name, "METADATA"), encoding="utf-8") as f:
                        for line in f:
                            if line.startswith("Version:"):
                                return line.split(":", 1)[1].strip()
                            if not line.strip():
                                break   # end of the headers
                except OSError:
                    continue
    return "unknown"


def python_version() -> str:
    """The running Python, e.g. "3.11.2" (what platform.python_version() says)."""
    return sys.version.split()[0]


def describe() -> str:
    """The `vxnet --version` line."""
    return f"vxnet {version()} (Python {python_version()})"


def register_build_info(registry: CollectorRegistry | None = None) -> Gauge:
    """Add `vxnet_build_info{version, python} 1` to `registry` (the default one: the agent)."""
    g = Gauge("vxnet_build_info", "vxnet build: always 1; the labels say the version and the Python",
              ["version", "python"], registry=registry if registry is not None else prom_registry.REGISTRY)
    g.labels(version(), python_version()).set(1)
    return g
