"""`auth.SignedTokens`: a token's signature is checked once per process, and a remembered check
never outlives the key that made it, the token's expiry, or the exact token text."""

from __future__ import annotations

import time

import pytest

from vxnet.api.auth import Context, SignedTokens, issue_token, verify_token
from vxnet.api.errors import ApiError

OLD, NEW = b"k" * 32, b"n" * 32


def token(key: bytes, expires_in: float = 3600.0) -> str:
    now = time.time()
    return issue_token(key, Context("u1", "alice", "p1", "proj", ("member",), now + expires_in, now, "aud1"))


def test_second_check_of_a_token_is_remembered() -> None:
    signed = SignedTokens()
    tok = token(NEW)
    first = signed.verify((NEW, OLD), tok)
    assert signed.hits == 0
    assert signed.verify((NEW, OLD), tok) == first == verify_token(NEW, tok)
    assert signed.hits == 1


def test_a_remembered_token_dies_with_its_key() -> None:
    """After a rotation that stops keeping the old key, a token it signed is refused even
    though its signature was checked (and remembered) while the key was valid."""
    signed = SignedTokens()
    tok = token(OLD)
    signed.verify((OLD,), tok)
    signed.verify((NEW, OLD), tok)  # rotated, old key kept: still valid
    assert signed.hits == 1
    with pytest.raises(ApiError) as e:
        signed.verify((NEW,), tok)  # old key dropped
    assert e.value.status == 401


def test_a_remembered_token_still_expires() -> None:
    signed = SignedTokens()
    tok = token(NEW, expires_in=5)
    signed.verify((NEW,), tok)
    with pytest.raises(ApiError) as e:
        signed.verify((NEW,), tok, now=time.time() + 10)
    assert e.value.status == 401
    assert signed.hits == 1  # the expiry is checked on the remembered context


def test_other_text_is_checked_in_full() -> None:
    """A changed signature or payload is another key of the memo: checked, and refused."""
    signed = SignedTokens()
    tok = token(NEW)
    signed.verify((NEW,), tok)
    body, sig = tok.split(".")
    forged = token(b"x" * 32)
    for bad in (f"{body}.{sig[:-2]}AA", f"{forged.split('.')[0]}.{sig}", forged):
        with pytest.raises(ApiError) as e:
            signed.verify((NEW,), bad)
        assert e.value.status == 401
    assert signed.hits == 0


def test_bounded() -> None:
    signed = SignedTokens(size=3)
    toks = [token(NEW, 3600 + i) for i in range(5)]
    for t in toks:
        signed.verify((NEW,), t)
    assert len(signed._checked) <= 3
    signed.verify((NEW,), toks[-1])
    assert signed.hits == 1
