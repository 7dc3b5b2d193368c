"""A server config holding plain-text secrets (users' `password`, `[nova] password`) and readable
by other local users gets a warning (`vxnet server` logs it at start); a private one, or one with
only `password_hash` entries, does not (vxnet/config.py `plain_secrets`, `exposed_secrets`)."""

from __future__ import annotations

import os
import pathlib

import pytest

from vxnet.config import exposed_secrets, load_config, plain_secrets
from vxnet.passwords import hash_password

PLAIN = '''
[[identity.users]]
name = "admin"
password = "s3cret"
project = "admin"
roles = ["admin"]

[nova]
url = "http://192.0.2.7:8774"
auth_url = "http://192.0.2.7:5000/v3"
username = "neutron"
password = "nova-pw"
project = "service"
'''

HASHED = f'''
[[identity.users]]
name = "admin"
password_hash = "{hash_password("s3cret")}"
project = "admin"
roles = ["admin"]
'''


def _check(tmp_path: pathlib.Path, text: str, mode: int) -> str | None:
    path = tmp_path / "vxnet.toml"
    path.write_text(text)
    os.chmod(path, mode)
    load_config(str(path))  # a valid config
    return exposed_secrets(str(path))


def test_plain_secrets_are_named() -> None:
    import tomllib

    assert plain_secrets(tomllib.loads(PLAIN)) == ["the password of user 'admin'", "[nova] password"]
    assert plain_secrets({}) == []


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660])
def test_a_readable_config_with_passwords_is_warned_about(tmp_path: pathlib.Path, mode: int) -> None:
    msg = _check(tmp_path, PLAIN, mode)
    assert msg is not None and f"{mode:04o}" in msg and "'admin'" in msg and "[nova] password" in msg


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_a_private_config_is_not(tmp_path: pathlib.Path, mode: int) -> None:
    assert _check(tmp_path, PLAIN, mode) is None


def test_hashes_only_are_not_secrets_in_plain_text(tmp_path: pathlib.Path) -> None:
    assert _check(tmp_path, HASHED, 0o644) is None
