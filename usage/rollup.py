"""The roll-up: the state log integrated into one ``UsageDay`` row per sandbox and UTC day.

Each run recomputes whole days from the log, so it is idempotent and never counts anything
twice: every day from the one the last run finished in (or the first day of the log), and
further back to the day of any entry recorded since the last run (a stop behind the portal's
back, found late by reconcile or a webhook, rewrites the days it reaches into), up to today,
whose row is partial (up to ``now``). The log is read as one stream, oldest first, whatever
the number of sandboxes or days; rows are written in bulk, a day at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db import transaction
from django.db.models import Min, Q
from django.utils import timezone

from sandboxes.models import StateChange
from sandboxes.services.locks import exclusive_lock

from .metering import DISKLESS_STATES, day_start, integrate, openings, utc_day, whole_second
from .models import RollupRun, UsageDay

log = logging.getLogger(__name__)

DAY = timedelta(days=1)
WRITE_BATCH = 1000
# Entries are stamped when inserted, and may be committed a little later (a reconcile pass
# commits its batch after writing it): entries stamped this long before the last run are
# looked at again, so none committed after that run read the log is missed.
COMMIT_MARGIN = timedelta(minutes=10)
USAGE_FIELDS = ("running_seconds", "cpu_seconds", "memory_gib_seconds", "disk_gib_seconds", "stopped_disk_gib_seconds")


@dataclass(frozen=True)
class RollupReport:
    """What a run did: the days it recomputed and the rows it wrote (``skipped``: another run
    held the lock, and this one did nothing)."""

    days: int
    rows: int
    skipped: bool = False


def roll_up(*, now: datetime) -> RollupReport:
    """Recompute the ``UsageDay`` rows of every day that may have changed since the last run
    (see the module), up to ``now``, and record the run (``RollupRun``). Runs one at a time
    (an advisory lock); a run that finds the lock held returns at once, ``skipped``.

    Sandboxes with nothing to count on a day (not created yet, archived, gone) get no row
    that day, and a row left from an earlier run that no longer counts anything is removed.
    Costs are at the current rates (``USAGE_RATE_*``)."""
    now = whole_second(now)
    with exclusive_lock("usage-rollup") as acquired:
        if not acquired:
            log.info("usage roll-up skipped: another run holds the lock")
            return RollupReport(days=0, rows=0, skipped=True)
        last = RollupRun.objects.order_by("-finished_at").first()
        # Strictly later than the last run's stamp, so rows this run does not rewrite are told apart.
        stamp = timezone.now()
        if last is not None and stamp <= last.finished_at:
            stamp = last.finished_at + timedelta(microseconds=1)
        first = _first_day(last)
        today = utc_day(now)
        days = rows = 0
        if first is not None and first <= today:
            for day, usages in _daily_usage(first, today, now):
                rows += _write_day(day, usages, stamp)
                days += 1
        RollupRun.objects.create(finished_at=stamp, days=days, rows=rows)
    log.info("usage roll-up: %s days, %s rows", days, rows)
    return RollupReport(days=days, rows=rows)


def _first_day(last: RollupRun | None) -> date | None:
    """The first day to recompute: the last run's, or earlier where an entry recorded since
    reaches back further; without a last run, the log's first day (None: the log is empty)."""
    if last is None:
        earliest = StateChange.objects.aggregate(first=Min("at"))["first"]
        return utc_day(earliest) if earliest else None
    backdated = StateChange.objects.filter(recorded_at__gt=last.finished_at - COMMIT_MARGIN).aggregate(first=Min("at"))[
        "first"
    ]
    first = utc_day(last.finished_at)
    return min(first, utc_day(backdated)) if backdated else first


def _daily_usage(first: date, last: date, now: datetime) -> Iterator[tuple[date, dict]]:
    """Per day from ``first`` to ``last``: ``{sandbox_name: (usage, latest entry)}`` of the
    sandboxes with something to count. Two queries in all: the state of every sandbox when
    ``first`` began, then every entry since, oldest first."""
    start = day_start(first)
    current = {entry.sandbox_name: entry for entry in openings(Q(), start) if entry.state not in DISKLESS_STATES}
    stream = StateChange.objects.filter(at__gt=start, at__lt=now).order_by("at", "pk").iterator(chunk_size=2000)
    waiting = next(stream, None)
    day = first
    while day <= last:
        end = min(day_start(day + DAY), now)
        entries: dict[str, list[StateChange]] = {}
        while waiting is not None and waiting.at < end:
            entries.setdefault(waiting.sandbox_name, []).append(waiting)
            waiting = next(stream, None)
        usages = {}
        for name in current.keys() | entries.keys():
            log_of_day = ([current[name]] if name in current else []) + entries.get(name, [])
            usage = integrate(log_of_day, day_start(day), end)
            if any(getattr(usage, field) for field in USAGE_FIELDS):
                usages[name] = (usage, log_of_day[-1])
            if log_of_day[-1].state in DISKLESS_STATES:
                current.pop(name, None)
            else:
                current[name] = log_of_day[-1]
        yield day, usages
        day += DAY


def _write_day(day: date, usages: dict, stamp: datetime) -> int:
    rows = [
        UsageDay(
            user_id=entry.user_id,
            sandbox_id=entry.sandbox_id,
            sandbox_name=name,
            provider=entry.provider,
            day=day,
            cost=usage.cost,
            computed_at=stamp,
            **{field: getattr(usage, field) for field in USAGE_FIELDS},
        )
        for name, (usage, entry) in sorted(usages.items())
    ]
    with transaction.atomic():
        UsageDay.objects.bulk_create(
            rows,
            batch_size=WRITE_BATCH,
            update_conflicts=True,
            unique_fields=["sandbox_name", "day"],
            update_fields=["user", "sandbox", "provider", "cost", "computed_at", *USAGE_FIELDS],
        )
        UsageDay.objects.filter(day=day, computed_at__lt=stamp).delete()
    return len(rows)
