"""Hand experiment (issue 18): what vxnet's bridge-family tables would cost as per-tap `table
netdev` ingress chains, measured with bench/dataplane_bench.py's method (CPU per Gbit/s, iperf3
pinned and capped, per-round ratios with median [IQR]). Not a product change: the agents are
paused (SIGSTOP) and the rulesets of h1 and h2 are rewritten by hand per variant.

Variants, each applied to vxnet's hosts h1 and h2 before its measurement in every round (the
order reversed every other round), the original ruleset put back at the end:
- "as is": what the agents wrote (`nft list ruleset` read once after every port is ACTIVE),
  without the underlay-skip rule of `vxnet_sg`'s zone chain if the agents wrote one (a tree
  since session 13): every variant starts from the ruleset without it;
- "netdev": the bridge tables `vxnet_ps`, `vxnet_dhcp`, `vxnet_meta`, `vxnet_qos` deleted;
  one `table netdev vxnet_nd` with, per local VM tap, an ingress base chain doing what those
  tables did to the frames that tap sends (`netdev_script`): DHCP and metadata steering
  (destination MAC rewritten, metadata source address set), then for a port with port
  security a jump to a copy of its `ps_<port>` anti-spoofing chain (same rules, same mark);
  the destination port's mark (the high 16 bits the bridge `out` chain set from `oifname`)
  is replaced, in `inet vxnet_sg`'s ingress dispatch, by a lookup of the destination MAC;
- "no bridge table": the four bridge tables deleted, nothing in their place (the bound);
- "netdev + underlay VXLAN untracked" (`--variants`): netdev plus `notrack` for the underlay's
  own VXLAN UDP (prerouting and output, table `inet vxnet_nt`); "as is + underlay VXLAN
  untracked": the same `notrack` on the agents' ruleset;
- the underlay's own VXLAN (`INET_VARIANTS`, session 13): "as is + underlay skip" (the first rule
  of `vxnet_sg`'s prerouting `zone` chain accepts UDP to the VXLAN port that did not come
  through a tenant bridge), the same in the input `host` chain too, "netdev + underlay skip",
  and the bounds "as is without the zone chain" / "without the host chain" / "without inet
  vxnet_sg";
- "no table at all": every vxnet table of the host deleted (`inet vxnet_sg` and `arp
  vxnet_host` too: no conntrack, no filtering), to place what is left of the gap.
The default group's path under the last two is unfiltered (no port marks, no group chain
reached): a bound, not a configuration.
Paths: vxnet port security off do1@h1 -> do2@h2, vxnet default group dp1@h1 -> dp2@h2; per
round also the hand-built plain VXLAN p1 -> p2 and the underlay host -> host (bench.kernel_lab),
as in dataplane_bench's goal rows.

Contract: runs inside the sandbox (bench.port_up_bench.in_sandbox); the agents are continued
(SIGCONT) and every lab torn down on the way out; no figure is invented.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from bench import common, cpu_account
from bench import dataplane_bench as dp
from bench.kernel_lab import KernelLab, nsx, sh
from bench.port_up_bench import in_sandbox
from bench.servers import import_repo

HOSTS = ("vxl-h1", "vxl-h2")
BRIDGE_TABLES = ("vxnet_ps", "vxnet_dhcp", "vxnet_meta", "vxnet_qos")
METADATA = "ip daddr 169.254.169.254 tcp dport 80"
VARIANTS = ("as is", "netdev", "no bridge table", "no table at all")
NOTRACK = "netdev + underlay VXLAN untracked"
NOTRACK_ONLY = "as is + underlay VXLAN untracked"
# The underlay's own VXLAN (session 13): `vxnet_sg`'s base chains an underlay VXLAN packet crosses
# in the host namespace are `zone` (prerouting, raw) and `host` (input: it is delivered to the
# VXLAN socket). SKIP: the zone chain's first rule accepts (ends that chain) UDP to the VXLAN
# port that did not come through a tenant bridge (compute.firewall's UNDERLAY_SKIP);
# SKIP_BOTH: the same first rule in the host chain too; the bounds delete one base chain, or
# the whole `inet vxnet_sg` (bridge tables and `arp vxnet_host` kept).
SKIP_RULE = 'udp dport 4789 iifname != "vxb-*" counter accept comment "vxnet:underlay-skip"'
SKIP = "as is + underlay skip"
SKIP_BOTH = "as is + underlay skip in zone and host"
NETDEV_SKIP = "netdev + underlay skip"
NO_ZONE = "as is without the zone chain"
NO_HOST = "as is without the host chain"
NO_SG = "as is without inet vxnet_sg"
INET_VARIANTS = (SKIP, SKIP_BOTH, NETDEV_SKIP, NO_ZONE, NO_HOST, NO_SG)
# netdev without the underlay ND/RA/MLD guard's egress chains on the VXLAN devices (a bound:
# every encapsulated frame crosses such a chain; the guard itself is then gone).
NETDEV_NO_VX = "netdev without the VXLAN egress chains"
ALL_VARIANTS = (*VARIANTS, NOTRACK, NOTRACK_ONLY, *INET_VARIANTS, NETDEV_NO_VX)
# The underlay's own VXLAN UDP (received, and sent by the host) out of conntrack in the host namespace.
NOTRACK_TABLE = """table inet vxnet_nt {
  chain pre {
    type filter hook prerouting priority -310; policy accept;
    udp dport 4789 notrack
  }
  chain out {
    type filter hook output priority -310; policy accept;
    udp dport 4789 notrack
  }
}
"""


# --- the ruleset as `nft list ruleset` prints it (pure) -----------------------------------------


def split_tables(ruleset: str) -> dict[tuple[str, str], str]:
    """`nft list ruleset` -> {(family, name): the table's text}, counters reset to `counter`."""
    out: dict[tuple[str, str], str] = {}
    cur: tuple[str, str] | None = None
    buf: list[str] = []
    for line in ruleset.splitlines():
        if line.startswith("table "):
            _, fam, name, *_ = line.split()
            cur, buf = (fam, name), [line]
        elif cur:
            buf.append(re.sub(r"counter packets \d+ bytes \d+", "counter", line))
            if line == "}":
                out[cur] = "\n".join(buf) + "\n"
                cur = None
    return out


def block(table: str, kind: str, name: str) -> list[str]:
    """The lines inside `kind name {` ... `}` (a chain or a map) of a table's text ([] if absent)."""
    lines = table.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f"{kind} {name} {{":
            depth = len(line) - len(line.lstrip())
            body = []
            for inner in lines[i + 1:]:
                if inner.strip() == "}" and len(inner) - len(inner.lstrip()) == depth:
                    return body
                body.append(inner.strip())
    return []


def map_elements(table: str, name: str) -> dict[str, str]:
    """A map's elements `key : value` (quotes dropped from keys), {} if absent or empty."""
    text = " ".join(block(table, "map", name))
    m = re.search(r"elements = \{(.*)\}", text)
    if not m:
        return {}
    out = {}
    for el in m.group(1).split(","):
        k, _, v = el.partition(" : ")
        if v:
            out[k.strip().strip('"')] = v.strip()
    return out


def chain_rules(table: str, name: str) -> list[str]:
    """A chain's rules (its `type ... hook` line left out)."""
    return [r for r in block(table, "chain", name) if r and not r.startswith("type ")]


def netdev_script(tables: dict[tuple[str, str], str], vxlan_devs: list[str]) -> tuple[str, str]:
    """(the `table netdev vxnet_nd` that does per tap what the bridge tables did, the
    `inet vxnet_sg` table with its ingress dispatch by destination MAC): see the module
    docstring. Per tap, in order: QoS DSCP marking, DHCP and metadata steering (destination
    MAC), then the port's anti-spoofing chain (a copy of `ps_<port>`, its marking rule
    ending in `return` instead of `accept` so the metadata source rewrite can follow it).
    The bridge `out` chain's underlay ND guard becomes an egress chain on each VXLAN device."""
    ps = tables.get(("bridge", "vxnet_ps"), "")
    dhcp = map_elements(tables.get(("bridge", "vxnet_dhcp"), ""), "steer")
    meta = tables.get(("bridge", "vxnet_meta"), "")
    meta_steer, meta_src = map_elements(meta, "steer"), map_elements(meta, "src")
    pre = map_elements(ps, "pre_ports")                       # tap -> "jump ps_<port>"
    qos: dict[str, list[str]] = {}
    for r in chain_rules(tables.get(("bridge", "vxnet_qos"), ""), "marking"):
        m = re.match(r'iifname "([^"]+)" (.*)', r)
        if m:
            qos.setdefault(m.group(1), []).append(m.group(2))
    out = ["table netdev vxnet_nd {"]
    ps_chains = sorted({v.split()[-1] for v in pre.values()})
    for c in ps_chains:
        rules = [re.sub(r"(meta mark set 0x[0-9a-f]+) accept", r"\1 return", r) for r in chain_rules(ps, c)]
        out += [f"  chain {c} {{", *(f"    {r}" for r in rules), "  }"]
    taps = sorted(set(pre) | set(dhcp) | set(meta_steer) | set(qos))
    for n, tap in enumerate(taps):
        rules = list(qos.get(tap, []))
        if tap in dhcp:
            rules.append(f"udp sport 68 udp dport 67 ether daddr set {dhcp[tap]}")
        if tap in meta_steer:
            rules.append(f"{METADATA} ether daddr set {meta_steer[tap]}")
        if tap in pre:
            rules.append(pre[tap])
            if tap in meta_src:   # after the source check (the rewritten source is the service's)
                rules.append(f"{METADATA} ip saddr set {meta_src[tap]} accept")
        elif tap in meta_src:
            rules.append(f"{METADATA} ip saddr set {meta_src[tap]} accept")
        out += [f"  chain in{n} {{", f'    type filter hook ingress device "{tap}" priority -300; policy accept;',
                *(f"    {r}" for r in rules), "  }"]
    guard = [r for r in chain_rules(ps, "out") if "vmap" not in r]
    for n, dev in enumerate(vxlan_devs):
        if guard:
            out += [f"  chain vx{n} {{", f'    type filter hook egress device "{dev}" priority 0; policy accept;',
                    *(f"    {r}" for r in guard), "  }"]
    out.append("}")
    return "\n".join(out) + "\n", sg_by_mac(tables.get(("inet", "vxnet_sg"), ""), ps)


def sg_by_mac(sg: str, ps: str) -> str:
    """`inet vxnet_sg` with the ingress dispatch on the destination MAC instead of the mark the
    bridge `out` chain set from `oifname`: map `in_macs` (each port's MAC, read from its
    `ps_<port>` marking rule, -> the `in_<port>` jump of its index in `in_ports`)."""
    in_ports = map_elements(sg, "in_ports")                   # "0x00050000" -> "jump in_x"
    entries = []
    for chain in {v.split()[-1] for v in map_elements(ps, "pre_ports").values()}:
        for r in chain_rules(ps, chain):
            m = re.search(r"ether saddr ([0-9a-f:]{17}) .*meta mark set (0x[0-9a-f]+)", r)
            if m:
                key = f"{int(m.group(2), 16) << 16:#010x}"
                if key in in_ports:
                    entries.append(f"{m.group(1)} : {in_ports[key]}")
    if not entries:
        return sg
    text = re.sub(r"meta mark & 0xffff0000 vmap @in_ports", "ether daddr vmap @in_macs", sg)
    head, _, rest = text.partition("\n")
    return (head + f"\n\tmap in_macs {{\n\t\ttype ether_addr : verdict\n\t\telements = {{ {', '.join(sorted(entries))} }}\n"
            "\t}\n" + rest)


def with_chain(table: str, chain: str, first: str | None) -> str:
    """A table's text with `first` as the first rule of `chain` (after its `type ... hook`
    line), or with the chain deleted when `first` is None; unchanged if the chain is absent."""
    lines = table.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.strip() == f"chain {chain} {{":
            indent = line[:len(line) - len(line.lstrip())]
            end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip("\n") == indent + "}")
            if first is None:
                gap = 1 if end + 1 < len(lines) and not lines[end + 1].strip() else 0   # the blank line after it
                return "".join(lines[:i] + lines[end + 1 + gap:])
            at = i + 2 if lines[i + 1].strip().startswith("type ") else i + 1
            return "".join(lines[:at] + [f"{indent}\t{first}\n"] + lines[at:])
    return table


