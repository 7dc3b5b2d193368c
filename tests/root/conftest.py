"""Root-test fixtures: a lab of namespaces built from scratch and always torn down.

Everything is named with the lab prefix (`vxl`), so teardown finds it even after a crash;
each fixture also tears down leftovers before it starts.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from vxnet.lab import topology

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root and iproute2")


@pytest.fixture
def underlay3() -> Iterator[list[str]]:
    """3 host namespaces on a flat underlay (no server, no agents); yields their namespaces."""
    topology.teardown()
    try:
        topology.build_underlay(3)
        yield [topology.host_ns(i) for i in (1, 2, 3)]
    finally:
        topology.teardown()
