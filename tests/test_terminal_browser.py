"""Browser journeys through the terminal page: a shell in the sandbox that survives a reload.

Headless Chromium against the portal served by an ASGI server (uvicorn, in a thread), so the
page's websocket goes through the real origin check, session auth and consumer. The page runs
under the site's Content-Security-Policy; a violation, like any script error, fails the journey.
"""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from django.conf import settings as django_settings
from django.db import connections
from django.test import override_settings
from playwright.sync_api import expect, sync_playwright

from sandboxes import services
from sandboxes.models import Sandbox
from sandboxes.providers import get_provider, reset_providers
from tests.browser import REPORT_CSP_VIOLATIONS, launch_chromium
from tests.conftest import launch, make_user, signed_in

# The rendered lines of the page's terminal (the canvas renderer draws no text into the DOM).
TERMINAL_HAS_LINE = """(wanted) => {
  const terminal = document.getElementById("terminal").terminal;
  if (!terminal) return false;
  const buffer = terminal.buffer.active;
  for (let i = 0; i < buffer.length; i++) {
    if (buffer.getLine(i).translateToString(true).trim() === wanted) return true;
  }
  return false;
}"""
WAIT_MS = 15_000

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def asgi_server(transactional_db):
    """The project's ASGI application under uvicorn on a free loopback port; yields its URL."""
    # Connections opened by the server's threads are closed after each use, so none is left
    # holding the test database when it is flushed or dropped.
    database = connections["default"].settings_dict
    max_age = database["CONN_MAX_AGE"]
    database["CONN_MAX_AGE"] = 0
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # A channel-layer receive of a closed live-updates socket can outlast it (channels_redis on
    # redis-py 8); the teardown cancels what is still running after a moment instead of waiting.
    config = uvicorn.Config(_application(), lifespan="off", log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    # Previews are served by the same server, on subdomains of localhost.
    previews = override_settings(SANDBOX_PREVIEW_URL=f"http://localhost:{port}", PORTAL_URL=f"http://127.0.0.1:{port}")
    previews.enable()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        previews.disable()
        server.should_exit = True
        thread.join(10)
        listener.close()
        database["CONN_MAX_AGE"] = max_age


def _application():
    """The project's ASGI application with an HTTP handler built now, so that its middleware
    reads the test session's settings (plain HTTP), and static files served by their plain
    names from the source tree, as the other live servers of the tests do."""
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
    from django.core.asgi import get_asgi_application

    from joepro.asgi import build_application

    return build_application(ASGIStaticFilesHandler(get_asgi_application()))


@pytest.fixture
def browser(asgi_server):
    """Headless Chromium. Requested after the test's database work: Playwright runs an event
    loop in this thread, and Django refuses database calls next to one."""
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


def open_page(browser, base_url: str, client, errors: list[str]):
    """A tab signed in with ``client``'s session; console errors and CSP violations go to ``errors``."""
    context = browser.new_context(base_url=base_url)
    context.add_cookies(
        [
            {
                "name": django_settings.SESSION_COOKIE_NAME,
                "value": client.cookies[django_settings.SESSION_COOKIE_NAME].value,
                "url": base_url,
            }
        ]
    )
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page


def type_line(page, text: str) -> None:
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def expect_line(page, text: str) -> None:
    page.wait_for_function(TERMINAL_HAS_LINE, arg=text, timeout=WAIT_MS)


@pytest.fixture(params=["daytona", "local"])
def provider(request, settings):
    """The sandbox backend of the journey: the Daytona fake through the SDK, or this machine."""
    if request.param == "daytona":
        yield request.getfixturevalue("daytona")
        return
    # Each sandbox runs as its own uid, so every parent of the root must be traversable.
    root = Path(tempfile.mkdtemp(prefix="joepro-terminal-test-"))
    root.chmod(0o755)
    settings.SANDBOX_PROVIDER = "local"
    settings.SANDBOX_LOCAL_ROOT = root / "sandboxes"
    settings.SANDBOX_LAUNCH_RATE = "1000/m"
    reset_providers()
    local = get_provider("local")
    problems = local.problems()
    if problems:
        pytest.skip(f"sandboxes cannot run on this machine: {problems[0]}")
    try:
        yield local
    finally:
        for sandbox in list(local.list_managed({})):
            local.delete(sandbox.id)
        reset_providers()
        shutil.rmtree(root, ignore_errors=True)


def launched_by_owner():
    """A new user's client and the id of the sandbox it just launched."""
    client = signed_in(make_user("owner@example.com"))
    response = launch(client)
    assert response.status_code == 200, response.content
    return client, response.json()["sandbox"]["id"]


def open_terminal(page, remote_id: str) -> None:
    page.goto(f"/sandboxes/{remote_id}/terminal/")
    expect(page.locator("#terminal-status")).to_have_text("Connected")
    page.locator("#terminal").click()


def test_type_in_the_terminal_reload_and_find_the_same_shell(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    page = open_page(request.getfixturevalue("browser"), asgi_server, client, errors)
    open_terminal(page, remote_id)
    type_line(page, "echo $((6*7))")
    expect_line(page, "42")
    type_line(page, "export MARK=abc")
    type_line(page, 'echo "[$MARK]"')
    expect_line(page, "[abc]")

    page.reload()
    expect(page.locator("#terminal-status")).to_have_text("Connected")
    page.locator("#terminal").click()
    type_line(page, 'echo "<$MARK>"')
    expect_line(page, "<abc>")  # the same shell: its variable is still set
    assert errors == []


def test_a_dropped_connection_reconnects_to_the_same_shell(daytona, asgi_server, request):
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    page = open_page(request.getfixturevalue("browser"), asgi_server, client, errors)
    open_terminal(page, remote_id)
    type_line(page, "export MARK=abc; echo ready")
    expect_line(page, "ready")

    # The next attachment is cut right after it is made, as by a proxy or the network.
    daytona.fault("pty_connect", "slow_consumer")
    page.reload()
    deadline = time.monotonic() + WAIT_MS / 1000
    while daytona.calls["pty_connect"] < 2:  # the cut one, then the page's own reconnect
        assert time.monotonic() < deadline, dict(daytona.calls)
        time.sleep(0.05)
    expect(page.locator("#terminal-status")).to_have_text("Connected")
    page.locator("#terminal").click()
    type_line(page, 'echo "<$MARK>"')
    expect_line(page, "<abc>")
    assert errors == []


def test_a_stopped_sandbox_resumes_with_one_click(daytona, asgi_server, request):
    client, remote_id = launched_by_owner()
    sandbox = Sandbox.objects.get(remote_id=remote_id)
    services.sandbox_stop(sandbox=sandbox, actor_type="system", reason="idle")
    assert daytona.sandbox(remote_id)["state"] == "stopped"

    errors: list[str] = []
    page = open_page(request.getfixturevalue("browser"), asgi_server, client, errors)
    page.goto(f"/sandboxes/{remote_id}/terminal/")
    expect(page.locator("#terminal-status")).to_have_text("Your sandbox is stopped.")
    page.get_by_role("button", name="Resume sandbox").click()
    expect(page.locator("#terminal-status")).to_have_text("Connected")
    expect(page.get_by_role("button", name="Resume sandbox")).to_be_hidden()
    page.locator("#terminal").click()
    type_line(page, "echo $((6*7))")
    expect_line(page, "42")
    assert daytona.sandbox(remote_id)["state"] == "started"
    assert errors == []


def test_another_user_cannot_open_the_terminal_page_or_its_websocket(daytona, asgi_server, request):
    owner, outsider = make_user("owner@example.com"), make_user("outsider@example.com")
    response = launch(signed_in(owner))
    assert response.status_code == 200, response.content
    remote_id = response.json()["sandbox"]["id"]
    outsider_client = signed_in(outsider)

    errors: list[str] = []
    page = open_page(request.getfixturevalue("browser"), asgi_server, outsider_client, errors)
    assert page.goto(f"/sandboxes/{remote_id}/terminal/").status == 404
    close_code = page.evaluate(
        """(path) => new Promise((resolve) => {
            const socket = new WebSocket(`ws://${location.host}${path}?session=intruder&cols=80&rows=24`);
            socket.onclose = (event) => resolve(event.code);
        })""",
        f"/ws/sandboxes/{remote_id}/terminal/",
    )
    assert close_code == 4404
    assert daytona.calls["pty_create"] == daytona.calls["pty_connect"] == 0


@pytest.mark.parametrize("provider", ["local"], indirect=True)
def test_a_new_user_signs_up_and_works_in_a_local_sandbox(provider, asgi_server, request):
    """The whole journey on the embedded default: sign up, open the sandbox, land in the
    terminal, serve an app on port 3000 and see it at the preview URL, reload and find the
    same shell."""
    errors: list[str] = []
    chromium = request.getfixturevalue("browser")
    context = chromium.new_context(base_url=asgi_server)
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)

    page.goto("/sandbox-portal/")
    page.get_by_role("link", name="Sign in to open your sandbox").click()
    page.get_by_role("link", name="sign up", exact=True).click()
    page.get_by_label("Email", exact=True).fill("newcomer@example.com")
    page.get_by_label("Password", exact=True).fill("plum-orbit-canvas-42")
    page.get_by_label("Password (again)", exact=True).fill("plum-orbit-canvas-42")
    page.get_by_role("button", name="Sign Up", exact=True).click()

    expect(page.locator("#preview-link")).to_have_attribute("href", re.compile(r"^http://127\.0\.0\.1:\d+/sandboxes/"))
    preview_url = page.locator("#preview-link").get_attribute("href")
    page.wait_for_url(re.compile(r"/sandboxes/[0-9a-f]+/terminal/$"), timeout=WAIT_MS)
    expect(page.locator("#terminal-status")).to_have_text("Connected")
    page.locator("#terminal").click()
    type_line(page, "echo $((6*7))")
    expect_line(page, "42")
    type_line(page, "mkdir -p site && cd site && echo '<h1>served from my sandbox</h1>' > index.html")
    type_line(page, "python3 -m http.server 3000 >/dev/null 2>&1 &")
    type_line(page, "echo started")
    expect_line(page, "started")

    preview = context.new_page()
    deadline = time.monotonic() + 10
    while True:
        response = preview.goto(preview_url)
        if response.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.3)  # the server inside the sandbox may still be binding its port
    expect(preview.get_by_role("heading", name="served from my sandbox")).to_be_visible()

    page.reload()
    expect(page.locator("#terminal-status")).to_have_text("Connected")
    page.locator("#terminal").click()
    type_line(page, "pwd")
    expect_line(page, "/home/sandbox/site")  # the same shell, still in the directory it left
    assert errors == []
