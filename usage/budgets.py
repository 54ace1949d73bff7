"""Budgets: each user's monthly budget (cost) and running-hours cap, the alerts at 80 % and
100 % of them, and what happens at 100 % (``BUDGET_ACTION``).

The limits of a user are the deployment's (``BUDGET_MONTHLY_COST``,
``BUDGET_MONTHLY_RUNNING_HOURS``) unless an operator set an override (:class:`usage.models.Budget`);
an exempt user has neither. What they used is exact, from the state log
(:func:`usage.metering.user_month_to_date`), and resets at the start of each calendar month.

At 100 % of a limit new starts are refused (:func:`check_can_start`, called by the launch under
the row lock) with either action; with ``stop`` the running sandbox is also stopped
``BUDGET_STOP_GRACE_MINUTES`` after the alert warned of it (:func:`budgets_check`). A launch that
finds the sandbox running is never refused.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Max, Min, Sum
from django.utils import timezone

from sandboxes.models import AuditEvent, Sandbox, SandboxState
from sandboxes.services import SandboxError, exclusive_lock, sandboxes_stop_many

from .budget_emails import budget_alert_email, reset_text
from .cost import hourly_rate, money
from .instruments import IDLE_STOPS
from .metering import MonthToDate, month_start, next_month_start, user_month_to_date, whole_second
from .models import Budget, BudgetAlert, UsageDay

log = logging.getLogger(__name__)

Limit = BudgetAlert.Limit
REFUSE, STOP = "refuse", "stop"
# States in which a sandbox may be running, so in which the stop action stops it.
MAY_RUN = frozenset(
    {SandboxState.STARTED, SandboxState.CREATING, SandboxState.STARTING, SandboxState.STOPPING, SandboxState.UNKNOWN}
)
# A failed alert email is tried again by each check for this long.
EMAIL_RETRY = timedelta(days=1)
# A roll-up row covers usage up to a moment just before its computed_at.
ROLLUP_SLACK = timedelta(minutes=1)
HUNDRED = Decimal(100)
STOP_REASONS = {Limit.COST: "budget: monthly budget used up", Limit.RUNNING_HOURS: "budget: running hours used up"}


@dataclass(frozen=True)
class LimitStatus:
    """One monthly limit of a user and what they used of it: currency for ``cost``, hours for
    ``running_hours``."""

    limit: str
    allowed: Decimal
    used: Decimal

    @property
    def percent(self) -> float:
        if not self.allowed:
            return 100.0
        return float(self.used * HUNDRED / self.allowed)

    @property
    def exceeded(self) -> bool:
        return self.used >= self.allowed

    def reached(self, threshold: int) -> bool:
        """Whether ``threshold`` percent of the limit is used (exact, in decimals)."""
        return self.used * HUNDRED >= self.allowed * threshold

    def usage_text(self) -> str:
        """What was used of what: ``USD 10.02 of your monthly budget of USD 10.00``, ``40.25 of
        your 40 running hours``."""
        if self.limit == Limit.COST:
            return f"{money(self.used)} of your monthly budget of {money(self.allowed)}"
        return f"{_hours(self.used)} of your {_hours(self.allowed)} running hours"

    def to_json(self) -> dict:
        if self.limit == Limit.COST:
            return {
                "limit": self.limit,
                "allowed": str(_places(self.allowed)),
                "used": str(_places(self.used)),
                "currency": settings.USAGE_CURRENCY,
            }
        return {"limit": self.limit, "allowed": _hours(self.allowed), "used": _hours(self.used)}


@dataclass(frozen=True)
class BudgetStatus:
    """A user's limits this month and what they used of them (see :func:`budget_status`)."""

    cost: LimitStatus | None
    running_hours: LimitStatus | None
    action: str
    resets_at: datetime
    usage: MonthToDate
    stop_at: datetime | None

    @property
    def limits(self) -> list[LimitStatus]:
        return [status for status in (self.cost, self.running_hours) if status is not None]

    @property
    def exceeded(self) -> bool:
        return any(status.exceeded for status in self.limits)

    @property
    def first_exceeded(self) -> LimitStatus | None:
        return next((status for status in self.limits if status.exceeded), None)


def limits_for(budget: Budget | None) -> tuple[Decimal | None, int | None]:
    """The monthly budget and running-hours cap that apply: the override's where it sets one,
    else the deployment's; neither for an exempt user."""
    if budget is not None and budget.exempt:
        return None, None
    cost = settings.BUDGET_MONTHLY_COST
    hours = settings.BUDGET_MONTHLY_RUNNING_HOURS
    if budget is not None and budget.monthly_cost is not None:
        cost = budget.monthly_cost
    if budget is not None and budget.monthly_running_hours is not None:
        hours = budget.monthly_running_hours
    return (None if cost is None else Decimal(cost)), hours


