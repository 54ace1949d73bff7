"""The portal's pages hold up for keyboard and screen-reader users: an automated scan with
axe-core (vendored from npm, tests/vendor/axe-core/) finds no serious or critical violation on
the landing page, the dashboard and the terminal page, and the dashboard works from the
keyboard alone.

axe is injected as a script of the page, which the site's Content-Security-Policy would block:
the scanned tabs bypass it (the other browser journeys run under it).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from sandboxes.models import Sandbox
from tests.dashboard_pages import (  # noqa: F401 (fixtures)
    DASHBOARD,
    asgi_server,
    browser,
    off_the_page_thread,
    provider,
    signed_in_tab,
)
from tests.test_terminal_browser import launched_by_owner

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.parametrize("provider", ["local"], indirect=True),
]

AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
BLOCKING_IMPACTS = {"serious", "critical"}
RUN_AXE = """async () => {
  const results = await window.axe.run(document, { resultTypes: ["violations"] });
  return results.violations.map((violation) => ({
    id: violation.id,
    impact: violation.impact,
    help: violation.help,
    nodes: violation.nodes.map((node) => ({ target: node.target, summary: node.failureSummary })),
  }));
}"""


def blocking_violations(page: Page) -> list[dict]:
    """axe-core's serious and critical violations on the page as it is now."""
    if not page.evaluate("() => Boolean(window.axe)"):
        page.add_script_tag(path=str(AXE))
    return [violation for violation in page.evaluate(RUN_AXE) if violation["impact"] in BLOCKING_IMPACTS]


def assert_accessible(page: Page, what: str) -> None:
    violations = blocking_violations(page)
    assert not violations, f"{what}:\n" + json.dumps(violations, indent=2)


def in_colour_scheme(page: Page, scheme: str) -> None:
    page.emulate_media(color_scheme=scheme)
    page.wait_for_timeout(500)  # the buttons' colour transitions (120 ms) are over


def scanned_tab(request, asgi_server, client, errors):
    return signed_in_tab(request.getfixturevalue("browser"), asgi_server, client, errors, bypass_csp=True)


