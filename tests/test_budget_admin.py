"""Budgets in the operators' console: overrides listed and searched, set from the user's own
page, and the alerts shown read-only."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.utils import timezone

from usage.models import Budget, BudgetAlert

pytestmark = pytest.mark.django_db


def test_the_budget_list_shows_limits_and_defaults_and_searches_by_email(console, owner, teammate, settings):
    settings.BUDGET_MONTHLY_RUNNING_HOURS = 40
    Budget.objects.create(user=owner, monthly_cost=Decimal("25.00"))
    Budget.objects.create(user=teammate, exempt=True)

    page = console.get("/admin/usage/budget/").content.decode()
    found = console.get("/admin/usage/budget/", {"q": "teammate@"}).content.decode()

    assert "owner@example.com" in page and "25.00 USD" in page and "default (40)" in page
    assert "teammate@example.com" in found and "owner@example.com" not in found


def test_an_override_is_set_on_the_users_own_page(console, owner):
    url = f"/admin/auth/user/{owner.pk}/change/"
    form = console.get(url)
    assert form.status_code == 200 and "budget override" in form.content.decode().lower()

    response = console.post(
        url,
        {
            "username": owner.username,
            "email": owner.email,
            "is_active": "on",
            "date_joined_0": "2026-12-01",
            "date_joined_1": "00:00:00",
            "initial-date_joined_0": "2026-12-01",
            "initial-date_joined_1": "00:00:00",
            "budget-TOTAL_FORMS": "1",
            "budget-INITIAL_FORMS": "0",
            "budget-MIN_NUM_FORMS": "0",
            "budget-MAX_NUM_FORMS": "1",
            "budget-0-monthly_running_hours": "80",
            "budget-0-monthly_cost": "",
            "budget-0-note": "thesis deadline",
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    budget = Budget.objects.get(user=owner)
    assert (budget.monthly_cost, budget.monthly_running_hours, budget.exempt) == (None, 80, False)


def test_alerts_are_listed_and_cannot_be_edited(console, owner):
    alert = BudgetAlert.objects.create(
        user=owner,
        month=date(2026, 12, 1),
        limit="cost",
        threshold=80,
        used=Decimal("8.1"),
        allowed=Decimal("10"),
        raised_at=timezone.now(),
    )

    page = console.get("/admin/usage/budgetalert/", {"threshold__exact": "80"})

    assert page.status_code == 200 and "owner@example.com" in page.content.decode()
    assert console.get("/admin/usage/budgetalert/add/").status_code == 403
    assert console.post(f"/admin/usage/budgetalert/{alert.pk}/change/", {"threshold": 100}).status_code == 403
    alert.refresh_from_db()
    assert alert.threshold == 80