def budget_status(user, now: datetime | None = None) -> BudgetStatus:
    """The user's limits this month and what they used of them up to ``now`` (exact, from the
    state log). ``stop_at`` is set with ``BUDGET_ACTION=stop`` once a limit is used up and its
    100 % alert was raised: when the running sandbox is stopped."""
    return _status(user, Budget.objects.filter(user=user).first(), now or timezone.now())


def _status(user, budget: Budget | None, now: datetime) -> BudgetStatus:
    usage = user_month_to_date(user, now)
    allowed_cost, allowed_hours = limits_for(budget)
    cost = None if allowed_cost is None else LimitStatus(Limit.COST, allowed_cost, usage.month.cost)
    hours = None
    if allowed_hours is not None:
        hours = LimitStatus(Limit.RUNNING_HOURS, Decimal(allowed_hours), usage.month.running_hours)
    action = settings.BUDGET_ACTION
    stop_at = None
    exceeded = [status.limit for status in (cost, hours) if status is not None and status.exceeded]
    if action == STOP and exceeded:
        stop_at = (
            BudgetAlert.objects.filter(
                user=user, month=usage.month_start.date(), threshold=100, limit__in=exceeded, stop_after__isnull=False
            )
            .aggregate(first=Min("stop_after"))
            .get("first")
        )
    return BudgetStatus(
        cost=cost, running_hours=hours, action=action, resets_at=usage.month_end, usage=usage, stop_at=stop_at
    )


def check_can_start(sandbox: Sandbox, user, now: datetime) -> None:
    """Refuse a start or create of ``sandbox`` when ``user`` used up a monthly limit.

    Called by the launch with the sandbox's row locked, so simultaneous launches by one user
    are decided one after the other. Raises ``SandboxError("budget_exceeded")`` (403) whose
    ``detail`` is ``{"budget": {"limit", "allowed", "used", "currency" (cost only), "resetsAt",
    "action"}}``.
    """
    status = budget_status(user, now)
    limit = status.first_exceeded
    if limit is None:
        return
    what = "budget" if limit.limit == Limit.COST else "running-hours cap"
    log.info("start of %s refused: %s used up", sandbox.remote_name, limit.limit)
    raise SandboxError(
        "budget_exceeded",
        f"You have used {limit.usage_text()} this month, so your sandbox "
        f"cannot be started until the {what} resets on {reset_text(status.resets_at)}. Your files are kept. "
        f"If you need it sooner, ask an operator to raise your {what}.",
        status=403,
        detail={
            "budget": {**limit.to_json(), "resetsAt": status.resets_at.isoformat(), "action": status.action},
        },
    )


# --- the periodic check -------------------------------------------------------------------------


def budgets_check(now: datetime | None = None) -> dict:
    """Raise the alerts of users who crossed a threshold of a limit this month, email them,
    and with ``BUDGET_ACTION=stop`` stop the sandboxes whose 100 % alert's grace has passed.

    Each alert is raised once per user, month, limit and threshold (a unique row); it is raised
    again when an operator changes the limit and the user crosses the new one, and withdrawn
    when they no longer are over it. Its email is sent once, tried again for a day if sending
    fails. Stops go through the stop service (audited with a ``budget: ...`` reason) and are
    counted in ``IDLE_STOPS{reason="budget"}``.

    Bounded work for many users: the month's roll-up (``UsageDay``) plus what each sandbox can
    have spent since then picks the candidates in a few queries; only those are metered
    exactly. One run at a time across processes; returns counts.
    """
    now = whole_second(now or timezone.now())
    report = {"candidates": 0, "alerts": 0, "withdrawn": 0, "emailed": 0, "stopped": 0, "stop_failed": 0}
    with exclusive_lock("budgets-check") as acquired:
        if not acquired:
            log.info("budget check skipped: another run holds the lock")
            return {**report, "lock_held": True}
        month = month_start(now)
        budgets = {budget.user_id: budget for budget in Budget.objects.all()}
        alerts = _month_alerts(month)
        candidates = _candidates(now, month, budgets, alerts) if _any_limit(budgets) or alerts else set()
        report["candidates"] = len(candidates)
        for user in get_user_model().objects.filter(pk__in=candidates).order_by("pk").iterator(chunk_size=500):
            status = _status(user, budgets.get(user.pk), now)
            raised, withdrawn = _raise_alerts(user, status, alerts.get(user.pk, {}), now)
            report["alerts"] += raised
            report["withdrawn"] += withdrawn
            report["emailed"] += _email_alerts(user, status, now)
        if settings.BUDGET_ACTION == STOP:
            _stop_used_up(now, month, budgets, report)
    if any(report.values()):
        log.info("budget check: %s", ", ".join(f"{name} {count}" for name, count in report.items()))
    return report


