"""dataplane/nft_netlink.py's element encoding (pure) and `element_batch`'s choice of
what goes as a netlink batch. The expected bytes are what libnftables 1.0.6 sends for the same
elements (`nft --debug=netlink add element ...`); the root test `test_nft_netlink.py` compares
the kernel state both leave."""

from __future__ import annotations

import struct
import sys

import pytest

from vxnet.compute.nft_table import NftChain, NftSet, NftTable, nft_rule
from vxnet.dataplane.nft_netlink import (
    NLA_F_NESTED,
    Unencodable,
    element_batch,
    element_message,
    encode_element,
    layout,
)

TAP = b"tap00000021-9e\0\0"                 # ifname: 16 bytes
MAC = bytes.fromhex("020000000021")


def _attrs(data: bytes) -> dict[int, bytes]:
    """Type (without the nested flag) -> payload of the netlink attributes in `data`."""
    out, off = {}, 0
    while off + 4 <= len(data):
        n, t = struct.unpack_from("=HH", data, off)
        out[t & ~NLA_F_NESTED] = data[off + 4:off + n]
        off += (n + 3) & ~3
    return out


def _elem(lay_args: tuple[str, str, str], element: str, key_only: bool = False) -> dict[int, bytes]:
    top = _attrs(encode_element(layout(*lay_args), element, key_only))
    assert list(top) == [1]                 # NFTA_LIST_ELEM
    return _attrs(top[1])


def _value(attr: bytes) -> bytes:
    return _attrs(attr)[1]                  # NFTA_DATA_VALUE


def test_a_concatenation_pads_each_field_to_4_bytes_and_a_mark_is_host_endian() -> None:
    e = _elem(("ifname . ether_addr . ipv4_addr : mark", "", "map"),
              '"tap00000021-9e" . 02:00:00:00:00:21 . 100.64.0.33 : 0x00000825')
    assert _value(e[1]) == TAP + MAC + b"\0\0" + bytes([100, 64, 0, 33])
    assert _value(e[2]) == (0x825).to_bytes(4, sys.byteorder)
    assert 10 not in e                       # no key end: not an interval set


def test_a_single_field_is_not_padded() -> None:
    assert _value(_elem(("ether_addr", "", "set"), "02:00:00:00:00:21")[1]) == MAC
    assert _value(_elem(("ifname . ether_addr", "", "set"), '"tap00000021-9e" . 02:00:00:00:00:21')[1]) == TAP + MAC + b"\0\0"
    assert _value(_elem(("ipv6_addr", "", "set"), "2001:db8::1")[1]) == bytes.fromhex("20010db8" + "0" * 22 + "01")


def test_a_verdict_map_element_jumps_to_its_chain() -> None:
    e = _elem(("ifname : verdict", "", "map"), '"tap00000021-9e" : jump ps')
    verdict = _attrs(_attrs(e[2])[2])        # NFTA_SET_ELEM_DATA -> NFTA_DATA_VERDICT
    assert struct.unpack("!i", verdict[1])[0] == -3 and verdict[2] == b"ps\0"      # NFT_JUMP
    assert _value(_elem(("mark : verdict", "", "map"), "0x00000825 : jump eg_a")[1]) == (0x825).to_bytes(4, sys.byteorder)


def test_a_concatenated_interval_element_carries_its_end_and_a_delete_only_the_key() -> None:
    lay = ("ifname . ether_addr . ipv4_addr : mark", "interval", "map")
    e = _elem(lay, '"tap00000021-9e" . 02:00:00:00:00:21 . 100.64.0.0/24 : 0x00000825')
    assert _value(e[1]) == TAP + MAC + b"\0\0" + bytes([100, 64, 0, 0])
    assert _value(e[10]) == TAP + MAC + b"\0\0" + bytes([100, 64, 0, 255])
    gone = _elem(lay, '"tap00000021-9e" . 02:00:00:00:00:21 . 100.64.0.0/24 : 0x00000825', key_only=True)
    assert sorted(gone) == [1, 10]


def test_a_typeof_raw_payload_field_is_a_big_endian_integer() -> None:
    e = _elem(("typeof iifname . ether saddr . @th,64,128", "", "set"),
              '"tap00000021-9e" . 02:00:00:00:00:21 . 0x20010db8000000000000000000000001')
    assert _value(e[1]) == TAP + MAC + b"\0\0" + bytes.fromhex("20010db8" + "0" * 22 + "01")


@pytest.mark.parametrize(("lay", "element"), [
    (("ipv4_addr", "interval", "set"), "192.0.2.0/24"),             # start/end pairs: libnftables
    (("ipv4_addr", "timeout", "set"), "192.0.2.1"),
    (("ct_state", "", "set"), "established"),
    (("ipv4_addr", "", "set"), "192.0.2.1 counter"),                # an annotation
    (("ifname . ether_addr", "", "set"), "tap0 . 02:00:00:00:00:21"),  # an unquoted name
    (("ifname : verdict", "", "map"), '"tap0"'),                    # a map element without its value
    (("ipv4_addr", "", "set"), "2001:db8::1"),
    (("ifname : verdict", "", "map"), '"tap0" : jump "a b"'),
])
def test_what_it_does_not_know_is_unencodable(lay: tuple[str, str, str], element: str) -> None:
    with pytest.raises(Unencodable):
        element_message("inet", "t", "s", *lay, [element], False)


def _table(members: frozenset[str], chains: tuple[NftChain, ...] = (), flags: str = "") -> NftTable:
    base = (NftChain("c", (nft_rule("ip saddr @m", "accept", "m"),)),)
    return NftTable("inet", "t", base + chains, (NftSet("m", "ipv4_addr", members, flags),
                                                  NftSet("n", "ether_addr", frozenset({"02:00:00:00:00:01"}), "")))


def test_element_batch_only_for_element_changes_of_existing_sets() -> None:
    a, b = _table(frozenset({"192.0.2.1", "192.0.2.2"})), _table(frozenset({"192.0.2.2", "192.0.2.3"}))
    batch = element_batch([(b, a)])
    assert batch is not None and [m.what for m in batch] == ["delete element inet t m (1)", "add element inet t m (1)"]
    assert element_batch([(a, a)]) == []
    assert element_batch([(_table(b.sets[0].elements, (NftChain("d", ()),)), a)]) is None       # a new chain
    assert element_batch([(_table(b.sets[0].elements, flags="interval"), a)]) is None          # a declaration changed
