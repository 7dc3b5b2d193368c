"""IP and MAC allocation by store transactions.

Invariants:
- An allocated fixed IP is the key `/vxnet/ipam/<subnet_id>/<ip>` (value: port id), created by
  a claim (compare: key missing) in the transaction that creates or updates the port. Two
  requests, on one server or many, can never commit the same IP: the loser's transaction fails
  and `Repo.transact` reruns it, which then picks another address.
- A MAC is `/vxnet/mac/<network_id>/<mac>` (unique per network, as in Neutron; tenants on
  different networks may reuse MACs).
- Every allocation also touches `/vxnet/ipam-subnet/<subnet_id>` (`UnitOfWork.touch`: a new
  revision, no meaningful value), which a subnet delete guards; nothing reads its value.
- Releasing is deleting those keys in the transaction that deletes/changes the port.
- Automatic addresses are the lowest free pool address this process knows of: the search
  starts at a per-process low-water hint (advanced/lowered after commits) and rescans the pools
  from their start before declaring exhaustion, so a stale hint never causes a false 409.
  While a subnet is *contended* (an allocation on it had to rerun, in the last
  `CONTENDED_SECONDS`: another server, whose in-flight addresses this process cannot see,
  took the same address), and always on a store several servers write to
  (`shared_by_servers`: etcd), this process allocates from a *lane* of its own instead: a random
  free pool address, then upwards from it, lowest free first (Neutron's own IPAM always picks
  at random among the first 1,000 available, so no client may rely on lowest-first). Two
  servers then fill disjoint parts of the pool and stop colliding; a rerun inside a lane (the
  lanes met) draws a new lane. A lane starts only on a free address: starting "past a random
  offset" would land after taken runs, on the very address another server allocates next.
  For the same reason a lane ends at the first address taken by anyone else (it skips only
  this process's own in-flight addresses): the taken run above it is typically another
  server's lane, and scanning past it lands on that server's next address, claimed in flight
  where this process cannot see it (a rerun, and a failed group-commit batch: up to 5 reruns
  per 800 creates in api_bench before; docs/benchmarks.md, etcd write path, tenth round).
  If a few random draws find no free address (a nearly full pool), the pick is random among
  the first `WINDOW` free addresses. On the embedded store (one server) uncontended
  allocation stays lowest-first. (Measured with 2 servers, 8 clients: lanes 1.00-1.01 txns per
  create, random-among-the-first-32 1.07-1.08, random offset per pick 1.34.) On etcd a lane is
  taken from the first allocation on: waiting for a collision to start one cost a rerun of the
  colliding create, and a failed group-commit batch for the creates sharing its transaction,
  each time a subnet became busy again after `CONTENDED_SECONDS` (most of the slowest 1% of
  creates in api_bench; docs/benchmarks.md, etcd write path, ninth round).
- Exhaustion is 409 IpAddressGenerationFailure; a requested IP in use is 409
  IpAddressAlreadyAllocated (tempest accepts it or IpAddressInUse).
- IPv6 (Neutron's ipam backend): a new port gets one address from the IPv4 subnets, one from
  the IPv6 subnets without automatic addresses, and, unless it is a router interface (or SNAT)
  port, its EUI-64 address on every auto-address subnet (SLAAC / DHCPv6
  stateless), whatever fixed_ips it asked for. An explicit address on an auto-address subnet
  is a 400 except for router interface ports. An IPv6 subnet's first (subnet-router anycast)
  address may be taken only by router ports or ports without an owner (Neutron's
  check_subnet_ip).
- Every `vxlan` network holds exactly one VNI, claimed at `/vxnet/vni/<vni>` (value: network
  id) in the transaction that creates the network (`allocate_vni`), released by its delete.
"""

from __future__ import annotations

import ipaddress
import random
import time
from collections.abc import Iterator
from typing import Any

from vxnet.services import ipv6
from vxnet.services.errors import Conflict, ServiceError, bad_request, conflict
from vxnet.services.repo import ROOT, UnitOfWork

MAC_PREFIX = "fa:16:3e"

# neutron-lib constants: ROUTER_INTERFACE_OWNERS, + the DVR SNAT port, + the gateway (ROUTER_PORT_OWNERS)
ROUTER_INTERFACE_OWNERS = (
    "network:router_interface",
    "network:router_interface_distributed",
    "network:ha_router_replicated_interface",
)
ROUTER_INTERFACE_OWNERS_SNAT = (*ROUTER_INTERFACE_OWNERS, "network:router_centralized_snat")
ROUTER_PORT_OWNERS = (*ROUTER_INTERFACE_OWNERS_SNAT, "network:router_gateway")


