"""Reconcile keeps each row true to what runs on Daytona, at the cost of pages, not sandboxes."""

import math
import threading
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.utils import timezone

from sandboxes.models import AuditEvent, Sandbox, SandboxState
from sandboxes.services import (
    exclusive_lock,
    managed_labels,
    owner_labels,
    remote_name_for,
    sandbox_delete,
    sandbox_get_or_create_row,
    sandbox_launch,
    sandboxes_reconcile,
)
from tests.conftest import launch, signed_in

pytestmark = pytest.mark.django_db


def later(minutes=5):
    """A reconcile time past the listing's lag window after the launches a test made."""
    return timezone.now() + timedelta(minutes=minutes)


def launched(daytona, user) -> Sandbox:
    assert launch(signed_in(user)).status_code == 200
    return Sandbox.objects.get(user=user)


@pytest.mark.parametrize(
    "remote_state, row_state",
    [("stopped", "stopped"), ("archived", "archived"), ("error", "error"), ("paused", "stopped")],
)
def test_a_sandbox_changed_behind_the_portals_back_is_mirrored(daytona, owner, remote_state, row_state):
    sandbox = launched(daytona, owner)
    daytona.set_state(sandbox.remote_id, remote_state, error_reason="disk full" if remote_state == "error" else None)
    before = daytona.calls

    report = sandboxes_reconcile(now=later())

    sandbox.refresh_from_db()
    assert sandbox.state == row_state
    assert sandbox.access_ciphertext is None  # access of a sandbox that is not running is dropped
    assert report.updated == 1
    assert daytona.calls - before == {"list": 1}
    assert AuditEvent.objects.filter(sandbox=sandbox, action="state_synced").count() == 1
    if remote_state == "error":
        assert sandbox.last_error == "disk full"


def test_a_sandbox_started_behind_the_portals_back_is_mirrored(daytona, owner):
    sandbox = launched(daytona, owner)
    Sandbox.objects.filter(pk=sandbox.pk).update(state=SandboxState.STOPPED, backend_state="stopped")

    report = sandboxes_reconcile(now=later())

    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.STARTED
    assert report.updated == 1
    assert daytona.sandbox(sandbox.remote_id)["state"] == "started"


def test_a_row_that_matches_its_sandbox_is_left_alone(daytona, owner):
    sandbox = launched(daytona, owner)
    synced = Sandbox.objects.get(pk=sandbox.pk).last_synced_at

    report = sandboxes_reconcile(now=later())

    assert report.updated == 0 and report.lookups == 0
    assert Sandbox.objects.get(pk=sandbox.pk).last_synced_at == synced


def test_a_sandbox_deleted_behind_the_portals_back_is_marked_gone_and_recreated_on_launch(daytona, owner):
    sandbox = launched(daytona, owner)
    old_id = sandbox.remote_id
    daytona.delete_out_of_band(old_id)

    report = sandboxes_reconcile(now=later())

    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.GONE
    assert sandbox.remote_id == ""
    assert sandbox.access_ciphertext is None
    assert report.gone == 1 and report.lookups == 1  # absent from the list: confirmed by one get
    response = launch(signed_in(owner))
    assert response.status_code == 200
    assert response.json()["sandbox"]["id"] not in ("", old_id)
    assert daytona.calls["create"] == 2
    assert [s["name"] for s in daytona.sandboxes()] == [remote_name_for(owner)]


def test_a_sandbox_being_destroyed_counts_as_gone(daytona, owner):
    sandbox = launched(daytona, owner)
    daytona.set_state(sandbox.remote_id, "destroying")  # deleted elsewhere, not finished yet

    report = sandboxes_reconcile(now=later())

    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.GONE and sandbox.remote_id == ""
    assert report.gone == 1


def test_an_orphan_of_a_user_without_a_sandbox_is_adopted(daytona, owner):
    orphan = daytona.add_sandbox(
        name=remote_name_for(owner), labels=owner_labels(owner), state="started", autoStopInterval=15
    )

    report = sandboxes_reconcile(now=later())

    sandbox = Sandbox.objects.get(user=owner)
    assert sandbox.remote_id == orphan["id"]
    assert sandbox.state == SandboxState.STARTED
    assert report.adopted == 1 and report.orphans == []
    assert daytona.sandbox(orphan["id"])["autoStopInterval"] == settings.SANDBOX_REMOTE_AUTO_STOP_MINUTES
    assert AuditEvent.objects.filter(sandbox=sandbox, action="adopt").count() == 1
    assert launch(signed_in(owner)).json()["sandbox"]["id"] == orphan["id"]
    assert daytona.calls["create"] == 0


