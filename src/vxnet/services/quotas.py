"""Neutron's quotas: per-project limits, enforced in the store transaction of every create.

Keys (under `/vxnet/`):
- `quota/<project_id>` = JSON `{resource: limit}`: the project's limits that were set through
  the API (absent: every limit is the configured default). -1 means unlimited.
- `quota-usage/<project_id>/<resource>` = decimal base count of the project's objects of that
  kind, and `quota-usage/<project_id>/<resource>/<n>` (n < DELTA_SHARDS) = decimal deltas: the
  usage is the base plus every delta. The base is written only when the usage is counted from
  the store; each counted change moves one delta shard (chosen per worker thread; a new random
  one after a rerun), so concurrent creates of one project on any number of servers do not all
  compare and write one hot key.

Counting is central: `QuotaEngine.stage` is the repository's stage hook (services/repo.py), so it
sees every `UnitOfWork.put`/`delete` of a resource, whichever API module stages it, including
cascades (a network delete removing its subnets and ports, a group delete removing its rules).
For a counted collection it compares the project owning the key before the write (the store's
value, read with a guard, or what this transaction staged earlier) with the project after it,
and moves the counters by the difference, in the same transaction. (An update of an object the
transaction read costs no extra read: no API changes an object's `project_id`; nor does a
create: a new object, never read and at revision 0, is staged with "key missing" as a compare.)
Every counted change reads the base and its own delta shard with a guard (so no increment is
ever lost). An increment checked against a finite limit also reads every delta shard with a
range guard (no shard created or changed since), so two concurrent creates of one project on
any number of servers cannot both commit on the same total: the loser reruns (Repo.transact)
and sees the new value. An increment past the project's limit raises 409 `OverQuota`, so the
transaction stages nothing: a quota of N admits exactly N objects, never N+1, and a refused
create leaves no port, IP or MAC claim behind. With an unlimited quota (-1) creates only meet
on a shard (rarely: each worker thread of a server has its own), not on the total.

What counts: objects whose `project_id` is not empty. The cloud's own ports (router gateway and
floating IP ports have project '') count for nobody. The default security group and its rules,
created implicitly on a project's first use, count but are never refused (`exempt`), as in
Neutron; so do the RBAC policies a `shared` / `router:external` flag implies (only a
`POST /v2.0/rbac-policies` is refused by the `rbac_policy` quota); so do objects an update merely keeps. Only the API server installs the hook.

Migration: a missing base is counted from the store on first use (and any delta shards left
without a base are dropped in the same transaction). That count cannot race: the base's absence
is part of the transaction's compares and every counted change reads the base with a guard. A
counter of an older version (a base without shards) is read as it is. A store served for a while with `[quotas] enabled = false` has stale counters:
`reset_usage` (CLI: `vxnet quota reset-usage`) deletes them all, to be recounted on next use.

Per-port limits (Neutron's `max_fixed_ips_per_port`, `max_allowed_address_pair`) are checked on
every staged port too: more fixed IPs than allowed (ports of `network:*` owners are exempt, as in
Neutron) -> 400 InvalidInput; more address pairs -> 400 AllowedAddressPairExhausted. A port
already beyond a limit (the limit was lowered) may be updated as long as it does not grow.
The fixed IPs a request lists are also checked before any of them is allocated, as Neutron
does (`check_fixed_ips_request`, called by services/ports.py): a request listing thousands is
refused without claiming them first. The check at the write stays: it also sees the addresses
a port takes without listing them (IPv6 automatic addresses).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import random
import threading
from collections.abc import Iterator
from typing import Any

from vxnet.config import QuotaSettings
from vxnet.services.errors import BadRequest, Conflict
from vxnet.services.repo import ROOT, Repo, UnitOfWork
from vxnet.store.contract import Delete, Store

# collection -> Neutron's resource name, in Neutron's display order
COUNTED: dict[str, str] = {
    "networks": "network",
    "subnets": "subnet",
    "ports": "port",
    "routers": "router",
    "floatingips": "floatingip",
    "security_groups": "security_group",
    "security_group_rules": "security_group_rule",
    "subnetpools": "subnetpool",
    "rbac_policies": "rbac_policy",
}
RESOURCES: tuple[str, ...] = tuple(COUNTED.values())
COLLECTION_OF: dict[str, str] = {r: c for c, r in COUNTED.items()}
LIMIT_PREFIX = f"{ROOT}quota/"
USAGE_PREFIX = f"{ROOT}quota-usage/"
MAX_LIMIT = 2**31 - 1  # Neutron's DB_INTEGER_MAX_VALUE


def limit_key(project_id: str) -> str:
    return f"{LIMIT_PREFIX}{project_id}"


DELTA_SHARDS = 64  # delta keys per (project, resource): see the module docstring


def usage_key(project_id: str, resource: str) -> str:
    """The base count's key; the delta shards are under `usage_key(...) + "/"`."""
    return f"{USAGE_PREFIX}{project_id}/{resource}"


