"""Stop, start, delete and sync sandboxes: one for operators, many with bounded concurrency,
and the idle policy.

Remote calls for many sandboxes run on a thread pool that never touches the database: rows are
read, locked and written in bulk by the calling thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from joepro.request_context import ContextThreadPool
from sandboxes.durations import format_duration
from sandboxes.models import AuditEvent, Sandbox, SandboxState
from sandboxes.providers import get_provider
from sandboxes.providers.base import ErrorKind, ProviderError, RemoteSandbox, RemoteState, SignedLink
from usage.instruments import IDLE_STOPS

from .access import links_to_expire
from .activity import fold_outside_activity, note_remote_touch
from .apps import start_app
from .errors import SandboxError, provider_failures_as_sandbox_errors
from .grants import end_sandboxes_grants
from .launch import find_own
from .locks import exclusive_lock, lock_rows, locked_for_action
from .rows import (
    WRITE_BATCH,
    Actor,
    apply_remote,
    audit,
    audit_event,
    chunks,
    clear_failure,
    provider_for,
    save_changes,
    snapshot,
)

log = logging.getLogger(__name__)

# States in which a stop is sent. Errored sandboxes are not running; a stop would be refused.
STOP_TARGETS = frozenset(
    {SandboxState.STARTED, SandboxState.CREATING, SandboxState.STARTING, SandboxState.STOPPING, SandboxState.UNKNOWN}
)
STOP_CHUNK = 256  # rows locked per transaction while their stops are in flight
# What the idle policy reads of each candidate to know its idle stop time.
IDLE_FIELDS = (
    "pk",
    "user_id",
    "created_at",
    "last_started_at",
    "last_activity_at",
    "idle_minutes",
    "template_idle_minutes",
    "keep_awake_until",
)


@dataclass
class StopReport:
    """What a stop of one or many sandboxes did. ``lock_held``: another run was in progress,
    so this one did nothing."""

    stopped: list[Sandbox] = field(default_factory=list)
    already_stopped: list[Sandbox] = field(default_factory=list)
    failed: list[tuple[Sandbox, str]] = field(default_factory=list)
    still_active: list[Sandbox] = field(default_factory=list)  # became active before the stop
    busy: int = 0  # locked by a launch or another run; left for the next pass
    lock_held: bool = False

    def summary(self, *, after_label: str = "") -> str:
        """The counts on one line ("Stopped 2, already stopped 1, failed 0"), for logs, the admin
        and the stop command; ``after_label`` goes between each label and its count."""
        counts = [("Stopped", self.stopped), ("already stopped", self.already_stopped), ("failed", self.failed)]
        if self.still_active:
            counts.append(("kept (active meanwhile)", self.still_active))
        return ", ".join(f"{label}{after_label} {len(rows)}" for label, rows in counts)


@dataclass
class _StopOutcome:
    remote: RemoteSandbox | None = None
    gone: bool = False
    error: str = ""
    error_code: str = ""
    links_kept: bool = False


def _stop_remote(provider_name: str, remote_id: str, links: list[SignedLink], wait_seconds: float) -> _StopOutcome:
    """Stop one remote sandbox and expire its links. Runs on a pool thread: no database."""
    try:
        provider = get_provider(provider_name)
        try:
            remote = provider.stop(remote_id, wait_seconds=wait_seconds)
        except ProviderError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                return _StopOutcome(gone=True)
            return _StopOutcome(error=str(exc), error_code=exc.kind.value)
        outcome = _StopOutcome(remote=remote)
        if links:
            try:
                provider.revoke_access(remote_id, preview_port=settings.SANDBOX_PREVIEW_PORT, links=links)
            except ProviderError as exc:
                # The sandbox is stopped and its SSH tokens revoked; the links die at expiry.
                log.warning("expiring the links of %s failed: %s", remote_id, exc.kind.value)
                outcome.links_kept = True
        return outcome
    except Exception:
        log.exception("stopping %s failed unexpectedly", remote_id)
        return _StopOutcome(error="Unexpected error while stopping; see the logs.", error_code="internal")


def sandbox_stop(
    *, sandbox: Sandbox, actor_type: str, actor=None, reason: str, now: datetime | None = None
) -> StopReport:
    """Stop one sandbox (files are kept), revoke its SSH tokens and expire its links; the
    owner's next launch resumes it. Waits up to ``SANDBOX_LAUNCH_WAIT_SECONDS`` for the stop to
    complete (the row says ``stopping`` if it takes longer; reconcile settles it). See
    :func:`sandboxes_stop_many`."""
    report = sandboxes_stop_many(
        sandbox_ids=[sandbox.pk],
        actor_type=actor_type,
        actor=actor,
        reason=reason,
        concurrency=1,
        now=now,
        wait_seconds=settings.SANDBOX_LAUNCH_WAIT_SECONDS,
    )
    sandbox.refresh_from_db()
    return report


def sandboxes_stop_many(
    *,
    sandbox_ids: Iterable[int],
    actor_type: str,
    actor=None,
    reason: str,
    concurrency: int | None = None,
    now: datetime | None = None,
    idle_before: datetime | None = None,
    wait_seconds: float = 0,
) -> StopReport:
    """Stop the given sandboxes with at most ``concurrency`` provider calls in flight, each
    waiting up to ``wait_seconds`` for its stop to complete (none by default: a row still
    ``stopping`` is settled by the next reconcile).

    Each row is locked (in primary-key order, waiting for a launch in progress) and checked
    again before its stop is sent: one already at rest counts as already stopped, so two runs
    at once stop each sandbox once. With ``idle_before``, a sandbox used since then is kept.
    Stopping clears the stored access and records a ``stop`` audit event with ``reason``.
    """
    return _stop_rows(
        sorted(set(sandbox_ids)),
        actor_type=actor_type,
        actor=actor,
        reason=reason,
        concurrency=concurrency,
        now=now or timezone.now(),
        idle_before=idle_before,
        skip_locked=False,
        wait_seconds=wait_seconds,
    )


def sandboxes_stop_idle(*, now: datetime, concurrency: int | None = None) -> StopReport:
    """The idle policy: stop running sandboxes whose idle stop time (:attr:`Sandbox.idle_deadline`:
    the owner's idle period, ``SANDBOX_IDLE_MINUTES`` unless they chose another, after the last
    use, or the end of an extension when later) is before ``now``.

    A pure function of ``now`` and the rows (reconcile folds the provider's activity into
    them). Safe when two copies run at once: the second finds the advisory lock held and does
    nothing, and every stop re-checks its row under the row lock. Rows locked by a launch are
    skipped: their owner is active.
    """
    shortest = timedelta(minutes=min(settings.SANDBOX_IDLE_MIN_MINUTES, settings.SANDBOX_IDLE_MINUTES))
    with exclusive_lock("sandboxes-stop-idle") as acquired:
        if not acquired:
            log.info("idle stop skipped: another run holds the lock")
            return StopReport(lock_held=True)
        # Only rows idle for at least the shortest period anyone may choose are read; each
        # one's own deadline decides.
        candidates = (
            Sandbox.objects.with_idle_since()
            .filter(state=SandboxState.STARTED, idle_start__lt=now - shortest)
            .filter(Q(keep_awake_until__isnull=True) | Q(keep_awake_until__lt=now))
            .only(*IDLE_FIELDS)
            .order_by("pk")
        )
        ids = [row.pk for row in candidates.iterator(chunk_size=2000) if row.idle_deadline < now]
        report = _stop_rows(
            ids,
            actor_type=Actor.SYSTEM,
            actor=None,
            reason="",
            concurrency=concurrency,
            now=now,
            idle_before=None,
            skip_locked=True,
            idle_policy=True,
        )
    if ids:
        log.info("idle stop: %s", report.summary())
        IDLE_STOPS.labels(reason="idle", outcome="stopped").inc(len(report.stopped))
        IDLE_STOPS.labels(reason="idle", outcome="failed").inc(len(report.failed))
    return report


def idle_stop_reason(sandbox: Sandbox) -> str:
    """The audit reason of an idle stop, naming the owner's idle period."""
    return f"idle for more than {format_duration(sandbox.idle_period)}"


