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

`decode_message(text, typed=True)` (the agent's client): a large message's view objects come
already in their typed form. The message's outer levels (message, a snapshot's `view` or an
update's `put`, each bucket of `KINDS`) are walked here, and each object is decoded alone by the C scanner and parsed at once
(`model.parse`), so a snapshot's decoded dicts are never alive together: one object's dict at a
time, beside the text and the typed objects (10,000 ports: ~20 MB of dicts less at the
decode's peak, and the typed view is not scattered among freed dicts). `apply_message` keeps
typed objects as they are. No string-sharing memo on that path: each object's strings die with
its dict, and the typed parse shares the repeated ones (`model.resources._shared`).
"""

from __future__ import annotations

import dataclasses
import json
import json.decoder
import json.scanner
from collections.abc import Callable, Mapping
from typing import Any

from vxnet.model import KINDS, View, parse
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


def decode_message(text: str | bytes, typed: bool = False) -> dict[str, Any]:
    """One stream message from its JSON text (see module docstring); `typed`: a large message's
    view objects parsed one by one as they are decoded."""
    if len(text) < SHARE_STRINGS_ABOVE:
        return json.loads(text)
    if typed:
        return _decode_typed(text if isinstance(text, str) else text.decode())
    memo: dict[str, str] = {}
    share = memo.setdefault

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        return {k: share(v, v) if type(v) is str else v for k, v in items}

    return json.loads(text, object_pairs_hook=pairs)


_scan = json.scanner.make_scanner(json.JSONDecoder())    # one JSON value at an index (C, plain dicts)
_ws = json.decoder.WHITESPACE.match
_Member = Callable[[str, str, int], tuple[Any, int]]      # (key, text, index of its value) -> (value, end)


def _value(key: str, s: str, i: int) -> tuple[Any, int]:
    try:
        return _scan(s, i)      # type: ignore[no-any-return]
    except StopIteration as e:
        raise json.JSONDecodeError("Expecting value", s, e.value) from None


def _object(s: str, i: int, member: _Member) -> tuple[dict[str, Any], int]:
    """The JSON object at `s[i]`, each member's value read by `member`; (object, end)."""
    if s[i:i + 1] != "{":
        return _value("", s, i)     # type: ignore[return-value]  # not an object: as json.loads has it
    out: dict[str, Any] = {}
    i = _ws(s, i + 1).end()
    if s[i:i + 1] == "}":
        return out, i + 1
    while True:
        if s[i:i + 1] != '"':
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", s, i)
        key, i = json.decoder.scanstring(s, i + 1)
        i = _ws(s, i).end()
        if s[i:i + 1] != ":":
            raise json.JSONDecodeError("Expecting ':' delimiter", s, i)
        out[key], i = member(key, s, _ws(s, i + 1).end())
        i = _ws(s, i).end()
        if s[i:i + 1] == "}":
            return out, i + 1
        if s[i:i + 1] != ",":
            raise json.JSONDecodeError("Expecting ',' delimiter", s, i)
        i = _ws(s, i + 1).end()


def _bucket_member(kind: str) -> _Member:
    def member(key: str, s: str, i: int) -> tuple[Any, int]:
        obj, end = _value(key, s, i)
        return parse(kind, key, obj), end
    return member


_BUCKETS = {k: _bucket_member(k) for k in KINDS}


def _view_member(key: str, s: str, i: int) -> tuple[Any, int]:
    kind = _BUCKETS.get(key)
    return _object(s, i, kind) if kind is not None else _value(key, s, i)


def _message_member(key: str, s: str, i: int) -> tuple[Any, int]:
    return _object(s, i, _view_member) if key in ("view", "put") else _value(key, s, i)


def _decode_typed(s: str) -> dict[str, Any]:
    i = _ws(s, 0).end()
    if s[i:i + 1] != "{":
        return json.loads(s)        # type: ignore[no-any-return]  # not a message: json's own answer or error
    msg, end = _object(s, i, _message_member)
    end = _ws(s, end).end()
    if end != len(s):
        raise json.JSONDecodeError("Extra data", s, end)
    return msg


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
