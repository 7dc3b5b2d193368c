"""The agent's own client (`ServerClient.stream`) reading a view stream whose body is given as
byte pieces, through httpx's mock transport (httpx's seam for I/O): no server, no socket. Used by
the client's unit tests and by tests/root/rss_probe.py (the snapshot read from a pipe as a real
agent reads it from its connection)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import httpx

from vxnet.agent.client import ServerClient


def client_over(pieces: Iterable[bytes], host: str = "h1") -> ServerClient:
    """A client whose login succeeds and whose view stream's body is `pieces`, as they come."""
    class Body(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            return iter(pieces)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/auth/tokens"):
            return httpx.Response(201, headers={"X-Subject-Token": "t"}, json={"token": {
                "issued_at": "2026-01-01T00:00:00.000000Z", "expires_at": "2026-01-02T00:00:00.000000Z"}})
        return httpx.Response(200, stream=Body())

    c = ServerClient("http://192.0.2.1:9696", host, "agent", "secret", underlay_ip="198.51.100.1")
    srv = c.servers[0]
    srv.http.close()
    srv.http = httpx.Client(base_url=srv.base, transport=httpx.MockTransport(handler))
    return c
