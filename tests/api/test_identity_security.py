"""Identity as an attacker would try it, over real HTTP against real servers.

- Secrets at rest: the store's directory is 0700 and its files 0600 (also the -wal/-shm SQLite
  makes later); a store others can read is refused with the `chmod` to run. As user `nobody`,
  the forged-token attack of issue 13 (read the key from the store, sign an admin token) fails
  at the first step; the same attack on a readable copy gets the key, and its forged 10-year
  admin token is still refused.
- Tokens are checked against the store and the config: revoked (across two servers on one
  store, within a second, with token->token and GET/HEAD validation; one token or all of a
  user's), user removed, disabled, roles changed, password changed.
- Key rotation with and without --revoke, through the real `vxnet keys rotate`.
- Password hashes (`vxnet passwd`), failed-login rate limits per user and per source.
- Every identity input validated: fuzzed bodies, shapes, types and sizes never give a 5xx, and
  errors have Keystone's body.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import USERS, ServerHandle, free_port, start_server
from tests.support import http
from vxnet.api.auth import Context, issue_token, verify_token
from vxnet.api.errors import ApiError
from vxnet.api.login_limits import LoginLimiter
from vxnet.config import Config, ConfigError, User, load_config
from vxnet.passwords import check_password, hash_password
from vxnet.services.identity_state import TOKEN_KEY, IdentityState, rotate_keys
from vxnet.store import open_store
from vxnet.store.secure_files import InsecureFile
from vxnet.store.sqlite_store import SqliteStore

VXNET = str(Path(sys.executable).parent / "vxnet")
TOKENS = "/identity/v3/auth/tokens"


def login(url: str, user: str, password: str, project: str | None = None,
          client: httpx.Client | None = None) -> httpx.Response:
    body: dict[str, Any] = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"id": "default"}, "password": password}}}}}
    if project:
        body["auth"]["scope"] = {"project": {"name": project, "domain": {"id": "default"}}}
    if client is None:
        return http.post(url + TOKENS, json=body, timeout=30)
    return client.post(url + TOKENS, json=body, timeout=30)


def token_of(url: str, user: User) -> str:
    r = login(url, user.name, user.password, user.project)
    assert r.status_code == 201, r.text
    return r.headers["X-Subject-Token"]


def networks(url: str, token: str) -> int:
    return http.get(url + "/v2.0/networks", headers={"X-Auth-Token": token}, timeout=30).status_code


def keystone_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == status and body["error"]["message"], body
    return body["error"]  # type: ignore[no-any-return]


USER = {u.name: u for u in USERS}


# --- secrets at rest ---------------------------------------------------------------------------


def modes(d: str) -> dict[str, int]:
    return {n: stat.S_IMODE(os.stat(os.path.join(d, n)).st_mode) for n in os.listdir(d)}


def test_store_files_are_owner_only_and_a_readable_store_is_refused(tmp_path) -> None:
    d = tmp_path / "state"
    store = SqliteStore(str(d / "vxnet.db"))
    IdentityState(store)  # writes the signing keys
    for i in range(50):  # enough writes for SQLite to have -wal and -shm
        store.txn([], [])
        from vxnet.store.contract import put
        put(store, f"/vxnet/x/{i}", "y" * 100)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    files = modes(str(d))
    assert {"vxnet.db", "vxnet.db-wal", "vxnet.db-shm"} <= set(files), files
    assert all(m == 0o600 for m in files.values()), files
    store.close()
    for name in ("vxnet.db", "vxnet.db-wal"):
        p = d / name
        if not p.exists():
            continue
        os.chmod(p, 0o644)
        with pytest.raises(InsecureFile, match=f"chmod 600 {p}"):
            SqliteStore(str(d / "vxnet.db"))
        os.chmod(p, 0o600)
    SqliteStore(str(d / "vxnet.db")).close()  # fixed: opens again


def test_server_refuses_a_readable_state_dir_with_the_chmod_to_run(tmp_path) -> None:
    d = tmp_path / "open"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    with pytest.raises(InsecureFile, match=f"chmod 700 {d}"):
        open_store(None, str(d))
    r = subprocess.run(check=False, args=[VXNET, "server", "--data-dir", str(d), "--listen", f"127.0.0.1:{free_port()}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and f"chmod 700 {d}" in r.stderr, (r.returncode, r.stderr)
    assert not (d / "vxnet.db").exists()  # refused before anything was written
    fresh = tmp_path / "fresh"
    open_store(None, str(fresh)).close()
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700


ATTACK = r"""
import base64, hashlib, hmac, json, sqlite3, sys, time, urllib.request, urllib.error
db, url = sys.argv[1], sys.argv[2]
try:
    con = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)
    key = bytes.fromhex(con.execute("SELECT value FROM kv WHERE key='/vxnet/secret/token-key'").fetchone()[0])
