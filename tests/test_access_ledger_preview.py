"""The access ledger at the preview relay (a live portal under uvicorn, an app in a real local
sandbox): redeeming a one-time code opens a preview session grant, and revoking it refuses its
cookie at once and cuts the streams and websockets open with it within 5 s."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone
from websockets.exceptions import ConnectionClosed

from sandboxes.models import AccessGrant, AuditEvent, Sandbox
from sandboxes.services.ledger import access_ledger, access_revoke, grant_state
from tests.local_fixtures import local_root, local_settings  # noqa: F401 - fixtures
from tests.preview_fixtures import sign_in_to_preview
from tests.test_preview_sites import owned, portal  # noqa: F401 - fixtures
from tests.test_terminal_browser import asgi_server  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db(transaction=True)

Kind = AccessGrant.Kind
LIMIT = 5.0


def preview_sessions(sandbox: Sandbox) -> list[AccessGrant]:
    return [grant for grant in access_ledger(sandbox=sandbox) if grant.kind == Kind.PREVIEW_SESSION]


def refused(visit) -> bool:
    answer = visit.get("/", headers={"Sec-Fetch-Mode": "navigate"})
    return answer.status_code == 303 and "/sandboxes/" in answer.headers["location"]  # sent to sign in again


def test_a_revoked_preview_session_is_refused(portal, owned, settings):  # noqa: F811
    client, sandbox_id = owned
    sandbox = Sandbox.objects.get(remote_id=sandbox_id)
    before = timezone.now()
    visit = sign_in_to_preview(portal, client, sandbox_id)
    assert visit.get("/").status_code == 200

    (grant,) = preview_sessions(sandbox)
    assert grant.last_used_from == "127.0.0.1" and grant.created_at >= before
    lifetime = timedelta(minutes=settings.SANDBOX_SSH_TOKEN_MINUTES)
    assert abs(grant.expires_at - (grant.created_at + lifetime)) < timedelta(seconds=1)
    assert grant.fingerprint != visit.cookie and visit.cookie.split("=", 1)[1] not in grant.fingerprint

    started = time.monotonic()
    access_revoke(sandbox=sandbox, public_id=grant.public_id, actor=owner_of(sandbox))
    while not refused(visit):
        assert time.monotonic() - started < 3, "the revoked cookie still works"
        time.sleep(0.1)

    grant.refresh_from_db()
    assert grant_state(grant, timezone.now()) == "revoked"
    assert AuditEvent.objects.get(action=AuditEvent.Action.ACCESS_REVOKED).detail == {
        "kind": Kind.PREVIEW_SESSION,
        "grant": grant.public_id,
    }
    again = sign_in_to_preview(portal, client, sandbox_id)  # the owner signs in anew
    assert again.get("/").status_code == 200 and len(preview_sessions(sandbox)) == 2


def test_revoking_cuts_open_streams_and_websockets(portal, owned):  # noqa: F811
    client, sandbox_id = owned
    sandbox = Sandbox.objects.get(remote_id=sandbox_id)
    visit = sign_in_to_preview(portal, client, sandbox_id)
    (grant,) = preview_sessions(sandbox)
    stream_ended: list[float] = []

    def hold_stream():
        try:
            with visit.stream("/forever") as response:
                for _ in response.iter_raw():
                    pass
        except httpx.HTTPError:
            pass
        stream_ended.append(time.monotonic())

    holder = threading.Thread(target=hold_stream, daemon=True)
    with visit.websocket("/hmr") as socket:
        socket.send("hello")
        assert socket.recv(timeout=5) == "echo hello"
        holder.start()
        time.sleep(0.5)  # the stream is open

        started = time.monotonic()
        access_revoke(sandbox=sandbox, public_id=grant.public_id, actor=owner_of(sandbox))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                socket.recv(timeout=LIMIT + 2)
        assert time.monotonic() - started < LIMIT
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    holder.join(LIMIT + 2)
    assert stream_ended and stream_ended[0] - started < LIMIT


def owner_of(sandbox: Sandbox):
    return sandbox.user
