"""A simulated month of two users' sandboxes, metered to the second.

Everything goes through the real services: launches (``sandbox_launch``) on the fake Daytona
through the real SDK and on a real local sandbox, stops by the owner, an idle stop, a stop
made by Daytona's own auto-stop while the portal was down (found only later by reconcile), a
webhook delivered late and one never delivered, portal restarts (new provider objects, new
database connections) between phases, and day and month boundaries crossed while running.
The clock is stopped (time-machine, in every thread, the fake's included) and moved from one
phase to the next, so the hand computation below is exact.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import pytest
import time_machine
from django.db import connections
from django.db.models import Sum

from sandboxes import services
from sandboxes.models import Sandbox, SandboxState
from sandboxes.providers import reset_providers
from sandboxes.services.webhooks import daytona_webhook_receive
from tests.fake_daytona.webhooks import new_message_id, new_secret, signed_headers
from tests.local_fixtures import local_root, local_settings  # noqa: F401 - fixtures
from usage.cost import cost_of
from usage.metering import Usage, user_month_to_date
from usage.models import UsageDay
from usage.rollup import roll_up

pytestmark = pytest.mark.django_db(transaction=True)

FREE_DISK_GIB = 5
DAYTONA = {"cpu": 2, "memory_gb": 4, "disk_gb": 8}
LOCAL = {"cpu": 1, "memory_gb": 2, "disk_gb": 6}


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# The hand computation: what each sandbox was, from when to when (UTC), as the providers saw it.
# A sandbox exists (its disk counts) from its creation; it runs only while started.
DAYTONA_TIMELINE = [
    # from                  to                     state       what happened at "to"
    ("2027-02-27 09:00:00", "2027-02-27 17:30:00", "started"),  # the owner stops it
    ("2027-02-27 17:30:00", "2027-02-28 20:00:00", "stopped"),  # launched again (resumed)
    ("2027-02-28 20:00:00", "2027-03-01 01:15:00", "started"),  # idle stop, past the month's end
    ("2027-03-01 01:15:00", "2027-03-02 08:00:00", "stopped"),  # launched again
    ("2027-03-02 08:00:00", "2027-03-02 14:07:00", "started"),  # Daytona's auto-stop, portal down
    ("2027-03-02 14:07:00", "2027-03-05 09:00:00", "stopped"),  # launched again
    ("2027-03-05 09:00:00", "2027-03-05 11:20:00", "started"),  # stopped on Daytona, webhook late
    ("2027-03-05 11:20:00", "2027-03-20 22:00:00", "stopped"),  # launched again
    ("2027-03-20 22:00:00", "2027-03-21 03:30:00", "started"),  # stopped on Daytona, webhook lost
    ("2027-03-21 03:30:00", "2027-03-31 12:00:00", "stopped"),  # now
]
LOCAL_TIMELINE = [
    ("2027-03-10 10:00:00", "2027-03-10 16:45:00", "started"),  # the owner stops it
    ("2027-03-10 16:45:00", "2027-03-11 23:00:00", "stopped"),  # launched again
    ("2027-03-11 23:00:00", "2027-03-12 01:00:00", "started"),  # the owner stops it, next day
    ("2027-03-12 01:00:00", "2027-03-31 12:00:00", "stopped"),  # now
]
NOW = t("2027-03-31 12:00:00")
MARCH = t("2027-03-01 00:00:00")


def by_hand(timeline, resources, *, since: datetime) -> Usage:
    """The usage the timeline adds up to from ``since`` on, computed the plain way."""
    cpu, memory, disk = resources["cpu"], resources["memory_gb"], resources["disk_gb"]
    usage = Usage()
    for start, end, state in timeline:
        seconds = int((t(end) - max(t(start), since)).total_seconds())
        if seconds <= 0:
            continue
        usage.disk_gib_seconds += (disk - FREE_DISK_GIB) * seconds
        if state == "started":
            usage.running_seconds += seconds
            usage.cpu_seconds += cpu * seconds
            usage.memory_gib_seconds += memory * seconds
        else:
            usage.stopped_disk_gib_seconds += disk * seconds
    return usage


class Portal:
    """The portal's processes, on a stopped clock moved phase by phase."""

    def __init__(self, traveller, settings):
        self.traveller = traveller
        self.settings = settings

    def at(self, text: str) -> datetime:
        moment = t(text)
        self.traveller.move_to(moment)
        return moment

    def restart(self) -> None:
        """As if every portal process restarted: nothing held in memory survives."""
        reset_providers()
        connections.close_all()

    def launch(self, user, when: str, *, provider: str | None = None) -> Sandbox:
        now = self.at(when)
        if provider:
            self.settings.SANDBOX_PROVIDER = provider
        result = services.sandbox_launch(user=user, now=now)
        assert result.ready, result.sandbox.last_error
        return Sandbox.objects.get(user=user)

    def stop_by_owner(self, user, when: str) -> None:
        self.at(when)
        services.sandbox_stop_own(sandbox=Sandbox.objects.get(user=user), user=user)
        assert Sandbox.objects.get(user=user).state == SandboxState.STOPPED

    def beat(self, when: str) -> None:
        """What Celery beat runs: reconcile, the idle stop, the roll-up."""
        now = self.at(when)
        services.sandboxes_reconcile(now=now)
        services.sandboxes_stop_idle(now=now)
        roll_up(now=now)


