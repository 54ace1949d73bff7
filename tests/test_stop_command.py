"""``manage.py stop_sandboxes`` against the fake Daytona."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from sandboxes.models import AuditEvent, Sandbox, SandboxState
from tests.conftest import CANARY_KEY, launch, signed_in

pytestmark = pytest.mark.django_db


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("stop_sandboxes", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def failing_run(*args) -> tuple[str, str, CommandError]:
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("stop_sandboxes", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue(), raised.value


@pytest.fixture
def fleet(daytona, owner, teammate, outsider):
    """Three running sandboxes: the owner's idle for three hours, the teammate's for 30
    minutes, the outsider's in use."""
    for user in (owner, teammate, outsider):
        assert launch(signed_in(user)).status_code == 200
    now = timezone.now()
    for user, idle in ((owner, timedelta(hours=3)), (teammate, timedelta(minutes=30))):
        Sandbox.objects.filter(user=user).update(last_activity_at=now - idle, last_started_at=now - idle)
    return {user.email: Sandbox.objects.get(user=user) for user in (owner, teammate, outsider)}


def remote_state(daytona, sandbox) -> str:
    return daytona.sandbox(sandbox.remote_id)["state"]


def test_dry_run_prints_what_would_be_stopped_and_changes_nothing(daytona, fleet):
    before = daytona.calls
    events = AuditEvent.objects.count()

    out, _ = run("--idle-for", "20m", "--dry-run")

    assert "owner@example.com" in out and fleet["owner@example.com"].remote_name in out
    assert "teammate@example.com" in out and "idle 0h30m" in out and "idle 3h00m" in out
    assert "outsider@example.com" not in out
    assert "Would stop 2 sandboxes" in out
    assert daytona.calls - before == {}
    assert AuditEvent.objects.count() == events
    assert all(remote_state(daytona, s) == "started" for s in fleet.values())
    assert set(Sandbox.objects.values_list("state", flat=True)) == {"started"}


def test_idle_for_stops_only_sandboxes_idle_that_long(daytona, fleet):
    out, _ = run("--idle-for", "2h")

    assert "Stopped: 1, already stopped: 0, failed: 0" in out
    assert remote_state(daytona, fleet["owner@example.com"]) == "stopped"
    assert remote_state(daytona, fleet["teammate@example.com"]) == "started"
    assert Sandbox.objects.get(pk=fleet["owner@example.com"].pk).state == SandboxState.STOPPED


@pytest.mark.parametrize("text", ["90m", "1h30m", "5400s"])
def test_durations_can_be_written_several_ways(daytona, fleet, text):
    out, _ = run("--idle-for", text)
    assert "Stopped: 1," in out


def test_all_stops_every_running_sandbox_and_counts_the_stopped_ones(daytona, fleet):
    Sandbox.objects.filter(pk=fleet["outsider@example.com"].pk).update(state=SandboxState.STOPPED)
    daytona.set_state(fleet["outsider@example.com"].remote_id, "stopped")

    out, _ = run("--all", "--reason", "maintenance window")

    assert "Stopped: 2, already stopped: 1, failed: 0" in out
    assert all(remote_state(daytona, s) == "stopped" for s in fleet.values())
    events = AuditEvent.objects.filter(action="stop")
    assert events.count() == 2
    assert {event.reason for event in events} == {"maintenance window"}
    assert {event.actor_type for event in events} == {"admin"}


def test_stopping_revokes_ssh_tokens(daytona, fleet):
    sandbox = fleet["outsider@example.com"]
    assert daytona.ssh_tokens(sandbox.remote_id)

    run("--user", "outsider@example.com")

    assert daytona.ssh_tokens(sandbox.remote_id) == []
    assert Sandbox.objects.get(pk=sandbox.pk).access_ciphertext is None


def test_user_is_repeatable_and_case_insensitive(daytona, fleet):
    out, _ = run("--user", "Owner@Example.com", "--user", "teammate@example.com")

    assert "Stopped: 2," in out
    assert remote_state(daytona, fleet["outsider@example.com"]) == "started"


def test_an_unknown_user_stops_nothing(daytona, fleet):
    _, _, error = failing_run("--user", "owner@example.com", "--user", "nobody@example.com")

    assert "nobody@example.com" in str(error)
    assert daytona.calls["stop"] == 0


def test_state_narrows_the_selection(daytona, fleet):
    Sandbox.objects.filter(pk=fleet["teammate@example.com"].pk).update(state=SandboxState.STARTING)

    out, _ = run("--state", "starting")

    assert "Stopped: 1," in out
    assert remote_state(daytona, fleet["teammate@example.com"]) == "stopped"
    assert remote_state(daytona, fleet["owner@example.com"]) == "started"


def test_a_failed_stop_is_reported_and_exits_non_zero(daytona, fleet):
    daytona.fault("stop", "status", status=403, times=1)

    out, err, error = failing_run("--all", "--concurrency", "1")

    assert "Stopped: 2, already stopped: 0, failed: 1" in out
    assert "failed" in err and "HTTP 403" in err
    assert "1 sandboxes could not be stopped" in str(error)


def test_a_selection_is_required(daytona, fleet):
    _, _, error = failing_run()
    assert "--all" in str(error)
    assert daytona.calls["stop"] == 0


@pytest.mark.parametrize("option", [["--idle-for", "2x"], ["--concurrency", "0"], ["--state", "sleeping"]])
def test_bad_options_are_refused(daytona, fleet, option):
    with pytest.raises(CommandError):
        call_command("stop_sandboxes", *option, stdout=StringIO(), stderr=StringIO())
    assert daytona.calls["stop"] == 0


def test_no_secret_reaches_the_output(daytona, fleet, caplog):
    tokens = [daytona.ssh_tokens(s.remote_id)[0] for s in fleet.values()]
    daytona.fault("stop", "status", status=403, times=1, message=f"bad key {CANARY_KEY}")

    out, err, _ = failing_run("--all")

    for text in (out, err, caplog.text):
        assert CANARY_KEY not in text
        assert not any(token in text for token in tokens)
