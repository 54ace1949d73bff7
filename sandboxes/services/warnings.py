"""The warning email before an idle stop, for owners who asked for one.

Each idle stop time is mailed about once: the row keeps the stop time it last warned of
(``Sandbox.stop_warning_sent_for``). Use or an extension moves the stop time on, and the new
one gets its own email once it comes within ``SANDBOX_IDLE_WARNING_MINUTES``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template.loader import render_to_string

from sandboxes.durations import format_duration
from sandboxes.models import AuditEvent, Sandbox, SandboxState

from .live import sandbox_changed
from .locks import exclusive_lock
from .rows import Actor, audit
from .timeline import clock

log = logging.getLogger(__name__)

DASHBOARD_PATH = "/sandbox-portal/sandbox/"


def sandboxes_warn_before_idle_stop(*, now: datetime) -> int:
    """Email the owners who opted in (``warn_by_email``) whose running sandbox's idle stop
    (:attr:`Sandbox.idle_deadline`) is still ahead but within ``SANDBOX_IDLE_WARNING_MINUTES``
    of ``now``, once per stop time; each email is audited (``warned``). Returns how many were
    sent.

    One run at a time across processes (a second one finds the lock held and sends nothing).
    A failed send is logged and left for the next run: the row is marked only once the email
    went out.
    """
    window = timedelta(minutes=settings.SANDBOX_IDLE_WARNING_MINUTES)
    with exclusive_lock("sandboxes-warn-before-idle-stop") as acquired:
        if not acquired:
            log.info("idle stop warnings skipped: another run holds the lock")
            return 0
        candidates = (
            Sandbox.objects.filter(state=SandboxState.STARTED, warn_by_email=True).select_related("user").order_by("pk")
        )
        sent = 0
        for sandbox in candidates.iterator(chunk_size=500):
            deadline = sandbox.idle_deadline
            if not now < deadline <= now + window or sandbox.stop_warning_sent_for == deadline:
                continue
            if _warn(sandbox, deadline, now):
                sent += 1
    if sent:
        log.info("idle stop warnings sent: %d", sent)
    return sent


def _warn(sandbox: Sandbox, deadline: datetime, now: datetime) -> bool:
    address = (sandbox.user.email or "").strip()
    if not address:
        return False
    try:
        stop_warning_email(sandbox, deadline, now).send()
    except Exception:  # the mail server is down: the next run tries again
        log.warning("the idle stop warning to the owner of %s failed", sandbox.remote_name, exc_info=True)
        return False
    with transaction.atomic():
        Sandbox.objects.filter(pk=sandbox.pk).update(stop_warning_sent_for=deadline)
        sandbox.stop_warning_sent_for = deadline
        audit(
            sandbox,
            AuditEvent.Action.WARNED,
            actor_type=Actor.SYSTEM,
            reason="idle stop warning emailed",
            stops_at=deadline.isoformat(),
        )
        sandbox_changed(sandbox)
    return True


def stop_warning_email(sandbox: Sandbox, deadline: datetime, now: datetime) -> EmailMultiAlternatives:
    """The warning email to the sandbox's owner: the stop time in UTC and a link to the
    dashboard, where the owner can extend it. It holds no credential."""
    context = {
        "sandbox_name": sandbox.remote_name,
        "stops_at": clock(deadline),
        "stops_in": format_duration(deadline - now + timedelta(seconds=59), style="words"),
        "idle_period": format_duration(sandbox.idle_period, style="words"),
        "dashboard_url": settings.PORTAL_URL.rstrip("/") + DASHBOARD_PATH,
    }
    subject = " ".join(render_to_string("sandboxes/email/stop_warning_subject.txt", context).split())
    email = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string("sandboxes/email/stop_warning.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[sandbox.user.email],
    )
    email.attach_alternative(render_to_string("sandboxes/email/stop_warning.html", context), "text/html")
    return email
