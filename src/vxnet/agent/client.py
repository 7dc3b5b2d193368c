"""The agent's client of the servers' control plane (`/v2.0/vxnet/hosts/{host}/...`).

`ServerClient(urls, host, user, password, project)` talks to one of several equivalent servers
(`--server URL[,URL...]`; `unix:///path/to.sock` reaches a server on a unix socket, which
every network namespace can see):

- login: a Keystone v3 password token, renewed before 80 % of its lifetime and after any 401.
  Tokens are per server URL (servers on one store accept each other's tokens, but nothing
  here relies on it).
- every call goes to the current server; a connection failure or a 5xx moves to the next URL,
  in order, and the one that answers becomes current (failover, no pinning to the first URL).
- `register()`, `heartbeat()` (False when the server forgot the host: register again). The
  caller (the agent core) runs the loop, on the interval `register()` returns.
- `stream(since)`: the NDJSON view stream of one connection, parsed; it ends or raises when
  the connection breaks. A silent connection (no line for `read_timeout`, three ping periods)
  counts as broken. The caller reconnects (the agent core, with `since` = its last applied
  revision); the server decides between resuming and a fresh snapshot. The client remembers
  the store epoch of the last snapshot and sends it with every `since`, so a `since` of
  another store (a server of a migrated store) gets a snapshot, never a resume.
- `report_status(active, down)`: ports' Neutron status; returns the ids the server changed.
- `heartbeat(report)` carries the agent's status report; `report_doctor(id, result)` answers
  a doctor request that came in the view stream.

Synchronous (httpx), safe to use from a few threads (heartbeats in one, the stream in another).
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import httpx

from vxnet.compute.view import decode_message
from vxnet.httptls import verify_for

log = logging.getLogger("vxnet.agent.client")

PATH = "/v2.0/vxnet/hosts"


class ServerUnavailable(ConnectionError):
    """No server URL answered."""


class ServerRejected(RuntimeError):
    """A server answered with an error the client cannot fix by retrying elsewhere."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


class _Server:
    """One server URL: its HTTP client and token."""

    def __init__(self, url: str, timeout: float) -> None:
        url = url.strip().rstrip("/")
        plain = {"verify": verify_for(url)}
        if url.startswith("unix://"):
            self.base = "http://localhost"
            self.transport: httpx.HTTPTransport | None = httpx.HTTPTransport(uds=url[len("unix://"):], **plain)
        else:
            self.base = url
            self.transport = None
        self.url = url
        self.http = httpx.Client(base_url=self.base, timeout=timeout, transport=self.transport, **plain)
        self.token: str | None = None
        self.renew_at = 0.0

    def close(self) -> None:
        self.http.close()


def split_urls(urls: str | Sequence[str]) -> list[str]:
    """`"a,b"` or `["a", "b,c"]` -> `["a", "b", "c"]`."""
    items = [urls] if isinstance(urls, str) else list(urls)
    out = [u.strip() for item in items for u in item.split(",") if u.strip()]
    if not out:
        raise ValueError("at least one server URL is needed")
    return out


