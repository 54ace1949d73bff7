"""Celery tasks of usage: thin doors to its services, run by beat. Idempotent, like the
sandboxes' tasks: each recomputes from the database rather than counting runs."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone


@shared_task(acks_late=True, soft_time_limit=540, time_limit=600, ignore_result=True)
def roll_up_usage() -> dict:
    """Beat: integrate the state log into daily usage rows (see ``usage.rollup.roll_up``)."""
    from .rollup import roll_up

    report = roll_up(now=timezone.now())
    return {"days": report.days, "rows": report.rows}


@shared_task(acks_late=True, soft_time_limit=50, time_limit=60, ignore_result=True)
def check_budgets() -> dict:
    """Beat: raise budget alerts and apply the budget action (see ``usage.budgets.budgets_check``)."""
    from .budgets import budgets_check

    return budgets_check(now=timezone.now())


@shared_task(acks_late=True, soft_time_limit=50, time_limit=60, ignore_result=True)
def sample_resources() -> dict:
    """Beat: measure memory and disk of running sandboxes (see ``usage.resources.resources_sample``)."""
    from .resources import resources_sample

    return resources_sample(now=timezone.now())
