"""`ControlPlane` over HTTP, for the agent core: login, register, heartbeat, view stream, status.

This is a thin adapter written against the agent <-> server contract. If
`vxnet.agent.client` (the agent's client library) is present, `make_control_plane` uses it
instead; this adapter is the fallback and the reference of what the core needs.

Failover: the server URLs are tried in order, starting from the last one that worked; a token
is obtained per server (servers share the store, but not necessarily token keys) and renewed
on 401.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx

log = logging.getLogger("vxnet.agent.control")


class HttpControlPlane:
    """The agent's view of the servers."""

    def __init__(self, servers: list[str], host: str, underlay_ip: str, user: str, password: str, project: str,
                 gateway: bool = False, timeout: float = 5.0) -> None:
        if not servers:
            raise ValueError("at least one server URL")
        self.servers = [s.rstrip("/") for s in servers]
        self.host = host
        self.underlay_ip = underlay_ip
        self.user, self.password, self.project = user, password, project
        self.gateway = gateway
        self._current = 0
        self._tokens: dict[str, str] = {}
        self._timeout = httpx.Timeout(timeout, read=timeout)
        self._client = httpx.Client(timeout=self._timeout)

    # -- plumbing ---------------------------------------------------------------------------
    def _token(self, base: str, renew: bool = False) -> str:
        if renew or base not in self._tokens:
            body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
                "name": self.user, "domain": {"id": "default"}, "password": self.password}}},
                "scope": {"project": {"name": self.project, "domain": {"id": "default"}}}}}
            r = self._client.post(base + "/identity/v3/auth/tokens", json=body)
            r.raise_for_status()
            self._tokens[base] = r.headers["X-Subject-Token"]
        return self._tokens[base]

    def _order(self) -> list[int]:
        n = len(self.servers)
        return [(self._current + i) % n for i in range(n)]

    def _call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        last: Exception | None = None
        for i in self._order():
            base = self.servers[i]
            try:
                for attempt in (0, 1):
                    r = self._client.request(method, f"{base}/v2.0/vxnet/hosts/{self.host}/{path}", json=body,
                                             headers={"X-Auth-Token": self._token(base, renew=attempt == 1)})
                    if r.status_code != 401:
                        break
                self._current = i
                return r
            except httpx.HTTPError as e:
                last = e
                log.warning("server %s unreachable: %s", base, e)
        raise ConnectionError(f"no server reachable: {last}")

    # -- ControlPlane -------------------------------------------------------------------------
    def register(self) -> Mapping[str, Any]:
        r = self._call("POST", "register", {"underlay_ip": self.underlay_ip, "gateway": self.gateway,
                                            "external_interface": None, "agent_type": "vxnet agent"})
        r.raise_for_status()
        return r.json()

    def heartbeat(self) -> bool:
        r = self._call("POST", "heartbeat")
        if r.status_code == 404:
            return False
        r.raise_for_status()
        return True

    def report_status(self, active: Iterable[str], down: Iterable[str]) -> None:
        r = self._call("POST", "ports-status", {"ACTIVE": list(active), "DOWN": list(down)})
        r.raise_for_status()

    def stream(self, since: int | None) -> Iterator[Mapping[str, Any]]:
        """The view stream of one server (the first reachable); ends or raises when it breaks.

        The read timeout (15 s) is three ping periods: a silent connection is a dead one.
        """
        last: Exception | None = None
        for i in self._order():
            base = self.servers[i]
            url = f"{base}/v2.0/vxnet/hosts/{self.host}/view" + (f"?since={since}" if since is not None else "")
            try:
                timeout = httpx.Timeout(5.0, read=15.0)
                with httpx.Client(timeout=timeout) as c:
                    with c.stream("GET", url, headers={"X-Auth-Token": self._token(base)}) as r:
                        if r.status_code == 401:
                            self._token(base, renew=True)
                            raise ConnectionError("token rejected")
                        r.raise_for_status()
                        self._current = i
                        for line in r.iter_lines():
                            if line.strip():
                                yield json.loads(line)
                return
            except (httpx.HTTPError, ConnectionError, ValueError) as e:
                last = e
                log.warning("view stream from %s failed: %s", base, e)
        raise ConnectionError(f"no server reachable for the view stream: {last}")

    def close(self) -> None:
        self._client.close()


def make_control_plane(servers: list[str], host: str, underlay_ip: str, user: str, password: str,
                       project: str, gateway: bool = False) -> HttpControlPlane:
    """The control plane for `vxnet agent`."""
    return HttpControlPlane(servers, host, underlay_ip, user, password, project, gateway)
