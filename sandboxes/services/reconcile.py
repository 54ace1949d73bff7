"""Reconcile: make the rows true to what really runs, provider by provider."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from environments.models import Template
from joepro.request_context import ContextThreadPool
from sandboxes.models import AuditEvent, Sandbox, SandboxState
from sandboxes.providers import get_provider
from sandboxes.providers.base import ProviderError, RemoteSandbox, RemoteState, SandboxProvider

from .activity import fold_outside_activity, outside_activity
from .live import sandbox_changed
from .locks import exclusive_lock, lock_rows
from .rows import (
    LABEL_OWNER,
    LABEL_TEMPLATE,
    WRITE_BATCH,
    Actor,
    apply_remote,
    audit,
    audit_event,
    chunks,
    is_owned_by,
    managed_labels,
    new_row_for,
    portal_state,
    save_changes,
    snapshot,
)

log = logging.getLogger(__name__)

LIST_LAG_GRACE = timedelta(seconds=30)  # a listing may not show changes younger than this
MIN_LOOKUPS = 20  # per reconcile pass, however few rows; otherwise 1% of the rows


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

    def lines(self) -> list[str]:
        """What the pass did, for operators: counts, every orphan, then the lookups it made."""
        updated, adopted = ("Would update", "would adopt") if self.dry_run else ("Updated", "adopted")
        return [
            f"Listed {self.listed} remote sandboxes; compared {self.rows} rows.",
            f"{updated}: {self.updated} (gone: {self.gone}, stuck repaired: {self.repaired}); "
            f"{adopted}: {self.adopted}; still mid-transition on the provider: {self.stuck}.",
            *(
                f"orphan {'deleted' if orphan.deleted else 'reported'}  {orphan.remote_id}  {orphan.name}  "
                f"owner={orphan.owner or '-'}  {orphan.why}"
                for orphan in self.orphans
            ),
            f"Orphans: {len(self.orphans)}; lookups: {self.lookups}; deferred to the next pass: "
            f"{self.deferred}; busy: {self.busy}; errors: {len(self.errors)}.",
        ]

    def summary(self) -> str:
        """The counts on one line, for logs."""
        return " ".join(line for line in self.lines() if not line.startswith("orphan "))


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
    last-activity time of running sandboxes is folded in, where it shows use the portal did
    not see (``services.activity.outside_activity``). Rows are written in bulk, each only
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
        with ContextThreadPool(max_workers=workers, thread_name_prefix="sandbox-reconcile") as pool:
            for name in sorted(names):
                _reconcile_provider(
                    name,
                    now=now,
                    dry_run=dry_run,
                    delete_orphans=delete_orphans,
                    stuck_before=stuck_before,
                    report=report,
                    pool=pool,
                )
    log.info("reconcile%s: %s", " (dry run)" if dry_run else "", report.summary())
    return report


def _drifted(row: Sandbox, remote: RemoteSandbox) -> bool:
    return (
        row.state != portal_state(remote)
        or row.backend_state != remote.backend_state[:32]
        or (remote.state is RemoteState.ERROR and bool(remote.error_reason) and row.last_error != remote.error_reason)
    )


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
        elif _drifted(row, remote) or outside_activity(row, remote, now) is not None:
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
    for (_, kind, target), (remote, error) in zip(ambiguous, results, strict=True):
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
        if remote is None or _drifted(row, remote) or outside_activity(row, remote, now) is not None:
            plans.append(_Plan(row=row, remote=remote, stuck=stuck, seen=_seen(row)))

    plans.extend(
        _orphan_plans(
            orphans,
            provider=provider,
            provider_name=name,
            report=report,
            dry_run=dry_run,
            delete_orphans=delete_orphans,
        )
    )
    if dry_run:
        for plan in plans:
            _count(report, plan, plan.row.state, portal_state(plan.remote))
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
    if not orphans:
        return []
    owner_keys = {remote.labels.get(LABEL_OWNER, "") for remote in orphans}
    users = {
        str(user.pk): user
        for user in get_user_model().objects.filter(pk__in=[key for key in owner_keys if key.isdigit()])
    }
    rows = {
        (str(row.user_id), row.template.slug): row
        for row in Sandbox.objects.filter(user_id__in=[int(pk) for pk in users]).select_related("template")
    }
    default_slug = Template.objects.default().slug
    names_taken = set(
        Sandbox.objects.filter(remote_name__in=[r.name for r in orphans]).values_list("remote_name", "user_id")
    )
    plans, adopting = [], set()
    for remote in orphans:
        key = remote.labels.get(LABEL_OWNER, "")
        user = users.get(key)
        # One key per (owner, template), sandboxes from before templates being Node.js ones.
        owned = (key, remote.labels.get(LABEL_TEMPLATE) or default_slug)
        row = rows.get(owned)
        why = ""
        if user is None:
            why = "its owner label names no user"
        elif not is_owned_by(remote, user):
            why = "its labels do not match this deployment"
        elif row is not None and row.remote_id:
            why = f"the owner already has sandbox {row.remote_id}"
        elif owned in adopting:
            why = "the owner has another orphan of this template adopted in this pass"
        elif any(name == remote.name and owner != user.pk for name, owner in names_taken):
            why = "its name is another user's sandbox name"
        if not why:
            adopting.add(owned)
            if row is None:
                row = new_row_for(user, provider_name, remote)
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
            audit_event(
                None,
                AuditEvent.Action.DELETE,
                actor_type=Actor.SYSTEM,
                name=remote.name,
                reason=f"orphan deleted by reconcile: {why}",
                remote_id=remote.id,
            ).save()
    return plans


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
    for batch in chunks(sorted(updates), WRITE_BATCH):
        with transaction.atomic():
            fresh = {row.pk: row for row in lock_rows(Sandbox.objects.filter(pk__in=batch), skip_locked=True)}
            changes, events = [], []
            for pk in batch:
                plan, row = updates[pk], fresh.get(pk)
                if row is None or _seen(row) != plan.seen:
                    report.busy += 1
                    continue
                before = row.state
                changes.append((row, snapshot(row)))
                remote = plan.remote if portal_state(plan.remote) != SandboxState.GONE else None
                apply_remote(row, remote, now)  # None: gone, and the row lets go of the remote id
                fold_outside_activity(row, remote, now)
                _count(report, plan, before, row.state)
                if row.state != before:
                    events.append(
                        audit_event(
                            row,
                            AuditEvent.Action.STATE_SYNCED,
                            actor_type=Actor.SYSTEM,
                            reason="reconcile",
                            **{"from": before, "to": row.state, "stuck": plan.stuck},
                        )
                    )
            save_changes(changes)
            AuditEvent.objects.bulk_create(events, batch_size=WRITE_BATCH)


def _adopt(plan: _Plan, *, now: datetime, report: ReconcileReport) -> None:
    remote = plan.remote
    try:
        # The orphan's own idle stop may be anything: the backstop is set before it is adopted.
        get_provider(plan.row.provider).set_auto_stop(remote.id, settings.SANDBOX_REMOTE_AUTO_STOP_MINUTES)
    except ProviderError as exc:
        report.errors.append(f"{plan.row.provider}: setting the auto-stop of orphan {remote.id} failed: {exc}")
        return
    try:
        with transaction.atomic():
            if plan.row.pk is None:
                row = plan.row
            else:
                row = lock_rows(Sandbox.objects.filter(pk=plan.row.pk), skip_locked=True).first()
                if row is None or _seen(row) != plan.seen:
                    report.busy += 1
                    return
            row.remote_id = remote.id
            row.remote_name = remote.name
            apply_remote(row, remote, now)
            row.save()
            sandbox_changed(row)
            audit(
                row,
                AuditEvent.Action.ADOPT,
                actor_type=Actor.SYSTEM,
                reason="orphan adopted by reconcile",
                remote_id=remote.id,
            )
    except IntegrityError:  # the owner launched meanwhile and has a row now
        report.busy += 1
        return
    report.adopted += 1
