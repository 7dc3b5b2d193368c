"""Password hashes for `[[identity.users]]`: scrypt from the standard library.

Format (the one passlib and many tools read): `$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<hash>`,
salt and hash in unpadded standard base64. scrypt is memory-hard (N=2^15, r=8: 32 MiB and
~50-100 ms per check), ships with Python (OpenSSL), so it adds no dependency; argon2 would need
a C extension package for a comparable gain.

Checks are constant-time (`hmac.compare_digest`) for hashes and plain passwords alike, and a
check for an unknown user costs as much as a real one (`dummy_check`), so timing does not tell
which user names exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

PREFIX = "$scrypt$"
LN, R, P = 15, 8, 1
_MAXMEM = 64 * 1024 * 1024
_FORMAT = re.compile(r"^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$")


class BadHash(ValueError):
    """A `password_hash` that is not in the format above."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, ln: int, r: int, p: int, n: int = 32) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=2**ln, r=r, p=p, maxmem=_MAXMEM, dklen=n)


def hash_password(password: str, ln: int = LN) -> str:
    """A new salted scrypt hash of `password`."""
    salt = secrets.token_bytes(16)
    return f"{PREFIX}ln={ln},r={R},p={P}${_b64(salt)}${_b64(_scrypt(password, salt, ln, R, P))}"


def parse_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    """(ln, r, p, salt, digest) of a hash; BadHash if it is not one we can check."""
    m = _FORMAT.match(text)
    if not m:
        raise BadHash("password_hash must look like $scrypt$ln=15,r=8,p=1$<salt>$<hash> (see `vxnet passwd`)")
    ln, r, p = int(m[1]), int(m[2]), int(m[3])
    if not (10 <= ln <= 20 and 1 <= r <= 16 and 1 <= p <= 4) or 128 * r * 2**ln > _MAXMEM // 2:
        raise BadHash(f"password_hash parameters ln={ln}, r={r}, p={p} are out of range")
    try:
        salt, digest = _unb64(m[4]), _unb64(m[5])
    except ValueError as e:
        raise BadHash(f"password_hash is not valid base64: {e}") from None
    if len(salt) < 8 or len(digest) < 16:
        raise BadHash("password_hash salt or digest is too short")
    return ln, r, p, salt, digest


def check_password(given: str, password: str = "", password_hash: str = "") -> bool:
    """Does `given` match the configured hash (preferred) or plain password? Constant-time."""
    if password_hash:
        ln, r, p, salt, digest = parse_hash(password_hash)
        return hmac.compare_digest(_scrypt(given, salt, ln, r, p, len(digest)), digest)
    return bool(password) and hmac.compare_digest(given.encode(), password.encode())


_DUMMY = None


def dummy_check(given: str) -> None:
    """Spend what a real check would, for a user that does not exist."""
    global _DUMMY
    if _DUMMY is None:
        _DUMMY = hash_password(secrets.token_hex(8))
    check_password(given, password_hash=_DUMMY)
