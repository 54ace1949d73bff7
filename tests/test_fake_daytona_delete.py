"""The Daytona emulator's delete, through the real ``daytona`` SDK and raw HTTP where the SDK
hides the answer: the rename that frees the name at once, 409 while destroying, 404 once
gone, errored sandboxes vanishing at once, and the states a delete may start from.

The rules follow Daytona's open-source server (v0.190.0: ``SandboxService.destroy``,
``Sandbox.getSoftDeleteUpdate``, ``SandboxDto.getSandboxState``); the hosted service is
newer and may differ in detail.
"""

from __future__ import annotations

import re
import time

import pytest
from daytona import CreateSandboxFromSnapshotParams, DaytonaConflictError, DaytonaNotFoundError

from tests.daytona_fixtures import _create, sdk  # noqa: F401 - fixtures
from tests.fake_daytona.fixtures import fake_daytona, fake_daytona_server  # noqa: F401
from tests.fake_daytona.raw import call
from tests.fake_daytona.timings import Timings

REALISTIC = Timings.realistic()
DESTROY_SECONDS = REALISTIC.destroy_queue + REALISTIC.destroy


def test_first_delete_renames_frees_the_name_and_answers_destroying(fake_daytona, sdk):  # noqa: F811
    sandbox_id = fake_daytona.add_sandbox(name="u-42", state="started")["id"]
    fake_daytona.timings = REALISTIC

    answer = call(fake_daytona, "DELETE", f"/sandbox/{sandbox_id}")

    assert answer.status == 200
    assert (answer.body["state"], answer.body["desiredState"]) == ("destroying", "destroyed")
    assert re.fullmatch(r"DESTROYED_u-42_\d{13}", answer.body["name"])
    with pytest.raises(DaytonaNotFoundError, match="Failed to get sandbox: Sandbox with ID or name u-42 not found"):
        sdk.get("u-42")
    again = sdk.create(CreateSandboxFromSnapshotParams(name="u-42"), timeout=10)
    assert again.id != sandbox_id and again.state == "started"
    assert sdk.get(sandbox_id).state == "destroying"


