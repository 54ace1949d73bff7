"""The launch: create, resume or reuse the user's sandbox and hand out access to it; and the
launcher's status poll."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from environments.models import Template
from sandboxes.models import ActivitySource, AuditEvent, Sandbox, SandboxState
from sandboxes.providers.base import (
    ErrorKind,
    ProviderError,
    RemoteSandbox,
    RemoteState,
    SandboxAccess,
    SandboxProvider,
    SandboxSpec,
)
from usage.instruments import LAUNCH_DURATION, LAUNCH_FAILURES

from . import capacity, guards
from .access import access_for
from .activity import backstop_minutes, note_remote_touch
from .apps import start_app
from .errors import SandboxError, provider_failures_as_sandbox_errors
from .live import sandbox_changed
from .locks import locked_for_action
from .rows import (
    Actor,
    apply_remote,
    audit,
    clear_failure,
    is_owned_by,
    own_row,
    provider_for,
    record_failure,
    sandbox_get_or_create_row,
    sandbox_labels,
)

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.2
STATUS_SYNC_INTERVAL = timedelta(seconds=1)
# A launch left starting is completed by a later call (the launcher's next POST): its duration
# runs from the first call, kept this long at most.
PENDING_LAUNCH_SECONDS = 1800
KIND_RANK = {"warm": 0, "resume": 1, "create": 2}


@dataclass
class Launch:
    """The outcome of :func:`sandbox_launch`: access is None while the sandbox still starts."""

    sandbox: Sandbox
    access: SandboxAccess | None

    @property
    def ready(self) -> bool:
        return self.access is not None


@provider_failures_as_sandbox_errors
def sandbox_launch(*, user, template=None, now: datetime | None = None) -> Launch:
    """Create, resume or reuse the user's sandbox of ``template`` (default: the default
    template) and return access to it.

    A template is launched from its prebuilt version (``environments``); one whose build is not
    ready is refused (``SandboxError("template_unavailable")``), except the default, which falls
    back to the deployment's image (``SANDBOX_IMAGE``/``SANDBOX_SNAPSHOT``, as before templates)
    until its build is ready. A new template beyond ``SANDBOX_MAX_PER_USER`` is refused with
    ``SandboxLimit``.

    Concurrency: the user's row is locked for the whole flow, so simultaneous launches by one
    user queue behind each other and make exactly one remote sandbox; the later ones find it
    started and reuse the access already minted.

    Returns a ``Launch`` without access when the sandbox is still creating or starting after
    ``SANDBOX_LAUNCH_WAIT_SECONDS``: the backend carries on, and a later call completes the
    launch. Raises ``SandboxError`` for what the portal refuses and for provider failures
    (already retried by the provider where that was safe); either is also recorded on the row
    as its last error.
    """
    began = time.time()
    try:
        _check_launch_rate(user)
        template = template or Template.objects.default()
        existing = Sandbox.objects.filter(user=user, template=template).only("provider").first()
        check_offered(template, provider_name=existing.provider if existing else settings.SANDBOX_PROVIDER)
        row = sandbox_get_or_create_row(user=user, template=template)
        try:
            with locked_for_action(row) as sandbox:
                locked_at = timezone.now()
                launch = _launch_locked(sandbox, provider_for(sandbox), user, now or timezone.now())
                kind = _launch_kind(sandbox, since=locked_at)
        except (ProviderError, SandboxError) as exc:
            log.warning("launch of %s failed: %s", row.remote_name, exc)
            raise
        finally:
            capacity.release(row)  # the committed row now holds its slots, or does not
    except (ProviderError, SandboxError) as exc:
        code = exc.code if isinstance(exc, SandboxError) else SandboxError.from_provider(exc).code
        LAUNCH_FAILURES.labels(code=code).inc()
        raise
    _time_launch(launch, kind, began)
    return launch


def check_offered(template, *, provider_name: str) -> None:
    """Refuse a template that may not be launched on that provider now (see :func:`sandbox_launch`)."""
    if template.enabled and (template.is_default or template.built_for(provider_name)):
        return
    build = template.builds.filter(provider=provider_name, version=template.version).first()
    if not template.enabled:
        why = "is not offered"
    elif build is None or build.state in ("queued", "building"):
        why = "is still being prepared; try again in a few minutes"
    else:
        why = "could not be prepared; an operator has been shown why"
    raise SandboxError("template_unavailable", f"The {template.name} template {why}.", status=409, retry_after=60)


def _launch_kind(sandbox: Sandbox, *, since) -> str:
    """What this launch had to do, from the audit events it wrote: ``create`` (a new remote
    sandbox, a replacement included), ``resume`` (a start or a recovery), else ``warm``."""
    actions = set(
        AuditEvent.objects.filter(
            sandbox=sandbox,
            created_at__gte=since,
            action__in=[AuditEvent.Action.CREATE, AuditEvent.Action.START, AuditEvent.Action.RECOVER],
        ).values_list("action", flat=True)
    )
    if AuditEvent.Action.CREATE in actions:
        return "create"
    return "resume" if actions else "warm"


def _time_launch(launch: Launch, kind: str, began: float) -> None:
    """Observe a launch that handed out access, from the first call of the launch it
    completes and as the most its calls had to do; keep a launch still starting for later."""
    key = f"sandbox-launch-pending:{launch.sandbox.pk}"
    pending = cache.get(key)
    if pending:
        began = min(began, pending["began"])
        kind = max(kind, pending["kind"], key=KIND_RANK.__getitem__)
    if not launch.ready:
        cache.set(key, {"began": began, "kind": kind}, timeout=PENDING_LAUNCH_SECONDS)
        return
    if pending:
        cache.delete(key)
    LAUNCH_DURATION.labels(kind=kind).observe(max(0.0, time.time() - began))


def _launch_locked(sandbox: Sandbox, provider: SandboxProvider, user, now: datetime) -> Launch:
    """The launch under the row lock; the caller saves the row."""
    deadline = time.monotonic() + settings.SANDBOX_LAUNCH_WAIT_SECONDS
    remote, acted = _ensure_started(sandbox, provider, user, deadline)
    apply_remote(sandbox, remote, now)
    if acted:
        note_remote_touch(sandbox, now)  # a create or start moves the provider's own activity timer
    if remote.state is not RemoteState.STARTED:
        return Launch(sandbox=sandbox, access=None)
    if acted:
        start_app(sandbox, provider)  # the template's app comes back with every start
    access = access_for(sandbox, provider, user, fresh=acted, now=now)
    sandbox.last_activity_at, sandbox.last_activity_source = now, ActivitySource.LAUNCH
    sandbox.build_retried_for = ""
    clear_failure(sandbox)
    audit(sandbox, AuditEvent.Action.LAUNCH, actor_type=Actor.USER, actor=user)
    return Launch(sandbox=sandbox, access=access)


def _seconds_left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _ensure_started(sandbox: Sandbox, provider: SandboxProvider, user, deadline: float) -> tuple[RemoteSandbox, bool]:
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
        elif state in (RemoteState.CREATING, RemoteState.STARTING, RemoteState.STOPPING, RemoteState.UNKNOWN):
            # UNKNOWN: the provider itself does not know yet (Daytona, between a build and the
            # runner's first report); it settles like a transition.
            remote = _wait_while(provider, remote, {state}, deadline)
            if remote.state is state:
                return remote, acted
        elif state is RemoteState.ERROR:
            remote = _recover_or_replace(sandbox, provider, remote, user, deadline)
            acted = True
        elif state is RemoteState.DESTROYING:
            apply_remote(sandbox, None, timezone.now())
            remote = _create(sandbox, provider, user, deadline)
            acted = True
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
        apply_remote(sandbox, None, timezone.now())
    return find_own(sandbox, provider, user)


def find_own(sandbox: Sandbox, provider: SandboxProvider, user) -> RemoteSandbox | None:
    """The remote sandbox under the row's name, adopted (its id kept on the row) after the
    owner check; None when there is none. Raises ``SandboxError("name_taken")`` when the name
    is held by a sandbox with other owner labels."""
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
    # Its own idle stop may be anything (Daytona's default is 15 minutes): set the backstop.
    provider.set_auto_stop(remote.id, backstop_minutes(sandbox))
    sandbox.remote_id = remote.id
    audit(sandbox, AuditEvent.Action.ADOPT, actor_type=Actor.SYSTEM, remote_id=remote.id)
    return remote


def _spec_for(sandbox: Sandbox, user) -> SandboxSpec:
    """What to create: the template's prebuilt version with its resources where it is built
    for the sandbox's provider, else the deployment's image with the deployment's resources
    (the default template's fallback). The row takes the resources it gets."""
    template = sandbox.template
    sandbox.labels = sandbox_labels(user, template)
    built = _built_version(sandbox)
    if built:
        sandbox.cpu, sandbox.memory_gb, sandbox.disk_gb = template.cpu, template.memory_gb, template.disk_gb
    else:
        sandbox.cpu, sandbox.memory_gb, sandbox.disk_gb = (
            settings.SANDBOX_CPU,
            settings.SANDBOX_MEMORY_GB,
            settings.SANDBOX_DISK_GB,
        )
    return SandboxSpec(
        name=sandbox.remote_name,
        labels=sandbox.labels,
        cpu=sandbox.cpu,
        memory_gb=sandbox.memory_gb,
        disk_gb=sandbox.disk_gb,
        image=settings.SANDBOX_IMAGE,
        snapshot=settings.SANDBOX_SNAPSHOT,
        template=built,
        auto_stop_minutes=backstop_minutes(sandbox),
    )


def _built_version(sandbox: Sandbox) -> str:
    """The prebuilt version of the sandbox's template on its provider (its artifact name), or ""
    while there is none (the default template then uses the deployment's image)."""
    template = sandbox.template
    return template.artifact_name if template.built_for(sandbox.provider) else ""


def _create(sandbox: Sandbox, provider: SandboxProvider, user, deadline: float) -> RemoteSandbox:
    """Create under the row's name. A name conflict or an unknown outcome is resolved by
    looking the name up again (adopting after the owner check), never by creating again.
    Raises ``SandboxError("capacity_reached")`` when the deployment's caps are reached, and
    ``SandboxError("budget_exceeded")`` when the user used up a monthly limit."""
    _check_start_guards(sandbox, user)
    capacity.claim(sandbox, capacity.EXISTING)
    capacity.claim(sandbox, capacity.RUNNING)
    try:
        remote = provider.create(_spec_for(sandbox, user), wait_seconds=_seconds_left(deadline))
    except ProviderError as exc:
        if exc.kind not in (ErrorKind.CONFLICT, ErrorKind.TIMEOUT):
            raise
        remote = find_own(sandbox, provider, user)
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
    _check_start_guards(sandbox, user)  # SandboxError("budget_exceeded") when a monthly limit is used up
    capacity.claim(sandbox, capacity.RUNNING)  # SandboxError("capacity_reached") when all run
    try:
        started = provider.start(remote.id, wait_seconds=_seconds_left(deadline))
    except ProviderError as exc:
        if exc.kind is not ErrorKind.CONFLICT:
            raise
        return provider.get(remote.id) or remote  # someone else is changing it: wait on that
    audit(sandbox, AuditEvent.Action.START, actor_type=Actor.USER, actor=user)
    return started


def _check_start_guards(sandbox: Sandbox, user) -> None:
    """Under the row lock, so simultaneous launches are decided one after the other; a running
    sandbox is reused without these checks (the usage app's budgets, :mod:`.guards`)."""
    guards.check_start(sandbox, user, timezone.now())


def _recover_or_replace(sandbox, provider, remote, user, deadline) -> RemoteSandbox:
    """Recover an errored sandbox where the provider can, else replace it.

    A sandbox whose image failed to build is replaced once per image by itself: the same build
    most likely fails again, so after that the user and the operator are shown the build error
    (``SandboxError("build_failed")``) and nothing is deleted or rebuilt until the image changes
    or an operator deletes the sandbox.
    """
    if remote.recoverable:
        recovered = provider.recover(remote.id, wait_seconds=_seconds_left(deadline))
        audit(sandbox, AuditEvent.Action.RECOVER, actor_type=Actor.USER, actor=user, error=remote.error_reason)
        return recovered
    reason = "unrecoverable error, replaced"
    if remote.build_failed:
        image = _built_version(sandbox) or settings.SANDBOX_SNAPSHOT or settings.SANDBOX_IMAGE
        if sandbox.build_retried_for == image:
            apply_remote(sandbox, remote, timezone.now())
            raise SandboxError(
                "build_failed",
                f"Your sandbox's image could not be built ({_shortened(remote.error_reason) or 'no reason given'}). "
                "Trying again would fail the same way: an operator has to fix the image or delete the sandbox.",
                status=503,
            )
        sandbox.build_retried_for = image
        reason = "image build failed, built once more"
    provider.delete(remote.id)
    audit(
        sandbox,
        AuditEvent.Action.DELETE,
        actor_type=Actor.SYSTEM,
        reason=reason,
        error=remote.error_reason,
    )
    apply_remote(sandbox, None, timezone.now())
    return _create(sandbox, provider, user, deadline)


def _shortened(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _wait_while(provider, remote: RemoteSandbox, states: set[RemoteState], deadline: float) -> RemoteSandbox:
    """Poll until the sandbox leaves ``states`` or the deadline passes."""
    while remote.state in states and _seconds_left(deadline) > 0:
        time.sleep(min(POLL_INTERVAL, _seconds_left(deadline)))
        remote = provider.get(remote.id) or RemoteSandbox(id=remote.id, name=remote.name, state=RemoteState.DESTROYING)
    return remote


# --- status -----------------------------------------------------------------------------------


def sandbox_status(*, user, template_slug: str | None = None, now: datetime | None = None) -> Sandbox | None:
    """The user's sandbox (of that template: :func:`own_row`) as the launcher polls it. While
    it is mid-transition the row is synced from the provider (at most once a second) unless a
    launch holds its lock; a provider failure is recorded on the row, not raised."""
    sandbox = own_row(user, template_slug)
    unsettled = sandbox is not None and (sandbox.is_transitioning or sandbox.state == SandboxState.UNKNOWN)
    if not (unsettled and sandbox.remote_id):
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
            record_failure(locked, exc)
        else:
            apply_remote(locked, remote, now)
        locked.save()
        sandbox_changed(locked)
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
            "rate_limited",
            "Too many launches in a short time. Please wait a moment.",
            status=429,
            retry_after=retry_after,
        )