def _shard_prefix(project_id: str, resource: str) -> str:
    return usage_key(project_id, resource) + "/"


# The delta shard of the calling thread: consecutive threads of one process get consecutive
# shards from a random start, so a server's concurrent transactions (one per worker thread) start
# on distinct shards and two servers' rarely meet. A thread whose transaction reruns moves to a
# random shard (it may meet another there; that rerun moves it again): two servers' threads that share one (worker threads come and go, so the shard ranges
# drift into each other) would otherwise rerun each other's creates on almost every write, each
# server's reads being a watch delay behind the other's writes (measured: 1.6-1.9 etcd txns per
# create instead of 1.0). Only a choice: any shard is correct.
_shard_start = random.randrange(DELTA_SHARDS)
_shard_seq = itertools.count()
_shard_local = threading.local()


def _my_shard() -> int:
    n = getattr(_shard_local, "shard", None)
    if n is None:
        n = _shard_local.shard = (_shard_start + next(_shard_seq)) % DELTA_SHARDS
    return n  # type: ignore[no-any-return]


def stored_usage(store: Store, project_id: str, resource: str) -> int | None:
    """The usage the counters hold (base plus deltas), None without a base (count on use)."""
    base = store.get(usage_key(project_id, resource))
    if base is None:
        return None
    return int(base.value) + sum(int(kv.value) for kv in store.range(_shard_prefix(project_id, resource))[0])


def over_quota(resources: list[str]) -> Conflict:
    """Neutron's OverQuota (409)."""
    return Conflict("OverQuota", f"Quota exceeded for resources: {sorted(resources)}.")


def too_many_fixed_ips() -> BadRequest:
    """Neutron's answer to more fixed IPs than `max_fixed_ips_per_port` (400)."""
    return BadRequest("InvalidInput", "Invalid input for operation: Exceeded maximum amount of fixed ips per port.")


def check_fixed_ips_request(uow: UnitOfWork, requested: int, device_owner: str, current: int = 0) -> None:
    """Refuse a create or update whose request lists `requested` fixed IPs, more than the
    limit allows, before anything is allocated (Neutron's `_validate_max_ips_per_port`). As at
    the write: `network:*` owners are exempt, and a port already beyond a lowered limit (it has
    `current` addresses) may keep as many. No-op where no quota engine is installed."""
    hook = uow.repo.stage_hook   # the engine `install` made the repository's hook (a bound `stage`)
    engine = getattr(hook, "__self__", None)
    if isinstance(engine, QuotaEngine) and requested > current and engine._too_many_ips(requested, device_owner):
        raise too_many_fixed_ips()


@dataclasses.dataclass
class _Notes:
    """What the hook remembers within one unit of work."""

    owner: dict[str, str | None] = dataclasses.field(default_factory=dict)  # key -> staged counted project
    limits: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # project -> overrides
    exempt: bool = False
    shard: int = dataclasses.field(default_factory=_my_shard)  # the delta shard this unit of work moves


def _notes(uow: UnitOfWork) -> _Notes:
    notes = uow.hook_state.get("quota")
    if notes is None:
        if uow.attempt > 1:  # a rerun: perhaps another server's thread shares our shard
            _shard_local.shard = random.randrange(DELTA_SHARDS)
        notes = uow.hook_state["quota"] = _Notes()
    return notes  # type: ignore[no-any-return]


