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


def _launch_template_in_thread(args):
    client, template = args
    try:
        response = launch(client, {"template": template})
        return template, response.status_code, response.json()
    finally:
        connections.close_all()


def test_templates_chosen_at_once_at_the_cap_make_one_sandbox(daytona):
    from environments import builds
    from environments.models import Template, TemplateBuild

    python = Template.objects.get(slug="python")
    build = TemplateBuild.objects.create(
        template=python, provider="daytona", version=python.version, artifact=python.artifact_name
    )
    assert builds.run_build(build.pk).state == TemplateBuild.State.READY
    daytona.latency = 0.02
    user = make_user("two-at-once@example.com")
    work = [(signed_in(user), template) for template in ["nodejs", "python"] * 10]

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(_launch_template_in_thread, work))

    made = {template for template, status, _ in results if status == 200}
    assert len(made) == 1  # whichever came first; the cap (1) refused the other template
    refused = [body["error"]["code"] for template, status, body in results if template not in made]
    assert refused == ["sandbox_limit"] * 10
    assert Sandbox.objects.count() == 1 and len(daytona.sandboxes()) == 1
