"""The terminal websocket: who may open it, and a shell that outlives the connection.

Driven through the project's ASGI application (origin check, session auth, routing) as an ASGI
server would drive it; the sandbox is on the Daytona fake, reached through the real SDK's PTY.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.test import Client
from django.utils import timezone

from sandboxes import services
from sandboxes.models import ActivitySource, Sandbox, SandboxState, TerminalSession
from tests.conftest import launch, signed_in
from tests.terminal_client import WAIT_SECONDS, attach, launched, next_frame, refused_with, run, socket

pytestmark = pytest.mark.django_db(transaction=True)  # channels closes connections in an atomic block


def test_owner_gets_a_shell_in_their_sandbox(owner, daytona):
    remote_id, client = launched(owner, daytona)

    async def scenario():
        terminal = socket(client, remote_id, cols=120, rows=40)
        session = await attach(terminal)
        await run(terminal, "echo $((6*7))", b"42")
        await run(terminal, "stty size", b"40 120")
        await terminal.disconnect()
        return session

    session = async_to_sync(scenario)()
    assert daytona.calls["pty_create"] == 1
    assert [s.id for s in daytona.ptys.list(remote_id)] == [session]  # detached, not killed
    registered = TerminalSession.objects.get(session_id=session)
    assert (registered.sandbox.user, registered.remote_id, registered.clients) == (owner, remote_id, 0)


def test_reconnecting_with_the_same_session_finds_the_same_shell(owner, daytona):
    remote_id, client = launched(owner, daytona)

    async def scenario():
        first = socket(client, remote_id)
        session = await attach(first)
        await run(first, "export MARK=abc123; echo ready-$((1+1))", b"ready-2")
        await first.disconnect()

        again = socket(client, remote_id, session=session)
        assert await attach(again) == session
        await run(again, 'echo "[$MARK]"', b"[abc123]")
        await again.disconnect()

        other_tab = socket(client, remote_id)
        other = await attach(other_tab)
        output = await run(other_tab, 'echo "[${MARK:-unset}]"', b"]\r\n")
        assert b"[unset]" in output
        await other_tab.disconnect()
        return session, other

    session, other = async_to_sync(scenario)()
    assert session != other
    assert daytona.calls["pty_connect"] == 1  # the first session again, after its create was refused
    assert sorted(s.id for s in daytona.ptys.list(remote_id)) == sorted([session, other])


def test_the_portal_names_the_sessions_not_the_browser(owner, teammate, daytona):
    remote_id, client = launched(owner, daytona)
    teammates_id, teammates_client = launched(teammate, daytona)

    async def scenario():
        theirs = socket(teammates_client, teammates_id)
        their_session = await attach(theirs)
        await run(theirs, "export SECRET=theirs; echo set-$((2+2))", b"set-4")
        await theirs.disconnect()

        # A session id that was never handed out for this sandbox, or another sandbox's, names
        # nothing: a new shell is opened under a new name.
        named = []
        for guess in ("tab-1", their_session):
            mine = socket(client, remote_id, session=guess)
            named.append(await attach(mine))
            output = await run(mine, 'echo "[${SECRET:-unset}]"', b"]\r\n")
            assert b"[unset]" in output
            await mine.disconnect()
        return their_session, named

    their_session, named = async_to_sync(scenario)()
    assert their_session not in named and "tab-1" not in named
    assert all(name.startswith("web-") for name in named)
    assert [s.id for s in daytona.ptys.list(teammates_id)] == [their_session]


def test_sessions_are_bounded_per_sandbox(owner, daytona, settings):
    settings.SANDBOX_TERMINAL_SESSIONS = 2
    remote_id, client = launched(owner, daytona)

    async def scenario():
        first, second = socket(client, remote_id), socket(client, remote_id)
        first_id = await attach(first)
        await attach(second)
        code, controls = await refused_with(socket(client, remote_id))  # both are attached
        assert (code, [c["type"] for c in controls]) == (4429, ["error"])
        assert "2 terminals" in controls[0]["message"]

        # Once one of them is closed (detached), a new tab takes its place and its shell ends.
        await first.disconnect()
        third = socket(client, remote_id)
        third_id = await attach(third)
        await run(third, "echo $((6*7))", b"42")
        await second.disconnect()
        await third.disconnect()
        return first_id, third_id

    first_id, third_id = async_to_sync(scenario)()
    live = [s.id for s in daytona.ptys.list(remote_id)]
    assert first_id not in live and third_id in live and len(live) == 2
    assert TerminalSession.objects.filter(sandbox__user=owner).count() == 2


def test_sessions_nobody_is_attached_to_are_ended_after_a_while(owner, daytona, settings):
    settings.SANDBOX_TERMINAL_DETACHED_MINUTES = 30
    remote_id, client = launched(owner, daytona)
    now = timezone.now()
    in_thread = database_sync_to_async(lambda function, **kwargs: function(**kwargs))

    async def scenario():
        left, staying = socket(client, remote_id), socket(client, remote_id)
        left_id = await attach(left)
        staying_id = await attach(staying)
        await left.disconnect()

        assert await in_thread(services.terminals_reap, now=now + timedelta(minutes=29)) == 0
        assert sorted(s.id for s in daytona.ptys.list(remote_id)) == sorted([left_id, staying_id])

        # The attached tab renews its claim (every minute); the other one's runs out.
        await in_thread(services.terminal_renew, session_id=staying_id, now=now + timedelta(minutes=30))
        assert await in_thread(services.terminals_reap, now=now + timedelta(minutes=31)) == 1
        assert [s.id for s in daytona.ptys.list(remote_id)] == [staying_id]
        await run(staying, "echo $((6*7))", b"42")
        await staying.disconnect()
        return staying_id

    staying_id = async_to_sync(scenario)()
    assert list(TerminalSession.objects.values_list("session_id", flat=True)) == [staying_id]


def test_resize_reaches_the_pty(owner, daytona):
    remote_id, client = launched(owner, daytona)

    async def scenario():
        terminal = socket(client, remote_id)
        await attach(terminal)
        await run(terminal, "stty size", b"24 80")
        await terminal.send_to(text_data=json.dumps({"type": "resize", "cols": 132, "rows": 43}))
        await run(terminal, "stty size", b"43 132")
        await terminal.disconnect()

    async_to_sync(scenario)()
    assert daytona.calls["pty_resize"] == 1


def test_utf8_goes_both_ways(owner, daytona):
    remote_id, client = launched(owner, daytona)

    async def scenario():
        terminal = socket(client, remote_id)
        await attach(terminal)
        # The output's "[héllo ✓]" only exists once the shell has expanded $X.
        output = await run(terminal, 'X=héllo; echo "[$X ✓]"', "[héllo ✓]".encode())
        assert "[héllo ✓]" in output.decode("utf-8")
        await terminal.disconnect()

    async_to_sync(scenario)()


def test_shell_exit_is_reported_and_closes_normally(owner, daytona):
    remote_id, client = launched(owner, daytona)

    async def scenario():
        terminal = socket(client, remote_id)
        await attach(terminal)
        await terminal.send_to(bytes_data=b"exit 3\r")
        frames = []
        while True:
            frame = await next_frame(terminal)
            frames.append(frame)
            if frame["type"] == "websocket.close":
                break
        assert frames[-1]["code"] == 1000
        assert json.loads(frames[-2]["text"]) == {"type": "exit", "code": 3}

    async_to_sync(scenario)()


def test_terminal_use_counts_as_activity(owner, daytona):
    remote_id, client = launched(owner, daytona)
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Sandbox.objects.filter(user=owner).update(last_activity_at=an_hour_ago)

    async def scenario():
        terminal = socket(client, remote_id)
        await attach(terminal)
        await run(terminal, "echo $((6*7))", b"42")
        await terminal.disconnect()

    async_to_sync(scenario)()
    sandbox = Sandbox.objects.get(user=owner)
    assert timezone.now() - sandbox.last_activity_at < timedelta(minutes=1)
    assert sandbox.last_activity_source in (ActivitySource.TERMINAL_INPUT, ActivitySource.TERMINAL_OUTPUT)


def test_the_portals_terminal_traffic_is_not_activity_on_daytona(owner, daytona):
    remote_id, client = launched(owner, daytona)

    async def scenario():
        terminal = socket(client, remote_id)
        await attach(terminal)
        await run(terminal, "echo $((6*7))", b"42")
        await terminal.disconnect()

    async_to_sync(scenario)()
    toolbox = [r for r in daytona.requests if r.operation.startswith("pty_")]
    assert toolbox and all(r.headers.get("X-Daytona-Skip-Last-Activity-Update") == "true" for r in toolbox)


def test_only_the_owner_can_open_the_terminal(owner, teammate, outsider, daytona):
    remote_id, owner_client = launched(owner, daytona)
    launched(teammate, daytona)  # a teammate with a sandbox of their own
    page = f"/sandboxes/{remote_id}/terminal/"

    assert owner_client.get(page).status_code == 200
    for user in (teammate, outsider):
        client = signed_in(user)
        assert client.get(page).status_code == 404

        async def scenario(client=client):
            return await refused_with(socket(client, remote_id))

        assert async_to_sync(scenario)() == (4404, [])

    async def unknown_sandbox():
        return await refused_with(socket(owner_client, "no-such-sandbox"))

    assert async_to_sync(unknown_sandbox)() == (4404, [])
    assert daytona.calls["pty_create"] == daytona.calls["pty_connect"] == 0


def test_signed_out_visitors_are_sent_to_sign_in(owner, daytona):
    remote_id, client = launched(owner, daytona)
    page = f"/sandboxes/{remote_id}/terminal/"

    response = Client().get(page)
    assert response.status_code == 302
    assert response["Location"].startswith(f"/accounts/login/?next={page}")

    async def scenario():
        return await refused_with(socket(None, remote_id))

    assert async_to_sync(scenario)() == (4401, [])

    client.post("/accounts/logout/", **{"HTTP_X_CSRFTOKEN": client.cookies["csrftoken"].value})

    async def after_sign_out():
        return await refused_with(socket(client, remote_id))

    assert async_to_sync(after_sign_out)() == (4401, [])


@pytest.mark.parametrize("origin", ["http://evil.example", ""])
def test_a_foreign_or_missing_origin_is_refused(owner, daytona, origin):
    remote_id, client = launched(owner, daytona)

    async def scenario():
        terminal = socket(client, remote_id, origin=origin)
        connected, _ = await terminal.connect(timeout=WAIT_SECONDS)
        return connected

    assert async_to_sync(scenario)() is False
    assert daytona.calls["pty_create"] == 0


def test_a_stopped_sandbox_is_reported_for_resuming(owner, daytona):
    remote_id, client = launched(owner, daytona)
    sandbox = Sandbox.objects.get(user=owner)
    services.sandbox_stop(sandbox=sandbox, actor_type="user", actor=owner, reason="test")
    assert sandbox.state == SandboxState.STOPPED

    async def scenario():
        return await refused_with(socket(client, remote_id))

    code, controls = async_to_sync(scenario)()
    assert code == 4409
    assert [(c["type"], c["state"]) for c in controls] == [("status", "stopped")]
    assert daytona.calls["pty_create"] == 0

    # Resuming (what the page's button does) makes the same terminal usable again.
    assert launch(client).status_code == 200

    async def resumed():
        terminal = socket(client, remote_id)
        await attach(terminal)
        await run(terminal, "echo $((6*7))", b"42")
        await terminal.disconnect()

    async_to_sync(resumed)()


def test_a_sandbox_stopped_behind_the_portals_back_is_reported(owner, daytona):
    remote_id, client = launched(owner, daytona)
    daytona.set_state(remote_id, "stopped")  # the row still says started

    async def scenario():
        return await refused_with(socket(client, remote_id))

    code, controls = async_to_sync(scenario)()
    assert code == 4409
    assert [(c["type"], c["state"]) for c in controls] == [("status", "stopped")]


def test_a_sandbox_stopping_under_an_open_terminal_is_reported(owner, daytona):
    remote_id, client = launched(owner, daytona)

    async def scenario():
        terminal = socket(client, remote_id)
        await attach(terminal)
        await run(terminal, "echo $((6*7))", b"42")
        await asyncio.get_running_loop().run_in_executor(None, daytona.set_state, remote_id, "stopped")
        control = None
        while True:
            frame = await next_frame(terminal)
            if frame["type"] == "websocket.close":
                return frame["code"], control
            if frame.get("text"):
                control = json.loads(frame["text"])

    code, control = async_to_sync(scenario)()
    assert code == 4409
    assert (control["type"], control["state"]) == ("status", "stopped")


def test_an_unavailable_provider_asks_the_page_to_retry(owner, daytona):
    remote_id, client = launched(owner, daytona)
    daytona.fault("pty_create", "status", status=502, times=10)

    async def scenario():
        return await refused_with(socket(client, remote_id))

    code, controls = async_to_sync(scenario)()
    assert code == 1013
    assert [c["type"] for c in controls] == ["error"]
    assert "HTTP 502" in controls[0]["message"]


def test_a_bad_session_id_is_refused(owner, daytona):
    remote_id, client = launched(owner, daytona)

    async def scenario():
        return await refused_with(socket(client, remote_id, session="../../etc"))

    assert async_to_sync(scenario)() == (4400, [])


def test_terminal_websockets_are_bounded_per_user_across_sandbox_sessions(owner, daytona, settings):
    settings.SANDBOX_TERMINAL_CONNECTIONS_PER_USER = 3
    settings.SANDBOX_TERMINAL_SESSIONS = 8  # the per-sandbox bound is not the one reached
    remote_id, client = launched(owner, daytona)

    async def scenario():
        open_ones = [socket(client, remote_id) for _ in range(3)]
        for terminal in open_ones:
            await attach(terminal)
        code, controls = await refused_with(socket(client, remote_id))
        assert (code, [c["type"] for c in controls]) == (4430, ["error"])
        assert "3 terminals open" in controls[0]["message"]

        # Closing one frees its slot at once.
        await open_ones[0].disconnect()
        again = socket(client, remote_id)
        await attach(again)
        await run(again, "echo $((6*7))", b"42")
        code, _ = await refused_with(socket(client, remote_id))
        assert code == 4430
        for terminal in [*open_ones[1:], again]:
            await terminal.disconnect()

    async_to_sync(scenario)()
