"""A link on another site cannot start the visitor's sandbox.

``/sandbox-portal/?launch=1`` launches by itself, for the way back from the sign-in. The attack:
a page elsewhere links to it (or to the sign-in page sending there), and every signed-in visitor
who clicks it starts their sandbox. Headless Chromium, signed in on the portal (the live
server), follows such a link from a page served by a second HTTP server on another port, of the
portal's host (the same site, another origin) and of another name (another site). The server
decides, from ``Sec-Fetch-Site`` (else a same-origin ``Referer``), whether the page launches.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest
from django.test import Client
from playwright.sync_api import expect, sync_playwright

from tests.browser import REPORT_CSP_VIOLATIONS, launch_chromium
from tests.conftest import make_user
from tests.test_portal_browser import expect_sandbox_ready, sign_up

LAUNCH = "/sandbox-portal/?launch=1"
SETTLE_MS = 3_000  # long enough for a launch to have reached the API had it started


@pytest.fixture
def other_site():
    """A second HTTP server, on another port, whose page links to ``links``; yields a function
    setting the links and returning the server's port."""
    links: list[str] = []

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            anchors = "".join(f'<p><a id="link-{n}" href="{href}">win a prize</a></p>' for n, href in enumerate(links))
            body = f"<!doctype html><title>Elsewhere</title>{anchors}".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(*hrefs: str) -> int:
        links[:] = hrefs
        return server.server_address[1]

    yield serve
    server.shutdown()
    server.server_close()


@pytest.fixture
def signed_in_page(live_server, daytona):
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(base_url=live_server.url)
        context.add_init_script(REPORT_CSP_VIOLATIONS)
        page = context.new_page()
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto("/accounts/signup/?next=/sandbox-portal/")
        sign_up(page)
        expect(page.get_by_role("button", name="Open Dev Sandbox")).to_be_enabled()
        yield page, errors
        browser.close()


@pytest.mark.browser
@pytest.mark.parametrize("elsewhere", ["127.0.0.1", "localhost"], ids=["another-port", "another-site"])
def test_a_link_on_another_site_starts_no_sandbox(signed_in_page, other_site, live_server, daytona, elsewhere):
    page, errors = signed_in_page
    portal = live_server.url
    port = other_site(portal + LAUNCH, f"{portal}/accounts/login/?next={quote(LAUNCH, safe='')}")

    for link in ("#link-0", "#link-1"):  # straight there, and through the sign-in's redirect
        page.goto(f"http://{elsewhere}:{port}/")
        page.locator(link).click()
        expect(page).to_have_url(f"{portal}/sandbox-portal/")  # ?launch=1 dropped, nothing started
        page.wait_for_timeout(SETTLE_MS)
        expect(page.locator("#launch-progress")).to_be_hidden()
        expect(page.get_by_role("button", name="Open Dev Sandbox")).to_be_enabled()
        assert daytona.sandboxes() == []

    # The same tab, the same session: the portal's own way there still launches.
    page.goto(LAUNCH)
    expect_sandbox_ready(page)
    assert len(daytona.sandboxes()) == 1
    assert errors == []


def launches(client: Client, **headers) -> bool:
    response = client.get(LAUNCH, headers=headers)
    assert response.status_code == 200
    return b'data-auto-launch="true"' in response.content


@pytest.mark.django_db
def test_without_sec_fetch_site_only_a_referer_of_the_portal_launches():
    client = Client()
    assert not launches(client, **{"Sec-Fetch-Site": "same-origin"})  # signed out: nothing to launch
    client.force_login(make_user("dev@example.com"))

    assert launches(client, **{"Sec-Fetch-Site": "same-origin"})
    assert launches(client, **{"Sec-Fetch-Site": "none"})  # typed, or a bookmark
    assert launches(client, Referer="http://testserver/accounts/login/?next=/sandbox-portal/")
    assert launches(client, Referer="http://testserver:80/accounts/signup/")

    for refused in (
        {},  # no word of where it came from
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},  # another origin of the portal's site
        {"Sec-Fetch-Site": "cross-site", "Referer": "http://testserver/sandbox-portal/"},
        {"Referer": "http://testserver:8002/"},
        {"Referer": "https://testserver/"},
        {"Referer": "http://evil.example/http://testserver/"},
        {"Referer": "http://testserver@evil.example/"},
        {"Referer": "null"},
    ):
        assert not launches(client, **refused), refused