def sandboxes_for_stop(
    *,
    now: datetime,
    emails: Iterable[str] = (),
    idle_for: timedelta | None = None,
    states: Iterable[str] = (),
):
    """The sandboxes an operator's selection names (every row when nothing narrows it),
    annotated with the start of their idle clock (``idle_start``). Raises
    ``SandboxError("unknown_user")`` for an email that names no user, before anything is done."""
    queryset = Sandbox.objects.with_idle_since().select_related("user").order_by("pk")
    emails = sorted({email.strip().lower() for email in emails})
    if emails:
        from django.contrib.auth import get_user_model

        users = get_user_model().objects.filter(_email_in(emails, "email"))
        known = {email.lower() for email in users.values_list("email", flat=True)}
        unknown = [email for email in emails if email not in known]
        if unknown:
            raise SandboxError("unknown_user", f"No user with email {', '.join(unknown)}.", status=400)
        queryset = queryset.filter(_email_in(emails, "user__email"))
    if idle_for is not None:
        queryset = queryset.filter(idle_start__lt=now - idle_for)
    states = list(states)
    if states:
        queryset = queryset.filter(state__in=states)
    return queryset


def _email_in(emails: list[str], lookup: str) -> Q:
    condition = Q()
    for email in emails:
        condition |= Q(**{f"{lookup}__iexact": email})
    return condition