except Exception as e:
    print("READ-FAILED", type(e).__name__, e)
    sys.exit(3)
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = time.time()
payload = {"u": sys.argv[3], "un": "admin", "p": sys.argv[4], "pn": "admin", "r": ["admin"],
           "e": now + 10 * 365 * 86400, "i": now, "a": "forged", "s": "", "c": ""}
body = b64(json.dumps(payload).encode())
token = body + "." + b64(hmac.new(key, body.encode(), hashlib.sha256).digest())
req = urllib.request.Request(url + "/v2.0/networks", headers={"X-Auth-Token": token})
try:
    print("STATUS", urllib.request.urlopen(req, timeout=10).status)
except urllib.error.HTTPError as e:
    print("STATUS", e.code)
"""


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(check=False, args=["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_nobody_cannot_read_the_store_so_the_forged_admin_token_attack_fails() -> None:
    # a directory nobody may traverse (0711), so only the files' own modes protect them
    top = tempfile.mkdtemp(prefix="vxnet-nobody-", dir="/tmp")
    try:
        os.chmod(top, 0o711)
        state = os.path.join(top, "state")
        os.mkdir(state)
        os.chmod(state, 0o711)
        db = os.path.join(state, "vxnet.db")
        h = start_server(db)
        try:
            admin = USER["admin"]
            assert networks(h.url, token_of(h.url, admin)) == 200
            script = os.path.join(top, "attack.py")
            Path(script).write_text(ATTACK)
            os.chmod(script, 0o644)
            args = ["/usr/bin/python3", script]
            # the real store: nobody cannot even read it
            r = as_nobody(*args, db, h.url, admin.id, admin.project_id)
            assert r.returncode == 3 and "READ-FAILED" in r.stdout, (r.returncode, r.stdout, r.stderr)
            for name in os.listdir(state):
                assert as_nobody("/bin/cat", os.path.join(state, name)).returncode != 0, name
            # control: the same attack on a world-readable copy (as the store used to be) gets the
            # key, so the test above can fail; its forged 10-year admin token is refused anyway
            copy = os.path.join(state, "leaked.db")
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as src, sqlite3.connect(copy) as dst:
                src.backup(dst)  # the whole store, WAL included, in one file
            os.chmod(copy, 0o644)
            r = as_nobody(*args, copy, h.url, admin.id, admin.project_id)
            assert "STATUS 401" in r.stdout, (r.returncode, r.stdout, r.stderr)
        finally:
            h.stop()
    finally:
        shutil.rmtree(top)


def test_forged_tokens_with_the_real_key_are_refused(server: ServerHandle) -> None:
    """Even with the signing key, a token must name a real, enabled user with its exact roles
    and current credential stamp, and live no longer than the server issues."""
    key = bytes.fromhex(server.store.get(TOKEN_KEY).value)
    good = token_of(server.url, USER["alice"])
    assert networks(server.url, good) == 200
    payload = json.loads(base64.urlsafe_b64decode(good.split(".")[0] + "=="))
    ctx = Context(payload["u"], payload["un"], payload["p"], payload["pn"], tuple(payload["r"]), payload["e"],
                  payload["i"], payload["a"], payload["s"], payload["c"])
    assert networks(server.url, issue_token(key, ctx)) == 200  # re-signing the same payload is fine
    forged = {
        "ghost user": dataclasses.replace(ctx, user_id="0" * 32, user_name="ghost"),
        "extra admin role": dataclasses.replace(ctx, roles=("member", "reader", "admin")),
        "other project": dataclasses.replace(ctx, project_id=USER["bob"].project_id),
        "no stamp": dataclasses.replace(ctx, stamp=""),
        "ten years": dataclasses.replace(ctx, expires_at=ctx.issued_at + 10 * 365 * 86400),
        "issued in the future": dataclasses.replace(ctx, issued_at=time.time() + 3600,
                                                    expires_at=time.time() + 3700),
    }
    for what, c in forged.items():
        assert networks(server.url, issue_token(key, c)) == 401, what
    assert networks(server.url, issue_token(b"guessed-key", ctx)) == 401


# --- revocation and user changes ----------------------------------------------------------------


@pytest.fixture
def two_servers(tmp_path) -> Iterator[tuple[ServerHandle, ServerHandle]]:
    store = SqliteStore(os.path.join(tmp_path, "vxnet.db"))
    a = start_server("", store=store)
    b = start_server("", store=store)
    yield a, b
    a.stop(close_store=False)
    b.stop()


def revoke(url: str, caller: str, subject: str) -> httpx.Response:
    return http.delete(url + TOKENS, headers={"X-Auth-Token": caller, "X-Subject-Token": subject}, timeout=30)


def validate(url: str, caller: str, subject: str, method: str = "GET") -> httpx.Response:
    return http.request(method, url + TOKENS, headers={"X-Auth-Token": caller, "X-Subject-Token": subject},
                        timeout=30)


def token_auth(url: str, token: str) -> httpx.Response:
    return http.post(url + TOKENS, json={"auth": {"identity": {"methods": ["token"], "token": {"id": token}}}},
                     timeout=30)


def test_revocation_on_one_server_is_honoured_by_the_other_within_a_second(two_servers) -> None:
    a, b = two_servers
    alice = token_of(a.url, USER["alice"])
    admin = token_of(b.url, USER["admin"])
    derived = token_auth(b.url, alice).headers["X-Subject-Token"]  # token->token on the other server
    assert networks(b.url, alice) == 200 and networks(a.url, derived) == 200
    assert validate(b.url, admin, alice).status_code == 200
    assert validate(b.url, admin, alice, "HEAD").status_code == 200
    # bob may neither validate nor revoke alice's token; she may validate her own
    bob = token_of(a.url, USER["bob"])
    keystone_error(validate(a.url, bob, alice), 403)
    assert validate(a.url, bob, alice, "HEAD").status_code == 403
    keystone_error(revoke(a.url, bob, alice), 403)
    assert validate(a.url, alice, alice).json()["token"]["user"]["name"] == "alice"
    assert networks(b.url, alice) == 200

    r = revoke(a.url, alice, alice)  # one's own token
    assert r.status_code == 204, r.text
    t0 = time.monotonic()
    while networks(b.url, alice) != 401:
        assert time.monotonic() - t0 < 1.0, "server b still accepts a token revoked on server a"
        time.sleep(0.02)
    assert networks(a.url, alice) == 401
    keystone_error(token_auth(b.url, alice), 401)  # no new token from a revoked one
    assert networks(b.url, derived) == 401  # the token made from it goes with it
    keystone_error(validate(b.url, admin, alice), 404)
    assert validate(a.url, admin, alice, "HEAD").status_code == 404
    keystone_error(revoke(b.url, admin, alice), 404)  # already revoked
    # the record is in the store, with an expiry (a lease) so it is garbage-collected
    kvs, _ = a.store.range("/vxnet/identity/revoked/")
    assert len(kvs) == 1 and kvs[0].lease != 0 and json.loads(kvs[0].value)["expires_at"] > time.time()
    # a fresh login still works, and other users' tokens were never touched
    assert networks(b.url, token_of(b.url, USER["alice"])) == 200
    assert networks(a.url, admin) == 200


def test_revoke_or_validate_without_a_subject_token_revokes_nothing(server: ServerHandle) -> None:
    """Keystone: without X-Subject-Token the policy target is empty, so a member gets 403 and an
    admin 404 ("No token in the request", from validate_token(None)); never a 204, and no token
    (the caller's own included) is revoked."""
    alice, admin = token_of(server.url, USER["alice"]), token_of(server.url, USER["admin"])
    for headers in ({}, {"X-Subject-Token": ""}):
        for method in ("DELETE", "GET"):
            r = http.request(method, server.url + TOKENS, headers={"X-Auth-Token": alice, **headers}, timeout=30)
            keystone_error(r, 403)
            r = http.request(method, server.url + TOKENS, headers={"X-Auth-Token": admin, **headers}, timeout=30)
            assert keystone_error(r, 404)["message"] == "No token in the request"
        r = httpx.head(server.url + TOKENS, headers={"X-Auth-Token": admin, **headers}, timeout=30)
        assert r.status_code == 404
    assert networks(server.url, alice) == 200 and networks(server.url, admin) == 200
    assert server.store.range("/vxnet/identity/revoked/")[0] == []
    keystone_error(http.delete(server.url + TOKENS, timeout=30), 401)  # and no caller at all: 401


def test_all_tokens_of_a_user_can_be_revoked_on_every_server(two_servers) -> None:
    a, b = two_servers
    alice = [token_of(a.url, USER["alice"]), token_of(b.url, USER["alice"])]
    alice.append(token_auth(a.url, alice[0]).headers["X-Subject-Token"])
    bob = token_of(a.url, USER["bob"])
    uid = USER["alice"].id
    url = f"/identity/v3/OS-VXNET/users/{uid}/tokens"
    keystone_error(http.delete(a.url + url, headers={"X-Auth-Token": bob}), 403)  # not bob's to do
    keystone_error(http.delete(a.url + "/identity/v3/OS-VXNET/users/nobody/tokens",
                               headers={"X-Auth-Token": token_of(a.url, USER["admin"])}), 404)
    assert all(networks(b.url, t) == 200 for t in alice)
    time.sleep(0.01)  # tokens issued in the same clock tick as the cut-off would be ambiguous
    assert http.delete(a.url + url, headers={"X-Auth-Token": token_of(a.url, USER["admin"])}).status_code == 204
    assert [networks(b.url, t) for t in alice] == [401, 401, 401]
    assert networks(b.url, bob) == 200
    assert networks(b.url, token_of(a.url, USER["alice"])) == 200  # logging in again works
    kvs, _ = a.store.range("/vxnet/identity/not-before/")
    assert [kv.key.rsplit("/", 1)[1] for kv in kvs] == [uid] and kvs[0].lease != 0


def test_revocation_survives_a_restart(tmp_path) -> None:
    db = os.path.join(tmp_path, "vxnet.db")
    h = start_server(db)
    tok = token_of(h.url, USER["bob"])
    assert revoke(h.url, token_of(h.url, USER["admin"]), tok).status_code == 204  # admin revokes any
    h.stop()
    h = start_server(db)
    try:
        assert networks(h.url, tok) == 401
    finally:
        h.stop()


def test_config_changes_void_old_tokens_after_a_restart(tmp_path) -> None:
    db = os.path.join(tmp_path, "vxnet.db")
    carol = User("carol", "carol-pw", "tenant-a", ("member",))
    dave = User("dave", "dave-pw", "tenant-b", ("member",), hash_password("dave-pw", ln=10))
    users = (*USERS, carol, dave)
    port = free_port()
    h = start_server(db, Config(listen=f"127.0.0.1:{port}", users=users), port)
    tokens = {u.name: token_of(h.url, u) for u in users if u.name != "vxnet-agent"}
    assert all(networks(h.url, t) == 200 for t in tokens.values())
    h.stop()
    changed = []
    for u in users:
        if u.name == "bob":
            continue  # removed
        if u.name == "alice":
            u = dataclasses.replace(u, roles=("reader",))  # roles changed
        if u.name == "alice_reader":
            u = dataclasses.replace(u, password="new-pw")  # password changed
        if u.name == "carol":
            u = dataclasses.replace(u, enabled=False)
        if u.name == "dave":
            u = dataclasses.replace(u, password="", password_hash=hash_password("dave-new", ln=10))
        changed.append(u)
    h = start_server(db, Config(listen=f"127.0.0.1:{port}", users=tuple(changed)), port)
    try:
        status = {name: networks(h.url, t) for name, t in tokens.items()}
        assert status == {"admin": 200, "alice": 401, "alice_reader": 401, "bob": 401, "carol": 401,
                          "dave": 401}, status
        keystone_error(token_auth(h.url, tokens["alice"]), 401)
        keystone_error(login(h.url, "carol", "carol-pw", "tenant-a"), 401)  # disabled: no login either
        keystone_error(login(h.url, "alice_reader", "reader-pw", "tenant-a"), 401)
        assert login(h.url, "alice_reader", "new-pw", "tenant-a").status_code == 201
        assert login(h.url, "dave", "dave-new", "tenant-b").status_code == 201
        new_alice = login(h.url, "alice", "alice-pw", "tenant-a")
        assert new_alice.json()["token"]["roles"] == [{"id": "reader", "name": "reader"}]
        assert networks(h.url, new_alice.headers["X-Subject-Token"]) == 200
    finally:
        h.stop()


# --- key rotation -------------------------------------------------------------------------------


def write_config(path: Path, port: int, db: str) -> Path:
    users = "".join(f'[[identity.users]]\nname = "{u.name}"\npassword = "{u.password}"\nproject = "{u.project}"\n'
                    f"roles = {json.dumps(list(u.roles))}\n\n" for u in USERS)
    path.write_text(f'[server]\nlisten = "127.0.0.1:{port}"\nstore = "sqlite://{db}"\ntoken_ttl = 3600\n\n{users}')
    return path


def rotate_cli(cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(check=False, args=[VXNET, "keys", "rotate", "--config", str(cfg), *extra], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("revoke_old", [False, True], ids=["keep-old", "revoke"])
def test_vxnet_keys_rotate_on_a_running_server(tmp_path, revoke_old: bool) -> None:
    db = os.path.join(tmp_path, "vxnet.db")
    port = free_port()
    cfg = write_config(tmp_path / "vxnet.toml", port, db)
    h = start_server(db, load_config(str(cfg)), port)
    try:
        old = token_of(h.url, USER["alice"])
        assert networks(h.url, old) == 200  # its signature checked (and remembered: auth.SignedTokens)
        key_before = h.store.get(TOKEN_KEY).value
        r = rotate_cli(cfg, *(["--revoke"] if revoke_old else []))
        assert r.returncode == 0, r.stderr
        assert h.store.get(TOKEN_KEY).value != key_before
        new = token_of(h.url, USER["alice"])
        assert networks(h.url, new) == 200
        # new tokens are signed with the new key: the old key alone does not verify them
        with pytest.raises(ApiError):
            verify_token(bytes.fromhex(key_before), new)
        assert networks(h.url, old) == (401 if revoke_old else 200)
        assert (token_auth(h.url, old).status_code == 201) is (not revoke_old)
    finally:
        h.stop()
    # the store is free now: the command writes it directly, and a restarted server agrees
    r = rotate_cli(cfg, "--revoke")
    assert r.returncode == 0 and "older keys dropped" in r.stdout, r.stderr
    h = start_server(db, load_config(str(cfg)), port)
    try:
        assert networks(h.url, new) == 401
        assert networks(h.url, token_of(h.url, USER["alice"])) == 200
    finally:
        h.stop()


def test_rotation_reaches_every_server_on_the_store(two_servers) -> None:
    a, b = two_servers
    old = token_of(a.url, USER["bob"])
    rotate_keys(a.store, 3600, revoke=False)
    new = token_of(a.url, USER["bob"])
    assert networks(b.url, new) == 200 and networks(b.url, old) == 200
    rotate_keys(a.store, 3600, revoke=True)
    assert networks(b.url, new) == 401 and networks(a.url, old) == 401
    assert networks(b.url, token_of(b.url, USER["bob"])) == 200


# --- passwords and rate limits ------------------------------------------------------------------


def test_vxnet_passwd_prints_a_hash_the_server_accepts(tmp_path) -> None:
    r = subprocess.run(check=False, args=[VXNET, "passwd"], input="correct horse\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    h = r.stdout.strip()
    assert h.startswith("$scrypt$") and "correct horse" not in h
    assert check_password("correct horse", password_hash=h) and not check_password("correct hors", password_hash=h)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[identity.users]]\nname = "erin"\npassword_hash = "{h}"\nproject = "p"\n')
    user = load_config(str(cfg)).users[0]
    assert user.password == "" and user.password_hash == h
    port = free_port()
    srv = start_server(os.path.join(tmp_path, "vxnet.db"), Config(listen=f"127.0.0.1:{port}", users=(user,)), port)
    try:
        assert login(srv.url, "erin", "correct horse", "p").status_code == 201
        keystone_error(login(srv.url, "erin", "wrong", "p"), 401)
    finally:
        srv.stop()
    for bad in ('password_hash = "$scrypt$nope"', 'roles = "admin"', 'enabled = "no"', 'secret = 1'):
        cfg.write_text(f'[[identity.users]]\nname = "x"\npassword = "y"\nproject = "p"\n{bad}\n')
        with pytest.raises(ConfigError):
            load_config(str(cfg))
    cfg.write_text('[[identity.users]]\nname = "x"\nproject = "p"\n')
    with pytest.raises(ConfigError, match="password_hash"):
        load_config(str(cfg))


def test_failed_logins_are_limited_per_user_and_per_source(tmp_path) -> None:
    port = free_port()
    config = Config(listen=f"127.0.0.1:{port}", users=USERS, login_failures_per_user=3,
                    login_failures_per_source=6, login_failure_window=60)
    h = start_server(os.path.join(tmp_path, "vxnet.db"), config, port)
    here = {"client": http.client()}  # the default source, 127.0.0.1
    there = {"client": http.client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))}  # another one
    try:
        assert login(h.url, "alice", "guess1", "tenant-a", **there).status_code == 401
        assert login(h.url, "alice", "guess2", "tenant-a", **there).status_code == 401
        # alice logs in from her own address: that does not reset the attacker's count
        assert login(h.url, "alice", "alice-pw", "tenant-a", **here).status_code == 201
        assert login(h.url, "alice", "guess3", "tenant-a", **there).status_code == 401
        r = login(h.url, "alice", "alice-pw", "tenant-a", **there)  # even the right password now
        err = keystone_error(r, 429)
        assert err["title"] == "Too Many Requests" and 1 <= int(r.headers["Retry-After"]) <= 60, r.headers
        assert login(h.url, "alice", "alice-pw", "tenant-a", **here).status_code == 429  # per user
        assert login(h.url, "bob", "bob-pw", "tenant-b", **there).status_code == 201  # other users are fine
        # per source: unknown names from 127.0.0.2 use up its budget (6; 3 already spent)
        for i in range(3):
            assert login(h.url, f"nobody{i}", "x", None, **there).status_code == 401
        keystone_error(login(h.url, "bob", "bob-pw", "tenant-b", **there), 429)
        assert login(h.url, "bob", "bob-pw", "tenant-b", **here).status_code == 201
    finally:
        h.stop()


def test_parallel_guesses_cannot_race_past_the_limit(tmp_path) -> None:
    """With a hashed password the check runs in a thread; 30 guesses sent at once still get
    at most the limit's worth of 401s, the rest 429."""
    from concurrent.futures import ThreadPoolExecutor

    port = free_port()
    frank = User("frank", "", "p", ("member",), hash_password("frank-pw", ln=12))
    config = Config(listen=f"127.0.0.1:{port}", users=(frank,), login_failures_per_user=3,
                    login_failures_per_source=1000)
    h = start_server(os.path.join(tmp_path, "vxnet.db"), config, port)
    try:
        with ThreadPoolExecutor(30) as ex:
            codes = sorted(ex.map(lambda i: login(h.url, "frank", f"guess{i}", "p").status_code, range(30)))
        assert codes.count(401) <= 3 and codes.count(429) >= 27 and set(codes) == {401, 429}, codes
    finally:
        h.stop()


def test_login_limiter_window_and_bounds() -> None:
    now = [1000.0]
    lim = LoginLimiter(per_user=2, per_source=100, window=10, max_keys=5, clock=lambda: now[0])
    lim.failed("u", "s1")
    now[0] += 5
    lim.failed("u", "s2")
    assert lim.retry_after("u", "s3") == 5  # until the first failure leaves the window
    lim.failed("u", "s1")  # an attempt, counted before its check...
    lim.succeeded("u", "s1")  # ...that succeeded: forgets s1's failures only
    assert len(lim._sources["s1"]) == 1
    assert lim.retry_after("u", "s3") is None
    lim.failed("u", "s1")
    assert lim.retry_after("u", "s3") is not None
    now[0] += 10.1
    assert lim.retry_after("u", "s3") is None
    for i in range(50):
        lim.failed(f"user{i}", f"src{i}")
    assert len(lim._users) <= 5 and len(lim._sources) <= 5


# --- input validation ---------------------------------------------------------------------------

BAD_BODIES: list[Any] = [
    {"password": "x"}, {"token": "x"}, {}, [], "x", 1, None, {"auth": None}, {"auth": "x"},
    {"auth": {"identity": "x"}}, {"auth": {"identity": {"methods": "password"}}},
    {"auth": {"identity": {"methods": []}}}, {"auth": {"identity": {"methods": [1]}}},
    {"auth": {"identity": {"methods": ["totp"]}}},
    {"auth": {"identity": {"methods": ["password"]}}},
    {"auth": {"identity": {"methods": ["password"], "password": "x"}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": "x"}}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": 1, "password": "x"}}}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "password": 5}}}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "a" * 100_000,
                                                                           "password": "x"}}}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin",
                                                                           "password": "x" * 100_000}}}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {"id": ["x"], "password": "x"}}}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "password": "s3cret",
                                                                           "domain": "x"}}}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "password": "s3cret"}}},
              "scope": "x"}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "password": "s3cret"}}},
              "scope": {"project": 1}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "password": "s3cret"}}},
              "scope": {"project": {"name": 7}}}},
    {"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin", "password": "s3cret"}}},
              "scope": {"domain": {"id": "default"}}}},
    {"auth": {"identity": {"methods": ["token"]}}}, {"auth": {"identity": {"methods": ["token"], "token": "x"}}},
    {"auth": {"identity": {"methods": ["token"], "token": {"id": 5}}}},
    {"auth": {"identity": {"methods": ["token"], "token": {"id": "x" * 100_000}}}},
    {"auth": {"identity": {"methods": ["token"], "token": {"id": "a.b"}}}},
]


