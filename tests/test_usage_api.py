"""GET /api/sandbox/usage: what the signed-in user's sandbox cost today and this month, the
forecast to the month's end, their budget and its alerts, and the running sandbox's memory and
disk, computed from the state log and checked against a hand computation; nobody else's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.test import Client

from sandboxes.models import Sandbox, SandboxState
from tests.conftest import signed_in
from usage.models import Budget, BudgetAlert, ResourceSample

pytestmark = pytest.mark.django_db

URL = "/api/sandbox/usage"
NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
GIB = 1024**3


def sandbox_with_history(user, name: str, history: list[tuple[datetime, SandboxState]], **resources) -> Sandbox:
    """A sandbox of ``user`` (2 vCPU, 4 GiB, 8 GiB disk unless told) that went through
    ``history``, logged as the portal logs every state change."""
    sandbox = Sandbox(
        user=user,
        provider="local",
        remote_name=name,
        remote_id=f"id-{name}",
        cpu=resources.get("cpu", 2),
        memory_gb=resources.get("memory_gb", 4),
        disk_gb=resources.get("disk_gb", 8),
    )
    for at, state in history:
        sandbox.set_state(state, at)
        sandbox.save()
    return sandbox


@pytest.fixture
def travel():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def owner_history(travel, owner):
    """Ran 2 h on 10 March, stopped for five days, running again since 10:00 today (15 March)."""
    return sandbox_with_history(
        owner,
        "sb-owner",
        [
            (datetime(2026, 3, 10, 8, 0, tzinfo=UTC), SandboxState.STARTED),
            (datetime(2026, 3, 10, 10, 0, tzinfo=UTC), SandboxState.STOPPED),
            (datetime(2026, 3, 15, 10, 0, tzinfo=UTC), SandboxState.STARTED),
        ],
    )


@pytest.fixture
def teammate_history(travel, teammate):
    """A bigger sandbox of someone else, running all month."""
    return sandbox_with_history(
        teammate,
        "sb-teammate",
        [(datetime(2026, 3, 1, 0, 0, tzinfo=UTC), SandboxState.STARTED)],
        cpu=8,
        memory_gb=32,
        disk_gb=50,
    )


def usage_of(user) -> dict:
    response = signed_in(user).get(URL)
    assert response.status_code == 200, response.content
    assert response["Cache-Control"].startswith("no-store")
    return response.json()


def test_costs_and_forecast_match_a_hand_computation(owner, owner_history, teammate_history):
    body = usage_of(owner)

    # Today, 00:00-12:00: stopped 10 h, running 2 h. Running: 2 vCPU x 7200 s at 0.0504/h and
    # 4 GiB x 7200 s at 0.0162/h; disk: (8 - 5 free) GiB x 43200 s at 0.000108/h.
    # (14400 x 0.0504 + 28800 x 0.0162 + 129600 x 0.000108) / 3600 = 1206.3168 / 3600.
    assert body["today"] == {"cost": "0.335088", "runningSeconds": 7200, "stoppedDiskGibHours": "80.00"}
    # The month: 2 h + 2 h running, 5 days stopped (8 GiB x 120 h stopped disk), disk billed
    # over the 124 h it existed: (28800 x 0.0504 + 57600 x 0.0162 + 1339200 x 0.000108) / 3600.
    assert body["month"] == {"cost": "0.702576", "runningSeconds": 14400, "stoppedDiskGibHours": "960.00"}
    # 14.5 of March's 31 days gone: 0.702576 x 31 / 14.5.
    assert body["forecast"] == {"monthEndCost": "1.502059"}
    assert body["currency"] == "USD"
    assert body["rates"] == {
        "vcpuHour": "0.0504",
        "memoryGibHour": "0.0162",
        "diskGibHour": "0.000108",
        "freeDiskGib": 5,
    }
    assert body["period"] == {"start": "2026-03-01T00:00:00+00:00", "end": "2026-04-01T00:00:00+00:00"}
    assert body["now"] == "2026-03-15T12:00:00+00:00"
    assert body["budget"] == {
        "cost": None,
        "runningHours": None,
        "action": "refuse",
        "exceeded": False,
        "stopAt": None,
        "resetsAt": "2026-04-01T00:00:00+00:00",
    }
    assert body["alerts"] == [] and body["resources"] is None


def test_a_new_user_sees_zeros(travel, outsider, teammate_history):
    body = usage_of(outsider)

    assert body["today"] == {"cost": "0.000000", "runningSeconds": 0, "stoppedDiskGibHours": "0.00"}
    assert body["month"] == {"cost": "0.000000", "runningSeconds": 0, "stoppedDiskGibHours": "0.00"}
    assert body["forecast"] == {"monthEndCost": "0.000000"}
    assert body["alerts"] == [] and body["resources"] is None


def test_signed_out_is_401():
    response = Client().get(URL)

    assert response.status_code == 401
    assert response["Cache-Control"].startswith("no-store")
    assert response.json()["error"]["code"] == "unauthenticated"


def test_the_default_budget_and_an_override(owner, owner_history, teammate, teammate_history, settings):
    settings.BUDGET_MONTHLY_COST = Decimal("100")
    settings.BUDGET_MONTHLY_RUNNING_HOURS = 300
    Budget.objects.create(user=owner, monthly_cost=Decimal("0.80"), monthly_running_hours=5)

    budget = usage_of(owner)["budget"]

    # 0.702576 of 0.80; 4 of 5 running hours.
    assert budget["cost"] == {"allowed": "0.80", "used": "0.70", "percent": 87.82}
    assert budget["runningHours"] == {"allowed": "5", "used": "4.00", "percent": 80.0}
    assert budget["exceeded"] is False and budget["stopAt"] is None
    # The teammate has the deployment's default: 8 vCPU and 32 GiB for 348 h.
    theirs = usage_of(teammate)["budget"]
    assert theirs["cost"]["allowed"] == "100.00" and theirs["runningHours"] == {
        "allowed": "300",
        "used": "348.00",
        "percent": 116.0,
    }
    assert theirs["exceeded"] is True


def test_a_used_up_budget_with_the_stop_action_says_when_it_stops(owner, owner_history, settings):
    settings.BUDGET_ACTION = "stop"
    Budget.objects.create(user=owner, monthly_cost=Decimal("0.50"))
    stop_after = NOW + timedelta(minutes=10)
    BudgetAlert.objects.create(
        user=owner,
        month=NOW.date().replace(day=1),
        limit=BudgetAlert.Limit.COST,
        threshold=100,
        used=Decimal("0.70"),
        allowed=Decimal("0.50"),
        raised_at=NOW - timedelta(minutes=1),
        stop_after=stop_after,
    )

    body = usage_of(owner)

    assert body["budget"]["exceeded"] is True
    assert body["budget"]["action"] == "stop"
    assert body["budget"]["stopAt"] == stop_after.isoformat()
    [alert] = body["alerts"]
    assert alert["threshold"] == 100
    assert "stopped" in alert["message"] and "refused" in alert["message"]


def test_this_months_budget_alerts_of_the_user_only(owner, owner_history, teammate):
    month = NOW.date().replace(day=1)
    common = {"limit": BudgetAlert.Limit.COST, "used": Decimal("8.10"), "allowed": Decimal("10")}
    BudgetAlert.objects.create(user=owner, month=month, threshold=80, raised_at=NOW - timedelta(hours=1), **common)
    BudgetAlert.objects.create(
        user=owner, month=datetime(2026, 2, 1).date(), threshold=100, raised_at=NOW - timedelta(days=20), **common
    )
    BudgetAlert.objects.create(user=teammate, month=month, threshold=100, raised_at=NOW, **common)

    alerts = usage_of(owner)["alerts"]

    assert alerts == [
        {
            "kind": "budget",
            "limit": "cost",
            "threshold": 80,
            "raisedAt": "2026-03-15T11:00:00+00:00",
            "message": "You have used 80 % of your monthly budget (8.10 of 10.00 USD).",
        }
    ]
    assert usage_of(teammate)["alerts"][0]["threshold"] == 100


def test_the_running_sandboxs_resources_and_their_alert(owner, owner_history, teammate, teammate_history):
    ResourceSample.objects.create(
        sandbox=owner_history,
        sampled_at=NOW - timedelta(seconds=30),
        memory_bytes=int(3.8 * GIB),
        memory_limit_bytes=4 * GIB,
        disk_bytes=2 * GIB,
        disk_limit_bytes=8 * GIB,
        memory_alerted_at=NOW - timedelta(minutes=3),
    )
    ResourceSample.objects.create(
        sandbox=teammate_history,
        sampled_at=NOW,
        memory_bytes=1,
        memory_limit_bytes=2,
        disk_bytes=50 * GIB,
        disk_limit_bytes=50 * GIB,
        disk_alerted_at=NOW,
    )

    body = usage_of(owner)

    assert body["resources"] == {
        "sampledAt": "2026-03-15T11:59:30+00:00",
        "memory": {"usedBytes": int(3.8 * GIB), "limitBytes": 4 * GIB, "percent": 95.0},
        "disk": {"usedBytes": 2 * GIB, "limitBytes": 8 * GIB, "percent": 25.0},
    }
    assert body["alerts"] == [
        {
            "kind": "resource",
            "resource": "memory",
            "percent": 95.0,
            "raisedAt": "2026-03-15T11:57:00+00:00",
            "message": "Your sandbox uses 95 % of its memory (3.8 of 4.0 GiB).",
        }
    ]
    assert [alert["resource"] for alert in usage_of(teammate)["alerts"]] == ["disk"]


def test_a_stopped_sandbox_shows_no_resources(owner, owner_history):
    ResourceSample.objects.create(
        sandbox=owner_history,
        sampled_at=NOW - timedelta(minutes=5),
        memory_bytes=4 * GIB,
        memory_limit_bytes=4 * GIB,
        disk_bytes=1,
        disk_limit_bytes=8 * GIB,
        memory_alerted_at=NOW - timedelta(minutes=5),
    )
    owner_history.set_state(SandboxState.STOPPED, NOW)
    owner_history.save()

    body = usage_of(owner)

    assert body["resources"] is None and body["alerts"] == []
    assert body["today"]["runningSeconds"] == 7200
