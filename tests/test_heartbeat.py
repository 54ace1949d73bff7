"""POST /api/sandbox/heartbeat: the open portal or terminal page counts as activity."""

from datetime import datetime, timedelta

import pytest
from django.core.cache import cache
from django.test import Client
from django.utils import timezone

from joepro.celery import app as celery_app
from sandboxes.models import Sandbox, SandboxState
from sandboxes.services import sandbox_record_activity
from tests.conftest import CANARY_KEY, csrf_headers, launch, signed_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def tasks_run_inline():
    """Tasks enqueued after commit run in this process (the worker tests cover the broker)."""
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def heartbeat(client: Client):
    return client.post("/api/sandbox/heartbeat", data={}, content_type="application/json", **csrf_headers(client))


def test_a_heartbeat_records_activity(daytona, owner):
    client = signed_in(owner)
    launch(client)
    old = timezone.now() - timedelta(minutes=30)
    Sandbox.objects.filter(user=owner).update(last_activity_at=old)

    response = heartbeat(client)

    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert Sandbox.objects.get(user=owner).last_activity_at > old


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

    assert sandbox_record_activity(sandbox=sandbox, source="heartbeat", now=t) is True
    assert sandbox_record_activity(sandbox=sandbox, source="heartbeat", now=t + timedelta(seconds=30)) is False
    assert sandbox_record_activity(sandbox=sandbox, source="heartbeat", now=t + timedelta(seconds=61)) is True
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
    refreshed = datetime.fromisoformat(daytona.sandbox(sandbox_id)["lastActivityAt"].replace("Z", "+00:00"))
    assert daytona.now() - refreshed < timedelta(seconds=5)  # Daytona's timer was reset just now

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
