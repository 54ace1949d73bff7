"""What running sandboxes use of their memory and disk, and the alert when one is nearly full.

Every ``RESOURCE_SAMPLE_SECONDS`` (beat: ``usage.tasks.sample_resources``) each started
sandbox is measured through its provider (:meth:`SandboxProvider.resource_usage`: the local
provider reads the host's cgroups and the home's filesystem, Daytona runs one command through
the toolbox that does not count as use) and its one :class:`~usage.models.ResourceSample` row
is written. At ``RESOURCE_ALERT_PERCENT`` of memory or of disk the owner is alerted (the row's
``memory_alerted_at`` / ``disk_alerted_at``, shown in the dashboard, and one email); the flag
clears once use falls ten points below, so a sandbox hovering at the threshold alerts once and
a later crossing alerts again. A sandbox that is not started has no sample: its row is removed,
so the dashboard never shows the figures of a run that ended.

Measuring never counts as activity: no activity mark, no ``last_activity_at``, no provider idle
timer moves.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction
from django.template.loader import render_to_string

from joepro.request_context import ContextThreadPool
from sandboxes.models import Sandbox, SandboxState
from sandboxes.providers.base import ProviderError, ResourceUsage
from sandboxes.services import exclusive_lock
from sandboxes.services.rows import provider_for

from .budget_emails import DASHBOARD_PATH
from .models import ResourceSample

log = logging.getLogger(__name__)

CLEAR_BELOW_POINTS = 10  # an alert clears this many percentage points under the threshold
MEMORY, DISK = "memory", "disk"


def sandbox_resource_usage(sandbox: Sandbox) -> ResourceUsage:
    """The sandbox's memory and disk use now, from its provider. Raises ProviderError (see
    :meth:`SandboxProvider.resource_usage`); never counts as use of the sandbox."""
    return provider_for(sandbox).resource_usage(sandbox.remote_id)


def percent(used: int, limit: int) -> float:
    """``used`` as a percentage of ``limit`` (0.0 without a limit)."""
    return used * 100.0 / limit if limit > 0 else 0.0


def resources_sample(*, now: datetime) -> dict:
    """Measure every started sandbox (at most ``SANDBOX_STOP_CONCURRENCY`` at once), write
    their samples, raise and clear alerts and email the owners of new ones; remove the samples
    of sandboxes that no longer run. A sandbox whose measurement fails is logged and skipped
    (its previous sample stays, unless it stopped). One run at a time across processes;
    returns counts."""
    report = {"sampled": 0, "failed": 0, "alerted": 0, "cleared": 0, "emailed": 0, "removed": 0}
    with exclusive_lock("resources-sample") as acquired:
        if not acquired:
            log.info("resource sampling skipped: another run holds the lock")
            return {**report, "lock_held": True}
        report["removed"] += _remove_stale()
        running = list(Sandbox.objects.filter(state=SandboxState.STARTED).exclude(remote_id="").select_related("user"))
        if running:
            workers = max(1, min(settings.SANDBOX_STOP_CONCURRENCY, len(running)))
            with ContextThreadPool(max_workers=workers, thread_name_prefix="resources") as pool:
                measured = list(pool.map(_measure, running))
            for sandbox, usage in zip(running, measured, strict=True):
                if usage is None:
                    report["failed"] += 1
                    continue
                _record(sandbox, usage, now, report)
        report["removed"] += _remove_stale()
    if report["failed"] or report["alerted"] or report["cleared"]:
        log.info("resource sampling: %s", ", ".join(f"{name} {count}" for name, count in report.items()))
    return report


def _measure(sandbox: Sandbox) -> ResourceUsage | None:
    """In a worker thread: the provider's call only, no database."""
    try:
        return sandbox_resource_usage(sandbox)
    except ProviderError as error:
        log.warning("resources of %s not measured: %s (%s)", sandbox.remote_name, error, error.kind.value)
    except Exception:  # a bug for one sandbox must not keep the others from being measured
        log.exception("resources of %s not measured", sandbox.remote_name)
    return None


def _remove_stale() -> int:
    deleted, _ = ResourceSample.objects.exclude(sandbox__state=SandboxState.STARTED).delete()
    return deleted


def _record(sandbox: Sandbox, usage: ResourceUsage, now: datetime, report: dict) -> None:
    threshold = settings.RESOURCE_ALERT_PERCENT
    crossed: list[str] = []
    with transaction.atomic():
        if not Sandbox.objects.filter(pk=sandbox.pk, state=SandboxState.STARTED).exists():
            return  # it stopped while being measured: no figures of a run that ended
        sample = ResourceSample.objects.select_for_update().filter(sandbox=sandbox).first()
        sample = sample or ResourceSample(sandbox=sandbox)
        sample.sampled_at = now
        sample.memory_bytes, sample.memory_limit_bytes = usage.memory_bytes, usage.memory_limit_bytes
        sample.disk_bytes, sample.disk_limit_bytes = usage.disk_bytes, usage.disk_limit_bytes
        for resource, used, limit in (
            (MEMORY, usage.memory_bytes, usage.memory_limit_bytes),
            (DISK, usage.disk_bytes, usage.disk_limit_bytes),
        ):
            field = f"{resource}_alerted_at"
            share = percent(used, limit)
            if share >= threshold and getattr(sample, field) is None:
                setattr(sample, field, now)
                crossed.append(resource)
                report["alerted"] += 1
            elif share < threshold - CLEAR_BELOW_POINTS and getattr(sample, field) is not None:
                setattr(sample, field, None)
                report["cleared"] += 1
        sample.save()
    report["sampled"] += 1
    for resource in crossed:
        report["emailed"] += _email(sandbox, sample, resource)


def _email(sandbox: Sandbox, sample: ResourceSample, resource: str) -> int:
    if not (sandbox.user.email or "").strip():
        return 0
    try:
        resource_alert_email(sandbox, sample, resource).send()
    except Exception:  # the mail server is down; the dashboard shows the alert all the same
        log.warning("the %s alert to the owner of %s failed", resource, sandbox.remote_name, exc_info=True)
        return 0
    return 1


def resource_alert_email(sandbox: Sandbox, sample: ResourceSample, resource: str) -> EmailMessage:
    """The email of a new alert: which resource, how full, what happens when it is full and
    what to do. Plain text; it holds no credential."""
    used = getattr(sample, f"{resource}_bytes")
    limit = getattr(sample, f"{resource}_limit_bytes")
    context = {
        "sandbox_name": sandbox.remote_name,
        "resource": resource,
        "percent": f"{percent(used, limit):.0f}",
        "used": size_text(used),
        "limit": size_text(limit),
        "dashboard_url": settings.PORTAL_URL.rstrip("/") + DASHBOARD_PATH,
    }
    subject = " ".join(render_to_string("usage/email/resource_alert_subject.txt", context).split())
    return EmailMessage(
        subject=subject,
        body=render_to_string("usage/email/resource_alert.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[sandbox.user.email],
    )


def size_text(size: int) -> str:
    """Bytes as people read them: ``3.6 GiB``, ``512 MiB``."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{size} bytes"
