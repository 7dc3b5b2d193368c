"""Nova external events: which port changes Nova hears about, the store outbox that keeps them,
and the sender that delivers them to `POST {nova}/os-server-external-events`.

What is sent (Neutron's nova notifier, `neutron/notifiers/nova.py`), for ports whose
`device_owner` starts with `compute:` and whose `device_id` is a UUID (the Nova server):
- `network-vif-plugged`, status `completed`: status DOWN/BUILD (or a new port) -> ACTIVE;
  status `failed`: -> ERROR, or the binding turns `binding_failed` (Nova fails the boot now
  instead of waiting `vif_plugging_timeout`);
- `network-vif-unplugged`, status `completed`: ACTIVE -> DOWN;
- `network-vif-deleted`: the port is deleted;
- `network-changed`: its fixed IPs change, or a floating IP is associated with it or taken
  from it (a floating IP moved between ports notifies both).
Every event carries `server_uuid` = device_id and `tag` = port id, exactly Nova's payload.

The outbox: `OutboxHook` is a stage hook (services/repo.py) that sees every staged write of a
port or floating IP and stages `OUTBOX/<txn stamp>-<port id>-<event name>` in the SAME
transaction: the event exists if and only if the change committed. It compares the first
version the transaction saw with the last one staged, so a port written twice in one
transaction gives at most one event of each kind.

The sender (`Sender`, one thread per server): a store watch on `PREFIX` wakes it on every new
entry (no poll on the delivery path; a slow re-scan every RESCAN seconds only repairs a lost
watch). It claims the unclaimed entries (`CLAIMS/<entry>` = its id, created only if missing,
attached to its own lease), posts them in commit order (one POST; more than one entry only when
several are pending: batched under load only), then deletes entry and claim in one transaction.
Nova errors (5xx, 429, timeouts, refused connections, 401 after a fresh token) are retried with
exponential backoff while the claim is held; 404 (no such server) and other 4xx answers drop the
batch with a log line, as Neutron does; a 207 answer logs each event that Nova did not accept.

Guarantee: at least once, and exactly once unless a sender stops between Nova's answer and the
delete (a crash, or its lease lapsing): then another server (or the restarted one) sends the
entry again. Several servers never send one entry at the same time (the claim), and entries
survive restarts (they are store keys). Nova treats a repeated event as harmless: a
`network-vif-plugged` nobody waits for is logged ("unexpected event") and dropped, a repeated
`network-changed` refreshes the port's cache again, a repeated `network-vif-deleted` finds the
interface already gone.
"""

from __future__ import annotations

import calendar
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from vxnet.services.repo import ROOT, UnitOfWork
from vxnet.store.contract import Compare, Delete, LeaseNotFound, Put, Store, StoreError, key_missing

log = logging.getLogger("vxnet.nova")

PREFIX = f"{ROOT}nova/"
OUTBOX = f"{PREFIX}outbox/"
CLAIMS = f"{PREFIX}claims/"
VIF_PLUGGED = "network-vif-plugged"
VIF_UNPLUGGED = "network-vif-unplugged"
VIF_DELETED = "network-vif-deleted"
NETWORK_CHANGED = "network-changed"
STATUS_MAP = {"ACTIVE": "completed", "ERROR": "failed", "DOWN": "completed"}  # Neutron's
NOVA_API_VERSION = "2.1"  # what Neutron's notifier asks for
CLAIM_TTL = 15            # seconds a dead sender's claims keep others waiting
HTTP_TIMEOUT = 5.0        # seconds per Nova or Keystone request (< CLAIM_TTL / 2)
RESCAN = 5.0              # seconds between safety re-scans (a lost watch, expired claims)
BATCH_MAX = 200
BACKOFF_MIN, BACKOFF_MAX = 0.1, 30.0

Obj = dict[str, Any]


def _uuid_like(v: Any) -> bool:
    try:
        uuid.UUID(str(v))
    except ValueError:
        return False
    return True


def is_compute_port(port: Mapping[str, Any] | None) -> bool:
    """Neutron's _is_compute_port: a `compute:*` owner and a UUID device id."""
    return bool(port and port.get("device_id") and _uuid_like(port["device_id"])
                and str(port.get("device_owner") or "").startswith("compute:"))


def _event(name: str, port: Mapping[str, Any], status: str | None = None) -> Obj:
    ev: Obj = {"name": name, "server_uuid": port["device_id"], "tag": port["id"]}
    if status is not None:
        ev["status"] = status
    return ev


