"""The metadata proxy: one HTTP server per agent, on the listening socket of the host's metadata
namespace, forwarding each VM request to Nova's metadata API (docs/metadata.md).

Contract:
- The port a request comes from is looked up by the connection's peer address, which is the
  port's proxy address written by the bridge from the tap the frames entered through
  (`compute.metadata`); the table is swapped whole by `set_table` (one reference).
- Unknown peer, or a port without device_id: 404. No `[metadata]` configured: 503. Nova
  refuses or fails to connect: 502; Nova does not answer within `timeout`: 503. Never a hang:
  the VM's own request must arrive within `CLIENT_TIMEOUT`, at most `MAX_INFLIGHT` requests are
  proxied at once (more get 503 at once); at most `MAX_CONNECTIONS` connections are open, and
  `MAX_PER_PORT` from one port (more are closed at once, counted as status `refused`).
- Upstream: `compute.metadata.upstream_headers` (device_id, project, fixed IP, HMAC signature;
  the VM's impersonating headers dropped). Nova's answer is passed through for 2xx and
  400/404/409 (status, Content-Type, body); 401/403 become 403 (the secrets differ), other
  errors 500, as Neutron's metadata agent does.
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import Counter

from vxnet.compute.metadata import MetaPort, upstream_headers
from vxnet.config import MetadataSettings

log = logging.getLogger("vxnet.agent.metadata")

REQUESTS = Counter("vxnet_agent_metadata_requests_total", "Metadata requests answered by the host's proxy, by status",
                   ["status"])
CLIENT_TIMEOUT = 10.0
MAX_INFLIGHT = 64            # requests being proxied to Nova at once
MAX_CONNECTIONS = 256        # open connections from VMs (each holds a thread)
MAX_PER_PORT = 16            # ... from one VM port
MAX_BODY = 64 * 1024
PASS_THROUGH = {400, 404, 409}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket, proxy: MetadataProxy) -> None:
        super().__init__(sock.getsockname(), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.proxy = proxy
        self._conns: dict[str, int] = {}       # peer (proxy address) -> open connections
        self._lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, but at most `MAX_CONNECTIONS` in all and
        `MAX_PER_PORT` per VM port: more are closed at once (a VM holding connections open
        cannot exhaust the agent's threads, nor starve the other VMs of the host)."""
        peer = client_address[0]
        with self._lock:
            if sum(self._conns.values()) >= MAX_CONNECTIONS or self._conns.get(peer, 0) >= MAX_PER_PORT:
                refused = True
            else:
                refused = False
                self._conns[peer] = self._conns.get(peer, 0) + 1
        if refused:
            REQUESTS.labels("refused").inc()
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                left = self._conns.get(client_address[0], 1) - 1
                if left:
                    self._conns[client_address[0]] = left
                else:
                    self._conns.pop(client_address[0], None)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = CLIENT_TIMEOUT
    server_version = "vxnet-metadata"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metadata %s " + format, self.client_address[0], *args)

    def do_GET(self) -> None:
        self.server.proxy.handle(self)

    do_HEAD = do_GET
    do_POST = do_GET


class MetadataProxy:
    """The HTTP server of one agent (see module contract)."""

    def __init__(self, settings: MetadataSettings | None) -> None:
        self.settings = settings
        self._table: Mapping[str, MetaPort] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(MAX_INFLIGHT)
        self.counts: dict[int, int] = {}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def set_table(self, table: Mapping[str, MetaPort]) -> None:
        """Serve these ports (proxy address -> port) from now on."""
        self._table = dict(table)

    def start(self, sock: socket.socket) -> None:
        """Serve on `sock` (a listening socket) in a daemon thread."""
        self.stop()
        self._server = _Server(sock, self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="vxnet-agent-metadata", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None

    # -- one request ------------------------------------------------------------------------
    def handle(self, h: _Handler) -> None:
        if not self._slots.acquire(blocking=False):
            return self._reply(h, 503, b"Too many metadata requests\n")
        try:
            self._handle(h)
        finally:
            self._slots.release()

    def _handle(self, h: _Handler) -> None:
        port = self._table.get(h.client_address[0])
        if port is None or not port.device_id:
            return self._reply(h, 404, b"Not Found\n")
        if not h.path.startswith("/") or any(ord(c) < 33 or ord(c) > 126 for c in h.path):
            return self._reply(h, 400, b"Bad Request\n")
        try:
            length = int(h.headers.get("Content-Length") or 0)
        except ValueError:
            return self._reply(h, 400, b"Bad Content-Length\n")
        if length < 0 or length > MAX_BODY:
            return self._reply(h, 413, b"Request body too large\n")
        body = h.rfile.read(length) if length else None
        s = self.settings
        if s is None:
            return self._reply(h, 503, b"Metadata service not configured\n")
        url = urllib.parse.urlsplit(s.nova_metadata_url)
        cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        conn = cls(url.hostname or "", url.port, timeout=s.timeout)
        try:
            conn.putrequest(h.command, url.path.rstrip("/") + h.path, skip_accept_encoding=True)
            for k, v in upstream_headers(port, s.shared_secret, h.headers.items()):
                conn.putheader(k, v)
            conn.putheader("Content-Length", str(len(body or b"")))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
            status, ctype = resp.status, resp.getheader("Content-Type") or "text/plain"
        except TimeoutError:
            log.warning("metadata: Nova at %s did not answer within %ss", s.nova_metadata_url, s.timeout)
            return self._reply(h, 503, b"Metadata service timed out\n")
        except (OSError, ValueError, http.client.HTTPException) as e:
            log.warning("metadata: Nova at %s: %s", s.nova_metadata_url, e)
            return self._reply(h, 502, b"Metadata service unreachable\n")
        finally:
            conn.close()
        if 200 <= status < 300 or status in PASS_THROUGH:
            return self._reply(h, status, data, ctype)
        if status in (401, 403):
            log.warning("metadata: Nova refused instance %s (%s): do the shared secrets match?", port.device_id, status)
            return self._reply(h, 403, b"Access denied\n")
        log.warning("metadata: Nova answered %s for instance %s", status, port.device_id)
        return self._reply(h, 500, b"Remote metadata server error\n")

    def _reply(self, h: _Handler, status: int, body: bytes, ctype: str = "text/plain") -> None:
        self.counts[status] = self.counts.get(status, 0) + 1
        REQUESTS.labels(str(status)).inc()
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(body)))
            h.send_header("Connection", "close")
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(body)
        except OSError as e:
            log.debug("metadata reply to %s: %s", h.client_address[0], e)
        h.close_connection = True
