"""A port-up's nft transaction with each port's anti-spoofing chain in a table of its own (a lab).

Measured, not built (issue 18). The question: the kernel validates every chain of a table a
transaction adds a rule or a `jump` element to (docs/benchmarks.md, `nft_jump_lab`), so a
port-up that adds `ps_<port>` to `bridge vxnet_ps` pays a walk of every port's `ps_` chain.
Would a per-port `table netdev` (an ingress base chain on the tap holding the same rules) make
the port-up's anti-spoofing part validate only its own small table?

In its own network namespace (the process unshares one; run it under tools/sandbox), per N
local ports, with a tap device (`ip tuntap`) per tap name (a netdev base chain needs its device):
- `today`: today's tables (`compute_firewall` of bench/firewall_bench.py's view) and the
  driver's port-up (`diff_table` of the three tables: `ps_`/`mk_` chains, map and set elements);
- `netdev`: the same tables without `pre`, `pre_ports` and the `ps_` chains, and per port an
  ingress base chain on the tap (priority -200) holding the port's `ps_` rules verbatim
  (`netdev_tables`): `--layout tables`, in a `table netdev vxnd_<port>` of its own; `--layout
  chains` (default), as chain `ps_<port>` of one `table netdev vxnd`; its port-up is that
  port's netdev chain (and table) plus the rest of today's port-up (`mk_` chain, `out_ports`,
  the inet elements);
- `netdev-alone`: only the new port's netdev chain (and table): the anti-spoofing part alone;
- `bridge-ps`: only the `ps_` chain and `pre_ports` element of today's port-up (the same part
  in today's table).
The forms load into one namespace holding both table sets (the netdev form's `bridge` table is
`vxnd_ps`, next to today's `vxnet_ps`), each round in a rotated order, each as one transaction
through the agent's executor after 10 ms idle (its thread's CPU and wall, as nft_jump_lab),
then undone untimed, so every round meets N ports. Usage: `tools/sandbox .venv/bin/python -m
bench.nft_netdev_lab --sizes 33,100,300 --rounds 30`. Contract: only its own namespace;
figures never invented.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from typing import Any

FORMS = ("today", "netdev", "netdev-alone", "bridge-ps")
ND_PS = "vxnd_ps"             # the netdev form's bridge table (what is left of vxnet_ps)
ND_TABLE = "vxnd"             # layout "chains": the one netdev table of every port's chain
_PS_PART = re.compile(r"pre_ports| ps_")


def netdev_table(tap: str, ident: str, rules: list[str], layout: str = "tables") -> list[str]:
    """A port's anti-spoofing rules as an ingress base chain on its tap: in a table of its own
    (`layout` "tables": `netdev vxnd_<port>`, chain `in`) or in the one shared table ("chains":
    `netdev vxnd`, chain `ps_<port>`)."""
    t, c = (f"netdev vxnd_{ident}", "in") if layout == "tables" else (f"netdev {ND_TABLE}", f"ps_{ident}")
    return [f"add table {t}",
            f'add chain {t} {c} {{ type filter hook ingress device "{tap}" priority -200; policy accept; }}',
            f"add chain {t} {c} {{ " + " ".join(r + ";" for r in rules) + " }"]


def netdev_undo(ident: str, layout: str = "tables") -> list[str]:
    """The commands removing what `netdev_table` added."""
    if layout == "tables":
        return [f"delete table netdev vxnd_{ident}"]
    return [f"flush chain netdev {ND_TABLE} ps_{ident}", f"delete chain netdev {ND_TABLE} ps_{ident}"]


def netdev_tables(bridge_text: str, ports: list[Any], layout: str = "tables") -> list[str]:
    """The netdev form of today's bridge table text (`table_text`): the table renamed to
    `vxnd_ps` without `pre`, `pre_ports` and the `ps_` chains; and every port's netdev chain."""
    out = []
    for line in bridge_text.splitlines():
        if _PS_PART.search(line) or " pre " in line + " ":
            continue
        out.append(line.replace("bridge vxnet_ps", f"bridge {ND_PS}"))
    for p in ports:
        out += netdev_table(p.tap, p.ident, port_rules(p), layout)
    return out


