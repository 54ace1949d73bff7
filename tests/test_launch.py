"""The launch flow against the HTTP fake of Daytona, through the real SDK."""

from datetime import UTC

import pytest
from django.conf import settings

from sandboxes.models import AuditEvent, Sandbox
from sandboxes.services import remote_name_for
from tests.conftest import launch, signed_in

pytestmark = pytest.mark.django_db


def test_first_launch_creates_the_sandbox_with_the_configured_spec(daytona, owner, settings):
    response = launch(signed_in(owner))

    assert response.status_code == 200
    body = response.json()
    remote = daytona.sandbox(remote_name_for(owner))
    assert body["sandbox"]["id"] == remote["id"]
    assert body["sandbox"]["name"] == remote["name"] == remote_name_for(owner)
    assert body["sandbox"]["state"] == "started"
    assert remote["cpu"] == 2 and remote["memory"] == 4 and remote["disk"] == 8
    assert remote["public"] is False
    assert remote["autoStopInterval"] == settings.SANDBOX_REMOTE_AUTO_STOP_MINUTES
    assert remote["labels"]["joepro-owner"] == str(owner.pk)
    assert remote["labels"]["joepro-managed"] == "true"
    assert daytona.calls["create"] == 1
    assert response["Cache-Control"] == "no-store"


def test_access_has_ssh_preview_and_terminal(daytona, owner):
    access = launch(signed_in(owner)).json()["access"]
    remote = daytona.sandbox(remote_name_for(owner))

    assert daytona.ssh_tokens(remote["id"]) == [access["ssh"]["token"]]
    assert access["ssh"]["token"] in access["ssh"]["command"]
    assert access["ssh"]["expiresAt"]
    assert access["preview"]["port"] == 3000
    assert access["preview"]["url"].startswith("http")
    assert access["terminal"]["url"] == f"http://testserver/sandboxes/{remote['id']}/terminal/"
    assert access["terminal"]["daytonaUrl"].startswith(daytona.url)  # signed link to port 22222
    assert access["preview"]["url"] != access["terminal"]["daytonaUrl"]


def test_ssh_token_lives_120_minutes(daytona, owner):
    from datetime import datetime, timedelta

    access = launch(signed_in(owner)).json()["access"]
    expires = datetime.fromisoformat(access["ssh"]["expiresAt"])
    left = expires - datetime.now(UTC)
    assert timedelta(minutes=118) < left <= timedelta(minutes=121)


def test_warm_launch_makes_one_provider_call_and_reuses_access(daytona, owner):
    client = signed_in(owner)
    first = launch(client).json()
    before = daytona.calls

    second = launch(client).json()

    assert daytona.calls - before == {"get": 1}
    assert second["access"] == first["access"]
    assert second["sandbox"]["id"] == first["sandbox"]["id"]


def test_launch_resumes_a_stopped_sandbox_with_new_access(daytona, owner):
    client = signed_in(owner)
    first = launch(client).json()
    daytona.set_state(first["sandbox"]["id"], "stopped")

    second = launch(client)

    assert second.status_code == 200
    assert second.json()["sandbox"]["id"] == first["sandbox"]["id"]
    assert daytona.sandbox(first["sandbox"]["id"])["state"] == "started"
    assert daytona.calls["create"] == 1 and daytona.calls["start"] == 1
    assert second.json()["access"]["ssh"]["token"] != first["access"]["ssh"]["token"]


def test_launch_restores_an_archived_sandbox(daytona, owner):
    client = signed_in(owner)
    sandbox_id = launch(client).json()["sandbox"]["id"]
    daytona.set_state(sandbox_id, "archived")

    assert launch(client).status_code == 200
    assert daytona.sandbox(sandbox_id)["state"] == "started"


def test_slow_start_answers_202_and_completes_on_a_later_call(daytona, owner, settings):
    settings.SANDBOX_LAUNCH_WAIT_SECONDS = 0.3
    daytona.transition_seconds = 1.5
    client = signed_in(owner)

    pending = launch(client)
    assert pending.status_code == 202
    assert pending.json()["sandbox"]["state"] in ("creating", "starting")
    assert "access" not in pending.json()

    import time

    deadline = time.monotonic() + 10
    while client.get("/api/sandbox").json()["sandbox"]["state"] != "started":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    done = launch(client)
    assert done.status_code == 200
    assert daytona.calls["create"] == 1


def test_launch_adopts_an_existing_sandbox_of_the_same_owner(daytona, owner):
    from sandboxes.services import owner_labels

    existing = daytona.add_sandbox(
        name=remote_name_for(owner), labels=owner_labels(owner), state="stopped", autoStopInterval=15
    )

    response = launch(signed_in(owner))

    assert response.status_code == 200
    assert response.json()["sandbox"]["id"] == existing["id"]
    assert daytona.calls["create"] == 0
    assert AuditEvent.objects.filter(action="adopt").count() == 1
    # Its own idle stop was Daytona's default; the portal's backstop replaces it.
    assert daytona.sandbox(existing["id"])["autoStopInterval"] == settings.SANDBOX_REMOTE_AUTO_STOP_MINUTES


def test_a_same_named_sandbox_of_another_owner_is_never_handed_out(daytona, owner, outsider):
    from sandboxes.services import owner_labels

    daytona.add_sandbox(name=remote_name_for(owner), labels=owner_labels(outsider), state="started")

    response = launch(signed_in(owner))

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "name_taken"
    assert "access" not in response.json()
    assert daytona.calls["ssh_create"] == 0
    assert daytona.calls["signed_preview_url"] == 0


