from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models.functions import Coalesce, Greatest


class SandboxState(models.TextChoices):
    """The portal's own states. Provider states map onto them in one place only
    (``sandboxes.services.rows.portal_state``)."""

    PENDING = "pending", "Not created yet"
    CREATING = "creating", "Creating"
    STARTING = "starting", "Starting"
    STARTED = "started", "Running"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"
    ARCHIVED = "archived", "Archived"
    ERROR = "error", "Error"
    GONE = "gone", "Gone (recreated on next launch)"
    UNKNOWN = "unknown", "Unknown"

    @classmethod
    def transitional(cls) -> set[SandboxState]:
        return {cls.CREATING, cls.STARTING, cls.STOPPING}


class SandboxQuerySet(models.QuerySet):
    def with_idle_since(self) -> SandboxQuerySet:
        """Annotated with ``idle_start``: :attr:`Sandbox.idle_since`, computed by the database."""
        activity = Coalesce("last_activity_at", "last_started_at", "created_at")
        started = Coalesce("last_started_at", "last_activity_at", "created_at")
        return self.annotate(idle_start=Greatest(activity, started))


class Sandbox(models.Model):
    """A user's one sandbox, as the portal last saw it."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="sandbox")
    provider = models.CharField(max_length=32, help_text="The backend that holds this sandbox.")
    remote_name = models.CharField(max_length=128, unique=True)
    remote_id = models.CharField(max_length=128, blank=True, db_index=True)
    state = models.CharField(max_length=16, choices=SandboxState.choices, default=SandboxState.PENDING)
    backend_state = models.CharField(max_length=32, blank=True, help_text="The provider's own word for the state.")
    cpu = models.PositiveSmallIntegerField()
    memory_gb = models.PositiveSmallIntegerField()
    disk_gb = models.PositiveSmallIntegerField()
    labels = models.JSONField(default=dict, help_text="Labels as sent to the provider.")

    created_at = models.DateTimeField(auto_now_add=True)
    state_changed_at = models.DateTimeField(null=True, blank=True)
    last_started_at = models.DateTimeField(null=True, blank=True)
    last_stopped_at = models.DateTimeField(null=True, blank=True)
    last_activity_at = models.DateTimeField(null=True, blank=True)
    last_activity_source = models.CharField(
        max_length=16, blank=True, help_text="What the last activity was: terminal input, SSH, the page..."
    )
    remote_touched_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the portal itself last moved the provider's activity timer (a refresh, a start): "
        "the provider's last activity up to then is the portal's own doing, not a user's.",
    )
    build_retried_for = models.CharField(
        max_length=255,
        blank=True,
        help_text="The image whose failed build was already retried once by itself; cleared once a sandbox runs.",
    )
    last_synced_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_code = models.CharField(max_length=32, blank=True)

    # Access handed out at the last launch, encrypted (sandboxes.secrets); reused while valid.
    access_ciphertext = models.BinaryField(null=True, blank=True, editable=False)
    access_expires_at = models.DateTimeField(null=True, blank=True)

    objects = SandboxQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["state", "last_activity_at"])]

    def __str__(self) -> str:
        return self.remote_name

    @property
    def is_running(self) -> bool:
        return self.state == SandboxState.STARTED

    @property
    def is_transitioning(self) -> bool:
        return self.state in SandboxState.transitional()

    @property
    def idle_since(self) -> datetime:
        """When the idle clock started: the later of the last activity and the last start (a
        start counts as use), else the creation. ``with_idle_since()`` is the database's version."""
        moments = [moment for moment in (self.last_activity_at, self.last_started_at) if moment]
        return max(moments) if moments else self.created_at

    def idle_for(self, now: datetime) -> timedelta:
        return now - self.idle_since

    def has_reusable_access(self, now: datetime, margin: timedelta) -> bool:
        return (
            bool(self.access_ciphertext)
            and self.access_expires_at is not None
            and (self.access_expires_at - now >= margin)
        )

    def set_state(self, state: SandboxState, now: datetime) -> None:
        if state != self.state:
            self.state = state
            self.state_changed_at = now
            if state == SandboxState.STARTED:
                self.last_started_at = now
            elif state in (SandboxState.STOPPED, SandboxState.ARCHIVED):
                self.last_stopped_at = now

    def forget_access(self) -> None:
        self.access_ciphertext = None
        self.access_expires_at = None


class ActivitySource(models.TextChoices):
    """What counts as a person using their sandbox (and nothing else does)."""

    LAUNCH = "launch"
    EXTEND = "extend"  # the user asked for more time
    PAGE = "page"  # keystrokes or pointer use on a portal page
    TERMINAL_INPUT = "terminal-input"
    TERMINAL_OUTPUT = "terminal-output"  # a build printing counts
    SSH = "ssh"  # traffic through the portal's SSH gateway
    PREVIEW = "preview"  # requests to the preview the portal serves
    PROVIDER = "provider"  # the provider saw use the portal did not (Daytona's SSH gateway, its previews)


class TerminalSession(models.Model):
    """A PTY session of the web terminal, as the portal opened it in a sandbox.

    The portal mints the session id (a browser names only a session it was given) and keeps at
    most ``SANDBOX_TERMINAL_SESSIONS`` per sandbox. The shell outlives its websockets; a session
    nobody has been attached to for ``SANDBOX_TERMINAL_DETACHED_MINUTES`` is ended. While a
    client is attached, its lease (``attached_until``) is renewed every minute, so a web process
    that dies leaves sessions that count as detached once their lease runs out.
    """

    sandbox = models.ForeignKey(Sandbox, on_delete=models.CASCADE, related_name="terminal_sessions")
    session_id = models.CharField(max_length=64, unique=True)
    remote_id = models.CharField(max_length=128, help_text="The remote sandbox the shell runs in.")
    created_at = models.DateTimeField()
    clients = models.PositiveSmallIntegerField(default=0)
    attached_until = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return self.session_id


class AuditEvent(models.Model):
    """Who did what to which sandbox, and when. Written by services only, never edited."""

    class Action(models.TextChoices):
        LAUNCH = "launch"
        CREATE = "create"
        ADOPT = "adopt"
        START = "start"
        STOP = "stop"
        RECOVER = "recover"
        DELETE = "delete"
        ACCESS_MINTED = "access_minted"
        STATE_SYNCED = "state_synced"

    class ActorType(models.TextChoices):
        USER = "user"
        ADMIN = "admin"
        SYSTEM = "system"

    sandbox = models.ForeignKey(Sandbox, on_delete=models.SET_NULL, null=True, related_name="events")
    sandbox_name = models.CharField(max_length=128, help_text="Kept when the sandbox row is gone.")
    action = models.CharField(max_length=32, choices=Action.choices)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    reason = models.CharField(max_length=255, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.action} {self.sandbox_name}"
