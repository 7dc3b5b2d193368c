"""nftables rulesets as values: tables, chains, rules, sets and maps, and their `nft -f` text (pure).

Contract: the types are frozen (hashable, diffable); a table is the whole desired content of one
table the agent owns. Every rule made by `nft_rule` carries a counter and a comment
`vxnet:<kind>#<hash>`, the hash of the rule's text, so that the driver (`dataplane/nft_driver.py`)
recognises its own rules when it reads the kernel back, and a counter's identity
(`comment_kind`) survives a reload. Used by the firewall (`compute/firewall.py`) and the driver.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Collection, Iterable


@dataclasses.dataclass(frozen=True)
class NftRule:
    """One rule line of a chain (`text` includes its counter, verdict and comment)."""

    text: str


@dataclasses.dataclass(frozen=True)
class NftChain:
    name: str
    rules: tuple[NftRule, ...]
    hook: str | None = None           # base chain spec, e.g. "type filter hook forward priority 0; policy accept;"
    ordered: bool = True              # False: every rule ends in the same verdict, order is irrelevant


@dataclasses.dataclass(frozen=True)
class NftSet:
    """A named set, or (`kind="map"`) a verdict map whose elements are `key : verdict` texts."""

    name: str
    type: str                   # `ifname . ipv4_addr` (a `type`), or `typeof <expressions>` (raw payload keys)
    elements: frozenset[str]
    flags: str = "interval"
    kind: str = "set"           # set | map

    def declaration(self, elements: Collection[str] = ()) -> str:
        """The `{ ... }` body of its `add set` / `add map` command; with `elements`, the command
        also adds those (to the set as the kernel holds it when it exists already: an `add` of a
        set with the same declaration changes nothing else)."""
        key = self.type if self.type.startswith("typeof ") else f"type {self.type}"
        return (f"{{ {key};" + (f" flags {self.flags};" if self.flags else "")
                + (f" elements = {set_text(elements)};" if elements else "") + " }")


@dataclasses.dataclass(frozen=True)
class NftTable:
    family: str
    name: str
    chains: tuple[NftChain, ...]
    sets: tuple[NftSet, ...] = ()

    @functools.cached_property
    def _chains(self) -> dict[str, NftChain]:
        return {c.name: c for c in self.chains}

    def chain_map(self) -> dict[str, NftChain]:
        """Chain name -> chain (built once per table object; do not mutate)."""
        return self._chains

    @functools.cached_property
    def base_chains(self) -> tuple[NftChain, ...]:
        """The chains with a hook."""
        return tuple(c for c in self.chains if c.hook)


def _comment(kind: str, text: str) -> str:
    h = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f'comment "vxnet:{kind}#{h}"'


@functools.lru_cache(maxsize=65536)
def nft_rule(match: str, verdict: str, kind: str) -> NftRule:
    body = f"{match} counter {verdict}".strip()
    return NftRule(f"{body} {_comment(kind, body)}")


def comment_kind(comment: str) -> str:
    """`vxnet:sg:<rule id>#1a2b3c4d` -> `sg:<rule id>` (the identity a counter belongs to)."""
    return comment.removeprefix("vxnet:").split("#", 1)[0]


def set_text(elements: Iterable[str]) -> str:
    return "{ " + ", ".join(sorted(elements)) + " }"


def dispatch(key: str, name: str) -> tuple[NftRule, ...]:
    """The one rule of a dispatch base chain: a lookup in its verdict map."""
    return (nft_rule("", f"{key} vmap @{name}", "dispatch"),)


def entries_map(name: str, key_type: str, entries: Iterable[str]) -> NftSet:
    """A dispatch map (key -> `jump chain`) from its `key : jump chain` entries."""
    return NftSet(name, f"{key_type} : verdict", frozenset(entries), "", "map")


def table_text(t: NftTable) -> str:
    """The whole table as `nft -f` input that (re)creates it in one transaction."""
    lines = [f"add table {t.family} {t.name}", f"delete table {t.family} {t.name}", f"add table {t.family} {t.name}"]
    lines += table_body(t)
    return "\n".join(lines) + "\n"


def table_body(t: NftTable) -> list[str]:
    """Commands creating the sets, chains and rules of `t` in an existing empty table (chains
    before set and map elements: a map element jumps to a chain, which must exist)."""
    lines = [f"add {s.kind} {t.family} {t.name} {s.name} {s.declaration()}" for s in t.sets]
    for c in t.chains:
        lines.append(f"add chain {t.family} {t.name} {c.name}" + (f" {{ {c.hook} }}" if c.hook else ""))
    lines += [f"add element {t.family} {t.name} {s.name} {set_text(s.elements)}" for s in t.sets if s.elements]
    for c in t.chains:
        lines += [f"add rule {t.family} {t.name} {c.name} {r.text}" for r in c.rules]
    return lines
