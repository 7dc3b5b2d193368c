"""A port-up's nft transaction without new chains or jumps: what it would cost (issue 18, a lab).

Measured, not built. In its own network namespace (run it under tools/sandbox), per N local
ports: the firewall tables of N ports the current way (bench/firewall_bench.py's synthetic view,
`compute_firewall`, loaded as the agent does) and, next to them, a data-driven table of the same
N ports (`data_tables`: port security as per-table rules on concatenated sets, a port's group
membership as a set element matched by a rule that jumps to the EXISTING group chain; a port-up
adds elements only). Then, per round, interleaved, each form's commands as one transaction
(libnftables in-process, the agent's executor), after 10 ms idle, its CPU (the thread's CPU
time: libnftables and the kernel's synchronous netlink work; not the commit's deferred release
on a kworker) and wall; then the same objects removed again (not timed), so every round runs
against N ports:
- `today`: the driver's commands of a port-up (`diff_table`: 2 + 2 chains, 4 verdict-map
  elements `jump <new chain>`, 2 plain set elements);
- `chains`: only those chains (declared and filled), no verdict-map element;
- `chains-plain`: the same chains, their rules without any verdict, `jump` or `meta mark set`
  (`without_verdicts`: matches, counters and comments only);
- `chains-empty`: only the 4 chain declarations, no rule;
- `vmap-jump`: only the 4 verdict-map elements, each a `jump` to an existing chain (port 0's);
- `set-elems`: only plain data elements: the 2 set elements of today's port-up and one
  `ifname . ether_addr . ipv4_addr` element of a concatenated set;
- `data`: a port-up on the data-driven table, elements only, none a verdict;
- `data-vmap`: the same, with the group membership as 2 verdict-map elements `jump ge_/gi_<group>`
  (existing chains) instead of 2 set elements.
`--tables data`: only the data-driven tables in the namespace, only the last two forms (what a
data-driven agent's port-up would meet); `--tables today`: only today's tables, the first four.
Contract: only its own network namespace (the process unshares one first); figures never
invented. Usage: `tools/sandbox .venv/bin/python -m bench.nft_jump_lab --sizes 33,100,300
--rounds 30`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

FORMS = ("today", "chains", "chains-plain", "chains-empty", "vmap-jump", "set-elems", "data", "data-vmap")
DT = "vxjl"                     # the data-driven tables' name (bridge vxjl_ps, inet vxjl_sg)
_JUMP = re.compile(r": jump (\S+) \}")


@dataclass(frozen=True)
class Port:
    """A local port as the data-driven tables key it."""

    ifname: str
    mac: str
    ip: str
    mark: int                   # 16-bit port mark (egress: low half, ingress: high half)


def lab_port(i: int) -> Port:
    """Port `i` of the lab's view (bench/firewall_bench.py `_view`: same tap name, MAC, IPv4)."""
    return Port(f"tap{i:08x}-9e", f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                f"100.{64 + (i >> 16)}.{i >> 8 & 255}.{i & 255}", 1 + i % 0xfffe)


_PS_TYPES = {"ports": ("set", "ifname"), "allowed": ("map", "ifname . ether_addr . ipv4_addr : mark"),
             "macs": ("set", "ifname . ether_addr"), "arp_ok": ("set", "ifname . ether_addr . ipv4_addr"),
             "out_marks": ("map", "ifname : mark")}
_SG_TYPES = {"ports_eg": ("set", "mark"), "ports_in": ("set", "mark"), "rg": ("set", "ipv4_addr"),
             "ct_macs": ("set", "ether_addr"), "eg": ("set", "mark"), "in": ("set", "mark"),
             "eg_groups": ("map", "mark : verdict"), "in_groups": ("map", "mark : verdict")}


def _elems(table: str, name: str, kind_type: tuple[str, str], elems: str) -> str:
    """One set's new elements as the driver writes them (cache-free: the set's declaration with
    its elements, so libnftables needs no listing of the ruleset)."""
    return f"add {kind_type[0]} {table} {name} {{ type {kind_type[1]}; elements = {{ {elems} }}; }}"


