"""The request guard: the outermost layer of the API server (plain ASGI, nothing buffered).

For every HTTP request, before any route or authentication runs:
- **Request id.** A fresh `req-<uuid4>`; every response carries it as `X-Openstack-Request-Id`,
  errors included (401, 404, 413, and a 500 the layers below failed to render, which this layer
  renders itself as a NeutronError). A client's own `X-Openstack-Request-Id` (oslo.middleware's
  inbound global request id) is kept as the *global* id when it has oslo's form
  `req-<lowercase uuid>`; anything else in that header is ignored.
- **Body size.** A body over `max_body_bytes` is refused with 413 `RequestEntityTooLarge`: at
  once when its Content-Length says so (the route never runs), or, for a streamed (chunked)
  body, as soon as the bytes received pass the limit (the route's read raises the 413). Bytes
  are counted as they arrive and never collected here; what the client still sends after the
  413 is discarded by the HTTP server, which keeps the connection (so the client reads the 413
  instead of a reset).

The request id is also set as `vxnet.services.repo.REQUEST_ID` while the request runs, so
every store revision the request writes names it (the audit trail through to the agents).

After the response, one access line on the `vxnet.access` logger at info:
`<request id> global=<id|-> user=<id|-> project=<id|-> <METHOD> <path> <status> <ms>ms remote=<addr>`.
Writes (POST/PUT/PATCH/DELETE) and denials (401/403) also go to `vxnet.audit` at info, with the
resource ids where known (the path's `*_id` parameters; for a successful create, the new
object's id from the response). Never logged: tokens, passwords, bodies, query strings.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from vxnet.api.errors import ApiError
from vxnet.services.repo import REQUEST_ID

HEADER = b"x-openstack-request-id"
_GLOBAL_ID = re.compile(r"req-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}")
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_CREATED_MAX = 256 * 1024  # read a create's response for its id only up to this size

log = logging.getLogger("vxnet.api")
access_log = logging.getLogger("vxnet.access")
audit_log = logging.getLogger("vxnet.audit")


class BodyTooLarge(ApiError):
    """The request body passed the server's limit (rendered like any ApiError: 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "RequestEntityTooLarge",
                         f"Request is too large: the body is larger than the limit of {limit} bytes")


def _error_messages(err: ApiError) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ASGI messages of a NeutronError response (the request id is added by the sender)."""
    body = json.dumps(err.body()).encode()
    start = {"type": "http.response.start", "status": err.status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    return start, {"type": "http.response.body", "body": body, "more_body": False}


def created_ids(body: bytes) -> list[str]:
    """The ids a create's response names: `{"x": {"id"}}` or `{"xs": [{"id"}, ...]}`."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    if not isinstance(doc, dict) or len(doc) != 1:
        return []
    (value,) = doc.values()
    items = value if isinstance(value, list) else [value]
    return [str(i["id"]) for i in items if isinstance(i, dict) and isinstance(i.get("id"), str)]


class RequestGuard:
    """See the module docstring. `app.add_middleware(RequestGuard, max_body_bytes=N)` last, so
    that it is the outermost of the application's own layers."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = "req-" + str(uuid.uuid4())
        rid_b = rid.encode()
        global_id: str | None = None
        length: int | None = None
        for name, value in scope["headers"]:
            if name == HEADER:
                text = value.decode("latin-1")
                if _GLOBAL_ID.fullmatch(text):
                    global_id = text
            elif name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["global_request_id"] = global_id
        method = scope["method"]
        limit = self.max_body_bytes
        status = 500
        started = False
        capture = method == "POST"  # a create's response: read for the new id (audit log)
        created = bytearray()
        received = 0

        async def send_with_id(message: Any) -> None:
            nonlocal status, started, capture
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                capture = capture and status == 201
                message = {**message, "headers": [*message.get("headers", ()), (HEADER, rid_b)]}
            elif capture and message["type"] == "http.response.body":
                created.extend(message.get("body", b""))
                if len(created) > _CREATED_MAX:
                    capture = False
            await send(message)

        async def receive_counted() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        rid_token = REQUEST_ID.set(rid)   # store writes of this request carry it (audit trail)
        try:
            if length is not None and length > limit:
                raise BodyTooLarge(limit)  # refused before anything reads it
            await self.app(scope, receive_counted, send_with_id)
        except Exception as e:
            if started:
                log.exception("%s: error on %s %s after the response started", rid, method, scope.get("path"))
                raise  # the response is half-written: only dropping the connection is left
            if isinstance(e, ApiError):
                err = e
            else:
                log.exception("%s: unexpected error on %s %s", rid, method, scope.get("path"))
                err = ApiError(500, "InternalError", f"Request failed: internal server error ({type(e).__name__})")
            for message in _error_messages(err):
                await send_with_id(message)
        finally:
            REQUEST_ID.reset(rid_token)
            if access_log.isEnabledFor(logging.INFO) or audit_log.isEnabledFor(logging.INFO):
                self._log(scope, state, rid, global_id, method, status, time.perf_counter() - start,
                          bytes(created) if capture else b"")

    @staticmethod
    def _log(scope: Any, state: dict[str, Any], rid: str, global_id: str | None, method: str, status: int,
             seconds: float, created: bytes) -> None:
        ctx = state.get("ctx")
        user = getattr(ctx, "user_id", None) or "-"
        project = getattr(ctx, "project_id", None) or "-"
        client = scope.get("client")
        remote = f"{client[0]}:{client[1]}" if client else "-"
        path = scope.get("path", "")
        line = (f"{rid} global={global_id or '-'} user={user} project={project} {method} {path} {status} "
                f"{seconds * 1000:.1f}ms remote={remote}")
        access_log.info("%s", line)
        if method in WRITES or status in (401, 403):
            ids = [f"{k}={v}" for k, v in (scope.get("path_params") or {}).items() if k.endswith("id")]
            if created:
                ids += [f"created={i}" for i in created_ids(created)]
            outcome = "denied" if status in (401, 403) else "ok" if status < 400 else "failed"
            audit_log.info("%s %s %s", line, outcome, " ".join(ids) or "-")
