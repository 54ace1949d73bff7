"""Budgets: each user's monthly budget and running-hours cap (the deployment's defaults, an
operator's override, exempt users), the alerts at 80 % and 100 %, new starts refused at 100 %,
and with BUDGET_ACTION=stop the running sandbox stopped after a warning."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY

from sandboxes.models import AuditEvent, Sandbox, SandboxState
from sandboxes.services import sandbox_stop
from tests.budget_fixtures import HOURLY, MID_MONTH, NEXT_MONTH, clock, ran, stopped_row  # noqa: F401 (fixture)
from tests.conftest import launch, signed_in
from usage.budgets import LimitStatus, budget_status, budgets_check
from usage.models import Budget, BudgetAlert, UsageDay

pytestmark = pytest.mark.django_db


@pytest.fixture
def limits(settings):
    settings.BUDGET_MONTHLY_COST = Decimal("10.00")
    settings.BUDGET_MONTHLY_RUNNING_HOURS = 10
    settings.BUDGET_ACTION = "refuse"
    settings.BUDGET_STOP_GRACE_MINUTES = 10
    return settings


def budget_stops(outcome: str) -> float:
    return REGISTRY.get_sample_value("joepro_idle_stops_total", {"reason": "budget", "outcome": outcome}) or 0.0


def launched_then_stopped(user) -> Sandbox:
    assert launch(signed_in(user)).status_code == 200
    sandbox = Sandbox.objects.get(user=user)
    sandbox_stop(sandbox=sandbox, actor_type=AuditEvent.ActorType.USER, actor=user, reason="stopped by its owner")
    assert sandbox.state == SandboxState.STOPPED
    return sandbox


# --- limits ------------------------------------------------------------------------------------


def test_the_defaults_apply_to_everyone_and_usage_comes_from_the_state_log(clock, limits, owner, teammate):
    ran(owner, 4)

    status = budget_status(owner)

    assert status.cost == LimitStatus("cost", Decimal("10.00"), Decimal("0.663696"))  # 4 h at 0.165924 an hour
    assert Decimal("0.663696") == Decimal(str(round(4 * HOURLY, 6)))
    assert status.running_hours == LimitStatus("running_hours", Decimal(10), Decimal(4))
    assert status.running_hours.percent == 40.0
    assert not status.exceeded and status.stop_at is None
    assert status.action == "refuse" and status.resets_at == NEXT_MONTH
    assert budget_status(teammate).running_hours.used == 0


def test_an_override_replaces_only_the_limits_it_sets(clock, limits, owner, teammate):
    Budget.objects.create(user=owner, monthly_running_hours=40)
    Budget.objects.create(user=teammate, monthly_cost=Decimal("2.50"))

    mine, theirs = budget_status(owner), budget_status(teammate)

    assert (mine.cost.allowed, mine.running_hours.allowed) == (Decimal("10.00"), 40)
    assert (theirs.cost.allowed, theirs.running_hours.allowed) == (Decimal("2.50"), 10)


def test_exempt_lifts_both_limits_and_no_default_means_no_limit(clock, limits, owner, teammate):
    Budget.objects.create(user=owner, monthly_cost=Decimal("1.00"), exempt=True)
    ran(owner, 100)

    status = budget_status(owner)

    assert status.cost is None and status.running_hours is None and not status.exceeded
    limits.BUDGET_MONTHLY_COST = None
    limits.BUDGET_MONTHLY_RUNNING_HOURS = None
    assert budget_status(teammate).limits == []


def test_percent_and_exceeded_at_the_edges():
    assert LimitStatus("cost", Decimal("10"), Decimal("10")).exceeded
    assert not LimitStatus("cost", Decimal("10"), Decimal("9.999999")).exceeded
    assert LimitStatus("cost", Decimal("0"), Decimal("0")).percent == 100.0
    assert LimitStatus("running_hours", Decimal("40"), Decimal("30")).percent == 75.0


# --- alerts ------------------------------------------------------------------------------------


def test_alerts_at_80_and_100_percent_are_raised_and_emailed_once(clock, limits, owner, teammate, mailoutbox):
    stopped_row(owner)
    stopped_row(teammate)
    ran(owner, 8.5)

    budgets_check()
    budgets_check()

    (alert,) = BudgetAlert.objects.all()
    assert (alert.user, alert.limit, alert.threshold, alert.month) == (owner, "running_hours", 80, date(2026, 12, 1))
    assert alert.used == Decimal("8.5") and alert.allowed == 10 and alert.emailed_at is not None
    (email,) = mailoutbox
    assert email.to == [owner.email]
    assert email.subject == "You have used 80 % of your running hours for this month"
    assert "8.50 of your 10 running hours this month (80 %)" in email.body
    assert "1 December" not in email.body and "1 January 2027 (00:00 UTC)" in email.body
    assert "ask an operator to raise your running hours" in email.body

    ran(owner, 1.5, name="second-sandbox")
    budgets_check()
    budgets_check()

    assert sorted(BudgetAlert.objects.values_list("threshold", flat=True)) == [80, 100]
    assert len(mailoutbox) == 2
    assert mailoutbox[1].subject == "You have used up your running hours for this month"
    assert "10 of your 10 running hours this month: none is left" in mailoutbox[1].body
    assert "keeps running, but it cannot be started again" in mailoutbox[1].body
    assert not BudgetAlert.objects.filter(user=teammate).exists()


def test_crossing_both_thresholds_at_once_sends_one_email(clock, limits, owner, mailoutbox):
    stopped_row(owner)
    ran(owner, 30, cpu=4)  # 30 h at 0.266724 an hour: $8.00; and 30 of 10 running hours

    report = budgets_check()

    assert report["alerts"] == 3  # 80 and 100 % of the hours, 80 % of the budget
    subjects = sorted(email.subject for email in mailoutbox)
    assert subjects == [
        "You have used 80 % of your monthly budget for this month",
        "You have used up your running hours for this month",
    ]
    assert "$8.00 of your monthly budget of $10.00" in "".join(e.body for e in mailoutbox)


def test_an_operator_raising_the_limit_withdraws_the_alerts_it_no_longer_holds(clock, limits, owner, mailoutbox):
    stopped_row(owner)
    ran(owner, 10)
    budgets_check()
    assert BudgetAlert.objects.count() == 2

    Budget.objects.create(user=owner, monthly_running_hours=12)
    report = budgets_check()

    ((threshold, allowed),) = BudgetAlert.objects.values_list("threshold", "allowed")
    assert (threshold, allowed) == (80, 12)  # 10 of 12 hours: the 80 % alert again, the 100 % one gone
    assert report["withdrawn"] == 1 and report["alerts"] == 1
    assert len(mailoutbox) == 2 and "10 of your 12 running hours" in mailoutbox[1].body


def test_only_users_near_a_limit_by_the_roll_up_are_metered_exactly(clock, limits, owner, teammate):
    """The roll-up's totals, plus what each sandbox could have run since, pick the candidates."""
    limits.BUDGET_MONTHLY_COST = None
    rolled_up_at = MID_MONTH - timedelta(minutes=30)
    for user, hours in ((owner, 9), (teammate, 1)):
        row = stopped_row(user)
        type(row).objects.filter(pk=row.pk).update(state_changed_at=MID_MONTH - timedelta(days=1))
        UsageDay.objects.create(
            user=user,
            sandbox_name=row.remote_name,
            provider="daytona",
            day=date(2026, 12, 14),
            running_seconds=hours * 3600,
            computed_at=rolled_up_at,
        )
        ran(user, hours)

    report = budgets_check()

    assert report["candidates"] == 1
    assert list(BudgetAlert.objects.values_list("user", "threshold")) == [(owner.pk, 80)]


