"""Activity: what keeps a sandbox from the idle stop, and the provider's own idle timer.

Activity means a person: keystrokes or pointer use on a portal page, terminal input and output,
SSH traffic through the portal's gateway, requests to the preview the portal serves, a launch
or an explicit extend (:class:`ActivitySource`). An open tab, an open connection, or a timestamp
that the portal's own traffic moved on the provider is not. The provider's own last-activity
time counts only where the provider has doors the portal never sees
(``Capability.OUTSIDE_ACTIVITY``: Daytona's SSH gateway and preview proxy), and only where the
portal's own calls do not explain it (:func:`outside_activity`).

The idle clock itself (when it started, how long it has run) is the row's:
:attr:`Sandbox.idle_since` and ``Sandbox.objects.with_idle_since()``.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from functools import partial

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from sandboxes.durations import format_duration
from sandboxes.models import ActivitySource, AuditEvent, Sandbox
from sandboxes.providers import provider_supports
from sandboxes.providers.base import Capability, ErrorKind, ProviderError, RemoteSandbox, RemoteState

from .errors import SandboxError, provider_failures_as_sandbox_errors
from .live import sandbox_changed
from .locks import locked_for_action
from .rows import Actor, audit, provider_for
from .timeline import note_activity_mark

log = logging.getLogger(__name__)

REFRESH_TASK = "sandboxes.tasks.refresh_sandbox_activity"
BACKSTOP_TASK = "sandboxes.tasks.apply_sandbox_backstop"
BACKSTOP_MARGIN_MINUTES = 30
# How far behind the portal's own touch the provider's timestamp may land: Daytona throttles
# activity writes (5 s) and flushes them every 10 s, so its timestamp lags 10-20 s.
PROVIDER_ACTIVITY_LAG = timedelta(seconds=30)


def sandbox_record_activity(
    *, sandbox: Sandbox, source: ActivitySource | str, now: datetime | None = None, always: bool = False
) -> bool:
    """Note that the user is using the sandbox (``source``: one of :class:`ActivitySource`).

    Written at most every ``SANDBOX_ACTIVITY_WRITE_SECONDS`` (a conditional update, no read),
    unless ``always`` (an explicit extend). While the sandbox runs, the provider's own idle
    timer is refreshed at most every ``SANDBOX_ACTIVITY_REFRESH_MINUTES`` by a task enqueued
    after commit, so the provider's auto-stop (a backstop) never stops a sandbox the portal
    sees in use. Returns whether the activity was written.
    """
    now = now or timezone.now()
    threshold = now if always else now - timedelta(seconds=settings.SANDBOX_ACTIVITY_WRITE_SECONDS)
    written = (
        Sandbox.objects.filter(pk=sandbox.pk)
        .filter(Q(last_activity_at__isnull=True) | Q(last_activity_at__lt=threshold))
        .update(last_activity_at=now, last_activity_source=str(source))
    )
    if written:
        sandbox.last_activity_at, sandbox.last_activity_source = now, str(source)
        log.debug("activity on %s from %s", sandbox.remote_name, source)
        sandbox_changed(sandbox)
    note_activity_mark(sandbox, source, now)
    refresh_every = settings.SANDBOX_ACTIVITY_REFRESH_MINUTES * 60
    refresh_due = sandbox.is_running and sandbox.remote_id
    if refresh_due and cache.add(f"sandbox-activity-refresh:{sandbox.pk}", 1, refresh_every):
        _enqueue_after_commit(REFRESH_TASK, sandbox.pk)
    return bool(written)


def sandbox_extend(*, sandbox: Sandbox, minutes: int | None = None, actor=None, now: datetime | None = None) -> Sandbox:
    """The user asks for more time. Without ``minutes``, the idle clock starts again now.
    With ``minutes`` (one of ``SANDBOX_EXTEND_CHOICES_MINUTES``), the idle stop moves exactly
    that much later than it would have been (or than now, if that is later), never further than
    ``SANDBOX_EXTEND_MAX_MINUTES`` from now; audited, honoured by the idle policy
    (:attr:`Sandbox.keep_awake_until`) and by the provider's own idle stop (a task sets it and
    restarts the provider's idle timer). The extension itself is not counted as use: "+1 h"
    means one hour. Only for a running sandbox: ``SandboxError("not_running")``
    otherwise, ``SandboxError("invalid_request")`` for other minutes."""
    if minutes is not None and minutes not in settings.SANDBOX_EXTEND_CHOICES_MINUTES:
        choices = ", ".join(format_duration(timedelta(minutes=m)) for m in settings.SANDBOX_EXTEND_CHOICES_MINUTES)
        raise SandboxError("invalid_request", f"An extension is one of: {choices}.", status=400)
    now = now or timezone.now()
    if not sandbox.is_running:
        raise SandboxError("not_running", "Your sandbox is not running; open it to start it again.")
    # The row lock's end saves the row and tells the owner's pages.
    with locked_for_action(sandbox) as row:
        if not row.is_running:  # stopped meanwhile
            pass
        elif minutes is None:
            sandbox_record_activity(sandbox=row, source=ActivitySource.EXTEND, now=now, always=True)
        else:
            cap = now + timedelta(minutes=settings.SANDBOX_EXTEND_MAX_MINUTES)
            row.keep_awake_until = min(max(row.idle_deadline, now) + timedelta(minutes=minutes), cap)
            audit(
                row,
                AuditEvent.Action.EXTEND,
                actor_type=Actor.USER,
                actor=actor or row.user,
                minutes=minutes,
                until=row.keep_awake_until.isoformat(),
            )
    sandbox.refresh_from_db()
    if minutes is not None:
        _enqueue_after_commit(BACKSTOP_TASK, sandbox.pk)
    return sandbox


def sandbox_set_preferences(*, sandbox: Sandbox, idle_minutes: int | None, warn_by_email: bool, actor=None) -> Sandbox:
    """The owner's idle period (``None``: the deployment's default) and whether they are
    emailed before an idle stop. ``SandboxError("invalid_idle_period")`` (400) outside
    ``SANDBOX_IDLE_MIN_MINUTES`` to ``SANDBOX_IDLE_MAX_MINUTES``. Audited when it changed; the
    idle policy honours it from its next pass."""
    low, high = idle_period_bounds()
    if idle_minutes is not None and not low <= idle_minutes <= high:
        raise SandboxError(
            "invalid_idle_period",
            f"The idle period must be between {format_duration(timedelta(minutes=low))} "
            f"and {format_duration(timedelta(minutes=high))}.",
            status=400,
        )
    with locked_for_action(sandbox) as row:
        before = {"idle_minutes": row.idle_minutes, "warn_by_email": row.warn_by_email}
        row.idle_minutes, row.warn_by_email = idle_minutes, warn_by_email
        after = {"idle_minutes": row.idle_minutes, "warn_by_email": row.warn_by_email}
        if after != before:
            audit(row, AuditEvent.Action.SETTINGS, actor_type=Actor.USER, actor=actor or row.user, **after)
    sandbox.refresh_from_db()
    if after["idle_minutes"] != before["idle_minutes"]:
        _enqueue_after_commit(BACKSTOP_TASK, sandbox.pk)
    return sandbox


def idle_period_bounds() -> tuple[int, int]:
    """The shortest and longest idle period (minutes) a user may choose; the default is
    always allowed."""
    default = settings.SANDBOX_IDLE_MINUTES
    return min(settings.SANDBOX_IDLE_MIN_MINUTES, default), max(settings.SANDBOX_IDLE_MAX_MINUTES, default)


def idle_stop_at(sandbox: Sandbox) -> datetime | None:
    """When the idle policy stops the running sandbox unless someone uses it
    (:attr:`Sandbox.idle_deadline`); None when it is not running."""
    if not sandbox.is_running:
        return None
    return sandbox.idle_deadline


def idle_warning_at(sandbox: Sandbox) -> datetime | None:
    """From when the pages warn of the idle stop (``SANDBOX_IDLE_WARNING_MINUTES`` before it)."""
    stop_at = idle_stop_at(sandbox)
    if stop_at is None:
        return None
    return stop_at - timedelta(minutes=settings.SANDBOX_IDLE_WARNING_MINUTES)


def backstop_minutes(sandbox: Sandbox, now: datetime | None = None) -> int:
    """The provider's own idle stop for this sandbox (0: never): ``SANDBOX_REMOTE_AUTO_STOP_MINUTES``,
    or longer where the owner's idle period or extension needs it, always 30 minutes past what
    the portal's idle policy allows, so the backstop never stops a sandbox the portal keeps."""
    configured = settings.SANDBOX_REMOTE_AUTO_STOP_MINUTES
    if not configured:
        return 0
    now = now or timezone.now()
    needed = sandbox.idle_period
    if sandbox.keep_awake_until is not None and sandbox.keep_awake_until - now > needed:
        needed = sandbox.keep_awake_until - now
    return max(configured, math.ceil(needed.total_seconds() / 60) + BACKSTOP_MARGIN_MINUTES)


