"""Prefix allocation from subnet pools, by store transactions (Neutron's subnet_allocation).

Invariants:
- The prefixes allocated from pool P are exactly the `cidr`s of the subnets whose
  `subnetpool_id` is P: nothing else records an allocation, so deleting a subnet (by its own
  API or in a network delete's cascade) returns its prefix with no further bookkeeping.
- Every allocation reads (guarded) and touches the pool's lock key `/vxnet/subnetpool-alloc/<P>`
  before listing P's subnets. Two allocations from one pool, on one server or many, therefore
  never both commit on the same picture of what is allocated: the loser's transaction fails
  and `Repo.transact` reruns it, which then sees the winner's subnet. So no two subnets of one
  pool overlap. Changes that must not race an allocation (removing prefixes, changing the
  address scope, deleting the pool) read and touch the same key.
- An automatic allocation takes the first block of the wanted length from the smallest free
  block that can hold it (Neutron's choice: smallest free blocks first, then lowest address).
- `default_quota` (Neutron's per-project prefix quota of a pool): the addresses (IPv4: /32
  units, IPv6: /64 units) the project holds from the pool plus the requested block may not
  exceed it; 0 or null means no limit, as in Neutron. Refused with 409 SubnetPoolQuotaExceeded.
- The one default pool per IP version is a claim `/vxnet/subnetpool-default/<version>` = pool id.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from vxnet.services.errors import BadRequest, Conflict
from vxnet.services.repo import ROOT, UnitOfWork

IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_PREFIXLEN = {4: 32, 6: 128}
DEFAULT_MIN_PREFIXLEN = {4: 8, 6: 64}
QUOTA_UNIT = {4: 32, 6: 64}   # a pool's default_quota counts /32s (IPv4) or /64s (IPv6)


def lock_key(pool_id: str) -> str:
    """Read and touched by every allocation from the pool (see the module docstring)."""
    return f"{ROOT}subnetpool-alloc/{pool_id}"


def default_key(ip_version: int) -> str:
    """The claim of the default pool of an IP version."""
    return f"{ROOT}subnetpool-default/{ip_version}"


def lock(uow: UnitOfWork, pool_id: str) -> None:
    """Serialise against every other allocation or prefix change of the pool."""
    uow.get_raw(lock_key(pool_id))
    uow.touch(lock_key(pool_id))


# Prefix-set arithmetic on sorted, merged integer ranges, per IP version: linear after a sort.
# (Pairwise `overlaps` / `subnet_of` / `address_exclude` over two lists was quadratic: a pool
# may hold ~10^4 disjoint prefixes and one request names as many, or ~10^4 allocated subnets,
# minutes of CPU per request or allocation.)
Ranges = dict[int, list[tuple[int, int]]]


def ranges(cidrs: Iterable[str]) -> Ranges:
    """The addresses of `cidrs`: IP version -> sorted, disjoint, non-adjacent [first, last]."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for c in cidrs:
        n = ipaddress.ip_network(c, strict=False)
        spans.setdefault(n.version, []).append((int(n.network_address), int(n.broadcast_address)))
    out: Ranges = {}
    for version, items in spans.items():
        items.sort()
        merged = [items[0]]
        for lo, hi in items[1:]:
            if lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        out[version] = merged
    return out


def overlaps(a: Iterable[str], b: Iterable[str]) -> bool:
    """Whether some address is in both prefix lists."""
    rb = ranges(b)
    for version, spans in ranges(a).items():
        other, i, j = rb.get(version, []), 0, 0
        while i < len(spans) and j < len(other):
            if spans[i][1] < other[j][0]:
                i += 1
            elif other[j][1] < spans[i][0]:
                j += 1
            else:
                return True
    return False


def _minus(prefixes: Iterable[str], removed: Iterable[str]) -> list[IpNet]:
    drop = ranges(removed)
    out: list[IpNet] = []
    for version, spans in sorted(ranges(prefixes).items()):
        other, j = drop.get(version, []), 0
        addr = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        left: list[tuple[int, int]] = []
        for lo, hi in spans:
            while j < len(other) and other[j][1] < lo:
                j += 1
            cur, k = lo, j
            while k < len(other) and other[k][0] <= hi:
                if other[k][0] > cur:
                    left.append((cur, other[k][0] - 1))
                cur = max(cur, other[k][1] + 1)
                k += 1
            if cur <= hi:
                left.append((cur, hi))
        for lo, hi in left:
            out += ipaddress.summarize_address_range(addr(lo), addr(hi))  # type: ignore[arg-type]
    return out