class ServerClient:
    """The agent's connection to the servers (see the module docstring)."""

    def __init__(self, urls: str | Sequence[str], host: str, user: str, password: str, project: str = "service",
                 *, underlay_ip: str | None = None, gateway: bool = False, external_interface: str | None = None,
                 timeout: float = 5.0, read_timeout: float = 15.0) -> None:
        self.servers = [_Server(u, timeout) for u in split_urls(urls)]
        self.host = host
        self.user, self.password, self.project = user, password, project
        self.underlay_ip, self.gateway, self.external_interface = underlay_ip, gateway, external_interface
        self.timeout = timeout
        self.read_timeout = read_timeout
        self.epoch: str | None = None  # the store epoch of the last snapshot: what a `since` belongs to
        self._current = 0
        self._lock = threading.Lock()
        self._response: httpx.Response | None = None

    # --- plumbing -------------------------------------------------------------------------------
    @property
    def current_url(self) -> str:
        return self.servers[self._current].url

    def _order(self) -> list[int]:
        n = len(self.servers)
        start = self._current
        return [(start + i) % n for i in range(n)]

    def _login(self, srv: _Server) -> str:
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": self.user, "domain": {"id": "default"}, "password": self.password}}},
            "scope": {"project": {"name": self.project, "domain": {"id": "default"}}}}}
        r = srv.http.post("/identity/v3/auth/tokens", json=body)
        if r.status_code != 201:
            raise ServerRejected(r.status_code, r.text)
        tok = r.json()["token"]
        lifetime = _ts(tok["expires_at"]) - _ts(tok["issued_at"])
        srv.token = r.headers["X-Subject-Token"]
        srv.renew_at = time.time() + 0.8 * max(lifetime, 1.0)
        return srv.token

    def _token(self, srv: _Server, renew: bool = False) -> str:
        with self._lock:
            if renew or srv.token is None or time.time() >= srv.renew_at:
                return self._login(srv)
            return srv.token

    def _call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """One request to the first server that answers (current first); re-login on 401."""
        last: Exception | None = None
        for i in self._order():
            srv = self.servers[i]
            try:
                for renew in (False, True):
                    r = srv.http.request(method, f"{PATH}/{self.host}/{path}", json=body,
                                         headers={"X-Auth-Token": self._token(srv, renew)})
                    if r.status_code != 401:
                        break
                if r.status_code >= 500:  # this server cannot serve now (e.g. its store): next
                    raise ServerRejected(r.status_code, r.text)
                self._current = i
                return r
            except (httpx.TransportError, ServerRejected) as e:
                last = e
                log.warning("server %s: %s", srv.url, e)
        raise ServerUnavailable(f"no server answered: {last}")

    # --- registration and liveness --------------------------------------------------------------
    def register(self, underlay_ip: str | None = None, gateway: bool | None = None,
                 external_interface: str | None = None) -> dict[str, Any]:
        """Register the host (again); remembers the arguments for later re-registrations."""
        if underlay_ip is not None:
            self.underlay_ip = underlay_ip
        if gateway is not None:
            self.gateway = gateway
        if external_interface is not None:
            self.external_interface = external_interface
        if self.underlay_ip is None:
            raise ValueError("register needs the host's underlay_ip")
        r = self._call("POST", "register", {"underlay_ip": self.underlay_ip, "gateway": self.gateway,
                                            "external_interface": self.external_interface,
                                            "agent_type": "vxnet agent"})
        if r.status_code != 200:
            raise ServerRejected(r.status_code, r.text)
        reply: dict[str, Any] = r.json()
        return reply

    def heartbeat(self, report: Mapping[str, Any] | None = None) -> bool:
        """Refresh the host's lease, with the agent's status report (`vxnet status`); False if
        the server does not know the host (register)."""
        r = self._call("POST", "heartbeat", None if report is None else {"status": dict(report)})
        if r.status_code == 404:
            return False
        if r.status_code != 200:
            raise ServerRejected(r.status_code, r.text)
        return True

    # --- status ---------------------------------------------------------------------------------
    def report_status(self, active: Iterable[str], down: Iterable[str]) -> list[str]:
        """Set ports ACTIVE / DOWN (ports bound elsewhere are ignored); the ids changed."""
        r = self._call("POST", "ports-status", {"ACTIVE": list(active), "DOWN": list(down)})
        if r.status_code != 200:
            raise ServerRejected(r.status_code, r.text)
        return list(r.json().get("updated", []))

    def report_floatingips_status(self, active: Iterable[str], down: Iterable[str]) -> list[str]:
        """Set floating IPs this gateway host serves ACTIVE / DOWN (others are ignored); the ids changed."""
        r = self._call("POST", "floatingips-status", {"ACTIVE": list(active), "DOWN": list(down)})
        if r.status_code != 200:
            raise ServerRejected(r.status_code, r.text)
        return list(r.json().get("updated", []))

    def report_doctor(self, request_id: str, result: Mapping[str, Any]) -> None:
        """Answer a doctor request (`vxnet doctor`)."""
        r = self._call("POST", f"doctor/{request_id}", dict(result))
        if r.status_code != 200:
            raise ServerRejected(r.status_code, r.text)

    # --- the view stream ------------------------------------------------------------------------
    def stream(self, since: int | None = None) -> Iterator[dict[str, Any]]:
        """Messages of one view-stream connection (to the first server that accepts it); returns
        or raises ServerUnavailable / httpx errors when the connection breaks."""
        params = {} if since is None else {"since": str(since)}
        if since is not None and self.epoch is not None:
            params["epoch"] = self.epoch  # the store `since` belongs to
        timeout = httpx.Timeout(self.timeout, read=self.read_timeout)
        last: Exception | None = None
        for i in self._order():
            srv = self.servers[i]
            try:
                for renew in (False, True):
                    req = srv.http.build_request("GET", f"{PATH}/{self.host}/view", params=params, timeout=timeout,
                                                 headers={"X-Auth-Token": self._token(srv, renew)})
                    resp = srv.http.send(req, stream=True)
                    if resp.status_code != 401:
                        break
                    resp.close()
                if resp.status_code >= 500:
                    body = resp.read().decode(errors="replace")
                    resp.close()
                    raise ServerRejected(resp.status_code, body)
            except (httpx.TransportError, ServerRejected) as e:
                last = e
                log.warning("view stream from %s: %s", srv.url, e)
                continue
            if resp.status_code != 200:
                body = resp.read().decode(errors="replace")
                resp.close()
                raise ServerRejected(resp.status_code, body)
            self._current = i
            self._response = resp
            try:
                for line in _lines(resp):
                    if line and not line.isspace():
                        msg = decode_message(line, typed=True)
                        del line    # a snapshot's text: not kept alive beside its objects
                        if msg.get("type") == "snapshot" and isinstance(msg.get("epoch"), str):
                            self.epoch = msg["epoch"]  # a `since` from now on is a revision of this store
                        yield msg
                return
            finally:
                self._response = None
                resp.close()
        raise ServerUnavailable(f"no server accepted the view stream: {last}")

    def close(self) -> None:
        """Release connections; a `stream` blocked reading in another thread ends (safe
        from another thread)."""
        resp = self._response
        if resp is not None:
            _shutdown(resp)
            resp.close()
        for s in self.servers:
            s.close()


