"""``manage.py reconcile_sandboxes`` against the fake Daytona."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from sandboxes.models import AuditEvent, Sandbox, SandboxState
from sandboxes.services import managed_labels, owner_labels, remote_name_for
from tests.conftest import CANARY_KEY, launch, signed_in

pytestmark = pytest.mark.django_db


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("reconcile_sandboxes", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def drifted(daytona, owner, teammate, outsider):
    """The owner's sandbox stopped behind the portal's back, the teammate's deleted, an
    orphan of the outsider (who has none) and one of no known user."""
    for user in (owner, teammate):
        assert launch(signed_in(user)).status_code == 200
    rows = {user: Sandbox.objects.get(user=user) for user in (owner, teammate)}
    daytona.set_state(rows[owner].remote_id, "stopped")
    daytona.delete_out_of_band(rows[teammate].remote_id)
    adoptable = daytona.add_sandbox(name=remote_name_for(outsider), labels=owner_labels(outsider))
    stranger = daytona.add_sandbox(name="joepro-user-99999", labels={**managed_labels(), "joepro-owner": "99999"})
    # Launches a moment ago are within the listing's lag window; make them old news.
    Sandbox.objects.update(state_changed_at="2020-01-01T00:00:00Z")
    return {"owner": rows[owner], "teammate": rows[teammate], "adoptable": adoptable, "stranger": stranger}


def test_dry_run_reports_and_changes_nothing(daytona, drifted):
    before_rows = list(Sandbox.objects.order_by("pk").values())
    before_events = AuditEvent.objects.count()
    before_calls = daytona.calls

    out, _ = run("--dry-run")

    assert "Would update: 2 (gone: 1" in out
    assert "would adopt: 1" in out
    assert f"orphan reported  {drifted['stranger']['id']}" in out
    assert "Nothing was changed (dry run)." in out
    assert list(Sandbox.objects.order_by("pk").values()) == before_rows
    assert AuditEvent.objects.count() == before_events
    assert daytona.sandbox(drifted["stranger"]["id"]) is not None
    calls = daytona.calls - before_calls
    assert set(calls) <= {"list", "get"}


def test_a_pass_mirrors_adopts_and_reports(daytona, drifted, outsider):
    out, _ = run()

    assert "Updated: 2 (gone: 1" in out
    assert "adopted: 1" in out
    assert "Orphans: 1;" in out
    assert Sandbox.objects.get(pk=drifted["owner"].pk).state == SandboxState.STOPPED
    assert Sandbox.objects.get(pk=drifted["teammate"].pk).state == SandboxState.GONE
    assert Sandbox.objects.get(user=outsider).remote_id == drifted["adoptable"]["id"]
    assert daytona.sandbox(drifted["stranger"]["id"]) is not None


def test_delete_orphans_deletes_what_cannot_be_adopted(daytona, drifted, outsider):
    out, _ = run("--delete-orphans")

    assert f"orphan deleted  {drifted['stranger']['id']}" in out
    assert daytona.sandbox(drifted["stranger"]["id"]) is None
    assert daytona.sandbox(drifted["adoptable"]["id"]) is not None


def test_an_unreadable_provider_exits_non_zero_and_changes_nothing(daytona, drifted):
    daytona.fault("list", "status", status=403, times=5, message=f"key {CANARY_KEY} refused")
    out, err = StringIO(), StringIO()

    with pytest.raises(CommandError):
        call_command("reconcile_sandboxes", stdout=out, stderr=err)

    assert "listing failed" in err.getvalue()
    assert CANARY_KEY not in out.getvalue() + err.getvalue()
    assert Sandbox.objects.get(pk=drifted["teammate"].pk).state == SandboxState.STARTED


def test_stuck_after_takes_a_duration(daytona, owner):
    launch(signed_in(owner))
    Sandbox.objects.filter(user=owner).update(state="starting", state_changed_at="2020-01-01T00:00:00Z")

    out, _ = run("--stuck-after", "10m")

    assert "stuck repaired: 1" in out
    assert Sandbox.objects.get(user=owner).state == SandboxState.STARTED