# --- refusing new starts -----------------------------------------------------------------------


def test_a_start_over_budget_is_refused_with_the_budget_in_the_error(clock, daytona, limits, owner):
    limits.BUDGET_MONTHLY_COST = Decimal("1.00")
    sandbox = launched_then_stopped(owner)
    ran(owner, 7)  # 7 h at 0.165924: $1.16
    client = signed_in(owner)

    response = launch(client)

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert error["budget"] == {
        "limit": "cost",
        "allowed": "1.00",
        "used": "1.16",
        "currency": "USD",
        "resetsAt": "2027-01-01T00:00:00+00:00",
        "action": "refuse",
    }
    assert "$1.16 of your monthly budget of $1.00" in error["message"]
    assert "1 January 2027" in error["message"] and "ask an operator to raise your budget" in error["message"]
    assert daytona.calls["start"] == 0
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.STOPPED and sandbox.last_error_code == "budget_exceeded"
    status = client.get("/api/sandbox").json()["sandbox"]
    assert status["lastError"]["code"] == "budget_exceeded" and "$1.16" in status["lastError"]["message"]


def test_the_first_create_is_refused_too(clock, daytona, limits, owner):
    ran(owner, 10)

    response = launch(signed_in(owner))

    assert response.status_code == 403
    budget = response.json()["error"]["budget"]
    assert (budget["limit"], budget["allowed"], budget["used"]) == ("running_hours", "10", "10")
    assert "currency" not in budget
    assert daytona.calls["create"] == 0


