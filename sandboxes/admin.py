"""The operators' console: every sandbox at a glance, and actions that call the services.

Rows are written by the services only: nothing here edits a field. Actions need the change
permission and record the acting admin in the audit log, which is itself read-only.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import admin, messages
from django.utils import timezone

from . import services
from .durations import format_duration
from .models import AccessGrant, AuditEvent, Sandbox, TerminalSession

Actor = AuditEvent.ActorType


class IdleFilter(admin.SimpleListFilter):
    title = "idle"
    parameter_name = "idle"

    def lookups(self, request, model_admin):
        return [
            ("over_limit", f"Idle over {settings.SANDBOX_IDLE_MINUTES} min (the limit)"),
            ("over_hour", "Idle over 1 hour"),
            ("active", "Active within the last hour"),
        ]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "over_limit":
            return queryset.filter(idle_start__lt=now - timedelta(minutes=settings.SANDBOX_IDLE_MINUTES))
        if self.value() == "over_hour":
            return queryset.filter(idle_start__lt=now - timedelta(hours=1))
        if self.value() == "active":
            return queryset.filter(idle_start__gte=now - timedelta(hours=1))
        return queryset


@admin.register(Sandbox)
class SandboxAdmin(admin.ModelAdmin):
    list_display = [
        "owner",
        "template",
        "state",
        "provider",
        "remote_name",
        "remote_id",
        "resources",
        "created_at",
        "last_activity_at",
        "last_activity_source",
        "idle_for",
        "short_error",
    ]
    list_filter = ["state", "provider", "template", IdleFilter]
    search_fields = ["user__email", "remote_name"]
    list_select_related = ["user", "template"]
    ordering = ["-created_at"]
    actions = ["stop_sandboxes", "start_sandboxes", "delete_sandboxes", "refresh_sandboxes"]
    fields = [
        "user",
        "template",
        "provider",
        "state",
        "backend_state",
        "remote_name",
        "remote_id",
        "cpu",
        "memory_gb",
        "disk_gb",
        "labels",
        "created_at",
        "state_changed_at",
        "last_started_at",
        "last_stopped_at",
        "last_activity_at",
        "last_activity_source",
        "remote_touched_at",
        "last_synced_at",
        "last_error_code",
        "last_error",
        "build_retried_for",
        "idle_minutes",
        "keep_awake_until",
        "warn_by_email",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).with_idle_since()

    def has_add_permission(self, request):
        return False  # rows are made by the owner's first launch

    def has_delete_permission(self, request, obj=None):
        return False  # the "delete" action destroys the remote sandbox and keeps the row

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    @admin.display(description="owner", ordering="user__email")
    def owner(self, sandbox):
        return sandbox.user.email

    @admin.display(description="resources")
    def resources(self, sandbox):
        return f"{sandbox.cpu} CPU / {sandbox.memory_gb} GB / {sandbox.disk_gb} GB disk"

    @admin.display(description="idle for", ordering="idle_start")
    def idle_for(self, sandbox):
        if not sandbox.is_running:
            return "-"
        return format_duration(sandbox.idle_for(timezone.now()), style="spaced")

    @admin.display(description="last error")
    def short_error(self, sandbox):
        return sandbox.last_error[:80]

    # --- actions -------------------------------------------------------------------------------

    @admin.action(description="Stop selected sandboxes", permissions=["change"])
    def stop_sandboxes(self, request, queryset):
        report = services.sandboxes_stop_many(
            sandbox_ids=list(queryset.values_list("pk", flat=True)),
            actor_type=Actor.ADMIN,
            actor=request.user,
            reason=f"stopped by {request.user.email or request.user.get_username()} in admin",
        )
        self._report(
            request, f"{report.summary()}.", [f"{sandbox.remote_name}: {error}" for sandbox, error in report.failed]
        )

    @admin.action(description="Start selected sandboxes", permissions=["change"])
    def start_sandboxes(self, request, queryset):
        self._one_by_one(
            request,
            queryset,
            "Started",
            lambda sandbox: services.sandbox_start(
                sandbox=sandbox, actor_type=Actor.ADMIN, actor=request.user, reason="started in admin"
            ),
        )

    @admin.action(description="Delete selected remote sandboxes (files are lost)", permissions=["change"])
    def delete_sandboxes(self, request, queryset):
        self._one_by_one(
            request,
            queryset,
            "Deleted",
            lambda sandbox: services.sandbox_delete(
                sandbox=sandbox, actor_type=Actor.ADMIN, actor=request.user, reason="deleted in admin"
            ),
        )

    # "Refresh" is the operators' word in the console; in the code it is a sync (services.sandbox_sync).
    @admin.action(description="Refresh selected from the provider", permissions=["change"])
    def refresh_sandboxes(self, request, queryset):
        self._one_by_one(
            request,
            queryset,
            "Refreshed",
            lambda sandbox: services.sandbox_sync(sandbox=sandbox, actor_type=Actor.ADMIN, actor=request.user),
        )

    def _one_by_one(self, request, queryset, done: str, act) -> None:
        succeeded, failures = 0, []
        for sandbox in queryset.select_related("user"):
            try:
                act(sandbox)
            except services.SandboxError as exc:
                failures.append(f"{sandbox.remote_name}: {exc}")
            else:
                succeeded += 1
        self._report(request, f"{done} {succeeded}, failed {len(failures)}.", failures)

    def _report(self, request, summary: str, failures: list[str]) -> None:
        level = messages.WARNING if failures else messages.SUCCESS
        self.message_user(request, summary, level)
        for failure in failures:
            self.message_user(request, failure, messages.ERROR)


class RecordAdmin(admin.ModelAdmin):
    """Records the services keep (who did what, what runs): shown, never added, edited or deleted."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(RecordAdmin):
    list_display = ["created_at", "action", "sandbox_name", "actor_type", "actor", "reason"]
    list_filter = ["action", "actor_type"]
    search_fields = ["sandbox_name", "actor__email", "reason"]
    list_select_related = ["actor"]
    date_hierarchy = "created_at"


@admin.register(TerminalSession)
class TerminalSessionAdmin(RecordAdmin):
    """The web terminal's shells as the portal opened them; ended by the portal only."""

    list_display = ["session_id", "sandbox", "clients", "created_at", "attached_until"]
    search_fields = ["sandbox__user__email", "sandbox__remote_name", "session_id"]
    list_select_related = ["sandbox"]
    readonly_fields = ["sandbox", "session_id", "remote_id", "clients", "created_at", "attached_until"]


@admin.register(AccessGrant)
class AccessGrantAdmin(RecordAdmin):
    """The access ledger: credentials handed out and live sessions, never their secrets."""

    list_display = [
        "created_at",
        "kind",
        "sandbox",
        "expires_at",
        "last_used_at",
        "last_used_from",
        "ended_at",
        "revoked_at",
    ]
    list_filter = ["kind"]
    search_fields = ["sandbox__user__email", "sandbox__remote_name", "public_id", "last_used_from"]
    list_select_related = ["sandbox"]
    date_hierarchy = "created_at"
