"""What the budget tests share: a clock in the middle of a month, and usage put in the state log
as the portal would have recorded it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.utils import timezone

from sandboxes.models import Sandbox, SandboxState, StateChange

MID_MONTH = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)
NEXT_MONTH = datetime(2027, 1, 1, tzinfo=UTC)
# Sandboxes of 2 vCPU, 4 GiB and 8 GiB disk (3 beyond the free 5) cost this much per running hour.
HOURLY = 2 * 0.0504 + 4 * 0.0162 + 3 * 0.000108


@pytest.fixture
def clock():
    """Noon on 15 December 2026, ticking."""
    with time_machine.travel(MID_MONTH, tick=True) as traveller:
        yield traveller


def ran(user, hours: float, *, name: str = "earlier-sandbox", cpu: int = 2) -> None:
    """The user had a sandbox that ran ``hours`` this month and is gone since a minute ago, in
    the state log as the portal records it."""
    ended = timezone.now().replace(microsecond=0) - timedelta(minutes=1)
    started = ended - timedelta(seconds=round(hours * 3600))
    entry = {"user": user, "sandbox_name": name, "provider": "daytona", "cpu": cpu, "memory_gb": 4, "disk_gb": 8}
    StateChange.objects.bulk_create(
        [
            StateChange(**entry, state=SandboxState.STARTED, at=started),
            StateChange(**entry, state=SandboxState.GONE, at=ended),
        ]
    )


def stopped_row(user) -> Sandbox:
    """The user's sandbox row as a stopped sandbox leaves it (no remote behind it)."""
    now = timezone.now().replace(microsecond=0)
    return Sandbox.objects.create(
        user=user,
        provider="daytona",
        remote_name=f"sandbox-{user.pk}",
        state=SandboxState.STOPPED,
        state_changed_at=now,
        cpu=2,
        memory_gb=4,
        disk_gb=8,
    )