def test_malformed_auth_bodies_get_keystone_errors_never_5xx(server: ServerHandle) -> None:
    for body in BAD_BODIES:
        r = http.post(server.url + TOKENS, json=body, timeout=30)
        assert r.status_code in (400, 401), (body if len(str(body)) < 300 else str(body)[:300], r.text)
        keystone_error(r, r.status_code)
    for raw in (b"", b"{", b"\xff\xfe", b"[" * 5000 + b"]" * 5000):
        r = http.post(server.url + TOKENS, content=raw, headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 400, (raw[:20], r.status_code, r.text[:200])


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
                    max_leaves=8)
FIELD = st.one_of(JSON, st.sampled_from(["admin", "s3cret", "alice", "default", "admin", "x" * 70_000]))


@st.composite
def auth_body(draw: st.DrawFn) -> Any:
    user = {k: draw(FIELD) for k in draw(st.sets(st.sampled_from(["name", "id", "password", "domain"])))}
    ident: dict[str, Any] = {"methods": draw(st.one_of(st.just(["password"]), st.just(["token"]), FIELD)),
                             "password": draw(st.one_of(st.just({"user": user}), FIELD)),
                             "token": draw(st.one_of(st.builds(lambda v: {"id": v}, FIELD), FIELD))}
    auth: dict[str, Any] = {"identity": draw(st.one_of(st.just(ident), FIELD))}
    if draw(st.booleans()):
        auth["scope"] = draw(st.one_of(st.builds(lambda p: {"project": p}, st.one_of(
            st.builds(lambda n: {"name": n}, FIELD), st.builds(lambda i: {"id": i}, FIELD), FIELD)), FIELD))
    return draw(st.one_of(st.just({"auth": auth}), st.just(auth), JSON))


