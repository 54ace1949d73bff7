"""Daytona's webhooks: a change made on Daytona's side shows in the portal at once, and only
events signed by Daytona (Svix), fresh and new, are taken in.

The fake Daytona sends the events as hosted Daytona does (``tests/fake_daytona/webhooks.py``),
to the portal served by a live server; the portal reads the sandbox back through the real SDK.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection, transaction
from django.test import Client

from sandboxes.models import AuditEvent, Sandbox, SandboxState, WebhookDelivery
from sandboxes.services.live import owner_group
from tests.conftest import launch, signed_in
from tests.fake_daytona.webhooks import new_message_id, new_secret, signed_headers

ENDPOINT = "/api/webhooks/daytona"
AT_ONCE = 5.0  # seconds; reconcile runs every few minutes
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def secret(settings) -> str:
    settings.DAYTONA_WEBHOOK_SECRET = new_secret()
    return settings.DAYTONA_WEBHOOK_SECRET


@pytest.fixture
def launched(daytona, owner, secret) -> Sandbox:
    """The owner's running sandbox on the fake Daytona."""
    response = launch(signed_in(owner))
    assert response.status_code == 200, response.content
    sandbox = Sandbox.objects.get(user=owner)
    assert sandbox.state == SandboxState.STARTED and sandbox.remote_id
    return sandbox


@pytest.fixture
def subscribed(live_server, daytona, secret):
    """The portal's endpoint registered in the fake Daytona, as in Daytona's dashboard."""
    return daytona.webhooks.subscribe(live_server.url + ENDPOINT, secret)


def wait_for(condition, timeout: float = AT_ONCE) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "not within the time allowed"
        time.sleep(0.02)
    return time.monotonic() - start


def state_of(sandbox: Sandbox) -> str:
    return Sandbox.objects.values_list("state", flat=True).get(pk=sandbox.pk)


def post(body: str, headers: dict[str, str]):
    """POST to the endpoint as a stranger would: no session, CSRF checks on."""
    extra = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
    extra.pop("HTTP_CONTENT_TYPE", None)
    return Client(enforce_csrf_checks=True).post(ENDPOINT, data=body, content_type="application/json", **extra)


def state_updated(sandbox: Sandbox, old: str, new: str) -> str:
    return json.dumps(
        {
            "event": "sandbox.state.updated",
            "timestamp": datetime.now(UTC).isoformat(),
            "id": sandbox.remote_id,
            "organizationId": "org",
            "oldState": old,
            "newState": new,
            "updatedAt": datetime.now(UTC).isoformat(),
        }
    )


# --- a change on Daytona's side -------------------------------------------------------------


def test_a_stop_made_on_daytonas_side_shows_in_the_row_at_once(launched, daytona, subscribed):
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(owner_group(launched.user_id), channel)

    daytona.set_state(launched.remote_id, "stopped")  # as Daytona's auto-stop or its dashboard would

    wait_for(lambda: state_of(launched) == SandboxState.STOPPED)
    launched.refresh_from_db()
    assert launched.access_ciphertext is None  # the stored access went with the stop
    event = AuditEvent.objects.get(sandbox=launched, action=AuditEvent.Action.STATE_SYNCED)
    assert event.reason == "daytona webhook sandbox.state.updated"
    assert (event.detail["from"], event.detail["to"]) == ("started", "stopped")
    assert daytona.webhooks.wait_until_idle()
    assert [attempt.status for attempt in daytona.webhooks.attempts] == [204]
    assert WebhookDelivery.objects.filter(remote_id=launched.remote_id).count() == 1
    # The owner's open pages are told.
    pushed = async_to_sync(asyncio.wait_for)(layer.receive(channel), AT_ONCE)
    assert pushed == {"type": "sandbox.changed"}


def test_events_out_of_order_and_twice_leave_the_row_as_daytona_has_it(launched, daytona, subscribed):
    daytona.webhooks.hold()
    daytona.webhooks.duplicates = 2
    daytona.set_state(launched.remote_id, "stopped")
    daytona.set_state(launched.remote_id, "started")
    daytona.set_state(launched.remote_id, "stopped")
    daytona.set_state(launched.remote_id, "started")

    held = daytona.webhooks.release(reverse=True)  # the last change arrives first

    assert [json.loads(m.body)["newState"] for m in held] == ["stopped", "started", "stopped", "started"]
    assert daytona.webhooks.wait_until_idle()
    assert all(attempt.ok for attempt in daytona.webhooks.attempts)
    assert len(daytona.webhooks.attempts) == 8
    assert state_of(launched) == SandboxState.STARTED  # the payload's last word would be "stopped"
    assert WebhookDelivery.objects.count() == 4


