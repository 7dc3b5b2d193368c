"""Unary calls to etcd's JSON gateway: HTTP/1.1 over a kept-alive socket, written here.

Why not httpx (which the watch streams keep using): a unary call costs about 0.5 ms of CPU in
httpx and 0.18 ms in the standard library's `http.client`, and every write of the server is one
such call: on a CPU-bound server that is most of what an etcd write costs it. `http.client`
itself parses each answer's headers with the `email` package (about a third of its CPU per
call), so the request is written and the answer read here: one `sendall`, a status line,
headers split by hand (only Content-Length, Transfer-Encoding and Connection are used), and a
body by length or in chunks. Bodies are encoded and answers parsed with orjson (a port
create's txn is ~3.4 KB of JSON).

The contract `EtcdStore._call` needs, and keeps, from its transport:
- `NeverSent`: the request certainly did not reach the member (connecting failed): the caller
  may send it to the next member, even a write.
- `Unanswered`: it may have reached the member (sent, then no complete answer): a write may
  have been applied; only the caller knows whether to retry.
- An idle kept-alive connection the member closed is detected before it is used (the socket
  reads as ready: EOF), closed and replaced by a fresh one, so a write is never sent on a
  connection that was already dead (which would make its outcome look unknown for nothing).
Connections are per thread (the server's handlers run on a pool of worker threads), one per
member, kept alive.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import orjson

MAX_LINE = 65536  # longest status or header line accepted


class NeverSent(Exception):
    """The request never reached the member."""


class Unanswered(Exception):
    """The request may have reached the member; no complete answer came back."""


class _Conn:
    """One kept-alive HTTP/1.1 connection to a member (`host:port`), TLS if `context`."""

    def __init__(self, hostport: str, timeout: float, context: ssl.SSLContext | None) -> None:
        host, _, port = hostport.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.hostport = hostport
        self.timeout = timeout
        self.context = context
        self.sock: socket.socket | None = None
        self.rfile: Any = None

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.rfile = sock.makefile("rb")

    def close(self) -> None:
        sock, rfile, self.sock, self.rfile = self.sock, self.rfile, None, None
        for f in (rfile, sock):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    def exchange(self, path: str, body: bytes) -> tuple[int, bytes, bool]:
        """Send one POST and read its answer: (status, body, the member will close). Raises
        OSError or ValueError when no complete answer came."""
        assert self.sock is not None
        self.sock.sendall(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.hostport.encode(), len(body), body))
        rfile = self.rfile
        status, length, chunked, close = _read_head(rfile)
        if status < 200 or status in (204, 304):
            raw = b""  # no body by definition
        elif chunked:
            pieces = []
            while True:
                size = int(rfile.readline(MAX_LINE + 1).split(b";", 1)[0], 16)
                if size == 0:
                    while rfile.readline(MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                pieces.append(_read_exactly(rfile, size))
                if rfile.readline(MAX_LINE + 1) not in (b"\r\n", b"\n"):
                    raise ValueError("bad chunk end")
            raw = b"".join(pieces)
        elif length >= 0:
            raw = _read_exactly(rfile, length)
        else:  # no length: the body runs to the end of the connection
            raw = rfile.read()
            close = True
        return status, raw, close


def _read_head(rfile: Any) -> tuple[int, int, bool, bool]:
    """An answer's status line and headers: (status, Content-Length or -1, chunked, the member
    will close). Only those headers are used. Raises ValueError when they are cut short or bad."""
    line = rfile.readline(MAX_LINE + 1)
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ValueError(f"bad status line {line[:100]!r}")
    status = int(parts[1])
    length = -1
    chunked = False
    close = parts[0] == b"HTTP/1.0"
    while True:
        h = rfile.readline(MAX_LINE + 1)
        if h in (b"\r\n", b"\n"):
            return status, length, chunked, close
        if not h or len(h) > MAX_LINE:
            raise ValueError("answer headers cut short or too long")
        name, _, value = h.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()


def _read_exactly(rfile: Any, n: int) -> bytes:
    data = rfile.read(n)
    if len(data) != n:
        raise ValueError(f"answer cut short ({len(data)} of {n} bytes)")
    return data  # type: ignore[no-any-return]


class Stream:
    """A streaming POST (etcd's watch) on a connection of its own: `lines()` yields the answer's
    lines as they come (chunked, or by length, or to the end of the connection); `shutdown()`
    from another thread wakes a reader blocked on it (the stream then ends). Raises OSError or
    ValueError when it cannot be opened or breaks."""

    def __init__(self, endpoint: str, path: str, body: dict[str, Any], headers: dict[str, str], timeout: float,
                 context: ssl.SSLContext | None) -> None:
        scheme, _, hostport = endpoint.partition("://")
        ctx = (context or ssl.create_default_context()) if scheme == "https" else None
        self._conn = _Conn(hostport, timeout, ctx)
        self._conn.connect()
        try:
            raw = orjson.dumps(body)
            extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in headers.items())
            assert self._conn.sock is not None
            self._conn.sock.sendall(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n%s"
                                    b"Content-Length: %d\r\n\r\n%s" % (path.encode(), hostport.encode(), extra,
                                                                       len(raw), raw))
            self._conn.sock.settimeout(None)   # a watch is quiet as long as nothing changes
            self.status, self._length, self._chunked, _ = _read_head(self._conn.rfile)
        except BaseException:
            self._conn.close()
            raise

    def lines(self) -> Iterator[bytes]:
        """The answer's lines, without their line ends, until it ends."""
        rfile = self._conn.rfile
        if not self._chunked:
            data = _read_exactly(rfile, self._length) if self._length >= 0 else rfile.read()
            yield from data.splitlines()
            return
        pending: list[bytes] = []   # the start of a line that goes on in a later chunk
        while True:
            size_line = rfile.readline(MAX_LINE + 1)
            if not size_line:
                raise ValueError("stream cut short")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                if pending:
                    yield b"".join(pending)
                return
            data = _read_exactly(rfile, size)
            if rfile.readline(MAX_LINE + 1) not in (b"\r\n", b"\n"):
                raise ValueError("bad chunk end")
            if b"\n" not in data:
                pending.append(data)
                continue
            parts = data.split(b"\n")
            if pending:
                pending.append(parts[0])
                parts[0] = b"".join(pending)
            last = parts.pop()
            pending = [last] if last else []
            yield from parts

    def shutdown(self) -> None:
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._conn.close()


class Pool:
    """Per-thread kept-alive connections to the members (see the module docstring)."""

    def __init__(self, timeout: float, context: ssl.SSLContext | None) -> None:
        self._timeout = timeout
        self._context = context
        self._local = threading.local()
        # every open connection, to close them all; weak: a finished thread's go with it
        self._all: weakref.WeakSet[_Conn] = weakref.WeakSet()
        self._lock = threading.Lock()

    def _conn(self, endpoint: str) -> _Conn:
        conns: dict[str, _Conn] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(endpoint)
        if conn is not None and conn.sock is not None and _dead(conn.sock):
            conn.close()
        if conn is None:
            scheme, _, host = endpoint.partition("://")
            ctx = (self._context or ssl.create_default_context()) if scheme == "https" else None
            conn = _Conn(host, self._timeout, ctx)
            conns[endpoint] = conn
            with self._lock:
                self._all.add(conn)
        if conn.sock is None:
            try:
                conn.connect()
            except (OSError, ValueError) as e:
                conn.close()
                raise NeverSent(f"{type(e).__name__}: {e}") from e
        return conn

    def post(self, endpoint: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """(HTTP status, parsed JSON answer). Raises NeverSent or Unanswered."""
        conn = self._conn(endpoint)
        try:
            status, raw, close = conn.exchange(path, orjson.dumps(body))
        except (OSError, ValueError) as e:
            conn.close()
            raise Unanswered(f"{type(e).__name__}: {e}") from e
        if close:
            conn.close()
        return status, orjson.loads(raw)

    def stream(self, endpoint: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> Stream:
        """A streaming POST on a connection of its own (see `Stream`)."""
        return Stream(endpoint, path, body, headers, self._timeout, self._context)

    def close(self) -> None:
        with self._lock:
            conns = list(self._all)
        for c in conns:
            c.close()


def _dead(sock: Any) -> bool:
    """An idle kept-alive connection with something to read: the member closed it (EOF) or sent
    what we never asked for. Either way it must not carry a request."""
    try:
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)
