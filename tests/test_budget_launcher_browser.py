"""The launcher in Chromium when the user's monthly budget is used up: the portal's message,
what was used of what, when it resets and what to do, and nothing started."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone
from playwright.sync_api import expect, sync_playwright

from tests.browser import REPORT_CSP_VIOLATIONS, launch_chromium
from tests.budget_fixtures import ran
from tests.conftest import make_user
from usage.metering import month_start, next_month_start

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_launcher_shows_the_used_up_budget_and_what_to_do(live_server, daytona, settings):
    # On the real clock: the live server stalls under time-machine's.
    now = timezone.now()
    if now - month_start(now) < timedelta(minutes=20):
        pytest.skip("the month began too recently to have used a budget in it")
    resets = next_month_start(now)
    settings.BUDGET_MONTHLY_COST = Decimal("1.00")
    settings.BUDGET_MONTHLY_RUNNING_HOURS = None
    user = make_user("spent@example.com")
    ran(user, 0.25, cpu=100)  # 15 min at 5.105124 an hour: $1.28
    client = Client()
    client.force_login(user)
    session = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    errors: list[str] = []

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(base_url=live_server.url, locale="en-GB", timezone_id="UTC")
        context.add_cookies([{"name": django_settings.SESSION_COOKIE_NAME, "value": session, "url": live_server.url}])
        context.add_init_script(REPORT_CSP_VIOLATIONS)
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto("/sandbox-portal/")

        page.get_by_role("button", name="Open Dev Sandbox").click()

        # The first call to the provider (looking the sandbox's name up) comes before the refusal.
        expect(page.get_by_role("alert")).to_be_visible(timeout=30_000)
        expect(page.locator("#launch-error-message")).to_contain_text(
            "You have used $1.28 of your monthly budget of $1.00 this month"
        )
        details = page.locator("#launch-error-budget")
        expect(details).to_contain_text("Used this month: US$1.28 of US$1.00.")
        expect(page.locator("#budget-resets")).to_have_text(re.compile(rf"^1 {resets:%B %Y}"))
        expect(page.locator("#budget-resets")).to_have_attribute("datetime", f"{resets:%Y-%m-%d}T00:00:00.000Z")
        expect(details).to_contain_text("What to do: ask an operator to raise your monthly budget")
        expect(page.locator("#retry-button")).to_be_hidden()
        expect(page.locator('[data-stage="check"]')).to_have_attribute("data-state", "failed")
        expect(page.locator("#access-panel")).to_be_hidden()
        browser.close()

    assert all("403" in message for message in errors), errors
    assert daytona.calls["create"] == 0