def test_a_running_sandbox_is_reused_whatever_the_budget(clock, daytona, limits, owner):
    first = launch(signed_in(owner))
    ran(owner, 12)

    again = launch(signed_in(owner))

    assert again.status_code == 200
    assert again.json()["sandbox"]["id"] == first.json()["sandbox"]["id"]
    assert (daytona.calls["create"], daytona.calls["start"]) == (1, 0)


def test_an_exempt_user_starts_over_any_limit(clock, daytona, limits, owner):
    launched_then_stopped(owner)
    ran(owner, 50)
    Budget.objects.create(user=owner, exempt=True)

    assert launch(signed_in(owner)).status_code == 200
    assert daytona.calls["start"] == 1


def test_starts_are_allowed_again_when_the_month_rolls_over(clock, daytona, limits, owner):
    launched_then_stopped(owner)
    ran(owner, 10)
    assert launch(signed_in(owner)).status_code == 403

    clock.move_to(NEXT_MONTH + timedelta(seconds=5))

    assert budget_status(owner).running_hours.used == 0
    assert launch(signed_in(owner)).status_code == 200
    assert daytona.calls["start"] == 1


# --- the stop action ---------------------------------------------------------------------------


def test_the_stop_action_warns_then_stops_the_running_sandbox_after_the_grace(
    clock, daytona, limits, owner, mailoutbox
):
    limits.BUDGET_ACTION = "stop"
    assert launch(signed_in(owner)).status_code == 200
    sandbox = Sandbox.objects.get(user=owner)
    ran(owner, 10)
    stopped_before = budget_stops("stopped")

    budgets_check()

    alert = BudgetAlert.objects.get(threshold=100)
    assert alert.stop_after - alert.raised_at == timedelta(minutes=10)
    assert budget_status(owner).stop_at == alert.stop_after
    (email,) = mailoutbox
    assert f"will be stopped at {alert.stop_after:%H:%M} UTC (in about 10 min)" in email.body
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.STARTED and daytona.calls["stop"] == 0
    assert launch(signed_in(owner)).status_code == 200  # still running: reused, not refused

    clock.shift(timedelta(minutes=9))
    budgets_check()
    assert daytona.calls["stop"] == 0

    clock.shift(timedelta(minutes=2))
    report = budgets_check()

    assert report["stopped"] == 1
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.STOPPED
    assert daytona.sandbox(sandbox.remote_id)["state"] == "stopped"
    stop = AuditEvent.objects.get(sandbox=sandbox, action=AuditEvent.Action.STOP)
    assert (stop.actor_type, stop.reason) == (AuditEvent.ActorType.SYSTEM, "budget: running hours used up")
    assert budget_stops("stopped") == stopped_before + 1
    refused = launch(signed_in(owner))
    assert refused.status_code == 403 and refused.json()["error"]["budget"]["action"] == "stop"
    assert len(mailoutbox) == 1


def test_the_stop_action_spares_a_user_whose_limit_was_raised_meanwhile(clock, daytona, limits, owner):
    limits.BUDGET_ACTION = "stop"
    assert launch(signed_in(owner)).status_code == 200
    ran(owner, 10)
    budgets_check()

    Budget.objects.create(user=owner, monthly_running_hours=20)
    clock.shift(timedelta(minutes=11))
    report = budgets_check()

    assert report["stopped"] == 0 and daytona.calls["stop"] == 0
    assert not BudgetAlert.objects.exists()
