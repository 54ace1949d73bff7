"""Celery tasks: thin doors to the lifecycle services.

Arguments are ids and plain values, never secrets. Every task is acknowledged after it ran
(``acks_late``): a worker that dies mid-task leaves the message to be redelivered, so each body
is idempotent (the services re-check state under row locks and advisory locks). Time limits
are set per task; the broker's visibility timeout (``CELERY_VISIBILITY_TIMEOUT``) is longer
than any of them plus the longest retry countdown.
"""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from joepro.request_context import sandbox_in_play

from . import services
from .models import Sandbox
from .services.timeline import activity_marks_prune
from .services.warnings import sandboxes_warn_before_idle_stop

MAX_RETRY_COUNTDOWN = 300


@shared_task(acks_late=True, soft_time_limit=240, time_limit=300, ignore_result=True)
def reconcile_sandboxes() -> dict:
    """Beat: mirror remote state into the rows (see ``services.sandboxes_reconcile``)."""
    report = services.sandboxes_reconcile(now=timezone.now())
    return {"updated": report.updated, "gone": report.gone, "adopted": report.adopted, "errors": len(report.errors)}


@shared_task(acks_late=True, soft_time_limit=240, time_limit=300, ignore_result=True)
def stop_idle_sandboxes() -> dict:
    """Beat: the idle policy (see ``services.sandboxes_stop_idle``)."""
    report = services.sandboxes_stop_idle(now=timezone.now())
    return {"stopped": len(report.stopped), "failed": len(report.failed), "lock_held": report.lock_held}


@shared_task(acks_late=True, soft_time_limit=50, time_limit=60, ignore_result=True)
def reap_terminal_sessions() -> int:
    """Beat: end web terminal sessions nobody has been attached to for a while (see
    ``services.terminals_reap``)."""
    return services.terminals_reap(now=timezone.now())


@shared_task(bind=True, acks_late=True, soft_time_limit=60, time_limit=90, max_retries=3, ignore_result=True)
def refresh_sandbox_activity(self, sandbox_id: int) -> bool:
    """Reset the provider's idle timer of a sandbox the portal sees in use."""
    return _on_sandbox(self, sandbox_id, services.sandbox_refresh_activity)


@shared_task(bind=True, acks_late=True, soft_time_limit=60, time_limit=90, max_retries=3, ignore_result=True)
def apply_sandbox_backstop(self, sandbox_id: int) -> bool:
    """Set the provider's own idle stop of a sandbox whose idle period or extension changed."""
    return _on_sandbox(self, sandbox_id, services.sandbox_apply_backstop)


def _on_sandbox(task, sandbox_id: int, service) -> bool:
    """Run ``service`` on the sandbox (False when its row is gone), retrying what may pass."""
    sandbox = Sandbox.objects.filter(pk=sandbox_id).first()
    if sandbox is None:
        return False
    try:
        with sandbox_in_play(sandbox_id):
            return service(sandbox=sandbox)
    except services.SandboxError as exc:
        if not exc.retryable:
            raise
        raise task.retry(exc=exc, countdown=min(exc.retry_after or 30, MAX_RETRY_COUNTDOWN)) from exc


@shared_task(acks_late=True, soft_time_limit=50, time_limit=60, ignore_result=True)
def warn_before_idle_stop() -> int:
    """Beat: email the owners who asked for it before their sandbox's idle stop (see
    ``services.warnings.sandboxes_warn_before_idle_stop``), and prune old activity marks."""
    now = timezone.now()
    activity_marks_prune(now=now)
    return sandboxes_warn_before_idle_stop(now=now)