def port_elements(p: Port, group: str, vmap: bool = False) -> list[str]:
    """A port-up on the data-driven tables: element commands only (`vmap`: the group membership
    as verdict-map elements jumping to the existing group chains instead of set elements)."""
    ps, sg = f"bridge {DT}_ps", f"inet {DT}_sg"
    eg, ing = f"0x{p.mark:08x}", f"0x{p.mark << 16:08x}"
    out = [_elems(ps, "ports", _PS_TYPES["ports"], f'"{p.ifname}"'),
           _elems(ps, "allowed", _PS_TYPES["allowed"], f'"{p.ifname}" . {p.mac} . {p.ip} : {eg}'),
           _elems(ps, "macs", _PS_TYPES["macs"], f'"{p.ifname}" . {p.mac}'),
           _elems(ps, "arp_ok", _PS_TYPES["arp_ok"], f'"{p.ifname}" . {p.mac} . {p.ip}, "{p.ifname}" . {p.mac} . 0.0.0.0'),
           _elems(ps, "out_marks", _PS_TYPES["out_marks"], f'"{p.ifname}" : {ing}'),
           _elems(sg, "ports_eg", _SG_TYPES["ports_eg"], eg),
           _elems(sg, "ports_in", _SG_TYPES["ports_in"], ing),
           _elems(sg, f"rg_{group}", _SG_TYPES["rg"], p.ip),
           _elems(sg, "ct_macs", _SG_TYPES["ct_macs"], p.mac)]
    if vmap:
        out += [_elems(sg, "eg_groups", _SG_TYPES["eg_groups"], f"{eg} : jump ge_{group}"),
                _elems(sg, "in_groups", _SG_TYPES["in_groups"], f"{ing} : jump gi_{group}")]
    else:
        out += [_elems(sg, f"eg_{group}", _SG_TYPES["eg"], eg), _elems(sg, f"in_{group}", _SG_TYPES["in"], ing)]
    return out


def undo(cmds: list[str]) -> list[str]:
    """The commands that remove what `cmds` added (elements first, then chains, in reverse)."""
    elems = [re.sub(r"^add element ", "delete element ", c) for c in as_elements(cmds) if c.startswith("add element ")]
    chains = [f"delete chain {' '.join(c.split()[2:5])}" for c in cmds
              if c.startswith("add chain ") and "{" not in c]
    return elems[::-1] + chains[::-1]


def without_verdicts(cmd: str) -> str:
    """A chain command's rules with no verdict, `jump` or `meta mark set` left (the matches,
    counters and comments stay)."""
    cmd = re.sub(r"meta mark set .*? (accept |drop )?comment", "comment", cmd)
    return re.sub(r" (?:accept|drop|jump \S+) comment", " comment", cmd)


def as_elements(cmds: list[str]) -> list[str]:
    """The driver's `add set|map NAME { type ...; elements = { E }; }` as `add element NAME { E }`."""
    out = []
    for c in cmds:
        m = re.match(r"^add (?:set|map) (\S+ \S+ \S+) \{ .*elements = (\{ .* \}); \}$", c)
        out.append(f"add element {m.group(1)} {m.group(2)}" if m else c)
    return out