def minus(prefixes: Iterable[str], removed: Iterable[str]) -> list[str]:
    """The addresses of `prefixes` not in `removed`, as the fewest CIDRs, sorted (what
    `ipaddress.collapse_addresses` gives)."""
    return [str(n) for n in _minus(prefixes, removed)]


def compact(prefixes: Iterable[str]) -> list[str]:
    """Neutron's compacted prefix list: overlaps merged, adjacent blocks joined, sorted."""
    return minus(prefixes, ())


def free_blocks(prefixes: Iterable[str], allocated: Iterable[str]) -> list[IpNet]:
    """The pool's prefixes minus the allocated ones, as maximal CIDR blocks (sorted)."""
    return _minus(prefixes, allocated)


def units(cidr: str, ip_version: int) -> int:
    """How many quota units (/32 or /64) a block holds."""
    return int(2 ** max(QUOTA_UNIT[ip_version] - ipaddress.ip_network(cidr).prefixlen, 0))


def pool_subnets(uow: UnitOfWork, pool_id: str, staged: Iterable[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The subnets allocated from the pool: stored ones (each read guarded) and those staged
    earlier in this unit of work (a bulk create)."""
    out = uow.list("subnets", lambda s: s.get("subnetpool_id") == pool_id)
    seen = {s["id"] for s in out}
    return out + [s for s in staged if s.get("subnetpool_id") == pool_id and s["id"] not in seen]


def allocate(uow: UnitOfWork, pool: dict[str, Any], project: str, *, cidr: str | None, prefixlen: int | None,
             staged: Iterable[dict[str, Any]] = ()) -> str:
    """A prefix for a new subnet of `project` from `pool`: `cidr` itself (it must lie in a free
    block of the pool) or a block of `prefixlen` (default: the pool's default_prefixlen)."""
    version = int(pool["ip_version"])
    want = ipaddress.ip_network(cidr).prefixlen if cidr is not None else (
        prefixlen if prefixlen is not None else int(pool["default_prefixlen"]))
    if want > int(pool["max_prefixlen"]):
        raise BadRequest("MaxPrefixSubnetAllocationError",
                         f"Unable to allocate subnet with prefix length {want}, maximum allowed prefix is "
                         f"{pool['max_prefixlen']}.")
    if want < int(pool["min_prefixlen"]):
        raise BadRequest("MinPrefixSubnetAllocationError",
                         f"Unable to allocate subnet with prefix length {want}, minimum allowed prefix is "
                         f"{pool['min_prefixlen']}.")
    lock(uow, pool["id"])
    taken = pool_subnets(uow, pool["id"], staged)
    quota = pool.get("default_quota")
    if quota:
        used = sum(units(s["cidr"], version) for s in taken if s.get("project_id") == project)
        if used + int(2 ** max(QUOTA_UNIT[version] - want, 0)) > int(quota):
            raise Conflict("SubnetPoolQuotaExceeded", "Per-tenant subnet pool prefix quota exceeded.")
    free = free_blocks(pool["prefixes"], [s["cidr"] for s in taken])
    if cidr is not None:
        net = ipaddress.ip_network(cidr)
        if any(net.version == b.version and net.subnet_of(b) for b in free):  # type: ignore[arg-type]
            return str(net)
        raise Conflict("SubnetAllocationError", "Failed to allocate subnet: Cannot allocate requested subnet "
                                                "from the available set of prefixes.")
    for block in sorted(free, key=lambda b: (-b.prefixlen, int(b.network_address))):
        if block.prefixlen <= want:
            return str(next(block.subnets(new_prefix=want)))
    raise Conflict("SubnetAllocationError",
                   f"Failed to allocate subnet: Insufficient prefix space to allocate subnet size /{want}.")
