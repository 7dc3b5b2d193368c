"""`EtcdStore.read_after`: a revision learned elsewhere (the server's view hub watches on its own
stream) becomes the floor of this store's reads, so a mirror that runs behind that stream is not
read until it has caught up (real 3-member etcd; the mirror is held back by pausing the thread
that applies its watch events, so the lag is certain, not a timing accident)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.etcd import EtcdCluster
from vxnet.store import open_store
from vxnet.store.cache import Mirror
from vxnet.store.contract import Put
from vxnet.store.etcd_store import EtcdStore


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    c = EtcdCluster(3, prefix="vxt-after")
    try:
        yield c
    finally:
        c.stop()


def test_a_read_after_a_revision_waits_for_a_lagging_mirror(cluster: EtcdCluster, monkeypatch: Any) -> None:
    key = f"/t-after/{uuid.uuid4().hex}"
    reader = open_store(cluster.url() + "?cache=1")
    writer = open_store(cluster.url() + "?cache=0")
    assert isinstance(reader, EtcdStore)
    wire_key = key.encode()
    release = threading.Event()
    held = threading.Event()
    apply = Mirror._apply

    def slow_apply(self: Mirror, events: Any) -> None:
        if any(e.kv.key == wire_key for e in events):
            held.set()
            release.wait(10)
        apply(self, events)

    try:
        reader.get(key)  # the mirror is connected and serving
        monkeypatch.setattr(Mirror, "_apply", slow_apply)
        rev = writer.txn([], [Put(key, "v")]).revision
        assert held.wait(10), "the mirror never received the write"
        assert reader.get(key) is None  # without a floor: the lagging mirror answers
        threading.Timer(0.3, release.set).start()
        reader.read_after(rev)
        kv = reader.get(key)  # waits for the mirror to reach `rev`
        assert kv is not None and kv.value == "v"
    finally:
        release.set()
        writer.close()
        reader.close()
