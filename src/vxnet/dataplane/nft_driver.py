"""nftables driver: converge the agent's own tables to a desired `NftTable` set, atomically.

Contract:
- `apply([(table, previous), ...])` makes the kernel hold exactly those tables (only tables
  named there are touched) with ONE nft script, i.e. one netlink transaction: the kernel switches from the old ruleset
  to the new one between two packets, and conntrack entries are untouched (so established
  connections that remain allowed keep flowing).
- `previous` is what the caller applied last (the firewall feature's `Manager` keeps it; the
  driver keeps no such record). Incremental by chain: with a known previous state it sends only new chains (`add chain`),
  changed chains (`flush chain` + their rules; for unordered chains, i.e. the shared group
  chains, rule by rule: `delete rule ... handle H` for the rules that went, `add rule` for the
  new ones, handles read back from the kernel, so the other rules keep their counters),
  removed chains/sets (`delete`, after the chains referring to them were flushed in the same
  transaction) and set element changes (`delete element` / `add element`). A security-group
  rule change is one command whatever the number of ports using the group; a remote-group
  member change is one element. Nothing to do: nothing is sent.
- Full replace (`add table; delete table; add table; ...` in one transaction) when the
  previous state is unknown (None: start, drift repair, a failed transaction) AND the kernel does
  not already hold the desired rules. Recognising them: every rule carries a comment with a
  hash of its text (compute/firewall.py); the driver lists the tables and compares each
  chain's comment sequence and each base chain's hook, priority and policy. So a restarted agent adopts its rules without resetting a
  counter; sets are re-filled exactly (flush + add) in that case. Cheaper still: when every
  transaction committed in the namespace since our last one was one of the agent's own (the
  ruleset generation, NFT_MSG_GETGEN, is the head of the chain of own commits that
  `dataplane/nft_ledger.py` keeps: the DHCP and metadata steering tables' transactions are in
  it), nobody touched our tables, and the kernel is not read. An incremental transaction keeps
  that proof only on top of it (no foreign commit before it).
- `NftError` on failure (nothing was applied: transactions are all or nothing); the caller
  passes `previous` None next time.
- Transactions and listings go through the one executor (`dataplane/nft_exec.py`: libnftables
  in-process, else the `nft` program), in a worker thread that entered the host namespace
  (`setns` is per thread) when `netns` is set; `counters()` is a JSON listing through it. A
  change that only adds and deletes elements of existing sets and maps (a port-up: the same
  chains, the same set declarations) goes as one netlink batch of those elements instead
  (`nft_netlink.element_batch`, `NftExecutor.run_batch`: all or nothing too, no libnftables
  parse or cache; `ApplyResult.netlink`), when the encoder knows every element and the executor
  runs in process; anything else as text.
- `forget_flows(zone, address)`: the conntrack entries of a flow whose access was revoked
  (a remote-group member left) are deleted (`conntrack -D`), as Neutron does, so its next
  packet meets the rules again instead of `ct established`.
- br_netfilter (bridged IPv4/IPv6 through the inet hooks, without which the security groups
  are bypassed, KERNEL-NOTES §6) is not switched here: it is a per-bridge option the L2 part
  sets on the bridges with a filtered local port (`compute/l2.py`, `dataplane/links_driver.py`).
  `apply` only checks that br_netfilter is there (its sysctls exist in the namespace; once per
  driver and after `invalidate()`): without it, `NftError`, so the firewall fails closed (its
  ports are held and reported DOWN) instead of loading rules no bridged frame would meet.
"""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import json
import logging
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from vxnet.compute.nft_table import NftChain, NftSet, NftTable, table_text
from vxnet.dataplane import nft_image
from vxnet.dataplane.nft_exec import OUTPUT_HANDLE, OUTPUT_JSON, NftExecutor
from vxnet.dataplane.nft_ledger import LEDGER, Token
from vxnet.dataplane.nft_netlink import Message, element_batch

log = logging.getLogger("vxnet.dataplane.nft")

