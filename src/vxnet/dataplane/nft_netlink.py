"""nf_tables over netlink without libnftables: the ruleset generation, and set/map element
changes as ONE batch (a port-up's transaction).

Why: a port-up only adds elements to existing named sets and maps (docs/security-groups.md), and
libnftables spends most of such a transaction's CPU parsing and evaluating the text and fetching
its cache (docs/benchmarks.md, session 18); the kernel's part is the same whoever encodes it.

Contract:
- `NfnlSocket`: a NETLINK_NETFILTER socket of the namespace of the thread that first uses it,
  kept open (closing one costs the kernel a grace period, 5-15 ms measured). `generation()` is
  NFT_MSG_GETGEN; `batch(messages)` sends the messages between NFNL_MSG_BATCH_BEGIN and
  BATCH_END (one transaction, all or nothing: the kernel aborts the whole batch on any error),
  then a GETGEN in its own request, and returns (the batch's errors as text or None, the
  generation after). The kernel handles a netlink request inside `sendmsg`, so every error of
  the batch is queued before the GETGEN's answer.
- `element_batch([(new, old), ...])`: the messages turning each table `old` into `new` when
  that only adds and deletes elements of existing sets and maps (the same chains, the same
  declarations: a port-up), else None (the caller sends text through libnftables).
- `element_message(family, table, set, elements, delete)`: one NEWSETELEM/DELSETELEM message of
  the elements, written as the agent writes them (`compute/nft_table.py` element texts) and
  encoded from the set's declared type (`NftSet.type`: nft datatypes or `typeof` expressions;
  concatenations have each field padded to 4 bytes, a single field is not; `ifname` is 16
  bytes; `mark` host-endian, addresses and raw payload fields big-endian; map data a verdict or
  a value). `Unencodable` for anything it does not know (a datatype, an element annotation,
  a single-field interval set whose elements libnftables splits into start/end pairs): the
  caller then sends the same change as text through libnftables. Concatenated interval sets
  (the `_net` twins) carry each element's end in NFTA_SET_ELEM_KEY_END, as libnftables does.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import os
import re
import socket
import struct
import sys
from collections.abc import Callable, Iterable

from vxnet.compute.nft_table import NftTable

log = logging.getLogger("vxnet.dataplane.nft")

NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWSETELEM, NFT_MSG_GETGEN, NFT_MSG_DELSETELEM = 12, 16, 14
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NLM_F_REQUEST, NLM_F_CREATE = 0x1, 0x400
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10
FAMILIES = {"ip": 2, "ip6": 10, "inet": 1, "arp": 3, "bridge": 7, "netdev": 5}
_VERDICTS = {"accept": 1, "drop": 0, "continue": -1, "return": -5}
_CHAINED = {"jump": -3, "goto": -4}
_ETHER = re.compile(r"^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}$")
_RAW = re.compile(r"^@(?:ll|nh|th|ih),\d+,(\d+)$")
_NAME = re.compile(r'^"?([A-Za-z0-9_.-]{1,255})"?$')
MAX_BATCH = 128 * 1024      # bytes of one batch (the socket's send buffer is ~200 KB): above it, libnftables


class Unencodable(ValueError):
    """An element or a set this encoder does not know: send the change through libnftables."""


def _ifname(v: str) -> bytes:
    if len(v) < 2 or v[0] != '"' or v[-1] != '"' or len(v) > 17 or '"' in v[1:-1] or "*" in v:
        raise Unencodable(f"ifname {v}")
    return v[1:-1].encode().ljust(16, b"\0")


def _ether(v: str) -> bytes:
    if not _ETHER.match(v):
        raise Unencodable(f"ether_addr {v}")
    return bytes.fromhex(v.replace(":", ""))


def _addr(version: int) -> Callable[[str], bytes]:
    af = socket.AF_INET if version == 4 else socket.AF_INET6

    def enc(v: str) -> bytes:
        try:
            return socket.inet_pton(af, v)
        except OSError as e:
            raise Unencodable(f"address {v}") from e
    return enc


def _int(size: int, order: str) -> Callable[[str], bytes]:
    def enc(v: str) -> bytes:
        try:
            return int(v, 0).to_bytes(size, order)  # type: ignore[arg-type]
        except (ValueError, OverflowError) as e:
            raise Unencodable(f"integer {v}") from e
    return enc


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a key (or a map's data): its length in bytes and its encoder."""

    size: int
    encode: Callable[[str], bytes]
    version: int = 0         # 4 / 6: an address field (a prefix is a range of it in an interval set)


