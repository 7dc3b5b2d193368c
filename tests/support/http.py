"""httpx clients for the tests' plain-HTTP servers, without httpx's per-client TLS setup.

httpx builds an SSL context for every `Client` (and every `httpx.post`/`get`), loading certifi's
CA bundle even when the client only ever speaks `http://`: 50-140 ms each on the CI VM, and the
suite makes thousands. The tests' servers are plain HTTP, so their clients share `PLAIN_HTTP`,
which no handshake ever uses. It is a client context with no CA loaded (as agent/client.py's):
an `https://` URL given to one of these clients by mistake fails verification, it is never
trusted. TLS tests build their own verified contexts and do not use this module.

Each call returns a new client, as before: a test that closes its client closes only its own.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

PLAIN_HTTP = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def client(**kwargs: Any) -> httpx.Client:
    """`httpx.Client(**kwargs)` for plain-HTTP servers (the shared unused TLS context)."""
    return httpx.Client(verify=PLAIN_HTTP, **kwargs)


def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """`httpx.request(method, url, **kwargs)` for a plain-HTTP server."""
    return httpx.request(method, url, verify=PLAIN_HTTP, **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    return request("GET", url, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    return request("POST", url, **kwargs)


def put(url: str, **kwargs: Any) -> httpx.Response:
    return request("PUT", url, **kwargs)


def delete(url: str, **kwargs: Any) -> httpx.Response:
    return request("DELETE", url, **kwargs)


def stream(method: str, url: str, **kwargs: Any) -> Any:
    """`httpx.stream(method, url, **kwargs)` for a plain-HTTP server (a context manager)."""
    return httpx.stream(method, url, verify=PLAIN_HTTP, **kwargs)
