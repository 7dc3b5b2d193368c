"""bench/nft_mk_lab.py's pure parts: the table of per-port out-mark chains and one port's
chain and element (with their undo)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bench import nft_mk_lab as ml
from bench.firewall_bench import _view
from vxnet.compute.firewall import compute_firewall


def test_one_chain_per_port_dispatched_by_its_tap() -> None:
    fw = compute_firewall(_view(3), "h1")
    text = ml.mk_table(list(fw.ports))
    for p in fw.ports:
        assert f"add chain bridge vxnet_mk mk_{p.ident} {{ meta mark set meta mark and 0x0000ffff or {p.index << 16:#010x}" in text
        assert f'"{p.tap}" : jump mk_{p.ident}' in text
    assert text.rstrip().endswith("add rule bridge vxnet_mk out oifname vmap @mk_ports counter")


def test_a_port_up_and_its_undo() -> None:
    p = compute_firewall(_view(1), "h1").ports[0]
    up, back = ml.mk_port_up(p)
    assert up[0].startswith(f"add chain bridge vxnet_mk mk_{p.ident} {{") and f'"{p.tap}" : jump mk_{p.ident}' in up[1]
    assert back == [f'delete element bridge vxnet_mk mk_ports {{ "{p.tap}" }}', f"flush chain bridge vxnet_mk mk_{p.ident}",
                    f"delete chain bridge vxnet_mk mk_{p.ident}"]