def deliver(secret: str, remote_id: str, old: str, new: str, happened_at: datetime) -> str:
    body = json.dumps(
        {
            "event": "sandbox.state.updated",
            "timestamp": happened_at.isoformat().replace("+00:00", "Z"),
            "id": remote_id,
            "organizationId": "org",
            "oldState": old,
            "newState": new,
            "updatedAt": happened_at.isoformat().replace("+00:00", "Z"),
        }
    )
    return daytona_webhook_receive(body=body.encode(), headers=signed_headers(secret, new_message_id(), body))


@pytest.fixture
def month_settings(settings, daytona, local_settings):  # noqa: F811
    settings.SANDBOX_PROVIDER = "daytona"
    settings.USAGE_FREE_DISK_GIB = FREE_DISK_GIB
    settings.USAGE_RATE_VCPU_HOUR = Decimal("0.0504")
    settings.USAGE_RATE_MEMORY_GIB_HOUR = Decimal("0.0162")
    settings.USAGE_RATE_DISK_GIB_HOUR = Decimal("0.000108")
    settings.SANDBOX_IDLE_MINUTES = 300
    settings.SANDBOX_REMOTE_AUTO_STOP_MINUTES = 360
    settings.DAYTONA_WEBHOOK_SECRET = new_secret()
    return settings