@provider_failures_as_sandbox_errors
def sandbox_apply_backstop(*, sandbox: Sandbox) -> bool:
    """Set the provider's own idle stop to :func:`backstop_minutes` and restart its idle timer
    (while running); False when there is no remote sandbox (any more)."""
    if not sandbox.remote_id:
        return False
    try:
        provider_for(sandbox).set_auto_stop(sandbox.remote_id, backstop_minutes(sandbox))
    except ProviderError as exc:
        if exc.kind is ErrorKind.NOT_FOUND:
            return False
        raise
    # The provider counts its idle stop from its own last activity, which a change of the
    # interval does not move: restart it, or a long-idle sandbox would stop at once.
    sandbox_refresh_activity(sandbox=sandbox)
    return True


def _enqueue_after_commit(task_name: str, sandbox_id: int) -> None:
    """Enqueue the task for the sandbox once the transaction commits (at once outside one). By
    name: the tasks call the services, never the other way round."""
    transaction.on_commit(partial(_enqueue, task_name, sandbox_id))


def _enqueue(task_name: str, sandbox_id: int) -> None:
    try:
        current_app.tasks[task_name].delay(sandbox_id)
    except Exception:
        # The broker is down: the provider keeps the idle stop and timer it had, a backstop
        # only; the portal's own idle policy does not depend on them.
        log.warning("could not enqueue %s for sandbox %s", task_name, sandbox_id, exc_info=True)


