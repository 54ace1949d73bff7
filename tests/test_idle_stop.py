"""The idle policy: sandboxes without activity for longer than the limit are stopped, once."""

import threading
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connections
from django.utils import timezone

from sandboxes.models import AuditEvent, Sandbox, SandboxState
from sandboxes.services import (
    managed_labels,
    owner_labels,
    sandbox_launch,
    sandbox_record_activity,
    sandboxes_reconcile,
    sandboxes_stop_idle,
    sandboxes_stop_many,
)
from tests.conftest import launch, signed_in

pytestmark = pytest.mark.django_db
LIMIT = timedelta(hours=2)


def launched(user) -> tuple[Sandbox, dict]:
    response = launch(signed_in(user))
    assert response.status_code == 200
    return Sandbox.objects.get(user=user), response.json()["access"]


def is_stopped(daytona, sandbox) -> bool:
    sandbox.refresh_from_db()
    return sandbox.state == SandboxState.STOPPED and daytona.sandbox(sandbox.remote_id)["state"] == "stopped"


@pytest.mark.parametrize(
    "after, stopped",
    [(LIMIT - timedelta(minutes=1), False), (LIMIT, False), (LIMIT + timedelta(seconds=1), True)],
    ids=["1h59m", "exactly-2h", "2h-and-1s"],
)
def test_a_sandbox_is_stopped_only_once_idle_longer_than_two_hours(daytona, owner, after, stopped):
    sandbox, _ = launched(owner)

    report = sandboxes_stop_idle(now=sandbox.last_activity_at + after)

    assert is_stopped(daytona, sandbox) is stopped
    assert len(report.stopped) == int(stopped)
    assert daytona.calls["stop"] == int(stopped)


def test_the_idle_limit_is_configurable(daytona, owner, settings):
    settings.SANDBOX_IDLE_MINUTES = 30
    sandbox, _ = launched(owner)

    sandboxes_stop_idle(now=sandbox.last_activity_at + timedelta(minutes=31))

    assert is_stopped(daytona, sandbox)


def test_a_relaunch_keeps_the_sandbox_alive(daytona, owner):
    sandbox, _ = launched(owner)
    launched_at = sandbox.last_activity_at
    sandbox_launch(user=owner, now=launched_at + timedelta(hours=1))

    sandboxes_stop_idle(now=launched_at + LIMIT + timedelta(minutes=1))

    assert not is_stopped(daytona, sandbox)


@pytest.mark.parametrize("source", ["heartbeat", "terminal"])
def test_portal_activity_keeps_the_sandbox_alive(daytona, owner, source):
    sandbox, _ = launched(owner)
    launched_at = sandbox.last_activity_at
    sandbox_record_activity(sandbox=sandbox, source=source, now=launched_at + timedelta(hours=1))

    sandboxes_stop_idle(now=launched_at + LIMIT + timedelta(minutes=1))
    assert not is_stopped(daytona, sandbox)

    sandboxes_stop_idle(now=launched_at + timedelta(hours=1) + LIMIT + timedelta(minutes=1))
    assert is_stopped(daytona, sandbox)


def test_activity_daytona_sees_keeps_the_sandbox_alive(daytona, owner):
    """An SSH session counts on Daytona's side only; reconcile brings it into the row."""
    sandbox, _ = launched(owner)
    launched_at = sandbox.last_activity_at
    ssh_at = (launched_at + timedelta(hours=1)).replace(microsecond=0)
    daytona.set_state(sandbox.remote_id, "started", lastActivityAt=ssh_at.isoformat())
    now = launched_at + LIMIT + timedelta(minutes=1)

    sandboxes_reconcile(now=now)
    sandboxes_stop_idle(now=now)

    assert not is_stopped(daytona, sandbox)


def test_a_stopped_sandbox_loses_its_ssh_token_and_links(daytona, owner):
    sandbox, access = launched(owner)
    assert daytona.ssh_tokens(sandbox.remote_id) == [access["ssh"]["token"]]

    sandboxes_stop_idle(now=sandbox.last_activity_at + LIMIT + timedelta(minutes=1))

    assert daytona.ssh_tokens(sandbox.remote_id) == []
    assert daytona.stats()["live_signed_previews"] == 0
    sandbox.refresh_from_db()
    assert sandbox.access_ciphertext is None and sandbox.access_expires_at is None
    # Resumed, the sandbox serves new links only: the old ones stay expired.
    relaunched = launch(signed_in(owner)).json()["access"]
    # Daytona's proxy refuses an expired link: 401 to an API client (a browser is sent to log in).
    assert _status(access["terminal"]["daytonaUrl"]) == 401
    assert _status(relaunched["terminal"]["daytonaUrl"]) == 200
    assert daytona.ssh_tokens(sandbox.remote_id) == [relaunched["ssh"]["token"]]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_stop_is_audited_with_its_reason(daytona, owner):
    sandbox, _ = launched(owner)

    sandboxes_stop_idle(now=sandbox.last_activity_at + LIMIT + timedelta(minutes=5))

    event = AuditEvent.objects.get(sandbox=sandbox, action="stop")
    assert event.actor_type == "system" and event.actor is None
    assert event.reason == "idle for more than 2h"
    assert event.detail["idle_seconds"] == int((LIMIT + timedelta(minutes=5)).total_seconds())