_DATATYPES = {
    "ifname": Field(16, _ifname),
    "ether_addr": Field(6, _ether),
    "ipv4_addr": Field(4, _addr(4), 4),
    "ipv6_addr": Field(16, _addr(6), 6),
    "mark": Field(4, _int(4, sys.byteorder)),
    "inet_service": Field(2, _int(2, "big")),
    "inet_proto": Field(1, _int(1, "big")),
}
_TYPEOF = {"iifname": "ifname", "oifname": "ifname", "meta iifname": "ifname", "meta oifname": "ifname",
           "ether saddr": "ether_addr", "ether daddr": "ether_addr", "arp saddr ether": "ether_addr",
           "arp daddr ether": "ether_addr", "ip saddr": "ipv4_addr", "ip daddr": "ipv4_addr",
           "arp saddr ip": "ipv4_addr", "arp daddr ip": "ipv4_addr", "ip6 saddr": "ipv6_addr",
           "ip6 daddr": "ipv6_addr", "meta mark": "mark", "ct mark": "mark"}


def _field(spec: str) -> Field:
    spec = " ".join(spec.split())
    if spec in _DATATYPES:
        return _DATATYPES[spec]
    if spec in _TYPEOF:
        return _DATATYPES[_TYPEOF[spec]]
    if (m := _RAW.match(spec)) and int(m.group(1)) % 8 == 0 and 0 < int(m.group(1)) <= 128:
        size = int(m.group(1)) // 8
        return Field(size, _int(size, "big"))                  # a raw payload field: network order
    raise Unencodable(f"key type {spec}")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a set's elements are encoded."""

    key: tuple[Field, ...]
    data: Field | None          # a map's value (None: a set, or a verdict map)
    verdict: bool               # a verdict map
    interval: bool              # a concatenated interval set: each element carries its end


@functools.lru_cache(maxsize=256)
def layout(type_text: str, flags: str, kind: str) -> Layout:
    """The element layout of a set or map declared `type_text` (with `flags`); Unencodable when
    this encoder cannot write its elements."""
    text = type_text.strip()
    text = text.removeprefix("typeof ")
    key_text, _, data_text = text.partition(" : ")
    if (kind == "map") != bool(data_text):
        raise Unencodable(f"{kind} of type {type_text}")
    flag_set = {f.strip() for f in flags.split(",") if f.strip()}
    if flag_set - {"interval"}:
        raise Unencodable(f"flags {flags}")
    key = tuple(_field(f) for f in key_text.split(" . "))
    interval = "interval" in flag_set
    if interval and len(key) < 2:
        raise Unencodable("a single-field interval set (start/end element pairs)")
    verdict = data_text.strip() == "verdict"
    return Layout(key, None if verdict or not data_text else _field(data_text), verdict, interval)


