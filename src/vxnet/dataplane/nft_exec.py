"""The one nftables executor: transactions and listings in the calling thread's network
namespace.

Contract: `NftExecutor.run(text)` applies `text` as ONE transaction (all or nothing) and returns
None, or the error text (nothing applied); `output(cmd, flags)` returns a listing (OSError on
failure). In-process through libnftables (ctypes; ~0.25-1 ms a transaction, against ~15 ms for
an `nft` process, which would sit on every port-up's critical path); when libnftables cannot be
loaded, the `nft` program (`ip netns exec NS nft` when the executor was given the namespace
name). A libnftables context works in the namespace of the thread that created it (`setns` is
per thread), so an executor must be created and used by one thread: the nftables driver's
worker thread, the DHCP responder thread.

`run_batch(messages)`: set and map element changes as one nf_tables netlink batch of our own
(`dataplane/nft_netlink.py`: no libnftables parse, evaluation or cache; a port-up's transaction),
all or nothing as `run`; only in process.

With `ledger=True` the executor brackets each transaction with two reads of the namespace's
ruleset generation and reports them to `nft_ledger.LEDGER` (`token`: where that left the chain
of our own commits; `generation()`, `mark(gen)` for its user); a `netns` executor running the
`nft` program cannot read that namespace's generation and reports a commit it could not bracket.
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
from typing import Any

from vxnet.dataplane.nft_ledger import LEDGER, NsKey, Token, thread_netns
from vxnet.dataplane.nft_netlink import Message, NfnlSocket

log = logging.getLogger("vxnet.dataplane.nft")

OUTPUT_HANDLE = 1 << 3          # NFT_CTX_OUTPUT_HANDLE (libnftables.h)
OUTPUT_JSON = 1 << 4            # NFT_CTX_OUTPUT_JSON
OUTPUT_TERSE = 1 << 11          # NFT_CTX_OUTPUT_TERSE


class LibNft:
    """A libnftables context, bound to the network namespace of the thread that made it."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for fn in ("nft_ctx_buffer_output", "nft_ctx_buffer_error", "nft_ctx_free"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        self._lib: Any = lib
        self._ctx = self._new_ctx()

    def _new_ctx(self) -> Any:
        ctx = self._lib.nft_ctx_new(0)
        if not ctx:
            raise OSError("nft_ctx_new failed")
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)
        return ctx

    def run(self, text: str) -> str | None:
        """None on success, else the error text."""
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
        err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace").strip()
        return None if rc == 0 else (err or f"nft error {rc}")

    def output(self, cmd: str, flags: int) -> str:
        """The output of a listing command run with output `flags` (OSError on failure)."""
        self._lib.nft_ctx_output_set_flags(self._ctx, flags)
        try:
            err = self.run(cmd)
            out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
        finally:
            self._lib.nft_ctx_output_set_flags(self._ctx, 0)
            # A fresh context after a listing (~0.1-0.5 ms; listings are rare: start, a resync
            # after someone else's commit, doctor): the listed ruleset stays in the context's
            # cache, and its text in the output buffer, until the next command; with a
            # 10,000-member set that is ~4 MB held for nothing.
            fresh = self._new_ctx()
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = fresh
        if err is not None:
            raise OSError(err)
        return out

    def close(self) -> None:
        self._lib.nft_ctx_free(self._ctx)


class NftExecutor:
    """libnftables in the calling thread's namespace, else the `nft` program (in `netns` when
    given: the fallback when the thread could not enter it)."""

    def __init__(self, netns: str | None = None, in_process: bool = True, ledger: bool = False) -> None:
        self.netns = netns
        self._lib: LibNft | None = None
        self._ledger = ledger
        self._ns: NsKey | None = None
        self._gen: NfnlSocket | None = None
        self.token: Token | None = None       # after a transaction (ledger only): see nft_ledger
        if in_process:
            try:
                self._lib = LibNft()
            except OSError as e:
                log.warning("libnftables unavailable (%s): using the nft program", e)

    @property
    def in_process(self) -> bool:
        return self._lib is not None

    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def run(self, text: str) -> str | None:
        """Apply `text` as one transaction: None on success, else the error text."""
        if not self._ledger:
            return self._run(text)
        if self._lib is None and self.netns:
            # the `nft` program in another namespace: its generation is not readable from here
            err = self._run(text)
            try:
                st = os.stat(f"/run/netns/{self.netns}")
                LEDGER.foreign((st.st_dev, st.st_ino))
            except OSError:
                pass
            self.token = None
            return err
        before = self.generation()
        err = self._run(text)
        self.token = LEDGER.commit(self._netns(), before, self.generation(), err is None)
        return err

    def _netns(self) -> NsKey:
        if self._ns is None:
            self._ns = thread_netns()
        return self._ns

    def generation(self) -> int | None:
        """The ruleset generation of this executor's namespace (None: unreadable). Only from
        the executor's own thread, as every call."""
        try:
            return self._nfnl().generation()
        except OSError as e:
            log.debug("nft generation unreadable: %s", e)
            return None

    def _nfnl(self) -> NfnlSocket:
        if self._gen is None:
            self._gen = NfnlSocket()
        return self._gen

    def run_batch(self, messages: list[Message]) -> str | None:
        """Apply set/map element changes (`nft_netlink.element_message`) as one netlink batch,
        without libnftables: None on success, else the error text (nothing applied). Only in
        process (the thread is in the namespace: `in_process`)."""
        assert self._lib is not None, "run_batch needs the thread in the namespace"
        before = self.generation() if self._ledger else None
        try:
            err, after = self._nfnl().batch(messages)
        except OSError as e:
            err, after = f"nft netlink batch: {e}", None
        if self._ledger:
            self.token = LEDGER.commit(self._netns(), before, after, err is None)
        return err

    def mark(self, gen: int) -> Token:
        """The caller verified the kernel after reading generation `gen` (nft_ledger `mark`)."""
        self.token = LEDGER.mark(self._netns(), gen)
        return self.token

    def _run(self, text: str) -> str | None:
        if self._lib is not None:
            return self._lib.run(text)
        r = subprocess.run([*self._prefix(), "nft", "-f", "-"], input=text, capture_output=True, text=True,
                           timeout=120, check=False)
        return None if r.returncode == 0 else ((r.stderr or r.stdout).strip()[-2000:] or f"nft exit {r.returncode}")

    def output(self, cmd: str, flags: int = 0) -> str:
        """A listing's text (OSError on failure)."""
        if self._lib is not None:
            return self._lib.output(cmd, flags)
        opts = ((["-a"] if flags & OUTPUT_HANDLE else []) + (["-t"] if flags & OUTPUT_TERSE else [])
                + (["-j"] if flags & OUTPUT_JSON else []))
        r = subprocess.run([*self._prefix(), "nft", *opts, *cmd.split()], capture_output=True, text=True,
                           timeout=120, check=False)
        if r.returncode != 0:
            raise OSError(r.stderr.strip()[-500:])
        return r.stdout

    def close(self) -> None:
        if self._lib is not None:
            self._lib.close()
            self._lib = None
        if self._gen is not None:
            self._gen.close()
            self._gen = None
