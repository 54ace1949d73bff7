"""The dashboard's JSON API: the owner's view and controls, their idle period and extensions,
and the idle policy honouring both."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from sandboxes.models import AuditEvent, Sandbox, SandboxState
from sandboxes.services import backstop_minutes, sandboxes_stop_idle
from tests.conftest import csrf_headers, launch, signed_in

pytestmark = pytest.mark.django_db


def post(client: Client, path: str, body: dict | None = None):
    return client.post(path, data=body or {}, content_type="application/json", **csrf_headers(client))


def put(client: Client, path: str, body: dict):
    return client.put(path, data=body, content_type="application/json", **csrf_headers(client))


@pytest.fixture
def running(daytona, owner):
    client = signed_in(owner)
    assert launch(client).status_code == 200
    return client, Sandbox.objects.get(user=owner)


def test_the_dashboard_shows_state_access_editor_and_idle_settings(running, settings):
    client, sandbox = running

    response = client.get("/api/sandbox/dashboard")

    assert response.status_code == 200
    assert response["Cache-Control"].startswith("no-store")
    body = response.json()
    assert body["sandbox"]["state"] == "started"
    assert body["sandbox"]["idleMinutes"] == 120
    stop_at = timezone.datetime.fromisoformat(body["sandbox"]["idleStopAt"])
    warn_at = timezone.datetime.fromisoformat(body["sandbox"]["idleWarningAt"])
    assert stop_at - warn_at == timedelta(minutes=settings.SANDBOX_IDLE_WARNING_MINUTES)
    token = body["access"]["ssh"]["token"]
    editor = body["editor"]
    assert editor["hostAlias"] == sandbox.remote_name
    assert f"Host {editor['hostAlias']}\n" in editor["sshConfig"]
    assert f"User {token}\n" in editor["sshConfig"]
    assert f"Port {body['access']['ssh']['port']}\n" in editor["sshConfig"]
    assert editor["vscodeUrl"] == f"vscode://vscode-remote/ssh-remote+{editor['hostAlias']}/home/daytona"
    assert body["idle"] == {
        "minMinutes": 15,
        "maxMinutes": 480,
        "defaultMinutes": 120,
        "warningMinutes": 10,
        "extendChoicesMinutes": [60, 240],
        "extendMaxMinutes": 480,
        "emailBeforeStop": False,
    }
    assert body["live"] == {"websocketUrl": "/ws/sandbox/events/", "pollSeconds": 2}


def test_without_a_channel_layer_the_dashboard_says_to_poll(running, settings):
    client, _ = running
    settings.SANDBOX_LIVE_PUSH = False

    assert client.get("/api/sandbox/dashboard").json()["live"] == {"websocketUrl": None, "pollSeconds": 2}


def test_a_stopped_sandbox_shows_no_access_and_no_stop_time(running):
    client, _ = running
    assert post(client, "/api/sandbox/stop").json()["sandbox"]["state"] == "stopped"

    body = client.get("/api/sandbox/dashboard").json()

    assert body["access"] is None and body["editor"] is None
    assert body["sandbox"]["idleStopAt"] is None and body["sandbox"]["idleWarningAt"] is None
    assert body["sandbox"]["lastStoppedAt"] is not None


def test_no_sandbox_is_a_404_and_signed_out_a_401(owner):
    client = signed_in(owner)
    for path in ("/api/sandbox/dashboard", "/api/sandbox/access", "/api/sandbox/timeline"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
    assert Client().get("/api/sandbox/dashboard").status_code == 401


@pytest.mark.parametrize(
    "path",
    [
        "/api/sandbox/stop",
        "/api/sandbox/restart",
        "/api/sandbox/reset",
        "/api/sandbox/extend",
        "/api/sandbox/access/revoke-all",
    ],
)
def test_every_control_needs_the_csrf_token(running, path):
    client, sandbox = running

    response = client.post(path, data={}, content_type="application/json")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.STARTED


def test_stop_now_is_audited_as_the_owner(running, owner):
    client, sandbox = running

    response = post(client, "/api/sandbox/stop")

    assert response.status_code == 200
    event = AuditEvent.objects.filter(sandbox=sandbox, action="stop").get()
    assert (event.actor_type, event.actor, event.reason) == ("user", owner, "stopped by its owner")


def test_restart_boots_the_same_sandbox_with_new_access(running, daytona):
    client, sandbox = running
    old_token = client.get("/api/sandbox/dashboard").json()["access"]["ssh"]["token"]

    response = post(client, "/api/sandbox/restart")

    assert response.status_code == 200
    body = response.json()
    assert body["sandbox"]["id"] == sandbox.remote_id and body["sandbox"]["state"] == "started"
    assert body["access"]["ssh"]["token"] != old_token
    assert daytona.calls["stop"] == 1


def test_reset_needs_the_sandbox_name_typed(running, daytona):
    client, sandbox = running

    for typed in ("", "yes", sandbox.remote_name + "x"):
        response = post(client, "/api/sandbox/reset", {"confirm": typed})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "confirmation_mismatch"
        assert sandbox.remote_name in response.json()["error"]["message"]
    assert daytona.calls.get("delete", 0) == 0

    response = post(client, "/api/sandbox/reset", {"confirm": sandbox.remote_name})

    assert response.status_code in (200, 202)
    assert response.json()["sandbox"]["id"] != sandbox.remote_id
    assert daytona.calls["delete"] == 1
    assert AuditEvent.objects.filter(sandbox=sandbox, action="reset", actor_type="user").exists()


def test_an_extension_moves_the_stop_and_the_idle_policy_honours_it(running, owner):
    client, sandbox = running
    stop_at = sandbox.idle_deadline

    response = post(client, "/api/sandbox/extend", {"minutes": 60})

    assert response.status_code == 200
    moved = timezone.datetime.fromisoformat(response.json()["sandbox"]["idleStopAt"])
    assert moved - stop_at == timedelta(minutes=60)  # exactly: the extension is not counted as use
    sandbox.refresh_from_db()
    assert sandbox.keep_awake_until == moved
    event = AuditEvent.objects.filter(sandbox=sandbox, action="extend").get()
    assert (event.actor, event.detail["minutes"]) == (owner, 60)

    # Without use from here: kept past the usual 2 h, stopped once the extension ran out.
    sandboxes_stop_idle(now=moved - timedelta(minutes=1))
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.STARTED
    sandboxes_stop_idle(now=moved + timedelta(seconds=1))
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.STOPPED


def test_extensions_are_capped_by_the_operator(running, settings):
    client, _ = running
    settings.SANDBOX_EXTEND_MAX_MINUTES = 300
    before = timezone.now()

    for _ in range(3):
        response = post(client, "/api/sandbox/extend", {"minutes": 240})
        assert response.status_code == 200

    stop_at = timezone.datetime.fromisoformat(response.json()["sandbox"]["idleStopAt"])
    assert stop_at <= timezone.now() + timedelta(minutes=300)
    assert stop_at >= before + timedelta(minutes=299)


@pytest.mark.parametrize("minutes", [0, 5, 61, -60, 100000])
def test_only_the_offered_extensions_are_accepted(running, minutes):
    client, sandbox = running

    response = post(client, "/api/sandbox/extend", {"minutes": minutes})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    sandbox.refresh_from_db()
    assert sandbox.keep_awake_until is None


def test_an_extension_of_a_stopped_sandbox_is_refused(running):
    client, _ = running
    post(client, "/api/sandbox/stop")

    response = post(client, "/api/sandbox/extend", {"minutes": 60})

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "not_running"


def test_the_owners_idle_period_is_bounded_and_honoured(running, owner):
    client, sandbox = running
    assert client.get("/api/sandbox/preferences").json() == {
        "idleMinutes": None,
        "emailBeforeStop": False,
        "minMinutes": 15,
        "maxMinutes": 480,
        "defaultMinutes": 120,
    }

    for minutes in (14, 481, 0):
        response = put(client, "/api/sandbox/preferences", {"idleMinutes": minutes})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_idle_period"
        assert "15m" in response.json()["error"]["message"] and "8h" in response.json()["error"]["message"]

    response = put(client, "/api/sandbox/preferences", {"idleMinutes": 30, "emailBeforeStop": True})
    assert response.status_code == 200
    assert response.json()["idleMinutes"] == 30 and response.json()["emailBeforeStop"] is True
    assert client.get("/api/sandbox/dashboard").json()["sandbox"]["idleMinutes"] == 30
    assert AuditEvent.objects.filter(sandbox=sandbox, action="settings", actor=owner).count() == 1

    sandbox.refresh_from_db()
    sandboxes_stop_idle(now=sandbox.idle_since + timedelta(minutes=29))
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.STARTED
    sandboxes_stop_idle(now=sandbox.idle_since + timedelta(minutes=31))
    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.STOPPED
    stop = AuditEvent.objects.filter(sandbox=sandbox, action="stop").get()
    assert stop.reason == "idle for more than 30m"


def test_a_longer_idle_period_keeps_the_sandbox_past_the_default(running):
    client, sandbox = running
    put(client, "/api/sandbox/preferences", {"idleMinutes": 240})
    sandbox.refresh_from_db()

    sandboxes_stop_idle(now=sandbox.idle_since + timedelta(hours=3))

    sandbox.refresh_from_db()
    assert sandbox.state == SandboxState.STARTED


def test_a_field_left_out_keeps_its_value(running):
    client, _ = running
    put(client, "/api/sandbox/preferences", {"idleMinutes": 60, "emailBeforeStop": True})

    body = put(client, "/api/sandbox/preferences", {"emailBeforeStop": False}).json()
    assert (body["idleMinutes"], body["emailBeforeStop"]) == (60, False)
    body = put(client, "/api/sandbox/preferences", {"idleMinutes": None}).json()
    assert (body["idleMinutes"], body["emailBeforeStop"]) == (None, False)


def test_the_providers_backstop_outlasts_the_owners_period_and_extension(running, settings):
    _, sandbox = running
    now = timezone.now()
    assert backstop_minutes(sandbox, now) == settings.SANDBOX_REMOTE_AUTO_STOP_MINUTES

    sandbox.idle_minutes = 480
    assert backstop_minutes(sandbox, now) == 480 + 30
    sandbox.idle_minutes, sandbox.keep_awake_until = None, now + timedelta(hours=6)
    assert backstop_minutes(sandbox, now) == 360 + 30
    settings.SANDBOX_REMOTE_AUTO_STOP_MINUTES = 0
    assert backstop_minutes(sandbox, now) == 0


def test_another_users_ledger_entry_is_not_found(running, teammate):
    client, sandbox = running
    [entry, *_] = client.get("/api/sandbox/access").json()["entries"]
    other = signed_in(teammate)
    assert launch(other).status_code == 200

    response = post(other, f"/api/sandbox/access/{entry['id']}/revoke")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert client.get("/api/sandbox/access").json()["entries"][0]["state"] == "active"


def test_the_ledger_and_the_timeline_answer_in_their_shapes(running):
    client, _ = running

    token = client.get("/api/sandbox/dashboard").json()["access"]["ssh"]["token"]
    response = client.get("/api/sandbox/access")
    assert token.encode() not in response.content
    entries = response.json()["entries"]
    assert entries and set(entries[0]) == {
        "id",
        "kind",
        "label",
        "createdAt",
        "expiresAt",
        "lastUsedAt",
        "lastUsedFrom",
        "parentId",
        "state",
        "revocable",
    }
    assert {entry["kind"] for entry in entries} >= {"ssh_token"}
    timeline = client.get("/api/sandbox/timeline").json()["entries"]
    assert timeline and set(timeline[0]) == {"at", "kind", "text", "actor"}

    revoked = post(client, f"/api/sandbox/access/{entries[0]['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["entry"]["state"] == "revoked"
    still_active = [e for e in client.get("/api/sandbox/access").json()["entries"] if e["state"] == "active"]
    assert post(client, "/api/sandbox/access/revoke-all").json() == {"revoked": len(still_active)}
    assert {e["state"] for e in client.get("/api/sandbox/access").json()["entries"]} <= {"revoked", "ended"}
