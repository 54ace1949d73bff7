"""Metering: what each sandbox used, integrated from the portal's own record of its states
(``sandboxes.StateChange``).

A sandbox's state holds from one change to the next, so usage over any stretch of time is a
sum over the intervals of its log, and a log entry backdated by the provider (a stop behind
the portal's back, found later by reconcile or a webhook) corrects every total computed after
it. Times in the log are whole seconds, so totals are exact integers:

- **running**: in ``started``; counts seconds, vCPU-seconds and GiB-seconds of memory at the
  resources the sandbox had;
- **disk**: in every state in which the sandbox exists (all but ``pending``, ``archived`` and
  ``gone``): billable GiB-seconds beyond ``USAGE_FREE_DISK_GIB``, and, while it does not run,
  all of its GiB-seconds as ``stopped_disk_gib_seconds``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from sandboxes.models import SandboxState, StateChange

from .cost import cost_of

RUNNING_STATES = frozenset({SandboxState.STARTED})
DISKLESS_STATES = frozenset({SandboxState.PENDING, SandboxState.ARCHIVED, SandboxState.GONE})
SECOND = timedelta(seconds=1)


@dataclass
class Usage:
    """Usage over some stretch of time, in whole seconds (and GiB- or vCPU-seconds)."""

    running_seconds: int = 0
    cpu_seconds: int = 0
    memory_gib_seconds: int = 0
    disk_gib_seconds: int = 0
    stopped_disk_gib_seconds: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    @property
    def cost(self) -> Decimal:
        return cost_of(
            cpu_seconds=self.cpu_seconds,
            memory_gib_seconds=self.memory_gib_seconds,
            disk_gib_seconds=self.disk_gib_seconds,
        )

    @property
    def running_hours(self) -> Decimal:
        return Decimal(self.running_seconds) / 3600


def whole_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def integrate(changes: Iterable[StateChange], start: datetime, end: datetime) -> Usage:
    """Usage of one sandbox over ``[start, end)`` from its log, oldest first: the last entry at
    or before ``start`` gives the state there (none: the sandbox did not exist yet)."""
    usage = Usage()
    current: StateChange | None = None
    for change in changes:
        if change.at > start and current is not None:
            _add_interval(usage, current, max(current.at, start), min(change.at, end))
        if change.at >= end:
            return usage
        current = change
    if current is not None:
        _add_interval(usage, current, max(current.at, start), end)
    return usage


def _add_interval(usage: Usage, change: StateChange, start: datetime, end: datetime) -> None:
    seconds = (end - start) // SECOND
    if seconds <= 0 or change.state in DISKLESS_STATES:
        return
    billable_disk = max(0, change.disk_gb - settings.USAGE_FREE_DISK_GIB)
    usage.disk_gib_seconds += billable_disk * seconds
    if change.state in RUNNING_STATES:
        usage.running_seconds += seconds
        usage.cpu_seconds += change.cpu * seconds
        usage.memory_gib_seconds += change.memory_gb * seconds
    else:
        usage.stopped_disk_gib_seconds += change.disk_gb * seconds


def openings(query: Q, moment: datetime):
    """The last state log entry at or before ``moment`` of each sandbox ``query`` picks (a
    filter on ``StateChange``): the state each was in then. One query, whatever the number of
    sandboxes (``DISTINCT ON`` on PostgreSQL, a correlated subquery elsewhere)."""
    before = StateChange.objects.filter(query, at__lte=moment)
    if connection.vendor == "postgresql":
        return before.order_by("sandbox_name", "-at", "-pk").distinct("sandbox_name")
    latest = StateChange.objects.filter(sandbox_name=OuterRef("sandbox_name"), at__lte=moment).order_by("-at", "-pk")
    return before.filter(pk=Subquery(latest.values("pk")[:1]))


def logs_for(query: Q, start: datetime, end: datetime) -> dict[str, list[StateChange]]:
    """The state log entries that matter for ``[start, end)`` of the sandboxes ``query`` picks
    (a filter on ``StateChange``), per sandbox name, oldest first: those in the stretch and the
    last one before it of each sandbox. Two queries, whatever the number of sandboxes."""
    logs: dict[str, list[StateChange]] = defaultdict(list)
    for entry in openings(query, start):
        logs[entry.sandbox_name].append(entry)
    for entry in StateChange.objects.filter(query, at__gt=start, at__lt=end).order_by("at", "pk"):
        logs[entry.sandbox_name].append(entry)
    return logs


def usage_between(query: Q, start: datetime, end: datetime) -> dict[str, Usage]:
    """Usage over ``[start, end)`` per sandbox name, of the sandboxes ``query`` picks."""
    start, end = whole_second(start), whole_second(end)
    return {name: integrate(log, start, end) for name, log in logs_for(query, start, end).items()}


def total(usages: Iterable[Usage]) -> Usage:
    result = Usage()
    for usage in usages:
        result = result + usage
    return result


# --- calendar -----------------------------------------------------------------------------------


# Days and months are UTC, whatever TIME_ZONE says: the roll-up's days, the budgets' months
# and Daytona's invoices all start at UTC midnight.


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def utc_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def month_start(moment: datetime) -> datetime:
    return day_start(utc_day(moment).replace(day=1))


def next_month_start(moment: datetime) -> datetime:
    first = month_start(moment)
    return day_start((first + timedelta(days=32)).date().replace(day=1))


@dataclass
class MonthToDate:
    """A user's usage this month, as their dashboard and their budget see it."""

    today: Usage
    month: Usage
    month_start: datetime
    month_end: datetime
    now: datetime

    @property
    def forecast_cost(self) -> Decimal:
        """Month-end cost if the rest of the month goes as the month so far: the spend per
        second since the month began, carried to its end."""
        elapsed = (self.now - self.month_start) // SECOND
        whole = (self.month_end - self.month_start) // SECOND
        if elapsed <= 0:
            return self.month.cost
        return (self.month.cost * whole / elapsed).quantize(Decimal("0.000001"))


def user_month_to_date(user, now: datetime | None = None) -> MonthToDate:
    """The user's usage today and this month up to ``now``, from the state log directly (exact
    and current, without waiting for the roll-up)."""
    now = whole_second(now or timezone.now())
    first = month_start(now)
    midnight = day_start(utc_day(now))
    logs = logs_for(Q(user=user), first, now)
    month = total(integrate(log, first, now) for log in logs.values())
    today = total(integrate(log, midnight, now) for log in logs.values())
    return MonthToDate(today=today, month=month, month_start=first, month_end=next_month_start(now), now=now)
