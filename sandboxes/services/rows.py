"""The sandbox rows: names and labels, one row per user, the audit log, and mirroring what a
provider says into a row. Shared by every other service module."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import F

from environments.models import Template
from sandboxes.models import AuditEvent, Sandbox, SandboxState, StateChange
from sandboxes.providers import get_provider
from sandboxes.providers.base import ProviderError, RemoteSandbox, RemoteState, SandboxProvider

from .errors import SandboxError
from .live import sandbox_changed

LABEL_MANAGED = "joepro-managed"
LABEL_DEPLOYMENT = "joepro-deployment"
LABEL_OWNER = "joepro-owner"
LABEL_TEMPLATE = "joepro-template"
# Sandboxes from before templates were all Node.js ones, named without a template: they keep
# their names, and so do new sandboxes of that template.
UNSUFFIXED_TEMPLATE = "nodejs"
WRITE_BATCH = 500
Actor = AuditEvent.ActorType

# The row's fields a provider's answer, a stop or a sync may change; written in bulk by save_changes.
SYNCED_FIELDS = [
    "remote_id",
    "state",
    "backend_state",
    "state_changed_at",
    "last_started_at",
    "last_stopped_at",
    "last_activity_at",
    "last_activity_source",
    "remote_touched_at",
    "last_synced_at",
    "last_error",
    "last_error_code",
    "access_ciphertext",
    "access_expires_at",
]
# Of those, the ones no page shows: a row where only these changed is not announced.
UNSHOWN_FIELDS = {"last_synced_at", "remote_touched_at"}


# --- naming and labels ------------------------------------------------------------------------


def managed_labels() -> dict[str, str]:
    """Labels every sandbox of this deployment carries; the filter for listing them."""
    return {LABEL_MANAGED: "true", LABEL_DEPLOYMENT: settings.SANDBOX_DEPLOYMENT}


def owner_labels(user) -> dict[str, str]:
    return {**managed_labels(), LABEL_OWNER: str(user.pk)}


def remote_name_for(user, template=None) -> str:
    """Deterministic and collision-free: the deployment, the user's primary key and the
    template's slug (none for Node.js, whose sandboxes predate templates).

    No part can be chosen by a user, and the owner label is checked before any sandbox
    found under this name is handed out.
    """
    deployment = re.sub(r"[^a-z0-9-]+", "-", settings.SANDBOX_DEPLOYMENT.lower()).strip("-") or "portal"
    name = f"{deployment}-user-{user.pk}"
    if template is not None and template.slug != UNSUFFIXED_TEMPLATE:
        name += f"-{template.slug}"
    return name


def sandbox_labels(user, template) -> dict[str, str]:
    """The labels a sandbox is created with: its owner's and its template's."""
    return {**owner_labels(user), LABEL_TEMPLATE: template.slug}


def is_owned_by(remote: RemoteSandbox, user) -> bool:
    labels = remote.labels
    return all(labels.get(key) == value for key, value in owner_labels(user).items())


# --- rows -------------------------------------------------------------------------------------


def sandbox_get_or_create_row(*, user, template=None) -> Sandbox:
    """The user's row for ``template`` (default: the default template), created (state
    ``pending``) on first use.

    Safe under concurrent calls: the one-per-(user, template) constraint lets exactly one
    insert win and the others read it, and the user's own row is locked while the cap is
    counted, so two templates chosen at once cannot both pass ``SANDBOX_MAX_PER_USER``.
    Raises ``SandboxLimit`` (409 ``sandbox_limit``) at the cap.
    """
    template = template or Template.objects.default()
    found = Sandbox.objects.filter(user=user, template=template).first()
    if found is not None:
        return found
    with transaction.atomic():
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
        found = Sandbox.objects.filter(user=user, template=template).first()
        if found is not None:
            return found
        others = list(Sandbox.objects.filter(user=user).select_related("template").order_by("created_at"))
        if len(others) >= settings.SANDBOX_MAX_PER_USER:
            raise SandboxLimit(others, template)
        try:
            with transaction.atomic():
                return Sandbox.objects.create(
                    user=user,
                    template=template,
                    provider=settings.SANDBOX_PROVIDER,
                    remote_name=remote_name_for(user, template),
                    cpu=settings.SANDBOX_CPU,
                    memory_gb=settings.SANDBOX_MEMORY_GB,
                    disk_gb=settings.SANDBOX_DISK_GB,
                    labels=sandbox_labels(user, template),
                    template_idle_minutes=template.idle_minutes,
                )
        except IntegrityError:
            pass
    return Sandbox.objects.get(user=user, template=template)


class SandboxLimit(SandboxError):
    """The user keeps as many sandboxes as they may (``SANDBOX_MAX_PER_USER``) and chose another
    template: they may open one of theirs, or reset one to the new template (its files lost)."""

    def __init__(self, sandboxes: list[Sandbox], template):
        names = ", ".join(f"{row.template.name} ({row.remote_name})" for row in sandboxes)
        super().__init__(
            "sandbox_limit",
            f"You already have {len(sandboxes)} sandbox{'es' if len(sandboxes) != 1 else ''}, as many as you may "
            f"keep: {names}. Open one of them, or reset one to {template.name}: its files will be deleted.",
            status=409,
            detail={
                "template": template.slug,
                "sandboxes": [
                    {"name": row.remote_name, "template": row.template.slug, "templateName": row.template.name}
                    for row in sandboxes
                ],
            },
        )
        self.sandboxes = sandboxes
        self.template = template


def template_named(slug: str | None):
    """The template a request names (None: the default); ``SandboxError("invalid_request")``, 400,
    for a slug that names none."""
    if not slug:
        return Template.objects.default()
    template = Template.objects.filter(slug=slug).first()
    if template is None:
        raise SandboxError("invalid_request", f"There is no template named {slug!r}.", status=400)
    return template


def own_templates(user) -> list[str]:
    """The slugs of the templates the user has a sandbox of."""
    return list(Sandbox.objects.filter(user=user).values_list("template__slug", flat=True))


def templates_offered() -> list:
    """The templates the portal offers on the deployment's provider, in the page's order: those
    built and enabled, and the default always (it falls back to the deployment's image)."""
    offered = Template.objects.offered(settings.SANDBOX_PROVIDER)
    default = Template.objects.default()
    if default not in offered:
        offered = [default, *offered]
    return sorted(offered, key=lambda template: (template.position, template.name))


def own_row(user, template_slug: str | None = None) -> Sandbox | None:
    """The user's sandbox of that template; without one named, the one they started last (the
    only one where they keep one)."""
    rows = Sandbox.objects.filter(user=user).select_related("template")
    if template_slug:
        return rows.filter(template__slug=template_slug).first()
    return rows.order_by(F("last_started_at").desc(nulls_last=True), "-created_at").first()


def new_row_for(user, provider_name: str, remote: RemoteSandbox) -> Sandbox:
    """An unsaved row for a remote sandbox adopted for a user who never had one, of the template
    its label names (else the default: sandboxes from before templates carry none)."""
    template = Template.objects.filter(slug=remote.labels.get(LABEL_TEMPLATE) or "").first()
    return Sandbox(
        user=user,
        template=template or Template.objects.default(),
        provider=provider_name,
        remote_name=remote.name,
        cpu=remote.cpu or settings.SANDBOX_CPU,
        memory_gb=remote.memory_gb or settings.SANDBOX_MEMORY_GB,
        disk_gb=remote.disk_gb or settings.SANDBOX_DISK_GB,
        labels=dict(remote.labels),
    )


def provider_for(sandbox: Sandbox) -> SandboxProvider:
    """The provider that holds this sandbox (its row says which), whatever the current default."""
    return get_provider(sandbox.provider)


# --- the audit log ----------------------------------------------------------------------------


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


# --- what the provider says -------------------------------------------------------------------


def portal_state(remote: RemoteSandbox | None) -> SandboxState:
    """The portal's state for a remote sandbox as its provider reports it (None: it is gone).
    The one mapping from provider states to the portal's."""
    if remote is None or remote.state is RemoteState.DESTROYING:
        return SandboxState.GONE
    return SandboxState(remote.state.value)


def apply_remote(sandbox: Sandbox, remote: RemoteSandbox | None, now: datetime) -> None:
    """Mirror what the provider says into the row (not saved). ``None``: the sandbox is gone,
    and the row lets go of its remote id."""
    sandbox.last_synced_at = now
    if remote is None:
        sandbox.remote_id = ""
        sandbox.backend_state = ""
        sandbox.forget_access()
        sandbox.set_state(SandboxState.GONE, now)
        return
    sandbox.remote_id = remote.id
    sandbox.backend_state = remote.backend_state[:32]
    sandbox.set_state(portal_state(remote), now, since=remote.state_changed_at)
    if remote.state is not RemoteState.STARTED:
        sandbox.forget_access()
    if remote.state is RemoteState.ERROR and remote.error_reason:
        sandbox.last_error, sandbox.last_error_code = remote.error_reason, "remote_error"


def record_failure(sandbox: Sandbox, error: ProviderError | SandboxError) -> None:
    """Keep a failure as the row's last error; a provider's under its kind (``unavailable``...)."""
    sandbox.last_error = str(error)
    sandbox.last_error_code = error.code if isinstance(error, SandboxError) else error.kind.value


def clear_failure(sandbox: Sandbox) -> None:
    sandbox.last_error = ""
    sandbox.last_error_code = ""


# --- bulk writes ------------------------------------------------------------------------------


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def snapshot(sandbox: Sandbox) -> dict:
    """The row's synced fields as they are now, to compare with later in :func:`save_changes`."""
    return {name: _comparable(getattr(sandbox, name)) for name in SYNCED_FIELDS}


def _comparable(value):
    return bytes(value) if isinstance(value, memoryview) else value


def save_changes(changes: list[tuple[Sandbox, dict]]) -> None:
    """Write what changed on each row (against its :func:`snapshot`) in few queries.

    Rows whose changes are identical (a stop, a state drift seen in one pass) share one
    ``UPDATE ... WHERE id IN (...)``; the few left over go through one ``bulk_update``. Django's
    ``bulk_update`` alone builds a CASE per row and field, which for thousands of rows costs
    seconds of CPU that the provider threads need.

    The owners of rows whose shown fields changed are told after commit, in one announcement
    per transaction (:func:`sandbox_changed`).
    """
    groups: dict[tuple, list[Sandbox]] = {}
    shown: list[Sandbox] = []
    for row, before in changes:
        after = snapshot(row)
        changed = tuple((name, after[name]) for name in SYNCED_FIELDS if after[name] != before[name])
        if changed:
            groups.setdefault(changed, []).append(row)
        if any(name not in UNSHOWN_FIELDS for name, _ in changed):
            shown.append(row)
    singles: list[Sandbox] = []
    single_fields: set[str] = set()
    for changed, rows in groups.items():
        if len(rows) == 1:
            singles.extend(rows)
            single_fields.update(name for name, _ in changed)
            continue
        for batch in chunks([row.pk for row in rows], WRITE_BATCH):
            Sandbox.objects.filter(pk__in=batch).update(**dict(changed))
    if singles:
        Sandbox.objects.bulk_update(singles, sorted(single_fields), batch_size=WRITE_BATCH)
    state_log = [entry for row, _ in changes for entry in row.unrecorded_changes()]
    if state_log:
        StateChange.objects.bulk_create(state_log, batch_size=WRITE_BATCH)
    sandbox_changed(*shown)