def test_a_sandbox_from_before_templates_and_a_node_one_of_one_owner_are_adopted_once(daytona, owner):
    """Both are the owner's Node.js sandbox: one carries no template label, the other says nodejs."""
    daytona.add_sandbox(name="joepro-old-1", labels=owner_labels(owner), state="started")
    daytona.add_sandbox(
        name="joepro-old-2", labels={**owner_labels(owner), "joepro-template": "nodejs"}, state="started"
    )

    report = sandboxes_reconcile(now=later())

    assert report.adopted == 1 and Sandbox.objects.filter(user=owner).count() == 1
    assert [orphan.why for orphan in report.orphans] == [
        "the owner has another orphan of this template adopted in this pass"
    ]


def test_a_crash_between_remote_create_and_database_write_is_repaired_by_adoption(daytona, owner):
    """The row exists (made before the launch) but never learnt its remote sandbox."""
    row = sandbox_get_or_create_row(user=owner)
    orphan = daytona.add_sandbox(name=row.remote_name, labels=owner_labels(owner), state="stopped")

    report = sandboxes_reconcile(now=later())

    row.refresh_from_db()
    assert report.adopted == 1
    assert row.remote_id == orphan["id"] and row.state == SandboxState.STOPPED


def test_an_orphan_whose_auto_stop_cannot_be_set_is_left_for_the_next_pass(daytona, owner):
    orphan = daytona.add_sandbox(name=remote_name_for(owner), labels=owner_labels(owner), state="started")
    daytona.fault("autostop", "status", status=500, times=10)

    report = sandboxes_reconcile(now=later())

    assert report.adopted == 0
    assert [error for error in report.errors if "auto-stop" in error]
    assert not Sandbox.objects.filter(user=owner).exists()
    daytona.clear_faults()
    assert sandboxes_reconcile(now=later()).adopted == 1
    assert Sandbox.objects.get(user=owner).remote_id == orphan["id"]


def test_orphans_that_cannot_be_adopted_are_reported_not_deleted(daytona, owner):
    launched(daytona, owner)
    stranger = daytona.add_sandbox(name="joepro-user-99999", labels={**managed_labels(), "joepro-owner": "99999"})
    duplicate = daytona.add_sandbox(name="joepro-extra", labels=owner_labels(owner))
    unmanaged = daytona.add_sandbox(name="someone-elses", labels={"team": "data"})

    report = sandboxes_reconcile(now=later())

    reported = {orphan.remote_id: orphan.why for orphan in report.orphans}
    assert set(reported) == {stranger["id"], duplicate["id"]}
    assert "names no user" in reported[stranger["id"]]
    assert "already has sandbox" in reported[duplicate["id"]]
    assert daytona.calls["delete"] == 0
    assert daytona.sandbox(unmanaged["id"]) is not None
    assert Sandbox.objects.count() == 1


def test_orphans_are_deleted_only_when_asked(daytona, owner):
    stranger = daytona.add_sandbox(name="joepro-user-99999", labels={**managed_labels(), "joepro-owner": "99999"})
    unmanaged = daytona.add_sandbox(name="someone-elses", labels={"team": "data"})

    report = sandboxes_reconcile(now=later(), delete_orphans=True)

    assert [orphan.deleted for orphan in report.orphans] == [True]
    assert daytona.sandbox(stranger["id"]) is None
    assert daytona.sandbox(unmanaged["id"]) is not None
    event = AuditEvent.objects.get(action="delete")
    assert event.sandbox is None and event.sandbox_name == "joepro-user-99999"


@pytest.mark.parametrize(
    "stuck_state, remote_state, repaired_state",
    [("starting", "started", "started"), ("creating", "started", "started"), ("stopping", "stopped", "stopped")],
)
def test_rows_stuck_mid_transition_are_repaired_from_the_remote_state(
    daytona, owner, stuck_state, remote_state, repaired_state
):
    sandbox = launched(daytona, owner)
    daytona.set_state(sandbox.remote_id, remote_state)
    now = timezone.now()
    Sandbox.objects.filter(pk=sandbox.pk).update(
        state=stuck_state, backend_state=stuck_state, state_changed_at=now - timedelta(hours=1)
    )

    report = sandboxes_reconcile(now=now)

    sandbox.refresh_from_db()
    assert sandbox.state == repaired_state
    assert report.repaired == 1