def test_the_landing_page_signed_out_and_signed_in(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    visitor = scanned_tab(request, asgi_server, None, errors)
    visitor.goto("/sandbox-portal/")
    expect(visitor.get_by_role("link", name="Sign in to open your sandbox")).to_be_visible()
    assert_accessible(visitor, "the landing page, signed out")

    owner = scanned_tab(request, asgi_server, client, errors)
    owner.goto("/sandbox-portal/")
    expect(owner.get_by_role("button", name="Open Dev Sandbox")).to_be_enabled()
    expect(owner.get_by_role("link", name="My sandbox").first).to_be_visible()
    assert_accessible(owner, "the landing page, signed in")
    in_colour_scheme(owner, "dark")
    assert_accessible(owner, "the landing page in the dark colour scheme")
    owner.get_by_role("button", name="Open Dev Sandbox").click()
    expect(owner.get_by_role("heading", name="Your sandbox is ready")).to_be_visible(timeout=60_000)
    owner.get_by_role("button", name="Stay here").click()
    assert_accessible(owner, "the landing page, with the sandbox's access")
    assert errors == []


def test_the_dashboard_its_dialogs_and_its_warning(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    row = Sandbox.objects.get(remote_id=remote_id)
    since = timezone.now() - row.idle_period + timedelta(minutes=5)  # the warning is on
    Sandbox.objects.filter(pk=row.pk).update(last_activity_at=since, last_started_at=since)
    errors: list[str] = []
    page = scanned_tab(request, asgi_server, client, errors)
    page.goto(DASHBOARD)
    expect(page.locator("#state-text")).to_have_text("Running")
    expect(page.locator("#ledger-rows tr").first).to_be_visible()
    expect(page.locator("#timeline li").first).to_be_visible()
    expect(page.locator("#stop-warning")).to_be_visible()
    expect(page.locator("#idle-minutes option").first).to_be_attached()
    assert_accessible(page, "the dashboard, running, with the idle-stop warning")
    in_colour_scheme(page, "dark")
    assert_accessible(page, "the dashboard in the dark colour scheme")
    in_colour_scheme(page, "light")

    page.get_by_role("button", name="Reset…").click()
    expect(page.get_by_role("dialog", name="Reset your sandbox?")).to_be_visible()
    assert_accessible(page, "the dashboard's reset dialog")
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Revoke everything").click()
    expect(page.get_by_role("dialog", name="Revoke everything?")).to_be_visible()
    assert_accessible(page, "the dashboard's revoke-everything dialog")
    page.keyboard.press("Escape")

    page.get_by_role("button", name="Stop now").click()
    expect(page.locator("#state-text")).to_have_text("Stopped")
    assert_accessible(page, "the dashboard, stopped")
    assert errors == []


def test_the_terminal_page(provider, asgi_server, request, settings):
    client, remote_id = launched_by_owner()
    settings.SANDBOX_IDLE_WARNING_MINUTES = settings.SANDBOX_IDLE_MINUTES + 10  # the banner shows
    errors: list[str] = []
    page = scanned_tab(request, asgi_server, client, errors)
    page.goto(f"/sandboxes/{remote_id}/terminal/")
    expect(page.locator("#terminal-status")).to_have_text("Connected")
    expect(page.locator("#stop-warning")).to_be_visible()
    assert_accessible(page, "the terminal page")
    in_colour_scheme(page, "dark")
    assert_accessible(page, "the terminal page in the dark colour scheme")
    assert errors == []


def focus_by_tab(page: Page, wanted_id: str, *, key: str = "Tab", limit: int = 80) -> None:
    """Press Tab (or ``key``) until the element with ``wanted_id`` has the focus."""
    for _ in range(limit):
        if page.evaluate("() => document.activeElement?.id") == wanted_id:
            return
        page.keyboard.press(key)
    raise AssertionError(f"Tab never reached #{wanted_id}")


def test_the_dashboard_from_the_keyboard_alone(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    page = signed_in_tab(request.getfixturevalue("browser"), asgi_server, client, errors)
    page.goto(DASHBOARD)
    expect(page.locator("#state-text")).to_have_text("Running")
    expect(page.locator("#ledger-rows button").first).to_be_visible()

    reached = []
    for _ in range(80):
        page.keyboard.press("Tab")
        reached.append(
            page.evaluate(
                """() => {
                    const element = document.activeElement;
                    return element.id || element.getAttribute("aria-label") || element.textContent.trim();
                }"""
            )
        )
    for control in (
        "open-terminal",
        "stop-now",
        "restart",
        "reset",
        "copy-ssh",
        "copy-ssh-config",
        "vscode-link",
        "preview-link",
        "revoke-all",
        "idle-minutes",
        "email-before-stop",
        "save-preferences",
    ):
        assert control in reached, (control, reached)
    assert any(name.startswith("Revoke SSH token") for name in reached), reached

    # The reset dialog opens with Enter, takes the focus, and Escape gives it back.
    page.reload()
    expect(page.locator("#state-text")).to_have_text("Running")
    focus_by_tab(page, "reset")
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog", name="Reset your sandbox?")).to_be_visible()
    expect(page.locator("#reset-confirm")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog", name="Reset your sandbox?")).to_be_hidden()
    expect(page.locator("#reset")).to_be_focused()

    # Space stops it; the focus moves on to Restart, and Enter starts it again.
    focus_by_tab(page, "stop-now", key="Shift+Tab")
    page.keyboard.press("Space")
    expect(page.locator("#state-text")).to_have_text("Stopped")
    expect(page.locator("#restart")).to_be_focused()
    assert off_the_page_thread(Sandbox.objects.get, remote_id=remote_id).state == "stopped"
    page.keyboard.press("Enter")
    expect(page.locator("#state-text")).to_have_text("Running")
    assert errors == []