def test_the_next_launch_resumes_the_same_sandbox(daytona, owner):
    sandbox, _ = launched(owner)
    sandboxes_stop_idle(now=sandbox.last_activity_at + LIMIT + timedelta(minutes=1))

    response = launch(signed_in(owner))

    assert response.status_code == 200
    assert response.json()["sandbox"]["id"] == sandbox.remote_id
    assert response.json()["sandbox"]["state"] == "started"
    assert daytona.calls["create"] == 1 and daytona.calls["start"] == 1


def test_only_idle_running_sandboxes_are_touched(daytona, owner, teammate, outsider):
    idle, _ = launched(owner)
    busy, _ = launched(teammate)
    stopped, _ = launched(outsider)
    now = idle.last_activity_at + LIMIT + timedelta(minutes=1)
    sandbox_record_activity(sandbox=busy, source="heartbeat", now=now - timedelta(minutes=5))
    Sandbox.objects.filter(pk=stopped.pk).update(state=SandboxState.STOPPED)

    report = sandboxes_stop_idle(now=now)

    assert [s.pk for s in report.stopped] == [idle.pk]
    assert daytona.calls["stop"] == 1
    assert Sandbox.objects.get(pk=busy.pk).state == SandboxState.STARTED


def test_a_failed_stop_is_recorded_and_retried_next_pass(daytona, owner):
    sandbox, _ = launched(owner)
    now = sandbox.last_activity_at + LIMIT + timedelta(minutes=1)
    daytona.fault("stop", "status", status=403)

    first = sandboxes_stop_idle(now=now)
    sandbox.refresh_from_db()
    assert len(first.failed) == 1 and sandbox.state == SandboxState.STARTED
    assert sandbox.last_error_code == "rejected"

    second = sandboxes_stop_idle(now=now)
    assert len(second.stopped) == 1 and is_stopped(daytona, sandbox)
    assert sandbox.last_error == ""


def _idle_fleet(daytona, count: int) -> list[int]:
    """``count`` started sandboxes, idle for three hours, owned by as many users."""
    ids = daytona.seed(count, labels=managed_labels(), state="started", name_prefix="idle-")
    User = get_user_model()
    users = User.objects.bulk_create(
        [User(username=f"idle{i}@example.com", email=f"idle{i}@example.com") for i in range(count)]
    )
    three_hours_ago = timezone.now() - timedelta(hours=3)
    rows = Sandbox.objects.bulk_create(
        [
            Sandbox(
                user=user,
                provider="daytona",
                remote_name=f"joepro-user-{user.pk}",
                remote_id=remote_id,
                state="started",
                backend_state="started",
                cpu=2,
                memory_gb=4,
                disk_gb=8,
                labels=owner_labels(user),
                last_activity_at=three_hours_ago,
                last_started_at=three_hours_ago,
            )
            for user, remote_id in zip(users, ids, strict=True)
        ]
    )
    return [row.pk for row in rows]


def _at_once(*runs):
    results = [None] * len(runs)

    def run(index, call):
        try:
            results[index] = call()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(index, call)) for index, call in enumerate(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.django_db(transaction=True)
def test_two_idle_runs_at_once_stop_each_sandbox_once(daytona):
    count = 40
    _idle_fleet(daytona, count)
    daytona.latency = 0.02
    now = timezone.now()

    first, second = _at_once(
        lambda: sandboxes_stop_idle(now=now, concurrency=4), lambda: sandboxes_stop_idle(now=now, concurrency=4)
    )

    assert len(first.stopped) + len(second.stopped) == count
    assert daytona.calls["stop"] == count
    assert AuditEvent.objects.filter(action="stop").count() == count
    assert Sandbox.objects.filter(state="stopped").count() == count


@pytest.mark.django_db(transaction=True)
def test_two_operator_stops_at_once_stop_each_sandbox_once(daytona):
    """No advisory lock here: the re-check under each row lock alone prevents a second stop."""
    count = 40
    ids = _idle_fleet(daytona, count)
    daytona.latency = 0.02

    def stop_all():
        return sandboxes_stop_many(sandbox_ids=ids, actor_type="admin", reason="maintenance", concurrency=4)

    first, second = _at_once(stop_all, stop_all)

    assert len(first.stopped) + len(second.stopped) == count
    assert len(first.already_stopped) + len(second.already_stopped) == count
    assert daytona.calls["stop"] == count
    assert AuditEvent.objects.filter(action="stop").count() == count
