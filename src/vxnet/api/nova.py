"""Nova external events on this server: with a `[nova]` section, install the outbox stage hook
on the server's repository (every port / floating IP write stages its events in the same
transaction) and run one outbox sender while the app runs (services/nova_events.py).

Without `auth_url`, the server mints the service user's token itself, signed with vxnet's own
identity keys, exactly as `POST /identity/v3/auth/tokens` would issue it (roles: the user's
roles on `project`, or on its own project). Every server of a deployment must have the same
`[nova]` section: a server without it writes no events for the changes it makes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import FastAPI

from vxnet.api.auth import credential, issue_token, new_context
from vxnet.api.routers.identity import project_id_by_name, project_name
from vxnet.api.state import AppState, run_store
from vxnet.config import NovaSettings
from vxnet.services import nova_events
from vxnet.services.identity_users import roles_on
from vxnet.store.contract import StoreError

log = logging.getLogger("vxnet.nova")


def token_minter(state: AppState, settings: NovaSettings) -> Any:
    """A function minting (token, expires_at) for the configured service user."""

    def mint() -> tuple[str, float]:
        user = state.users.by_name(settings.username)
        if user is None or not user.enabled:
            raise nova_events.NovaError(f"[nova] username {settings.username!r} is not an enabled vxnet user")
        if settings.project:
            project, pid = settings.project, project_id_by_name(state, settings.project)
        else:  # the user's own (configured) or default (stored) project
            pid = getattr(user, "project_id", None) or getattr(user, "default_project_id", None) or ""
            project = project_name(state, pid) or ""
        roles = roles_on(user, pid) if pid else ()
        if not roles:
            raise nova_events.NovaError(f"[nova] user {settings.username!r} has no role on project {project!r}")
        ctx = new_context(user.id, user.name, pid, project, roles, state.config.token_ttl,
                          state.identity.stamp(credential(user)))
        return issue_token(state.token_key, ctx), ctx.expires_at

    return mint


class NovaCollector:
    """`vxnet_nova_events_pending` (the outbox, every server's), and this server's sender's
    `vxnet_nova_events_sent_total` / `vxnet_nova_events_retries_total`."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def describe(self) -> list[Any]:
        return []  # collected on scrape only

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        sender = getattr(self.state, "nova_sender", None)
        if sender is None:
            return
        try:
            pending = float(nova_events.pending(self.state.store))
        except StoreError:
            pending = float("nan")
        yield GaugeMetricFamily("vxnet_nova_events_pending", "Nova events waiting in the store outbox", value=pending)
        yield CounterMetricFamily("vxnet_nova_events_sent_total", "Nova events this server's sender delivered "
                                  "(or Nova refused for good)", value=sender.sent)
        yield CounterMetricFamily("vxnet_nova_events_retries_total", "POSTs to Nova (or token requests) this "
                                  "server's sender retried", value=sender.failures)


def setup(app: FastAPI, state: AppState) -> None:
    """Call after every other stage hook is installed (it wraps the current one)."""
    settings = state.config.nova
    if settings is None:
        return
    state.repo.stage_hook = nova_events.OutboxHook(state.repo.stage_hook)
    registry = getattr(app.state, "metrics_registry", None)
    if registry is not None:
        registry.register(NovaCollector(state))
    previous = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        client = nova_events.NovaClient(settings, None if settings.auth_url else token_minter(state, settings))
        sender = nova_events.Sender(state.store, client)
        async with previous(a) as inner:
            sender.start()
            state.nova_sender = sender  # type: ignore[attr-defined]
            try:
                yield inner
            finally:
                await run_store(sender.stop)

    app.router.lifespan_context = lifespan
