"""The phishing attack in a real browser: a user's app rewrites its address to the portal's
sign-in path and shows a copy of the form. On its own site, the address bar names the
preview's host, not the portal's, and the portal's cookies never reach the app."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from playwright.sync_api import expect, sync_playwright

from tests.browser import launch_chromium
from tests.conftest import launch, make_user, signed_in
from tests.local_fixtures import local_root, local_settings  # noqa: F401
from tests.test_preview_sites import portal, start_app  # noqa: F401
from tests.test_terminal_browser import asgi_server  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def phishing_sandbox(portal):  # noqa: F811
    client = signed_in(make_user("owner@example.com"))
    sandbox_id = launch(client).json()["sandbox"]["id"]
    start_app(sandbox_id, "owner")
    return client, sandbox_id


@pytest.fixture
def chromium(phishing_sandbox):
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser
        browser.close()


def test_a_phishing_app_shows_its_own_host_and_never_gets_the_portals_cookies(portal, phishing_sandbox, chromium):  # noqa: F811
    client, sandbox_id = phishing_sandbox
    portal_host = urlsplit(portal).netloc
    preview_host = f"3000-{sandbox_id}.localhost:{urlsplit(portal).port}"
    context = chromium.new_context()
    context.add_cookies(
        [
            {
                "name": django_settings.SESSION_COOKIE_NAME,
                "value": client.cookies[django_settings.SESSION_COOKIE_NAME].value,
                "url": portal,
            },
            {"name": "csrftoken", "value": client.cookies["csrftoken"].value, "url": portal},
        ]
    )
    sent_to_preview = []
    context.on(
        "request",
        lambda request: (
            sent_to_preview.append(request.all_headers().get("cookie", ""))
            if urlsplit(request.url).netloc == preview_host
            else None
        ),
    )
    page = context.new_page()
    page.set_default_timeout(15_000)

    page.goto(f"{portal}/sandboxes/{sandbox_id}/preview/?port=3000&next=/phish")
    expect(page.locator("#seen")).not_to_be_empty()

    address = urlsplit(page.url)
    assert address.netloc == preview_host != portal_host
    assert address.path == "/accounts/login/"  # the page rewrote its path, but not its host
    seen = json.loads(page.locator("#seen").text_content())
    assert "sessionid" not in seen["cookie"] and "csrftoken" not in seen["cookie"]
    app_saw = {name.lower(): value for name, value in seen["sent"].items()}.get("cookie", "")
    assert "sessionid" not in app_saw and "csrftoken" not in app_saw and "joepro_preview" not in app_saw
    assert sent_to_preview and all(
        "sessionid" not in cookie and "csrftoken" not in cookie for cookie in sent_to_preview
    )
    context.close()


def test_a_signed_out_visitor_of_a_preview_meets_the_real_sign_in_page(portal, phishing_sandbox, chromium):  # noqa: F811
    _, sandbox_id = phishing_sandbox
    page = chromium.new_page()
    page.set_default_timeout(15_000)

    page.goto(f"http://3000-{sandbox_id}.localhost:{urlsplit(portal).port}/phish")

    address = urlsplit(page.url)
    assert address.netloc == urlsplit(portal).netloc and address.path == "/accounts/login/"
    expect(page.locator("input[type=password]")).to_be_visible()
    page.close()
