"""The agent's copy of its host view, and how stream messages change it (pure).

Messages are those of the agent <-> server contract: `snapshot` replaces the view, `update`
puts and deletes objects by kind and id, `ping` only advances the revision. A message whose
revision is not newer than the view's is ignored (a replay after a reconnect), so applying the
same stream twice gives the same view.

Objects are parsed into their typed form (`vxnet.model`) here, once, when they arrive; the
buckets hold typed objects, and `ViewState.view` wraps them as a `model.View` without copying.
An update replaces only the objects it carries, so an unchanged object stays the very same
Python object from one view to the next (what the incremental caches key on).

`decode_message` turns a message's JSON text into the dict `apply_message` takes; in a large
message (a snapshot of more than ~1,500 ports) equal strings become one object (a JSON decoder
makes a new string for every value: 10,000 ports repeat their network, subnet, project and group
ids and host names about ten times each; ~4 MB less at the decode's peak for 10,000 ports, for
~0.2 s more CPU). Below SHARE_STRINGS_ABOVE it is plain `json.loads`: the typed parse shares
those strings anyway (`model.resources._shared`), and for a view of a few hundred ports the
saving at the peak is a few hundred KB while the decoder's Python hook doubles the decode
(400 ports, ~300 KB: 6.5 -> 9.8 ms, 2026-12-07), paid by every agent at every restart.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from vxnet.model import KINDS, View
from vxnet.model.view import _EMPTY, parse_bucket


@dataclasses.dataclass(frozen=True)
class ViewState:
    """A view at a revision; `complete` once a snapshot has been received."""

    revision: int = 0
    complete: bool = False
    data: Mapping[str, Mapping[str, Mapping[str, Any]]] = dataclasses.field(default_factory=dict)

    def size(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.data.items()}

    @property
    def view(self) -> View:
        """The typed view (the buckets themselves: no copy)."""
        return View(**{k: self.data.get(k, _EMPTY) for k in KINDS})


SHARE_STRINGS_ABOVE = 1 << 20     # message text length (characters) from which equal strings are shared


def decode_message(text: str | bytes) -> dict[str, Any]:
    """One stream message from its JSON text (see module docstring)."""
    if len(text) < SHARE_STRINGS_ABOVE:
        return json.loads(text)
    memo: dict[str, str] = {}
    share = memo.setdefault

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        return {k: share(v, v) if type(v) is str else v for k, v in items}

    return json.loads(text, object_pairs_hook=pairs)


def apply_message(state: ViewState, msg: Mapping[str, Any], consume: bool = False) -> ViewState:
    """The view after one stream message. `consume`: the message is the caller's to give up
    (fresh from the wire); its raw objects are removed as they are parsed (`parse_bucket`)."""
    kind = msg.get("type")
    rev = int(msg.get("revision") or 0)
    if kind == "snapshot":
        view = msg.get("view") or {}
        data = {k: parse_bucket(k, view.get(k) or {}, consume) for k in set(KINDS) | set(view) if k != "host"}
        return ViewState(rev, True, data)
    if kind == "update":
        if rev <= state.revision and state.complete:
            return state
        data = dict(state.data)   # copy only the buckets this message touches
        put, delete = msg.get("put") or {}, msg.get("delete") or {}
        for k in set(put) | set(delete):
            data[k] = dict(data.get(k) or {})
        for k, objs in put.items():
            data[k].update(parse_bucket(k, objs, consume))
        for k, ids in delete.items():
            for i in ids:
                data[k].pop(i, None)
        return ViewState(max(rev, state.revision), state.complete, data)
    if kind == "ping" and rev > state.revision and state.complete:
        return dataclasses.replace(state, revision=rev)
    return state
