"""The signed-in user's usage, cost, budget and resources: ``GET /api/sandbox/usage``.

Mounted on the portal's API under ``/sandbox`` (:mod:`sandboxes.api`), so it has the API's
session auth and its errors in one shape; it imports nothing of that package (which imports it).
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from django.conf import settings
from django.http import HttpResponse
from django.utils import timezone
from ninja import Router, Schema, Status

from sandboxes.http import no_store
from sandboxes.models import Sandbox, SandboxState

from .budgets import BudgetStatus, LimitStatus, budget_status
from .metering import Usage, month_start, whole_second
from .models import BudgetAlert, ResourceSample

router = Router()

CENTS = Decimal("0.01")
GIB = 1024**3


# --- schemas ----------------------------------------------------------------------------------


class RatesOut(Schema):
    vcpuHour: str
    memoryGibHour: str
    diskGibHour: str
    freeDiskGib: int


class UsageTotalOut(Schema):
    cost: str
    runningSeconds: int
    stoppedDiskGibHours: str


class ForecastOut(Schema):
    monthEndCost: str


class PeriodOut(Schema):
    start: str
    end: str


class LimitOut(Schema):
    allowed: str
    used: str
    percent: float


class BudgetOut(Schema):
    cost: LimitOut | None
    runningHours: LimitOut | None
    action: str
    exceeded: bool
    stopAt: str | None
    resetsAt: str


class BudgetAlertOut(Schema):
    kind: Literal["budget"]
    limit: str
    threshold: int
    raisedAt: str
    message: str


class ResourceAlertOut(Schema):
    kind: Literal["resource"]
    resource: str
    percent: float
    raisedAt: str
    message: str


class ResourceUseOut(Schema):
    usedBytes: int
    limitBytes: int
    percent: float


class ResourcesOut(Schema):
    sampledAt: str
    memory: ResourceUseOut
    disk: ResourceUseOut


class UsageOut(Schema):
    currency: str
    rates: RatesOut
    today: UsageTotalOut
    month: UsageTotalOut
    forecast: ForecastOut
    period: PeriodOut
    budget: BudgetOut
    alerts: list[BudgetAlertOut | ResourceAlertOut]
    resources: ResourcesOut | None
    now: str


class UsageErrorDetail(Schema):
    code: str
    message: str


class UsageErrorOut(Schema):
    error: UsageErrorDetail


class UsageInternalErrorDetail(UsageErrorDetail):
    id: str


class UsageInternalErrorOut(Schema):
    error: UsageInternalErrorDetail


# --- the endpoint -----------------------------------------------------------------------------


@router.get(
    "/usage",
    response={200: UsageOut, 401: UsageErrorOut, 500: UsageInternalErrorOut},
    summary="The signed-in user's usage and cost, budget, alerts and resources",
    description="Today's cost and this month's up to now, with a forecast to the month's end at the month's "
    "pace so far, at the deployment's rates (money as decimal strings in `currency`); the monthly budget and "
    "running-hours cap with what has been used (null: none applies), the action at 100 % (`refuse` new "
    "starts, or `stop` the running sandbox at `stopAt`) and when the month resets; this month's budget "
    "alerts and the running sandbox's memory and disk alerts; its last measured memory and disk use (null "
    "while it does not run). Zeros for a user who never had a sandbox.",
)
def usage_detail(request, response: HttpResponse):
    no_store(response)
    user = request.auth
    now = whole_second(timezone.now())
    status = budget_status(user, now)
    sample = _running_sample(user)
    return Status(
        200,
        {
            "currency": settings.USAGE_CURRENCY,
            "rates": {
                "vcpuHour": str(settings.USAGE_RATE_VCPU_HOUR),
                "memoryGibHour": str(settings.USAGE_RATE_MEMORY_GIB_HOUR),
                "diskGibHour": str(settings.USAGE_RATE_DISK_GIB_HOUR),
                "freeDiskGib": settings.USAGE_FREE_DISK_GIB,
            },
            "today": _total_out(status.usage.today),
            "month": _total_out(status.usage.month),
            "forecast": {"monthEndCost": str(status.usage.forecast_cost)},
            "period": {"start": _iso(status.usage.month_start), "end": _iso(status.usage.month_end)},
            "budget": _budget_out(status),
            "alerts": _budget_alerts(user, status) + _resource_alerts(sample),
            "resources": _resources_out(sample),
            "now": _iso(now),
        },
    )


def _total_out(usage: Usage) -> dict:
    return {
        "cost": str(usage.cost),
        "runningSeconds": usage.running_seconds,
        "stoppedDiskGibHours": str(_places(Decimal(usage.stopped_disk_gib_seconds) / 3600, CENTS)),
    }


def _budget_out(status: BudgetStatus) -> dict:
    return {
        "cost": _limit_out(status.cost, money=True),
        "runningHours": _limit_out(status.running_hours, money=False),
        "action": status.action,
        "exceeded": status.exceeded,
        "stopAt": _iso(status.stop_at),
        "resetsAt": _iso(status.resets_at),
    }


def _limit_out(limit: LimitStatus | None, *, money: bool) -> dict | None:
    if limit is None:
        return None
    allowed = limit.allowed
    whole_hours = not money and allowed == allowed.to_integral_value()
    return {
        "allowed": str(int(allowed)) if whole_hours else str(_places(allowed, CENTS)),
        "used": str(_places(limit.used, CENTS)),
        "percent": round(limit.percent, 2),
    }


LIMIT_NAMES = {BudgetAlert.Limit.COST: "monthly budget", BudgetAlert.Limit.RUNNING_HOURS: "running hours"}


def _budget_alerts(user, status: BudgetStatus) -> list[dict]:
    """This month's budget alerts of the user, newest first."""
    alerts = BudgetAlert.objects.filter(user=user, month=month_start(status.usage.now).date())
    return [
        {
            "kind": "budget",
            "limit": alert.limit,
            "threshold": alert.threshold,
            "raisedAt": _iso(alert.raised_at),
            "message": _budget_alert_message(alert, status.action),
        }
        for alert in alerts.order_by("-raised_at", "-pk")
    ]