def without_skip(table: str) -> str:
    """A table's text without any underlay-skip rule (the product writes one since session 13):
    every variant, "as is" included, starts from the agents' ruleset without it, so a lab of
    either tree measures the same variants."""
    return "".join(ln for ln in table.splitlines(keepends=True) if '"vxnet:underlay-skip' not in ln)


def _inet_variant(variant: str, sg: str) -> str:
    """`inet vxnet_sg` of one of INET_VARIANTS ("" for the table deleted)."""
    if variant in (SKIP, NETDEV_SKIP):
        return with_chain(sg, "zone", SKIP_RULE)
    if variant == SKIP_BOTH:
        return with_chain(with_chain(sg, "zone", SKIP_RULE), "host", SKIP_RULE)
    if variant == NO_ZONE:
        return with_chain(sg, "zone", None)
    if variant == NO_HOST:
        return with_chain(sg, "host", None)
    return ""


def variant_script(variant: str, tables: dict[tuple[str, str], str], vxlan_devs: list[str]) -> str:
    """The nft transaction turning a host (whatever variant it is in) into `variant`."""
    drop = [("netdev", "vxnet_nd"), ("inet", "vxnet_nt"), ("inet", "vxnet_sg"), ("arp", "vxnet_host"),
            *(("bridge", t) for t in BRIDGE_TABLES)]
    text = "".join(f"table {f} {n} {{}}\ndelete table {f} {n}\n" for f, n in drop)
    if variant == "no table at all":
        return text
    text += tables.get(("arp", "vxnet_host"), "")
    sg = without_skip(tables.get(("inet", "vxnet_sg"), ""))
    if variant in ("as is", NOTRACK_ONLY):
        return (text + sg + "".join(tables.get(("bridge", t), "") for t in BRIDGE_TABLES)
                + (NOTRACK_TABLE if variant == NOTRACK_ONLY else ""))
    if variant in ("netdev", NOTRACK, NETDEV_SKIP, NETDEV_NO_VX):
        nd, sg2 = netdev_script({**tables, ("inet", "vxnet_sg"): sg}, [] if variant == NETDEV_NO_VX else vxlan_devs)
        if variant == NETDEV_SKIP:
            sg2 = _inet_variant(variant, sg2)
        return text + sg2 + nd + (NOTRACK_TABLE if variant == NOTRACK else "")
    if variant in INET_VARIANTS:
        return text + _inet_variant(variant, sg) + "".join(tables.get(("bridge", t), "") for t in BRIDGE_TABLES)
    if variant == "no bridge table":
        return text + sg
    raise ValueError(variant)