def test_a_second_delete_is_409_while_destroying_and_404_once_gone(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.timings = REALISTIC
    sandbox.delete()
    assert sandbox.state == "destroying"

    with pytest.raises(DaytonaConflictError, match="^Failed to remove sandbox: Sandbox state change in progress$"):
        sandbox.delete()
    conflict = call(fake_daytona, "DELETE", f"/sandbox/{sandbox.id}")
    assert (conflict.status, conflict.body["message"]) == (409, "Sandbox state change in progress")

    fake_daytona.advance_clock(DESTROY_SECONDS + 0.1)
    with pytest.raises(DaytonaNotFoundError):
        sdk.get(sandbox.id)
    gone = call(fake_daytona, "DELETE", f"/sandbox/{sandbox.id}")
    assert (gone.status, gone.body["message"]) == (404, f"Sandbox with ID or name {sandbox.id} not found")


def test_destruction_takes_its_time(fake_daytona, sdk):  # noqa: F811
    sandbox_id = fake_daytona.add_sandbox(name="slow", state="stopped")["id"]
    fake_daytona.timings = REALISTIC.with_changes(destroy_queue=1, destroy=4)

    assert call(fake_daytona, "DELETE", f"/sandbox/{sandbox_id}").body["state"] == "destroying"
    fake_daytona.advance_clock(1.1)
    assert sdk.get(sandbox_id).state == "destroying"
    assert fake_daytona.sandbox(sandbox_id)["state"] == "destroying"
    fake_daytona.advance_clock(4)
    assert fake_daytona.sandbox(sandbox_id) is None


def test_an_archived_sandbox_being_deleted_reads_archived_with_desired_destroyed(fake_daytona, sdk):  # noqa: F811
    sandbox_id = fake_daytona.add_sandbox(name="cold", state="archived")["id"]
    fake_daytona.timings = REALISTIC

    answer = call(fake_daytona, "DELETE", f"/sandbox/{sandbox_id}")

    assert answer.status == 200
    assert (answer.body["state"], answer.body["desiredState"]) == ("archived", "destroyed")
    seen = sdk.get(sandbox_id)
    assert (seen.state, seen.desired_state) == ("archived", "destroyed")
    assert call(fake_daytona, "DELETE", f"/sandbox/{sandbox_id}").status == 409
    # An archive has no runner to tear down: it goes without a ``destroying`` phase.
    fake_daytona.advance_clock(DESTROY_SECONDS + 0.1)
    with pytest.raises(DaytonaNotFoundError):
        sdk.get(sandbox_id)


@pytest.mark.parametrize("state", ["error", "build_failed"])
def test_errored_sandboxes_vanish_at_the_first_delete(fake_daytona, sdk, state):  # noqa: F811
    sandbox_id = fake_daytona.add_sandbox(name="broken", state="started")["id"]
    fake_daytona.set_state(sandbox_id, state, error_reason="disk full")
    fake_daytona.timings = REALISTIC

    answer = call(fake_daytona, "DELETE", f"/sandbox/{sandbox_id}")

    assert answer.status == 200
    assert (answer.body["state"], answer.body["desiredState"]) == (state, "destroyed")
    with pytest.raises(DaytonaNotFoundError):
        sdk.get(sandbox_id)
    again = call(fake_daytona, "DELETE", f"/sandbox/{sandbox_id}")
    assert (again.status, again.body["message"]) == (404, f"Sandbox with ID or name {sandbox_id} not found")
    assert fake_daytona.sandbox(sandbox_id) is None


def test_archiving_and_pending_build_sandboxes_can_be_deleted(fake_daytona):  # noqa: F811
    stopped_id = fake_daytona.add_sandbox(name="going-cold", state="stopped")["id"]
    fake_daytona.timings = REALISTIC
    assert call(fake_daytona, "POST", f"/sandbox/{stopped_id}/archive").body["state"] == "archiving"
    archiving = call(fake_daytona, "DELETE", f"/sandbox/{stopped_id}")
    assert archiving.status == 200
    assert (archiving.body["state"], archiving.body["desiredState"]) == ("archiving", "destroyed")

    body = {"name": "img", "buildInfo": {"dockerfileContent": "FROM python:3.12-slim\n"}}
    building = call(fake_daytona, "POST", "/sandbox", body).body
    assert building["state"] == "pending_build"
    first = call(fake_daytona, "DELETE", f"/sandbox/{building['id']}")
    assert first.status == 200
    assert (first.body["state"], first.body["desiredState"]) == ("pending_build", "destroyed")
    # The server exempts pending_build from its "change in progress" check, so even a
    # second delete is accepted (and renames again); the hosted service may have changed.
    second = call(fake_daytona, "DELETE", f"/sandbox/{building['id']}")
    assert second.status == 200 and second.body["name"].startswith("DESTROYED_DESTROYED_img_")


def test_delete_during_another_change_is_a_conflict(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.set_state(sandbox.id, "starting", then="started", after=60)

    with pytest.raises(DaytonaConflictError, match="Sandbox state change in progress"):
        sandbox.delete()
    fake_daytona.advance_clock(61)
    sandbox.delete()


def test_the_sdk_waits_for_destruction_when_asked(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk)
    fake_daytona.timings = REALISTIC.scaled(0.2)
    started = time.monotonic()

    sandbox.delete(timeout=10, wait=True)

    assert time.monotonic() - started >= 0.5
    with pytest.raises(DaytonaNotFoundError):
        sdk.get(sandbox.id)


def test_stopping_an_ephemeral_sandbox_deletes_it(fake_daytona, sdk):  # noqa: F811
    sandbox = _create(sdk, auto_delete_interval=0)
    fake_daytona.timings = REALISTIC

    answer = call(fake_daytona, "POST", f"/sandbox/{sandbox.id}/stop?force=false")

    assert (answer.body["state"], answer.body["desiredState"]) == ("destroying", "destroyed")
    assert answer.body["name"].startswith("DESTROYED_u-42_")
    fake_daytona.advance_clock(DESTROY_SECONDS + 0.1)
    with pytest.raises(DaytonaNotFoundError):
        sdk.get(sandbox.id)
