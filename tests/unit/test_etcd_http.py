"""The etcd gateway transport (store/etcd_http.py) against a scripted HTTP server on loopback:
answers by length and in chunks on one kept-alive connection, `Connection: close`, and the
outcome classes the store relies on: a refused connection is `NeverSent`; an answer cut short
after the request went out is `Unanswered`; a connection the member closed while idle is
replaced before it carries a request (never turned into an unknown outcome)."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from vxnet.store.etcd_http import NeverSent, Pool, Unanswered


class Scripted:
    """Accepts connections; for each request it reads (headers + Content-Length body) it sends
    the next scripted answer (bytes), then closes the connection if the script says None."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = answers
        self.requests: list[tuple[int, bytes]] = []   # (connection number, body)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.conns = 0
        self.closing = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns += 1
            threading.Thread(target=self._conn, args=(c, self.conns), daemon=True).start()

    def _conn(self, c: socket.socket, n: int) -> None:
        f = c.makefile("rb")
        with c:
            while self.answers:
                line = f.readline()
                if not line:
                    return
                length = 0
                while (h := f.readline()) not in (b"\r\n", b""):
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":")[1])
                self.requests.append((n, f.read(length)))
                answer = self.answers.pop(0)
                if answer is None:
                    return
                c.sendall(answer)
                if self.answers and self.answers[0] is None and len(self.answers) > 1:
                    self.answers.pop(0)   # close the idle connection without being asked
                    self.closing.set()
                    return


def _len(body: dict, extra: str = "") -> bytes:
    raw = json.dumps(body).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        extra.encode(), len(raw), raw)


def _chunked(body: dict) -> bytes:
    raw = json.dumps(body).encode()
    a, b = raw[:5], raw[5:]
    return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
            b"%x\r\n%s\r\n%x;ext=1\r\n%s\r\n0\r\n\r\n" % (len(a), a, len(b), b))


@pytest.fixture
def pool() -> Iterator[Pool]:
    p = Pool(2.0, None)
    yield p
    p.close()


def test_answers_by_length_and_in_chunks_on_one_connection(pool: Pool) -> None:
    srv = Scripted([_len({"a": 1}), _chunked({"header": {"revision": "7"}, "kvs": []}),
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 24\r\n\r\n{\"error\":\"x\",\"code\":3}  "])
    ep = f"http://127.0.0.1:{srv.port}"
    assert pool.post(ep, "/v3/kv/range", {"key": "eA=="}) == (200, {"a": 1})
    assert pool.post(ep, "/v3/kv/range", {}) == (200, {"header": {"revision": "7"}, "kvs": []})
    assert pool.post(ep, "/v3/kv/txn", {}) == (400, {"error": "x", "code": 3})
    assert srv.conns == 1 and [json.loads(b) for _, b in srv.requests] == [{"key": "eA=="}, {}, {}]


def test_connection_close_opens_a_new_connection_next_time(pool: Pool) -> None:
    srv = Scripted([_len({"n": 1}, "Connection: close\r\n"), _len({"n": 2})])
    ep = f"http://127.0.0.1:{srv.port}"
    assert pool.post(ep, "/p", {})[1] == {"n": 1}
    assert pool.post(ep, "/p", {})[1] == {"n": 2}
    assert [n for n, _ in srv.requests] == [1, 2]


def test_a_refused_connection_was_never_sent(pool: Pool) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()   # nothing listens there
    with pytest.raises(NeverSent):
        pool.post(f"http://127.0.0.1:{port}", "/v3/kv/txn", {})


CUT_SHORT = [None, b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"a\":",
             b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"a\":", b"HTTP/1.1 200 OK\r\nContent-Le"]


@pytest.mark.parametrize("answer", CUT_SHORT)
def test_an_answer_cut_short_after_sending_is_unanswered(pool: Pool, answer: bytes | None) -> None:
    srv = Scripted([answer] if answer is not None else [None])
    with pytest.raises(Unanswered):
        pool.post(f"http://127.0.0.1:{srv.port}", "/v3/kv/txn", {"x": 1})
    assert len(srv.requests) == 1   # it did reach the member


def test_an_idle_connection_the_member_closed_is_replaced_before_use(pool: Pool) -> None:
    srv = Scripted([_len({"n": 1}), None, _len({"n": 2})])   # answer, then close the idle connection
    ep = f"http://127.0.0.1:{srv.port}"
    assert pool.post(ep, "/p", {})[1] == {"n": 1}
    srv.closing.wait(5)
    time.sleep(0.05)   # the FIN reaches us
    assert pool.post(ep, "/p", {})[1] == {"n": 2}   # on a new connection, not an unknown outcome
    assert [n for n, _ in srv.requests] == [1, 2]


def test_a_stream_yields_lines_across_chunks_and_shutdown_wakes_its_reader(pool: Pool) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    msgs = [b'{"result":{"created":true}}', b'{"result":{"events":[' + b'1,' * 3000 + b'1]}}', b'{"n":3}']
    wire = b"\n".join(msgs) + b"\n"
    cuts = [0, 10, 11, 40, 2000, len(wire) - 3, len(wire)]   # a line split over chunks, two lines in one
    body = b"".join(b"%x\r\n%s\r\n" % (b - a, wire[a:b]) for a, b in itertools.pairwise(cuts))
    srv = Scripted([head + body, b"never"])   # then the stream stays open: no last chunk
    s = pool.stream(f"http://127.0.0.1:{srv.port}", "/v3/watch", {"create_request": {}}, {"Grpc-Metadata-hasleader": "true"})
    assert s.status == 200
    got: list[bytes] = []
    ended = threading.Event()
    error: list[Exception] = []

    def read() -> None:
        try:
            for line in s.lines():
                got.append(line)  # noqa: PERF402 - the test watches them arrive one by one
        except (OSError, ValueError) as e:
            error.append(e)
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == msgs and not ended.is_set()   # every line, and the reader waits for more
    s.shutdown()
    assert ended.wait(5)                        # woken: the stream ends (cut short)
    s.close()
    assert srv.requests and json.loads(srv.requests[0][1]) == {"create_request": {}}


def test_a_stream_refused_or_answered_by_length(pool: Pool) -> None:
    srv = Scripted([b'HTTP/1.1 503 x\r\nContent-Length: 29\r\n\r\n{"error":{"message":"nope"}}\n'])
    s = pool.stream(f"http://127.0.0.1:{srv.port}", "/v3/watch", {}, {})
    assert s.status == 503 and list(s.lines()) == [b'{"error":{"message":"nope"}}']
    s.close()
    s0 = socket.socket()
    s0.bind(("127.0.0.1", 0))
    port = s0.getsockname()[1]
    s0.close()
    with pytest.raises(OSError):
        pool.stream(f"http://127.0.0.1:{port}", "/v3/watch", {}, {})
