"""Every state change of a sandbox, written once.

The API, the portal pages, the admin, Celery tasks and management commands all call these
functions; none of them talks to a provider directly.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
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
    AuditEvent.objects.create(
        sandbox=sandbox,
        sandbox_name=sandbox.remote_name,
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
    failure: Exception | None = None
    with transaction.atomic():
        sandbox = Sandbox.objects.select_for_update().get(pk=row.pk)
        now = now or timezone.now()
        try:
            launch = _launch_locked(sandbox, provider_for(sandbox), user, now)
        except (ProviderError, SandboxError) as exc:
            _record_failure(sandbox, exc)
            sandbox.save()
            failure = exc
    if failure is not None:
        log.warning("launch of %s failed: %s", sandbox.remote_name, failure)
        raise failure
    return launch


def _launch_locked(sandbox: Sandbox, provider: SandboxProvider, user, now: datetime) -> Launch:
    deadline = time.monotonic() + settings.SANDBOX_LAUNCH_WAIT_SECONDS
    remote, acted = _ensure_started(sandbox, provider, user, deadline)
    _apply_remote(sandbox, remote, now)
    if remote.state is not RemoteState.STARTED:
        sandbox.save()
        return Launch(sandbox=sandbox, access=None)
    access = _access_for(sandbox, provider, user, fresh=acted, now=now)
    sandbox.last_activity_at = now
    _clear_failure(sandbox)
    sandbox.save()
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
        stored = secrets.unseal(sandbox.access_ciphertext)
        if stored is not None:
            return stored
    access = provider.mint_access(
        sandbox.remote_id,
        ssh_minutes=settings.SANDBOX_SSH_TOKEN_MINUTES,
        preview_port=settings.SANDBOX_PREVIEW_PORT,
        link_seconds=settings.SANDBOX_SSH_TOKEN_MINUTES * 60,
    )
    payload = access_payload(access, preview_port=settings.SANDBOX_PREVIEW_PORT)
    sandbox.access_ciphertext = secrets.seal(payload)
    sandbox.access_expires_at = min(access.ssh.expires_at, access.preview.expires_at, access.terminal.expires_at)
    audit(
        sandbox, AuditEvent.Action.ACCESS_MINTED, actor_type=Actor.USER, actor=user,
        expires_at=sandbox.access_expires_at.isoformat(),
    )
    return payload


def access_payload(access: SandboxAccess, *, preview_port: int) -> dict:
    return {
        "ssh": {
            "command": access.ssh.command,
            "token": access.ssh.token,
            "host": access.ssh.host,
            "port": access.ssh.port,
            "expiresAt": access.ssh.expires_at.isoformat(),
        },
        "preview": {"url": access.preview.url, "port": preview_port, "expiresAt": access.preview.expires_at.isoformat()},
        "terminal": {"url": access.terminal.url, "expiresAt": access.terminal.expires_at.isoformat()},
    }


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
    cache.add(key, 0, timeout=period + 1)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=period + 1)
        count = 1
    if count > limit:
        retry_after = period - (time.time() % period)
        raise SandboxError(
            "rate_limited", "Too many launches in a short time. Please wait a moment.", retry_after=retry_after
        )