def port_rules(p: Any) -> list[str]:
    """A port's anti-spoofing rules as its own chain held them (the per-port `ps_<port>` chain
    before session 18 for a port of one MAC and one IPv4 address, as this lab's ports are:
    plain comparisons; since then no port has a chain of its own in the bridge table, and this
    lab's netdev form keeps the per-port chain)."""
    from vxnet.compute.nft_table import nft_rule

    (mac, addr), = p.pairs
    rules = [nft_rule("udp sport 67", "drop", "dhcp-server"),
             nft_rule(f"ether saddr {mac} ip saddr {addr}", f"meta mark set {p.index:#x} accept", "mark"),
             nft_rule(f"ether saddr != {mac}", "drop", "spoof-mac"),
             nft_rule(f"arp saddr ether != {mac}", "drop", "spoof-arp"),
             nft_rule(f"arp saddr ip != {addr} arp saddr ip != 0.0.0.0", "drop", "spoof-arp"),
             nft_rule("ether type arp", "accept", "arp"),
             nft_rule("ip saddr 0.0.0.0 udp sport 68 udp dport 67", "accept", "dhcp-client"),
             nft_rule("ether type ip", "drop", "spoof-ip"), nft_rule("ether type ip6", "drop", "spoof-ip6"),
             nft_rule("", "drop", "other")]
    return [r.text for r in rules]


def split_port_up(cmds: list[str]) -> tuple[list[str], list[str]]:
    """Today's port-up commands as (its anti-spoofing part: the `ps_` chain and `pre_ports`
    element; the rest)."""
    ps = [c for c in cmds if _PS_PART.search(c)]
    return ps, [c for c in cmds if not _PS_PART.search(c)]


def _taps(taps: list[str]) -> None:
    script = "".join(f"tuntap add dev {t} mode tap\n" for t in taps)
    subprocess.run(["ip", "-batch", "-"], input=script, text=True, check=True)


def measure(sizes: list[int], rounds: int, layout: str = "tables") -> dict[str, Any]:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.firewall_bench import _view
    from bench.nft_jump_lab import _cpu_run
    from vxnet.compute.firewall import compute_firewall
    from vxnet.compute.nft_table import table_text
    from vxnet.dataplane.nft_driver import diff_table
    from vxnet.dataplane.nft_exec import NftExecutor

    out: dict[str, Any] = {}
    made: set[str] = set()
    for n in sizes:
        ex = NftExecutor()
        fw, new = compute_firewall(_view(n), "h1"), compute_firewall(_view(n + 1), "h1")
        taps = [p.tap for p in new.ports if p.tap not in made]
        _taps(taps)
        made.update(taps)
        texts = [table_text(t) for t in fw.tables]
        nd = netdev_tables(texts[0], list(fw.ports), layout)
        _cpu_run(ex, "flush ruleset\n" + "".join(texts) + "\n".join(nd) + "\n", f"loading {n} ports")
        today = [c for t, o in zip(new.tables, fw.tables, strict=True) for c in diff_table(o, t)]
        back = [c for t, o in zip(new.tables, fw.tables, strict=True) for c in diff_table(t, o)]
        p = next(q for q in new.ports if fw.port(q.port_id) is None)
        ps_up, rest_up = split_port_up(today)
        ps_back, rest_back = split_port_up(back)
        alone = netdev_table(p.tap, p.ident, port_rules(p), layout)
        alone_back = netdev_undo(p.ident, layout)
        bridge_rest = [c.replace("bridge vxnet_ps", f"bridge {ND_PS}") for c in rest_up]
        bridge_rest_back = [c.replace("bridge vxnet_ps", f"bridge {ND_PS}") for c in rest_back]
        forms = {"today": (today, back), "netdev": (alone + bridge_rest, alone_back + bridge_rest_back),
                 "netdev-alone": (alone, alone_back), "bridge-ps": (ps_up, ps_back)}
        res: dict[str, dict[str, list[float]]] = {f: {"cpu": [], "wall": []} for f in FORMS}
        for k in range(rounds):
            for f in FORMS[k % len(FORMS):] + FORMS[:k % len(FORMS)]:
                cmds, rev = forms[f]
                cpu, wall = _cpu_run(ex, "\n".join(cmds) + "\n", f"{f} at {n}")
                res[f]["cpu"].append(cpu)
                res[f]["wall"].append(wall)
                if (err := ex.run("\n".join(rev) + "\n")) is not None:
                    raise RuntimeError(f"undoing {f} at {n}: {err}")
        ex.close()
        out[str(n)] = {"forms": res, "commands": {f: len(c) for f, (c, _) in forms.items()},
                       "chains": sum(len(t.chains) for t in fw.tables)}
    return out