def will_stop(sandbox: Sandbox) -> bool:
    """Whether a stop would be sent for this row (it is not at rest already)."""
    return sandbox.state in STOP_TARGETS and bool(sandbox.remote_id)


def _stop_rows(
    ids: list[int],
    *,
    actor_type: str,
    actor,
    reason: str,
    concurrency: int | None,
    now: datetime,
    idle_before: datetime | None,
    skip_locked: bool,
    wait_seconds: float = 0,
    idle_policy: bool = False,
) -> StopReport:
    report = StopReport()
    if not ids:
        return report
    workers = max(1, concurrency or settings.SANDBOX_STOP_CONCURRENCY)
    with ContextThreadPool(max_workers=workers, thread_name_prefix="sandbox-stop") as pool:
        for chunk in chunks(ids, max(STOP_CHUNK, workers)):
            _stop_chunk(
                chunk,
                pool=pool,
                report=report,
                actor_type=actor_type,
                actor=actor,
                reason=reason,
                now=now,
                idle_before=idle_before,
                skip_locked=skip_locked,
                wait_seconds=wait_seconds,
                idle_policy=idle_policy,
            )
    return report


def _stop_chunk(
    ids: list[int],
    *,
    pool,
    report: StopReport,
    actor_type,
    actor,
    reason,
    now,
    idle_before,
    skip_locked,
    wait_seconds,
    idle_policy,
) -> None:
    with transaction.atomic():
        queryset = Sandbox.objects.select_related("user").filter(pk__in=ids).order_by("pk")
        rows = list(lock_rows(queryset, skip_locked=skip_locked))
        report.busy += len(ids) - len(rows)
        targets = []
        for row in rows:
            if not will_stop(row):
                report.already_stopped.append(row)
            elif idle_before is not None and row.idle_since >= idle_before:
                report.still_active.append(row)
            elif idle_policy and row.idle_deadline >= now:
                report.still_active.append(row)
            else:
                targets.append(row)
        # Whether a link still works is the provider's wall-clock fact, whatever ``now`` says.
        wall_clock = timezone.now()
        outcomes = pool.map(
            lambda row: _stop_remote(row.provider, row.remote_id, links_to_expire(row, wall_clock), wait_seconds),
            targets,
        )
        events, changes, access_ended = [], [], []
        for row, outcome in zip(targets, outcomes, strict=True):
            before = row.state
            changes.append((row, snapshot(row)))
            if outcome.error:
                row.last_error, row.last_error_code = outcome.error, outcome.error_code
                report.failed.append((row, outcome.error))
                continue
            apply_remote(row, outcome.remote, now)  # None: gone
            row.forget_access()
            access_ended.append(row.pk)
            clear_failure(row)
            if outcome.gone:
                report.already_stopped.append(row)
                events.append(
                    audit_event(
                        row,
                        AuditEvent.Action.STATE_SYNCED,
                        actor_type=actor_type,
                        actor=actor,
                        reason="gone when stopped",
                        **{"from": before, "to": row.state},
                    )
                )
                continue
            report.stopped.append(row)
            detail = {"from": before, "to": row.state, "idle_seconds": int((now - row.idle_since).total_seconds())}
            if outcome.links_kept:
                detail["links_expired"] = False
            row_reason = idle_stop_reason(row) if idle_policy else reason
            events.append(
                audit_event(
                    row, AuditEvent.Action.STOP, actor_type=actor_type, actor=actor, reason=row_reason, **detail
                )
            )
        save_changes(changes)
        AuditEvent.objects.bulk_create(events, batch_size=WRITE_BATCH)
        end_sandboxes_grants(access_ended, now)


