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
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable

_BLOCK = re.compile(r"^(?:set|map) (\S+) \{$")
_INT = re.compile(r"^(?:0x[0-9a-fA-F]+|\d+)$")
_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+")


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
