"""Browser journeys through the dashboard's usage panels: the cost figures the API gives, the
budget's bars with the notice at 80 % and the stronger one at 100 % saying what happens, the
running sandbox's memory and disk with the notice when one is nearly full, and an accessibility
scan of it all.

Headless Chromium against the portal under uvicorn with a real sandbox on this machine, the
portal's clock moved to the middle of a month (so "this month" holds a known past), the page's
own clock left alone (the page measures time by the server's). The journey runs under the site's
Content-Security-Policy; the scanned tab bypasses it to inject axe.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
import time_machine
from django.templatetags.static import static
from django.utils import timezone
from playwright.sync_api import Page, expect

from sandboxes.models import Sandbox, SandboxState, StateChange
from tests.dashboard_pages import (  # noqa: F401 (fixtures)
    DASHBOARD,
    asgi_server,
    browser,
    off_the_page_thread,
    provider,
    signed_in_tab,
)
from tests.test_accessibility_browser import assert_accessible, in_colour_scheme
from tests.test_terminal_browser import launched_by_owner
from usage import cost
from usage.models import Budget, BudgetAlert, ResourceSample

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.parametrize("provider", ["local"], indirect=True),
]

MID_MONTH = datetime(2026, 3, 15, 10, 0, tzinfo=UTC)
MONTH = MID_MONTH.date().replace(day=1)
GIB = 1024**3


@pytest.fixture
def mid_month():
    with time_machine.travel(MID_MONTH, tick=True):
        yield


def with_past_usage():
    """The owner's launched sandbox, and an earlier one of theirs (reset since) that ran 10 h
    on 2 March: its log is kept, so its cost counts this month."""
    client, remote_id = launched_by_owner()
    sandbox = Sandbox.objects.get(remote_id=remote_id)
    for at, state in (
        (datetime(2026, 3, 2, 8, 0, tzinfo=UTC), SandboxState.STARTED),
        (datetime(2026, 3, 2, 18, 0, tzinfo=UTC), SandboxState.GONE),
    ):
        StateChange.objects.create(
            sandbox=None,
            user=sandbox.user,
            sandbox_name=f"{sandbox.remote_name}-before",
            provider=sandbox.provider,
            state=state,
            cpu=2,
            memory_gb=4,
            disk_gb=8,
            at=at,
        )
    return client, sandbox


def money(value: str) -> str:
    """An amount as the server writes it, with the symbol British English gives the dollar:
    US$1.50, US$0.0012 below a cent."""
    return cost.money(Decimal(value), "USD").replace("$", "US$")


def month_cost(client) -> Decimal:
    return Decimal(client.get("/api/sandbox/usage").json()["month"]["cost"])


def set_budget(user, allowed: Decimal, *, threshold: int, stop_after: datetime | None = None) -> None:
    """The owner's monthly budget, and the alert the budget check raises for it."""
    Budget.objects.update_or_create(user=user, defaults={"monthly_cost": allowed})
    BudgetAlert.objects.update_or_create(
        user=user,
        month=MONTH,
        limit=BudgetAlert.Limit.COST,
        threshold=threshold,
        defaults={"used": allowed, "allowed": allowed, "raised_at": timezone.now(), "stop_after": stop_after},
    )


def memory_nearly_full(sandbox: Sandbox) -> None:
    now = timezone.now()
    ResourceSample.objects.update_or_create(
        sandbox=sandbox,
        defaults={
            "sampled_at": now,
            "memory_bytes": int(3.8 * GIB),
            "memory_limit_bytes": 4 * GIB,
            "disk_bytes": int(2.4 * GIB),
            "disk_limit_bytes": 8 * GIB,
            "memory_alerted_at": now,
        },
    )


def open_dashboard(page: Page) -> dict:
    """Opens the dashboard; returns the usage the page read."""
    with page.expect_response(lambda response: response.url.endswith("/api/sandbox/usage")) as answer:
        page.goto(DASHBOARD)
    expect(page.locator("#state-text")).to_have_text("Running")
    expect(page.locator("#usage-today")).not_to_have_text("–")
    return answer.value.json()


def percent(value: float) -> str:
    return f"{Decimal(str(value)).quantize(Decimal(1), rounding=ROUND_HALF_UP)}%"