def status_event(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> Obj | None:
    """Neutron's record_port_status_changed, plus `failed` when the binding fails."""
    if not is_compute_port(new):
        return None
    before = old.get("status") if old is not None else None
    after = new.get("status")
    if before == "ACTIVE" and after == "DOWN":
        return _event(VIF_UNPLUGGED, new, STATUS_MAP["DOWN"])
    if before in (None, "DOWN", "BUILD") and after in ("ACTIVE", "ERROR"):
        return _event(VIF_PLUGGED, new, STATUS_MAP[after])
    was_failed = old is not None and old.get("binding:vif_type") == "binding_failed"
    if new.get("binding:vif_type") == "binding_failed" and not was_failed and after != "ACTIVE":
        return _event(VIF_PLUGGED, new, "failed")
    return None


def _ips(port: Mapping[str, Any] | None) -> set[str]:
    return {ip["ip_address"] for ip in (port or {}).get("fixed_ips") or []}


def port_events(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[Obj]:
    """The events one port change gives (`old`/`new` None: created/deleted)."""
    if new is None:
        return [_event(VIF_DELETED, old)] if is_compute_port(old) else []
    out = []
    ev = status_event(old, new)
    if ev is not None:
        out.append(ev)
    if old is not None and is_compute_port(new) and _ips(old) != _ips(new):
        out.append(_event(NETWORK_CHANGED, new))
    return out


def fip_ports(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[str]:
    """The ports whose floating IP association a floating IP change alters."""
    def assoc(f: Mapping[str, Any] | None) -> tuple[Any, Any]:
        return ((f or {}).get("port_id"), (f or {}).get("fixed_ip_address"))

    (op, oip), (np_, nip) = assoc(old), assoc(new)
    if (op, oip) == (np_, nip):
        return []
    return [p for p in dict.fromkeys((op, np_)) if p]


class OutboxHook:
    """The stage hook writing outbox entries (see the module docstring). `inner`: the hook it
    wraps (quotas), called after this one."""

    def __init__(self, inner: Callable[..., None] | None = None) -> None:
        self.inner = inner

    def __call__(self, uow: UnitOfWork, collection: str, key: str, obj: dict[str, Any] | None) -> None:
        if collection in ("ports", "floatingips"):
            self._stage(uow, collection, key, obj)
        if self.inner is not None:
            self.inner(uow, collection, key, obj)

    @staticmethod
    def _original(uow: UnitOfWork, key: str) -> Obj | None:
        notes = uow.hook_state.setdefault("nova_orig", {})
        if key not in notes:
            raw = uow.get_raw(key)  # not staged yet (first write of the key): the stored value
            notes[key] = json.loads(raw) if raw else None
        return notes[key]  # type: ignore[no-any-return]

    def _stage(self, uow: UnitOfWork, collection: str, key: str, obj: dict[str, Any] | None) -> None:
        stamp = uow.hook_state.setdefault("nova_stamp", f"{time.time_ns():020d}{uuid.uuid4().hex[:8]}")
        staged: dict[tuple[str, str], Obj] = uow.hook_state.setdefault("nova_events", {})
        old = self._original(uow, key)
        if collection == "ports":
            pid = key.rsplit("/", 1)[1]
            wanted = {(pid, e["name"]): e for e in port_events(old, obj)}
            for name in (VIF_PLUGGED, VIF_UNPLUGGED, VIF_DELETED, NETWORK_CHANGED):
                k = (pid, name)
                if k in wanted:
                    self._put(uow, stamp, staged, k, wanted[k])
                elif k in staged and (name != NETWORK_CHANGED or obj is None):
                    # the last version decides (a floating IP's network-changed stays, unless
                    # the port itself goes away in this transaction)
                    self._put(uow, stamp, staged, k, None)
            return
        for pid in fip_ports(old, obj):
            if (pid, VIF_DELETED) in staged:
                continue
            port = uow.get("ports", pid)
            if is_compute_port(port):
                self._put(uow, stamp, staged, (pid, NETWORK_CHANGED), _event(NETWORK_CHANGED, port))  # type: ignore[arg-type]

    @staticmethod
    def _put(uow: UnitOfWork, stamp: str, staged: dict[tuple[str, str], Obj], k: tuple[str, str],
             event: Obj | None) -> None:
        key = f"{OUTBOX}{stamp}-{k[0]}-{k[1]}"
        if event is None:
            if k in staged:
                del staged[k]
                uow.delete_raw(key)  # staged earlier in this transaction, never stored: a no-op delete
            return
        staged[k] = event
        uow.put_raw(key, json.dumps({"event": event, "queued_at": time.time()}))


# --- delivery ---------------------------------------------------------------------------------

class NovaError(Exception):
    """A Nova or Keystone answer worth retrying (or a transport failure)."""


class TokenSource:
    """Tokens for Nova: from a real Keystone (`auth_url`) or minted by this server (`mint`)."""

    def __init__(self, settings: Any, mint: Callable[[], tuple[str, float]] | None, client: httpx.Client) -> None:
        self.settings, self.mint, self.client = settings, mint, client
        self._token: str | None = None
        self._expires = 0.0

    def invalidate(self) -> None:
        self._token = None

    def get(self) -> str:
        if self._token is not None and time.time() < self._expires - 60:
            return self._token
        if self.settings.auth_url:
            self._token, self._expires = self._keystone()
        elif self.mint is not None:
            self._token, self._expires = self.mint()
        else:
            raise NovaError("no way to get a token for Nova")
        return self._token

    def _keystone(self) -> tuple[str, float]:
        s = self.settings
        base = s.auth_url.rstrip("/")
        url = base + "/auth/tokens" if base.endswith("/v3") else base + "/v3/auth/tokens"
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": s.username, "domain": {"name": s.user_domain}, "password": s.password}}},
            "scope": {"project": {"name": s.project, "domain": {"name": s.project_domain}}}}}
        try:
            r = self.client.post(url, json=body, params={"nocatalog": ""})
        except httpx.HTTPError as e:
            raise NovaError(f"Keystone at {url} unreachable: {e}") from None
        token = r.headers.get("X-Subject-Token")
        if r.status_code != 201 or not token:
            raise NovaError(f"Keystone at {url} refused the service user {s.username}: {r.status_code}")
        expires = time.time() + 3600
        try:
            stamp = r.json()["token"]["expires_at"]
            expires = float(calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")))
        except (ValueError, KeyError, TypeError):
            pass
        return token, expires


class NovaClient:
    """POSTs one batch to Nova. `send` returns the events to drop (delivered or refused for
    good); raises NovaError when the batch should be retried."""

    def __init__(self, settings: Any, mint: Callable[[], tuple[str, float]] | None) -> None:
        self.url = settings.url.rstrip("/") + "/os-server-external-events"
        self.client = httpx.Client(timeout=HTTP_TIMEOUT)
        self.tokens = TokenSource(settings, mint, self.client)

    def close(self) -> None:
        self.client.close()

    def send(self, events: list[Obj]) -> None:
        headers = {"X-Auth-Token": self.tokens.get(), "X-OpenStack-Nova-API-Version": NOVA_API_VERSION,
                   "Accept": "application/json"}
        try:
            r = self.client.post(self.url, json={"events": events}, headers=headers)
        except httpx.HTTPError as e:
            raise NovaError(f"Nova at {self.url} unreachable: {type(e).__name__}: {e}") from None
        if r.status_code == 401:
            self.tokens.invalidate()
            raise NovaError("Nova refused the token (401); a new one is fetched")
        if r.status_code >= 500 or r.status_code in (408, 429):
            raise NovaError(f"Nova answered {r.status_code}")
        if r.status_code == 404:
            log.warning("Nova returned NotFound for events (dropped): %s", events)
            return
        if r.status_code not in (200, 207):
            log.error("Nova refused events with %s (dropped): %s %s", r.status_code, events, r.text[:500])
            return
        try:
            answers = r.json().get("events", [])
        except ValueError:
            log.error("Nova answered %s without JSON: %s", r.status_code, r.text[:500])
            return
        for ev in answers if isinstance(answers, list) else []:
            if isinstance(ev, dict) and ev.get("code") != 200:
                log.warning("Nova event %s returned with failed status", ev)


class Sender:
    """Delivers the outbox (see the module docstring). `start`/`stop` from any thread."""

    def __init__(self, store: Store, client: NovaClient) -> None:
        self.store, self.client = store, client
        self.id = uuid.uuid4().hex
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nova-events", daemon=True)
        self._lease = 0
        self._lease_at = 0.0
        self._watch: Any = None
        self._watch_broken = False
        self._seen_rev = 0
        self.sent = 0  # events delivered (or dropped by Nova's answer) by this sender
        self.failures = 0  # attempts that ended in a retry (NovaError)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(HTTP_TIMEOUT * 3)
        if self._watch is not None:
            self._watch.cancel()
        if self._lease:
            try:  # our claims go with the lease: another server may take them at once
                self.store.revoke_lease(self._lease)
            except (StoreError, LeaseNotFound):
                pass
        self.client.close()

    # -- the loop ----------------------------------------------------------------------------
    def _on_events(self, events: Any) -> None:
        # reads must show what woke us: a store whose reads come from a mirror fed by another
        # watch (etcd's read cache) may not have this revision yet
        self._seen_rev = max(self._seen_rev, *(e.kv.mod_revision for e in events))
        self._wake.set()

    def _on_error(self, _exc: Exception) -> None:
        self._watch_broken = True
        self._wake.set()

    def _ensure_watch(self) -> None:
        if self._watch is not None and not self._watch_broken:
            return
        if self._watch is not None:
            self._watch.cancel()
        self._watch_broken = False
        rev = self.store.revision()
        self._watch = self.store.watch(PREFIX, rev + 1, self._on_events, self._on_error)

    def _ensure_lease(self) -> int:
        now = time.monotonic()
        if self._lease and now - self._lease_at < CLAIM_TTL / 4:
            return self._lease
        if self._lease:
            try:
                self.store.refresh_lease(self._lease)
                self._lease_at = now
                return self._lease
            except LeaseNotFound:
                log.warning("nova sender lease lapsed; claims it held may be sent again by another server")
        self._lease = self.store.grant_lease(CLAIM_TTL)
        self._lease_at = now
        return self._lease

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                self._ensure_watch()
                self._ensure_lease()
                self._wake.clear()
                batch = self._claim()
                if batch:
                    self.client.send([ev for _, ev in batch])
                    self._done([k for k, _ in batch])
                    self.sent += len(batch)
                    backoff = 0.0
                    continue  # more may be pending
            except NovaError as e:
                self.failures += 1
                backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, backoff * 2))
                log.warning("nova events not delivered (retry in %.1f s): %s", backoff, e)
                self._stop.wait(backoff)
                continue
            except StoreError as e:
                backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, backoff * 2))
                log.warning("nova sender: store error (retry in %.1f s): %s", backoff, e)
                self._stop.wait(backoff)
                continue
            except Exception:  # a bug must not end delivery for good
                log.exception("nova sender failed; retrying")
                self._stop.wait(1.0)
                continue
            self._wake.wait(min(RESCAN, CLAIM_TTL / 4))

    def _claim(self) -> list[tuple[str, Obj]]:
        """Entries this sender holds (claimed now or earlier and not yet done), commit order."""
        read_after = getattr(self.store, "read_after", None)
        if read_after is not None and self._seen_rev:
            read_after(self._seen_rev)
        for _ in range(10):
            entries, _ = self.store.range(OUTBOX)
            claims = {kv.key[len(CLAIMS):]: kv.value for kv in self.store.range(CLAIMS)[0]}
            entries.sort(key=lambda kv: (kv.create_revision, kv.key))
            mine, free = [], []
            for kv in entries:
                name = kv.key[len(OUTBOX):]
                holder = claims.get(name)
                if holder == self.id:
                    mine.append(kv)
                elif holder is None:
                    free.append(kv)
            free = free[:max(0, BATCH_MAX - len(mine))]
            if free:
                compares = [key_missing(CLAIMS + kv.key[len(OUTBOX):]) for kv in free]
                compares += [Compare(kv.key, "exists", "==", True) for kv in free]
                ops = [Put(CLAIMS + kv.key[len(OUTBOX):], self.id, self._lease) for kv in free]
                try:
                    if not self.store.txn(compares, ops).succeeded:
                        continue  # another server took some: look again
                except LeaseNotFound:
                    self._lease = 0
                    self._ensure_lease()
                    continue
            held = sorted(mine + free, key=lambda kv: (kv.create_revision, kv.key))
            out = []
            for kv in held:
                try:
                    out.append((kv.key, json.loads(kv.value)["event"]))
                except (ValueError, KeyError, TypeError):
                    log.error("dropping malformed nova outbox entry %s", kv.key)
                    self._done([kv.key])
            return out
        return []

    def _done(self, keys: list[str]) -> None:
        """Delete delivered entries and our claims of them (an entry is deleted even when the
        claim lapsed meanwhile: that spares the next holder a duplicate if it has not sent)."""
        claims = [CLAIMS + key[len(OUTBOX):] for key in keys]
        if self.store.txn([Compare(c, "value", "==", self.id) for c in claims],
                          [Delete(k) for k in keys] + [Delete(c) for c in claims]).succeeded:
            return
        for key, claim in zip(keys, claims, strict=True):
            self.store.txn([Compare(claim, "value", "==", self.id)], [Delete(key), Delete(claim)], [Delete(key)])


def pending(store: Store) -> int:
    """How many events wait in the outbox."""
    return len(store.range(OUTBOX)[0])
