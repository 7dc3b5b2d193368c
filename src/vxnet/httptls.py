"""The TLS setting of the project's own HTTP clients, by the server's URL.

httpx builds an SSL context for every `Client` (and every `httpx.get`/`post`) whether it is used
or not, and its default loads certifi's CA bundle: ~67 ms of CPU and 1-3 MB per client on the CI
VM, for clients that only ever speak plain HTTP to a lab or a local server. `verify_for(url)`
gives such a client one shared context that loads nothing (never used: no handshake happens on
`http://`); an `https://` URL gets httpx's default, verified against the CA bundle, as before.
"""

from __future__ import annotations

import functools
import ssl


@functools.cache
def _plain() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)   # no CA loaded: were it used, nothing would verify


def verify_for(url: str) -> ssl.SSLContext | bool:
    """httpx's `verify=` for a client of `url`: the shared unused context for `http://` and
    `unix://`, True (the CA bundle) for anything else."""
    return _plain() if url.strip().lower().startswith(("http://", "unix://")) else True