def test_a_stuck_row_whose_remote_is_still_mid_transition_is_looked_up_and_reported(daytona, owner):
    sandbox = launched(daytona, owner)
    daytona.set_state(sandbox.remote_id, "starting")  # a transition that never ends
    now = timezone.now()
    Sandbox.objects.filter(pk=sandbox.pk).update(
        state="starting", backend_state="starting", state_changed_at=now - timedelta(hours=1)
    )
    before = daytona.calls

    report = sandboxes_reconcile(now=now)

    assert report.stuck == 1 and report.repaired == 0
    assert daytona.calls - before == {"list": 1, "get": 1}
    assert Sandbox.objects.get(pk=sandbox.pk).state == SandboxState.STARTING


def test_a_stuck_row_that_never_learnt_its_sandbox_is_marked_gone_when_there_is_none(daytona, owner):
    row = sandbox_get_or_create_row(user=owner)
    now = timezone.now()
    Sandbox.objects.filter(pk=row.pk).update(state="creating", state_changed_at=now - timedelta(hours=1))

    report = sandboxes_reconcile(now=now)

    assert Sandbox.objects.get(pk=row.pk).state == SandboxState.GONE
    assert report.repaired == 1


def _rows_for(remote_ids, *, state, changed_at):
    User = get_user_model()
    users = User.objects.bulk_create(
        [User(username=f"bulk{i}@example.com", email=f"bulk{i}@example.com") for i in range(len(remote_ids))]
    )
    Sandbox.objects.bulk_create(
        [
            Sandbox(
                user=user,
                provider="daytona",
                remote_name=f"joepro-user-{user.pk}",
                remote_id=remote_id,
                state=state,
                backend_state=state,
                state_changed_at=changed_at,
                cpu=2,
                memory_gb=4,
                disk_gb=8,
                labels=owner_labels(user),
            )
            for user, remote_id in zip(users, remote_ids, strict=True)
        ]
    )


def test_paging_over_many_sandboxes_costs_one_call_per_page(daytona):
    count = 450
    ids = daytona.seed(count, labels=managed_labels(), state="stopped", name_prefix="bulk-")
    now = timezone.now()
    _rows_for(ids, state="started", changed_at=now - timedelta(hours=3))

    report = sandboxes_reconcile(now=now)

    pages = math.ceil(count / 200)
    assert daytona.calls == {"list": pages}
    assert report.listed == count and report.updated == count and report.lookups == 0
    assert Sandbox.objects.filter(state="stopped").count() == count
    assert AuditEvent.objects.filter(action="state_synced").count() == count


def test_lookups_are_capped_and_the_rest_wait_for_the_next_pass(daytona):
    ids = daytona.seed(300, labels=managed_labels(), state="started", name_prefix="bulk-")
    now = timezone.now()
    _rows_for(ids, state="started", changed_at=now - timedelta(hours=3))
    for remote_id in ids[:30]:
        daytona.delete_out_of_band(remote_id)

    first = sandboxes_reconcile(now=now)
    second = sandboxes_reconcile(now=now)

    assert first.lookups == 20 and first.gone == 20 and first.deferred == 10  # max(20, 1% of rows)
    assert second.gone == 10 and second.deferred == 0
    assert Sandbox.objects.filter(state="gone").count() == 30


def test_a_just_deleted_sandbox_listed_again_is_not_resurrected(daytona, owner):
    """Daytona's list can show a deleted sandbox for a moment (daytonaio/daytona#5138)."""
    daytona.list_lag(60)
    sandbox = launched(daytona, owner)
    sandboxes_reconcile(now=later())  # the listing snapshot now holds the sandbox
    sandbox_delete(sandbox=sandbox, actor_type="admin", reason="test")

    report = sandboxes_reconcile(now=later())

    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.GONE and sandbox.remote_id == ""
    assert report.adopted == 0 and report.orphans == []
    assert report.lookups == 1  # the listed ghost was checked with one get before anything was done


def test_a_sandbox_deleted_out_of_band_but_still_listed_is_marked_gone_once_the_list_catches_up(daytona, owner):
    daytona.list_lag(60)
    sandbox = launched(daytona, owner)
    sandboxes_reconcile(now=later())
    daytona.delete_out_of_band(sandbox.remote_id)

    sandboxes_reconcile(now=later())
    assert Sandbox.objects.get(pk=sandbox.pk).state == SandboxState.STARTED  # the list still shows it

    daytona.advance_clock(61)
    report = sandboxes_reconcile(now=later())
    assert Sandbox.objects.get(pk=sandbox.pk).state == SandboxState.GONE
    assert report.gone == 1


