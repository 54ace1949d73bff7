"""Providers say when a sandbox entered its state, and the portal dates a change it learns of
late by it (a webhook by the event's own time), so metering ends a stop behind the portal's
back when it happened, not when the portal noticed."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.utils import timezone

from sandboxes.models import Sandbox, SandboxState, StateChange
from sandboxes.services.webhooks import daytona_webhook_receive
from tests.conftest import launch, signed_in
from tests.daytona_fixtures import make_spec, provider  # noqa: F401 - fixture
from tests.fake_daytona.timings import Timings
from tests.fake_daytona.webhooks import new_message_id, new_secret, signed_headers
from tests.local_fixtures import local_root, make_provider, spec  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db


def whole(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


# --- Daytona: updatedAt ---------------------------------------------------------------------


def test_a_daytona_sandbox_says_when_its_state_last_changed(provider, fake_daytona):  # noqa: F811
    created = provider.create(make_spec(), wait_seconds=5)
    assert abs(created.state_changed_at - fake_daytona.now()) < timedelta(seconds=2)

    fake_daytona.advance_clock(3600)
    fake_daytona.set_state(created.id, "stopped")  # behind the portal's back
    fake_daytona.advance_clock(600)

    seen = provider.get(created.id)
    assert abs(seen.state_changed_at - (fake_daytona.now() - timedelta(seconds=600))) < timedelta(seconds=1)
    listed = {remote.id: remote for remote in provider.list_managed({})}[created.id]
    assert listed.state_changed_at == seen.state_changed_at


def test_the_fake_dates_a_transition_taken_late_when_it_was_due(provider, fake_daytona):  # noqa: F811
    created = provider.create(make_spec(), wait_seconds=5)
    fake_daytona.timings = dataclasses.replace(Timings.instant(), stop=2.0)
    provider.stop(created.id, wait_seconds=0)
    asked = fake_daytona.now()
    fake_daytona.advance_clock(3 * 3600)  # nobody looks for three hours

    seen = provider.get(created.id)

    assert seen.backend_state == "stopped"
    assert abs(seen.state_changed_at - (asked + timedelta(seconds=2))) < timedelta(seconds=1)


# --- webhooks: the event's time -------------------------------------------------------------


@pytest.fixture
def clock():
    """The clock of the portal and the fake alike, moved by ``clock.shift``."""
    with time_machine.travel(timezone.now(), tick=True) as traveller:
        yield traveller


@pytest.fixture
def running(daytona, owner, settings, clock) -> Sandbox:
    settings.DAYTONA_WEBHOOK_SECRET = new_secret()
    assert launch(signed_in(owner)).status_code == 200
    return Sandbox.objects.get(user=owner)


def deliver(secret: str, remote_id: str, new: str, happened_at: datetime) -> str:
    stamp = happened_at.isoformat().replace("+00:00", "Z")
    body = json.dumps(
        {
            "event": "sandbox.state.updated",
            "timestamp": stamp,
            "id": remote_id,
            "organizationId": "org",
            "oldState": "started",
            "newState": new,
            "updatedAt": stamp,
        }
    )
    return daytona_webhook_receive(body=body.encode(), headers=signed_headers(secret, new_message_id(), body))


def test_a_late_webhook_dates_the_stop_when_it_happened_not_at_the_later_update(running, daytona, settings, clock):
    clock.shift(600)
    daytona.set_state(running.remote_id, "stopped")
    stopped_at = daytona.now()
    clock.shift(900)
    daytona.store.set_labels(running.remote_id, {"labels": {**running.labels, "note": "x"}})  # moves updatedAt
    clock.shift(900)

    assert deliver(settings.DAYTONA_WEBHOOK_SECRET, running.remote_id, "stopped", stopped_at) == "applied"

    running.refresh_from_db()
    assert running.state == SandboxState.STOPPED
    assert whole(running.state_changed_at) == whole(stopped_at)
    entry = StateChange.objects.filter(sandbox=running).order_by("at", "pk").last()
    assert (entry.state, entry.at, entry.source) == ("stopped", whole(stopped_at), "provider")


def test_a_webhook_about_another_state_leaves_the_date_to_the_provider(running, daytona, settings, clock):
    daytona.set_state(running.remote_id, "stopping")
    clock.shift(60)
    daytona.set_state(running.remote_id, "stopped")
    stopped_at = daytona.now()
    clock.shift(600)

    # The first event (about "stopping") arrives last.
    assert deliver(settings.DAYTONA_WEBHOOK_SECRET, running.remote_id, "stopping", stopped_at - timedelta(seconds=60))

    running.refresh_from_db()
    assert running.state == SandboxState.STOPPED
    assert whole(running.state_changed_at) == whole(stopped_at)


# --- local sandboxes: the record's times ----------------------------------------------------


def test_a_local_sandbox_says_when_it_started_and_stopped(local_root):  # noqa: F811
    local = make_provider(local_root)
    started = local.create(spec(), wait_seconds=15)
    record = local.record(started.id)
    assert started.state_changed_at == datetime.fromtimestamp(record["started_at"], UTC)
    assert started.state_changed_at <= timezone.now()

    stopped = local.stop(started.id, wait_seconds=10)
    record = local.record(started.id)
    assert stopped.state_changed_at == datetime.fromtimestamp(record["stopped_at"], UTC)
    assert local.get(started.id).state_changed_at == stopped.state_changed_at
