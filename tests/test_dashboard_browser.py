"""Browser journeys through the dashboard (My sandbox): each control end to end, the live
state, the access ledger's revokes, the idle period, and the warning before an idle stop with
its extension, on the dashboard and on the terminal page.

Headless Chromium against the portal under uvicorn (the terminal journeys' live server), with
real sandboxes on this machine. The pages run under the site's Content-Security-Policy; a
violation, like any script error, fails the journey.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from sandboxes import services
from sandboxes.models import AccessGrant, Sandbox, SandboxState
from sandboxes.providers.local import LocalProvider
from tests.conftest import make_user, signed_in
from tests.dashboard_pages import (  # noqa: F401 (fixtures)
    CLOCK_TIME,
    DASHBOARD,
    asgi_server,
    browser,
    clock_time,
    off_the_page_thread,
    provider,
    signed_in_tab,
    time_attribute,
)
from tests.local_fixtures import run
from tests.test_live_updates import shell
from tests.test_terminal_browser import expect_line, launched_by_owner, type_line

# Each journey runs against both backends (the terminal journeys' `provider`: the Daytona fake
# through the SDK, and this machine), except where it looks inside the sandbox.
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
ON_THIS_MACHINE = pytest.mark.parametrize("provider", ["local"], indirect=True)

LIVE_BOUND_MS = 2_000  # the issue: the page updates within 2 s of a change made anywhere


def open_dashboard(request, asgi_server, client, errors, **options):
    page = signed_in_tab(request.getfixturevalue("browser"), asgi_server, client, errors, **options)
    page.goto(DASHBOARD)
    expect(page.locator("#state-text")).to_have_text("Running")
    return page


def sandbox_row(remote_id: str) -> Sandbox:
    return off_the_page_thread(Sandbox.objects.get, remote_id=remote_id)


def remote_state(provider, remote_id: str) -> str:
    """The backend's own word for the sandbox's state."""
    if isinstance(provider, LocalProvider):
        return provider.get(remote_id).state.value
    return provider.sandbox(remote_id)["state"]


def test_stop_now_then_restart(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    page = open_dashboard(request, asgi_server, client, errors)
    expect(page.locator("#fact-resources")).to_have_text(re.compile(r"^\d+ vCPU · \d+ GB RAM · \d+ GB disk$"))
    expect(page.locator("#fact-running-for")).to_have_text(re.compile(r"less than a minute|\d+ min"))
    expect(page.locator("#idle-running")).to_have_text(re.compile(rf"^Stops at {CLOCK_TIME} unless you are active$"))

    page.get_by_role("button", name="Stop now").click()
    expect(page.locator("#state-text")).to_have_text("Stopped")
    expect(page.locator("#idle-stopped")).to_have_text(re.compile(rf"^Stopped at {CLOCK_TIME}$"))
    expect(page.get_by_role("button", name="Stop now")).to_be_disabled()
    expect(page.locator("#connect-details")).to_be_hidden()
    assert sandbox_row(remote_id).state == SandboxState.STOPPED
    assert remote_state(provider, remote_id) == "stopped"

    page.get_by_role("button", name="Restart").click()
    expect(page.locator("#state-text")).to_have_text("Running")
    expect(page.locator("#ssh-command")).to_have_text(re.compile(r"^ssh \S"))
    assert sandbox_row(remote_id).state == SandboxState.STARTED
    assert remote_state(provider, remote_id) == "started"
    assert errors == []


@ON_THIS_MACHINE
def test_reset_needs_the_sandbox_name_typed_and_loses_the_files(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    run(provider, remote_id, "echo precious > ~/work.txt")
    name = Sandbox.objects.get(remote_id=remote_id).remote_name
    errors: list[str] = []
    page = open_dashboard(request, asgi_server, client, errors)

    page.get_by_role("button", name="Reset…").click()
    dialog = page.get_by_role("dialog", name="Reset your sandbox?")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("All files in it will be lost.")
    confirm = dialog.get_by_role("button", name="Delete my files and reset")
    field = dialog.get_by_label(f"Type {name} to confirm")
    expect(field).to_be_focused()
    expect(confirm).to_be_disabled()
    field.fill(name[:-1])
    expect(confirm).to_be_disabled()
    field.fill(name + "x")
    expect(confirm).to_be_disabled()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert sandbox_row(remote_id).state == SandboxState.STARTED  # nothing done

    page.get_by_role("button", name="Reset…").click()
    field.fill(name)
    expect(confirm).to_be_enabled()
    confirm.click()
    expect(page.locator("#action-status")).to_have_text("Your sandbox was reset.", timeout=60_000)
    expect(page.locator("#state-text")).to_have_text("Running")
    row = off_the_page_thread(Sandbox.objects.get, remote_name=name)
    assert row.remote_id != remote_id and row.state == SandboxState.STARTED
    assert run(provider, row.remote_id, "cat ~/work.txt 2>/dev/null || echo missing").strip() == "missing"
    assert errors == []


def test_open_terminal_starts_a_stopped_sandbox_and_lands_in_its_shell(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    sandbox = Sandbox.objects.get(remote_id=remote_id)
    services.sandbox_stop(sandbox=sandbox, actor_type="system", reason="idle")
    errors: list[str] = []
    page = signed_in_tab(request.getfixturevalue("browser"), asgi_server, client, errors)
    page.goto(DASHBOARD)
    expect(page.locator("#state-text")).to_have_text("Stopped")

    page.get_by_role("button", name="Open terminal").click()
    page.wait_for_url(re.compile(rf"/sandboxes/{remote_id}/terminal/$"), timeout=60_000)
    expect(page.locator("#terminal-status")).to_have_text("Connected")
    page.locator("#terminal").click()
    type_line(page, "echo $((6*7))")
    expect_line(page, "42")
    assert errors == []


def test_copy_the_ssh_command_and_the_ssh_config(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    page = open_dashboard(request, asgi_server, client, errors, clipboard=True)
    dashboard = page.evaluate("() => fetch('/api/sandbox/dashboard').then((response) => response.json())")

    page.get_by_role("button", name="Copy SSH command").click()
    expect(page.locator("#copy-ssh-feedback")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("() => navigator.clipboard.readText()") == dashboard["access"]["ssh"]["command"]
    page.get_by_role("button", name="Copy SSH config").click()
    expect(page.locator("#copy-ssh-config-feedback")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("() => navigator.clipboard.readText()") == dashboard["editor"]["sshConfig"]
    expect(page.get_by_role("link", name="Open in VS Code")).to_have_attribute("href", dashboard["editor"]["vscodeUrl"])
    expect(page.get_by_role("link", name=re.compile("^Preview port"))).to_have_attribute(
        "href", dashboard["access"]["preview"]["url"]
    )
    assert errors == []


def test_revoke_one_entry_then_everything(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    chromium = request.getfixturevalue("browser")
    terminal = signed_in_tab(chromium, asgi_server, client, errors)
    terminal.goto(f"/sandboxes/{remote_id}/terminal/")
    expect(terminal.locator("#terminal-status")).to_have_text("Connected")
    page = open_dashboard(request, asgi_server, client, errors)
    rows = page.locator("#ledger-rows tr")
    token_row = rows.filter(has_text="SSH token").filter(has_text="Active")
    session_row = rows.filter(has_text="Terminal session").filter(has_text="Active")
    expect(token_row).to_have_count(1)
    expect(session_row).to_have_count(1)

    page.get_by_role("button", name=re.compile(r"^Revoke SSH token.*, created ")).click()
    expect(page.locator("#ledger-status")).to_have_text("Revoked: SSH token.")
    expect(rows.filter(has_text="SSH token").filter(has_text="Revoked")).to_have_count(1)
    expect(session_row).to_have_count(1)  # the terminal was not opened with the token
    grants = off_the_page_thread(lambda: list(AccessGrant.objects.filter(sandbox__remote_id=remote_id)))
    assert [grant.revoked_at is not None for grant in grants if grant.kind == AccessGrant.Kind.SSH_TOKEN] == [True]
    assert any(grant.is_live for grant in grants if grant.kind == AccessGrant.Kind.TERMINAL_SESSION)

    page.get_by_role("button", name="Revoke everything").click()
    dialog = page.get_by_role("dialog", name="Revoke everything?")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    dialog.get_by_role("button", name="Revoke everything").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#ledger-status")).to_have_text(re.compile(r"^Revoked \d+ credentials? (and|or) sessions?\.$"))
    expect(page.get_by_role("button", name=re.compile("^Revoke "))).to_have_count(1)  # "Revoke everything" only
    expect(rows.filter(has_text="Active")).to_have_count(0)
    grants = off_the_page_thread(lambda: list(AccessGrant.objects.filter(sandbox__remote_id=remote_id)))
    assert grants and not any(grant.is_live for grant in grants)
    # The open terminal ended with its session (the issue: within 5 s).
    expect(terminal.locator("#terminal-status")).not_to_have_text("Connected", timeout=5_000)
    assert errors == []


def test_my_idle_period_persists_and_moves_the_stop(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    page = open_dashboard(request, asgi_server, client, errors)
    period = page.get_by_label("Stop after being idle for")
    expect(period.locator("option")).to_have_text(["The default (2 h)", "15 min", "30 min", "1 h", "2 h", "4 h", "8 h"])
    expect(period).to_have_value("")  # the default

    period.select_option(label="30 min")
    page.get_by_label("Email me before it stops for being idle").check()
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#preferences-status")).to_have_text("Saved: your sandbox stops after 30 min without use.")
    row = sandbox_row(remote_id)
    assert row.idle_minutes == 30 and row.warn_by_email
    expected = row.idle_since + timedelta(minutes=30)
    deadline = time.monotonic() + 5
    while abs(time_attribute(page, "#idle-stop-time") - expected) > timedelta(seconds=1):
        assert time.monotonic() < deadline, (time_attribute(page, "#idle-stop-time"), expected)
        time.sleep(0.1)
    expect(page.locator("#idle-stop-time")).to_have_text(clock_time(expected))

    page.reload()
    expect(page.get_by_label("Stop after being idle for")).to_have_value("30")
    expect(page.get_by_label("Email me before it stops for being idle")).to_be_checked()

    # A period the deployment does not allow (as from a stale page): the API's message, in the form.
    page.evaluate(
        """() => {
            const option = document.createElement("option");
            option.value = "5";
            option.textContent = "5 min";
            document.getElementById("idle-minutes").append(option);
        }"""
    )
    period.select_option("5")
    page.get_by_role("button", name="Save").click()
    error = page.locator("#preferences-error")
    expect(error).to_have_text(re.compile(r"^The idle period must be between .+ and .+\.$"))
    expect(period).to_have_attribute("aria-invalid", "true")
    assert sandbox_row(remote_id).idle_minutes == 30
    assert errors == [] or all("400" in message for message in errors), errors


def test_a_stop_made_elsewhere_shows_without_a_reload(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    page = open_dashboard(request, asgi_server, client, errors)
    page.wait_for_timeout(500)  # the page's websocket listens

    sandbox = sandbox_row(remote_id)
    off_the_page_thread(services.sandbox_stop, sandbox=sandbox, actor_type="admin", reason="maintenance window")
    expect(page.locator("#state-text")).to_have_text("Stopped", timeout=LIVE_BOUND_MS)
    expect(page.locator("#stop-now")).to_be_disabled()
    # The timeline says why, newest first.
    newest = page.locator("#timeline li").first
    expect(newest).to_contain_text("maintenance window")
    expect(newest.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-\d\d-\d\dT"))
    assert errors == []


def move_the_idle_clock(remote_id: str, *, idle_minutes: int, stop_in: timedelta) -> Sandbox:
    """Give the sandbox an idle period of ``idle_minutes`` and make its idle stop come
    ``stop_in`` from now, as if nobody had used it since."""
    row = Sandbox.objects.get(remote_id=remote_id)
    since = timezone.now() - timedelta(minutes=idle_minutes) + stop_in
    Sandbox.objects.filter(pk=row.pk).update(
        idle_minutes=idle_minutes, last_activity_at=since, last_started_at=since, keep_awake_until=None
    )
    row.refresh_from_db()
    return row


def stop_warning(page):
    return page.get_by_role("alert").filter(has_text="Your sandbox stops at")


def test_the_warning_before_an_idle_stop_and_its_extension(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    # An extension counts as use too: with a short idle period, the hour added is what shows.
    stop_at = move_the_idle_clock(remote_id, idle_minutes=15, stop_in=timedelta(minutes=5)).idle_deadline
    errors: list[str] = []
    page = signed_in_tab(request.getfixturevalue("browser"), asgi_server, client, errors)
    page.goto(DASHBOARD)
    expect(page.locator("#idle-stop-time")).to_have_text(clock_time(stop_at))
    banner = stop_warning(page)
    expect(banner.locator(".stop-warning__text")).to_have_text(
        f"Your sandbox stops at {clock_time(stop_at)} unless you are active."
    )
    expect(banner.get_by_role("button", name="+4 h")).to_be_visible()

    banner.get_by_role("button", name="+1 h").click()
    expect(banner).to_be_hidden()
    later = stop_at + timedelta(hours=1)
    assert abs(sandbox_row(remote_id).idle_deadline - later) < timedelta(seconds=5)
    expect(page.locator("#idle-stop-time")).to_have_text(clock_time(later))
    assert abs(time_attribute(page, "#idle-stop-time") - later) < timedelta(seconds=5)
    expect(page.locator("#stop-warning-status")).to_have_text(
        f"Your sandbox now stops at {clock_time(later)} unless you are active."
    )
    assert errors == []


def test_the_terminal_page_warns_before_an_idle_stop_too(provider, asgi_server, request, settings):
    # Terminal output is activity, so the idle clock restarts as the shell prints its prompt:
    # a warning window longer than the idle period puts every stop inside it instead.
    client, remote_id = launched_by_owner()
    settings.SANDBOX_IDLE_WARNING_MINUTES = settings.SANDBOX_IDLE_MINUTES + 10
    errors: list[str] = []
    page = signed_in_tab(request.getfixturevalue("browser"), asgi_server, client, errors)
    page.goto(f"/sandboxes/{remote_id}/terminal/")
    expect(page.locator("#terminal-status")).to_have_text("Connected")
    banner = stop_warning(page)
    expect(banner.locator(".stop-warning__text")).to_have_text(
        re.compile(rf"^Your sandbox stops at {CLOCK_TIME} unless you are active\.$")
    )
    shown = time_attribute(page, "#stop-warning .stop-warning__time")
    assert abs(sandbox_row(remote_id).idle_deadline - shown) < timedelta(minutes=1)

    banner.get_by_role("button", name="+1 h").click()
    expect(banner).to_be_hidden()
    assert sandbox_row(remote_id).idle_deadline >= shown + timedelta(hours=1) - timedelta(seconds=5)
    expect(page.locator("#stop-warning-status")).to_have_text(
        re.compile(rf"^Your sandbox now stops at {CLOCK_TIME} unless you are active\.$")
    )
    # The keyboard is back in the terminal.
    type_line(page, "echo $((6*7))")
    expect_line(page, "42")
    assert errors == []


def test_no_warning_while_the_stop_is_far_away(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    page = open_dashboard(request, asgi_server, client, errors)
    expect(page.locator("#idle-running")).to_be_visible()
    expect(page.locator("#stop-warning")).to_be_hidden()
    assert errors == []


def test_a_refused_call_shows_the_apis_message(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    page = open_dashboard(request, asgi_server, client, errors)
    page.context.clear_cookies(name="csrftoken")  # the next POST fails the CSRF check

    page.get_by_role("button", name="Stop now").click()
    expect(page.get_by_role("alert").filter(has_text="CSRF")).to_have_text(
        "CSRF check failed: reload the page and try again."
    )
    expect(page.locator("#state-text")).to_have_text("Running")
    assert sandbox_row(remote_id).state == SandboxState.STARTED
    assert all("403" in message for message in errors), errors


def test_a_wrong_clock_in_the_browser_changes_nothing(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    stop_at = sandbox_row(remote_id).idle_deadline
    errors: list[str] = []
    page = signed_in_tab(request.getfixturevalue("browser"), asgi_server, client, errors)
    page.clock.install(time=timezone.now() + timedelta(hours=3))  # past the stop, by the browser's clock
    page.goto(DASHBOARD)
    expect(page.locator("#state-text")).to_have_text("Running")
    expect(page.locator("#idle-stop-time")).to_have_text(clock_time(stop_at))
    expect(page.locator("#fact-running-for")).to_have_text(re.compile(r"^(less than a minute|\d min)$"))
    expect(page.locator("#stop-warning")).to_be_hidden()
    assert errors == []


def test_the_landing_page_links_a_returning_user_to_the_dashboard(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    page = signed_in_tab(request.getfixturevalue("browser"), asgi_server, client, errors)
    page.goto("/sandbox-portal/")
    page.get_by_role("link", name="My sandbox").first.click()
    page.wait_for_url(re.compile(r"/sandbox-portal/sandbox/$"))
    expect(page.locator("#state-text")).to_have_text("Running")
    assert errors == []


def test_a_user_without_a_sandbox_is_sent_to_the_portal(provider, asgi_server, request):
    client = signed_in(make_user("newcomer@example.com"))
    errors: list[str] = []
    page = signed_in_tab(request.getfixturevalue("browser"), asgi_server, client, errors)
    page.goto(DASHBOARD)
    page.wait_for_url(re.compile(r"/sandbox-portal/$"))
    expect(page.get_by_role("button", name="Open Dev Sandbox")).to_be_enabled()
    expect(page.get_by_role("link", name="My sandbox")).to_have_count(0)
    assert errors == []


@pytest.mark.parametrize("provider", ["daytona"], indirect=True)
def test_the_idle_policy_in_another_process_shows_without_a_reload(provider, asgi_server, request):
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    page = open_dashboard(request, asgi_server, client, errors)
    page.wait_for_timeout(500)  # the page's websocket listens

    # Celery beat's idle pass, in a process of its own, with the clock three hours on.
    out = shell(
        provider,
        "from datetime import timedelta; from django.utils import timezone; "
        "from sandboxes.services import sandboxes_stop_idle; "
        "print('stopped', len(sandboxes_stop_idle(now=timezone.now() + timedelta(hours=3)).stopped))",
    )
    assert "stopped 1" in out
    expect(page.locator("#state-text")).to_have_text("Stopped", timeout=LIVE_BOUND_MS)
    expect(page.locator("#timeline li").first).to_contain_text("idle")
    assert errors == []


@pytest.mark.parametrize("provider", ["daytona"], indirect=True)
def test_without_a_channel_layer_the_page_polls(provider, asgi_server, request, settings):
    settings.SANDBOX_LIVE_PUSH = False  # the embedded default: nothing pushes
    client, remote_id = launched_by_owner()
    errors: list[str] = []
    page = open_dashboard(request, asgi_server, client, errors)
    sockets: list[str] = []
    page.on("websocket", lambda socket: sockets.append(socket.url))

    sandbox = sandbox_row(remote_id)
    off_the_page_thread(services.sandbox_stop, sandbox=sandbox, actor_type="admin", reason="maintenance window")
    poll_ms = settings.SANDBOX_LIVE_POLL_SECONDS * 1000
    expect(page.locator("#state-text")).to_have_text("Stopped", timeout=poll_ms + LIVE_BOUND_MS)
    assert not any("/ws/sandbox/events/" in url for url in sockets)
    assert errors == []
