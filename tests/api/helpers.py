"""Helpers shared by the API tests: Neutron error checks and small resource builders."""

from __future__ import annotations

import uuid
from typing import Any

import httpx


def assert_error(r: httpx.Response, status: int, type_: str | None = None, message: str | None = None) -> dict[str, Any]:
    """The response is a NeutronError with this status (and type / message fragment)."""
    assert r.status_code == status, r.text
    err = r.json()["NeutronError"]
    assert set(err) == {"type", "message", "detail"}
    assert isinstance(err["message"], str) and err["message"]
    if type_ is not None:
        assert err["type"] == type_, err
    if message is not None:
        assert message in err["message"], err
    return err


def network(c: httpx.Client, **attrs: Any) -> dict[str, Any]:
    r = c.post("/networks", json={"network": {"name": "n-" + uuid.uuid4().hex[:6], **attrs}})
    assert r.status_code == 201, r.text
    return r.json()["network"]


def subnet(c: httpx.Client, net: dict[str, Any], cidr: str, **attrs: Any) -> dict[str, Any]:
    r = c.post("/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4, "cidr": cidr, **attrs}})
    assert r.status_code == 201, r.text
    return r.json()["subnet"]


def port(c: httpx.Client, net: dict[str, Any], **attrs: Any) -> dict[str, Any]:
    r = c.post("/ports", json={"port": {"network_id": net["id"], **attrs}})
    assert r.status_code == 201, r.text
    return r.json()["port"]


class CountingStr(str):
    """A string that counts its equality comparisons (to measure work without a clock)."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        CountingStr.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__
