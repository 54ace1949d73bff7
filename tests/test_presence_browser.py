"""The pages tell the portal whether a person used them: once a minute, while visible, each
beat says whether a key was pressed or the pointer used since the last one, and only that counts.

Headless Chromium with Playwright's clock: a minute passes when the test says so.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.test_terminal_browser import (  # noqa: F401 - fixtures
    asgi_server,
    browser,
    launched_by_owner,
    open_page,
    type_line,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MINUTE_MS = 60_000


def next_beat(page) -> tuple[dict, dict]:
    """Let a minute pass; the beat the page sent and the portal's answer."""
    with page.expect_response("**/api/sandbox/heartbeat") as answer:
        page.clock.run_for(MINUTE_MS)
    return answer.value.request.post_data_json, answer.value.json()


def no_beat_within_a_minute(page) -> None:
    beats = []
    page.on("request", lambda request: beats.append(request) if request.url.endswith("/heartbeat") else None)
    page.clock.run_for(MINUTE_MS)
    page.wait_for_timeout(300)
    assert beats == []


def hide(page) -> None:
    page.evaluate(
        """() => {
            Object.defineProperty(document, "visibilityState", { value: "hidden", configurable: true });
            document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )


def test_the_portal_page_reports_whether_someone_used_it(daytona, asgi_server, request):
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    page = open_page(request.getfixturevalue("browser"), asgi_server, client, errors)
    page.clock.install()
    page.goto("/sandbox-portal/")
    page.get_by_role("button", name="Open Dev Sandbox").click()
    expect(page.get_by_role("heading", name="Your sandbox is ready")).to_be_visible()
    page.get_by_role("button", name="Stay here").click()

    assert next_beat(page) == ({"interacted": True}, {"ok": True, "counted": True})  # the clicks
    assert next_beat(page) == ({"interacted": False}, {"ok": True, "counted": False})  # untouched
    assert next_beat(page) == ({"interacted": False}, {"ok": True, "counted": False})

    page.mouse.move(200, 200)
    page.mouse.move(240, 260)
    assert next_beat(page) == ({"interacted": True}, {"ok": True, "counted": True})
    page.keyboard.press("Shift")
    assert next_beat(page) == ({"interacted": True}, {"ok": True, "counted": True})

    hide(page)
    no_beat_within_a_minute(page)  # a hidden tab says nothing at all
    assert errors == []


def test_the_terminal_page_reports_whether_someone_used_it(daytona, asgi_server, request):
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    page = open_page(request.getfixturevalue("browser"), asgi_server, client, errors)
    page.clock.install()
    page.goto(f"/sandboxes/{remote_id}/terminal/")
    expect(page.locator("#terminal-status")).to_have_text("Connected")
    next_beat(page)  # whatever the page load did

    assert next_beat(page) == ({"interacted": False}, {"ok": True, "counted": False})  # open, untouched

    page.locator("#terminal").click()
    type_line(page, "echo hi")
    assert next_beat(page) == ({"interacted": True}, {"ok": True, "counted": True})
    assert next_beat(page) == ({"interacted": False}, {"ok": True, "counted": False})
    assert errors == []