_COMMENT = re.compile(r'comment "(vxnet:[^"]*)"')
_CHAIN = re.compile(r"^\s*chain (\S+) \{")
_SET = re.compile(r"^\s*(?:set|map) (\S+) \{")
_HANDLE = re.compile(r"# handle (\d+)\s*$")
_SET_REF = re.compile(r"@(\w+)")


class NftError(Exception):
    """An nft transaction was refused (nothing of it was applied)."""


@dataclasses.dataclass(frozen=True)
class ApplyResult:
    mode: str                 # noop | unchanged | verified | adopt | incremental | full
    commands: int             # lines sent to nft (or element messages in the netlink batch)
    seconds: float
    netlink: bool = False     # sent as a netlink batch of set/map elements, not through libnftables


def _set_text(elements: Iterable[str]) -> str:
    return "{ " + ", ".join(sorted(elements)) + " }"


def _comments(c: NftChain) -> tuple[str, ...]:
    return tuple(m.group(1) for r in c.rules if (m := _COMMENT.search(r.text)))


def fingerprint(t: NftTable) -> dict[str, tuple[str, ...]]:
    """Chain name -> the comments of its rules (what a terse kernel listing shows), sorted for
    chains whose order does not matter (rules are added to them at the end)."""
    return {c.name: _comments(c) if c.ordered else tuple(sorted(_comments(c))) for c in t.chains}


def base_changes(t: NftTable, listing: str) -> dict[str, tuple[str | None, str | None]]:
    """The chains of `t` in a listing whose hook, priority or policy differ: name -> (desired,
    listed), both in nft_image's normal form (None: a regular chain)."""
    listed = nft_image.base_chains(t.family, listing)
    want = {c.name: nft_image.base_spec(t.family, c.hook) for c in t.chains}
    return {n: (w, listed[n]) for n, w in want.items() if n in listed and listed[n] != w}