def _any_limit(budgets: dict) -> bool:
    if settings.BUDGET_MONTHLY_COST is not None or settings.BUDGET_MONTHLY_RUNNING_HOURS is not None:
        return True
    return any(limit is not None for budget in budgets.values() for limit in limits_for(budget))


def _month_alerts(month: datetime) -> dict[int, dict[tuple[str, int], BudgetAlert]]:
    alerts: dict[int, dict[tuple[str, int], BudgetAlert]] = defaultdict(dict)
    for alert in BudgetAlert.objects.filter(month=month.date()):
        alerts[alert.user_id][(alert.limit, alert.threshold)] = alert
    return alerts


def _candidates(now: datetime, month: datetime, budgets: dict, alerts: dict) -> set[int]:
    """Users who may have crossed a threshold not yet alerted, or whose alerts need attention
    (the limit changed, an email to retry, a stop to schedule). Upper bounds, never exact:
    the roll-up's totals plus, for each sandbox, its running rate over the time since the
    roll-up last covered its owner."""
    lowest = min(settings.BUDGET_ALERT_PERCENTS)
    rolled_up = {
        row["user"]: row
        for row in UsageDay.objects.filter(
            day__gte=month.date(), day__lt=next_month_start(now).date(), user__isnull=False
        )
        .values("user")
        .annotate(cost=Sum("cost"), running=Sum("running_seconds"), covered=Max("computed_at"))
    }
    spend: dict[int, list] = defaultdict(lambda: [Decimal(0), 0])
    for user_id, row in rolled_up.items():
        spend[user_id] = [row["cost"] or Decimal(0), row["running"] or 0]
    sandboxes = Sandbox.objects.filter(user__isnull=False).values_list(
        "user_id", "state", "state_changed_at", "cpu", "memory_gb", "disk_gb"
    )
    for user_id, state, changed_at, cpu, memory_gb, disk_gb in sandboxes.iterator(chunk_size=2000):
        covered = max((rolled_up.get(user_id, {}).get("covered") or month) - ROLLUP_SLACK, month)
        if now <= covered:
            continue
        may_have_run = state in MAY_RUN or (changed_at is not None and changed_at >= covered)
        seconds = int((now - covered).total_seconds())
        rate = hourly_rate(cpu=cpu, memory_gb=memory_gb, disk_gb=disk_gb, running=may_have_run)
        spend[user_id][0] += rate * seconds / 3600
        spend[user_id][1] += seconds if may_have_run else 0

    candidates = set()
    for user_id, (cost, running_seconds) in spend.items():
        allowed_cost, allowed_hours = limits_for(budgets.get(user_id))
        near = (allowed_cost is not None and cost * HUNDRED >= allowed_cost * lowest) or (
            allowed_hours is not None and Decimal(running_seconds) / 36 >= allowed_hours * lowest
        )
        if near and not _all_raised(alerts.get(user_id, {}), allowed_cost, allowed_hours):
            candidates.add(user_id)
    for user_id, held in alerts.items():
        if _needs_attention(held, limits_for(budgets.get(user_id)), now):
            candidates.add(user_id)
    return candidates


def _all_raised(held: dict, allowed_cost: Decimal | None, allowed_hours: int | None) -> bool:
    """Whether every threshold of every limit that applies is alerted against that limit."""
    for limit, allowed in ((Limit.COST, allowed_cost), (Limit.RUNNING_HOURS, allowed_hours)):
        if allowed is None:
            continue
        for threshold in settings.BUDGET_ALERT_PERCENTS:
            alert = held.get((limit, threshold))
            if alert is None or alert.allowed != allowed:
                return False
    return True


def _needs_attention(held: dict, limits: tuple, now: datetime) -> bool:
    allowed = dict(zip((Limit.COST, Limit.RUNNING_HOURS), limits, strict=True))
    for (limit, threshold), alert in held.items():
        if allowed[limit] is None or alert.allowed != allowed[limit]:
            return True
        if alert.emailed_at is None and alert.raised_at >= now - EMAIL_RETRY:
            return True
        if threshold == 100 and settings.BUDGET_ACTION == STOP and alert.stop_after is None:
            return True
    return False


