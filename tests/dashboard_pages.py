"""What the dashboard's browser journeys share: the live server and the sandbox backend of the
terminal's journeys, a signed-in tab that reads times in one language and time zone, and
database work done off Playwright's thread."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from django.conf import settings as django_settings
from django.db import connections
from django.utils import timezone
from playwright.sync_api import Page

from tests.browser import REPORT_CSP_VIOLATIONS
from tests.test_terminal_browser import WAIT_MS, asgi_server, browser, provider  # noqa: F401 (fixtures)

DASHBOARD = "/sandbox-portal/sandbox/"


def signed_in_tab(browser, base_url: str, client, errors: list[str], *, clipboard=False, bypass_csp=False) -> Page:  # noqa: F811
    """A tab signed in with ``client``'s session, in British English on UTC (so 14:32 reads
    "14:32"); console errors and CSP violations go to ``errors``."""
    context = browser.new_context(base_url=base_url, locale="en-GB", timezone_id="UTC", bypass_csp=bypass_csp)
    if client is not None:
        context.add_cookies(
            [
                {
                    "name": django_settings.SESSION_COOKIE_NAME,
                    "value": client.cookies[django_settings.SESSION_COOKIE_NAME].value,
                    "url": base_url,
                }
            ]
        )
    if clipboard:
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page


def off_the_page_thread(function, *args, **kwargs):
    """``function(*args, **kwargs)`` in a thread of its own, its result or its exception: once a
    browser is open, Playwright keeps an event loop in the test's thread, next to which Django
    refuses database calls."""
    outcome: dict = {}

    def call():
        try:
            outcome["result"] = function(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc
        finally:
            connections.close_all()

    thread = threading.Thread(target=call)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), f"{function.__name__} did not return"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


# How the pages show a moment (the tab is on UTC): "14:32" today, "8 Dec, 01:05" another day.
CLOCK_TIME = r"(\d{1,2} [A-Z][a-z]{2}, )?\d\d:\d\d"


def clock_time(at: datetime) -> str:
    """``at`` as the pages show it (see :data:`CLOCK_TIME`), today being the server's."""
    at = at.astimezone(UTC)
    if at.date() == timezone.now().astimezone(UTC).date():
        return f"{at:%H:%M}"
    return f"{at.day} {at:%b}, {at:%H:%M}"


def time_attribute(page: Page, selector: str) -> datetime:
    """The moment a <time> element's datetime attribute names."""
    value = page.locator(selector).get_attribute("datetime")
    assert value, f"{selector} has no datetime"
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
