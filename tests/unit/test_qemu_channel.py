"""The QEMU guests' command channel, client side (lab/qemu.py), against a scripted peer on a unix
socket that plays the guest's end: framing, exit codes, binary output, answers left over from a
caller that gave up, and the time-out. The guest side runs for real in tests/root/test_qemu_guest.py."""

from __future__ import annotations

import base64
import os
import socket
import threading
from collections.abc import Callable

import pytest

from vxnet.lab import qemu


def _peer(path: str, answer: Callable[[str, bytes], bytes]) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def run() -> None:
        c, _ = srv.accept()
        buf = b""
        while b"\n" not in buf:
            buf += c.recv(4096)
        rid, b64 = buf.split(b"\n")[0].decode().split(" ", 1)
        out = answer(rid, base64.b64decode(b64))
        if out:
            c.sendall(out)
            c.close()
        else:
            c.recv(1)   # say nothing until the client gives up
            c.close()
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _frame(rid: str, out: bytes, rc: int) -> bytes:
    b64 = base64.encodebytes(out)   # 76-column lines, as busybox base64 writes them
    return f"BEGIN {rid}\n".encode() + b64 + f"END {rid} {rc}\n".encode()


def test_exit_code_and_binary_output_round_trip(tmp_path) -> None:
    path = str(tmp_path / "ctl")
    seen = {}

    def answer(rid: str, script: bytes) -> bytes:
        seen["script"] = script
        return _frame(rid, b"\x00\xff" + b"x" * 200, 7)

    t = _peer(path, answer)
    assert qemu.exec_(path, "echo 'quoted $x'; exit 7", timeout=5) == (7, b"\x00\xff" + b"x" * 200)
    assert seen["script"] == b"echo 'quoted $x'; exit 7"
    t.join(5)


def test_answers_for_another_caller_are_skipped(tmp_path) -> None:
    path = str(tmp_path / "ctl")
    t = _peer(path, lambda rid, _: _frame("0ldc411er000", b"stale output\n", 1) + b"\n" + _frame(rid, b"mine\n", 0))
    assert qemu.exec_(path, "true", timeout=5) == (0, b"mine\n")
    t.join(5)


def test_a_silent_guest_times_out_and_a_missing_socket_is_an_error(tmp_path) -> None:
    path = str(tmp_path / "ctl")
    t = _peer(path, lambda rid, _: b"")
    with pytest.raises(qemu.GuestError, match="timed out"):
        qemu.exec_(path, "sleep 100", timeout=0.5)
    t.join(5)
    with pytest.raises(qemu.GuestError, match="no command channel"):
        qemu.exec_(str(tmp_path / "absent"), "true", timeout=0.3)
    assert not os.path.exists(str(tmp_path / "absent"))


def test_marker_does_not_match_a_longer_name() -> None:
    """`stop()` kills only a PID whose command line carries this guest's exact marker."""
    assert qemu.marker("g1") == "guest=vxnet-g1 "
    assert qemu.marker("g1") not in "qemu-system-x86_64 -name guest=vxnet-g10 -m 128 "
    assert not qemu.alive(os.getpid(), "g1")