def test_a_launch_with_webhooks_on_ends_with_every_event_accepted(daytona, owner, subscribed):
    response = launch(signed_in(owner))

    assert response.status_code == 200
    assert daytona.webhooks.wait_until_idle(30)
    events = [message.event for message in daytona.webhooks.messages]
    assert events[0] == "sandbox.created" and "sandbox.state.updated" in events
    assert all(attempt.ok for attempt in daytona.webhooks.attempts)
    assert state_of(Sandbox.objects.get(user=owner)) == SandboxState.STARTED


def test_an_unknown_sandbox_is_ignored(db, daytona, subscribed, owner):
    foreign = daytona.add_sandbox(name="someone-elses", labels={"team": "other"}, state="started")

    daytona.set_state(foreign["id"], "stopped")

    assert daytona.webhooks.wait_until_idle()
    assert [attempt.status for attempt in daytona.webhooks.attempts] == [204, 204]  # created, updated
    assert not Sandbox.objects.exists()
    assert not AuditEvent.objects.exists()


def test_provider_down_answers_503_and_the_retry_applies_it(launched, daytona, subscribed):
    daytona.webhooks.retry_delays = (1.0, 1.0, 1.0)
    daytona.fault("get", "status", status=502, times=4)  # one provider read: the call and three retries

    daytona.set_state(launched.remote_id, "stopped")

    wait_for(lambda: len(daytona.webhooks.attempts) >= 1, timeout=30)
    first = daytona.webhooks.attempts[0]
    assert first.status == 503
    assert not WebhookDelivery.objects.filter(event_id=first.message.id).exists()
    wait_for(lambda: state_of(launched) == SandboxState.STOPPED, timeout=30)
    assert daytona.webhooks.wait_until_idle()
    assert [attempt.status for attempt in daytona.webhooks.attempts] == [503, 204]
    assert WebhookDelivery.objects.filter(event_id=first.message.id).exists()


# --- what is refused, and what changes nothing ----------------------------------------------


def _drifted(launched, daytona) -> None:
    """Daytona stopped it, and no webhook said so: the row still says started."""
    daytona.set_state(launched.remote_id, "stopped")
    assert state_of(launched) == SandboxState.STARTED


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda body, headers: (body, signed_headers(new_secret(), headers["svix-id"], body)), id="forged"),
        pytest.param(
            lambda body, headers: (body, {k: v for k, v in headers.items() if k != "svix-signature"}), id="unsigned"
        ),
        pytest.param(lambda body, headers: (body, {}), id="no-svix-headers"),
        pytest.param(
            lambda body, headers: (body.replace('"stopped"', '"started"'), headers), id="body-altered-after-signing"
        ),
        pytest.param(lambda body, headers: (body, {**headers, "svix-id": new_message_id()}), id="other-id"),
    ],
)
def test_a_message_not_signed_by_daytona_is_refused_and_changes_nothing(launched, daytona, secret, mangle):
    _drifted(launched, daytona)
    body = state_updated(launched, "started", "stopped")
    body, headers = mangle(body, signed_headers(secret, new_message_id(), body))

    response = post(body, headers)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert state_of(launched) == SandboxState.STARTED
    assert not WebhookDelivery.objects.exists()


@pytest.mark.parametrize("minutes", [-10, 10])
def test_a_stale_or_future_timestamp_is_refused(launched, daytona, secret, minutes):
    _drifted(launched, daytona)
    body = state_updated(launched, "started", "stopped")
    headers = signed_headers(secret, new_message_id(), body, at=datetime.now(UTC) + timedelta(minutes=minutes))

    response = post(body, headers)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert state_of(launched) == SandboxState.STARTED


def test_a_signed_message_is_taken_in_from_a_stranger_without_a_session(launched, daytona, secret):
    _drifted(launched, daytona)
    body = state_updated(launched, "started", "stopped")

    response = post(body, signed_headers(secret, new_message_id(), body))

    assert response.status_code == 204
    assert state_of(launched) == SandboxState.STOPPED


