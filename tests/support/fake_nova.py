"""A recording Nova endpoint: a real HTTP server answering `POST /v2.1/os-server-external-events`
as Nova does, keeping every request with its arrival time and headers.

Answers (Nova's API): 200 with each event echoed with `code` 200; when some `server_uuid`s are in
`unknown` 207 with `code` 404 for theirs, and 404 when all are unknown. `fail_with` (e.g. 503)
makes it refuse every request (recorded in `rejected`) until cleared.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from typing import Any


@dataclasses.dataclass
class Received:
    at: float
    token: str
    headers: dict[str, str]
    events: list[dict[str, Any]]
    code: int


class FakeNova:
    def __init__(self) -> None:
        self.accepted: list[Received] = []
        self.rejected: list[Received] = []
        self.unknown: set[str] = set()
        self.fail_with: int | None = None
        self.cond = threading.Condition()
        nova = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                at = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v2.1/os-server-external-events":
                    return self._answer(404, {"itemNotFound": {"code": 404, "message": "no such path"}})
                events = json.loads(body)["events"]
                rec = Received(at, self.headers.get("X-Auth-Token", ""), dict(self.headers.items()), events, 0)
                with nova.cond:
                    if nova.fail_with is not None:
                        rec.code = nova.fail_with
                        nova.rejected.append(rec)
                        nova.cond.notify_all()
                        return self._answer(nova.fail_with, {"computeFault": {"code": nova.fail_with}})
                    answers = [dict(e, code=404 if e["server_uuid"] in nova.unknown else 200,
                                    status=e.get("status", "completed")) for e in events]
                    codes = {a["code"] for a in answers}
                    rec.code = 404 if codes == {404} else 207 if 404 in codes else 200
                    nova.accepted.append(rec)
                    nova.cond.notify_all()
                if rec.code == 404:
                    return self._answer(404, {"itemNotFound": {"code": 404, "message": "No instances found"}})
                self._answer(rec.code, {"events": answers})

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v2.1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def events(self) -> list[dict[str, Any]]:
        """Every event Nova accepted (200/207/404 answers), in arrival order."""
        with self.cond:
            return [e for r in self.accepted for e in r.events]

    def wait_for(self, pred: Any, timeout: float = 20.0) -> bool:
        """Wait until `pred(self)` holds (re-checked at each request)."""
        deadline = time.time() + timeout
        with self.cond:
            while not pred(self):
                left = deadline - time.time()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.5))
        return True

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
