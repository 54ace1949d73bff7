"""The operators' console in Django admin, against the fake Daytona."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from sandboxes.models import AuditEvent, Sandbox, SandboxState
from tests.conftest import CANARY_KEY, launch, signed_in

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/sandboxes/sandbox/"


@pytest.fixture
def sandboxes(daytona, owner, teammate):
    """The owner's sandbox idle for three hours, the teammate's in use; with their access."""
    access = {}
    for user in (owner, teammate):
        response = launch(signed_in(user))
        assert response.status_code == 200
        access[user.email] = response.json()["access"]
    three_hours_ago = timezone.now() - timedelta(hours=3)
    Sandbox.objects.filter(user=owner).update(last_activity_at=three_hours_ago, last_started_at=three_hours_ago)
    rows = {user.email: Sandbox.objects.get(user=user) for user in (owner, teammate)}
    return rows, access


def act(console: Client, action: str, *sandboxes: Sandbox):
    response = console.post(CHANGELIST, {"action": action, "_selected_action": [s.pk for s in sandboxes]}, follow=True)
    assert response.status_code == 200
    return [str(message) for message in response.context["messages"]]


def test_the_list_shows_owner_state_remote_and_idle_time_without_secrets(console, sandboxes):
    rows, access = sandboxes

    page = console.get(CHANGELIST).content.decode()

    for email, sandbox in rows.items():
        assert email in page and sandbox.remote_name in page and sandbox.remote_id in page
    assert "3h 00m" in page  # the owner's idle time
    assert "2 CPU / 4 GB / 8 GB disk" in page
    secrets = [CANARY_KEY] + [
        a[kind]["token" if kind == "ssh" else "url"] for a in access.values() for kind in ("ssh", "preview", "terminal")
    ]
    detail = console.get(f"{CHANGELIST}{rows['owner@example.com'].pk}/change/").content.decode()
    for text in (page, detail):
        assert not any(secret in text for secret in secrets)


def test_search_by_owner_email_and_remote_name(console, sandboxes):
    rows, _ = sandboxes
    owner_row = rows["owner@example.com"]

    by_email = console.get(CHANGELIST, {"q": "owner@"}).context["cl"].result_list
    by_name = console.get(CHANGELIST, {"q": owner_row.remote_name}).context["cl"].result_list

    assert [s.pk for s in by_email] == [owner_row.pk]
    assert [s.pk for s in by_name] == [owner_row.pk]


def test_filters_on_state_provider_and_idle(console, sandboxes):
    rows, _ = sandboxes
    Sandbox.objects.filter(pk=rows["teammate@example.com"].pk).update(state=SandboxState.STOPPED)

    def listed(**params):
        return {s.pk for s in console.get(CHANGELIST, params).context["cl"].result_list}

    assert listed(state__exact="stopped") == {rows["teammate@example.com"].pk}
    assert listed(provider__exact="daytona") == {s.pk for s in rows.values()}
    assert listed(idle="over_limit") == {rows["owner@example.com"].pk}
    assert listed(idle="active") == {rows["teammate@example.com"].pk}


def test_remote_fields_are_read_only_and_rows_cannot_be_added_or_deleted(console, sandboxes):
    rows, _ = sandboxes
    sandbox = rows["owner@example.com"]

    response = console.post(f"{CHANGELIST}{sandbox.pk}/change/", {"remote_id": "hijacked", "state": "stopped"})

    assert Sandbox.objects.get(pk=sandbox.pk).remote_id == sandbox.remote_id
    assert response.status_code in (302, 403) or "hijacked" not in response.content.decode()
    assert console.get(f"{CHANGELIST}add/").status_code == 403
    assert console.get(f"{CHANGELIST}{sandbox.pk}/delete/").status_code == 403


def test_stop_action_stops_revokes_and_records_the_admin(console, operator, daytona, sandboxes):
    rows, access = sandboxes
    sandbox = rows["owner@example.com"]

    messages = act(console, "stop_sandboxes", sandbox)

    assert messages[0] == "Stopped 1, already stopped 0, failed 0."
    assert daytona.sandbox(sandbox.remote_id)["state"] == "stopped"
    assert daytona.ssh_tokens(sandbox.remote_id) == []
    assert Sandbox.objects.get(pk=sandbox.pk).state == SandboxState.STOPPED
    event = AuditEvent.objects.get(sandbox=sandbox, action="stop")
    assert event.actor == operator and event.actor_type == "admin"
    assert "ops@example.com" in event.reason
    assert act(console, "stop_sandboxes", sandbox)[0] == "Stopped 0, already stopped 1, failed 0."


def test_start_action_resumes_a_stopped_sandbox(console, operator, daytona, sandboxes):
    rows, _ = sandboxes
    sandbox = rows["owner@example.com"]
    daytona.set_state(sandbox.remote_id, "stopped")
    Sandbox.objects.filter(pk=sandbox.pk).update(state=SandboxState.STOPPED)

    messages = act(console, "start_sandboxes", sandbox)

    assert messages[0] == "Started 1, failed 0."
    assert daytona.sandbox(sandbox.remote_id)["state"] == "started"
    assert Sandbox.objects.get(pk=sandbox.pk).state == SandboxState.STARTED
    assert AuditEvent.objects.get(sandbox=sandbox, action="start").actor == operator


def test_delete_action_destroys_the_remote_sandbox_and_the_next_launch_recreates_it(
    console, operator, daytona, sandboxes, owner
):
    rows, _ = sandboxes
    sandbox = rows["owner@example.com"]

    messages = act(console, "delete_sandboxes", sandbox)

    assert messages[0] == "Deleted 1, failed 0."
    assert daytona.sandbox(sandbox.remote_id) is None
    row = Sandbox.objects.get(pk=sandbox.pk)
    assert row.state == SandboxState.GONE and row.remote_id == ""
    assert AuditEvent.objects.get(sandbox=sandbox, action="delete").actor == operator
    relaunched = launch(signed_in(owner)).json()["sandbox"]
    assert relaunched["id"] != sandbox.remote_id and relaunched["state"] == "started"


def test_refresh_action_mirrors_the_remote_state(console, operator, daytona, sandboxes):
    rows, _ = sandboxes
    sandbox = rows["teammate@example.com"]
    daytona.set_state(sandbox.remote_id, "archived")

    messages = act(console, "refresh_sandboxes", sandbox)

    assert messages[0] == "Refreshed 1, failed 0."
    assert Sandbox.objects.get(pk=sandbox.pk).state == SandboxState.ARCHIVED
    event = AuditEvent.objects.get(sandbox=sandbox, action="state_synced")
    assert event.actor == operator and event.detail == {"from": "started", "to": "archived"}


def test_an_action_that_fails_says_so(console, daytona, sandboxes):
    rows, _ = sandboxes
    daytona.fault("start", "status", status=403, message=f"nope {CANARY_KEY}")
    sandbox = rows["owner@example.com"]
    daytona.set_state(sandbox.remote_id, "stopped")

    messages = act(console, "start_sandboxes", sandbox)

    assert messages[0] == "Started 0, failed 1."
    assert sandbox.remote_name in messages[1] and "HTTP 403" in messages[1]
    assert not any(CANARY_KEY in message for message in messages)


def test_the_audit_log_is_visible_and_read_only(console, sandboxes):
    rows, _ = sandboxes
    event = AuditEvent.objects.filter(action="launch").first()

    page = console.get("/admin/sandboxes/auditevent/").content.decode()
    assert rows["owner@example.com"].remote_name in page and "launch" in page
    detail = console.get(f"/admin/sandboxes/auditevent/{event.pk}/change/")
    assert detail.status_code == 200 and 'name="_save"' not in detail.content.decode()
    assert console.get("/admin/sandboxes/auditevent/add/").status_code == 403
    assert console.post(f"/admin/sandboxes/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_who_may_see_and_act(daytona, sandboxes, owner, teammate, outsider):
    """A user without staff status gets the admin login; staff without permissions are refused;
    staff who may only view see the list but cannot act."""
    rows, _ = sandboxes
    sandbox = rows["owner@example.com"]
    get_user_model().objects.filter(pk__in=[teammate.pk, outsider.pk]).update(is_staff=True)
    outsider.user_permissions.add(Permission.objects.get(codename="view_sandbox"))

    as_owner, as_teammate, as_outsider = Client(), Client(), Client()
    as_owner.force_login(owner)
    as_teammate.force_login(teammate)
    as_outsider.force_login(outsider)

    assert as_owner.get(CHANGELIST).status_code == 302
    assert as_teammate.get(CHANGELIST).status_code == 403
    viewer_page = as_outsider.get(CHANGELIST)
    assert viewer_page.status_code == 200 and 'name="action"' not in viewer_page.content.decode()
    for client in (as_owner, as_teammate, as_outsider):
        client.post(CHANGELIST, {"action": "stop_sandboxes", "_selected_action": [sandbox.pk]})
    assert daytona.calls["stop"] == 0
    assert Sandbox.objects.get(pk=sandbox.pk).state == SandboxState.STARTED


def test_admin_pages_leave_no_secret_in_the_logs(console, daytona, sandboxes, caplog):
    rows, access = sandboxes
    act(console, "stop_sandboxes", *rows.values())
    act(console, "refresh_sandboxes", *rows.values())

    for token in [CANARY_KEY] + [a["ssh"]["token"] for a in access.values()]:
        assert token not in caplog.text
