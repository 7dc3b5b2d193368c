"""Servers announce themselves in the store, so `vxnet status` can list them.

`/vxnet/servers/<id>` = {"id", "url", "version", "python", "hostname", "pid", "started_at"},
attached to a lease of SERVER_TTL seconds that the server refreshes every SERVER_TTL / 3: a
server that stops (or loses its store) disappears within SERVER_TTL (a stopping server does
not delete its key: see api/routers/operations.py). Nothing depends on
these keys but the status report. Blocking store I/O: call from a worker thread.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from typing import Any

from vxnet import buildinfo
from vxnet.services.repo import ROOT
from vxnet.store.contract import LeaseNotFound, Put, Store

log = logging.getLogger("vxnet.servers")

SERVER_PREFIX = f"{ROOT}servers/"
SERVER_TTL = 15


class Announcement:
    """This server's key and lease (`announce()` at start, `refresh()` periodically)."""

    def __init__(self, store: Store, url: str) -> None:
        self.store = store
        self.id = uuid.uuid4().hex[:12]
        self.info: dict[str, Any] = {
            "id": self.id, "url": url, "version": buildinfo.version(), "python": buildinfo.python_version(),
            "hostname": socket.gethostname(), "pid": os.getpid(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.lease = 0

    def announce(self) -> None:
        self.lease = self.store.grant_lease(SERVER_TTL)
        self.store.txn([], [Put(SERVER_PREFIX + self.id, json.dumps(self.info), self.lease)])

    def refresh(self) -> None:
        """Keep the key alive (announce again if the lease was lost); errors are logged."""
        try:
            if not self.lease:
                self.announce()
                return
            self.store.refresh_lease(self.lease)
        except LeaseNotFound:
            self.lease = 0
            self.refresh()
        except Exception as e:  # noqa: BLE001 - the store may be down: the next refresh retries
            log.warning("server announcement not refreshed: %s", e)


def list_servers(store: Store) -> list[dict[str, Any]]:
    """The announced servers."""
    kvs, _ = store.range(SERVER_PREFIX)
    out = []
    for kv in kvs:
        try:
            out.append(json.loads(kv.value))
        except ValueError:
            continue
    return sorted(out, key=lambda s: (s.get("url") or "", s.get("id") or ""))
