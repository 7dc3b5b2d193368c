"""Lab (session 16, issue 18): what per-port out-mark chains would add to a port-up whose
anti-spoofing is data, if they were kept in a small bridge table of their own.

Run inside `tools/sandbox` (its own network namespace; the ruleset there is flushed):
`tools/sandbox .venv/bin/python -m bench.nft_mk_lab [--sizes 33,100,300] [--rounds 30]`.
Per N local ports it loads this tree's tables (`compute_firewall` of bench/firewall_bench.py's
view, as the agent loads them) plus `bridge vxnet_mk`: a base chain `out` (forward -99,
`oifname vmap @mk_ports`) and one 1-rule chain `mk_<port>` per port (`meta mark set meta mark
and 0xffff or <index << 16>`, the form before session 16). Then per round, the forms in a
rotating order, each one transaction through libnftables in-process after 10 ms idle, then
undone untimed: `elements` (the driver's port-up of one more port: set and map elements only),
`elements+mk` (the same plus that port's `mk_` chain and `mk_ports` element), `mk-only`.
Printed: CPU of the transaction's thread (`time.thread_time`), ms p50 per form.
Contract: touches only the namespace it runs in; figures never invented.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any


def mk_table(ports: list[Any]) -> str:
    """`bridge vxnet_mk` with a 1-rule out-mark chain per port, dispatched by `oifname`."""
    lines = ["add table bridge vxnet_mk", "add map bridge vxnet_mk mk_ports { type ifname : verdict; }",
             "add chain bridge vxnet_mk out { type filter hook forward priority -99; policy accept; }"]
    for p in ports:
        lines.append(f"add chain bridge vxnet_mk mk_{p.ident} {{ {_mark_rule(p)}; }}")
    if ports:
        lines.append("add element bridge vxnet_mk mk_ports { "
                     + ", ".join(f'"{p.tap}" : jump mk_{p.ident}' for p in ports) + " }")
    lines.append("add rule bridge vxnet_mk out oifname vmap @mk_ports counter")
    return "\n".join(lines) + "\n"


def _mark_rule(p: Any) -> str:
    return f"meta mark set meta mark and 0x0000ffff or {p.index << 16:#010x} counter"


def mk_port_up(p: Any) -> tuple[list[str], list[str]]:
    """The commands adding port `p`'s chain and element to `vxnet_mk`, and their undo."""
    up = [f"add chain bridge vxnet_mk mk_{p.ident} {{ {_mark_rule(p)}; }}",
          f'add map bridge vxnet_mk mk_ports {{ type ifname : verdict; elements = {{ "{p.tap}" : jump mk_{p.ident} }}; }}']
    back = [f'delete element bridge vxnet_mk mk_ports {{ "{p.tap}" }}', f"flush chain bridge vxnet_mk mk_{p.ident}",
            f"delete chain bridge vxnet_mk mk_{p.ident}"]
    return up, back


def measure(sizes: list[int], rounds: int) -> dict[str, dict[str, float]]:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.firewall_bench import _view
    from bench.nft_jump_lab import _cpu_run
    from vxnet.compute.firewall import compute_firewall
    from vxnet.compute.nft_table import table_text
    from vxnet.dataplane.nft_driver import diff_table
    from vxnet.dataplane.nft_exec import NftExecutor

    out: dict[str, dict[str, float]] = {}
    for n in sizes:
        ex = NftExecutor()
        fw, new = compute_firewall(_view(n), "h1"), compute_firewall(_view(n + 1), "h1")
        if (err := ex.run("flush ruleset\n" + "".join(table_text(t) for t in fw.tables) + mk_table(list(fw.ports)))):
            raise RuntimeError(f"loading {n} ports: {err}")
        p = next(q for q in new.ports if fw.port(q.port_id) is None)
        up = [c for t, o in zip(new.tables, fw.tables, strict=True) for c in diff_table(o, t)]
        back = [c for t, o in zip(new.tables, fw.tables, strict=True) for c in diff_table(t, o)]
        mk_up, mk_back = mk_port_up(p)
        forms = {"elements": (up, back), "elements+mk": (up + mk_up, back + mk_back), "mk-only": (mk_up, mk_back)}
        names = list(forms)
        res: dict[str, list[float]] = {f: [] for f in forms}
        for k in range(rounds):
            for f in names[k % len(names):] + names[:k % len(names)]:
                cmds, rev = forms[f]
                res[f].append(_cpu_run(ex, "\n".join(cmds) + "\n", f"{f} at {n}")[0])
                if (err := ex.run("\n".join(rev) + "\n")) is not None:
                    raise RuntimeError(f"undoing {f} at {n}: {err}")
        ex.close()
        out[str(n)] = {f: round(statistics.median(v), 2) for f, v in res.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="33,100,300")
    ap.add_argument("--rounds", type=int, default=30)
    a = ap.parse_args()
    load = os.getloadavg()[0]
    for n, r in measure([int(x) for x in a.sizes.split(",")], a.rounds).items():
        print(f"{n} ports: CPU p50 ms " + ", ".join(f"{f} {v:.2f}" for f, v in r.items()))
    print(f"1-min load {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
