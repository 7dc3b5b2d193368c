"""etcd's JSON gateway encoding (keys and values base64), shared by the etcd backend and its
read mirror."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from vxnet.store.contract import KeyValue, Sharer, stored_kv


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode()


def _kv(raw: dict[str, Any], share: Sharer | None = None, known: Mapping[str, KeyValue] | None = None) -> KeyValue:
    """The KeyValue of an etcd `kv`; with `share`, built by it (a load); with `known` (the
    mirror's keys), an existing key keeps its name's one copy. Both are the mirror's: a long
    value's text may give way to a parsed copy attached later (`contract.stored_kv`)."""
    key = _unb64(raw["key"])
    if known is not None and (old := known.get(key)) is not None:
        key = old.key
    args = (key, _unb64(raw.get("value")), int(raw.get("create_revision", 0)), int(raw.get("mod_revision", 0)),
            int(raw.get("version", 0)), int(raw.get("lease", 0)))
    if share is not None:
        return share.kv(*args)
    return stored_kv(*args) if known is not None else KeyValue(*args)