def takes_auto_address(device_owner: str) -> bool:
    """Whether a port with this owner gets EUI-64 addresses on auto-address subnets (Neutron:
    all but router interface and SNAT ports; the gateway and floating IP ports do)."""
    return device_owner not in ROUTER_INTERFACE_OWNERS_SNAT


def ip_key(subnet_id: str, ip: str) -> str:
    return f"{ROOT}ipam/{subnet_id}/{ip}"


def subnet_alloc_key(subnet_id: str) -> str:
    """Touched by every allocation on the subnet; the subnet's delete guards it, so an
    allocation and the delete of its subnet never both commit."""
    return f"{ROOT}ipam-subnet/{subnet_id}"


def mac_key(network_id: str, mac: str) -> str:
    return f"{ROOT}mac/{network_id}/{mac}"


def in_pools(subnet: dict[str, Any], ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return any(
        ipaddress.ip_address(p["start"]) <= addr <= ipaddress.ip_address(p["end"]) for p in subnet["allocation_pools"]
    )


def in_subnet(subnet: dict[str, Any], ip: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(subnet["cidr"])


def allocate_ip(uow: UnitOfWork, subnet: dict[str, Any], port_id: str, wanted: str | None = None,
                device_owner: str = "") -> str:
    """Claim `wanted` (anywhere in the subnet but the network/broadcast address) or the lowest
    free address of the allocation pools."""
    sid = subnet["id"]
    uow.touch(subnet_alloc_key(sid))
    if wanted is not None:
        net = ipaddress.ip_network(subnet["cidr"])
        addr = ipaddress.ip_address(wanted)
        if addr not in net:
            raise bad_request(f"IP address {wanted} is not a valid IP for the specified subnet.", "InvalidIpForSubnet")
        if net.version == 4 and net.prefixlen < 31 and addr in (net.network_address, net.broadcast_address):
            raise bad_request(f"IP address {wanted} is not a valid IP for the specified subnet.", "InvalidIpForSubnet")
        if (net.version == 6 and addr == net.network_address
                and device_owner not in (*ROUTER_PORT_OWNERS, "")):
            raise bad_request(f"IP address {wanted} is not a valid IP for the specified subnet.", "InvalidIpForSubnet")
        wanted = str(addr)  # one spelling per address: the claim key is the compressed form
        if uow.is_claimed(ip_key(sid, wanted)):
            raise conflict(
                "IpAddressAlreadyAllocated",
                f"IP address {wanted} already allocated in subnet {sid}",
            )
        uow.claim(ip_key(sid, wanted), port_id)
        return wanted
    addr = _lowest_free(uow, subnet, port_id)
    if addr is None:
        raise Conflict(
            "IpAddressGenerationFailure",
            f"No more IP addresses available on network {subnet['network_id']}.",
        )
    return addr


# Per-process hint: subnet id -> (its pools, an address below which every pool address was seen
# taken), advanced when an allocation commits, lowered when a release commits. It only tells
# where to start looking; every candidate is still checked against the store and claimed, so a
# stale hint (e.g. after a release by another server) costs a rescan, never a duplicate.
_low_water: dict[str, tuple[str, int]] = {}
# Per-process addresses staged by units of work that have not committed yet (subnet id, address)
# -> until when: a concurrent unit of work of this process skips them instead of claiming the same
# address and losing the commit race (with creates on worker threads, N threads would otherwise
# all try the lowest free address and N-1 of them rerun). Only a hint, like `_low_water`: the
# claim is still checked by the store, and an entry left by an aborted unit expires.
_in_flight: dict[tuple[str, int], float] = {}
IN_FLIGHT_SECONDS = 2.0
# Per-process: subnet id -> until when allocations on it pick at random among the first WINDOW
# free addresses (set when an allocation on it reruns: see the module docstring). A hint only.
_contended: dict[str, float] = {}
CONTENDED_SECONDS = 5.0
WINDOW = 32
# Per-process: subnet id -> (its pools, the next address of this process's lane), while the
# subnet is contended (see the module docstring). A hint only, like the others.
_lanes: dict[str, tuple[str, int]] = {}
LANE_DRAWS = 8   # random draws for a free lane start before falling back to the window
LANE_SCAN = 64   # addresses of this process in flight a lane skips before drawing a new lane


def _pools_sig(subnet: dict[str, Any]) -> str:
    return ",".join(f"{p['start']}-{p['end']}" for p in subnet["allocation_pools"])


def _candidates(subnet: dict[str, Any], start_at: int) -> Iterator[int]:
    for pool in subnet["allocation_pools"]:
        start = int(ipaddress.ip_address(pool["start"]))
        end = int(ipaddress.ip_address(pool["end"]))
        yield from range(max(start, start_at), end + 1)


def _lowest_free(uow: UnitOfWork, subnet: dict[str, Any], port_id: str) -> str | None:
    """Claim the lowest free pool address (as far as the hint knows), or None if none is free."""
    sid = subnet["id"]
    sig = _pools_sig(subnet)
    seen = _low_water.get(sid)
    hint = seen[1] if seen and seen[0] == sig else 0
    now = time.monotonic()
    if uow.attempt > 1:
        _contended[sid] = now + CONTENDED_SECONDS
        _lanes.pop(sid, None)  # our lane (if any) met another server's: draw a new one
    contended = _contended.get(sid, 0.0) > now or getattr(uow.repo.store, "shared_by_servers", False)
    if contended:
        n = _lane_pick(uow, subnet, sig, now)
        if n is not None:
            ip = str(ipaddress.ip_address(n))
            uow.claim(ip_key(sid, ip), port_id)
            _in_flight[(sid, n)] = now + IN_FLIGHT_SECONDS
            uow.after_commit.append(lambda sid=sid, n=n: _landed(sid, n))
            return ip
    window = WINDOW if contended else 1
    skipped = False
    for start_at in ((hint, 0) if hint else (0,)):
        free: list[int] = []
        for n in _candidates(subnet, start_at):
            if _in_flight.get((sid, n), 0.0) > now:
                skipped = True
                continue  # another unit of work of this process is claiming it
            if not uow.is_claimed(ip_key(sid, str(ipaddress.ip_address(n)))):
                free.append(n)
                if len(free) == window:
                    break
        if free:
            n = free[0] if len(free) == 1 else random.choice(free)
            ip = str(ipaddress.ip_address(n))
            uow.claim(ip_key(sid, ip), port_id)
            _in_flight[(sid, n)] = now + IN_FLIGHT_SECONDS
            # The hint moves only up to the lowest free address seen: a random pick above it
            # must not hide the free ones below from later (uncontended) allocations.
            uow.after_commit.append(lambda sid=sid, sig=sig, n=n, low=free[0]: _advance(sid, sig, n, low))
            return ip
    # Every free address seemed in flight: let the store decide (ignore the in-flight hint).
    for n in _candidates(subnet, 0) if skipped else ():
        ip = str(ipaddress.ip_address(n))
        if not uow.is_claimed(ip_key(sid, ip)):
            uow.claim(ip_key(sid, ip), port_id)
            uow.after_commit.append(lambda sid=sid, sig=sig, n=n: _advance(sid, sig, n))
            return ip
    return None


def _pool_ranges(subnet: dict[str, Any]) -> list[tuple[int, int]]:
    return [(int(ipaddress.ip_address(p["start"])), int(ipaddress.ip_address(p["end"])))
            for p in subnet["allocation_pools"]]


def _lane_pick(uow: UnitOfWork, subnet: dict[str, Any], sig: str, now: float) -> int | None:
    """The next free address of this process's lane on a contended subnet (a new lane when it
    has none or its lane ran into taken addresses), or None: no free lane start found."""
    sid = subnet["id"]
    ranges = _pool_ranges(subnet)
    size = sum(end - start + 1 for start, end in ranges)
    if size <= 0:
        return None

    def free(n: int) -> bool:
        return (_in_flight.get((sid, n), 0.0) <= now
                and not uow.is_claimed(ip_key(sid, str(ipaddress.ip_address(n)))))

    lane = _lanes.get(sid)
    if lane is not None and lane[0] == sig:
        n = lane[1]
        for start, end in ranges:
            if not start <= n <= end:
                continue
            for m in range(n, min(end, n + LANE_SCAN - 1) + 1):
                if free(m):
                    _lanes[sid] = (sig, m + 1)
                    return m
                if _in_flight.get((sid, m), 0.0) <= now:
                    break  # taken by someone else: the start of another server's lane (see below)
            break
    m = ranges[0][0]
    for _ in range(LANE_DRAWS):  # a new lane: a random free pool address
        k = random.randrange(size)
        for start, end in ranges:
            if k <= end - start:
                m = start + k
                break
            k -= end - start + 1
        if free(m):
            _lanes[sid] = (sig, m + 1)
            return m
    _lanes.pop(sid, None)
    return None


def _advance(subnet_id: str, sig: str, n: int, low: int | None = None) -> None:
    """After a commit that claimed address `n`: it is no longer in flight, and the hint moves up
    to `low` (default `n`), an address below which every pool address was seen taken."""
    _landed(subnet_id, n)
    n = n if low is None else low
    seen = _low_water.get(subnet_id)
    if seen is None or seen[0] != sig or n > seen[1]:
        _low_water[subnet_id] = (sig, n)


def _landed(subnet_id: str, n: int) -> None:
    """Address `n` was committed: it is no longer in flight."""
    _in_flight.pop((subnet_id, n), None)
    if len(_in_flight) > 4096:  # drop what aborted units left behind
        now = time.monotonic()
        for key in [k for k, until in list(_in_flight.items()) if until <= now]:
            _in_flight.pop(key, None)


def _lower(subnet_id: str, ip: str) -> None:
    seen = _low_water.get(subnet_id)
    if seen is None:
        return
    n = int(ipaddress.ip_address(ip))
    if n < seen[1]:
        _low_water[subnet_id] = (seen[0], n)


def release_ip(uow: UnitOfWork, subnet_id: str, ip: str) -> None:
    uow.delete_raw(ip_key(subnet_id, ip))
    uow.after_commit.append(lambda: _lower(subnet_id, ip))


def allocate_mac(uow: UnitOfWork, network_id: str, port_id: str, wanted: str | None = None) -> str:
    """Claim `wanted` (409 MacAddressInUse if taken on this network) or a random fa:16:3e MAC."""
    if wanted is not None:
        if uow.is_claimed(mac_key(network_id, wanted)):
            raise conflict(
                "MacAddressInUse",
                f"Unable to complete operation for network {network_id}. The mac address {wanted} is in use.",
            )
        uow.claim(mac_key(network_id, wanted), port_id)
        return wanted
    for _ in range(32):
        mac = MAC_PREFIX + "".join(f":{random.randrange(256):02x}" for _ in range(3))
        if not uow.is_claimed(mac_key(network_id, mac)):
            uow.claim(mac_key(network_id, mac), port_id)
            return mac
    raise conflict("MacAddressGenerationFailure", f"Unable to generate unique mac on network {network_id}.")


def release_mac(uow: UnitOfWork, network_id: str, mac: str) -> None:
    uow.delete_raw(mac_key(network_id, mac))


def auto_address_ips(uow: UnitOfWork, subnets: list[dict[str, Any]], port_id: str, mac: str,
                     skip: set[str] | None = None) -> list[dict[str, str]]:
    """Claim the port's EUI-64 address on every auto-address subnet (but those in `skip`)."""
    out: list[dict[str, str]] = []
    for s in subnets:
        if ipv6.is_auto_address_subnet(s) and s["id"] not in (skip or set()):
            ip = allocate_ip(uow, s, port_id, ipv6.eui64_address(s["cidr"], mac))
            out.append({"subnet_id": s["id"], "ip_address": ip})
    return out


def allocate_fixed_ips(
    uow: UnitOfWork,
    network: dict[str, Any],
    subnets: list[dict[str, Any]],
    port_id: str,
    requested: list[dict[str, Any]] | None,
    *,
    device_owner: str = "",
    mac: str | None = None,
    add_auto: bool = True,
) -> list[dict[str, str]]:
    """Neutron's fixed_ips semantics for a port on `network`.

    `requested` None: one address from the first IPv4 subnet with free addresses, and one from
    the first IPv6 subnet without automatic addresses. Otherwise each item names `subnet_id`
    and/or `ip_address`; an `ip_address` alone is matched to the network's subnet containing it.
    With `mac` given and `add_auto` (a new port), the EUI-64 addresses of auto-address subnets
    are added for ports that take them (`takes_auto_address`); a subnet-only item on such a
    subnet asks for that address (router interface ports: a pool address).
    """
    by_id = {s["id"]: s for s in subnets}
    out: list[dict[str, str]] = []
    takes_auto = takes_auto_address(device_owner)
    if requested is None:
        # Neutron: each group (IPv4; IPv6 without automatic addresses) yields one address from
        # the first of its subnets with a free one; a group whose every subnet is full fails the port.
        for group in ([s for s in subnets if s["ip_version"] == 4],
                      [s for s in subnets if s["ip_version"] == 6 and not ipv6.is_auto_address_subnet(s)]):
            last_error: ServiceError | None = None
            for s in group:
                try:
                    out.append({"subnet_id": s["id"], "ip_address": allocate_ip(uow, s, port_id,
                                                                                  device_owner=device_owner)})
                    break
                except ServiceError as e:
                    last_error = e
            else:
                if last_error is not None:
                    raise last_error
        if mac is not None and add_auto and takes_auto:
            out += auto_address_ips(uow, subnets, port_id, mac)
        return out
    auto_done: set[str] = set()   # auto-address subnets given their address (a set: requests are lists of ~10^4)
    for item in requested:
        sid = item.get("subnet_id")
        ip = item.get("ip_address")
        if sid is None and ip is None:
            raise bad_request("Invalid input for fixed_ips: each entry needs subnet_id or ip_address")
        if sid is not None:
            subnet = by_id.get(sid)
            if subnet is None:
                raise bad_request(
                    f"Invalid input for operation: Failed to create port on network {network['id']}, "
                    f"because fixed_ips included invalid subnet {sid}.",
                    "InvalidInput",
                )
        else:
            subnet = next((s for s in subnets if in_subnet(s, ip)), None)  # type: ignore[arg-type]
            if subnet is None:
                raise bad_request(
                    f"IP address {ip} is not a valid IP for any of the subnets on the specified network.",
                    "InvalidIpForNetwork",
                )
        if ipv6.is_auto_address_subnet(subnet):  # Neutron's _test_fixed_ips_for_port
            if ip is not None and device_owner not in ROUTER_INTERFACE_OWNERS:
                raise bad_request(f"IPv6 address {ip} cannot be directly assigned to a port on subnet "
                                  f"{subnet['id']} as the subnet is configured for automatic addresses",
                                  "InvalidInput")
            if ip is None and takes_auto:  # the port's EUI-64 address (router ports: a pool address)
                if subnet["id"] in auto_done:
                    continue  # asked twice
                auto_done.add(subnet["id"])
                if mac is None:
                    raise bad_request(f"Invalid input for fixed_ips: subnet {subnet['id']} gives automatic "
                                      "addresses only")
                ip = ipv6.eui64_address(subnet["cidr"], mac)
        out.append({"subnet_id": subnet["id"], "ip_address": allocate_ip(uow, subnet, port_id, ip, device_owner)})
    if mac is not None and add_auto and takes_auto:
        out += auto_address_ips(uow, subnets, port_id, mac, skip={o["subnet_id"] for o in out})
    return out


VNI_MIN = 1001
VNI_MAX = 16_000_000


def vni_key(vni: int) -> str:
    """The claim of one VXLAN network identifier."""
    return f"{ROOT}vni/{vni}"


def allocate_vni(uow: UnitOfWork, network_id: str, wanted: int | None) -> int:
    """Claim a VNI: the wanted one (409 SegmentationIdInUse if taken) or the lowest free one."""
    if wanted is not None:
        if not VNI_MIN <= wanted <= VNI_MAX and not 1 <= wanted <= VNI_MAX:
            raise bad_request(f"Invalid input for operation: segmentation_id {wanted} out of range")
        key = vni_key(wanted)
        if uow.is_claimed(key):
            raise conflict("SegmentationIdInUse", f"Unable to create the network. The VXLAN {wanted} is in use.")
        uow.claim(key, network_id)
        return wanted
    kvs, _ = uow.repo.store.range(f"{ROOT}vni/")
    keys = {kv.key for kv in kvs} | uow.claimed_under(f"{ROOT}vni/")  # a bulk create claims several
    used = {int(k.rsplit("/", 1)[1]) for k in keys}
    vni = VNI_MIN
    while vni in used:
        vni += 1
    uow.claim(vni_key(vni), network_id)
    return vni
