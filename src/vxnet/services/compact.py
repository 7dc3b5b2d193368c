"""Compact copies of parsed resources, for what a server holds many of (the view hub's objects,
which the repo's listings share: `parse_resource`, services/repo.py): equal dicts in less memory.

`compact(obj)` returns a dict equal to `obj` (same fields, same order, equal values) that
- shares its field names, and the values that repeat across objects (`SHARED_VALUES`: a
  network's id in each of its ports, the project, the binding host, timestamps of one second),
  also inside a dict field (`binding:vif_details`) and the dicts of a list (`fixed_ips`): one
  copy of each, from process-wide pools;
- holds its `id` interned (`sys.intern`): the store's in-memory copy holds a port's id as the
  value of its MAC and IP claims, interned too (store/contract.py `Sharer`, `stored_kv`), so the
  server keeps one copy of it, not two (100,000 ports: ~8 MiB);
- holds its lists at their length (a list that `json` or a comprehension built with one item
  keeps room for four: 24 bytes more, a port's `fixed_ips`);
- is a key-sharing dict (PEP 412) when it can be: CPython keeps the attributes of instances of
  one class in dicts that share one key table and hold only their values. `compact` fills the
  `__dict__` of a new instance of a class made for the object's shape (its tuple of field names)
  and keeps that dict, a plain `dict` that outlives the instance. A port of 25
  fields then costs ~310 bytes of dict instead of ~840 (a whole port with its values: ~1.2 KB
  instead of ~2.0 KB), and is built faster. It is an ordinary dict in every way
  (equality, order, `json`/`orjson`, copies; a field added or removed is as in any dict, CPython
  may then turn it into an ordinary one, which is only larger). A shape of more than `SPLIT_MAX` fields
  (CPython shares at most 30 keys per class), a field name starting with `__`, or a shape beyond
  the first `SHAPES_MAX` gets an ordinary dict.

Callers treat the result as read-only, as they did the parsed object (the hub replaces an object
on a change; the repo's listings hand them out read-only). The pools only grow up to a bound
(`VALUES_MAX`, then they start again), so ids of deleted objects do not stay forever.
"""

from __future__ import annotations

import json
import sys
from typing import Any

Obj = dict[str, Any]

SHARED_VALUES = frozenset({"network_id", "project_id", "tenant_id", "status", "device_owner", "binding:host_id",
                           "binding:vif_type", "binding:vnic_type", "created_at", "updated_at", "qos_policy_id",
                           "subnet_id", "security_group_id", "remote_group_id", "router_id", "ip_version",
                           "direction", "ethertype", "protocol", "enable_dhcp", "ipv6_address_mode",
                           "ipv6_ra_mode", "subnetpool_id", "gateway_ip", "admin_state_up", "description"})
VALUES_MAX = 1 << 16   # shared values kept; past this many, the pool starts again
SHAPES_MAX = 256       # classes made for shapes (field-name tuples); later shapes get plain dicts
SPLIT_MAX = 30         # CPython's limit of keys a class's instances share

_KEYS: dict[str, str] = {}      # field names, one copy each
_VALUES: dict[str, str] = {}    # values of SHARED_VALUES fields, one copy each
_SHAPES: dict[tuple[str, ...], type | None] = {}


def _empty(shape: tuple[str, ...]) -> Obj:
    """An empty dict to fill with the fields of `shape` in order: a key-sharing one when the shape
    allows (see the module docstring), else an ordinary one."""
    cls = _SHAPES.get(shape, False)
    if cls is False:
        if len(_SHAPES) >= SHAPES_MAX or len(shape) > SPLIT_MAX or any(k.startswith("__") for k in shape):
            cls = None
        else:
            cls = type("Shape", (), {})   # attributes only: no descriptor a field name could hit
        _SHAPES[shape] = cls
    if cls is None:
        return {}
    out: Obj = cls().__dict__   # filled through the dict: it stays a key-sharing one
    return out


def _inner(d: Obj) -> Obj:
    keys, values, shared = _KEYS, _VALUES, SHARED_VALUES
    out = _empty(tuple(d))
    for a, b in d.items():
        if a in shared and b.__class__ is str:
            b = values.setdefault(b, b)
        out[keys.setdefault(a, a)] = b
    return out


def _refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise TypeError("a compact object's empty list or dict is shared by every object: copy it to change it")


class _EmptyList(list):  # type: ignore[type-arg]
    """The one empty list of `compact(..., share_empty=True)` objects: equal to `[]`, written as
    `[]`, refuses changes (it is every object's), copies are ordinary lists."""

    __slots__ = ()
    append = extend = insert = remove = pop = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse

    def __copy__(self) -> list[Any]:
        return []

    def __deepcopy__(self, memo: Any) -> list[Any]:
        return []

    def __reduce__(self) -> Any:
        return (list, ())


class _EmptyDict(dict):  # type: ignore[type-arg]
    """As `_EmptyList`, for `{}`."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __copy__(self) -> dict[Any, Any]:
        return {}

    def __deepcopy__(self, memo: Any) -> dict[Any, Any]:
        return {}

    def __reduce__(self) -> Any:
        return (dict, ())


EMPTY_LIST: list[Any] = _EmptyList()
EMPTY_DICT: dict[Any, Any] = _EmptyDict()


def compact(obj: Obj, share_empty: bool = False) -> Obj:
    """A compact dict equal to `obj` (see the module docstring). With `share_empty`, its empty
    lists and dicts (a port's `tags`, `binding:profile`, ...: ~230 bytes a port) are the shared
    `EMPTY_LIST` / `EMPTY_DICT`, which refuse changes: for holders whose objects nobody changes
    (the view hub)."""
    keys, values, shared = _KEYS, _VALUES, SHARED_VALUES
    if len(values) >= VALUES_MAX:   # checked once per object: the pool may pass it by one object's values
        values.clear()
    out = _empty(tuple(obj))
    for k, v in obj.items():
        k = keys.setdefault(k, k)
        if k in shared:
            if v.__class__ is str:
                v = values.setdefault(v, v)
        elif isinstance(v, list):
            if v:
                v = v[:]   # sized to its items: a parsed or built list of one item holds room for 4
                if isinstance(v[0], dict):
                    for n, d in enumerate(v):
                        if isinstance(d, dict):
                            v[n] = _inner(d)
            elif share_empty:
                v = EMPTY_LIST
        elif isinstance(v, dict):
            if v:
                v = _inner(v)
            elif share_empty:
                v = EMPTY_DICT
        out[k] = v
    ident = out.get("id")
    if ident.__class__ is str:   # interned: the store's claims of a port hold its id (store/contract.py Sharer)
        out["id"] = sys.intern(ident)
    return out


def parse_resource(value: str) -> Any:
    """A stored resource's JSON, parsed into the form the server shares between its readers
    (the view hub, the repo's listings): `compact(..., share_empty=True)` for an object, the value
    itself for other JSON. Raises ValueError for text that is not JSON."""
    obj = json.loads(value)
    return compact(obj, share_empty=True) if isinstance(obj, dict) else obj