IDENTITY_ROUTES = [("POST", TOKENS), ("GET", TOKENS), ("HEAD", TOKENS), ("DELETE", TOKENS),
                   ("POST", "/identity/v3/projects"), ("GET", "/identity/v3/projects/{x}"),
                   ("DELETE", "/identity/v3/projects/{x}"), ("GET", "/identity/v3/users/{x}"),
                   ("POST", "/identity/v3/OS-VXNET/keys/rotate"), ("GET", "/identity/v3/projects"),
                   ("DELETE", "/identity/v3/OS-VXNET/users/{x}/tokens")]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory) -> Iterator[ServerHandle]:
    port = free_port()
    # generous login limits: the fuzzer fails many logins from one address
    cfg = Config(listen=f"127.0.0.1:{port}", users=USERS, login_failures_per_user=10_000,
                 login_failures_per_source=10_000)
    h = start_server(os.path.join(tmp_path_factory.mktemp("idfuzz"), "vxnet.db"), cfg, port)
    yield h
    h.stop()


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_identity_routes_never_5xx(fuzz_server: ServerHandle, data: st.DataObject) -> None:
    method, path = data.draw(st.sampled_from(IDENTITY_ROUTES))
    path = path.replace("{x}", data.draw(st.sampled_from(["x", "0" * 32, "%00", "a" * 5000, "..%2f"])))
    headers = {}
    if data.draw(st.booleans()):
        headers["X-Auth-Token"] = data.draw(st.sampled_from(["", "x", "a.b", "x" * 20_000, "eyJ9.x"]))
    if data.draw(st.booleans()):
        headers["X-Subject-Token"] = data.draw(st.sampled_from(["", "x", "a.b", "x" * 20_000]))
    body = data.draw(st.one_of(auth_body(), JSON)) if method == "POST" else None
    r = http.request(method, fuzz_server.url + path, json=body, headers=headers, timeout=30)
    assert r.status_code < 500, (method, path, str(body)[:300], r.status_code, r.text[:300])
    if r.status_code >= 400 and method != "HEAD":
        err = r.json()
        assert set(err) == {"error"} or set(err) == {"NeutronError"}, err  # routing's 404/405 is Neutron's
    if r.status_code == 201:  # a fuzzed body that is a valid login gets a token that works
        assert networks(fuzz_server.url, r.headers["X-Subject-Token"]) == 200


