"""The etcd store's gRPC transport (store/etcd_grpc.py) against fake members: in-process gRPC
servers speaking etcd's KV and Watch services, each counting the transactions it received.

What is checked is the contract `EtcdStore._call` relies on: a call that never reached a member
(nothing listening) goes to the next one, even a write; a write that reached a member and got no
answer (deadline) or an error status from etcd that leaves its outcome open (no leader, the
member's own "context deadline exceeded") raises StoreUnavailable and is never sent again,
to that member or another; a read is retried on the next member; a watch stream's reader blocked
on a quiet stream is woken by `shutdown`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from aetcd import rpc
from aetcd.rpc import rpc_pb2_grpc

from tests.support import ports
from vxnet.store.contract import Put, StoreUnavailable
from vxnet.store.etcd_grpc import Channels, NeverSent
from vxnet.store.etcd_store import EtcdStore

TIMEOUT = 0.5   # each call's deadline in these tests


class _Member(rpc_pb2_grpc.KVServicer, rpc_pb2_grpc.WatchServicer):
    """One fake etcd member: `mode` says how it handles a Txn ("ok", "hang", "no leader")."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.txns = 0
        self.ranges = 0
        self.rev = 1
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        rpc_pb2_grpc.add_KVServicer_to_server(self, self.server)
        rpc_pb2_grpc.add_WatchServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def Range(self, request: Any, context: Any) -> Any:
        self.ranges += 1
        if self.mode == "hang" and not request.count_only:
            time.sleep(3 * TIMEOUT)
        return rpc.RangeResponse(header=rpc.ResponseHeader(revision=self.rev))

    def Txn(self, request: Any, context: Any) -> Any:
        self.txns += 1
        if self.mode == "hang":
            time.sleep(3 * TIMEOUT)   # received, maybe applied; the answer comes too late
        elif self.mode == "no leader":
            context.abort(grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out")
        elif self.mode == "own deadline":   # the member's context expired with the proposal in raft
            context.abort(grpc.StatusCode.UNKNOWN, "context deadline exceeded")
        self.rev += 1
        return rpc.TxnResponse(succeeded=True, header=rpc.ResponseHeader(revision=self.rev))

    def Watch(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        next(requests)
        yield rpc.WatchResponse(created=True, header=rpc.ResponseHeader(revision=self.rev))
        while context.is_active():   # a quiet stream: nothing changes
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.stop(0)


@pytest.fixture
def members() -> Iterator[list[_Member]]:
    made: list[_Member] = []
    yield made
    for m in made:
        m.stop()


def _store(endpoints: list[str]) -> EtcdStore:
    return EtcdStore(endpoints, timeout=TIMEOUT, cache=False)


@pytest.fixture
def pair(members: list[_Member]) -> Iterator[tuple[_Member, _Member, EtcdStore]]:
    """Two fake members and a store that uses the first one until it fails."""
    a, b = _Member(), _Member()
    members += [a, b]
    s = _store([a.endpoint, b.endpoint])
    yield a, b, s
    s.close()


def test_a_write_to_a_member_nobody_listens_on_was_never_sent(members: list[_Member]) -> None:
    b = _Member()
    members.append(b)
    refused = f"http://127.0.0.1:{ports.free_port()}"
    ch = Channels(TIMEOUT)
    try:
        with pytest.raises(NeverSent):
            ch.call(refused, "Txn", rpc.TxnRequest())
    finally:
        ch.close()
    s = _store([refused, b.endpoint])
    try:
        assert s.txn([], [Put("/k", "v")]).succeeded
        assert b.txns == 1
    finally:
        s.close()


@pytest.mark.parametrize("mode", ["hang", "no leader", "own deadline"])
def test_a_write_that_reached_a_member_is_never_sent_again(pair: tuple[_Member, _Member, EtcdStore],
                                                           mode: str) -> None:
    a, b, s = pair
    a.mode = mode
    with pytest.raises(StoreUnavailable):
        s.txn([], [Put("/k", "v")])
    assert (a.txns, b.txns) == (1, 0)


def test_a_read_that_got_no_answer_is_retried(pair: tuple[_Member, _Member, EtcdStore]) -> None:
    a, b, s = pair
    a.mode = "hang"
    assert s.get("/k") is None
    assert a.ranges == 2 and b.ranges == 1   # the start's revision read, the lost one; the retry


def test_a_member_stopped_after_use_counts_as_never_sent(pair: tuple[_Member, _Member, EtcdStore]) -> None:
    a, b, s = pair
    assert s.txn([], [Put("/k", "1")]).succeeded and a.txns == 1
    a.stop()
    deadline = time.monotonic() + 5   # the channel notices the connection is gone (GOAWAY, close)
    while s._rpc._member(a.endpoint).state is grpc.ChannelConnectivity.READY and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.txn([], [Put("/k", "2")]).succeeded
    assert b.txns == 1


def test_shutdown_wakes_the_reader_of_a_quiet_watch(members: list[_Member]) -> None:
    a = _Member()
    members.append(a)
    ch = Channels(TIMEOUT)
    try:
        stream = ch.watch(a.endpoint, rpc.WatchCreateRequest(key=b"/", range_end=b"0"), require_leader=True)
        got: list[Any] = []
        ended: list[Exception] = []

        def read() -> None:
            try:
                for res in stream:
                    got.append(res)  # noqa: PERF402 - seen as they come, not after the stream
            except ConnectionError as e:
                ended.append(e)

        t = threading.Thread(target=read, daemon=True)
        t.start()
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got and got[0].created
        stream.shutdown()
        t.join(5)
        assert not t.is_alive() and ended
    finally:
        ch.close()