# --- start, delete, sync (one sandbox, for operators) --------------------------------------------


@provider_failures_as_sandbox_errors
def sandbox_start(
    *, sandbox: Sandbox, actor_type: str, actor=None, reason: str = "", now: datetime | None = None
) -> Sandbox:
    """Start (resume) a stopped or archived sandbox without minting access; the owner's next
    launch mints it. Raises ``SandboxError("no_remote")`` when there is nothing to start (the
    owner's next launch creates a sandbox), and ``SandboxError`` on provider failures (a
    sandbox found gone is marked so)."""
    try:
        with locked_for_action(sandbox) as row:
            now = now or timezone.now()
            if not row.remote_id:
                raise SandboxError(
                    "no_remote", "There is no remote sandbox to start; the owner's next launch creates one."
                )
            before = row.state
            try:
                remote = provider_for(row).start(row.remote_id, wait_seconds=settings.SANDBOX_LAUNCH_WAIT_SECONDS)
            except ProviderError as exc:
                if exc.kind is ErrorKind.NOT_FOUND:
                    apply_remote(row, None, now)
                    audit(
                        row,
                        AuditEvent.Action.STATE_SYNCED,
                        actor_type=actor_type,
                        actor=actor,
                        reason="gone when started",
                    )
                raise
            apply_remote(row, remote, now)
            note_remote_touch(row, now)
            clear_failure(row)
            if remote.state is RemoteState.STARTED:
                start_app(row, provider_for(row))
            audit(
                row,
                AuditEvent.Action.START,
                actor_type=actor_type,
                actor=actor,
                reason=reason,
                **{"from": before, "to": row.state},
            )
    finally:
        sandbox.refresh_from_db()
    return row


@provider_failures_as_sandbox_errors
def sandbox_delete(
    *, sandbox: Sandbox, actor_type: str, actor=None, reason: str, now: datetime | None = None
) -> Sandbox:
    """Destroy the remote sandbox and its files; the row stays (state ``gone``) and the
    owner's next launch creates a new sandbox. Idempotent."""
    try:
        with locked_for_action(sandbox) as row:
            remote_id, before = row.remote_id, row.state
            if remote_id:
                provider_for(row).delete(remote_id)
            apply_remote(row, None, now or timezone.now())
            end_sandboxes_grants([row.pk], now or timezone.now())
            clear_failure(row)
            audit(
                row,
                AuditEvent.Action.DELETE,
                actor_type=actor_type,
                actor=actor,
                reason=reason,
                remote_id=remote_id,
                **{"from": before},
            )
    finally:
        sandbox.refresh_from_db()
    return row


@provider_failures_as_sandbox_errors
def sandbox_sync(*, sandbox: Sandbox, actor_type: str, actor=None, now: datetime | None = None) -> Sandbox:
    """Read the remote sandbox (authoritatively) and mirror it into the row, the provider's
    activity included. A row without a remote id is looked up by name and adopted after the
    owner check."""
    try:
        with locked_for_action(sandbox, related=("user",)) as row:
            now = now or timezone.now()
            provider = provider_for(row)
            before = row.state
            if row.remote_id:
                remote = provider.get(row.remote_id)
            else:
                remote = find_own(row, provider, row.user)
            if remote is not None and remote.state is RemoteState.DESTROYING:
                remote = None
            if remote is not None or row.remote_id or row.state != SandboxState.PENDING:
                apply_remote(row, remote, now)
            fold_outside_activity(row, remote, now)
            audit(
                row,
                AuditEvent.Action.STATE_SYNCED,
                actor_type=actor_type,
                actor=actor,
                reason="synced from the provider",
                **{"from": before, "to": row.state},
            )
    finally:
        sandbox.refresh_from_db()
    return row