def _attr(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def _nest(kind: int, *parts: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(parts))


def _value(kind: int, data: bytes) -> bytes:
    """Attribute `kind` nesting one NFTA_DATA_VALUE `data` (a key, a key's end, a map value)."""
    pad = -len(data) % 4
    return struct.pack("=HHHH", 8 + len(data) + pad, kind | NLA_F_NESTED, 4 + len(data), 1) + data + b"\0" * pad


def _key(lay: Layout, text: str) -> tuple[bytes, bytes]:
    """The key's start and end (the same unless a field is a prefix of an interval set)."""
    values = text.split(" . ")
    if len(values) != len(lay.key):
        raise Unencodable(f"element {text}")
    if len(values) == 1:
        one = lay.key[0].encode(values[0].strip())
        return one, one
    if not lay.interval:                      # a concatenation's fields are 4-byte aligned
        key = b"".join([f.encode(v.strip()) + b"\0" * (-f.size % 4) for f, v in zip(lay.key, values)])
        return key, key
    start: list[bytes] = []
    end: list[bytes] = []
    for f, v in zip(lay.key, values):
        v = v.strip()
        pad = b"\0" * (-f.size % 4)
        if f.version and "/" in v:
            try:
                net = ipaddress.ip_network(v, strict=False)
            except ValueError as e:
                raise Unencodable(f"prefix {v}") from e
            if net.version != f.version:
                raise Unencodable(f"prefix {v}")
            start += (net.network_address.packed, pad)
            end += (net.broadcast_address.packed, pad)
        else:
            lo = f.encode(v)
            start += (lo, pad)
            end += (lo, pad)
    return b"".join(start), b"".join(end)


@functools.lru_cache(maxsize=1024)
def _verdict(text: str) -> bytes:
    """NFTA_SET_ELEM_DATA of a verdict map's value (`jump CHAIN`, `accept`, ...)."""
    words = text.split()
    if len(words) == 1 and words[0] in _VERDICTS:
        body = _attr(1, struct.pack("!i", _VERDICTS[words[0]]))               # NFTA_VERDICT_CODE
    elif len(words) == 2 and words[0] in _CHAINED and (m := _NAME.match(words[1])):
        body = _attr(1, struct.pack("!i", _CHAINED[words[0]])) + _attr(2, m.group(1).encode() + b"\0")
    else:
        raise Unencodable(f"verdict {text}")
    return _nest(2, _nest(2, body))                                           # NFTA_DATA_VERDICT


def encode_element(lay: Layout, element: str, key_only: bool = False) -> bytes:
    """One NFTA_LIST_ELEM: the key (and its end), and a map's data unless `key_only` (a delete)."""
    key_text, sep, data_text = element.partition(" : ")
    if bool(sep) != (lay.verdict or lay.data is not None) and not (key_only and not sep):
        raise Unencodable(f"element {element}")
    start, end = _key(lay, key_text)
    body = _value(1, start)                                                   # NFTA_SET_ELEM_KEY
    if lay.interval:
        body += _value(10, end)                                               # NFTA_SET_ELEM_KEY_END
    if sep and not key_only:
        body += _verdict(data_text.strip()) if lay.verdict else _value(2, lay.data.encode(data_text.strip()))  # type: ignore[union-attr]
    return struct.pack("=HH", 4 + len(body), 1 | NLA_F_NESTED) + body        # NFTA_LIST_ELEM


@dataclasses.dataclass(frozen=True)
class Message:
    """One nf_tables message of a batch: its type, flags, family and attributes."""

    kind: int
    flags: int
    family: int
    payload: bytes
    what: str                    # for an error's text: the command it stands for


def element_message(family: str, table: str, name: str, type_text: str, flags: str, kind: str,
                    elements: list[str], delete: bool) -> Message:
    """The NEWSETELEM (or DELSETELEM) message of `elements` of set/map `name` of `table`."""
    if family not in FAMILIES:
        raise Unencodable(f"family {family}")
    lay = layout(type_text, flags, kind)
    items = b"".join(encode_element(lay, e, key_only=delete) for e in elements)
    payload = (_attr(1, table.encode() + b"\0") + _attr(2, name.encode() + b"\0")
               + _nest(3, items))
    op = NFT_MSG_DELSETELEM if delete else NFT_MSG_NEWSETELEM
    return Message((NFNL_SUBSYS_NFTABLES << 8) | op, NLM_F_REQUEST | (0 if delete else NLM_F_CREATE),
                   FAMILIES[family], payload,
                   f"{'delete' if delete else 'add'} element {family} {table} {name} ({len(elements)})")


def element_batch(changes: Iterable[tuple[NftTable, NftTable]]) -> list[Message] | None:
    """The change from each `old` to `new` (`(new, old)` pairs) as netlink element messages
    (`dataplane/nft_netlink.py`), when it only adds and deletes elements of existing sets and
    maps (the same chains, the same sets with the same declarations: a port-up) and the
    encoder knows every one of them; else None (the change goes as text through libnftables)."""
    out: list[Message] = []
    size = 0
    for new, old in changes:
        if old.chains != new.chains or len(old.sets) != len(new.sets):
            return None
        before = {s.name: s for s in old.sets}
        for s in new.sets:
            b = before.get(s.name)
            if b is None or (b.kind, b.type, b.flags) != (s.kind, s.type, s.flags):
                return None
            if b is s or b.elements == s.elements:
                continue
            # a map element whose value changed: its key deleted, then added with the new value
            for delete, elements in ((True, b.elements - s.elements), (False, s.elements - b.elements)):
                if not elements:
                    continue
                try:
                    m = element_message(new.family, new.name, s.name, s.type, s.flags, s.kind, sorted(elements), delete)
                except Unencodable as e:
                    log.debug("%s %s: %s; through libnftables", new.name, s.name, e)
                    return None
                out.append(m)
                size += len(m.payload) + 20
                if size > MAX_BATCH:
                    return None
    return out


def _nlmsg(kind: int, flags: int, seq: int, family: int, res_id: int, payload: bytes) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + payload        # nfgenmsg
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


class NfnlSocket:
    """A NETLINK_NETFILTER socket in the namespace of the thread that first uses it (see the
    module contract)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0

    def _socket(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)        # NETLINK_NETFILTER
            s.settimeout(5)
            s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)     # an error echoes the header, not the batch
            s.bind((0, 0))
            self._sock = s
        return self._sock

    def _next(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def generation(self) -> int:
        """The namespace's ruleset generation (NFT_MSG_GETGEN)."""
        return self._exchange(b"", {})[1]

    def batch(self, messages: list[Message]) -> tuple[str | None, int]:
        """Apply `messages` as one transaction: (None, or the errors as text; the generation
        read right after it). OSError when the socket fails (the batch may or may not have
        been applied: the generation tells)."""
        seqs: dict[int, str] = {}
        begin = self._next()
        seqs[begin] = "commit"            # a failed commit is acknowledged on the batch's first message
        out = [_nlmsg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin, 0, NFNL_SUBSYS_NFTABLES, b"")]
        for m in messages:
            seq = self._next()
            seqs[seq] = m.what
            out.append(_nlmsg(m.kind, m.flags, seq, m.family, 0, m.payload))
        out.append(_nlmsg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, self._next(), 0, NFNL_SUBSYS_NFTABLES, b""))
        errors, gen = self._exchange(b"".join(out), seqs)
        return ("; ".join(errors) or None), gen

    def _exchange(self, batch: bytes, seqs: dict[int, str]) -> tuple[list[str], int]:
        """Send `batch` (if any), then a GETGEN; read until its answer: (the batch's errors, the
        generation)."""
        s = self._socket()
        try:
            if batch:
                s.send(batch)
            seq = self._next()
            s.send(_nlmsg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, NLM_F_REQUEST, seq, socket.AF_UNSPEC, 0, b""))
            errors: list[str] = []
            while True:
                data = s.recv(65536)
                off = 0
                while off + 16 <= len(data):
                    length, mtype, _, mseq = struct.unpack_from("=IHHI", data, off)
                    if mtype == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, off + 16)[0]
                        if mseq == seq:
                            raise OSError(code, "NFT_MSG_GETGEN")
                        if code and mseq in seqs:
                            errors.append(f"{seqs[mseq]}: {os_error(code)}")
                    elif mseq == seq:
                        return errors, _genid(data[off:off + length])
                    off += (length + 3) & ~3
                    if length < 16:
                        break
        except OSError:
            self.close()            # a broken socket: the next call opens a fresh one
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def os_error(code: int) -> str:
    return f"{os.strerror(code)} (errno {code})"


def _genid(msg: bytes) -> int:
    off = 20
    while off + 4 <= len(msg):
        alen, atype = struct.unpack_from("=HH", msg, off)
        if atype & 0x3FFF == 1:                                      # NFTA_GEN_ID
            return int(struct.unpack_from("!I", msg, off + 4)[0])
        if alen < 4:
            break
        off += (alen + 3) & ~3
    raise OSError("NFT_MSG_GETGEN: no generation id")