@provider_failures_as_sandbox_errors
def sandbox_refresh_activity(*, sandbox: Sandbox) -> bool:
    """Reset the provider's idle timer of a running sandbox, and remember that the portal moved
    it (so the provider's timestamp is not mistaken for a user's). Returns whether a call was
    made; a sandbox that stopped or vanished meanwhile is left alone."""
    if not (sandbox.is_running and sandbox.remote_id):
        return False
    try:
        provider_for(sandbox).refresh_activity(sandbox.remote_id)
    except ProviderError as exc:
        if exc.kind is ErrorKind.NOT_FOUND:
            return False
        raise
    note_remote_touch(sandbox, timezone.now())
    Sandbox.objects.filter(pk=sandbox.pk).update(remote_touched_at=sandbox.remote_touched_at)
    return True


def note_remote_touch(sandbox: Sandbox, now: datetime) -> None:
    """Remember (on the unsaved row) that the portal's own call moved the provider's
    activity timer just now: a refresh, a create, a start, a recovery."""
    sandbox.remote_touched_at = now


def outside_activity(row: Sandbox, remote: RemoteSandbox | None, now: datetime) -> datetime | None:
    """When the provider last saw the running sandbox used in a way the portal did not record,
    or None.

    Only providers with ``Capability.OUTSIDE_ACTIVITY`` have such doors. Their timestamp counts
    when it is newer than the row's own activity (by at least ``SANDBOX_ACTIVITY_WRITE_SECONDS``)
    and later than the portal's own last touch of the provider's timer plus its write lag.
    The portal's terminal bridge never moves it (its traffic asks the provider not to count it).
    Returned to the whole minute: the idle limit is counted in hours, and rows used within the
    same minute are then written together.
    """
    if remote is None or remote.state is not RemoteState.STARTED or remote.last_activity_at is None:
        return None
    if not provider_supports(row.provider, Capability.OUTSIDE_ACTIVITY):
        return None
    moment = min(remote.last_activity_at, now)
    if row.remote_touched_at is not None and moment <= row.remote_touched_at + PROVIDER_ACTIVITY_LAG:
        return None
    step = timedelta(seconds=settings.SANDBOX_ACTIVITY_WRITE_SECONDS)
    if row.last_activity_at is not None and moment - row.last_activity_at < step:
        return None
    return moment.replace(second=0, microsecond=0)


def fold_outside_activity(row: Sandbox, remote: RemoteSandbox | None, now: datetime) -> None:
    """Take the provider's activity into the (unsaved) row where :func:`outside_activity` says
    it shows use the portal did not see."""
    moment = outside_activity(row, remote, now)
    if moment is not None and (row.last_activity_at is None or moment > row.last_activity_at):
        row.last_activity_at, row.last_activity_source = moment, ActivitySource.PROVIDER
