"""The agents' typed model never carries a link MTU the kernel refuses (below 68)."""

from __future__ import annotations

from vxnet.model.resources import DEFAULT_MTU, LINK_MIN_MTU, parse


def _net(**kw: object) -> dict[str, object]:
    return {"id": "n1", "provider:network_type": "vxlan", "provider:segmentation_id": 7, **kw}


def test_network_mtu_below_the_kernel_minimum_is_raised_to_it() -> None:
    assert parse("networks", "n1", _net(mtu=67)).mtu == LINK_MIN_MTU == 68
    assert parse("networks", "n1", _net(mtu=1)).mtu == 68
    assert parse("networks", "n1", _net(mtu=1400)).mtu == 1400
    assert parse("networks", "n1", _net(mtu=0)).mtu == DEFAULT_MTU
    assert parse("networks", "n1", _net()).mtu == DEFAULT_MTU
