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


def default_template_pk() -> int:
    """The template a sandbox is made from when nobody chose one: the default."""
    from environments.models import Template

    return Template.objects.default().pk


class Sandbox(models.Model):
    """One of a user's sandboxes (one per template, up to ``SANDBOX_MAX_PER_USER``), as the
    portal last saw it."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="sandboxes")
    template = models.ForeignKey(
        "environments.Template",
        on_delete=models.PROTECT,
        related_name="+",
        default=default_template_pk,
        help_text="What it was made from.",
    )
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

    # The owner's choices: their idle period (None: SANDBOX_IDLE_MINUTES), whether to be emailed
    # before an idle stop. Kept across resets (the row outlives its remote sandboxes).
    idle_minutes = models.PositiveIntegerField(
        null=True, blank=True, help_text="The owner's idle period in minutes; empty: the deployment's default."
    )
    template_idle_minutes = models.PositiveIntegerField(
        null=True, blank=True, help_text="Its template's idle period when it was made; empty: none of its own."
    )
    warn_by_email = models.BooleanField(default=False, help_text="Email the owner before an idle stop.")
    keep_awake_until = models.DateTimeField(
        null=True, blank=True, help_text="The owner extended the idle stop: not stopped as idle before this."
    )
    stop_warning_sent_for = models.DateTimeField(
        null=True, blank=True, help_text="The idle stop time the owner was last emailed about."
    )

    # Access handed out at the last launch, encrypted (sandboxes.secrets); reused while valid.
    access_ciphertext = models.BinaryField(null=True, blank=True, editable=False)
    access_expires_at = models.DateTimeField(null=True, blank=True)

    objects = SandboxQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["state", "last_activity_at"])]
        constraints = [models.UniqueConstraint(fields=["user", "template"], name="one_sandbox_per_template")]

    def __str__(self) -> str:
        return self.remote_name

    def save(self, *args, **kwargs):
        super().save(*args, **kwargs)
        changes = self.unrecorded_changes()
        if changes:
            StateChange.objects.bulk_create(changes)

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

    @property
    def idle_period(self) -> timedelta:
        """How long the sandbox may go without use: the owner's choice, else its template's (never
        below ``SANDBOX_IDLE_MIN_MINUTES``), else the deployment's."""
        if self.idle_minutes:
            return timedelta(minutes=self.idle_minutes)
        if self.template_idle_minutes:
            return timedelta(minutes=max(self.template_idle_minutes, settings.SANDBOX_IDLE_MIN_MINUTES))
        return timedelta(minutes=settings.SANDBOX_IDLE_MINUTES)

    @property
    def idle_deadline(self) -> datetime:
        """When the idle policy may stop it: the idle clock plus the idle period, or the end of an
        extension when that is later."""
        deadline = self.idle_since + self.idle_period
        if self.keep_awake_until is not None and self.keep_awake_until > deadline:
            return self.keep_awake_until
        return deadline

    def has_reusable_access(self, now: datetime, margin: timedelta) -> bool:
        return (
            bool(self.access_ciphertext)
            and self.access_expires_at is not None
            and (self.access_expires_at - now >= margin)
        )

    def set_state(self, state: SandboxState, now: datetime, *, since: datetime | None = None) -> None:
        """Move to ``state``, seen at ``now``. ``since``, where the provider says when the change
        really happened, backdates it (never before the previous change, never after ``now``).
        The change is kept for metering (:class:`StateChange`) when the row is saved."""
        if state != self.state:
            at = now
            if since is not None:
                at = min(max(since, self.state_changed_at or since), now)
            self.state = state
            self.state_changed_at = at
            if state == SandboxState.STARTED:
                self.last_started_at = at
            elif state in (SandboxState.STOPPED, SandboxState.ARCHIVED):
                self.last_stopped_at = at
            # The log keeps whole seconds, so metering adds them up exactly (usage.metering).
            source = StateChange.Source.PROVIDER if at != now else StateChange.Source.PORTAL
            self.__dict__.setdefault("_unrecorded_changes", []).append((state, at.replace(microsecond=0), source))

    def unrecorded_changes(self) -> list[StateChange]:
        """The state changes since the row was last saved, as unsaved log entries; taken once."""
        pending = self.__dict__.pop("_unrecorded_changes", [])
        return [
            StateChange(
                sandbox=self,
                user_id=self.user_id,
                sandbox_name=self.remote_name,
                provider=self.provider,
                state=state,
                cpu=self.cpu,
                memory_gb=self.memory_gb,
                disk_gb=self.disk_gb,
                at=at,
                source=source,
            )
            for state, at, source in pending
        ]

    def forget_access(self) -> None:
        self.access_ciphertext = None
        self.access_expires_at = None


