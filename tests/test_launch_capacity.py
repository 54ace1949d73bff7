"""Deployment-wide caps under simultaneous launches by many users (real threads, real
PostgreSQL, fake Daytona): the per-user lock does not serialise different users, the cap does."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from sandboxes import services
from sandboxes.models import AuditEvent, Sandbox
from tests.conftest import launch, make_user, signed_in
from tests.test_launch_concurrency import _launch_in_thread

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent launches need PostgreSQL"),
]


def _launch_all(clients):
    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        return list(pool.map(_launch_in_thread, clients))


def _outcomes(results):
    ok = [body for status, body in results if status == 200]
    refused = [body for status, body in results if status == 503]
    return ok, refused


def test_ten_users_at_once_under_a_cap_of_three_make_exactly_three_sandboxes(daytona, settings):
    settings.SANDBOX_MAX_SANDBOXES = 3
    daytona.latency = 0.05  # the creates overlap
    clients = [signed_in(make_user(f"crowd{i}@example.com")) for i in range(10)]

    ok, refused = _outcomes(_launch_all(clients))

    assert len(ok) == 3 and len(refused) == 7
    assert {body["error"]["code"] for body in refused} == {"capacity_reached"}
    assert all("3 sandboxes" in body["error"]["message"] for body in refused)
    assert len(daytona.sandboxes()) == 3
    assert daytona.calls["create"] == 3
    assert Sandbox.objects.exclude(remote_id="").count() == 3


def test_the_refusal_carries_retry_after_and_the_owner_of_a_sandbox_still_gets_in(daytona, settings):
    settings.SANDBOX_MAX_SANDBOXES = 1
    first, second = signed_in(make_user("first@example.com")), signed_in(make_user("second@example.com"))
    assert launch(first).status_code == 200

    refused = launch(second)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "capacity_reached"
    assert int(refused["Retry-After"]) >= 1
    assert launch(first).status_code == 200  # reusing one's own sandbox takes no new slot


def test_ten_stopped_sandboxes_resumed_at_once_under_a_running_cap_of_three(daytona, settings):
    users = [make_user(f"sleeper{i}@example.com") for i in range(10)]
    clients = [signed_in(user) for user in users]
    for client in clients:
        assert launch(client).status_code == 200
    for row in Sandbox.objects.all():
        services.sandbox_stop(sandbox=row, actor_type=AuditEvent.ActorType.ADMIN, reason="test")
    settings.SANDBOX_MAX_RUNNING = 3
    daytona.latency = 0.05

    ok, refused = _outcomes(_launch_all(clients))

    assert len(ok) == 3 and len(refused) == 7
    assert {body["error"]["code"] for body in refused} == {"capacity_reached"}
    assert sum(1 for s in daytona.sandboxes() if s["state"] == "started") == 3
    assert daytona.calls["create"] == 10  # nothing was created again


def test_a_freed_slot_lets_the_next_launch_in(daytona, settings):
    settings.SANDBOX_MAX_RUNNING = 1
    first, second = make_user("early@example.com"), make_user("late@example.com")
    assert launch(signed_in(first)).status_code == 200
    late = signed_in(second)
    assert launch(late).json()["error"]["code"] == "capacity_reached"

    services.sandbox_stop(sandbox=Sandbox.objects.get(user=first), actor_type="admin", reason="test")

    assert launch(late).status_code == 200