# --- the experiment (inside the sandbox) -------------------------------------------------------


@contextlib.contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """The agents stopped (SIGSTOP) so none rewrites a table under the experiment; continued after."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _vxlan_devs(ns: str) -> list[str]:
    out = nsx(ns, "ip", "-o", "link", "show", "type", "vxlan").stdout
    return [ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines() if ":" in ln]


def _counter_sum(ns: str, pattern: str) -> int:
    """Packets counted by the rules of `ns`'s ruleset whose text contains `pattern`."""
    return sum(int(m.group(1)) for ln in nsx(ns, "nft", "list", "ruleset").stdout.splitlines() if pattern in ln
               for m in [re.search(r"counter packets (\d+)", ln)] if m)


def _checks(labs: dp.Labs) -> dict[str, int]:
    """What the variant still does: spoofed-source pings dp1 -> dp2 dropped by a `spoof` rule
    on h1 (counter delta), and a new flow dp1 -> dp2 reaching a group chain on h2 (`jump gi_`
    counter delta), and whether the VMs still reach each other."""
    src, dst = labs.vx_vms["dp1"], f"{dp.CIDR24}.12"
    out = {}
    s0 = _counter_sum("vxl-h1", "spoof")
    nsx(src, "ip", "addr", "add", f"{dp.CIDR24}.99/24", "dev", "eth0")
    try:
        nsx(src, "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "1", "-I", f"{dp.CIDR24}.99", dst, check=False)
    finally:
        nsx(src, "ip", "addr", "del", f"{dp.CIDR24}.99/24", "dev", "eth0", check=False)
    out["spoofed frames dropped on h1"] = _counter_sum("vxl-h1", "spoof") - s0
    g0 = _counter_sum("vxl-h2", "jump gi_")
    k0 = _counter_sum("vxl-h2", "underlay-skip")
    out["ping dp1 -> dp2 answered"] = int(common.wait_ping(src, dst, 3))
    out["new flows through dp2's ingress group chain on h2"] = _counter_sum("vxl-h2", "jump gi_") - g0
    out["ping do1 -> do2 answered"] = int(common.wait_ping(labs.vx_vms["do1"], f"{dp.CIDR24_O}.22", 3))
    out["underlay VXLAN packets skipped on h2 (both pings)"] = _counter_sum("vxl-h2", "underlay-skip") - k0
    return out


def measure(rounds: int, seconds: float, count: int, cpus: tuple[int, int] | None, rate: str,
            variants: tuple[str, ...] = VARIANTS) -> dict[str, Any]:
    """Build the vxnet lab (dataplane_bench's topology) and a plain hand-built one, pause the
    agents, then `rounds` rounds: every variant applied to h1 and h2 and both vxnet paths
    measured, plus the plain VXLAN and underlay references (order reversed every other round)."""
    import_repo()
    from vxnet.lab import lab as vxlab

    out: dict[str, Any] = {"rows": {}, "checks": {}, "rulesets": {}}
    plain = KernelLab(mode="static", prefix="vxp", cidr24=dp.CIDR24)
    workdir = tempfile.mkdtemp(prefix="vxnet-bench-nd-")
    try:
        with common.lab(workdir, False) as lab3:
            labs = dp._vxnet_topology(lab3, False)
            plain.build()
            for name, host, octet in (("p1", 1, 11), ("p2", 2, 12)):
                plain.add_vm(name, host, octet)
            for i in range(1, plain.hosts + 1):
                nsx(plain.host_ns(i), "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0",
                    "net.bridge.bridge-nf-call-ip6tables=0", check=False)
            st = vxlab.load_state()
            with paused([p for p in st["agents"].values() if p]):
                tables = {h: split_tables(nsx(h, "nft", "list", "ruleset").stdout) for h in HOSTS}
                vx = {h: _vxlan_devs(h) for h in HOSTS}
                paths = {"vxnet (port security off)": dp.vx_nops_cross(labs), "vxnet (default group)": dp.vx_cross(labs)}
                refs = {"hand-built plain VXLAN": dp.Path(plain.vm_ns("p1"), plain.vm_ns("p2"), f"{dp.CIDR24}.12"),
                        "underlay": dp.Path(plain.host_ns(1), plain.host_ns(2), plain.vtep(2), plain.eth)}
                for v in variants:
                    for h in HOSTS:
                        sh(["ip", "netns", "exec", h, "nft", "-f", "-"], inp=variant_script(v, tables[h], vx[h]))
                    out["checks"][v] = _checks(labs)
                    out["rulesets"][v] = nsx("vxl-h1", "nft", "list", "ruleset").stdout
                keys = [(v, name) for v in variants for name in paths] + [("reference", name) for name in refs]
                for k in keys:
                    out["rows"][" | ".join(k)] = {"system": k[0], "path": k[1], "rounds": [], "error": None}
                for rnd in range(rounds):
                    order = list(variants) if rnd % 2 == 0 else list(reversed(variants))
                    ref_first = rnd % 2 == 1
                    if ref_first:
                        _refs(out, refs, seconds, count, cpus, rate)
                    for v in order:
                        for h in HOSTS:
                            sh(["ip", "netns", "exec", h, "nft", "-f", "-"], inp=variant_script(v, tables[h], vx[h]))
                        for name, p in paths.items():
                            out["rows"][f"{v} | {name}"]["rounds"].append(dp._measure_row(p, seconds, count, cpus, rate))
                    if not ref_first:
                        _refs(out, refs, seconds, count, cpus, rate)
                for h in HOSTS:
                    sh(["ip", "netns", "exec", h, "nft", "-f", "-"], inp=variant_script("as is", tables[h], vx[h]))
    finally:
        plain.teardown()
    return out


def _refs(out: dict[str, Any], refs: dict[str, dp.Path], seconds: float, count: int, cpus: tuple[int, int] | None,
          rate: str) -> None:
    for name, p in refs.items():
        out["rows"][f"reference | {name}"]["rounds"].append(dp._measure_row(p, seconds, count, cpus, rate))


# --- the report -------------------------------------------------------------------------------


def report(res: dict[str, Any]) -> str:
    """Markdown: per row CPU per Gbit/s median [IQR]; per variant and path, the per-round
    speed-by-CPU ratio to "as is", and to the plain VXLAN / underlay references."""
    rows = res["rows"]
    cpu = {k: dp._series(r, "cpu") for k, r in rows.items()}
    p50 = {k: dp._series(r, "p50") for k, r in rows.items()}
    md = "| variant | path | CPU s/Gbit | speed by CPU vs as is | vs hand-built plain | vs underlay | ping p50 vs as is |\n"
    md += "|---|---|---|---|---|---|---|\n"
    for k, r in rows.items():
        base = f"as is | {r['path']}"
        def t(st: cpu_account.RatioStats | None) -> str:
            return st.text("{:.3f}") if st else ""
        vs_as = t(cpu_account.speed_by_cpu(cpu[k], cpu[base])) if base in cpu else ""
        vs_plain = t(cpu_account.speed_by_cpu(cpu[k], cpu["reference | hand-built plain VXLAN"]))
        vs_ul = t(cpu_account.speed_by_cpu(cpu[k], cpu["reference | underlay"]))
        lat = t(cpu_account.ratio_stats(p50[k], p50[base])) if base in p50 else ""
        md += f"| {r['system']} | {r['path']} | {dp._q(cpu[k])} | {vs_as} | {vs_plain} | {vs_ul} | {lat} |\n"
    md += "\nChecks per variant (after applying it, before the rounds):\n\n"
    for v, c in res["checks"].items():
        md += f"- {v}: " + ", ".join(f"{k} {n}" for k, n in c.items()) + "\n"
    return md


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.netdev_lab", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--seconds", type=float, default=1.5)
    p.add_argument("--pings", type=int, default=20)
    p.add_argument("--pin", default="0,0")
    p.add_argument("--rate", default="2G")
    p.add_argument("--json", help="write the raw results (and rulesets) to this file")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, from: {', '.join(ALL_VARIANTS)} (default: the first four)")
    a = p.parse_args(argv)
    cpus = dp.parse_pin(a.pin)
    variants = tuple(a.variants.split(","))
    if set(variants) - set(ALL_VARIANTS):
        p.error(f"unknown variant(s): {', '.join(sorted(set(variants) - set(ALL_VARIANTS)))}")
    load0 = os.getloadavg()
    res: dict[str, Any] = in_sandbox(  # type: ignore[assignment]
        f"__import__('bench.netdev_lab', fromlist=['_']).measure({a.rounds}, {a.seconds}, {a.pings}, {cpus!r}, "
        f"{a.rate!r}, {variants!r})", 900 + a.rounds * (2 * len(variants) + 2) * (a.seconds + a.pings * 0.012 + 3))
    if a.json:
        import json

        with open(a.json, "w") as f:
            json.dump(res, f)
    print(report(res))
    print(common.load_note(load0, [r["rounds"] for r in res["rows"].values()]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