def test_a_state_the_portal_changed_moments_ago_is_confirmed_not_overwritten_by_a_stale_list(daytona, owner):
    daytona.list_lag(60)
    sandbox = launched(daytona, owner)
    sandboxes_reconcile(now=timezone.now())  # snapshot: started
    from sandboxes.services import sandbox_stop

    sandbox_stop(sandbox=sandbox, actor_type="user", actor=owner, reason="done for today")
    before = daytona.calls

    sandboxes_reconcile(now=timezone.now())

    assert Sandbox.objects.get(pk=sandbox.pk).state == SandboxState.STOPPED
    assert daytona.calls - before == {"list": 1, "get": 1}


def test_reconcile_is_not_activity(daytona, owner):
    sandbox = launched(daytona, owner)
    remote_activity = daytona.sandbox(sandbox.remote_id)["lastActivityAt"]
    row_activity = Sandbox.objects.get(pk=sandbox.pk).last_activity_at
    daytona.advance_clock(600)

    sandboxes_reconcile(now=later(15))

    assert daytona.sandbox(sandbox.remote_id)["lastActivityAt"] == remote_activity
    assert Sandbox.objects.get(pk=sandbox.pk).last_activity_at == row_activity
    assert daytona.calls["last_activity"] == 0
    assert not any(operation.startswith("pty") for operation in daytona.calls)


def test_the_providers_own_activity_is_folded_into_the_row(daytona, owner):
    sandbox = launched(daytona, owner)
    used_at = (timezone.now() + timedelta(minutes=30)).replace(microsecond=0)  # SSH, seen by Daytona only
    daytona.set_state(sandbox.remote_id, "started", lastActivityAt=used_at.isoformat())

    sandboxes_reconcile(now=later(40))

    assert Sandbox.objects.get(pk=sandbox.pk).last_activity_at == used_at.replace(second=0)  # to the minute


def test_a_failed_listing_changes_nothing(daytona, owner):
    sandbox = launched(daytona, owner)
    daytona.delete_out_of_band(sandbox.remote_id)
    daytona.fault("list", "status", status=403, times=5)

    report = sandboxes_reconcile(now=later())

    assert report.errors and "listing failed" in report.errors[0]
    assert Sandbox.objects.get(pk=sandbox.pk).state == SandboxState.STARTED


@pytest.mark.django_db(transaction=True)
def test_a_row_relaunched_while_reconcile_looked_it_up_is_left_alone(daytona, owner):
    """The owner relaunches while reconcile confirms the old sandbox is gone: the fresh row wins."""
    sandbox = launched(daytona, owner)
    old_id = sandbox.remote_id
    daytona.delete_out_of_band(old_id)
    daytona.fault("get", "slow", seconds=2)  # reconcile's lookup of the missing sandbox
    gets_before = daytona.calls["get"]
    reports = []

    def reconcile_elsewhere():
        try:
            reports.append(sandboxes_reconcile(now=later()))
        finally:
            connections.close_all()

    thread = threading.Thread(target=reconcile_elsewhere)
    thread.start()
    while daytona.calls["get"] == gets_before:  # reconcile is now waiting for its lookup
        threading.Event().wait(0.02)
    sandbox_launch(user=owner)
    assert thread.is_alive()  # the relaunch finished while reconcile still looked
    thread.join()

    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.STARTED and sandbox.remote_id not in ("", old_id)
    assert reports[0].busy == 1 and reports[0].gone == 0


def test_a_second_reconcile_while_one_runs_does_nothing(daytona, owner):
    launched(daytona, owner)
    reports = []

    def run_elsewhere():
        try:
            reports.append(sandboxes_reconcile(now=later()))
        finally:
            connections.close_all()

    with exclusive_lock("sandboxes-reconcile") as acquired:
        assert acquired
        thread = threading.Thread(target=run_elsewhere)
        thread.start()
        thread.join()

    assert reports[0].lock_held
    assert daytona.calls["list"] == 0


def test_a_user_pending_row_without_a_remote_stays_pending(daytona, owner):
    row = sandbox_get_or_create_row(user=owner)

    sandboxes_reconcile(now=later())

    assert Sandbox.objects.get(pk=row.pk).state == SandboxState.PENDING