def _budget_alert_message(alert: BudgetAlert, action: str) -> str:
    name = LIMIT_NAMES.get(alert.limit, alert.limit)
    if alert.limit == BudgetAlert.Limit.COST:
        amounts = f"{_places(alert.used, CENTS)} of {_places(alert.allowed, CENTS)} {settings.USAGE_CURRENCY}"
    else:
        amounts = f"{_places(alert.used, CENTS)} of {_places(alert.allowed, CENTS)} hours"
    if alert.threshold < 100:
        return f"You have used {alert.threshold} % of your {name} ({amounts})."
    consequence = "your running sandbox is stopped and new starts" if action == "stop" else "new starts"
    return f"You have used all of your {name} ({amounts}): {consequence} are refused until it resets next month."


def _running_sample(user) -> ResourceSample | None:
    """The last measurement of the user's sandbox, while it runs: one of a stopped sandbox
    describes nothing that runs now."""
    sandbox = Sandbox.objects.filter(user=user, state=SandboxState.STARTED).first()
    if sandbox is None:
        return None
    return ResourceSample.objects.filter(sandbox=sandbox).first()


def _resource_alerts(sample: ResourceSample | None) -> list[dict]:
    if sample is None:
        return []
    alerts = []
    for resource, used, limit, raised_at in (
        ("memory", sample.memory_bytes, sample.memory_limit_bytes, sample.memory_alerted_at),
        ("disk", sample.disk_bytes, sample.disk_limit_bytes, sample.disk_alerted_at),
    ):
        if raised_at is None:
            continue
        percent = _percent(used, limit)
        alerts.append(
            {
                "kind": "resource",
                "resource": resource,
                "percent": percent,
                "raisedAt": _iso(raised_at),
                "message": f"Your sandbox uses {percent:g} % of its {resource} "
                f"({used / GIB:.1f} of {limit / GIB:.1f} GiB).",
            }
        )
    return alerts


def _resources_out(sample: ResourceSample | None) -> dict | None:
    if sample is None:
        return None
    return {
        "sampledAt": _iso(sample.sampled_at),
        "memory": _use_out(sample.memory_bytes, sample.memory_limit_bytes),
        "disk": _use_out(sample.disk_bytes, sample.disk_limit_bytes),
    }


def _use_out(used: int, limit: int) -> dict:
    return {"usedBytes": used, "limitBytes": limit, "percent": _percent(used, limit)}


def _percent(used: int, limit: int) -> float:
    return round(used / limit * 100, 1) if limit else 0.0


def _places(value: Decimal, places: Decimal) -> Decimal:
    return Decimal(value).quantize(places, rounding=ROUND_HALF_UP)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