@contextlib.contextmanager
def exempt(uow: UnitOfWork) -> Iterator[None]:
    """Objects staged inside count but are never refused (implicit creations)."""
    notes = _notes(uow)
    before, notes.exempt = notes.exempt, True
    try:
        yield
    finally:
        notes.exempt = before


def _owner(value: str | None) -> str | None:
    """The counted project of a stored resource value (None: absent or the cloud's own)."""
    if value is None:
        return None
    return json.loads(value).get("project_id") or None


class QuotaEngine:
    """Limits and usage over one store; `install` makes a repository count and enforce."""

    def __init__(self, settings: QuotaSettings) -> None:
        self.settings = settings
        self.defaults: dict[str, int] = dict(settings.defaults)

    def install(self, repo: Repo) -> None:
        if self.settings.enabled:
            repo.stage_hook = self.stage

    # the stage hook ------------------------------------------------------------------------------
    def stage(self, uow: UnitOfWork, collection: str, key: str, obj: dict[str, Any] | None) -> None:
        """Move the counters for one staged write (see the module docstring); may raise."""
        resource = COUNTED.get(collection)
        if resource is None:
            return
        notes = _notes(uow)
        if obj is not None and collection == "ports":
            self._check_port(uow, key, obj)
        new = (obj.get("project_id") or None) if obj is not None else None
        seen = uow.read_revision(key) if key not in notes.owner else None
        if key in notes.owner:
            prev = notes.owner[key]
        elif obj is not None and seen:
            prev = new  # an update of an object this transaction read: `project_id` never changes
        elif obj is not None and seen is None and obj.get("revision_number") == 0:
            # a new object (fresh id, never read: every update reads first and bumps the
            # revision): no read, the commit requires the key to be missing instead
            uow.claim(key, "")
            prev = None
        else:
            prev = _owner(uow.get_raw(key))
        notes.owner[key] = new
        if prev == new:
            return
        if prev is not None:
            self._add(uow, notes, prev, resource, -1)
        if new is not None:
            self._add(uow, notes, new, resource, +1)

    def _add(self, uow: UnitOfWork, notes: _Notes, project: str, resource: str, delta: int) -> None:
        ukey = usage_key(project, resource)
        raw = uow.get_raw(ukey)
        if raw is None or uow.staged(ukey):  # no base yet: count the store, drop stray shards
            if raw is None:
                raw = str(count_in_store(uow.repo, project, resource))
                for key in uow.range_raw(_shard_prefix(project, resource)):
                    uow.delete_raw(key)
            used = int(raw) + delta
            if delta > 0 and not notes.exempt:
                limit = self._limit(uow, notes, project, resource)
                if 0 <= limit < used:
                    raise over_quota([resource])
            uow.put_raw(ukey, str(max(used, 0)))
            return
        skey = _shard_prefix(project, resource) + str(notes.shard)
        mine = int(uow.get_raw(skey) or 0) + delta
        if delta > 0 and not notes.exempt:
            limit = self._limit(uow, notes, project, resource)
            if limit >= 0:  # the total, guarded: no other shard may move before the commit
                shards = uow.range_raw(_shard_prefix(project, resource))
                used = int(raw) + mine + sum(int(v) for k, v in shards.items() if k != skey)
                if limit < used:
                    raise over_quota([resource])
        uow.put_raw(skey, str(mine))

    def _limit(self, uow: UnitOfWork, notes: _Notes, project: str, resource: str) -> int:
        overrides = notes.limits.get(project)
        if overrides is None:
            # Not guarded: a create committing just before a concurrent limit change is the
            # same as one made before it; exactness comes from the counter's guard.
            kv = uow.repo.store.get(limit_key(project))
            overrides = notes.limits[project] = json.loads(kv.value) if kv else {}
        return int(overrides.get(resource, self.defaults[resource]))

    def _too_many_ips(self, count: int, device_owner: str) -> bool:
        """More fixed IPs than `max_fixed_ips_per_port` (ports of `network:*` owners are exempt)."""
        return not device_owner.startswith("network:") and 0 <= self.settings.max_fixed_ips_per_port < count

    def _check_port(self, uow: UnitOfWork, key: str, port: dict[str, Any]) -> None:
        max_pairs = self.settings.max_allowed_address_pair
        ips = len(port.get("fixed_ips") or [])
        pairs = len(port.get("allowed_address_pairs") or [])
        too_many_ips = self._too_many_ips(ips, str(port.get("device_owner") or ""))
        too_many_pairs = 0 <= max_pairs < pairs
        if not (too_many_ips or too_many_pairs):
            return
        raw = uow.get_raw(key)  # the port before this write: growing is refused, keeping is not
        old = json.loads(raw) if raw else {}
        if too_many_ips and ips > len(old.get("fixed_ips") or []):
            raise too_many_fixed_ips()
        if too_many_pairs and pairs > len(old.get("allowed_address_pairs") or []):
            raise BadRequest("AllowedAddressPairExhausted",
                             f"The number of allowed address pair exceeds the maximum {max_pairs}.")

    # limits and usage for the API --------------------------------------------------------------
    def limits(self, store: Store, project: str) -> dict[str, int]:
        """The project's effective limits, every resource."""
        kv = store.get(limit_key(project))
        return self._merge(json.loads(kv.value) if kv else {})

    def _merge(self, overrides: dict[str, Any]) -> dict[str, int]:
        return {r: int(overrides.get(r, self.defaults[r])) for r in RESOURCES}

    def all_overrides(self, store: Store) -> list[tuple[str, dict[str, int]]]:
        """(project, effective limits) of every project with limits set through the API."""
        kvs, _ = store.range(LIMIT_PREFIX)
        return [(kv.key[len(LIMIT_PREFIX):], self._merge(json.loads(kv.value))) for kv in kvs]

    def set_limits(self, repo: Repo, project: str, changes: dict[str, int], check_limit: bool) -> dict[str, int]:
        """Store new limits for `project` (with `check_limit`, a limit below the current usage
        is a 400, checked in the same transaction); returns the effective limits."""

        def txn(uow: UnitOfWork) -> dict[str, int]:
            raw = uow.get_raw(limit_key(project))
            overrides = json.loads(raw) if raw else {}
            for resource, limit in changes.items():
                if check_limit and limit >= 0:
                    used = self._used_guarded(uow, project, resource)
                    if used > limit:
                        raise BadRequest("BadRequest",
                                         f"Quota limit {limit} for {resource} must be greater than or "
                                       f"equal to already used {used}")
                overrides[resource] = limit
            uow.put_raw(limit_key(project), json.dumps(overrides, sort_keys=True))
            return self._merge(overrides)

        return repo.transact(txn)

    def _used_guarded(self, uow: UnitOfWork, project: str, resource: str) -> int:
        raw = uow.get_raw(usage_key(project, resource))
        if raw is None:
            return count_in_store(uow.repo, project, resource)
        return int(raw) + sum(int(v) for v in uow.range_raw(_shard_prefix(project, resource)).values())

    def delete_limits(self, repo: Repo, project: str) -> bool:
        """Back to the defaults; False if the project had no limits set."""

        def txn(uow: UnitOfWork) -> bool:
            if uow.get_raw(limit_key(project)) is None:
                return False
            uow.delete_raw(limit_key(project))
            return True

        return repo.transact(txn)

    def usage(self, repo: Repo, project: str) -> dict[str, int]:
        """The project's usage per resource (the counters; a missing one is counted)."""
        out = {}
        for r in RESOURCES:
            used = stored_usage(repo.store, project, r)
            out[r] = used if used is not None else count_in_store(repo, project, r)
        return out


def count_in_store(repo: Repo, project: str, resource: str) -> int:
    """The project's objects of `resource` as stored now (a full scan of the collection)."""
    return sum(1 for obj in repo.list(COLLECTION_OF[resource]) if obj.get("project_id") == project)


def reset_usage(store: Store) -> None:
    """Delete every usage counter (each is recounted on its next use). Safe while servers run:
    a transaction that read a counter fails its compare and reruns."""
    store.txn([], [Delete(USAGE_PREFIX, prefix=True)])
