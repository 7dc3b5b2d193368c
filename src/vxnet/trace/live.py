"""`vxnet trace --live`: check each hop's deciding entry against the real kernel of its host.

A host is reachable when it is a lab host (`vxl-h<i>` namespace of a running lab) or this
machine (the host name given to its agent = this machine's hostname). For each `Check` of a
trace this reads the kernel (bridge/ip/nft JSON output) and fills the hop's `live` field with
"ok ..." (with the rule's packet counter where there is one) or "DRIFT: ..." naming what the
agents' desired state has and the kernel has not. Unreachable hosts are reported as such.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
from typing import Any

from vxnet.compute.gateway import NAT_TABLE
from vxnet.compute.naming import PS_TABLE, SG_TABLE
from vxnet.trace.walk import Check, Trace


def host_namespaces() -> dict[str, str | None]:
    """Host name -> namespace to enter (None: this machine's own namespace)."""
    out: dict[str, str | None] = {socket.gethostname(): None}
    try:
        from vxnet.lab import lab, topology

        st = lab.load_state()
        for i in range(1, int(st.get("hosts", 0)) + 1):     # compute and gateway hosts
            out[topology.host_name(i)] = topology.host_ns(i)
    except Exception:  # noqa: BLE001, S110 - no lab here: only this machine is reachable
        pass
    return out


def _run(netns: str | None, cmd: list[str]) -> subprocess.CompletedProcess[str]:
    full = (["ip", "netns", "exec", netns] if netns else []) + cmd
    return subprocess.run(full, capture_output=True, text=True, check=False, timeout=20)


def _json(netns: str | None, cmd: list[str]) -> Any:
    r = _run(netns, cmd)
    if r.returncode != 0:
        return None
    try:
        return json.loads(r.stdout or "null")
    except ValueError:
        return None


def _nft_rules(netns: str | None, family: str, table: str) -> list[dict[str, Any]] | None:
    data = _json(netns, ["nft", "-j", "list", "table", family, table])
    if data is None:
        return None
    return [x["rule"] for x in data.get("nftables", []) if "rule" in x]


def _counter(rule: dict[str, Any]) -> int | None:
    for e in rule.get("expr", []):
        if "counter" in e:
            return int(e["counter"].get("packets", 0))
    return None


def check(c: Check, netns: str | None) -> str:
    if c.kind == "fdb":
        dev, mac, dst = c.arg("dev"), c.arg("mac").lower(), c.arg("dst")
        entries = _json(netns, ["bridge", "-j", "fdb", "show", "dev", dev]) or []
        ok = any((e.get("mac") or "").lower() == mac and (e.get("dst") == dst if dst else "master" in e)
                 for e in entries)
        if not ok and dst is None:
            ok = any((e.get("mac") or "").lower() == mac and "self" not in (e.get("flags") or []) for e in entries)
        return f"ok: fdb {mac} dev {dev}{' dst ' + dst if dst else ''}" if ok else \
            f"DRIFT: fdb {mac} dev {dev}{' dst ' + dst if dst else ''} missing in the kernel"
    if c.kind == "neigh":
        return "ok"
    if c.kind == "nft-rule" and dict(c.args).get("table") == "ps":
        # A port-security rule: the rule of that identity in the port's chain (shared: `ps`, `ps6`).
        rules = _nft_rules(netns, *PS_TABLE)
        if rules is None:
            return f"DRIFT: table {' '.join(PS_TABLE)} missing"
        chain, kind = c.arg("chain"), c.arg("rule")
        hits = [r for r in rules if r.get("chain") == chain and (r.get("comment") or "").startswith(f"vxnet:{kind}#")]
        if not hits:
            return f"DRIFT: no rule {kind} in chain {chain} of {' '.join(PS_TABLE)}"
        return f"ok: nft rule {kind} present in {chain}, counter {sum(_counter(r) or 0 for r in hits)} packets"
    if c.kind == "nft-rule":
        rules = _nft_rules(netns, *SG_TABLE)
        if rules is None:
            return f"DRIFT: table {' '.join(SG_TABLE)} missing"
        rid = c.arg("rule")
        hits = [r for r in rules if rid in (r.get("comment") or "")]
        if not hits:
            return f"DRIFT: no rule for security-group rule {rid[:8]} in {' '.join(SG_TABLE)}"
        return f"ok: nft rule present, counter {sum(_counter(r) or 0 for r in hits)} packets"
    if c.kind == "nft-chain":
        family_table = PS_TABLE if c.arg("direction") == "ps" else SG_TABLE
        rules = _nft_rules(netns, *family_table)
        if rules is None:
            return f"DRIFT: table {' '.join(family_table)} missing"
        return f"ok: table {' '.join(family_table)} present ({len(rules)} rules)"
    if c.kind == "route":
        rns = c.arg("netns")
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        if rns not in {line.split()[0] for line in listed.splitlines() if line.split()}:
            return f"DRIFT: router namespace {rns} missing"
        dst = ipaddress.ip_address(c.arg("dst"))
        fam = "-6" if dst.version == 6 else "-4"
        routes = _json(None, ["ip", fam, "-n", rns, "-j", "route", "show", "table", "all"]) or []
        for r in routes:
            prefix = ("::/0" if dst.version == 6 else "0.0.0.0/0") if r.get("dst") == "default" else r.get("dst", "")
            try:
                if "/" not in prefix:
                    prefix += "/128" if dst.version == 6 else "/32"
                if dst in ipaddress.ip_network(prefix, strict=False) and r.get("type", "unicast") == "unicast":
                    return f"ok: {rns} routes {dst} ({r.get('dst')}{' via ' + r['gateway'] if r.get('gateway') else ''}" \
                           f"{' table ' + str(r['table']) if r.get('table') not in (None, 'main') else ''})"
            except ValueError:
                continue
        return f"DRIFT: {rns} has no route to {dst}"
    if c.kind == "nat":
        gns = c.arg("netns")
        rules = _nft_rules(gns, "ip", NAT_TABLE)
        if rules is None:
            return f"DRIFT: NAT table in {gns} missing"
        hits = [r for r in rules if c.arg("match") in json.dumps(r)]
        return f"ok: NAT rule for {c.arg('match')} present" if hits else \
            f"DRIFT: no NAT rule for {c.arg('match')} in {gns}"
    return "unchecked"


def verify(trace: Trace) -> Trace:
    """Fill every checked hop's `live` field (in place; returns the trace)."""
    hosts = host_namespaces()
    for hop in trace.hops:
        if hop.check is None:
            continue
        if hop.check.host not in hosts:
            hop.live = f"not checked: host {hop.check.host} is not reachable from here"
            continue
        ns = hosts[hop.check.host]
        if ns is not None and not os.path.exists(f"/run/netns/{ns}"):
            hop.live = f"not checked: namespace {ns} missing"
            continue
        hop.live = check(hop.check, ns)
    return trace