def test_a_month_of_sandboxes_is_metered_to_the_second(month_settings, daytona, owner, teammate):
    settings = month_settings
    with time_machine.travel(t("2027-02-27 08:00:00"), tick=False) as traveller:
        portal = Portal(traveller, settings)

        # February: created, stopped by its owner, resumed the next evening.
        settings.SANDBOX_CPU, settings.SANDBOX_MEMORY_GB, settings.SANDBOX_DISK_GB = DAYTONA.values()
        sandbox = portal.launch(owner, "2027-02-27 09:00:00", provider="daytona")
        remote_id = sandbox.remote_id
        portal.stop_by_owner(owner, "2027-02-27 17:30:00")
        portal.restart()
        portal.launch(owner, "2027-02-28 20:00:00")
        portal.beat("2027-02-28 23:00:00")  # still running at the month's end
        portal.restart()

        # The idle stop, in March.
        portal.beat("2027-03-01 01:15:00")
        assert Sandbox.objects.get(user=owner).state == SandboxState.STOPPED

        # Daytona's own auto-stop while the portal is down; reconcile finds it hours later.
        portal.launch(owner, "2027-03-02 08:00:00")
        portal.restart()
        portal.at("2027-03-02 14:07:00")
        assert daytona.run_autostop() == [remote_id]
        portal.beat("2027-03-02 18:00:00")
        assert Sandbox.objects.get(user=owner).state == SandboxState.STOPPED

        # Stopped on Daytona's side; its webhook arrives 25 minutes late (a Svix retry).
        portal.launch(owner, "2027-03-05 09:00:00")
        portal.at("2027-03-05 11:20:00")
        daytona.set_state(remote_id, "stopped")
        portal.at("2027-03-05 11:45:00")
        assert deliver(settings.DAYTONA_WEBHOOK_SECRET, remote_id, "started", "stopped", t("2027-03-05 11:20:00")) == (
            "applied"
        )
        assert Sandbox.objects.get(user=owner).state == SandboxState.STOPPED

        # The teammate's local sandbox: two sessions, the second over midnight.
        settings.SANDBOX_CPU, settings.SANDBOX_MEMORY_GB, settings.SANDBOX_DISK_GB = LOCAL.values()
        portal.launch(teammate, "2027-03-10 10:00:00", provider="local")
        portal.stop_by_owner(teammate, "2027-03-10 16:45:00")
        portal.restart()
        portal.launch(teammate, "2027-03-11 23:00:00")
        portal.beat("2027-03-12 00:30:00")
        portal.stop_by_owner(teammate, "2027-03-12 01:00:00")

        # Running over midnight, stopped on Daytona's side, and its webhook never comes.
        portal.launch(owner, "2027-03-20 22:00:00")
        portal.at("2027-03-21 03:30:00")
        daytona.set_state(remote_id, "stopped")
        portal.restart()
        portal.beat("2027-03-21 09:00:00")
        assert Sandbox.objects.get(user=owner).state == SandboxState.STOPPED

        portal.restart()
        portal.beat("2027-03-31 12:00:00")
        owner_month = user_month_to_date(owner, NOW)
        teammate_month = user_month_to_date(teammate, NOW)

    expected_owner = by_hand(DAYTONA_TIMELINE, DAYTONA, since=MARCH)
    expected_teammate = by_hand(LOCAL_TIMELINE, LOCAL, since=MARCH)
    # Cross-checks of the table: running time in March, by hand.
    assert expected_owner.running_seconds == (75 + 6 * 60 + 7 + 2 * 60 + 20 + 5 * 60 + 30) * 60
    assert expected_teammate.running_seconds == (6 * 60 + 45 + 2 * 60) * 60

    assert owner_month.month == expected_owner
    assert teammate_month.month == expected_teammate
    assert owner_month.today == Usage(
        disk_gib_seconds=3 * 12 * 3600, stopped_disk_gib_seconds=8 * 12 * 3600
    )  # stopped since the 21st

    assert rolled_up(owner, since=MARCH.date()) == expected_owner
    assert rolled_up(teammate, since=MARCH.date()) == expected_teammate
    whole_owner = by_hand(DAYTONA_TIMELINE, DAYTONA, since=t("2027-02-27 00:00:00"))
    assert rolled_up(owner, since=t("2027-02-01 00:00:00").date()) == whole_owner
    february = rolled_up(owner, since=t("2027-02-01 00:00:00").date(), before=MARCH.date())
    assert february.running_seconds == (8 * 60 + 30 + 4 * 60) * 60

    expected_cost = (
        Decimal(expected_owner.cpu_seconds) * Decimal("0.0504")
        + Decimal(expected_owner.memory_gib_seconds) * Decimal("0.0162")
        + Decimal(expected_owner.disk_gib_seconds) * Decimal("0.000108")
    ) / 3600
    assert owner_month.month.cost == expected_cost.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
    march_rows = UsageDay.objects.filter(user=owner, day__gte=MARCH.date())
    rounding = Decimal("0.0000005") * march_rows.count()  # each day's cost is rounded to a millionth
    assert abs(march_rows.aggregate(cost=Sum("cost"))["cost"] - expected_cost) <= rounding
    assert owner_month.month.cost == cost_of(
        cpu_seconds=expected_owner.cpu_seconds,
        memory_gib_seconds=expected_owner.memory_gib_seconds,
        disk_gib_seconds=expected_owner.disk_gib_seconds,
    )


def rolled_up(user, *, since, before=None) -> Usage:
    rows = UsageDay.objects.filter(user=user, day__gte=since)
    if before is not None:
        rows = rows.filter(day__lt=before)
    sums = rows.aggregate(
        **{name: Sum(name) for name in ("running_seconds", "cpu_seconds", "memory_gib_seconds")},
        disk=Sum("disk_gib_seconds"),
        stopped=Sum("stopped_disk_gib_seconds"),
    )
    return Usage(
        running_seconds=sums["running_seconds"] or 0,
        cpu_seconds=sums["cpu_seconds"] or 0,
        memory_gib_seconds=sums["memory_gib_seconds"] or 0,
        disk_gib_seconds=sums["disk"] or 0,
        stopped_disk_gib_seconds=sums["stopped"] or 0,
    )