def probe(n: int, rounds: int) -> list[tuple[str, float]]:
    """What a trivial transaction (`add table inet probe; add chain inet probe c`, then removed)
    costs, CPU p50 ms, in the empty namespace and beside `n` netdev tables, `n` netdev base
    chains in one table, `n` regular chains in one bridge table."""
    from bench.nft_jump_lab import _cpu_run
    from vxnet.dataplane.nft_exec import NftExecutor

    ex = NftExecutor()
    _taps([f"tp{i}" for i in range(n)])
    hook = 'type filter hook ingress device "tp{}" priority -200; policy accept;'
    setups = [("empty namespace", ""),
              (f"{n} netdev tables (no chain)", "".join(f"add table netdev n{i}\n" for i in range(n))),
              (f"{n} netdev tables, an ingress base chain each",
               "".join(f"add table netdev n{i}\nadd chain netdev n{i} in {{ {hook.format(i)} }}\n" for i in range(n))),
              (f"one netdev table, {n} ingress base chains",
               "add table netdev one\n" + "".join(f"add chain netdev one in{i} {{ {hook.format(i)} }}\n" for i in range(n))),
              (f"one bridge table, {n} regular chains",
               "add table bridge b\n" + "".join(f"add chain bridge b c{i}\n" for i in range(n)))]
    out = []
    for name, setup in setups:
        _cpu_run(ex, "flush ruleset\n" + setup, name)
        cpu = []
        for _ in range(rounds):
            cpu.append(_cpu_run(ex, "add table inet probe\nadd chain inet probe c\n", name)[0])
            ex.run("delete table inet probe\n")
        out.append((name, statistics.median(cpu)))
    ex.close()
    return out


def main(argv: list[str] | None = None) -> int:
    from bench.nft_jump_lab import _private_netns

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="33,100,300")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--layout", choices=("tables", "chains"), default="chains",
                    help="tables: a netdev table per port; chains: one netdev table, a base chain per port")
    ap.add_argument("--probe", type=int, metavar="N",
                    help="instead: a trivial transaction's CPU beside N netdev tables, chains... (`probe`)")
    a = ap.parse_args(argv)
    _private_netns()
    load0 = os.getloadavg()
    if a.probe:
        for name, ms in probe(a.probe, a.rounds):
            print(f"| {name} | {ms:.2f} |")
        print(f"load (1 min) {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}; CPU p50 of {a.rounds} trivial transactions")
        return 0
    res = measure([int(x) for x in a.sizes.split(",")], a.rounds, a.layout)
    load1 = os.getloadavg()
    print(f"load (1 min) {load0[0]:.1f} -> {load1[0]:.1f}; {a.rounds} rounds, forms rotated each round; "
          f"netdev layout: {a.layout}")
    print("| local ports (today's chains) | form | commands | CPU p50 (min) ms | wall p50 (min) ms |")
    print("|---|---|---|---|---|")
    for n, r in res.items():
        for f in FORMS:
            cpu, wall = r["forms"][f]["cpu"], r["forms"][f]["wall"]
            print(f"| {n} ({r['chains']}) | {f} | {r['commands'][f]} | {statistics.median(cpu):.2f} ({min(cpu):.2f})"
                  f" | {statistics.median(wall):.2f} ({min(wall):.2f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
