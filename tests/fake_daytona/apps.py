"""Apps behind sandbox ports: what the preview proxy forwards to once a request passed its
checks, for tests that run a real HTTP server in place of the sandbox's app.

``fake.apps.serve(sandbox_id, port, "http://127.0.0.1:<port>")`` attaches one; ``None`` as the
URL means nothing listens on that port (the proxy answers 502, as its reverse proxy does when
the container refuses the connection). Without an attachment the proxy keeps answering with its
stand-in page. Requests and websockets are relayed as they stream, and cut as soon as the
sandbox leaves ``started``, as a stopped container's connections are.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import aiohttp
from aiohttp import web

from .activity import SKIP_HEADER

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
}
# Go's reverse proxy keeps a request's length; the response is framed anew.
RESPONSE_DROPPED = HOP_BY_HOP | {"content-length"}
DAYTONA_REQUEST_HEADERS = {"x-daytona-preview-token", "x-daytona-skip-preview-warning", SKIP_HEADER.lower()}
NOTHING_LISTENS = object()
WATCH_SECONDS = 0.1


class AppRoutes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._apps: dict[tuple[str, int], str | None] = {}

    def serve(self, sandbox_id: str, port: int, url: str | None) -> None:
        with self._lock:
            self._apps[(sandbox_id, int(port))] = url.rstrip("/") if url else None

    def clear(self) -> None:
        with self._lock:
            self._apps.clear()

    def remove(self, sandbox_id: str, port: int) -> None:
        with self._lock:
            self._apps.pop((sandbox_id, int(port)), None)

    def lookup(self, sandbox_id: str, port: int):
        """The app's URL, ``NOTHING_LISTENS``, or None (no attachment: the stand-in page)."""
        with self._lock:
            if (sandbox_id, port) not in self._apps:
                return None
            return self._apps[(sandbox_id, port)] or NOTHING_LISTENS


async def forward(fake, request: web.Request, sandbox_id: str, app, tail: str, cookies) -> web.StreamResponse:
    if app is NOTHING_LISTENS:
        return web.Response(status=502, text="Bad Gateway\n")
    query = [(k, v) for k, v in request.query.items() if k != "DAYTONA_SANDBOX_AUTH_KEY"]
    headers = {
        name: value
        for name, value in request.headers.items()
        if name.lower() not in HOP_BY_HOP
        and name.lower() not in DAYTONA_REQUEST_HEADERS
        and not name.lower().startswith("sec-websocket")
    }
    if "Cookie" in headers:
        kept = [c.strip() for c in headers["Cookie"].split(";") if not c.strip().startswith("daytona-")]
        headers["Cookie"] = "; ".join(kept)
        if not kept:
            del headers["Cookie"]
    stopped = asyncio.ensure_future(_left_started(fake, sandbox_id))
    try:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await _websocket(request, app + tail, query, headers, stopped)
        return await _http(request, app + tail, query, headers, cookies, stopped)
    finally:
        stopped.cancel()


async def _http(request, url, query, headers, cookies, stopped) -> web.StreamResponse:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        try:
            upstream = await session.request(
                request.method,
                url,
                params=query,
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            )
        except aiohttp.ClientConnectionError:
            return web.Response(status=502, text="Bad Gateway\n")
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in RESPONSE_DROPPED:
                    response.headers.add(name, value)
            for name, value in cookies:
                response.set_cookie(name, value, max_age=3600, httponly=True)
            await response.prepare(request)
            chunks = upstream.content.iter_any().__aiter__()
            while True:
                chunk = asyncio.ensure_future(chunks.__anext__())
                await asyncio.wait({chunk, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if stopped.done():
                    chunk.cancel()
                    _abort(request)
                    return response
                try:
                    await response.write(chunk.result())
                except StopAsyncIteration:
                    break
            await response.write_eof()
            return response


async def _websocket(request, url, query, headers, stopped) -> web.StreamResponse:
    headers.pop("Origin", None)
    async with aiohttp.ClientSession() as session:
        try:
            upstream = await session.ws_connect(
                url.replace("http", "ws", 1),
                params=query,
                headers=headers,
                origin=request.headers.get("Origin"),
                protocols=_subprotocols(request),
                autoping=True,
            )
        except (aiohttp.ClientError, aiohttp.WSServerHandshakeError):
            return web.Response(status=502, text="Bad Gateway\n")
        browser = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else ())
        await browser.prepare(request)

        async def pump(source, target) -> None:
            async for message in source:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await target.send_str(message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await target.send_bytes(message.data)
            code = source.close_code or 1000
            await target.close(code=code if 1000 <= code < 5000 and code not in (1005, 1006) else 1011)

        tasks = {asyncio.ensure_future(pump(upstream, browser)), asyncio.ensure_future(pump(browser, upstream))}
        await asyncio.wait(tasks | {stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if stopped.done():
            _abort(request)  # the container went away: no close frame
        else:
            await asyncio.gather(upstream.close(), browser.close(), return_exceptions=True)
        return browser


def _subprotocols(request: web.Request) -> list[str]:
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    return [protocol.strip() for protocol in offered.split(",") if protocol.strip()]


def _abort(request: web.Request) -> None:
    with contextlib.suppress(Exception):
        request.transport.abort()


async def _left_started(fake, sandbox_id: str) -> None:
    while fake.store.state_of(sandbox_id) == "started":
        await asyncio.sleep(WATCH_SECONDS)
