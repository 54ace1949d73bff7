"""Every state change of a sandbox, written once.

The API, the portal pages, the admin, Celery tasks and management commands all call these
functions; none of them talks to a provider directly.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Q
from django.db.models.functions import Coalesce, Greatest
from django.urls import reverse
from django.utils import timezone

from . import secrets
from .models import AuditEvent, Sandbox, SandboxState
from .providers import get_provider
from .providers.base import (
    ErrorKind,
    ProviderError,
    RemoteSandbox,
    RemoteState,
    SandboxAccess,
    SandboxProvider,
    SandboxSpec,
    SignedLink,
)

log = logging.getLogger(__name__)

LABEL_MANAGED = "joepro-managed"
LABEL_DEPLOYMENT = "joepro-deployment"
LABEL_OWNER = "joepro-owner"
POLL_INTERVAL = 0.2
STATUS_SYNC_INTERVAL = timedelta(seconds=1)
Actor = AuditEvent.ActorType


class SandboxError(Exception):
    """An action the portal refuses, with a stable ``code`` for API clients."""

    def __init__(self, code: str, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass
class Launch:
    """The outcome of :func:`sandbox_launch`: access is None while the sandbox still starts."""

    sandbox: Sandbox
    access: dict | None

    @property
    def ready(self) -> bool:
        return self.access is not None


# --- naming and labels ------------------------------------------------------------------------


def managed_labels() -> dict[str, str]:
    """Labels every sandbox of this deployment carries; the filter for listing them."""
    return {LABEL_MANAGED: "true", LABEL_DEPLOYMENT: settings.SANDBOX_DEPLOYMENT}


def owner_labels(user) -> dict[str, str]:
    return {**managed_labels(), LABEL_OWNER: str(user.pk)}


def remote_name_for(user) -> str:
    """Deterministic and collision-free: the deployment and the user's primary key.

    Neither part can be chosen by a user, and the owner label is checked before any sandbox
    found under this name is handed out.
    """
    deployment = re.sub(r"[^a-z0-9-]+", "-", settings.SANDBOX_DEPLOYMENT.lower()).strip("-") or "portal"
    return f"{deployment}-user-{user.pk}"


def is_owned_by(remote: RemoteSandbox, user) -> bool:
    labels = remote.labels
    return all(labels.get(key) == value for key, value in owner_labels(user).items())


# --- rows -------------------------------------------------------------------------------------


def sandbox_get_or_create_row(*, user) -> Sandbox:
    """The user's row, created (state ``pending``) on first use. Safe under concurrent calls:
    the one-per-user constraint lets exactly one insert win and the others read it."""
    defaults = {
        "provider": settings.SANDBOX_PROVIDER,
        "remote_name": remote_name_for(user),
        "cpu": settings.SANDBOX_CPU,
        "memory_gb": settings.SANDBOX_MEMORY_GB,
        "disk_gb": settings.SANDBOX_DISK_GB,
        "labels": owner_labels(user),
    }
    try:
        sandbox, _ = Sandbox.objects.get_or_create(user=user, defaults=defaults)
    except IntegrityError:
        sandbox = Sandbox.objects.get(user=user)
    return sandbox


def provider_for(sandbox: Sandbox) -> SandboxProvider:
    return get_provider(sandbox.provider)


def audit(sandbox: Sandbox, action: str, *, actor_type: str, actor=None, reason: str = "", **detail) -> None:
    audit_event(sandbox, action, actor_type=actor_type, actor=actor, reason=reason, **detail).save()


def audit_event(
    sandbox: Sandbox | None, action: str, *, actor_type: str, actor=None, reason: str = "", name: str = "", **detail
) -> AuditEvent:
    """An unsaved audit event (for ``bulk_create``); ``name`` names a remote sandbox without a row."""
    return AuditEvent(
        sandbox=sandbox,
        sandbox_name=sandbox.remote_name if sandbox is not None else name,
        action=action,
        actor_type=actor_type,
        actor=actor,
        reason=reason[:255],
        detail=detail,
    )


def _apply_remote(sandbox: Sandbox, remote: RemoteSandbox | None, now: datetime) -> None:
    """Mirror what the provider says into the row (not saved)."""
    sandbox.last_synced_at = now
    if remote is None:
        sandbox.remote_id = ""
        sandbox.backend_state = ""
        sandbox.forget_access()
        sandbox.set_state(SandboxState.GONE, now)
        return
    sandbox.remote_id = remote.id
    sandbox.backend_state = remote.backend_state[:32]
    sandbox.set_state(SandboxState.from_remote(remote.state), now)
    if remote.state is not RemoteState.STARTED:
        sandbox.forget_access()
    if remote.state is RemoteState.ERROR and remote.error_reason:
        sandbox.last_error, sandbox.last_error_code = remote.error_reason, "remote_error"


def _record_failure(sandbox: Sandbox, exc: ProviderError | SandboxError) -> None:
    sandbox.last_error = str(exc)
    sandbox.last_error_code = exc.code if isinstance(exc, SandboxError) else exc.kind.value


def _clear_failure(sandbox: Sandbox) -> None:
    sandbox.last_error = ""
    sandbox.last_error_code = ""


# --- launch -----------------------------------------------------------------------------------


def sandbox_launch(*, user, now: datetime | None = None) -> Launch:
    """Create, resume or reuse the user's sandbox and return access to it.

    Concurrency: the user's row is locked for the whole flow, so simultaneous launches by one
    user queue behind each other and make exactly one remote sandbox; the later ones find it
    started and reuse the access already minted.

    Returns a ``Launch`` without access when the sandbox is still creating or starting after
    ``SANDBOX_LAUNCH_WAIT_SECONDS``: the backend carries on, and a later call completes the
    launch. Raises ``SandboxError`` for what the portal refuses and ``ProviderError`` for
    provider failures (already retried by the provider where that was safe); either is also
    recorded on the row as its last error.
    """
    _check_launch_rate(user)
    row = sandbox_get_or_create_row(user=user)
    try:
        with _locked_for_action(row) as sandbox:
            return _launch_locked(sandbox, provider_for(sandbox), user, now or timezone.now())
    except (ProviderError, SandboxError) as exc:
        log.warning("launch of %s failed: %s", row.remote_name, exc)
        raise


@contextmanager
def _locked_for_action(sandbox: Sandbox, *, related: tuple[str, ...] = ()) -> Iterator[Sandbox]:
    """The sandbox's row, locked for one action on the provider and saved when it ends.

    A ``ProviderError`` or ``SandboxError`` raised by the action is recorded as the row's last
    error and committed with the row, then raised again: a failed call never rolls back what
    the portal learnt before it (a new remote id, a state).
    """
    failure: ProviderError | SandboxError | None = None
    with transaction.atomic():
        row = Sandbox.objects.select_for_update().select_related(*related).get(pk=sandbox.pk)
        try:
            yield row
        except (ProviderError, SandboxError) as exc:
            _record_failure(row, exc)
            failure = exc
        row.save()
    if failure is not None:
        raise failure


def _launch_locked(sandbox: Sandbox, provider: SandboxProvider, user, now: datetime) -> Launch:
    """The launch under the row lock; the caller saves the row."""
    deadline = time.monotonic() + settings.SANDBOX_LAUNCH_WAIT_SECONDS
    remote, acted = _ensure_started(sandbox, provider, user, deadline)
    _apply_remote(sandbox, remote, now)
    if remote.state is not RemoteState.STARTED:
        return Launch(sandbox=sandbox, access=None)
    access = _access_for(sandbox, provider, user, fresh=acted, now=now)
    sandbox.last_activity_at = now
    _clear_failure(sandbox)
    audit(sandbox, AuditEvent.Action.LAUNCH, actor_type=Actor.USER, actor=user)
    return Launch(sandbox=sandbox, access=access)


def _seconds_left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _ensure_started(
    sandbox: Sandbox, provider: SandboxProvider, user, deadline: float
) -> tuple[RemoteSandbox, bool]:
    """Drive the remote sandbox towards ``started`` until the deadline.

    Returns the remote sandbox as last seen and whether this call created, started or
    recovered it (access minted before that is not reused).
    """
    remote = _current_remote(sandbox, provider, user)
    acted = False
    if remote is None:
        remote = _create(sandbox, provider, user, deadline)
        acted = True
    for _ in range(6):  # each step moves the state on; six covers stopping -> stopped -> start
        state = remote.state
        if state is RemoteState.STARTED:
            return remote, acted
        if state in (RemoteState.STOPPED, RemoteState.ARCHIVED):
            remote = _start(sandbox, provider, remote, user, deadline)
            acted = True
        elif state in (RemoteState.CREATING, RemoteState.STARTING, RemoteState.STOPPING):
            remote = _wait_while(provider, remote, {state}, deadline)
            if remote.state is state:
                return remote, acted
        elif state is RemoteState.ERROR:
            remote = _recover_or_replace(sandbox, provider, remote, user, deadline)
            acted = True
        elif state is RemoteState.DESTROYING:
            _apply_remote(sandbox, None, timezone.now())
            remote = _create(sandbox, provider, user, deadline)
            acted = True
        else:
            raise ProviderError(
                f"The sandbox is in a state the portal does not know ({remote.backend_state}).",
                kind=ErrorKind.UNAVAILABLE,
                retryable=True,
            )
        if _seconds_left(deadline) == 0 and remote.state is not RemoteState.STARTED:
            return remote, acted
    return remote, acted


def _current_remote(sandbox: Sandbox, provider: SandboxProvider, user) -> RemoteSandbox | None:
    """The remote sandbox behind the row: by id when known, else by name (adopted after the
    owner check). None when there is none and one must be created."""
    if sandbox.remote_id:
        remote = provider.get(sandbox.remote_id)
        if remote is not None and remote.state is not RemoteState.DESTROYING:
            return remote
        _apply_remote(sandbox, None, timezone.now())
    return _find_own(sandbox, provider, user)


def _find_own(sandbox: Sandbox, provider: SandboxProvider, user) -> RemoteSandbox | None:
    remote = provider.find(sandbox.remote_name)
    if remote is None or remote.state is RemoteState.DESTROYING:
        return None
    if not is_owned_by(remote, user):
        log.error("sandbox name %s is taken by a sandbox with other owner labels", sandbox.remote_name)
        raise SandboxError(
            "name_taken",
            "A sandbox that does not belong to you already uses your sandbox's name. "
            "An operator has to resolve this; nothing was handed out.",
        )
    sandbox.remote_id = remote.id
    audit(sandbox, AuditEvent.Action.ADOPT, actor_type=Actor.SYSTEM, remote_id=remote.id)
    return remote


def _spec_for(sandbox: Sandbox, user) -> SandboxSpec:
    sandbox.labels = owner_labels(user)
    return SandboxSpec(
        name=sandbox.remote_name,
        labels=sandbox.labels,
        cpu=sandbox.cpu,
        memory_gb=sandbox.memory_gb,
        disk_gb=sandbox.disk_gb,
        image=settings.SANDBOX_IMAGE,
        snapshot=settings.SANDBOX_SNAPSHOT,
        auto_stop_minutes=settings.SANDBOX_REMOTE_AUTO_STOP_MINUTES,
    )


def _create(sandbox: Sandbox, provider: SandboxProvider, user, deadline: float) -> RemoteSandbox:
    """Create under the row's name. A name conflict or an unknown outcome is resolved by
    looking the name up again (adopting after the owner check), never by creating again."""
    try:
        remote = provider.create(_spec_for(sandbox, user), wait_seconds=_seconds_left(deadline))
    except ProviderError as exc:
        if exc.kind not in (ErrorKind.CONFLICT, ErrorKind.TIMEOUT):
            raise
        remote = _find_own(sandbox, provider, user)
        if remote is None:
            raise ProviderError(
                "The sandbox service did not confirm the new sandbox. Please try again.",
                kind=ErrorKind.UNAVAILABLE,
                retryable=True,
                retry_after=exc.retry_after or 2,
            ) from exc
        return remote
    sandbox.remote_id = remote.id
    audit(sandbox, AuditEvent.Action.CREATE, actor_type=Actor.USER, actor=user, remote_id=remote.id)
    return remote


def _start(sandbox, provider, remote, user, deadline) -> RemoteSandbox:
    try:
        started = provider.start(remote.id, wait_seconds=_seconds_left(deadline))
    except ProviderError as exc:
        if exc.kind is not ErrorKind.CONFLICT:
            raise
        return provider.get(remote.id) or remote  # someone else is changing it: wait on that
    audit(sandbox, AuditEvent.Action.START, actor_type=Actor.USER, actor=user)
    return started


def _recover_or_replace(sandbox, provider, remote, user, deadline) -> RemoteSandbox:
    if remote.recoverable:
        recovered = provider.recover(remote.id, wait_seconds=_seconds_left(deadline))
        audit(sandbox, AuditEvent.Action.RECOVER, actor_type=Actor.USER, actor=user, error=remote.error_reason)
        return recovered
    provider.delete(remote.id)
    audit(
        sandbox, AuditEvent.Action.DELETE, actor_type=Actor.SYSTEM, reason="unrecoverable error, replaced",
        error=remote.error_reason,
    )
    _apply_remote(sandbox, None, timezone.now())
    return _create(sandbox, provider, user, deadline)


def _wait_while(provider, remote: RemoteSandbox, states: set[RemoteState], deadline: float) -> RemoteSandbox:
    """Poll until the sandbox leaves ``states`` or the deadline passes."""
    while remote.state in states and _seconds_left(deadline) > 0:
        time.sleep(min(POLL_INTERVAL, _seconds_left(deadline)))
        remote = provider.get(remote.id) or RemoteSandbox(id=remote.id, name=remote.name, state=RemoteState.DESTROYING)
    return remote


# --- access -----------------------------------------------------------------------------------


def _access_for(sandbox: Sandbox, provider: SandboxProvider, user, *, fresh: bool, now: datetime) -> dict:
    """Access details for a started sandbox: the stored ones while they stay valid long enough
    (and the sandbox was not restarted since), new ones otherwise."""
    if not fresh and sandbox.has_reusable_access(now, settings.SANDBOX_ACCESS_REUSE_MARGIN):
        stored = _stored_access(sandbox)
        if stored is not None:
            return stored["access"]
    access = provider.mint_access(
        sandbox.remote_id,
        ssh_minutes=settings.SANDBOX_SSH_TOKEN_MINUTES,
        preview_port=settings.SANDBOX_PREVIEW_PORT,
        link_seconds=settings.SANDBOX_SSH_TOKEN_MINUTES * 60,
    )
    payload = access_payload(access, remote_id=sandbox.remote_id, preview_port=settings.SANDBOX_PREVIEW_PORT)
    # The link tokens are kept (sealed) so that stopping the sandbox can expire the links early.
    links = [_link_record(access.preview), _link_record(access.terminal)]
    sandbox.access_ciphertext = secrets.seal({"access": payload, "links": links})
    sandbox.access_expires_at = min(access.ssh.expires_at, access.preview.expires_at, access.terminal.expires_at)
    audit(
        sandbox, AuditEvent.Action.ACCESS_MINTED, actor_type=Actor.USER, actor=user,
        expires_at=sandbox.access_expires_at.isoformat(),
    )
    return payload


def access_payload(access: SandboxAccess, *, remote_id: str, preview_port: int) -> dict:
    """The API's ``access`` object. The terminal is always the portal's own page (it works for
    every user); a provider's direct terminal link, where it differs, is kept as ``daytonaUrl``
    for members of the Daytona organisation."""
    terminal_page = reverse("sandbox-terminal", args=[remote_id])
    return {
        "ssh": {
            "command": access.ssh.command,
            "token": access.ssh.token,
            "host": access.ssh.host,
            "port": access.ssh.port,
            "expiresAt": access.ssh.expires_at.isoformat(),
        },
        "preview": {"url": access.preview.url, "port": preview_port, "expiresAt": access.preview.expires_at.isoformat()},
        "terminal": {
            "url": terminal_page,
            "expiresAt": access.terminal.expires_at.isoformat(),
            "daytonaUrl": access.terminal.url if access.terminal.url != terminal_page else None,
        },
    }


def _link_record(link: SignedLink) -> dict:
    return {"url": link.url, "token": link.token, "port": link.port, "expiresAt": link.expires_at.isoformat()}


def _stored_access(sandbox: Sandbox) -> dict | None:
    """The sealed access as ``{"access": <API payload>, "links": [...]}``, or None."""
    return secrets.unseal(sandbox.access_ciphertext)


def _links_to_expire(sandbox: Sandbox, now: datetime) -> list[SignedLink]:
    """Signed links handed out for this sandbox that are still valid."""
    stored = _stored_access(sandbox)
    links = []
    for record in (stored or {}).get("links", []):
        expires_at = datetime.fromisoformat(record["expiresAt"])
        if record.get("token") and expires_at > now:
            links.append(
                SignedLink(url=record["url"], expires_at=expires_at, token=record["token"], port=record.get("port", 0))
            )
    return links


# --- status -----------------------------------------------------------------------------------


def sandbox_status(*, user, now: datetime | None = None) -> Sandbox | None:
    """The user's sandbox as the launcher polls it. While it is mid-transition the row is
    refreshed from the provider (at most once a second) unless a launch holds its lock."""
    sandbox = Sandbox.objects.filter(user=user).first()
    if sandbox is None or not (sandbox.is_transitioning and sandbox.remote_id):
        return sandbox
    now = now or timezone.now()
    if sandbox.last_synced_at and now - sandbox.last_synced_at < STATUS_SYNC_INTERVAL:
        return sandbox
    with transaction.atomic():
        locked = Sandbox.objects.select_for_update(skip_locked=True).filter(pk=sandbox.pk).first()
        if locked is None:
            return sandbox  # a launch is working on it and will record the outcome
        try:
            remote = provider_for(locked).get(locked.remote_id)
        except ProviderError as exc:
            _record_failure(locked, exc)
        else:
            _apply_remote(locked, remote, now)
        locked.save()
    return locked


# --- rate limiting ----------------------------------------------------------------------------


def _parse_rate(rate: str) -> tuple[int, int]:
    count, _, period = rate.partition("/")
    seconds = {"s": 1, "m": 60, "h": 3600}[period.strip()[:1] or "m"]
    return int(count), seconds


def _check_launch_rate(user) -> None:
    """A fixed window per user, so a stuck key or script cannot hammer the provider."""
    limit, period = _parse_rate(settings.SANDBOX_LAUNCH_RATE)
    window = int(time.time() // period)
    key = f"sandbox-launch-rate:{user.pk}:{window}"
    try:
        count = cache.incr(key)
    except ValueError:  # the window's first launch
        count = 1 if cache.add(key, 1, timeout=period + 1) else cache.incr(key)
    if count > limit:
        retry_after = period - (time.time() % period)
        raise SandboxError(
            "rate_limited", "Too many launches in a short time. Please wait a moment.", retry_after=retry_after
        )


# === lifecycle ================================================================================
#
# Stop, start, delete and refresh one sandbox; stop many with bounded concurrency; the idle
# policy; reconcile. Remote calls for many sandboxes run on a thread pool that never touches
# the database: rows are read, locked and written in bulk by the calling thread.

# States in which a stop is sent. Errored sandboxes are not running; a stop would be refused.
STOP_TARGETS = frozenset(
    {SandboxState.STARTED, SandboxState.CREATING, SandboxState.STARTING, SandboxState.STOPPING, SandboxState.UNKNOWN}
)
STOP_CHUNK = 256  # rows locked per transaction while their stops are in flight
WRITE_BATCH = 500
LIST_LAG_GRACE = timedelta(seconds=30)  # a listing may not show changes younger than this
MIN_LOOKUPS = 20  # per reconcile pass, however few rows; otherwise 1% of the rows
SYNCED_FIELDS = [
    "remote_id",
    "state",
    "backend_state",
    "state_changed_at",
    "last_started_at",
    "last_stopped_at",
    "last_activity_at",
    "last_synced_at",
    "last_error",
    "last_error_code",
    "access_ciphertext",
    "access_expires_at",
]


@contextmanager
def exclusive_lock(name: str) -> Iterator[bool]:
    """Yield whether this process now holds the lock ``name``; never waits for it.

    PostgreSQL: a session-level advisory lock on this thread's connection, released on exit or
    when the connection dies (a killed worker cannot leave it behind). It needs a session that
    stays with the process, i.e. no transaction-pooling proxy in between. Elsewhere (SQLite,
    the embedded default): a cache entry that expires after ``timeout`` seconds.
    """
    if connection.vendor == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"joepro:{name}".encode()).digest()[:8], "big", signed=True)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            acquired = bool(cursor.fetchone()[0])
        try:
            yield acquired
        finally:
            if acquired:
                try:
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
                except DatabaseError:  # the connection is gone, and the lock with it
                    log.warning("could not release lock %s; its connection is gone", name)
        return
    cache_key = f"sandbox-lock:{name}"
    acquired = cache.add(cache_key, "held", timeout=3600)
    try:
        yield acquired
    finally:
        if acquired:
            cache.delete(cache_key)


def _locked(queryset, *, skip_locked: bool = False):
    """``select_for_update`` of the sandbox rows only (not joined users), where supported."""
    of = ("self",) if connection.features.has_select_for_update_of else ()
    return queryset.select_for_update(skip_locked=skip_locked, of=of)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _snapshot(sandbox: Sandbox) -> dict:
    return {name: _comparable(getattr(sandbox, name)) for name in SYNCED_FIELDS}


def _comparable(value):
    return bytes(value) if isinstance(value, memoryview) else value


def _save_changes(changes: list[tuple[Sandbox, dict]]) -> None:
    """Write what changed on each row (against its ``_snapshot``) in few queries.

    Rows whose changes are identical (a stop, a state drift seen in one pass) share one
    ``UPDATE ... WHERE id IN (...)``; the few left over go through one ``bulk_update``. Django's
    ``bulk_update`` alone builds a CASE per row and field, which for thousands of rows costs
    seconds of CPU that the provider threads need.
    """
    groups: dict[tuple, list[Sandbox]] = {}
    for row, before in changes:
        after = _snapshot(row)
        changed = tuple((name, after[name]) for name in SYNCED_FIELDS if after[name] != before[name])
        if changed:
            groups.setdefault(changed, []).append(row)
    singles: list[Sandbox] = []
    single_fields: set[str] = set()
    for changed, rows in groups.items():
        if len(rows) == 1:
            singles.extend(rows)
            single_fields.update(name for name, _ in changed)
            continue
        for batch in _chunks([row.pk for row in rows], WRITE_BATCH):
            Sandbox.objects.filter(pk__in=batch).update(**dict(changed))
    if singles:
        Sandbox.objects.bulk_update(singles, sorted(single_fields), batch_size=WRITE_BATCH)


def idle_since(sandbox: Sandbox) -> datetime:
    """When the sandbox was last used or started, whichever is later (else its creation)."""
    moments = [moment for moment in (sandbox.last_activity_at, sandbox.last_started_at) if moment]
    return max(moments) if moments else sandbox.created_at


def with_idle_since(queryset):
    """``queryset`` annotated with ``idle_since``, the database's version of :func:`idle_since`."""
    activity = Coalesce("last_activity_at", "last_started_at", "created_at")
    started = Coalesce("last_started_at", "last_activity_at", "created_at")
    return queryset.annotate(idle_since=Greatest(activity, started))