def test_costs_budget_notices_and_resources(mid_month, provider, asgi_server, request, settings):
    client, sandbox = with_past_usage()
    used = month_cost(client)
    allowed = (used / Decimal("0.85")).quantize(Decimal("0.01"))  # about 85 %
    set_budget(sandbox.user, allowed, threshold=80)
    memory_nearly_full(sandbox)
    errors: list[str] = []
    page = signed_in_tab(request.getfixturevalue("browser"), asgi_server, client, errors)
    usage = open_dashboard(page)

    expect(page.locator("#usage-today")).to_have_text(money(usage["today"]["cost"]))
    expect(page.locator("#usage-month")).to_have_text(money(usage["month"]["cost"]))
    expect(page.locator("#usage-forecast")).to_have_text(money(usage["forecast"]["monthEndCost"]))
    expect(page.locator("#usage-running")).to_have_text(
        re.compile(r"^(less than a minute|\d+ min) today, 10 h( \d+ min)? this month$")
    )
    page.get_by_text("How it is priced").click()
    expect(page.locator("#usage-rates")).to_contain_text("US$0.0504 per vCPU-hour and US$0.0162 per GiB-hour of memory")
    expect(page.locator("#usage-rates")).to_contain_text("US$0.000108 per GiB-hour of disk beyond 5 GiB free")

    budget = usage["budget"]["cost"]
    bar = page.get_by_role("progressbar", name="Monthly budget")
    expect(bar).to_have_js_property("value", budget["percent"])
    text = f"{money(budget['used'])} of {money(budget['allowed'])} ({percent(budget['percent'])})"
    expect(page.locator("#budget-cost-text")).to_have_text(text)
    expect(bar).to_have_attribute("aria-valuetext", text)
    expect(page.locator("#budget-hours")).to_be_hidden()
    expect(page.locator("#budget-resets-at")).to_have_text("1 Apr 2026, 00:00")
    notice = page.locator('[data-notice="budget-cost-80"]')
    expect(notice).to_contain_text(f"You have used {percent(budget['percent'])} of your monthly budget.")
    expect(notice).to_contain_text(
        "At 100%, your sandbox cannot be started again until the budget resets on 1 Apr 2026"
    )

    memory = page.get_by_role("progressbar", name="Memory")
    expect(memory).to_have_js_property("value", 95)
    expect(page.locator("#resources-memory-text")).to_have_text("3.8 of 4.0 GiB (95%)")
    expect(page.locator("#resources-disk-text")).to_have_text("2.4 of 8.0 GiB (30%)")
    memory_notice = page.locator('[data-notice="resource-memory"]')
    expect(memory_notice).to_contain_text("Your sandbox's memory is 95% full.")
    expect(memory_notice).to_contain_text("3.8 of 4.0 GiB in use. Programs may be killed when it runs out")

    # Used up, with the stop action: the stronger notice says when it stops, and replaces the 80 % one.
    settings.BUDGET_ACTION = "stop"
    stop_after = timezone.now().replace(microsecond=0) + timedelta(minutes=10)
    off_the_page_thread(
        set_budget, sandbox.user, (used / 2).quantize(Decimal("0.01")), threshold=100, stop_after=stop_after
    )
    page.reload()
    notice = page.locator('[data-notice="budget-cost-100"]')
    expect(notice).to_contain_text("You have used all of your monthly budget")
    expect(notice).to_contain_text(
        f"Your sandbox stops at {stop_after:%H:%M} and cannot be started again until 1 Apr 2026, 00:00."
    )
    expect(page.locator('[data-notice="budget-cost-80"]')).to_have_count(0)
    expect(page.get_by_role("progressbar", name="Monthly budget")).to_have_js_property("value", 100)

    # Stopped: no resource bars and no notice about them.
    page.get_by_role("button", name="Stop now").click()
    expect(page.locator("#state-text")).to_have_text("Stopped")
    expect(page.locator("#resources-idle")).to_have_text(
        "Not running: memory and disk use show here while your sandbox runs."
    )
    expect(page.locator("#resources-details")).to_be_hidden()
    expect(page.locator('[data-notice="resource-memory"]')).to_have_count(0)
    assert errors == []


def test_the_pages_write_money_as_the_server_does(provider, asgi_server, request):
    amounts = ["0", "0.00001", "0.00004", "0.00005", "0.001", "0.0099", "0.01", "0.5", "1234.5", "98765.4321"]
    page = signed_in_tab(request.getfixturevalue("browser"), asgi_server, None, [])
    page.goto("/")
    shown = page.evaluate(
        "async ([module, amounts]) => amounts.map((await import(module)).moneyFormat('USD'))",
        [static("js/money.js"), amounts],
    )
    assert shown == [money(amount) for amount in amounts]


def test_the_usage_panels_pass_an_accessibility_scan(mid_month, provider, asgi_server, request):
    client, sandbox = with_past_usage()
    used = month_cost(client)
    set_budget(sandbox.user, (used / 2).quantize(Decimal("0.01")), threshold=100)
    Budget.objects.filter(user=sandbox.user).update(monthly_running_hours=12)
    memory_nearly_full(sandbox)
    errors: list[str] = []
    page = signed_in_tab(request.getfixturevalue("browser"), asgi_server, client, errors, bypass_csp=True)
    open_dashboard(page)
    expect(page.locator('[data-notice="budget-cost-100"]')).to_be_visible()
    expect(page.locator('[data-notice="resource-memory"]')).to_be_visible()
    expect(page.get_by_role("progressbar", name="Running hours")).to_be_visible()
    page.get_by_text("How it is priced").click()

    assert_accessible(page, "the dashboard's usage, budget and resources, with their notices")
    in_colour_scheme(page, "dark")
    assert_accessible(page, "the dashboard's usage panels in the dark colour scheme")
    assert errors == []
