"""bench/nft_jump_lab.py's pure parts: the lab's ports as firewall_bench's view has them, the
data-driven tables (no per-port chain, every port a set of elements), a data-driven port-up
(elements only, in the driver's cache-free form; verdicts only in the vmap variant) and the undo
of a lab transaction."""

from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from bench import nft_jump_lab as jl
from bench.firewall_bench import _view
from vxnet.compute.naming import tap_name

G = "9a00000000004000800000000000000a"


def test_lab_port_is_the_views_port() -> None:
    view = _view(300)
    for i in (0, 7, 299):
        port = next(p for p in view["ports"].values() if p["id"].startswith(f"{i:08x}-"))
        lp = jl.lab_port(i)
        assert (lp.ifname, lp.mac, lp.ip) == (tap_name(port["id"]), port["mac_address"],
                                              port["fixed_ips"][0]["ip_address"])
    assert len({jl.lab_port(i).mark for i in range(300)}) == 300


def test_data_port_up_is_elements_only() -> None:
    cmds = jl.port_elements(jl.lab_port(5), G)
    assert cmds and all(re.match(r"^add (set|map) (bridge vxjl_ps|inet vxjl_sg) \S+ \{ type [^;]+; elements = \{ .+ \}; \}$", c)
                        for c in cmds)
    assert not any("jump" in c or "chain" in c for c in cmds)
    assert any('"tap00000005-9e" . 02:00:00:00:00:05 . 100.64.0.5' in c for c in cmds)
    vm = jl.port_elements(jl.lab_port(5), G, vmap=True)
    assert [c for c in vm if "jump" in c] == [
        f"add map inet vxjl_sg eg_groups {{ type mark : verdict; elements = {{ 0x00000006 : jump ge_{G} }}; }}",
        f"add map inet vxjl_sg in_groups {{ type mark : verdict; elements = {{ 0x00060000 : jump gi_{G} }}; }}"]
    assert len(vm) == len(cmds)


def test_data_tables_have_no_per_port_chain() -> None:
    def chains(text: str) -> list[str]:
        return [c for c in text.splitlines() if c.startswith("add chain ")]

    small = jl.data_tables([jl.lab_port(i) for i in range(3)], G, ["counter accept"])
    big = jl.data_tables([jl.lab_port(i) for i in range(30)], G, ["counter accept"])
    assert chains(small) == chains(big) and len(chains(big)) == 6
    assert f"add rule inet vxjl_sg gi_{G} counter accept" in big
    assert big.count("tap0000001d-9e") == 6 and "tap0000001e-9e" not in big     # ports 0..29: 5 sets, 2 ARP elements
    for d in ("egress", "ingress"):     # a port's group membership: a set matched before the group's jump
        assert re.search(rf"add rule inet vxjl_sg {d} meta mark and 0x\w+ @\w+_{G} counter jump g[ei]_{G}", big)


def test_undo_removes_elements_then_chains() -> None:
    cmds = ["add chain bridge t ps_1",
            'add map bridge t pre { type ifname : verdict; elements = { "tap1" : jump ps_1 }; }',
            "add chain bridge t ps_1 { counter drop; }",
            "add set inet t s { type ipv4_addr; elements = { 192.0.2.1 }; }"]
    assert jl.undo(cmds) == ["delete element inet t s { 192.0.2.1 }",
                             'delete element bridge t pre { "tap1" : jump ps_1 }',
                             "delete chain bridge t ps_1"]


def test_without_verdicts_keeps_matches_and_counters() -> None:
    ps = ('add chain bridge vxnet_ps ps_1 { udp sport 67 counter drop comment "a"; ether saddr 02:00:00:00:00:01 '
          'ip saddr 100.64.0.1 counter meta mark set 0x1 accept comment "b"; counter drop comment "c"; }')
    assert jl.without_verdicts(ps) == ('add chain bridge vxnet_ps ps_1 { udp sport 67 counter comment "a"; ether saddr '
                                      '02:00:00:00:00:01 ip saddr 100.64.0.1 counter comment "b"; counter comment "c"; }')
    eg = 'add chain inet vxnet_sg eg_1 { ct state invalid counter drop comment "d"; counter jump ge_g comment "e"; }'
    assert jl.without_verdicts(eg) == 'add chain inet vxnet_sg eg_1 { ct state invalid counter comment "d"; counter comment "e"; }'
    mk = 'add chain bridge vxnet_ps mk_1 { counter meta mark set meta mark and 0x0000ffff or 0x10000 comment "f"; }'
    assert jl.without_verdicts(mk) == 'add chain bridge vxnet_ps mk_1 { counter comment "f"; }'
