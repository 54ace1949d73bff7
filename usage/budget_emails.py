"""The budget alert email, and how amounts and dates read in it and in the launcher's message."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.mail import EmailMessage
from django.template.loader import render_to_string
from django.utils import timezone

from sandboxes.durations import format_duration
from sandboxes.services.timeline import clock

if TYPE_CHECKING:
    from .budgets import BudgetStatus, LimitStatus
    from .models import BudgetAlert

DASHBOARD_PATH = "/sandbox-portal/sandbox/"


def reset_text(moment: datetime) -> str:
    """When a month's limits reset, as users read it: ``1 January 2027 (00:00 UTC)``."""
    local = timezone.localtime(moment)
    return f"{local.day} {local:%B %Y} ({local:%H:%M} {local.tzname()})"


def budget_alert_email(
    user, limit: LimitStatus, alert: BudgetAlert, status: BudgetStatus, now: datetime
) -> EmailMessage:
    """The alert email of ``alert`` (the highest threshold crossed of ``limit``): what was used
    of what, when it resets, what happens now, and whom to ask for more. Plain text; it holds
    no credential."""
    context = {
        "threshold": alert.threshold,
        "limit_name": "monthly budget" if limit.limit == "cost" else "running hours",
        "usage": limit.usage_text(),
        "resets": reset_text(status.resets_at),
        "refuses": status.action == "refuse",
        "stops_at": clock(alert.stop_after) if alert.stop_after else "",
        "stops_in": format_duration(alert.stop_after - now, style="words") if alert.stop_after else "",
        "dashboard_url": settings.PORTAL_URL.rstrip("/") + DASHBOARD_PATH,
    }
    subject = " ".join(render_to_string("usage/email/budget_alert_subject.txt", context).split())
    return EmailMessage(
        subject=subject,
        body=render_to_string("usage/email/budget_alert.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[user.email],
    )
