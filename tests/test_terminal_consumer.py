"""The terminal websocket: who may open it, and a shell that outlives the connection.

Driven through the project's ASGI application (origin check, session auth, routing) as an ASGI
server would drive it; the sandbox is on the Daytona fake, reached through the real SDK's PTY.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.test import Client
from django.utils import timezone

from joepro.asgi import application
from sandboxes import services
from sandboxes.models import Sandbox, SandboxState
from tests.conftest import launch, signed_in

pytestmark = pytest.mark.django_db(transaction=True)  # channels closes connections in an atomic block
WAIT_SECONDS = 10


class WebsocketClient(ApplicationCommunicator):
    """The ASGI side of a browser's websocket. (Channels' own communicator needs Daphne.)"""

    def __init__(self, path: str, headers: list[tuple[bytes, bytes]]):
        path, _, query = path.partition("?")
        scope = {
            "type": "websocket",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "headers": headers,
            "subprotocols": [],
            "client": ("127.0.0.1", 50000),
            "server": ("localhost", 80),
        }
        super().__init__(application, scope)

    async def connect(self, timeout: float) -> tuple[bool, int | None]:
        await self.send_input({"type": "websocket.connect"})
        response = await self.receive_output(timeout)
        if response["type"] == "websocket.close":
            return False, response.get("code", 1000)
        assert response["type"] == "websocket.accept", response
        return True, None

    async def send_to(self, *, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None:
            await self.send_input({"type": "websocket.receive", "text": text_data})
        else:
            await self.send_input({"type": "websocket.receive", "bytes": bytes_data})

    async def disconnect(self) -> None:
        await self.send_input({"type": "websocket.disconnect", "code": 1001})
        await self.wait(WAIT_SECONDS)


def launched(user, daytona) -> tuple[str, Client]:
    """Launch ``user``'s sandbox; its id and the user's signed-in client."""
    client = signed_in(user)
    response = launch(client)
    assert response.status_code == 200, response.content
    remote_id = response.json()["sandbox"]["id"]
    assert daytona.sandbox(remote_id)["state"] == "started"
    return remote_id, client


def socket(client: Client | None, remote_id: str, *, session="tab-1", cols=80, rows=24, origin="http://localhost"):
    headers = [(b"host", b"localhost")]
    if origin:
        headers.append((b"origin", origin.encode()))
    if client is not None:
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    query = f"session={session}&cols={cols}&rows={rows}"
    return WebsocketClient(f"/ws/sandboxes/{remote_id}/terminal/?{query}", headers)


async def next_frame(communicator) -> dict:
    return await communicator.receive_output(timeout=WAIT_SECONDS)


async def attach(communicator) -> None:
    connected, _ = await communicator.connect(timeout=WAIT_SECONDS)
    assert connected
    frame = await next_frame(communicator)
    assert json.loads(frame.get("text") or "{}").get("type") == "attached", frame


async def run(communicator, command: str, needle: bytes) -> bytes:
    """Type ``command`` and read output until ``needle`` shows up."""
    await communicator.send_to(bytes_data=command.encode() + b"\r")
    seen = b""
    deadline = time.monotonic() + WAIT_SECONDS
    while needle not in seen:
        assert time.monotonic() < deadline, seen[-500:]
        frame = await next_frame(communicator)
        assert frame["type"] == "websocket.send", frame
        seen += frame.get("bytes") or b""
    return seen


async def refused_with(communicator) -> tuple[int, list[dict]]:
    """The close code of a refused connection and the control frames sent before it."""
    connected, _ = await communicator.connect(timeout=WAIT_SECONDS)
    assert connected  # refusals are sent after the accept, so that the page sees the code
    controls = []
    while True:
        frame = await next_frame(communicator)
        if frame["type"] == "websocket.close":
            return frame["code"], controls
        controls.append(json.loads(frame["text"]))


def test_owner_gets_a_shell_in_their_sandbox(owner, daytona):
    remote_id, client = launched(owner, daytona)

    async def scenario():
        terminal = socket(client, remote_id, cols=120, rows=40)
        await attach(terminal)
        await run(terminal, "echo $((6*7))", b"42")
        await run(terminal, "stty size", b"40 120")
        await terminal.disconnect()

    async_to_sync(scenario)()
    assert daytona.calls["pty_create"] == 1
    assert [s.id for s in daytona.ptys.list(remote_id)] == ["tab-1"]  # detached, not killed


def test_reconnecting_with_the_same_session_finds_the_same_shell(owner, daytona):
    remote_id, client = launched(owner, daytona)

    async def scenario():
        first = socket(client, remote_id)
        await attach(first)
        await run(first, "export MARK=abc123; echo ready-$((1+1))", b"ready-2")
        await first.disconnect()

        again = socket(client, remote_id)
        await attach(again)
        await run(again, 'echo "[$MARK]"', b"[abc123]")
        await again.disconnect()

        other_tab = socket(client, remote_id, session="tab-2")
        await attach(other_tab)
        output = await run(other_tab, 'echo "[${MARK:-unset}]"', b"]\r\n")
        assert b"[unset]" in output
        await other_tab.disconnect()

    async_to_sync(scenario)()
    assert daytona.calls["pty_connect"] == 1  # tab-1 again, after its create was refused
    assert sorted(s.id for s in daytona.ptys.list(remote_id)) == ["tab-1", "tab-2"]


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
