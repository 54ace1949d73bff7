"""Browser journeys through the portal: sign up, open the sandbox, use its access details.

Headless Chromium drives the live server; Daytona is its HTTP fake, reached through the real
SDK (the `daytona` fixture). The page runs under the site's Content-Security-Policy, so a violation, like any
script error, shows up as a console error and fails the journey.
"""

import re
import uuid

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.browser import REPORT_CSP_VIOLATIONS, launch_chromium

PASSWORD = "plum-orbit-canvas-42"
STAGES = ("check", "provision", "secure", "ready")
LAUNCH_TIMEOUT_MS = 60_000  # the fake may add latency; the launcher itself waits up to 5 min
REDIRECT_DELAY_MS = 5_000
HTTP_URL = re.compile(r"^https?://")

pytestmark = pytest.mark.browser


@pytest.fixture
def browser_page(live_server, daytona):
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(base_url=live_server.url)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
        context.add_init_script(REPORT_CSP_VIOLATIONS)
        page = context.new_page()
        page.set_default_timeout(20_000)
        yield page
        browser.close()


@pytest.fixture
def console_errors(browser_page):
    errors = []

    def record(message):
        if message.type == "error":
            errors.append(message.text)

    browser_page.on("console", record)
    browser_page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def sign_up(page: Page) -> str:
    email = f"dev-{uuid.uuid4().hex[:12]}@example.com"
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password (again)", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign Up", exact=True).click()
    return email


def expect_sandbox_ready(page: Page) -> None:
    expect(page.locator(".stage__label")).to_have_text(
        ["Checking your sandbox", re.compile(r"(Creating|Starting) your sandbox"), "Securing access", "Ready"]
    )
    for stage in STAGES:
        expect(page.locator(f'[data-stage="{stage}"]')).to_have_attribute(
            "data-state", "done", timeout=LAUNCH_TIMEOUT_MS
        )
    expect(page.get_by_role("heading", name="Your sandbox is ready")).to_be_visible()
    expect(page.locator("#ssh-command")).to_have_text(re.compile(r"^ssh \S"))
    expect(page.locator("#ssh-expiry")).to_have_attribute("datetime", re.compile(r"^\d{4}-\d\d-\d\dT"))
    expect(page.locator("#preview-link")).to_have_attribute("href", HTTP_URL)
    expect(page.locator("#terminal-link")).to_have_attribute("href", HTTP_URL)
    expect(page.locator("#launch-error")).to_be_hidden()


def test_open_sandbox_copy_ssh_command_and_stay_on_the_portal(
    browser_page, console_errors, live_server, daytona, settings
):
    # A start slower than the server's wait: the API answers 202 and the page polls.
    daytona.transition_seconds = 3
    settings.SANDBOX_LAUNCH_WAIT_SECONDS = 0.5
    page = browser_page
    portal_url = f"{live_server.url}/sandbox-portal/"
    page.goto("/accounts/signup/?next=/sandbox-portal/")
    email = sign_up(page)
    expect(page).to_have_url(portal_url)
    expect(page.get_by_role("navigation", name="Main")).to_contain_text(email)

    page.get_by_role("button", name="Open Dev Sandbox").click()
    expect(page.locator('[data-stage="provision"]')).to_have_attribute("data-state", "active")
    expect_sandbox_ready(page)
    expect(page.locator("#redirect-notice")).to_contain_text("Opening your terminal in")

    page.get_by_role("button", name="Stay here").click()
    expect(page.locator("#redirect-notice")).to_contain_text("Staying here")

    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#copy-ssh")).to_have_text("Copied")
    clipboard = page.evaluate("navigator.clipboard.readText()")
    assert clipboard == page.locator("#ssh-command").text_content()

    page.wait_for_timeout(REDIRECT_DELAY_MS + 1_000)
    expect(page).to_have_url(portal_url)
    assert console_errors == []


def test_signed_out_visitor_signs_up_and_lands_in_the_terminal(browser_page, console_errors, live_server):
    page = browser_page
    page.goto("/sandbox-portal/")
    expect(page.get_by_role("button", name="Open Dev Sandbox")).to_have_count(0)
    page.get_by_role("link", name="Sign in to open your sandbox").click()
    page.get_by_role("link", name="sign up", exact=True).click()
    sign_up(page)

    # Back on the portal, the launch starts by itself and drops ?launch=1 from the address.
    expect(page).to_have_url(f"{live_server.url}/sandbox-portal/")
    expect_sandbox_ready(page)
    terminal_url = page.locator("#terminal-link").get_attribute("href")
    assert console_errors == []

    page.wait_for_url(terminal_url, wait_until="commit", timeout=REDIRECT_DELAY_MS + 5_000)


def test_returning_user_signs_in_and_gets_the_same_sandbox(browser_page, console_errors, live_server, daytona):
    page = browser_page
    page.goto("/accounts/signup/?next=/sandbox-portal/")
    email = sign_up(page)
    page.get_by_role("button", name="Open Dev Sandbox").click()
    expect_sandbox_ready(page)
    first_sandbox = page.locator("#sandbox-name").text_content()
    page.get_by_role("button", name="Stay here").click()

    page.get_by_role("button", name="Sign out").click()
    page.goto("/accounts/login/?next=/sandbox-portal/")
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign In", exact=True).click()
    expect(page).to_have_url(f"{live_server.url}/sandbox-portal/")

    page.get_by_role("button", name="Open Dev Sandbox").click()
    expect_sandbox_ready(page)
    assert page.locator("#sandbox-name").text_content() == first_sandbox
    assert len(daytona.sandboxes()) == 1
    assert console_errors == []
