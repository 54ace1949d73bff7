"""Activity: what keeps a sandbox from the idle stop, and the provider's own idle timer.

The idle clock itself (when it started, how long it has run) is the row's:
:attr:`Sandbox.idle_since` and ``Sandbox.objects.with_idle_since()``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import partial

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from sandboxes.models import Sandbox
from sandboxes.providers.base import ErrorKind, ProviderError, RemoteSandbox, RemoteState

from .errors import provider_failures_as_sandbox_errors
from .rows import provider_for

log = logging.getLogger(__name__)

REFRESH_TASK = "sandboxes.tasks.refresh_sandbox_activity"


def sandbox_record_activity(*, sandbox: Sandbox, source: str, now: datetime | None = None) -> bool:
    """Note that the user is using the sandbox (``source``: "heartbeat", "terminal", "ssh"...).

    Written at most every ``SANDBOX_ACTIVITY_WRITE_SECONDS`` (a conditional update, no read).
    While the sandbox runs, the provider's own idle timer is refreshed at most every
    ``SANDBOX_ACTIVITY_REFRESH_MINUTES`` by a task enqueued after commit, so the provider's
    auto-stop (a backstop) never stops a sandbox the portal sees in use. Returns whether the
    activity was written.
    """
    now = now or timezone.now()
    threshold = now - timedelta(seconds=settings.SANDBOX_ACTIVITY_WRITE_SECONDS)
    written = (
        Sandbox.objects.filter(pk=sandbox.pk)
        .filter(Q(last_activity_at__isnull=True) | Q(last_activity_at__lt=threshold))
        .update(last_activity_at=now)
    )
    if written:
        sandbox.last_activity_at = now
        log.debug("activity on %s from %s", sandbox.remote_name, source)
    refresh_every = settings.SANDBOX_ACTIVITY_REFRESH_MINUTES * 60
    refresh_due = sandbox.is_running and sandbox.remote_id
    if refresh_due and cache.add(f"sandbox-activity-refresh:{sandbox.pk}", 1, refresh_every):
        transaction.on_commit(partial(_enqueue_activity_refresh, sandbox.pk))
    return bool(written)


def _enqueue_activity_refresh(sandbox_id: int) -> None:
    # By name: the tasks call the services, never the other way round.
    try:
        current_app.tasks[REFRESH_TASK].delay(sandbox_id)
    except Exception:  # the broker is down: the provider's backstop auto-stop is long enough
        log.warning("could not enqueue the activity refresh of sandbox %s", sandbox_id, exc_info=True)


@provider_failures_as_sandbox_errors
def sandbox_refresh_activity(*, sandbox: Sandbox) -> bool:
    """Reset the provider's idle timer of a running sandbox. Returns whether a call was made;
    a sandbox that stopped or vanished meanwhile is left alone."""
    if not (sandbox.is_running and sandbox.remote_id):
        return False
    try:
        provider_for(sandbox).refresh_activity(sandbox.remote_id)
    except ProviderError as exc:
        if exc.kind is ErrorKind.NOT_FOUND:
            return False
        raise
    return True


def remote_activity(remote: RemoteSandbox, now: datetime) -> datetime:
    """The provider's last-activity time, never in the future, to the whole minute: the idle
    limit is counted in hours, and rows used within the same minute are then written together."""
    return min(remote.last_activity_at, now).replace(second=0, microsecond=0)


def has_newer_remote_activity(row: Sandbox, remote: RemoteSandbox, now: datetime) -> bool:
    """Whether the provider saw the running sandbox in use after the row last did (by at
    least ``SANDBOX_ACTIVITY_WRITE_SECONDS``)."""
    if remote.state is not RemoteState.STARTED or remote.last_activity_at is None:
        return False
    moment = remote_activity(remote, now)
    step = timedelta(seconds=settings.SANDBOX_ACTIVITY_WRITE_SECONDS)
    return row.last_activity_at is None or moment - row.last_activity_at >= step


def fold_remote_activity(sandbox: Sandbox, remote: RemoteSandbox | None, now: datetime) -> None:
    """Take the provider's own last-activity time (Daytona counts SSH sessions) when it is
    newer. Only for a running sandbox: a stop or start also moves the provider's timestamp."""
    if remote is None or remote.state is not RemoteState.STARTED or remote.last_activity_at is None:
        return
    moment = remote_activity(remote, now)
    if sandbox.last_activity_at is None or moment > sandbox.last_activity_at:
        sandbox.last_activity_at = moment