def _take(buf: list[str]) -> str:
    out = "".join(buf)
    buf.clear()
    return out


def _lines(resp: httpx.Response) -> Iterator[str]:
    """The NDJSON lines of a streamed response (UTF-8), split at "\\n" only: JSON text has no
    raw newline, while httpx's `iter_lines` also splits at the Unicode line breaks a JSON string
    may hold raw (e.g. U+2028). Nothing of a line stays referenced here once it is yielded, so
    the caller's `del` frees a snapshot's text; httpx's own line list kept the line being
    handled alive until the next one (a restarted agent held a 10,000-port snapshot's ~5.5 MB of
    text through the parse of its view), and joined it twice (three copies for a moment)."""
    text = codecs.getincrementaldecoder("utf-8")()
    buf: list[str] = []
    for chunk in resp.iter_bytes():
        part = text.decode(chunk)
        start = 0
        while (end := part.find("\n", start)) >= 0:
            buf.append(part[start:end])
            start = end + 1
            yield _take(buf)
        if start < len(part):
            buf.append(part[start:] if start else part)
        del part
    buf.append(text.decode(b"", final=True))
    if any(buf):
        yield _take(buf)


def _shutdown(resp: httpx.Response) -> None:
    """Wake a thread blocked reading `resp`: closing a socket does not interrupt a blocked
    recv() in another thread, shutting it down does."""
    stream = resp.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _ts(text: str) -> float:
    """Keystone's ISO timestamp ("2026-01-01T00:00:00.000000Z") as epoch seconds."""
    return dt.datetime.fromisoformat(text).timestamp()


def make_control_plane(servers: list[str], host: str, underlay_ip: str, user: str, password: str,
                       project: str, gateway: bool = False, external_interface: str | None = None) -> ServerClient:
    """The client as the agent core's control plane."""
    return ServerClient(servers, host, user, password, project, underlay_ip=underlay_ip, gateway=gateway,
                        external_interface=external_interface)


