"""POST /api/sandbox/heartbeat and /api/sandbox/extend: what a page reports of its user.

A page beats every minute while visible and says whether someone pressed a key or used the
pointer since its last beat; only that counts as activity. An explicit extend always does."""

from datetime import datetime, timedelta

import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from joepro.celery import app as celery_app
from sandboxes.models import ActivitySource, Sandbox, SandboxState
from sandboxes.services import sandbox_record_activity
from tests.conftest import CANARY_KEY, csrf_headers, launch, signed_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def tasks_run_inline():
    """Tasks enqueued after commit run in this process (the worker tests cover the broker)."""
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def heartbeat(client: Client, interacted=True):
    body = {} if interacted is None else {"interacted": interacted}
    return client.post("/api/sandbox/heartbeat", data=body, content_type="application/json", **csrf_headers(client))


def extend(client: Client):
    return client.post("/api/sandbox/extend", data={}, content_type="application/json", **csrf_headers(client))


def test_a_beat_after_keys_or_pointer_counts_as_activity(daytona, owner):
    client = signed_in(owner)
    launch(client)
    old = timezone.now() - timedelta(minutes=30)
    Sandbox.objects.filter(user=owner).update(last_activity_at=old)

    response = heartbeat(client, interacted=True)

    assert response.status_code == 200
    assert response.json() == {"ok": True, "counted": True}
    sandbox = Sandbox.objects.get(user=owner)
    assert sandbox.last_activity_at > old
    assert sandbox.last_activity_source == ActivitySource.PAGE


@pytest.mark.parametrize("interacted", [False, None], ids=["untouched", "old-page-without-the-flag"])
def test_an_open_untouched_tab_is_not_activity(daytona, owner, interacted):
    client = signed_in(owner)
    launch(client)
    old = timezone.now() - timedelta(minutes=30)
    Sandbox.objects.filter(user=owner).update(last_activity_at=old)

    response = heartbeat(client, interacted=interacted)

    assert response.status_code == 200
    assert response.json() == {"ok": True, "counted": False}
    assert Sandbox.objects.get(user=owner).last_activity_at == old


def test_without_a_sandbox_it_is_a_404(daytona, owner):
    response = heartbeat(signed_in(owner))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_a_heartbeat_touches_only_the_callers_sandbox(daytona, owner, teammate, outsider):
    launch(signed_in(owner))
    launch(signed_in(teammate))
    old = timezone.now() - timedelta(minutes=30)
    Sandbox.objects.update(last_activity_at=old)

    assert heartbeat(signed_in(teammate)).status_code == 200
    assert heartbeat(signed_in(outsider)).status_code == 404

    assert Sandbox.objects.get(user=owner).last_activity_at == old
    assert Sandbox.objects.get(user=teammate).last_activity_at > old


def test_signed_out_is_401_and_missing_csrf_is_403(daytona, owner):
    launch(signed_in(owner))
    signed_out = Client(enforce_csrf_checks=True)
    assert signed_out.post("/api/sandbox/heartbeat", content_type="application/json").status_code == 401

    client = signed_in(owner)
    response = client.post("/api/sandbox/heartbeat", data={}, content_type="application/json")
    assert response.status_code == 403


def test_activity_is_written_at_most_once_a_minute(daytona, owner):
    launch(signed_in(owner))
    sandbox = Sandbox.objects.get(user=owner)
    t = sandbox.last_activity_at + timedelta(minutes=10)

    assert sandbox_record_activity(sandbox=sandbox, source="page", now=t) is True
    assert sandbox_record_activity(sandbox=sandbox, source="page", now=t + timedelta(seconds=30)) is False
    assert sandbox_record_activity(sandbox=sandbox, source="page", now=t + timedelta(seconds=61)) is True
    assert Sandbox.objects.get(pk=sandbox.pk).last_activity_at == t + timedelta(seconds=61)


def test_daytonas_idle_timer_is_refreshed_at_most_every_ten_minutes(
    daytona, owner, tasks_run_inline, django_capture_on_commit_callbacks
):
    client = signed_in(owner)
    sandbox_id = launch(client).json()["sandbox"]["id"]
    daytona.advance_clock(3600)

    with django_capture_on_commit_callbacks(execute=True):
        heartbeat(client)
        heartbeat(client)

    assert daytona.calls["last_activity"] == 1
    reset_at = daytona.now()
    daytona.advance_clock(20)  # Daytona writes activity in batches every 10 s
    refreshed = datetime.fromisoformat(daytona.sandbox(sandbox_id)["lastActivityAt"].replace("Z", "+00:00"))
    assert abs(refreshed - reset_at) < timedelta(seconds=5)  # Daytona's timer was reset then

    cache.clear()  # ten minutes later the throttle has expired
    with django_capture_on_commit_callbacks(execute=True):
        heartbeat(client)
    assert daytona.calls["last_activity"] == 2


def test_a_stopped_sandbox_is_not_refreshed_on_daytona(
    daytona, owner, tasks_run_inline, django_capture_on_commit_callbacks
):
    client = signed_in(owner)
    launch(client)
    Sandbox.objects.filter(user=owner).update(state=SandboxState.STOPPED)

    with django_capture_on_commit_callbacks(execute=True):
        assert heartbeat(client).status_code == 200

    assert daytona.calls["last_activity"] == 0


def test_the_answer_carries_no_secret(daytona, owner):
    client = signed_in(owner)
    access = launch(client).json()["access"]

    response = heartbeat(client)

    assert response["Cache-Control"] == "no-store"
    assert access["ssh"]["token"] not in response.content.decode()
    assert CANARY_KEY not in response.content.decode()


# --- extend ---------------------------------------------------------------------------------------


def test_extend_starts_the_idle_clock_again_now(daytona, owner, settings):
    client = signed_in(owner)
    launch(client)
    Sandbox.objects.filter(user=owner).update(last_activity_at=timezone.now() - timedelta(minutes=100))
    before = timezone.now()

    response = extend(client)

    assert response.status_code == 200
    sandbox = Sandbox.objects.get(user=owner)
    assert sandbox.last_activity_at >= before
    assert sandbox.last_activity_source == ActivitySource.EXTEND
    stop_at = datetime.fromisoformat(response.json()["sandbox"]["idleStopAt"])
    assert stop_at == sandbox.last_activity_at + timedelta(minutes=settings.SANDBOX_IDLE_MINUTES)
    assert response["Cache-Control"] == "no-store"


def test_extend_is_never_throttled(daytona, owner):
    client = signed_in(owner)
    launch(client)
    first = Sandbox.objects.get(user=owner).last_activity_at  # the launch, a moment ago

    assert extend(client).status_code == 200

    assert Sandbox.objects.get(user=owner).last_activity_at > first


def test_extend_refuses_a_sandbox_that_is_not_running(daytona, owner):
    client = signed_in(owner)
    launch(client)
    Sandbox.objects.filter(user=owner).update(state=SandboxState.STOPPED)

    response = extend(client)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_running"


def test_extend_needs_a_sandbox_a_session_and_csrf(daytona, owner):
    client = signed_in(owner)
    response = extend(client)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"

    assert (
        Client(enforce_csrf_checks=True).post("/api/sandbox/extend", content_type="application/json").status_code == 401
    )
    launch(client)
    assert client.post("/api/sandbox/extend", data={}, content_type="application/json").status_code == 403