def data_tables(ports: list[Port], group: str, group_rules: list[str]) -> str:
    """The data-driven tables of `ports` (all in `group`): a fixed set of chains (the hooks and
    the group's two chains, `group_rules` its ingress rules as today's `gi_` chain has them),
    every per-port fact an element. The bridge table's mark for the inet table is the port's
    mark (`allowed`'s value) on the way in and `out_marks` on the way out (today's `mk_` chain
    also keeps the low half: not expressible with a map value; a simplification of the lab)."""
    ps, sg = f"bridge {DT}_ps", f"inet {DT}_sg"
    lines = [f"add table {ps}", f"delete table {ps}", f"add table {ps}",
             f"add set {ps} ports {{ type ifname; }}",
             f"add map {ps} allowed {{ type ifname . ether_addr . ipv4_addr : mark; }}",
             f"add set {ps} macs {{ type ifname . ether_addr; }}",
             f"add set {ps} arp_ok {{ type ifname . ether_addr . ipv4_addr; }}",
             f"add map {ps} out_marks {{ type ifname : mark; }}",
             f"add chain {ps} pre {{ type filter hook prerouting priority -200; policy accept; }}",
             f"add chain {ps} out {{ type filter hook forward priority -100; policy accept; }}",
             f"add rule {ps} pre iifname != @ports accept",
             f"add rule {ps} pre udp sport 67 counter drop",
             f"add rule {ps} pre ether type ip meta mark set iifname . ether saddr . ip saddr map @allowed counter accept",
             f"add rule {ps} pre iifname . ether saddr != @macs counter drop",
             f"add rule {ps} pre iifname . arp saddr ether . arp saddr ip != @arp_ok counter drop",
             f"add rule {ps} pre ether type arp counter accept",
             f"add rule {ps} pre ip saddr 0.0.0.0 udp sport 68 udp dport 67 counter accept",
             f"add rule {ps} pre counter drop",
             f"add rule {ps} out meta mark set oifname map @out_marks counter",
             f"add table {sg}", f"delete table {sg}", f"add table {sg}",
             f"add set {sg} rg_{group} {{ type ipv4_addr; }}",
             f"add set {sg} ct_macs {{ type ether_addr; }}",
             f"add set {sg} ports_eg {{ type mark; }}", f"add set {sg} ports_in {{ type mark; }}",
             f"add set {sg} eg_{group} {{ type mark; }}", f"add set {sg} in_{group} {{ type mark; }}",
             f"add map {sg} eg_groups {{ type mark : verdict; }}", f"add map {sg} in_groups {{ type mark : verdict; }}",
             f"add chain {sg} egress {{ type filter hook forward priority 0; policy accept; }}",
             f"add chain {sg} ingress {{ type filter hook forward priority 10; policy accept; }}",
             f"add chain {sg} ge_{group}", f"add chain {sg} gi_{group}",
             f"add rule {sg} ge_{group} meta nfproto ipv4 counter accept"]
    lines += [f"add rule {sg} gi_{group} {r}" for r in group_rules]
    for d, key, mask, grp in (("egress", "eg", "0x0000ffff", "ge"), ("ingress", "in", "0xffff0000", "gi")):
        lines += [f"add rule {sg} {d} ct state established,related counter accept",
                  f"add rule {sg} {d} meta mark and {mask} != @ports_{key} accept",
                  f"add rule {sg} {d} ct state invalid counter drop",
                  f"add rule {sg} {d} meta mark and {mask} @{key}_{group} counter jump {grp}_{group}",
                  f"add rule {sg} {d} meta mark and {mask} vmap @{key}_groups",
                  f"add rule {sg} {d} counter drop"]
    for p in ports:
        lines += port_elements(p, group)
    return "\n".join(lines) + "\n"


def _cpu_run(ex: Any, text: str, what: str) -> tuple[float, float]:
    time.sleep(0.010)
    w0, c0 = time.perf_counter(), time.thread_time()
    err = ex.run(text)
    c1, w1 = time.thread_time(), time.perf_counter()
    if err is not None:
        raise RuntimeError(f"{what}: {err}")
    return (c1 - c0) * 1e3, (w1 - w0) * 1e3


