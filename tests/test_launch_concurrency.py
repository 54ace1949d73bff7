"""Simultaneous launches on PostgreSQL with real threads: one remote sandbox per user."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections

from sandboxes.models import Sandbox
from tests.conftest import launch, make_user, signed_in

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks need PostgreSQL"),
]


def _launch_in_thread(client):
    try:
        response = launch(client)
        return response.status_code, response.json()
    finally:
        connections.close_all()


def test_fifty_concurrent_launches_by_one_user_make_one_sandbox(daytona):
    daytona.latency = 0.02
    user = make_user("burst@example.com")
    clients = [signed_in(user) for _ in range(50)]

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(_launch_in_thread, clients))

    assert [status for status, _ in results] == [200] * 50
    ids = {body["sandbox"]["id"] for _, body in results}
    assert len(ids) == 1
    assert len(daytona.sandboxes()) == 1
    assert daytona.calls["create"] == 1
    assert Sandbox.objects.count() == 1


def test_twenty_users_three_launches_each_make_twenty_sandboxes(daytona):
    daytona.latency = 0.02
    users = [make_user(f"user{i}@example.com") for i in range(20)]
    clients = [signed_in(user) for user in users for _ in range(3)]

    with ThreadPoolExecutor(max_workers=60) as pool:
        results = list(pool.map(_launch_in_thread, clients))

    assert [status for status, _ in results] == [200] * 60
    assert len({body["sandbox"]["id"] for _, body in results}) == 20
    assert len(daytona.sandboxes()) == 20
    assert daytona.calls["create"] == 20
    owners = {s["labels"]["joepro-owner"] for s in daytona.sandboxes()}
    assert owners == {str(u.pk) for u in users}
