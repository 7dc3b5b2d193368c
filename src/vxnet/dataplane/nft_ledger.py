"""The agent's own nftables commits, per network namespace: proof that nobody else committed.

The kernel's ruleset generation (NFT_MSG_GETGEN) of a namespace moves by one with every
committed transaction, whoever made it (a transaction that changes nothing commits nothing and
leaves it). An executor that keeps the ledger (`nft_exec.NftExecutor(ledger=True)`: the
firewall's, the DHCP responder's, the metadata feature's) reads it right before and right after
each of its transactions, in its own thread, and reports both here. Per namespace the ledger
keeps a chain of generations each step of which was one of ours:

- `commit(ns, before, after, ok)`: one of our transactions. Its window was clean when `after` is
  `before` + 1 (a commit: ours) or `before` (nothing committed; for a failed transaction only
  this). A clean window whose `before` is the chain's head extends the chain (same epoch); a
  clean window elsewhere starts a new chain (new epoch) at `after`; an unclean one (someone
  else committed in it, or a generation was unreadable) leaves no chain until the next clean
  one (the epoch moves too). Returns the `Token` of the chain at `after`, or None.
- `mark(ns, gen)`: the caller read the kernel after reading generation `gen` (a verified
  listing): the chain goes on when `gen` is its head, else a new one starts there.
- `unchanged(token, gen)`: `gen` (read now) is the head of the chain `token` belongs to: every
  commit since the token was taken was ours. A token holder (the firewall, for its tables)
  then knows its tables are what it left, without reading them back (with 10,000 remote-group
  members that listing costs the agent ~6 MB of peak memory through libnftables).

`token.epoch` equal to an earlier token's: no foreign commit between the two (the firewall
keeps its proof across an incremental transaction only then: an incremental change applied on
top of someone else's is no proof of the result).

What it cannot see: one of our transactions that changed nothing committed in the same instant
as another process's commit reads as ours (`after` = `before` + 1). Commits of executors that
keep no ledger (the QoS table through the `nft` program, another process) break the chain:
the next check reads the kernel back (correct, only dearer).

The generation is read through `nft_netlink.NfnlSocket`, in the namespace of the thread that
first uses it.
"""

from __future__ import annotations

import dataclasses
import os
import threading

from vxnet.dataplane.nft_netlink import NfnlSocket

NsKey = tuple[int, int]          # (st_dev, st_ino) of a network namespace


def thread_netns() -> NsKey:
    """The calling thread's network namespace."""
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


def _next(gen: int) -> int:
    """The generation after `gen` (32 bits; the kernel skips 0)."""
    n = (gen + 1) & 0xFFFFFFFF
    return n or 1


@dataclasses.dataclass(frozen=True)
class Token:
    """A point of a namespace's chain of our own commits."""

    ns: NsKey
    epoch: int
    gen: int


class Ledger:
    """Per-namespace chains of our own commits (thread-safe; see the module contract)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[NsKey, tuple[int, int | None]] = {}     # ns -> (epoch, head or None)

    def commit(self, ns: NsKey, before: int | None, after: int | None, ok: bool = True) -> Token | None:
        clean = (before is not None and after is not None
                 and (after == before or (ok and after == _next(before))))
        with self._lock:
            epoch, head = self._state.get(ns, (0, None))
            if not clean:
                self._state[ns] = (epoch + 1, None)
                return None
            assert after is not None
            if head is None or head != before:
                epoch += 1
            self._state[ns] = (epoch, after)
            return Token(ns, epoch, after)

    def mark(self, ns: NsKey, gen: int) -> Token:
        with self._lock:
            epoch, head = self._state.get(ns, (0, None))
            if head != gen:
                epoch += 1
                self._state[ns] = (epoch, gen)
            return Token(ns, epoch, gen)

    def foreign(self, ns: NsKey) -> None:
        """A commit we could not bracket: the chain breaks."""
        with self._lock:
            epoch, _ = self._state.get(ns, (0, None))
            self._state[ns] = (epoch + 1, None)

    def unchanged(self, token: Token | None, gen: int | None) -> bool:
        if token is None or gen is None:
            return False
        with self._lock:
            return self._state.get(token.ns) == (token.epoch, gen)


LEDGER = Ledger()      # the process's (an agent's executors share it)


def nft_genid() -> int:
    """The ruleset generation of the calling thread's namespace (one-off: opens and closes a socket)."""
    r = NfnlSocket()
    try:
        return r.generation()
    finally:
        r.close()