def _fold_remote_activity(sandbox: Sandbox, remote: RemoteSandbox | None, now: datetime) -> None:
    """Take the provider's own last-activity time (Daytona counts SSH sessions) when it is
    newer. Only for a running sandbox: a stop or start also moves the provider's timestamp."""
    if remote is None or remote.state is not RemoteState.STARTED or remote.last_activity_at is None:
        return
    moment = _remote_activity(remote, now)
    if sandbox.last_activity_at is None or moment > sandbox.last_activity_at:
        sandbox.last_activity_at = moment


def _remote_activity(remote: RemoteSandbox, now: datetime) -> datetime:
    """The provider's last-activity time, never in the future, to the whole minute: the idle
    limit is counted in hours, and rows used within the same minute are then written together."""
    return min(remote.last_activity_at, now).replace(second=0, microsecond=0)


def _human(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    if hours and minutes:
        return f"{hours}h{minutes:02d}m"
    return f"{hours}h" if hours else f"{minutes}m"


# --- activity ---------------------------------------------------------------------------------


def sandbox_record_activity(*, sandbox: Sandbox, source: str, now: datetime | None = None) -> bool:
    """Note that the user is using the sandbox (``source``: "heartbeat", "terminal", ...).

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
    from . import tasks

    try:
        tasks.refresh_sandbox_activity.delay(sandbox_id)
    except Exception:  # the broker is down: the provider's backstop auto-stop is long enough
        log.warning("could not enqueue the activity refresh of sandbox %s", sandbox_id, exc_info=True)


def sandbox_push_activity(*, sandbox: Sandbox) -> bool:
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


# --- stop -------------------------------------------------------------------------------------


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

    def summary(self) -> str:
        return (
            f"stopped {len(self.stopped)}, already stopped {len(self.already_stopped)}, "
            f"failed {len(self.failed)}"
        )


@dataclass
class _StopOutcome:
    remote: RemoteSandbox | None = None
    gone: bool = False
    error: str = ""
    error_code: str = ""
    links_kept: bool = False


def _stop_remote(provider_name: str, remote_id: str, links: list[SignedLink]) -> _StopOutcome:
    """Stop one remote sandbox and expire its links. Runs on a pool thread: no database."""
    try:
        provider = get_provider(provider_name)
        try:
            remote = provider.stop(remote_id, wait_seconds=0)
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
    owner's next launch resumes it. See :func:`sandboxes_stop_many`."""
    report = sandboxes_stop_many(
        sandbox_ids=[sandbox.pk], actor_type=actor_type, actor=actor, reason=reason, concurrency=1, now=now
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
) -> StopReport:
    """Stop the given sandboxes with at most ``concurrency`` provider calls in flight.

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
    )


def sandboxes_stop_idle(
    *, now: datetime, idle_after: timedelta | None = None, concurrency: int | None = None
) -> StopReport:
    """The idle policy: stop running sandboxes without activity for longer than
    ``idle_after`` (default ``SANDBOX_IDLE_MINUTES``) before ``now``.

    A pure function of ``now`` and the rows (reconcile folds the provider's activity into
    them). Safe when two copies run at once: the second finds the advisory lock held and does
    nothing, and every stop re-checks its row under the row lock. Rows locked by a launch are
    skipped: their owner is active.
    """
    idle_after = idle_after or timedelta(minutes=settings.SANDBOX_IDLE_MINUTES)
    cutoff = now - idle_after
    with exclusive_lock("sandboxes-stop-idle") as acquired:
        if not acquired:
            log.info("idle stop skipped: another run holds the lock")
            return StopReport(lock_held=True)
        ids = list(
            with_idle_since(Sandbox.objects.filter(state=SandboxState.STARTED))
            .filter(idle_since__lt=cutoff)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        report = _stop_rows(
            ids,
            actor_type=Actor.SYSTEM,
            actor=None,
            reason=f"idle for more than {_human(idle_after)}",
            concurrency=concurrency,
            now=now,
            idle_before=cutoff,
            skip_locked=True,
        )
    if ids:
        log.info("idle stop: %s", report.summary())
    return report


def sandboxes_for_stop(
    *,
    now: datetime,
    emails: Iterable[str] = (),
    idle_for: timedelta | None = None,
    states: Iterable[str] = (),
):
    """The sandboxes an operator's selection names (every row when nothing narrows it),
    annotated with ``idle_since``. Raises ``SandboxError("unknown_user")`` for an email that
    names no user, before anything is done."""
    queryset = with_idle_since(Sandbox.objects.select_related("user")).order_by("pk")
    emails = sorted({email.strip().lower() for email in emails})
    if emails:
        from django.contrib.auth import get_user_model

        users = get_user_model().objects.filter(_email_in(emails, "email"))
        known = {email.lower() for email in users.values_list("email", flat=True)}
        unknown = [email for email in emails if email not in known]
        if unknown:
            raise SandboxError("unknown_user", f"No user with email {', '.join(unknown)}.")
        queryset = queryset.filter(_email_in(emails, "user__email"))
    if idle_for is not None:
        queryset = queryset.filter(idle_since__lt=now - idle_for)
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
) -> StopReport:
    report = StopReport()
    if not ids:
        return report
    workers = max(1, concurrency or settings.SANDBOX_STOP_CONCURRENCY)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox-stop") as pool:
        for chunk in _chunks(ids, max(STOP_CHUNK, workers)):
            _stop_chunk(
                chunk, pool=pool, report=report, actor_type=actor_type, actor=actor, reason=reason,
                now=now, idle_before=idle_before, skip_locked=skip_locked,
            )
    return report


def _stop_chunk(
    ids: list[int], *, pool, report: StopReport, actor_type, actor, reason, now, idle_before, skip_locked
) -> None:
    with transaction.atomic():
        queryset = Sandbox.objects.select_related("user").filter(pk__in=ids).order_by("pk")
        rows = list(_locked(queryset, skip_locked=skip_locked))
        report.busy += len(ids) - len(rows)
        targets = []
        for row in rows:
            if not will_stop(row):
                report.already_stopped.append(row)
            elif idle_before is not None and idle_since(row) >= idle_before:
                report.still_active.append(row)
            else:
                targets.append(row)
        # Whether a link still works is the provider's wall-clock fact, whatever ``now`` says.
        wall_clock = timezone.now()
        outcomes = pool.map(
            lambda row: _stop_remote(row.provider, row.remote_id, _links_to_expire(row, wall_clock)), targets
        )
        events, changes = [], []
        for row, outcome in zip(targets, outcomes):
            before = row.state
            changes.append((row, _snapshot(row)))
            if outcome.error:
                row.last_error, row.last_error_code = outcome.error, outcome.error_code
                report.failed.append((row, outcome.error))
                continue
            _apply_remote(row, outcome.remote, now)  # None: gone
            row.forget_access()
            _clear_failure(row)
            if outcome.gone:
                report.already_stopped.append(row)
                events.append(
                    audit_event(row, AuditEvent.Action.STATE_SYNCED, actor_type=actor_type, actor=actor,
                                reason="gone when stopped", **{"from": before, "to": row.state})
                )
                continue
            report.stopped.append(row)
            detail = {"from": before, "to": row.state, "idle_seconds": int((now - idle_since(row)).total_seconds())}
            if outcome.links_kept:
                detail["links_expired"] = False
            events.append(
                audit_event(row, AuditEvent.Action.STOP, actor_type=actor_type, actor=actor, reason=reason, **detail)
            )
        _save_changes(changes)
        AuditEvent.objects.bulk_create(events, batch_size=WRITE_BATCH)


# --- start, delete, refresh (one sandbox, for operators) -----------------------------------------


def sandbox_start(
    *, sandbox: Sandbox, actor_type: str, actor=None, reason: str = "", now: datetime | None = None
) -> Sandbox:
    """Start (resume) a stopped or archived sandbox without minting access; the owner's next
    launch mints it. Raises ``SandboxError("no_remote")`` when there is nothing to start (the
    owner's next launch creates a sandbox) and ``ProviderError`` on provider failures."""
    failure: Exception | None = None
    with transaction.atomic():
        row = Sandbox.objects.select_for_update().get(pk=sandbox.pk)
        now = now or timezone.now()
        if not row.remote_id:
            raise SandboxError("no_remote", "There is no remote sandbox to start; the owner's next launch creates one.")
        before = row.state
        try:
            remote = provider_for(row).start(row.remote_id, wait_seconds=settings.SANDBOX_LAUNCH_WAIT_SECONDS)
        except ProviderError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                _apply_remote(row, None, now)
                audit(row, AuditEvent.Action.STATE_SYNCED, actor_type=actor_type, actor=actor,
                      reason="gone when started")
            else:
                _record_failure(row, exc)
            failure = exc
        else:
            _apply_remote(row, remote, now)
            _clear_failure(row)
            audit(row, AuditEvent.Action.START, actor_type=actor_type, actor=actor, reason=reason,
                  **{"from": before, "to": row.state})
        row.save()
    sandbox.refresh_from_db()
    if failure is not None:
        raise failure
    return row


def sandbox_delete(
    *, sandbox: Sandbox, actor_type: str, actor=None, reason: str, now: datetime | None = None
) -> Sandbox:
    """Destroy the remote sandbox and its files; the row stays (state ``gone``) and the
    owner's next launch creates a new sandbox. Idempotent."""
    try:
        with _locked_for_action(sandbox) as row:
            remote_id, before = row.remote_id, row.state
            if remote_id:
                provider_for(row).delete(remote_id)
            _apply_remote(row, None, now or timezone.now())
            _clear_failure(row)
            audit(row, AuditEvent.Action.DELETE, actor_type=actor_type, actor=actor, reason=reason,
                  remote_id=remote_id, **{"from": before})
    finally:
        sandbox.refresh_from_db()
    return row


def sandbox_refresh(*, sandbox: Sandbox, actor_type: str, actor=None, now: datetime | None = None) -> Sandbox:
    """Read the remote sandbox (authoritatively) and mirror it into the row. A row without a
    remote id is looked up by name and adopted after the owner check."""
    try:
        with _locked_for_action(sandbox, related=("user",)) as row:
            now = now or timezone.now()
            provider = provider_for(row)
            before = row.state
            if row.remote_id:
                remote = provider.get(row.remote_id)
            else:
                remote = _find_own(row, provider, row.user)
            if remote is not None and remote.state is RemoteState.DESTROYING:
                remote = None
            if remote is not None or row.remote_id or row.state != SandboxState.PENDING:
                _apply_remote(row, remote, now)
            _fold_remote_activity(row, remote, now)
            audit(row, AuditEvent.Action.STATE_SYNCED, actor_type=actor_type, actor=actor,
                  reason="refreshed from the provider", **{"from": before, "to": row.state})
    finally:
        sandbox.refresh_from_db()
    return row


# --- reconcile --------------------------------------------------------------------------------


@dataclass
class Orphan:
    """A managed remote sandbox no row owns, reported rather than adopted."""

    remote_id: str
    name: str
    owner: str  # the owner label as found
    why: str
    deleted: bool = False


@dataclass
class ReconcileReport:
    dry_run: bool = False
    lock_held: bool = False
    listed: int = 0  # remote sandboxes listed
    rows: int = 0  # rows compared
    updated: int = 0  # rows whose state changed to the remote one (gone included)
    gone: int = 0  # rows whose remote sandbox no longer exists
    repaired: int = 0  # rows stuck mid-transition, now settled
    stuck: int = 0  # rows whose remote sandbox is itself still mid-transition after the limit
    adopted: int = 0
    orphans: list[Orphan] = field(default_factory=list)
    lookups: int = 0  # single-sandbox reads where the listing was ambiguous
    deferred: int = 0  # ambiguous cases left for the next pass (lookup budget spent)
    busy: int = 0  # rows changed or locked meanwhile; left for the next pass
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"listed {self.listed}, rows {self.rows}, updated {self.updated} (gone {self.gone}, "
            f"repaired {self.repaired}), adopted {self.adopted}, orphans {len(self.orphans)}, "
            f"stuck {self.stuck}, lookups {self.lookups}, deferred {self.deferred}, busy {self.busy}, "
            f"errors {len(self.errors)}"
        )


@dataclass
class _Plan:
    """A change to one row, decided from what the provider said."""

    row: Sandbox
    remote: RemoteSandbox | None  # None: gone
    stuck: bool
    seen: tuple  # (state, remote_id, state_changed_at) when decided; written only if unchanged
    adopt: bool = False


def sandboxes_reconcile(
    *,
    now: datetime,
    dry_run: bool = False,
    delete_orphans: bool = False,
    stuck_after: timedelta | None = None,
    concurrency: int | None = None,
) -> ReconcileReport:
    """Make the rows true to what runs, provider by provider.

    One paged, label-filtered listing per provider; a single lookup (authoritative) only
    where the listing is ambiguous: a row's sandbox missing from it, a state that differs from
    a change the portal made moments ago, a row stuck mid-transition whose sandbox is listed
    mid-transition too, and every orphan before it is adopted or deleted. Lookups are capped at
    1% of the rows (at least ``MIN_LOOKUPS``); the rest wait for the next pass.

    Never calls anything that counts as activity on the provider (no toolbox, no
    ``refresh_activity``) and never writes activity of its own: only the provider's
    last-activity time of running sandboxes is folded in. Rows are written in bulk, each only
    if a launch or stop did not change it meanwhile. ``dry_run`` reads and reports, writes
    nothing. Orphans are adopted when their owner label names an existing user without a
    sandbox; others are reported, and deleted only with ``delete_orphans``.
    """
    report = ReconcileReport(dry_run=dry_run)
    stuck_before = now - (stuck_after or timedelta(minutes=settings.SANDBOX_STUCK_MINUTES))
    with exclusive_lock("sandboxes-reconcile") if not dry_run else nullcontext(True) as acquired:
        if not acquired:
            log.info("reconcile skipped: another run holds the lock")
            report.lock_held = True
            return report
        names = set(Sandbox.objects.values_list("provider", flat=True).distinct()) | {settings.SANDBOX_PROVIDER}
        workers = max(1, concurrency or settings.SANDBOX_STOP_CONCURRENCY)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox-reconcile") as pool:
            for name in sorted(names):
                _reconcile_provider(
                    name, now=now, dry_run=dry_run, delete_orphans=delete_orphans,
                    stuck_before=stuck_before, report=report, pool=pool,
                )
    log.info("reconcile%s: %s", " (dry run)" if dry_run else "", report.summary())
    return report


def _remote_state_of(remote: RemoteSandbox | None) -> SandboxState:
    if remote is None or remote.state is RemoteState.DESTROYING:
        return SandboxState.GONE
    return SandboxState.from_remote(remote.state)


def _drifted(row: Sandbox, remote: RemoteSandbox) -> bool:
    return (
        row.state != _remote_state_of(remote)
        or row.backend_state != remote.backend_state[:32]
        or (remote.state is RemoteState.ERROR and bool(remote.error_reason) and row.last_error != remote.error_reason)
    )


def _has_newer_activity(row: Sandbox, remote: RemoteSandbox, now: datetime) -> bool:
    if remote.state is not RemoteState.STARTED or remote.last_activity_at is None:
        return False
    moment = _remote_activity(remote, now)
    step = timedelta(seconds=settings.SANDBOX_ACTIVITY_WRITE_SECONDS)
    return row.last_activity_at is None or moment - row.last_activity_at >= step


def _seen(row: Sandbox) -> tuple:
    return (row.state, row.remote_id, row.state_changed_at)


def _is_stuck(row: Sandbox, stuck_before: datetime) -> bool:
    return row.is_transitioning and row.state_changed_at is not None and row.state_changed_at < stuck_before


def _reconcile_provider(name, *, now, dry_run, delete_orphans, stuck_before, report: ReconcileReport, pool) -> None:
    try:
        provider = get_provider(name)
        listed = {remote.id: remote for remote in provider.list_managed(managed_labels())}
    except (ProviderError, ImportError, NotImplementedError) as exc:
        # Without a complete listing nothing may be concluded, least of all "gone".
        report.errors.append(f"{name}: listing failed: {exc}")
        return
    report.listed += len(listed)
    rows = list(Sandbox.objects.filter(provider=name).defer("access_ciphertext", "labels").order_by("pk"))
    report.rows += len(rows)
    owned_ids = {row.remote_id for row in rows if row.remote_id}
    recent = now - LIST_LAG_GRACE

    plans: list[_Plan] = []
    ambiguous: list[tuple[int, str, object]] = []  # (priority, kind, row or remote)
    for row in rows:
        stuck = _is_stuck(row, stuck_before)
        if not row.remote_id:
            if stuck:
                ambiguous.append((0, "row_by_name", row))
            continue
        remote = listed.get(row.remote_id)
        if remote is None:
            ambiguous.append((0, "row", row))
        elif stuck and remote.state.is_transition:
            ambiguous.append((1, "row", row))
        elif _drifted(row, remote) and row.state_changed_at is not None and row.state_changed_at >= recent:
            ambiguous.append((3, "row", row))
        elif _drifted(row, remote) or _has_newer_activity(row, remote, now):
            plans.append(_Plan(row=row, remote=remote, stuck=stuck, seen=_seen(row)))
    for remote in listed.values():
        if remote.id not in owned_ids and remote.state is not RemoteState.DESTROYING:
            ambiguous.append((2, "orphan", remote))

    ambiguous.sort(key=lambda item: item[0])
    budget = max(MIN_LOOKUPS, len(rows) // 100)
    report.deferred += max(0, len(ambiguous) - budget)
    ambiguous = ambiguous[:budget]
    results = list(pool.map(lambda item: _look_up(provider, item[1], item[2]), ambiguous))
    report.lookups += len(ambiguous)

    orphans: list[RemoteSandbox] = []
    for (_, kind, target), (remote, error) in zip(ambiguous, results):
        if error:
            report.errors.append(f"{name}: lookup failed: {error}")
            continue
        if kind == "orphan":
            if remote is not None and remote.state is not RemoteState.DESTROYING:
                orphans.append(remote)
            continue
        row = target
        stuck = _is_stuck(row, stuck_before)
        if kind == "row_by_name" and remote is not None:
            orphans.append(remote)  # a sandbox under the row's name: adopted below if the owner matches
            continue
        if remote is not None and stuck and remote.state.is_transition:
            report.stuck += 1
        if remote is None or _drifted(row, remote) or _has_newer_activity(row, remote, now):
            plans.append(_Plan(row=row, remote=remote, stuck=stuck, seen=_seen(row)))

    plans.extend(
        _orphan_plans(
            orphans, provider=provider, provider_name=name, report=report, dry_run=dry_run,
            delete_orphans=delete_orphans,
        )
    )
    if dry_run:
        for plan in plans:
            _count(report, plan, plan.row.state, _remote_state_of(plan.remote))
        return
    _write_plans(plans, now=now, report=report)


def _look_up(provider: SandboxProvider, kind: str, target) -> tuple[RemoteSandbox | None, str]:
    """One authoritative read, on a pool thread (no database)."""
    try:
        if kind == "row":
            return provider.get(target.remote_id), ""
        if kind == "row_by_name":
            return provider.find(target.remote_name), ""
        return provider.get(target.id), ""
    except ProviderError as exc:
        return None, str(exc)
    except Exception:
        log.exception("reconcile lookup failed unexpectedly")
        return None, "unexpected error; see the logs"


def _orphan_plans(
    orphans: list[RemoteSandbox], *, provider, provider_name, report, dry_run, delete_orphans
) -> list[_Plan]:
    """Adopt confirmed orphans whose owner label names a user without a sandbox; report (and
    with ``delete_orphans`` delete) the others."""
    from django.contrib.auth import get_user_model

    if not orphans:
        return []
    owner_keys = {remote.labels.get(LABEL_OWNER, "") for remote in orphans}
    users = {
        str(user.pk): user
        for user in get_user_model().objects.filter(pk__in=[key for key in owner_keys if key.isdigit()])
    }
    rows = {str(row.user_id): row for row in Sandbox.objects.filter(user_id__in=[int(pk) for pk in users])}
    names_taken = set(
        Sandbox.objects.filter(remote_name__in=[r.name for r in orphans]).values_list("remote_name", "user_id")
    )
    plans, adopting = [], set()
    for remote in orphans:
        key = remote.labels.get(LABEL_OWNER, "")
        user, row = users.get(key), rows.get(key)
        why = ""
        if user is None:
            why = "its owner label names no user"
        elif not is_owned_by(remote, user):
            why = "its labels do not match this deployment"
        elif row is not None and row.remote_id:
            why = f"the owner already has sandbox {row.remote_id}"
        elif key in adopting:
            why = "the owner has another orphan adopted in this pass"
        elif any(name == remote.name and owner != user.pk for name, owner in names_taken):
            why = "its name is another user's sandbox name"
        if not why:
            adopting.add(key)
            if row is None:
                row = _new_row_for(user, provider_name, remote)
            plans.append(_Plan(row=row, remote=remote, stuck=False, seen=_seen(row), adopt=True))
            continue
        orphan = Orphan(remote_id=remote.id, name=remote.name, owner=key, why=why)
        report.orphans.append(orphan)
        log.warning("orphan sandbox %s (%s): %s", remote.id, remote.name, why)
        if delete_orphans and not dry_run:
            try:
                provider.delete(remote.id)
            except ProviderError as exc:
                report.errors.append(f"{provider_name}: deleting orphan {remote.id} failed: {exc}")
                continue
            orphan.deleted = True
            audit_event(None, AuditEvent.Action.DELETE, actor_type=Actor.SYSTEM, name=remote.name,
                        reason=f"orphan deleted by reconcile: {why}", remote_id=remote.id).save()
    return plans


def _new_row_for(user, provider_name: str, remote: RemoteSandbox) -> Sandbox:
    """An unsaved row for an adopted orphan of a user who never had one."""
    return Sandbox(
        user=user,
        provider=provider_name,
        remote_name=remote.name,
        cpu=remote.cpu or settings.SANDBOX_CPU,
        memory_gb=remote.memory_gb or settings.SANDBOX_MEMORY_GB,
        disk_gb=remote.disk_gb or settings.SANDBOX_DISK_GB,
        labels=dict(remote.labels),
    )


def _count(report: ReconcileReport, plan: _Plan, before: str, after: SandboxState) -> None:
    if plan.adopt:
        report.adopted += 1
        return
    if after == before:
        return
    report.updated += 1
    if after == SandboxState.GONE:
        report.gone += 1
    if plan.stuck and after not in SandboxState.transitional():
        report.repaired += 1


def _write_plans(plans: list[_Plan], *, now: datetime, report: ReconcileReport) -> None:
    for plan in [plan for plan in plans if plan.adopt]:
        _adopt(plan, now=now, report=report)
    updates = {plan.row.pk: plan for plan in plans if not plan.adopt}
    for batch in _chunks(sorted(updates), WRITE_BATCH):
        with transaction.atomic():
            fresh = {row.pk: row for row in _locked(Sandbox.objects.filter(pk__in=batch), skip_locked=True)}
            changes, events = [], []
            for pk in batch:
                plan, row = updates[pk], fresh.get(pk)
                if row is None or _seen(row) != plan.seen:
                    report.busy += 1
                    continue
                before = row.state
                changes.append((row, _snapshot(row)))
                remote = plan.remote if _remote_state_of(plan.remote) != SandboxState.GONE else None
                _apply_remote(row, remote, now)  # None: gone, and the row lets go of the remote id
                _fold_remote_activity(row, remote, now)
                _count(report, plan, before, row.state)
                if row.state != before:
                    events.append(
                        audit_event(row, AuditEvent.Action.STATE_SYNCED, actor_type=Actor.SYSTEM,
                                    reason="reconcile", **{"from": before, "to": row.state, "stuck": plan.stuck})
                    )
            _save_changes(changes)
            AuditEvent.objects.bulk_create(events, batch_size=WRITE_BATCH)


def _adopt(plan: _Plan, *, now: datetime, report: ReconcileReport) -> None:
    remote = plan.remote
    try:
        with transaction.atomic():
            if plan.row.pk is None:
                row = plan.row
            else:
                row = _locked(Sandbox.objects.filter(pk=plan.row.pk), skip_locked=True).first()
                if row is None or _seen(row) != plan.seen:
                    report.busy += 1
                    return
            row.remote_id = remote.id
            row.remote_name = remote.name
            _apply_remote(row, remote, now)
            row.save()
            audit(row, AuditEvent.Action.ADOPT, actor_type=Actor.SYSTEM, reason="orphan adopted by reconcile",
                  remote_id=remote.id)
    except IntegrityError:  # the owner launched meanwhile and has a row now
        report.busy += 1
        return
    report.adopted += 1