def measure(sizes: list[int], rounds: int, tables: str = "both") -> dict[str, Any]:
    """Per size and form: CPU and wall (ms) of each port-up transaction (`tables`: "both", or
    only "today"'s or only the "data"-driven tables in the namespace, and only their forms)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.firewall_bench import _view
    from vxnet.compute.firewall import compute_firewall
    from vxnet.compute.nft_table import table_text
    from vxnet.dataplane.nft_driver import diff_table
    from vxnet.dataplane.nft_exec import NftExecutor

    out: dict[str, Any] = {}
    for n in sizes:
        ex = NftExecutor()
        fw = compute_firewall(_view(n), "h1")
        sg = next(t for t in fw.tables if t.name.endswith("_sg"))
        group = next(c.name for c in sg.chains if c.name.startswith("gi_"))[3:]
        head = f"add rule inet vxnet_sg gi_{group} "
        gi = [c[len(head):] for c in table_text(sg).splitlines() if c.startswith(head)]
        concat = "add set bridge vxnet_ps jl_allowed { type ifname . ether_addr . ipv4_addr; }"
        base = "flush ruleset\n" + "".join(table_text(t) for t in fw.tables) + concat + "\n"
        base += "".join(f'add element bridge vxnet_ps jl_allowed {{ "{p.ifname}" . {p.mac} . {p.ip} }}\n'
                        for p in map(lab_port, range(n)))
        base = "flush ruleset\n" if tables == "data" else base
        data = "" if tables == "today" else data_tables([lab_port(i) for i in range(n)], group, gi)
        _cpu_run(ex, base + data, f"loading {n} ports")
        new = compute_firewall(_view(n + 1), "h1")
        today = [c for t, o in zip(new.tables, fw.tables, strict=True) for c in diff_table(o, t)]
        back = [c for t, o in zip(new.tables, fw.tables, strict=True) for c in diff_table(t, o)]
        p = lab_port(n)
        firsts = {c.split()[4].split("_")[0]: c.split()[4] for c in table_text(fw.tables[0]).splitlines()
                  + table_text(sg).splitlines() if c.startswith("add chain ") and "{" not in c}
        vj = [_JUMP.sub(lambda m, f=firsts: f": jump {f[m.group(1).split('_')[0]]} }}", c)
              for c in today if c.startswith("add map ") and ": jump " in c]
        se = [c for c in today if c.startswith("add set ")]
        se.append(_elems("bridge vxnet_ps", "jl_allowed", ("set", "ifname . ether_addr . ipv4_addr"),
                         f'"{p.ifname}" . {p.mac} . {p.ip}'))
        chains = [c for c in today if c.startswith("add chain ")]
        forms = {"today": (today, back), "chains": (chains, None),
                 "chains-plain": ([without_verdicts(c) for c in chains], None),
                 "chains-empty": ([c for c in chains if "{" not in c], None),
                 "vmap-jump": (vj, None), "set-elems": (se, None),
                 "data": (port_elements(p, group), None), "data-vmap": (port_elements(p, group, vmap=True), None)}
        names = {"data": FORMS[-2:], "today": FORMS[:-2]}.get(tables, FORMS)
        forms = {f: forms[f] for f in names}
        res: dict[str, dict[str, list[float]]] = {f: {"cpu": [], "wall": []} for f in names}
        for k in range(rounds):
            for f in names[k % len(names):] + names[:k % len(names)]:     # rotate the order each round
                cmds, rev = forms[f]
                cpu, wall = _cpu_run(ex, "\n".join(cmds) + "\n", f"{f} at {n}")
                res[f]["cpu"].append(cpu)
                res[f]["wall"].append(wall)
                if ex.run("\n".join(rev if rev is not None else undo(cmds)) + "\n") is not None:
                    raise RuntimeError(f"undoing {f} at {n}")
        ex.close()
        out[str(n)] = {"forms": res, "commands": {f: len(c) for f, (c, _) in forms.items()},
                       "objects": 0 if tables == "data" else sum(len(t.chains) + len(t.sets) for t in fw.tables)}
    return out


def _private_netns() -> None:
    """Move this process into a new network namespace of its own (gone when it exits), so the
    `flush ruleset` below can only touch the lab's tables, wherever it is started."""
    import ctypes

    if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0:        # CLONE_NEWNET
        sys.exit(f"unshare(CLONE_NEWNET) failed (errno {ctypes.get_errno()}): needs root")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="33,100,300")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--json", help="also write the raw figures here")
    ap.add_argument("--tables", choices=("both", "today", "data"), default="both",
                    help="the tables loaded: both (default), only today's, only the data-driven ones")
    a = ap.parse_args(argv)
    _private_netns()
    load0 = os.getloadavg()
    res = measure([int(x) for x in a.sizes.split(",")], a.rounds, a.tables)
    load1 = os.getloadavg()
    print(f"load (1 min) {load0[0]:.1f} -> {load1[0]:.1f}; {a.rounds} rounds, forms rotated each round"
          + f"; tables loaded: {a.tables}")
    print("| local ports (chains+sets) | form | commands | CPU p50 (min) ms | wall p50 (min) ms |")
    print("|---|---|---|---|---|")
    for n, r in res.items():
        for f in r["forms"]:
            cpu, wall = r["forms"][f]["cpu"], r["forms"][f]["wall"]
            print(f"| {n} ({r['objects']}) | {f} | {r['commands'][f]} | {statistics.median(cpu):.2f} ({min(cpu):.2f})"
                  f" | {statistics.median(wall):.2f} ({min(wall):.2f}) |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"load": [load0[0], load1[0]], "results": res}, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
