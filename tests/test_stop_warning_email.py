"""The warning email before an idle stop: sent to owners who asked for it, once per stop time,
within SANDBOX_IDLE_WARNING_MINUTES of it, naming the stop time and the dashboard."""

from __future__ import annotations

import threading
from datetime import UTC, timedelta

import pytest
import time_machine
from django.db import connection

from sandboxes import tasks
from sandboxes.models import AuditEvent, Sandbox
from sandboxes.services.activity import sandbox_extend, sandbox_set_preferences
from sandboxes.services.launch import sandbox_launch
from sandboxes.services.lifecycle import sandbox_stop
from sandboxes.services.locks import exclusive_lock
from sandboxes.services.warnings import sandboxes_warn_before_idle_stop
from tests.local_fixtures import local_root, local_settings  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db
DASHBOARD = "/sandbox-portal/sandbox/"


def hhmm(moment) -> str:
    return moment.astimezone(UTC).strftime("%H:%M")


def launched(user, *, warn: bool = True):
    launch = sandbox_launch(user=user)
    assert launch.ready, launch.sandbox.last_error
    sandbox = Sandbox.objects.get(user=user)
    if warn:
        sandbox_set_preferences(sandbox=sandbox, idle_minutes=None, warn_by_email=True)
    sandbox.refresh_from_db()
    return sandbox, launch.access


def test_one_email_inside_the_window_and_none_again_for_that_stop(local_settings, owner, mailoutbox, settings):
    settings.PORTAL_URL = "https://portal.example.com"
    sandbox, access = launched(owner)
    deadline = sandbox.idle_deadline
    assert deadline == sandbox.idle_since + timedelta(hours=2)

    assert sandboxes_warn_before_idle_stop(now=deadline - timedelta(minutes=11)) == 0
    assert mailoutbox == []

    assert sandboxes_warn_before_idle_stop(now=deadline - timedelta(minutes=9)) == 1
    (email,) = mailoutbox
    assert email.to == ["owner@example.com"]
    assert email.subject == f"Your sandbox stops at {hhmm(deadline)} UTC unless you are active"
    html, mime = email.alternatives[0]
    assert mime == "text/html"
    for body in (email.body, html):
        assert f"{hhmm(deadline)} UTC" in body
        assert "https://portal.example.com/sandbox-portal/sandbox/" in body
        for secret in (access.ssh.token, access.preview.token, access.terminal.token):
            assert not secret or secret not in body

    for later in (timedelta(minutes=5), timedelta(minutes=1)):
        assert sandboxes_warn_before_idle_stop(now=deadline - later) == 0
    assert sandboxes_warn_before_idle_stop(now=deadline + timedelta(minutes=1)) == 0
    assert len(mailoutbox) == 1

    sandbox.refresh_from_db()
    assert sandbox.stop_warning_sent_for == deadline
    event = AuditEvent.objects.get(sandbox=sandbox, action=AuditEvent.Action.WARNED)
    assert event.actor_type == "system"
    assert event.detail == {"stops_at": deadline.isoformat()}


def test_a_moved_stop_gets_its_own_email_when_it_nears(local_settings, owner, mailoutbox):
    sandbox, _ = launched(owner)
    first = sandbox.idle_deadline
    assert sandboxes_warn_before_idle_stop(now=first - timedelta(minutes=5)) == 1

    sandbox_extend(sandbox=sandbox, minutes=240, now=first - timedelta(minutes=4))
    sandbox.refresh_from_db()
    moved = sandbox.idle_deadline
    assert moved == sandbox.keep_awake_until == first + timedelta(hours=4)

    assert sandboxes_warn_before_idle_stop(now=first - timedelta(minutes=3)) == 0
    assert sandboxes_warn_before_idle_stop(now=moved - timedelta(minutes=11)) == 0
    assert sandboxes_warn_before_idle_stop(now=moved - timedelta(minutes=10)) == 1
    assert sandboxes_warn_before_idle_stop(now=moved - timedelta(minutes=2)) == 0

    assert [email.subject for email in mailoutbox] == [
        f"Your sandbox stops at {hhmm(first)} UTC unless you are active",
        f"Your sandbox stops at {hhmm(moved)} UTC unless you are active",
    ]
    assert AuditEvent.objects.filter(sandbox=sandbox, action=AuditEvent.Action.WARNED).count() == 2


def test_the_owners_own_idle_period_sets_the_stop_time(local_settings, owner, mailoutbox):
    sandbox, _ = launched(owner)
    sandbox_set_preferences(sandbox=sandbox, idle_minutes=30, warn_by_email=True)
    sandbox.refresh_from_db()
    deadline = sandbox.idle_since + timedelta(minutes=30)

    assert sandboxes_warn_before_idle_stop(now=deadline - timedelta(minutes=3)) == 1

    assert hhmm(deadline) in mailoutbox[0].subject
    assert "30 min" in mailoutbox[0].body


def test_no_email_without_opt_in_or_for_a_stopped_sandbox(local_settings, owner, teammate, mailoutbox):
    quiet, _ = launched(teammate, warn=False)
    stopped, _ = launched(owner)
    deadline = stopped.idle_deadline
    sandbox_stop(sandbox=stopped, actor_type="user", actor=owner, reason="done")

    for sandbox in (quiet, stopped):
        assert sandboxes_warn_before_idle_stop(now=sandbox.idle_deadline - timedelta(minutes=5)) == 0
    assert sandboxes_warn_before_idle_stop(now=deadline - timedelta(minutes=5)) == 0

    assert mailoutbox == []
    assert not AuditEvent.objects.filter(action=AuditEvent.Action.WARNED).exists()


def test_one_run_at_a_time(local_settings, owner, mailoutbox):
    sandbox, _ = launched(owner)
    held, release = threading.Event(), threading.Event()

    def other_run():
        try:
            with exclusive_lock("sandboxes-warn-before-idle-stop") as acquired:
                assert acquired
                held.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=other_run)
    thread.start()
    try:
        assert held.wait(10)
        assert sandboxes_warn_before_idle_stop(now=sandbox.idle_deadline - timedelta(minutes=5)) == 0
    finally:
        release.set()
        thread.join(10)

    assert mailoutbox == []
    assert sandboxes_warn_before_idle_stop(now=sandbox.idle_deadline - timedelta(minutes=5)) == 1


def test_the_beat_task_warns_on_the_wall_clock(local_settings, owner, mailoutbox):
    sandbox, _ = launched(owner)

    with time_machine.travel(sandbox.idle_deadline - timedelta(minutes=15), tick=False):
        assert tasks.warn_before_idle_stop() == 0
    with time_machine.travel(sandbox.idle_deadline - timedelta(minutes=5), tick=False):
        assert tasks.warn_before_idle_stop() == 1
        assert tasks.warn_before_idle_stop() == 0

    assert len(mailoutbox) == 1