@pytest.mark.slow
def test_revocation_and_rotation_across_two_servers_on_etcd() -> None:
    """As on two machines: each server has its own etcd client; a revocation on one and a
    rotation with --revoke reach the other through its watch within a second."""
    from tests.support.etcd import EtcdCluster
    from vxnet.store.etcd_store import EtcdStore

    cluster = EtcdCluster(1, prefix="vxid")
    try:
        cluster.wait_healthy()
        a = start_server("", store=EtcdStore(cluster.endpoints))
        b = start_server("", store=EtcdStore(cluster.endpoints))
        try:
            tok = token_of(a.url, USER["alice"])
            assert networks(b.url, tok) == 200
            assert revoke(a.url, tok, tok).status_code == 204
            t0 = time.monotonic()
            while networks(b.url, tok) != 401:
                assert time.monotonic() - t0 < 1.0, "server b still accepts a token revoked on server a"
                time.sleep(0.01)
            tok = token_of(b.url, USER["bob"])
            assert networks(a.url, tok) == 200
            rotate_keys(a.store, 3600, revoke=True)
            t0 = time.monotonic()
            while networks(b.url, tok) != 401:
                assert time.monotonic() - t0 < 1.0, "server b still accepts a token of a revoked key"
                time.sleep(0.01)
            assert networks(a.url, token_of(b.url, USER["bob"])) == 200
        finally:
            a.stop()
            b.stop()
    finally:
        cluster.stop()


def test_identity_mirror_recovers_from_a_lost_or_stuck_watch(tmp_path) -> None:
    """The watch is the fast path; a watch that ended (on_error) is replaced at the next check,
    and a silently stuck one at the next resync interval."""
    store = SqliteStore(os.path.join(tmp_path, "vxnet.db"))
    try:
        writer = IdentityState(store)
        reader = IdentityState(store, resync_interval=3600)
        for w in reader._watches:  # the watch dies silently...
            w.cancel()
        writer.revoke("a1", time.time() + 600)
        assert not reader.is_revoked("a1")  # ...so the mirror is behind
        reader._on_watch_end(RuntimeError("compacted"))  # the store reports the end
        assert reader.is_revoked("a1") and reader.resyncs == 2
        stuck = IdentityState(store, resync_interval=0.2)
        for w in stuck._watches:
            w.cancel()  # no error reported at all
        writer.revoke("a2", time.time() + 600)
        rotate_keys(store, 3600, revoke=True)
        assert not stuck.is_revoked("a2")
        time.sleep(0.25)
        assert stuck.is_revoked("a2") and stuck.signing_key == writer.signing_key
        for s in (writer, reader, stuck):
            s.close()
    finally:
        store.close()