def test_a_replayed_event_is_answered_2xx_and_changes_nothing(launched, daytona, subscribed):
    daytona.set_state(launched.remote_id, "stopped")
    wait_for(lambda: state_of(launched) == SandboxState.STOPPED)
    assert daytona.webhooks.wait_until_idle()
    first = daytona.webhooks.messages[0]
    daytona.webhooks.hold()  # Daytona starts it again, and that event is late
    daytona.set_state(launched.remote_id, "started")
    events_before = AuditEvent.objects.count()

    daytona.webhooks.redeliver(first)  # the same id again: Svix's retry, or a replay
    assert daytona.webhooks.wait_until_idle()

    assert [attempt.status for attempt in daytona.webhooks.attempts] == [204, 204]
    assert state_of(launched) == SandboxState.STOPPED  # a re-read would have found it started
    assert AuditEvent.objects.count() == events_before
    assert WebhookDelivery.objects.count() == 1


def test_other_events_are_accepted_and_ignored(launched, daytona, secret):
    _drifted(launched, daytona)
    body = json.dumps({"event": "snapshot.created", "id": launched.remote_id, "name": "x", "state": "active"})

    response = post(body, signed_headers(secret, new_message_id(), body))

    assert response.status_code == 204
    assert state_of(launched) == SandboxState.STARTED
    assert not WebhookDelivery.objects.exists()


def test_without_a_secret_the_endpoint_is_not_there(launched, daytona, settings):
    settings.DAYTONA_WEBHOOK_SECRET = ""
    _drifted(launched, daytona)
    body = state_updated(launched, "started", "stopped")

    response = post(body, signed_headers(new_secret(), new_message_id(), body))

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_configured"
    assert state_of(launched) == SandboxState.STARTED


def test_the_endpoint_is_in_the_openapi_schema(client):
    schema = client.get("/api/openapi.json").json()

    operation = schema["paths"][ENDPOINT]["post"]
    assert {"204", "400", "404", "503"} <= set(operation["responses"])
    assert "security" not in operation  # signed, not session-authenticated


def test_the_same_event_delivered_at_once_several_times_is_applied_once(launched, daytona, secret, live_server):
    _drifted(launched, daytona)
    body = state_updated(launched, "started", "stopped")
    headers = signed_headers(secret, new_message_id(), body)

    def deliver(_):
        request = urllib.request.Request(live_server.url + ENDPOINT, data=body.encode(), headers=headers)
        with DIRECT.open(request, timeout=15) as response:
            return response.status

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(deliver, range(4)))

    assert statuses == [204] * 4
    assert state_of(launched) == SandboxState.STOPPED
    assert AuditEvent.objects.filter(action=AuditEvent.Action.STATE_SYNCED).count() == 1
    assert WebhookDelivery.objects.count() == 1


def test_neither_the_secret_nor_the_signature_nor_the_body_is_logged(launched, daytona, secret, caplog):
    caplog.set_level(logging.DEBUG)
    body = state_updated(launched, "started", "stopped")
    good = signed_headers(secret, new_message_id(), body)
    forged = signed_headers(new_secret(), new_message_id(), body)

    assert post(body, good).status_code == 204
    assert post(body, forged).status_code == 400

    logged = caplog.text
    assert "daytona webhook" in logged
    for text in (secret, secret.removeprefix("whsec_"), good["svix-signature"], forged["svix-signature"], body):
        assert text not in logged
    assert launched.remote_id in logged  # what was done, and to which sandbox, is


def test_a_row_held_by_a_long_action_answers_503_and_the_retry_applies_it(launched, daytona, subscribed):
    daytona.webhooks.retry_delays = (1.0, 1.0, 1.0)
    holding, release = threading.Event(), threading.Event()

    def hold_the_row():
        try:
            with transaction.atomic():
                Sandbox.objects.select_for_update().get(pk=launched.pk)
                holding.set()
                release.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    try:
        assert holding.wait(10)
        daytona.set_state(launched.remote_id, "stopped")
        wait_for(lambda: len(daytona.webhooks.attempts) >= 1, timeout=30)
        assert daytona.webhooks.attempts[0].status == 503
        assert state_of(launched) == SandboxState.STARTED
    finally:
        release.set()
        holder.join(10)

    wait_for(lambda: state_of(launched) == SandboxState.STOPPED, timeout=30)
    assert daytona.webhooks.wait_until_idle()
    assert [attempt.status for attempt in daytona.webhooks.attempts] == [503, 204]


def test_a_secret_that_is_not_a_signing_secret_answers_503(launched, daytona, settings):
    settings.DAYTONA_WEBHOOK_SECRET = "whsec_"  # the prefix alone, pasted without the key
    body = state_updated(launched, "started", "stopped")

    response = post(body, signed_headers(new_secret(), new_message_id(), body))

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "misconfigured"
