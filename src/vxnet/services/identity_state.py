"""Identity state every API server keeps in memory: signing keys and revoked tokens.

Token checks happen on every request, so they must not cost a store round trip (on etcd that
would be one per request). Each server therefore mirrors two small prefixes of the store in
memory, fed by its own watch:

- `/vxnet/secret/`: `token-key` (the current signing key, hex), `token-keys-old/<id>` (keys
  retired by `vxnet keys rotate` without `--revoke`; each on a lease that ends when the last
  token it signed has expired), `user-stamp-key` (the key of the users' credential stamps).
- `/vxnet/identity/revoked/<audit id>`: one record per revoked token, `{"expires_at": t}`, on
  a lease that ends shortly after the token would have expired anyway (garbage collection).
- `/vxnet/identity/not-before/<user id>`: `{"not_before": t}`: every token of that user issued
  before t is void ("log this user out everywhere"); on a lease of one token lifetime, after
  which no such token can be alive anyway.
- `/vxnet/identity/users/<id>`: users created through the API (services/identity_users.py),
  checked on every request like the configured ones.
The watch covers all of `/vxnet/identity/` (admin-created projects live there too; they are
ignored here).

Invariants:
- A revocation is visible to the revoking server when `revoke()` returns, and to every other
  server as soon as its watch delivers the event (the embedded store delivers synchronously,
  etcd within milliseconds): well under the promised second.
- The mirror is rebuilt from a fresh `range` whenever the watch ends (compaction, reconnect
  failure) and, as a fallback against a silently stuck watch, every `resync_interval` seconds,
  checked lazily by the next request (one range per interval, not per request).
- Keys only ever come from the store; a server never invents a key the others do not know.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable

from vxnet.services.identity_users import USERS_PREFIX, StoredUser, parse
from vxnet.store.contract import (
    Delete,
    Event,
    EventType,
    KeyValue,
    Op,
    Put,
    Store,
    WatchHandle,
    key_missing,
    key_unchanged,
)

log = logging.getLogger(__name__)

SECRET_PREFIX = "/vxnet/secret/"
TOKEN_KEY = SECRET_PREFIX + "token-key"
OLD_KEYS_PREFIX = SECRET_PREFIX + "token-keys-old/"
STAMP_KEY = SECRET_PREFIX + "user-stamp-key"
IDENTITY_PREFIX = "/vxnet/identity/"
REVOKED_PREFIX = IDENTITY_PREFIX + "revoked/"
NOT_BEFORE_PREFIX = IDENTITY_PREFIX + "not-before/"
GRACE = 60  # seconds a revocation record outlives its token (clock skew between servers)


def key_id(key: bytes) -> str:
    """A short public name for a signing key (never the key itself)."""
    return hashlib.sha256(b"vxnet-key-id:" + key).hexdigest()[:16]


def ensure_secret(store: Store, key: str) -> bytes:
    """The secret at `key`, created (random, 32 bytes) by whichever server gets there first."""
    kv = store.get(key)
    if kv is None:
        store.txn([key_missing(key)], [Put(key, secrets.token_hex(32))])
        kv = store.get(key)
        assert kv is not None
    return bytes.fromhex(kv.value)


class IdentityState:
    """The in-memory mirror described in the module docstring."""

    def __init__(self, store: Store, resync_interval: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.resync_interval = resync_interval
        self.clock = clock
        self._lock = threading.Lock()
        self._signing: bytes = b""
        self._old: dict[str, bytes] = {}
        self._stamp_key: bytes = b""
        self._revoked: dict[str, float] = {}
        self._not_before: dict[str, float] = {}
        self._users: dict[str, StoredUser] = {}
        self._user_revs: dict[str, int] = {}  # store revision of what _users holds per user id
        self._stamps: dict[str, tuple[bytes, str]] = {}
        self._watches: list[WatchHandle] = []
        self._generation = 0  # events of a watch from before the last resync are dropped
        self._stale = True
        self._next_resync = 0.0
        self.resyncs = 0
        self.resync()

    # --- the mirror --------------------------------------------------------------------------

    def resync(self) -> None:
        """Rebuild the mirror from the store and watch it again from there."""
        ensure_secret(self.store, TOKEN_KEY)
        ensure_secret(self.store, STAMP_KEY)
        for w in self._watches:
            w.cancel()
        self._watches = []
        # Never call the store while holding self._lock: the embedded store delivers watch events
        # on the writer's thread under its own lock, and _on_events takes ours.
        secret_kvs, secret_rev = self.store.range(SECRET_PREFIX)
        identity_kvs, identity_rev = self.store.range(IDENTITY_PREFIX)
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._old = {}
            self._revoked = {}
            self._not_before = {}
            self._users = {}
            self._user_revs = {}
            for kv in secret_kvs:
                self._put_secret(kv)
            now = self.clock()
            for kv in identity_kvs:
                self._put_identity(kv, now)
            self._stale = False
            self._next_resync = time.monotonic() + self.resync_interval
            self.resyncs += 1
        self._watches = [
            self.store.watch(SECRET_PREFIX, secret_rev + 1, functools.partial(self._on_events, generation),
                             self._on_watch_end),
            self.store.watch(IDENTITY_PREFIX, identity_rev + 1, functools.partial(self._on_events, generation),
                             self._on_watch_end),
        ]

    def _fresh(self) -> None:
        if self._stale or time.monotonic() > self._next_resync:
            try:
                self.resync()
            except Exception:  # the store is down: keep serving from the mirror, retry soon
                log.exception("identity state resync failed; using the last known state")
                self._next_resync = time.monotonic() + 1.0

    def _on_watch_end(self, err: Exception) -> None:
        log.warning("identity watch ended (%s); the next request relists", err)
        self._stale = True

    def _on_events(self, generation: int, events: list[Event]) -> None:
        now = self.clock()
        with self._lock:
            if generation != self._generation:
                return  # a late delivery of a cancelled watch: the resync's range already has it
            for ev in events:
                key = ev.kv.key
                if ev.type is EventType.PUT:
                    if key.startswith(IDENTITY_PREFIX):
                        self._put_identity(ev.kv, now)
                    else:
                        self._put_secret(ev.kv)
                elif key.startswith(REVOKED_PREFIX):
                    self._revoked.pop(key[len(REVOKED_PREFIX):], None)
                elif key.startswith(NOT_BEFORE_PREFIX):
                    self._not_before.pop(key[len(NOT_BEFORE_PREFIX):], None)
                elif key.startswith(USERS_PREFIX):
                    self._drop_user(key[len(USERS_PREFIX):], ev.kv.mod_revision)
                elif key.startswith(OLD_KEYS_PREFIX):
                    self._old.pop(key[len(OLD_KEYS_PREFIX):], None)

    def _put_secret(self, kv: KeyValue) -> None:
        try:
            value = bytes.fromhex(kv.value)
        except ValueError:
            log.error("store key %s does not hold a hex secret; ignored", kv.key)
            return
        if kv.key == TOKEN_KEY:
            self._signing = value
        elif kv.key == STAMP_KEY:
            self._stamp_key = value
        elif kv.key.startswith(OLD_KEYS_PREFIX):
            self._old[kv.key[len(OLD_KEYS_PREFIX):]] = value

    def _put_identity(self, kv: KeyValue, now: float) -> None:
        if kv.key.startswith(REVOKED_PREFIX):
            self._put_revoked(kv, now)
        elif kv.key.startswith(USERS_PREFIX):
            uid = kv.key[len(USERS_PREFIX):]
            if kv.mod_revision and kv.mod_revision < self._user_revs.get(uid, 0):
                return  # older than what this server wrote itself (note_user)
            try:
                self._users[uid] = parse(kv.value)
                self._user_revs[uid] = kv.mod_revision
            except ValueError:
                log.error("store key %s does not hold a user record; the user cannot log in", kv.key)
                self._drop_user(uid, kv.mod_revision)
        elif kv.key.startswith(NOT_BEFORE_PREFIX):
            try:
                t = float(json.loads(kv.value)["not_before"])
            except (ValueError, KeyError, TypeError):
                t = float("inf")  # unreadable record: refuse the user's tokens rather than accept them
            self._not_before[kv.key[len(NOT_BEFORE_PREFIX):]] = t

    def _drop_user(self, uid: str, revision: int) -> None:
        if revision and revision < self._user_revs.get(uid, 0):
            return
        self._users.pop(uid, None)
        self._user_revs[uid] = revision

    def _put_revoked(self, kv: KeyValue, now: float) -> None:
        try:
            expires = float(json.loads(kv.value)["expires_at"])
        except (ValueError, KeyError, TypeError):
            expires = now + 86400 * 365  # unreadable record: keep refusing the token
        if expires + GRACE > now:
            self._revoked[kv.key[len(REVOKED_PREFIX):]] = expires

    # --- what requests ask -------------------------------------------------------------------

    @property
    def signing_key(self) -> bytes:
        """The key new tokens are signed with."""
        self._fresh()
        return self._signing

    def verify_keys(self) -> tuple[bytes, ...]:
        """Every key a valid token may be signed with: the current one first."""
        self._fresh()
        with self._lock:
            return (self._signing, *self._old.values())

    def is_revoked(self, *audit_ids: str) -> bool:
        """Was any of these tokens (or token chains) revoked?"""
        self._fresh()
        revoked = self._revoked
        return any(a in revoked for a in audit_ids if a)

    def not_before(self, user_id: str) -> float:
        """Tokens of `user_id` issued before this time are void (0: none)."""
        self._fresh()
        return self._not_before.get(user_id, 0.0)

    def stored_user(self, user_id: str) -> StoredUser | None:
        """A user created through the API, as the store has it now (None: no such user)."""
        self._fresh()
        return self._users.get(user_id)

    def stored_users(self) -> list[StoredUser]:
        self._fresh()
        return sorted(self._users.values(), key=lambda u: u.name)

    def note_user(self, user_id: str, user: StoredUser | None, revision: int) -> None:
        """What this server just wrote at store `revision` (visible here at once, whatever the
        watch latency); watch events older than it, still in flight, are ignored."""
        with self._lock:
            if revision < self._user_revs.get(user_id, 0):
                return
            self._user_revs[user_id] = revision
            if user is None:
                self._users.pop(user_id, None)
            else:
                self._users[user_id] = user

    def revoke_user(self, user_id: str, token_ttl: int) -> float:
        """Void every token of `user_id` issued until now, on every server. Returns the cut-off."""
        now = self.clock()
        lease = self.store.grant_lease(max(1, token_ttl) + GRACE)
        self.store.txn([], [Put(NOT_BEFORE_PREFIX + user_id, json.dumps({"not_before": now}), lease)])
        with self._lock:
            self._not_before[user_id] = max(now, self._not_before.get(user_id, 0.0))
        return now

    def stamp(self, credential: str) -> str:
        """A short keyed digest of a user's credential: changes when the password does, and tells
        nothing about the password to whoever holds a token."""
        self._fresh()
        key = self._stamp_key
        hit = self._stamps.get(credential)
        if hit is None or hit[0] != key:  # computed once per user and stamp key
            hit = (key, hmac.new(key, credential.encode(), hashlib.sha256).hexdigest()[:24])
            if len(self._stamps) > 10_000:
                self._stamps.clear()
            self._stamps[credential] = hit
        return hit[1]

    def revoke(self, audit_id: str, expires_at: float) -> None:
        """Record that the token `audit_id` (valid until `expires_at`) is revoked, for every server."""
        ttl = max(1, int(expires_at - self.clock()) + GRACE)
        lease = self.store.grant_lease(ttl)
        self.store.txn([], [Put(REVOKED_PREFIX + audit_id, json.dumps({"expires_at": expires_at}), lease)])
        with self._lock:  # visible here at once, whatever the store's watch latency
            self._revoked[audit_id] = expires_at

    def close(self) -> None:
        for w in self._watches:
            w.cancel()
        self._watches = []


def rotate_keys(store: Store, keep_seconds: int, revoke: bool) -> tuple[str, str]:
    """Make a new signing key current. Without `revoke`, the old key keeps verifying the tokens it
    signed for `keep_seconds` (the token lifetime; a lease then drops it); with `revoke`, the old
    key and every earlier retired key are dropped at once. Returns (old key id, new key id)."""
    ensure_secret(store, TOKEN_KEY)
    current = store.get(TOKEN_KEY)
    assert current is not None
    old = bytes.fromhex(current.value)
    new = secrets.token_bytes(32)
    ops: list[Op] = [Put(TOKEN_KEY, new.hex())]
    if revoke:
        ops.append(Delete(OLD_KEYS_PREFIX, prefix=True))
    else:
        lease = store.grant_lease(max(1, keep_seconds) + GRACE)
        ops.append(Put(OLD_KEYS_PREFIX + key_id(old), old.hex(), lease))
    if not store.txn([key_unchanged(current)], ops).succeeded:
        raise RuntimeError("the signing key changed while rotating it (another rotation?); try again")
    return key_id(old), key_id(new)