def test_recoverable_error_is_recovered(daytona, owner):
    client = signed_in(owner)
    sandbox_id = launch(client).json()["sandbox"]["id"]
    daytona.set_state(sandbox_id, "error", error_reason="disk hiccup", recoverable=True)

    assert launch(client).status_code == 200
    assert daytona.calls["recover"] == 1
    assert daytona.sandbox(sandbox_id)["state"] == "started"


def test_unrecoverable_error_is_replaced(daytona, owner):
    client = signed_in(owner)
    old_id = launch(client).json()["sandbox"]["id"]
    daytona.set_state(old_id, "error", error_reason="host lost", recoverable=False)

    response = launch(client)

    assert response.status_code == 200
    new_id = response.json()["sandbox"]["id"]
    assert new_id != old_id
    assert daytona.sandbox(new_id)["name"] == remote_name_for(owner)
    assert daytona.calls["delete"] == 1


def test_sandbox_deleted_behind_our_back_is_recreated(daytona, owner):
    client = signed_in(owner)
    old_id = launch(client).json()["sandbox"]["id"]
    daytona.delete_out_of_band(old_id)

    response = launch(client)

    assert response.status_code == 200
    assert response.json()["sandbox"]["id"] != old_id
    assert Sandbox.objects.get(user=owner).remote_id == response.json()["sandbox"]["id"]


def test_each_user_gets_their_own_sandbox(daytona, owner, teammate):
    mine = launch(signed_in(owner)).json()["sandbox"]
    theirs = launch(signed_in(teammate)).json()["sandbox"]
    assert mine["id"] != theirs["id"]
    assert len(daytona.sandboxes()) == 2


def test_audit_records_create_access_and_launch(daytona, owner):
    launch(signed_in(owner))
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"create", "access_minted", "launch"} <= actions
    event = AuditEvent.objects.get(action="launch")
    assert event.actor == owner and event.actor_type == "user"


def test_status_endpoint(daytona, owner):
    client = signed_in(owner)
    missing = client.get("/api/sandbox")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"

    launched = launch(client).json()["sandbox"]
    body = client.get("/api/sandbox").json()
    assert body["sandbox"]["id"] == launched["id"]
    assert body["sandbox"]["state"] == "started"
    assert "access" not in body


# --- an image that does not build -----------------------------------------------------------------


def test_an_image_that_failed_to_build_is_built_once_more_then_shown_not_rebuilt(daytona, owner, settings):
    settings.SANDBOX_LAUNCH_WAIT_SECONDS = 0.2
    daytona.transition_seconds = 600  # builds take long: each launch answers 202 while it builds
    client = signed_in(owner)
    first = launch(client)
    assert first.status_code == 202
    first_id = first.json()["sandbox"]["id"]
    daytona.set_state(first_id, "build_failed", error_reason="npm ERR! 404 left-pad not found")

    # The first time, the portal builds it once more by itself.
    retried = launch(client)
    assert retried.status_code == 202
    second_id = retried.json()["sandbox"]["id"]
    assert second_id != first_id and daytona.calls["create"] == 2
    assert daytona.sandbox(first_id) is None  # an errored sandbox vanishes at its delete

    # The same image fails again: shown to the user, and nothing is deleted or built again.
    daytona.set_state(second_id, "build_failed", error_reason="npm ERR! 404 left-pad not found")
    for _ in range(3):
        refused = launch(client)
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == "build_failed"
        assert "left-pad not found" in error["message"]
    assert daytona.calls["create"] == 2 and daytona.calls["delete"] == 1
    assert daytona.sandbox(second_id)["state"] == "build_failed"
    row = Sandbox.objects.get(user=owner)
    assert (row.state, row.last_error_code) == ("error", "build_failed")  # what the operator sees
    assert "left-pad not found" in row.last_error


def test_a_new_image_gets_its_own_retry(daytona, owner, settings):
    client = signed_in(owner)
    sandbox_id = launch(client).json()["sandbox"]["id"]
    Sandbox.objects.filter(user=owner).update(build_retried_for=settings.SANDBOX_IMAGE)
    daytona.set_state(sandbox_id, "build_failed", error_reason="bad base image")
    assert launch(client).json()["error"]["code"] == "build_failed"

    settings.SANDBOX_IMAGE = "node:22-bookworm"  # the operator fixed the image

    assert launch(client).status_code == 200
    assert daytona.calls["create"] == 2


def test_an_archived_sandbox_is_restored_by_waiting_not_by_starting_it_again(daytona, owner, settings):
    from tests.fake_daytona.timings import Timings

    settings.SANDBOX_LAUNCH_WAIT_SECONDS = 0.3
    client = signed_in(owner)
    sandbox_id = launch(client).json()["sandbox"]["id"]
    daytona.set_state(sandbox_id, "archived")
    daytona.timings = Timings.realistic().with_changes(hold_limit=0)  # restores take a while

    first = launch(client)
    assert (first.status_code, first.json()["sandbox"]["state"]) == (202, "starting")
    assert daytona.calls["start"] == 1
    # The page polls, and clicks again: the restore is waited for, not asked for again.
    assert client.get("/api/sandbox").json()["sandbox"]["state"] == "starting"
    assert launch(client).status_code == 202
    assert daytona.calls["start"] == 1

    daytona.advance_clock(120)
    done = launch(client)
    assert done.status_code == 200
    assert daytona.calls["start"] == 1
