"""Simultaneous launches by a user at the edge of their budget, on PostgreSQL with real threads
through the API and the fake Daytona: the budget is checked under the launch's row lock, so
at most one sandbox starts, and none once the budget is used up."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections

from sandboxes.models import AuditEvent, Sandbox, SandboxState
from sandboxes.services import sandbox_stop
from tests.budget_fixtures import clock, ran  # noqa: F401 (fixture)
from tests.conftest import launch, make_user, signed_in

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks need PostgreSQL"),
]
LAUNCHES = 20


@pytest.fixture
def capped(settings):
    settings.BUDGET_MONTHLY_COST = None
    settings.BUDGET_MONTHLY_RUNNING_HOURS = 10
    settings.BUDGET_ACTION = "refuse"


def _launch_in_thread(client):
    try:
        response = launch(client)
        return response.status_code, response.json()
    finally:
        connections.close_all()


def launch_at_once(user) -> list[tuple[int, dict]]:
    clients = [signed_in(user) for _ in range(LAUNCHES)]
    with ThreadPoolExecutor(max_workers=LAUNCHES) as pool:
        return list(pool.map(_launch_in_thread, clients))


def stopped_sandbox(user) -> Sandbox:
    assert launch(signed_in(user)).status_code == 200
    sandbox = Sandbox.objects.get(user=user)
    sandbox_stop(sandbox=sandbox, actor_type=AuditEvent.ActorType.USER, actor=user, reason="stopped by its owner")
    return sandbox


def starts_and_creates() -> int:
    actions = [AuditEvent.Action.START, AuditEvent.Action.CREATE]
    return AuditEvent.objects.filter(action__in=actions).count()


def test_twenty_launches_at_99_percent_start_the_stopped_sandbox_once(clock, daytona, capped):
    daytona.latency = 0.02
    user = make_user("nearly@example.com")
    sandbox = stopped_sandbox(user)
    ran(user, 9.9)
    before = starts_and_creates()

    results = launch_at_once(user)

    assert [status for status, _ in results] == [200] * LAUNCHES
    assert {body["sandbox"]["id"] for _, body in results} == {sandbox.remote_id}
    assert daytona.calls["start"] == 1
    assert starts_and_creates() - before == 1
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.STARTED


def test_twenty_first_launches_at_99_percent_create_one_sandbox(clock, daytona, capped):
    daytona.latency = 0.02
    user = make_user("newcomer@example.com")
    ran(user, 9.9)

    results = launch_at_once(user)

    assert [status for status, _ in results] == [200] * LAUNCHES
    assert len({body["sandbox"]["id"] for _, body in results}) == 1
    assert daytona.calls["create"] == 1 and len(daytona.sandboxes()) == 1


def test_twenty_launches_at_100_percent_start_nothing_and_all_are_refused(clock, daytona, capped):
    daytona.latency = 0.02
    user = make_user("spent@example.com")
    sandbox = stopped_sandbox(user)
    ran(user, 10)
    before = starts_and_creates()

    results = launch_at_once(user)

    assert [status for status, _ in results] == [403] * LAUNCHES
    assert {body["error"]["code"] for _, body in results} == {"budget_exceeded"}
    assert {body["error"]["budget"]["limit"] for _, body in results} == {"running_hours"}
    assert daytona.calls["start"] == 0 and starts_and_creates() == before
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.STOPPED
