"""bench/nft_portup_bench.py's view: `--nft-v6` makes every port dual-stack (IPv6 pairs, so the
port-ups measured are those of `ps6`'s ports), without it no port has IPv6 pairs."""

from __future__ import annotations

from bench.nft_portup_bench import _fw


def test_the_v6_flag_makes_every_port_dual_stack() -> None:
    v6, v4 = _fw(3, True), _fw(3, False)
    assert [len(p.pairs6) for p in v6.ports] == [2, 2, 2]          # its address and its link-local
    assert all(p.pairs for p in v6.ports) and not any(p.pairs6 for p in v4.ports)
    assert {p.pairs for p in v6.ports} == {p.pairs for p in v4.ports}
