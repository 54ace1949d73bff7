"""A browser's side of the terminal websocket, driven through the project's ASGI application
(origin check, session auth, routing) as an ASGI server would drive it."""

from __future__ import annotations

import json
import time

from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.test import Client

from joepro.asgi import application
from tests.conftest import launch, signed_in

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


def socket(client: Client | None, remote_id: str, *, session=None, cols=80, rows=24, origin="http://localhost"):
    headers = [(b"host", b"localhost")]
    if origin:
        headers.append((b"origin", origin.encode()))
    if client is not None:
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    query = f"cols={cols}&rows={rows}" + (f"&session={session}" if session is not None else "")
    return WebsocketClient(f"/ws/sandboxes/{remote_id}/terminal/?{query}", headers)


async def next_frame(communicator) -> dict:
    return await communicator.receive_output(timeout=WAIT_SECONDS)


async def attach(communicator) -> str:
    """Connect and wait for the shell; the session id the portal named."""
    connected, _ = await communicator.connect(timeout=WAIT_SECONDS)
    assert connected
    frame = await next_frame(communicator)
    control = json.loads(frame.get("text") or "{}")
    assert control.get("type") == "attached", frame
    return control["session"]


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
