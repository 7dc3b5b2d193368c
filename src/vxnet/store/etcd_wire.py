"""etcd's JSON gateway encoding (keys and values base64), shared by the etcd backend and its
read mirror."""

from __future__ import annotations

import base64
from typing import Any

from vxnet.store.contract import KeyValue


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode()


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        _unb64(raw["key"]),
        _unb64(raw.get("value")),
        int(raw.get("create_revision", 0)),
        int(raw.get("mod_revision", 0)),
        int(raw.get("version", 0)),
        int(raw.get("lease", 0)),
    )