class StateChange(models.Model):
    """The portal's record of a sandbox's states, one entry per change, at the moment it
    happened: as the provider says where it says (a stop behind the portal's back, found by
    reconcile or a webhook), else as the portal saw it. Written by ``Sandbox.save`` and
    ``services.rows.save_changes``, never edited; metering integrates it (``usage.metering``).
    Kept when the sandbox row goes, with its owner and name, so past usage stays billable."""

    class Source(models.TextChoices):
        PORTAL = "portal", "When the portal saw it"
        PROVIDER = "provider", "When the provider says it happened"

    sandbox = models.ForeignKey(Sandbox, on_delete=models.SET_NULL, null=True, related_name="state_changes")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    sandbox_name = models.CharField(max_length=128)
    provider = models.CharField(max_length=32)
    state = models.CharField(max_length=16, choices=SandboxState.choices)
    cpu = models.PositiveSmallIntegerField()
    memory_gb = models.PositiveSmallIntegerField()
    disk_gb = models.PositiveSmallIntegerField()
    at = models.DateTimeField()
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.PORTAL)
    recorded_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["at", "pk"]
        indexes = [models.Index(fields=["sandbox_name", "at"]), models.Index(fields=["user", "at"])]

    def __str__(self) -> str:
        return f"{self.sandbox_name} {self.state} at {self.at:%Y-%m-%d %H:%M:%S}"


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
        ACCESS_REVOKED = "access_revoked"
        STATE_SYNCED = "state_synced"
        EXTEND = "extend"
        RESET = "reset"
        SETTINGS = "settings"
        WARNED = "warned"

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


class ActivityMark(models.Model):
    """That a person used the sandbox, and how: written at most once per source every
    ``SANDBOX_ACTIVITY_MARK_MINUTES``, so the timeline can say what kept it awake."""

    sandbox = models.ForeignKey(Sandbox, on_delete=models.CASCADE, related_name="activity_marks")
    source = models.CharField(max_length=16, choices=ActivitySource.choices)
    at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["sandbox", "-at"])]
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.source} at {self.at:%Y-%m-%d %H:%M}"


class AccessGrant(models.Model):
    """One entry of a sandbox's access ledger: a credential handed out (an SSH token, a signed
    link) or a live session opened with one (a terminal, an SSH connection, a preview), with when
    it was made, when it expires, when and from where it was last used, and whether it ended or
    was revoked. Never holds a secret: ``fingerprint`` is a SHA-256 of the token or session id."""

    class Kind(models.TextChoices):
        SSH_TOKEN = "ssh_token", "SSH token"
        TERMINAL_LINK = "terminal_link", "Signed terminal link"
        PREVIEW_LINK = "preview_link", "Signed preview link"
        PREVIEW_SESSION = "preview_session", "Preview session"
        TERMINAL_SESSION = "terminal_session", "Terminal session"
        SSH_SESSION = "ssh_session", "SSH session"

    sandbox = models.ForeignKey(Sandbox, on_delete=models.CASCADE, related_name="access_grants")
    kind = models.CharField(max_length=24, choices=Kind.choices)
    public_id = models.CharField(max_length=32, unique=True, help_text="What the ledger's API names it by.")
    fingerprint = models.CharField(max_length=64, db_index=True, help_text="SHA-256 of the secret it stands for.")
    parent = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="sessions",
        help_text="The credential this live session was opened with.",
    )
    label = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_from = models.GenericIPAddressField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True, help_text="Closed, replaced or expired early.")
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["sandbox", "ended_at", "revoked_at"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.public_id}"

    @property
    def is_live(self) -> bool:
        return self.ended_at is None and self.revoked_at is None


class WebhookDelivery(models.Model):
    """A provider's webhook event taken in, by its id: a replay of the same id changes nothing."""

    event_id = models.CharField(max_length=128, unique=True)
    event_type = models.CharField(max_length=64)
    remote_id = models.CharField(max_length=128, blank=True)
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"
