"""The relay's side of the conversation with the app: HTTP/1.1 (h11) and websockets over a
stream the provider opens or to the provider's preview URL."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import h11
from asgiref.sync import sync_to_async
from websockets.asyncio.client import ClientConnection, connect

from sandboxes import services

CONNECT_TIMEOUT = 10.0
RESPONSE_TIMEOUT = 120.0  # dev servers compile on the first request
CHUNK = 1 << 16
WEBSOCKET_MAX_MESSAGE = 16 << 20


class UpstreamError(Exception):
    """The app could not be reached or gave no valid answer. ``kind`` as
    :class:`~sandboxes.services.SandboxError`'s, or ``bad_answer``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def target_of(route: services.PreviewRoute, path: str, query: bytes) -> str:
    prefix = urlsplit(route.upstream.url).path.rstrip("/")
    target = prefix + (path or "/")
    return target + ("?" + query.decode("latin-1") if query else "")


def upstream_host(route: services.PreviewRoute) -> str:
    return urlsplit(route.upstream.url).netloc


def upstream_origin(route: services.PreviewRoute) -> str:
    parts = urlsplit(route.upstream.url)
    return f"{parts.scheme}://{parts.netloc}"


async def open_stream(route: services.PreviewRoute) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = await _provider_stream(route)
    if sock is not None:
        return await asyncio.open_connection(sock=sock, limit=CHUNK)
    parts = urlsplit(route.upstream.url)
    secure = parts.scheme == "https"
    try:
        return await asyncio.wait_for(
            asyncio.open_connection(
                parts.hostname,
                parts.port or (443 if secure else 80),
                ssl=ssl.create_default_context() if secure else None,
                limit=CHUNK,
            ),
            CONNECT_TIMEOUT,
        )
    except (OSError, TimeoutError) as exc:
        raise UpstreamError("unavailable", f"The preview could not be reached: {exc.__class__.__name__}") from exc


async def _provider_stream(route: services.PreviewRoute):
    try:
        return await sync_to_async(services.preview_open_stream, thread_sensitive=False)(route=route)
    except services.SandboxError as exc:
        raise UpstreamError(exc.kind or exc.code, str(exc)) from exc


class Exchange:
    """One request to the app and its response, over a fresh connection (closed after)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str):
        self.reader, self.writer = reader, writer
        self.connection = h11.Connection(h11.CLIENT)
        self.method = method

    async def send_request(
        self, target: str, headers, body: AsyncIterator[bytes], *, has_body: bool, length: bytes | None
    ):
        headers = list(headers)
        if has_body and length is None:
            headers.append((b"transfer-encoding", b"chunked"))
        elif length is not None:
            headers.append((b"content-length", length))
        headers.append((b"connection", b"close"))
        self._write(h11.Request(method=self.method, target=target, headers=headers))
        async for chunk in body:
            if chunk:
                self._write(h11.Data(data=chunk))
                await self.writer.drain()
        self._write(h11.EndOfMessage())
        await self.writer.drain()

    async def response(self) -> h11.Response:
        while True:
            event = await asyncio.wait_for(self._next_event(), RESPONSE_TIMEOUT)
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):
                raise UpstreamError("bad_answer", "The app sent no valid HTTP response.")

    async def body(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return

    def close(self) -> None:
        self.writer.close()

    def _write(self, event) -> None:
        data = self.connection.send(event)
        if data:
            self.writer.write(data)

    async def _next_event(self):
        while True:
            try:
                event = self.connection.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamError("bad_answer", "The app's answer broke off or was not valid HTTP.") from exc
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.reader.read(CHUNK)
            except OSError as exc:
                raise UpstreamError("bad_answer", "The connection to the app broke off.") from exc
            self.connection.receive_data(data)


async def open_websocket(
    route: services.PreviewRoute, target: str, headers, subprotocols: list[str]
) -> ClientConnection:
    parts = urlsplit(route.upstream.url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    uri = f"{scheme}://{parts.netloc}{target}"
    sock = await _provider_stream(route)
    forwarded = [
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in headers if name not in (b"host", b"origin")
    ]
    origin = next((value.decode("latin-1") for name, value in headers if name == b"origin"), None)
    try:
        return await connect(
            uri,
            sock=sock,
            origin=origin,
            subprotocols=subprotocols or None,
            additional_headers=forwarded,
            user_agent_header=None,
            proxy=None,
            compression=None,
            open_timeout=RESPONSE_TIMEOUT,
            ping_interval=None,
            close_timeout=2,
            max_size=WEBSOCKET_MAX_MESSAGE,
            ssl=ssl.create_default_context() if scheme == "wss" else None,
        )
    except Exception as exc:  # the library raises many kinds: refused, bad handshake, timeout
        if sock is not None:
            sock.close()
        raise UpstreamError("bad_answer", f"The app refused the websocket: {exc.__class__.__name__}") from exc
