"""Identity from the session only; nothing of one user reaches another; no secret leaks."""

import base64
import json
import logging

import pytest
from django.test import Client

from sandboxes.services import remote_name_for
from tests.conftest import CANARY_KEY, csrf_headers, launch, signed_in

pytestmark = pytest.mark.django_db


def test_signed_out_gets_401_json_not_a_redirect(daytona):
    client = Client(enforce_csrf_checks=True)
    for response in (
        client.post("/api/sandbox/create", {}, content_type="application/json"),
        client.get("/api/sandbox"),
    ):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"
    assert daytona.calls == {}


def test_launch_without_csrf_token_is_403(daytona, owner):
    client = signed_in(owner)
    response = client.post("/api/sandbox/create", {}, content_type="application/json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert daytona.calls["create"] == 0


def test_identity_fields_in_the_body_are_ignored(daytona, owner, outsider):
    body = {"userId": outsider.pk, "email": outsider.email, "userName": "outsider"}
    response = launch(signed_in(owner), body)
    assert response.status_code == 200
    remote = daytona.sandbox(response.json()["sandbox"]["id"])
    assert remote["name"] == remote_name_for(owner)
    assert remote["labels"]["joepro-owner"] == str(owner.pk)
    assert daytona.sandbox(remote_name_for(outsider)) is None


def test_malformed_body_is_a_400_json_error(daytona, owner):
    client = signed_in(owner)
    response = client.post(
        "/api/sandbox/create", data="{not json", content_type="application/json", **csrf_headers(client)
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_users_never_see_each_others_sandbox(daytona, owner, teammate, outsider):
    mine = launch(signed_in(owner)).json()

    assert signed_in(outsider).get("/api/sandbox").status_code == 404
    theirs = launch(signed_in(teammate)).json()
    assert theirs["sandbox"]["id"] != mine["sandbox"]["id"]
    assert theirs["access"]["ssh"]["token"] != mine["access"]["ssh"]["token"]
    assert signed_in(teammate).get("/api/sandbox").json()["sandbox"]["id"] == theirs["sandbox"]["id"]


def test_the_daytona_key_never_leaves_the_server(daytona, owner, caplog, settings):
    caplog.set_level(logging.DEBUG)
    client = signed_in(owner)
    pages = [
        client.get("/sandbox-portal/"),
        launch(client),
        client.get("/api/sandbox"),
        client.get("/api/openapi.json"),
        client.get("/api/docs"),
    ]
    daytona.fault("create", "status", status=503, times=20)
    daytona.set_state(pages[1].json()["sandbox"]["id"], "error", error_reason="x", recoverable=False)
    pages.append(launch(client))
    for response in pages:
        assert CANARY_KEY not in response.content.decode()
        assert CANARY_KEY not in str(response.headers)
    for record in caplog.records:
        assert CANARY_KEY not in record.getMessage()
        assert CANARY_KEY not in str(record.args)


def test_tokens_are_not_stored_in_clear(daytona, owner):
    from sandboxes.models import Sandbox

    access = launch(signed_in(owner)).json()["access"]
    row = Sandbox.objects.get(user=owner)
    stored = bytes(row.access_ciphertext)
    assert access["ssh"]["token"].encode() not in stored
    assert access["terminal"]["daytonaUrl"].encode() not in stored
    assert access["preview"]["url"].encode() not in stored


def test_portal_launch_rate_limit_is_a_429(daytona, owner, settings):
    settings.SANDBOX_LAUNCH_RATE = "2/m"
    client = signed_in(owner)
    assert launch(client).status_code == 200
    assert launch(client).status_code == 200
    limited = launch(client)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited["Retry-After"]) <= 60


@pytest.mark.django_db(transaction=True)
def test_task_messages_carry_ids_only(daytona, owner, settings):
    """What the broker holds (Redis here) names the sandbox by id: no key, token or URL."""
    import redis
    from django.conf import settings as django_settings

    from joepro.celery import app
    from sandboxes.models import Sandbox
    from sandboxes.services import sandbox_record_activity

    if not django_settings.REDIS_URL:
        pytest.skip("needs the Redis broker (bin/test sets REDIS_URL)")
    broker = redis.Redis.from_url(django_settings.REDIS_URL)
    queue = app.conf.task_default_queue
    broker.delete(queue)
    access = launch(signed_in(owner)).json()["access"]
    sandbox = Sandbox.objects.get(user=owner)

    sandbox_record_activity(sandbox=sandbox, source="heartbeat")

    messages = [raw.decode() for raw in broker.lrange(queue, 0, -1)]
    broker.delete(queue)
    assert messages, "the activity refresh was not enqueued"
    for secret in (CANARY_KEY, access["ssh"]["token"], access["preview"]["url"], access["terminal"]["daytonaUrl"]):
        assert all(secret not in message for message in messages)
    bodies = [json.loads(base64.b64decode(json.loads(m)["body"])) for m in messages]
    assert [body[0] for body in bodies] == [[sandbox.pk]]
