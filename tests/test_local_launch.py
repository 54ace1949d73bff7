"""The portal's launch flow, idle stop and reconcile with sandboxes on this machine."""

import os
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from sandboxes import services
from sandboxes.models import Sandbox, SandboxState
from sandboxes.providers import get_provider
from sandboxes.providers.base import RemoteState
from sandboxes.providers.local import is_alive
from tests.conftest import launch, signed_in
from tests.local_fixtures import local_root, local_settings, run  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db


def test_launch_creates_a_local_sandbox_and_hands_out_access(local_settings, owner):
    response = launch(signed_in(owner))

    assert response.status_code == 200, response.content
    body = response.json()
    sandbox_id = body["sandbox"]["id"]
    assert body["sandbox"]["state"] == "started"
    assert body["sandbox"]["provider"] == "local"
    assert body["sandbox"]["name"] == services.remote_name_for(owner)
    provider = get_provider("local")
    remote = provider.get(sandbox_id)
    assert remote.state is RemoteState.STARTED
    assert remote.labels["joepro-owner"] == str(owner.pk)

    access = body["access"]
    assert access["ssh"]["command"] == f"ssh -p 2222 {access['ssh']['token']}@localhost"
    assert (access["ssh"]["host"], access["ssh"]["port"]) == ("localhost", 2222)
    assert provider.resolve_ssh_token(access["ssh"]["token"]) == sandbox_id
    assert access["preview"]["url"].endswith(f"/sandboxes/{sandbox_id}/preview/?port=3000")
    assert access["preview"]["port"] == 3000
    assert access["terminal"]["url"].endswith(f"/sandboxes/{sandbox_id}/terminal/")
    assert access["ssh"]["expiresAt"] and access["preview"]["expiresAt"] and access["terminal"]["expiresAt"]
    assert response["Cache-Control"] == "no-store"


def test_a_warm_launch_reuses_the_running_sandbox(local_settings, owner):
    client = signed_in(owner)
    first = launch(client).json()
    second = launch(client).json()

    assert second["sandbox"]["id"] == first["sandbox"]["id"]
    assert second["access"] == first["access"]


def test_a_stopped_sandbox_resumes_with_its_files(local_settings, owner):
    client = signed_in(owner)
    first = launch(client).json()
    provider = get_provider("local")
    sandbox_id = first["sandbox"]["id"]
    run(provider, sandbox_id, "echo my-work > ~/work.txt")
    row = Sandbox.objects.get(user=owner)

    services.sandbox_stop(sandbox=row, actor_type="admin", reason="test")

    assert row.state == SandboxState.STOPPED
    assert provider.get(sandbox_id).state is RemoteState.STOPPED
    assert provider.resolve_ssh_token(first["access"]["ssh"]["token"]) is None
    second = launch(client)
    assert second.status_code == 200
    assert second.json()["sandbox"]["id"] == sandbox_id
    assert second.json()["access"]["ssh"]["token"] != first["access"]["ssh"]["token"]
    assert run(provider, sandbox_id, "cat ~/work.txt") == "my-work\n"


def test_idle_stop_stops_a_local_sandbox(local_settings, owner):
    sandbox_id = launch(signed_in(owner)).json()["sandbox"]["id"]
    three_hours_ago = timezone.now() - timedelta(hours=3)
    Sandbox.objects.filter(user=owner).update(last_activity_at=three_hours_ago, last_started_at=three_hours_ago)

    report = services.sandboxes_stop_idle(now=timezone.now())

    assert [s.remote_id for s in report.stopped] == [sandbox_id]
    assert Sandbox.objects.get(user=owner).state == SandboxState.STOPPED
    assert get_provider("local").get(sandbox_id).state is RemoteState.STOPPED


def test_reconcile_notices_a_sandbox_that_died(local_settings, owner):
    sandbox_id = launch(signed_in(owner)).json()["sandbox"]["id"]
    provider = get_provider("local")
    process = provider.record(sandbox_id)["process"]
    os.kill(process["agent_pid"], 9)
    deadline = time.monotonic() + 5
    while is_alive(process["agent_pid"], process["agent_start"]) and time.monotonic() < deadline:
        time.sleep(0.01)

    services.sandboxes_reconcile(now=timezone.now() + timedelta(minutes=5))

    assert Sandbox.objects.get(user=owner).state == SandboxState.STOPPED
    assert launch(signed_in(owner)).json()["sandbox"]["state"] == "started"  # and it resumes