def normalise_listing(t: NftTable, chains: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """A kernel listing's fingerprint made comparable with `fingerprint(t)`."""
    unordered = {c.name for c in t.chains if not c.ordered}
    return {k: tuple(sorted(v)) if k in unordered else v for k, v in chains.items()}


def parse_handles(text: str) -> dict[str, int] | None:
    """Comment -> rule handle of a `list chain` output with handles; None if a comment repeats."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        m, h = _COMMENT.search(line), _HANDLE.search(line)
        if m and h:
            if m.group(1) in out:
                return None
            out[m.group(1)] = int(h.group(1))
    return out


def parse_listing(text: str) -> tuple[dict[str, tuple[str, ...]], set[str]]:
    """Chain fingerprints and set names of a `nft -t list table` output."""
    chains: dict[str, list[str]] = {}
    sets: set[str] = set()
    current: list[str] | None = None
    for line in text.splitlines():
        if m := _CHAIN.match(line):
            current = chains.setdefault(m.group(1), [])
        elif m := _SET.match(line):
            sets.add(m.group(1))
            current = None
        elif current is not None and (m := _COMMENT.search(line)):
            current.append(m.group(1))
    return {k: tuple(v) for k, v in chains.items()}, sets


def set_flags(text: str) -> dict[str, str]:
    """Set or map name -> its `flags` line's value ("" without one) in a `list table` output."""
    out: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        if m := _SET.match(line):
            current = m.group(1)
            out[current] = ""
        elif _CHAIN.match(line):
            current = None
        elif current is not None and line.strip().startswith("flags "):
            out[current] = line.strip()[len("flags "):].strip()
    return out


def diff_table(old: NftTable, new: NftTable, handles: dict[str, dict[str, int]] | None = None) -> list[str]:
    """Commands turning table `old` into `new` (same family and name) in one transaction.

    `handles[chain]` (comment -> kernel rule handle) lets a changed unordered chain be edited
    rule by rule (delete the rules that went, add the new ones), so the counters of the rules
    that stay keep counting; without it the chain is flushed and refilled.

    Additions are written so that libnftables needs no cache of the table's chains and sets
    (a port-up is only additions; `_add_elements`, `_fill_chain`): libnftables dumps every
    chain and set of the ruleset before a transaction holding an `add rule` or `add element`
    command (nftables 1.0.6 `evaluate_cache_add`), which made a port-up's transaction grow with
    the local ports (their chains and anonymous sets); an `add chain`, `add set` or `add map`
    command needs only the table list. So a new chain's rules go in one `add chain NAME { rule;
    ... }` (after every new chain exists: a rule may jump to one made in the same transaction),
    elements of a plain set or map in `add set NAME { type ...; elements = { ... }; }` (the set
    as it is, plus those), and a set that a new chain's rule names is declared in the
    transaction (nft resolves `@set` in its cache). Interval sets keep `add element` (libnftables
    checks the new intervals against the set's elements); deletions and flushes keep theirs.

    A table `render_update` spliced from `old` itself names the chains it changed (its
    `changed_from` hint); only those are compared, the others being the same objects."""
    f, n = new.family, new.name
    oc, nc = old.chain_map(), new.chain_map()
    if any((b := oc.get(c.name)) is not None and b.hook != c.hook for c in new.base_chains):
        return table_text(new).splitlines()       # a base chain's hook changed: rebuild
    if any((c := nc.get(b.name)) is not None and c.hook != b.hook for b in old.base_chains):
        return table_text(new).splitlines()       # a base chain became a regular one: rebuild
    os_, ns_ = {s.name: s for s in old.sets}, {s.name: s for s in new.sets}
    pre: list[str] = []           # sets whose flags changed: their users flushed, the set re-made
    head: list[str] = []          # new sets and maps, then new chains (map elements jump to them)
    elements: list[str] = []      # element changes: after the chains they name exist
    rules: list[str] = []
    tail: list[str] = []
    refill: set[str] = set()      # chains flushed in `pre`: all their rules are added again
    declared: set[str] = set()    # sets and maps declared by this transaction
    for name, s in ns_.items():
        before = os_.get(name)
        if before is s:
            continue                              # the same object (kept by `render_update`): unchanged
        if (before is not None and before.kind == s.kind == "set" and before.type == s.type
                and before.flags != s.flags):
            # A member set turning into an interval set or back (compute/firewall.py
            # `_member_set`): a set in use cannot be deleted, so the chains whose rules name it
            # are flushed first and refilled after, all in this one transaction; the rest of
            # the table (other chains' counters) is untouched.
            users = {c.name for c in (*old.chains, *new.chains) if any(f"@{name} " in r.text + " " for r in c.rules)}
            pre += [f"flush chain {f} {n} {c}" for c in sorted(users) if c in oc]
            pre += [f"delete set {f} {n} {name}", f"add set {f} {n} {name} {s.declaration()}"]
            elements += _add_elements(f, n, s, s.elements)
            declared.add(name)
            refill |= users
            continue
        if before is None or before.type != s.type or before.flags != s.flags or before.kind != s.kind:
            if before is not None:                # type changed: cannot happen with our names, but be exact
                return table_text(new).splitlines()
            head.append(f"add {s.kind} {f} {n} {name} {s.declaration()}")
            elements += _add_elements(f, n, s, s.elements)
            declared.add(name)
            continue
        gone, added = before.elements - s.elements, s.elements - before.elements
        if gone:
            keys = {e.split(" : ", 1)[0] for e in gone} if s.kind == "map" else gone
            elements.append(f"delete element {f} {n} {name} {_set_text(keys)}")
        elements += _add_elements(f, n, s, added)
        if added and "interval" not in s.flags.split(","):
            declared.add(name)
    fills: list[NftChain] = []    # new chains' rules, added after every new chain exists
    walk: Iterable[tuple[str, NftChain]]
    hint = new.__dict__.get("changed_from")      # compute/firewall.py `render_update`: the only chains that differ
    if hint is not None and hint[0]() is old and not refill:
        walk = [(name, nc[name]) for name in hint[1] if name in nc]
        gone = [name for name in hint[1] if name in oc and name not in nc]
    else:
        walk = nc.items()
        removed = oc.keys() - nc.keys()
        gone = [name for name in oc if name in removed] if removed else []
    for name, c in walk:
        before = oc.get(name)
        if before is c and name not in refill:
            continue                              # the same object (the render's per-port memo): unchanged
        if before is None:
            head.append(f"add chain {f} {n} {name}" + (f" {{ {c.hook} }}" if c.hook else ""))
            if not c.hook:
                fills.append(c)
                continue
        elif name in refill:
            pass                                  # flushed in `pre`: every rule is added below
        elif before.rules == c.rules:
            continue
        elif not c.ordered and (edit := _edit_rules(f, n, before, c, (handles or {}).get(name))) is not None:
            rules += edit
            continue
        else:
            rules.append(f"flush chain {f} {n} {name}")
        rules += [f"add rule {f} {n} {name} {r.text}" for r in c.rules]
    # Removed chains (`gone`): their referrers (jumps, map elements) changed above. Delete
    # non-base chains after all flushes, and sets/maps last.
    tail += [f"flush chain {f} {n} {name}" for name in gone]
    tail += [f"delete chain {f} {n} {name}" for name in gone]
    tail += [f"delete {s.kind} {f} {n} {name}" for name, s in os_.items() if name not in ns_]
    named = sorted({m for c in fills for r in c.rules for m in _SET_REF.findall(r.text)} - declared)
    head += [f"add {ns_[m].kind} {f} {n} {m} {ns_[m].declaration()}" for m in named if m in ns_]
    fill = [_fill_chain(f, n, c) for c in fills if c.rules]
    return pre + head + elements + fill + rules + tail


def _add_elements(f: str, n: str, s: NftSet, elements: frozenset[str]) -> list[str]:
    """The command adding `elements` to set or map `s` (none when empty), written so that
    libnftables needs no cache of the table's chains and sets (see `diff_table`), except for
    an interval set."""
    if not elements:
        return []
    if "interval" in s.flags.split(","):
        return [f"add element {f} {n} {s.name} {_set_text(elements)}"]
    return [f"add {s.kind} {f} {n} {s.name} {s.declaration(elements)}"]


def _fill_chain(f: str, n: str, c: NftChain) -> str:
    """The rules of the (existing, empty) non-base chain `c` in one `add chain` command."""
    return f"add chain {f} {n} {c.name} {{ " + " ".join(r.text + ";" for r in c.rules) + " }"


def _edit_rules(f: str, n: str, old: NftChain, new: NftChain, handles: dict[str, int] | None) -> list[str] | None:
    """Rule-by-rule edit of an unordered chain, or None when the handles do not fit `old`."""
    if handles is None or sorted(handles) != sorted(_comments(old)) or len(set(_comments(old))) != len(old.rules):
        return None
    keep = {r.text for r in new.rules}
    have = {r.text for r in old.rules}
    out = [f"delete rule {f} {n} {old.name} handle {handles[m.group(1)]}"
           for r in old.rules if r.text not in keep and (m := _COMMENT.search(r.text))]
    return out + [f"add rule {f} {n} {new.name} {r.text}" for r in new.rules if r.text not in have]


def _br_netfilter_present() -> None:
    # The per-bridge switch needs the br_netfilter hooks (built in, or the module loaded).
    if not os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"):
        raise FileNotFoundError("br_netfilter is not loaded: bridged traffic would bypass the security groups")


def _enter_netns(name: str) -> None:
    """Move the calling thread (only) into network namespace `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:          # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


class _Transactions:
    """Runs nft scripts as transactions in the host namespace: one `NftExecutor` in the calling
    thread (no `netns`) or in a worker thread inside `netns`."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._local: NftExecutor | None = None
        self._q: queue.Queue[tuple[Callable[[], Any], list[Any], threading.Event] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._worker_exec: NftExecutor | None = None
        self.netlink = False          # the last `run` sent its batch (not the text)

    def _worker(self) -> None:
        entered = True
        try:
            _enter_netns(self.netns or "")
        except OSError as e:
            log.warning("cannot enter %s (%s): using the nft program", self.netns, e)
            entered = False
        ex = self._worker_exec = NftExecutor(self.netns, in_process=entered, ledger=True)
        while (job := self._q.get()) is not None:
            fn, out, done = job
            try:
                out.append((True, fn()))
            except Exception as e:  # noqa: BLE001 - re-raised in the caller
                out.append((False, e))
            done.set()
        ex.close()

    def call(self, fn: Callable[[], Any]) -> Any:
        """`fn()` in the host namespace (the worker thread when `netns` is set)."""
        if self.netns is None:
            return fn()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._worker, name="vxnet-nft", daemon=True)
            self._thread.start()
        out: list[Any] = []
        done = threading.Event()
        self._q.put((fn, out, done))
        if not done.wait(120):
            raise TimeoutError("nft worker did not answer in 120 s")
        ok, value = out[0]
        if not ok:
            raise value
        return value

    def _exec(self) -> NftExecutor:
        """The executor of the thread `call` runs in."""
        if self.netns is not None:
            assert self._worker_exec is not None
            return self._worker_exec
        if self._local is None:
            self._local = NftExecutor(ledger=True)
        return self._local

    def generation(self) -> int | None:
        """The host namespace's ruleset generation (None: unreadable)."""
        return self.call(lambda: self._exec().generation())   # type: ignore[no-any-return]

    def mark(self, gen: int) -> Token:
        """The kernel was verified after reading generation `gen` (nft_ledger `mark`)."""
        return self.call(lambda: self._exec().mark(gen))      # type: ignore[no-any-return]

    def token(self) -> Token | None:
        """Where the last transaction left the chain of our own commits (after `run`)."""
        return self._exec().token

    def run(self, text: str | Callable[[], str], batch: list[Message] | None = None) -> str | None:
        """None on success, else the error text (nothing applied). With `batch` (the same change
        as netlink element messages) the batch is sent instead of the text when the executor
        runs in process (`text` may then be a function, called only when it does not)."""
        def go() -> str:
            ex = self._exec()
            if batch and ex.in_process:
                self.netlink = True
                return ex.run_batch(batch) or ""
            self.netlink = False
            return ex.run(text if isinstance(text, str) else text()) or ""
        try:
            return str(self.call(go)) or None
        except (OSError, TimeoutError, subprocess.SubprocessError) as e:
            return f"{type(e).__name__}: {e}"

    def output(self, cmd: str, flags: int) -> str:
        """A listing's text in the host namespace (OSError on failure)."""
        return str(self.call(lambda: self._exec().output(cmd, flags)))

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._q.put(None)
            self._thread.join(5)
        if self._local is not None:
            self._local.close()
            self._local = None


Key = tuple[str, str]          # (family, name) of a table


class NftDriver:
    """Applies table changes in one host namespace; keeps no record of what it applied (the
    firewall feature's `Manager` does), only the proof that nothing changed since its last
    transaction (a `nft_ledger.Token`, and the tables it covers)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._brnf_ok = False
        self.last: ApplyResult | None = None
        self._tx = _Transactions(netns)
        self._committed: tuple[Token, dict[Key, NftTable]] | None = None   # (proof, the tables it covers)

    # ------------------------------------------------------------------ public
    def invalidate(self) -> None:
        """The next `apply` checks for br_netfilter again (tables: the caller passes `previous`
        None; a commit by anyone else shows in the ruleset generation)."""
        self._brnf_ok = False

    def _genid(self) -> int | None:
        try:
            return self._tx.generation()
        except (OSError, TimeoutError) as e:
            log.debug("nft generation unreadable: %s", e)
            return None

    def _mark(self, gen: int | None) -> Token | None:
        try:
            return None if gen is None else self._tx.mark(gen)
        except (OSError, TimeoutError):
            return None

    def _prove(self, changes: list[tuple[NftTable, NftTable | None]], fresh: set[Key], proof: Token | None,
               token: Token | None) -> None:
        """What the kernel holds after this call, with its proof (`token`). A table this call did
        not read (an incremental change, or one left as it was) is known only along an unbroken
        chain of our own commits since `proof`; the tables read or rebuilt now are known anyway."""
        if token is None:
            self._committed = None
            return
        continued = proof is not None and token.epoch == proof.epoch and self._committed is not None
        tables = dict(self._committed[1]) if continued and self._committed is not None else {}
        tables.update({(t.family, t.name): t for t, _ in changes if continued or (t.family, t.name) in fresh})
        self._committed = (token, tables) if tables else None

    def apply(self, changes: Iterable[tuple[NftTable, NftTable | None]], force_full: bool = False) -> ApplyResult:
        """Converge the kernel's tables to the `new` of each `(new, previous)` in one
        transaction. `previous` is what the caller applied last (None: unknown, the kernel is
        read, unless the ruleset generation shows no transaction at all since ours)."""
        t0 = time.perf_counter()
        changes = list(changes)
        if not self._brnf_ok:
            try:
                self._tx.call(_br_netfilter_present)
            except OSError as e:
                raise NftError(f"br_netfilter: {e}") from e
            self._brnf_ok = True
        mode = "noop"
        unknown = not force_full and any(old is None for _, old in changes)
        gen0 = self._genid() if unknown else None     # read before the kernel is (a commit after it shows)
        proof = self._committed[0] if self._committed is not None else None
        if unknown and self._committed is not None and LEDGER.unchanged(proof, gen0):
            # every commit since our last one was one of ours (nft_ledger): the kernel holds what we left
            mode, committed = "unchanged", self._committed[1]
            changes = [(t, old if old is not None else committed.get((t.family, t.name))) for t, old in changes]
        # Only elements of existing sets change (a port-up): one netlink batch of them, no text
        batch = None if force_full or any(old is None for _, old in changes) else element_batch(
            (t, old) for t, old in changes if old is not None and old is not t)
        lines: list[str] = []
        fresh: set[Key] = set()       # tables read from the kernel (or rebuilt whole) by this call
        for t, old in () if batch else changes:
            if force_full:
                lines += table_text(t).splitlines()
                mode = "full"
                fresh.add((t.family, t.name))
            elif old is None:
                adopt = self._adopt(t)
                lines += table_text(t).splitlines() if adopt is None else adopt
                fresh.add((t.family, t.name))
                if adopt is None:
                    mode = "full"
                elif adopt and mode != "full":
                    mode = "adopt"            # the rules are there, some set elements were not
                elif mode in ("noop", "unchanged"):
                    mode = "verified"         # the kernel holds exactly this table: nothing sent
            elif old is not t and old != t:
                lines += diff_table(old, t, self._handles(old, t))
                mode = mode if mode in ("full", "adopt") else "incremental"
        err: str | None = None
        if batch:
            mode = "incremental"
            pairs = [(t, old) for t, old in changes if old is not None]
            err = self._tx.run(lambda: "\n".join(c for t, old in pairs for c in diff_table(old, t)) + "\n", batch)
        elif lines:
            err = self._tx.run("\n".join(lines) + "\n")
        if (lines or batch) and err is not None:
            self._committed = None
            raise NftError(err[-2000:])
        if lines or batch or mode in ("adopt", "verified"):
            self._prove(changes, fresh, proof, self._tx.token() if lines or batch else self._mark(gen0))
        self.last = ApplyResult(mode, len(lines) or len(batch or ()), time.perf_counter() - t0,
                                bool(batch) and self._tx.netlink)
        return self.last

    def _handles(self, old: NftTable, new: NftTable) -> dict[str, dict[str, int]]:
        """Rule handles of the unordered chains that change (read from the kernel)."""
        oc = old.chain_map()
        out: dict[str, dict[str, int]] = {}
        for c in new.chains:
            if c.ordered or c.name not in oc or oc[c.name].rules == c.rules:
                continue
            try:
                h = parse_handles(self._tx.output(f"list chain {new.family} {new.name} {c.name}", OUTPUT_HANDLE))
            except (OSError, TimeoutError) as e:
                log.debug("no handles for %s: %s", c.name, e)
                continue
            if h is not None:
                out[c.name] = h
        return out

    def _adopt(self, t: NftTable) -> list[str] | None:
        """Commands re-filling the sets whose elements differ when the kernel already holds
        every desired chain and rule of `t` ([] when it holds exactly `t`: nothing to send), else
        None (replace the table). Elements are compared in one normal form (dataplane/nft_image.py):
        nft prints them in its own order and notation."""
        try:
            listing = self._tx.output(f"list table {t.family} {t.name}", 0)
        except (OSError, TimeoutError):
            return None
        chains, sets = parse_listing(listing)
        if normalise_listing(t, chains) != fingerprint(t) or sets != {s.name for s in t.sets}:
            return None
        if base_changes(t, listing):
            return None           # a base chain's hook, priority or policy changed (or it lost its hook)
        flags = set_flags(listing)
        if any(flags.get(s.name, "") != s.flags for s in t.sets):
            return None           # a set of another kind (e.g. a member set now with a prefix)
        image = nft_image.parse(listing)
        have = image.elements if image is not None else {}
        lines: list[str] = []
        for s in t.sets:
            if have.get(s.name) == nft_image.norm_elements(s.elements):
                continue
            lines.append(f"flush {s.kind} {t.family} {t.name} {s.name}")
            if s.elements:
                lines.append(f"add element {t.family} {t.name} {s.name} {_set_text(s.elements)}")
        return lines

    def forget_flows(self, zone: int, address: str) -> None:
        """Delete the conntrack entries of `zone` whose original source or destination is
        `address` (an IPv4 or IPv6 address or prefix): their next packet is checked by the rules again."""
        net = ipaddress.ip_network(address, strict=False)
        ip, mask = str(net.network_address), str(net.netmask)
        family = ["-f", "ipv6"] if net.version == 6 else []
        for side in ("src", "dst"):
            flag = "-s" if side == "src" else "-d"
            cmd = ["conntrack", "-D", *family, "-w", str(zone), flag, ip, f"--mask-{side}", mask]
            r = subprocess.run((["ip", "netns", "exec", self.netns] if self.netns else []) + cmd,
                               capture_output=True, text=True, timeout=30, check=False)
            if r.returncode not in (0, 1):       # 1: no entry matched
                raise NftError(f"conntrack: {r.stderr.strip()[-300:]}")

    def close(self) -> None:
        """Stop the worker thread (kernel state stays: a restarted agent adopts it)."""
        self._tx.close()

    def delete(self, tables: Iterable[tuple[str, str]]) -> None:
        """Remove our tables (tests, uninstall)."""
        lines = [f"add table {f} {n}\ndelete table {f} {n}" for f, n in tables]
        if lines and (err := self._tx.run("\n".join(lines) + "\n")) is not None:
            raise NftError(err)
        self._committed = None

    def counters(self, family: str, name: str) -> dict[tuple[str, str], tuple[int, int]]:
        """(chain, rule identity) -> (packets, bytes) summed over rules of that identity
        (identity = the comment without `vxnet:` and the hash, e.g. `sg:<rule id>`)."""
        try:
            data = json.loads(self._tx.output(f"list table {family} {name}", OUTPUT_JSON))
        except (OSError, TimeoutError) as e:
            raise NftError(str(e)) from e
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for item in data.get("nftables", ()):
            rule = item.get("rule")
            if not rule or not str(rule.get("comment", "")).startswith("vxnet:"):
                continue
            kind = rule["comment"].removeprefix("vxnet:").split("#", 1)[0]
            for e in rule.get("expr", ()):
                if "counter" in e:
                    k = (rule["chain"], kind)
                    p, b = out.get(k, (0, 0))
                    out[k] = (p + int(e["counter"]["packets"]), b + int(e["counter"]["bytes"]))
        return out

