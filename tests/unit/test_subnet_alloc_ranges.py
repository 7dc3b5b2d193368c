"""Subnet pool arithmetic (services/subnet_alloc.py): free blocks, overlap and removal on merged
integer ranges. `free_blocks` was quadratic (each allocated prefix a pass over every free block
with `address_exclude`): a pool with 2*10^4 subnets took minutes of CPU per allocation. Counted
in prefix parses and comparisons, not timed; the answers are the old implementation's."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vxnet.services import subnet_alloc


def _old_free_blocks(prefixes: Iterable[str], allocated: Iterable[str]) -> list[Any]:
    """The implementation before session 15, the reference."""
    nets = [ipaddress.ip_network(p, strict=False) for p in prefixes]
    free: list[Any] = list(ipaddress.collapse_addresses(nets))  # type: ignore[type-var]
    for a in allocated:
        used = ipaddress.ip_network(a)
        nxt: list[Any] = []
        for block in free:
            if block.version != used.version or not block.overlaps(used):
                nxt.append(block)
            elif block.subnet_of(used):
                continue
            else:
                nxt.extend(block.address_exclude(used))
        free = nxt
    return list(ipaddress.collapse_addresses(free))  # type: ignore[type-var]


def _v4(draw: Any) -> str:
    length = draw(st.integers(14, 30))
    addr = draw(st.integers(0, (1 << 22) - 1)) + int(ipaddress.ip_address("100.64.0.0"))
    return str(ipaddress.ip_network((addr, length), strict=False))


def _v6(draw: Any) -> str:
    length = draw(st.integers(34, 126))
    addr = (draw(st.integers(0, (1 << 96) - 1)) << 0) + int(ipaddress.ip_address("2001:db8::"))
    return str(ipaddress.ip_network((addr, length), strict=False))


@st.composite
def _case(draw: Any) -> tuple[list[str], list[str]]:
    make = draw(st.sampled_from([_v4, _v6]))
    prefixes = [make(draw) for _ in range(draw(st.integers(1, 6)))]
    allocated = [make(draw) for _ in range(draw(st.integers(0, 12)))]
    # most allocations lie inside the pool, as subnets do: a block of one of its prefixes
    for p in prefixes:
        net = ipaddress.ip_network(p)
        if draw(st.booleans()) and net.prefixlen < net.max_prefixlen:
            sub = draw(st.integers(net.prefixlen + 1, min(net.max_prefixlen, net.prefixlen + 6)))
            allocated += [str(s) for s in draw(st.lists(st.sampled_from(list(net.subnets(new_prefix=sub))[:64]),
                                                        max_size=8, unique=True))]
    return prefixes, allocated


@settings(max_examples=400, deadline=None)
@given(_case())
def test_free_blocks_are_the_old_implementations(case: tuple[list[str], list[str]]) -> None:
    prefixes, allocated = case
    assert subnet_alloc.free_blocks(prefixes, allocated) == _old_free_blocks(prefixes, allocated)
    assert subnet_alloc.compact(prefixes) == [str(n) for n in _old_free_blocks(prefixes, [])]
    assert subnet_alloc.overlaps(prefixes, allocated) == any(
        ipaddress.ip_network(p).overlaps(ipaddress.ip_network(a))  # type: ignore[arg-type]
        for p in prefixes for a in allocated if ipaddress.ip_network(p).version == ipaddress.ip_network(a).version)


def test_free_blocks_of_a_pool_with_many_subnets_do_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 /28s allocated every other block of a /10: 20,000 fragments of free space. The old
    code compared every allocation with every free block (~2*10^8 comparisons); the work
    counted here (prefix parses, network comparisons and exclusions, range summaries) is a
    few per prefix."""
    n = 20_000
    base = int(ipaddress.ip_address("100.64.0.0"))
    allocated = [str(ipaddress.ip_network((base + 32 * i, 28))) for i in range(n)]
    work = 0
    real_parse, real_summarize = ipaddress.ip_network, ipaddress.summarize_address_range

    def parse(*args: Any, **kw: Any) -> Any:
        nonlocal work
        work += 1
        return real_parse(*args, **kw)

    def summarize(*args: Any, **kw: Any) -> Any:
        nonlocal work
        work += 1
        return real_summarize(*args, **kw)

    monkeypatch.setattr(ipaddress, "ip_network", parse)
    monkeypatch.setattr(ipaddress, "summarize_address_range", summarize)
    for name in ("overlaps", "subnet_of", "supernet_of", "address_exclude", "__lt__", "__eq__"):
        real = getattr(ipaddress._BaseNetwork, name)

        def counted(*args: Any, _real: Any = real, **kw: Any) -> Any:
            nonlocal work
            work += 1
            return _real(*args, **kw)

        monkeypatch.setattr(ipaddress._BaseNetwork, name, counted)
    free = subnet_alloc.free_blocks(["100.64.0.0/10"], allocated)
    assert work < 5 * n, work
    assert len(free) > n and str(free[0]) == "100.64.0.16/28" and str(free[-1]) == "100.96.0.0/11"
