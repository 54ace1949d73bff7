"""In the browser: a reloaded terminal page shows the shell's prompt and its last output at once,
before any key is pressed (headless Chromium against the portal under uvicorn, both backends)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.test_terminal_browser import (  # noqa: F401 - fixtures
    TERMINAL_HAS_LINE,
    WAIT_MS,
    asgi_server,
    browser,
    expect_line,
    launched_by_owner,
    open_page,
    open_terminal,
    provider,
    type_line,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The terminal's line at the cursor (where the prompt is once the shell waits for input).
CURSOR_LINE = """() => {
  const buffer = document.getElementById("terminal").terminal.buffer.active;
  return buffer.getLine(buffer.baseY + buffer.cursorY).translateToString(true);
}"""
# Every line of the terminal, trimmed.
TERMINAL_LINES = """() => {
  const buffer = document.getElementById("terminal").terminal.buffer.active;
  const lines = [];
  for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true).trim());
  return lines;
}"""


def test_a_reloaded_terminal_shows_the_prompt_and_the_last_output_without_a_key(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    page = open_page(request.getfixturevalue("browser"), asgi_server, client, errors)
    open_terminal(page, remote_id)
    page.wait_for_function(f"() => ({CURSOR_LINE})().trim() !== ''", timeout=WAIT_MS)  # the prompt
    type_line(page, "echo hello-$((6*7))")
    expect_line(page, "hello-42")
    page.wait_for_function(f"() => ({CURSOR_LINE})().trim() !== ''", timeout=WAIT_MS)
    prompt = page.evaluate(CURSOR_LINE).strip()

    page.reload()
    expect(page.locator("#terminal-status")).to_have_text("Connected")
    # No key pressed, no click: the replay alone draws the last lines.
    expect_line(page, "hello-42")
    page.wait_for_function(TERMINAL_HAS_LINE, arg=prompt, timeout=WAIT_MS)
    lines = page.evaluate(TERMINAL_LINES)
    assert lines.count("hello-42") == 1
    assert errors == []


def test_a_dropped_connection_shows_the_last_lines_once_after_the_reconnect(daytona, asgi_server, request):
    """The page reconnects by itself and repaints from the replay, rather than repeating it."""
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    page = open_page(request.getfixturevalue("browser"), asgi_server, client, errors)
    open_terminal(page, remote_id)
    type_line(page, "echo hello-$((6*7))")
    expect_line(page, "hello-42")

    # The daemon's connection drops (without a close frame, as when a proxy cuts it): the portal
    # reports a lost shell connection, and the page reconnects to the same session.
    def drop_connections():
        for session in daytona.ptys.list(remote_id):
            for pty_client in list(session.clients):
                pty_client.drop()

    daytona._loop.call_soon_threadsafe(drop_connections)
    expect(page.locator("#terminal-status")).not_to_have_text("Connected")
    expect(page.locator("#terminal-status")).to_have_text("Connected")
    expect_line(page, "hello-42")
    page.wait_for_timeout(500)  # the whole replay is drawn
    assert page.evaluate(TERMINAL_LINES).count("hello-42") == 1
    page.locator("#terminal").click()
    type_line(page, "echo again-$((6*7))")
    expect_line(page, "again-42")
    assert errors == []