def _raise_alerts(user, status: BudgetStatus, held: dict, now: datetime) -> tuple[int, int]:
    """Bring the user's alerts of the month in line with ``status``; returns how many were
    raised (or raised again) and how many withdrawn."""
    month = status.usage.month_start.date()
    current = {limit.limit: limit for limit in status.limits}
    raised = withdrawn = 0
    held = dict(held)
    for (name, threshold), alert in list(held.items()):
        limit = current.get(name)
        if limit is None or (alert.allowed != limit.allowed and not limit.reached(threshold)):
            alert.delete()  # the limit was lifted or raised past what they use
            del held[(name, threshold)]
            withdrawn += 1
    stop_after = now + timedelta(minutes=settings.BUDGET_STOP_GRACE_MINUTES) if status.action == STOP else None
    for limit in status.limits:
        for threshold in settings.BUDGET_ALERT_PERCENTS:
            if not limit.reached(threshold):
                continue
            alert_stop = stop_after if threshold == 100 else None
            alert = held.get((limit.limit, threshold))
            if alert is None:
                _, created = BudgetAlert.objects.get_or_create(
                    user=user,
                    month=month,
                    limit=limit.limit,
                    threshold=threshold,
                    defaults={"used": limit.used, "allowed": limit.allowed, "raised_at": now, "stop_after": alert_stop},
                )
                raised += created
            elif alert.allowed != limit.allowed:  # an operator changed the limit: crossed again
                BudgetAlert.objects.filter(pk=alert.pk).update(
                    used=limit.used, allowed=limit.allowed, raised_at=now, emailed_at=None, stop_after=alert_stop
                )
                raised += 1
            elif alert_stop is not None and alert.stop_after is None:  # the action became "stop"
                BudgetAlert.objects.filter(pk=alert.pk).update(stop_after=alert_stop, emailed_at=None)
    return raised, withdrawn


def _email_alerts(user, status: BudgetStatus, now: datetime) -> int:
    """Email the user's alerts not yet emailed: one email per limit, about its highest
    threshold crossed. Returns how many emails went out."""
    address = (user.email or "").strip()
    pending = BudgetAlert.objects.filter(
        user=user, month=status.usage.month_start.date(), emailed_at__isnull=True, raised_at__gte=now - EMAIL_RETRY
    ).order_by("limit", "-threshold")
    by_limit: dict[str, list[BudgetAlert]] = defaultdict(list)
    for alert in pending:
        by_limit[alert.limit].append(alert)
    current = {limit.limit: limit for limit in status.limits}
    sent = 0
    for name, alerts in by_limit.items():
        limit = current.get(name)
        if not address or limit is None:
            continue
        try:
            budget_alert_email(user, limit, alerts[0], status, now).send()
        except Exception:  # the mail server is down: the next check tries again
            log.warning("the budget alert email to user %s failed", user.pk, exc_info=True)
            continue
        BudgetAlert.objects.filter(pk__in=[alert.pk for alert in alerts]).update(emailed_at=now)
        sent += 1
    return sent


def _stop_used_up(now: datetime, month: datetime, budgets: dict, report: dict) -> None:
    """Stop the sandboxes of users whose 100 % alert's grace has passed and who are still over
    the limit (checked exactly: an operator may have raised it meanwhile)."""
    due = BudgetAlert.objects.filter(month=month.date(), threshold=100, stop_after__lte=now)
    users_due = defaultdict(set)
    for user_id, limit in due.values_list("user_id", "limit"):
        users_due[user_id].add(limit)
    if not users_due:
        return
    running = (
        Sandbox.objects.filter(user_id__in=list(users_due), state__in=MAY_RUN)
        .exclude(remote_id="")
        .select_related("user")
        .order_by("pk")
    )
    to_stop: dict[str, list[int]] = defaultdict(list)
    for sandbox in running:
        status = _status(sandbox.user, budgets.get(sandbox.user_id), now)
        used_up = [limit for limit in status.limits if limit.exceeded and limit.limit in users_due[sandbox.user_id]]
        if used_up:
            to_stop[STOP_REASONS[used_up[0].limit]].append(sandbox.pk)
    for reason, ids in to_stop.items():
        stop = sandboxes_stop_many(sandbox_ids=ids, actor_type=AuditEvent.ActorType.SYSTEM, reason=reason, now=now)
        if stop.stopped:
            IDLE_STOPS.labels(reason="budget", outcome="stopped").inc(len(stop.stopped))
        if stop.failed:
            IDLE_STOPS.labels(reason="budget", outcome="failed").inc(len(stop.failed))
        report["stopped"] += len(stop.stopped)
        report["stop_failed"] += len(stop.failed)


def _places(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _hours(hours: Decimal) -> str:
    """Hours as users read them: whole hours plain ("40"), else two places ("39.75")."""
    if hours == hours.to_integral_value():
        return str(int(hours))
    return str(_places(hours))
