"""What an nftables table holds, read back from `nft list table` text in one normal form (pure).

Why: nft prints a ruleset in its own normal form, not the text it was given (`priority -300`
comes back as `priority dstnat`, `ip dscp set 26` as `ip dscp set af31`, a map's elements in
hash order and wrapped over lines). A driver that compares the kernel's listing with its own
desired text therefore finds a difference where there is none, and re-applies (and counts a
drift repair) at every resync. So:
- rules and declarations (`skeleton`) are compared with a listing nft printed itself: the one
  read right after the driver's own whole-table transaction of the same text;
- set and map elements (`elements`) are compared as sets, with both sides normalised by
  `norm_element` (whitespace, quotes, letter case, integers, IP addresses and prefixes),
  so the desired elements need no listing of their own.

Contract: `parse(text) -> TableImage` (`None` for an empty text); `TableImage.skeleton` is the
table's lines without set/map elements, whitespace-collapsed, in listing order, with rule
counters' values left out (they count packets, they are not state we set); `elements`
maps each set/map name to its normalised elements.

Base chains: `base_spec(family, spec)` is a chain's hook line (`type filter hook forward
priority 10; policy accept;`) in one normal form, so the text the agent wrote and the one nft
prints compare equal (nft names priorities: `priority filter + 10` in the inet family, `priority
filter` for -200 in the bridge family, and prints the default `policy accept`);
`base_chains(family, listing)` maps each chain of a listing to its normal form (None: a regular
chain). A rule comparison alone does not see a base chain whose policy was changed, or one
re-made as a regular chain with the same rules (no packet reaches it: its filter is off).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable

_BLOCK = re.compile(r"^(?:set|map) (\S+) \{$")
_INT = re.compile(r"^(?:0x[0-9a-fA-F]+|\d+)$")
_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+")
_CHAIN = re.compile(r"^\s*chain (\S+) \{")
_SPEC = re.compile(r"\btype (\S+) hook (\S+)(?: devices? (.+?))? priority ([^;]+);(?:\s*policy (\S+);)?")
# nft's named priorities (nft(8), "CHAINS"): the bridge family has its own
_PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
_BRIDGE_PRIORITIES = {"dstnat": -300, "filter": -200, "out": 100, "srcnat": 300}


@dataclasses.dataclass(frozen=True)
class TableImage:
    skeleton: tuple[str, ...]
    elements: dict[str, frozenset[str]]


def _norm_atom(s: str) -> str:
    s = s.strip().strip('"')
    if _INT.match(s):
        return str(int(s, 0))
    try:
        if "/" in s:
            n = ipaddress.ip_network(s, strict=False)
            return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)
        if ":" in s or "." in s:
            return str(ipaddress.ip_address(s))
    except ValueError:
        pass
    return s.lower()


def norm_element(e: str) -> str:
    """One set or map element (`key` or `key : value`, keys may be `a . b` concatenations)."""
    return " : ".join(" . ".join(_norm_atom(a) for a in part.split(" . ")) if not part.strip().startswith(
        ("jump ", "goto ")) else " ".join(part.split()) for part in " ".join(e.split()).split(" : "))


def norm_elements(elements: Iterable[str]) -> frozenset[str]:
    return frozenset(norm_element(e) for e in elements)


def _split_elements(body: str) -> list[str]:
    return [e for e in (x.strip() for x in body.split(",")) if e]


def _priority(family: str, text: str) -> int | str:
    names = _BRIDGE_PRIORITIES if family == "bridge" else _PRIORITIES
    parts = text.split()
    try:
        value = names[parts[0]] if parts[0] in names else int(parts[0], 0)
        if len(parts) == 3 and parts[1] in "+-":
            value += int(parts[2], 0) * (1 if parts[1] == "+" else -1)
        elif len(parts) != 1:
            return text
    except (ValueError, IndexError):
        return text           # not understood: compared as written
    return value


def base_spec(family: str, spec: str | None) -> str | None:
    """A base chain's hook line in one normal form (None: a regular chain)."""
    m = _SPEC.search(" ".join((spec or "").split()))
    if m is None:
        return None
    kind, hook, device, prio, policy = m.groups()
    dev = f" device {device.strip().strip('{}').strip().strip(chr(34))}" if device else ""
    return f"type {kind} hook {hook}{dev} priority {_priority(family, prio.strip())} policy {policy or 'accept'}"


def base_chains(family: str, listing: str) -> dict[str, str | None]:
    """Chain name -> its `base_spec` in a `nft list table` output (terse or not)."""
    out: dict[str, str | None] = {}
    current: str | None = None
    for line in listing.splitlines():
        if m := _CHAIN.match(line):
            current = m.group(1)
            out[current] = None
        elif current is not None and " hook " in line and line.strip().startswith("type "):
            out[current] = base_spec(family, line)
            current = None
        elif current is not None and line.strip() and line.strip() != "}":
            current = None    # the spec is the chain's first line
    return out


def parse(text: str) -> TableImage | None:
    """The normal form of one table's listing (see the module docstring)."""
    lines = [_COUNTER.sub("counter", " ".join(line.split())) for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return None
    skeleton: list[str] = []
    elements: dict[str, frozenset[str]] = {}
    current: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := _BLOCK.match(line):
            current = m.group(1)
            elements.setdefault(current, frozenset())
        elif line.startswith("elements = {") and current is not None:
            body = line[len("elements = {"):]
            while not body.rstrip().endswith("}") and i + 1 < len(lines):
                i += 1
                body += " " + lines[i]
            elements[current] = norm_elements(_split_elements(body.rstrip()[:-1]))
            i += 1
            continue
        elif line == "}":
            current = None
        skeleton.append(line)
        i += 1
    return TableImage(tuple(skeleton), elements)
