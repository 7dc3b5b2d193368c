"""The agent's local control socket: `vxnet doctor --local` asks the running agent of this
host, which works while every server is down (the agent keeps its last view).

Protocol: a unix stream socket (`vxnet agent --control-socket PATH`, mode 0600: root only, as
the agent); the client sends one JSON line `{"op": "doctor", "repair": bool}` and reads one
JSON line, the agent's `doctor()` answer (as sent to servers for `vxnet doctor`). Anything
else gets `{"error": ...}`. One thread per connection; a connection is one request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("vxnet.agent.control")

MAX_REQUEST = 4096


class ControlSocket:
    """Serves `doctor(repair)` on a unix socket until `close()`."""

    def __init__(self, path: str, doctor: Callable[[bool], dict[str, Any]]) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)     # a previous agent's socket (it is gone: we hold the host)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(MAX_REQUEST)
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict) or req.get("op") != "doctor":
                        raise ValueError("expected {\"op\": \"doctor\", \"repair\": bool}")
                    answer = doctor(bool(req.get("repair")))
                except Exception as e:  # noqa: BLE001 - the caller gets the reason
                    answer = {"error": f"{type(e).__name__}: {e}"[:500], "drift": []}
                self.wfile.write((json.dumps(answer) + "\n").encode())

        old = os.umask(0o177)   # the socket is created 0600
        try:
            self.server = socketserver.ThreadingUnixStreamServer(path, Handler)
        finally:
            os.umask(old)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="vxnet-agent-control", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def ask_agent(path: str, repair: bool, timeout: float = 60.0) -> dict[str, Any] | None:
    """The running agent's doctor answer through its control socket; None when no agent
    listens there."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        return None
    with s, s.makefile("rwb") as f:
        f.write((json.dumps({"op": "doctor", "repair": repair}) + "\n").encode())
        f.flush()
        answer: dict[str, Any] = json.loads(f.readline())
        return answer
