"""bench/nft_netdev_lab.py's pure parts: today's bridge table split into what stays in a bridge
table and one netdev table per port (its anti-spoofing rules verbatim), and a port-up split into
its anti-spoofing part and the rest."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bench import nft_netdev_lab as nl
from bench.firewall_bench import _view
from vxnet.compute.firewall import compute_firewall
from vxnet.compute.nft_table import table_text
from vxnet.dataplane.nft_driver import diff_table


def test_netdev_tables_move_each_ports_rules_to_its_own_table() -> None:
    fw = compute_firewall(_view(3), "h1")
    text = table_text(fw.tables[0])
    lines = nl.netdev_tables(text, list(fw.ports), "tables")
    assert not any("vxnet_ps" in c or "pre_ports" in c or " ps_" in c for c in lines)
    assert any(c.startswith(f"add chain bridge {nl.ND_PS} mk_") for c in lines)
    assert not any(c.startswith(f"add chain bridge {nl.ND_PS} pre") for c in lines)
    for p in fw.ports:
        rules = nl.port_rules(p)
        assert rules and nl.netdev_table(p.tap, p.ident, rules) == lines[lines.index(f"add table netdev vxnd_{p.ident}"):][:3]
        assert f'device "{p.tap}"' in lines[lines.index(f"add table netdev vxnd_{p.ident}") + 1]


def test_a_port_up_splits_into_its_anti_spoofing_part_and_the_rest() -> None:
    fw, new = compute_firewall(_view(3), "h1"), compute_firewall(_view(4), "h1")
    cmds = [c for t, o in zip(new.tables, fw.tables, strict=True) for c in diff_table(o, t)]
    ps, rest = nl.split_port_up(cmds)
    assert sorted(ps + rest) == sorted(cmds)
    # since session 16 the anti-spoofing part is elements: `pre_ports` and the shared chain's sets
    assert ps and all("pre_ports" in c or " ps_" in c for c in ps) and any("pre_ports" in c for c in ps)
    assert any(" mk_" in c for c in rest) and not any("pre_ports" in c for c in rest)


def test_the_chains_layout_puts_every_port_in_one_netdev_table() -> None:
    fw = compute_firewall(_view(3), "h1")
    lines = nl.netdev_tables(table_text(fw.tables[0]), list(fw.ports), "chains")
    assert {c for c in lines if c.startswith("add table netdev")} == {f"add table netdev {nl.ND_TABLE}"}
    for p in fw.ports:
        assert any(c.startswith(f"add chain netdev {nl.ND_TABLE} ps_{p.ident} {{ type filter hook ingress "
                                f'device "{p.tap}"') for c in lines)
    assert nl.netdev_undo("x", "chains") == [f"flush chain netdev {nl.ND_TABLE} ps_x",
                                             f"delete chain netdev {nl.ND_TABLE} ps_x"]
