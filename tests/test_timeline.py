"""The timeline: why the sandbox runs and why it stopped, from the audit log and the activity
marks, as the owner reads it. Every event is written by the service that writes it in use."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest
from django.utils import timezone

from sandboxes import tasks
from sandboxes.models import ActivityMark, ActivitySource, AuditEvent, Sandbox, SandboxState
from sandboxes.providers import get_provider
from sandboxes.services.activity import sandbox_extend, sandbox_record_activity, sandbox_set_preferences
from sandboxes.services.launch import sandbox_launch
from sandboxes.services.lifecycle import sandbox_stop, sandbox_sync, sandboxes_stop_idle
from sandboxes.services.rows import audit
from sandboxes.services.timeline import activity_marks_prune, note_activity_mark, sandbox_timeline
from sandboxes.services.warnings import sandboxes_warn_before_idle_stop
from tests.conftest import make_user
from tests.local_fixtures import local_root, local_settings  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db


def hhmm(moment) -> str:
    return moment.astimezone(UTC).strftime("%H:%M")


def launched(user):
    launch = sandbox_launch(user=user)
    assert launch.ready, launch.sandbox.last_error
    return Sandbox.objects.get(user=user), launch.access


def texts(sandbox, **options) -> list[str]:
    return [entry.text for entry in sandbox_timeline(sandbox=sandbox, **options)]


def test_a_new_sandbox_reads_created(local_settings, owner):
    sandbox, _ = launched(owner)

    (entry,) = sandbox_timeline(sandbox=sandbox)

    assert (entry.kind, entry.text, entry.actor) == ("created", "Created", "you")
    assert AuditEvent.objects.filter(sandbox=sandbox, action__in=["launch", "access_minted"]).count() == 2


def test_kept_awake_then_stopped_as_idle_then_resumed(local_settings, owner):
    sandbox, _ = launched(owner)
    used_at = timezone.now()
    sandbox_record_activity(sandbox=sandbox, source=ActivitySource.TERMINAL_INPUT, now=used_at)

    report = sandboxes_stop_idle(now=used_at + timedelta(hours=2, minutes=1))
    assert len(report.stopped) == 1
    sandbox_launch(user=owner)

    entries = sandbox_timeline(sandbox=sandbox)
    assert [(entry.kind, entry.text, entry.actor) for entry in entries] == [
        ("resumed", "Resumed by you", "you"),
        ("idle-stopped", "Stopped: idle for 2 h 1 min", "system"),
        ("kept-awake", f"Kept awake by terminal input, {hhmm(used_at)} UTC", "you"),
        ("created", "Created", "you"),
    ]
    assert entries == sorted(entries, key=lambda entry: entry.at, reverse=True)


def test_a_second_launch_of_a_running_sandbox_reads_opened(local_settings, owner):
    sandbox, _ = launched(owner)
    sandbox_launch(user=owner)

    assert [(e.kind, e.text) for e in sandbox_timeline(sandbox=sandbox)] == [
        ("access", "Opened by you"),
        ("created", "Created"),
    ]


def test_an_operator_stop_names_its_reason_and_the_owners_own_stop_says_you(local_settings, owner):
    operator = make_user("operator@example.com")
    sandbox, _ = launched(owner)

    sandbox_stop(sandbox=sandbox, actor_type="admin", actor=operator, reason="maintenance window")
    latest = sandbox_timeline(sandbox=sandbox)[0]
    assert (latest.kind, latest.actor) == ("stopped", "operator")
    assert latest.text == "Stopped by an operator: maintenance window"

    sandbox_launch(user=owner)
    sandbox_stop(sandbox=sandbox, actor_type="user", actor=owner, reason="stopped by its owner")
    assert texts(sandbox)[:3] == ["Stopped by you", "Resumed by you", "Stopped by an operator: maintenance window"]
    assert sandbox_timeline(sandbox=sandbox)[0].actor == "you"


def test_a_stop_seen_at_the_provider_reads_found_stopped(local_settings, owner):
    sandbox, _ = launched(owner)
    get_provider("local").stop(sandbox.remote_id, wait_seconds=10)

    sandbox_sync(sandbox=sandbox, actor_type="system")
    assert sandbox.state == SandboxState.STOPPED
    sandbox_sync(sandbox=sandbox, actor_type="system")  # nothing changed: nothing to tell

    entries = sandbox_timeline(sandbox=sandbox)
    assert [(e.kind, e.text, e.actor) for e in entries] == [
        ("synced", "Found stopped by the provider", "provider"),
        ("created", "Created", "you"),
    ]
    assert AuditEvent.objects.filter(sandbox=sandbox, action="state_synced").count() == 2


def test_extension_settings_and_warning(local_settings, owner):
    sandbox, _ = launched(owner)

    sandbox_set_preferences(sandbox=sandbox, idle_minutes=30, warn_by_email=True)
    sandbox_extend(sandbox=sandbox, minutes=60)
    sandbox.refresh_from_db()
    extended_until = sandbox.keep_awake_until
    deadline = sandbox.idle_deadline
    assert sandboxes_warn_before_idle_stop(now=deadline - timedelta(minutes=5)) == 1

    entries = sandbox_timeline(sandbox=sandbox)
    assert [(e.kind, e.text, e.actor) for e in entries] == [
        ("warned", f"Warned: stops at {hhmm(deadline)} UTC unless you are active", "system"),
        ("extended", f"Extended by 1 h, until {hhmm(extended_until)} UTC", "you"),
        ("settings", "Settings changed: idle period 30 min, email before the idle stop on", "you"),
        ("created", "Created", "you"),
    ]

    sandbox_set_preferences(sandbox=sandbox, idle_minutes=None, warn_by_email=False)
    assert texts(sandbox)[0] == (
        "Settings changed: idle period back to the default (2 h), email before the idle stop off"
    )


def test_revokes_and_resets_read_as_such(local_settings, owner):
    # Written as the access ledger and the reset write them (their services audit these shapes).
    sandbox, _ = launched(owner)
    audit(sandbox, AuditEvent.Action.ACCESS_REVOKED, actor_type="user", actor=owner, kind="ssh_token")
    audit(sandbox, AuditEvent.Action.ACCESS_REVOKED, actor_type="user", actor=owner, all=True, count=3)
    audit(sandbox, AuditEvent.Action.RESET, actor_type="user", actor=owner)

    assert [(e.kind, e.text) for e in sandbox_timeline(sandbox=sandbox)][:3] == [
        ("reset", "Reset by you: files deleted, new sandbox"),
        ("revoked", "Access revoked by you: everything (3)"),
        ("revoked", "Access revoked by you: SSH token"),
    ]


def test_marks_of_one_kind_of_use_fold_into_stretches(local_settings, owner):
    sandbox, _ = launched(owner)
    start = timezone.now() + timedelta(minutes=5)
    for minutes in (0, 15, 30, 45):
        moment = start + timedelta(minutes=minutes)
        sandbox_record_activity(sandbox=sandbox, source=ActivitySource.TERMINAL_INPUT, now=moment)
    sandbox_record_activity(sandbox=sandbox, source=ActivitySource.SSH, now=start + timedelta(minutes=20))
    later = start + timedelta(hours=3)
    sandbox_record_activity(sandbox=sandbox, source=ActivitySource.TERMINAL_INPUT, now=later)

    entries = sandbox_timeline(sandbox=sandbox, now=later + timedelta(minutes=1))

    end = start + timedelta(minutes=45)
    assert [(e.kind, e.text) for e in entries] == [
        ("kept-awake", f"Kept awake by terminal input, {hhmm(later)} UTC"),
        ("kept-awake", f"Kept awake by terminal input, {hhmm(start)}-{hhmm(end)} UTC"),
        ("kept-awake", f"Kept awake by SSH, {hhmm(start + timedelta(minutes=20))} UTC"),
        ("created", "Created"),
    ]
    assert entries[1].at == end
    assert ActivityMark.objects.filter(sandbox=sandbox).count() == 6


def test_an_event_between_marks_breaks_the_stretch(local_settings, owner):
    sandbox, _ = launched(owner)
    before = timezone.now()
    sandbox_record_activity(sandbox=sandbox, source=ActivitySource.PAGE, now=before)
    sandbox_set_preferences(sandbox=sandbox, idle_minutes=60, warn_by_email=False)
    after = before + timedelta(minutes=16)
    sandbox_record_activity(sandbox=sandbox, source=ActivitySource.PAGE, now=after)

    assert texts(sandbox, now=after + timedelta(minutes=1))[:3] == [
        f"Kept awake by use of the portal page, {hhmm(after)} UTC",
        "Settings changed: idle period 1 h, email before the idle stop off",
        f"Kept awake by use of the portal page, {hhmm(before)} UTC",
    ]


def test_the_mark_throttle_keeps_one_mark_per_source_and_slot(local_settings, owner, settings):
    settings.SANDBOX_ACTIVITY_MARK_MINUTES = 15
    sandbox, _ = launched(owner)
    slot = 15 * 60
    base = timezone.now() + timedelta(hours=1)
    base = base.replace(minute=0, second=0, microsecond=0)
    assert int(base.timestamp()) % slot == 0

    written = [
        note_activity_mark(sandbox, ActivitySource.TERMINAL_INPUT, base + timedelta(minutes=minutes))
        for minutes in (0, 1, 7, 14)
    ]
    other_source = note_activity_mark(sandbox, ActivitySource.SSH, base + timedelta(minutes=2))
    next_slot = note_activity_mark(sandbox, ActivitySource.TERMINAL_INPUT, base + timedelta(minutes=15))
    # What the audit log already tells (a launch, an extend) makes no mark.
    unmarked = note_activity_mark(sandbox, ActivitySource.EXTEND, base + timedelta(minutes=20))

    assert written == [True, False, False, False]
    assert (other_source, next_slot, unmarked) == (True, True, False)
    assert sorted(ActivityMark.objects.filter(sandbox=sandbox).values_list("source", flat=True)) == [
        "ssh",
        "terminal-input",
        "terminal-input",
    ]


def test_a_stopped_sandbox_is_not_marked(local_settings, owner):
    sandbox, _ = launched(owner)
    sandbox_stop(sandbox=sandbox, actor_type="user", actor=owner, reason="done")

    sandbox_record_activity(sandbox=sandbox, source=ActivitySource.PAGE)

    assert not ActivityMark.objects.filter(sandbox=sandbox).exists()


def test_nobody_sees_another_sandboxes_moments(local_settings, owner, teammate):
    mine, _ = launched(owner)
    theirs, _ = launched(teammate)
    sandbox_record_activity(sandbox=theirs, source=ActivitySource.SSH)
    sandbox_stop(sandbox=theirs, actor_type="admin", reason="maintenance window")

    assert texts(mine) == ["Created"]
    assert texts(theirs)[0] == "Stopped by an operator: maintenance window"


def test_the_timeline_holds_no_secret(local_settings, owner):
    sandbox, access = launched(owner)
    sandbox_extend(sandbox=sandbox, minutes=60)
    sandbox_stop(sandbox=sandbox, actor_type="user", actor=owner, reason="done")
    secrets = [access.ssh.token, access.preview.token, access.terminal.token]
    secrets = [secret for secret in secrets if secret]
    assert secrets

    entries = sandbox_timeline(sandbox=sandbox)

    assert len(entries) == 3
    assert not any(secret in entry.text for entry in entries for secret in secrets)


def test_the_timeline_is_limited_and_newest_first(local_settings, owner):
    sandbox, _ = launched(owner)
    start = timezone.now() - timedelta(days=1)
    for hour in range(12):
        sandbox_record_activity(sandbox=sandbox, source=ActivitySource.SSH, now=start + timedelta(hours=2 * hour))

    entries = sandbox_timeline(sandbox=sandbox, limit=5)

    assert len(entries) == 5
    assert entries[0].text == "Created"
    assert [entry.at for entry in entries[1:]] == [start + timedelta(hours=2 * h) for h in (11, 10, 9, 8)]


def test_marks_older_than_thirty_days_are_pruned(local_settings, owner):
    sandbox, _ = launched(owner)
    now = timezone.now()
    note_activity_mark(sandbox, ActivitySource.SSH, now - timedelta(days=31))
    note_activity_mark(sandbox, ActivitySource.SSH, now - timedelta(days=29))

    tasks.warn_before_idle_stop()
    assert activity_marks_prune(now=now) == 0  # once an hour

    assert list(ActivityMark.objects.filter(sandbox=sandbox).values_list("at", flat=True)) == [now - timedelta(days=29)]
