"""The preview relay: an ASGI application for requests to preview hosts (:mod:`.hosts`).

Nothing here holds a database connection while it waits: routes are looked up in a worker
thread that gives its connection back at once, and cached for ``ROUTE_SECONDS``, so a stop or
a revocation reaches open tabs within that time. Each preview session is a grant in the access
ledger: whether it still holds is asked of the database at most every ``GRANT_SECONDS`` per
session and process, and streaming answers and websockets opened with a revoked one are cut
within that time and a check. Streaming answers, long polls and websockets are bounded per
sandbox and per client address (``SANDBOX_PREVIEW_CONNECTIONS_PER_*``).
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections import Counter
from urllib.parse import parse_qs, urlencode

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from websockets.exceptions import ConnectionClosed

from sandboxes import services
from sandboxes.services import grants, ledger

from . import headers as policy
from . import pages, sessions, upstream
from .hosts import PreviewHost, host_of, parse_host

log = logging.getLogger(__name__)

ROUTE_SECONDS = 5.0
GRANT_SECONDS = 2.0  # how long a preview session's grant is taken as live without asking again
ACTIVITY_SECONDS = 30.0
GRANT_USE_SECONDS = 60.0  # between two records of a preview session's last use
CLOSE_REVOKED = 4403
SENDABLE_CLOSE_CODES = set(range(1000, 1004)) | set(range(1007, 1015)) | set(range(3000, 5000))


class ConnectionLimits:
    """Open requests and websockets per sandbox and per client address, in this process."""

    def __init__(self):
        self.sandboxes: Counter[str] = Counter()
        self.clients: Counter[str] = Counter()

    def acquire(self, remote_id: str, client: str) -> bool:
        if self.sandboxes[remote_id] >= settings.SANDBOX_PREVIEW_CONNECTIONS_PER_SANDBOX:
            return False
        if self.clients[client] >= settings.SANDBOX_PREVIEW_CONNECTIONS_PER_CLIENT:
            return False
        self.sandboxes[remote_id] += 1
        self.clients[client] += 1
        return True

    def release(self, remote_id: str, client: str) -> None:
        for counter, key in ((self.sandboxes, remote_id), (self.clients, client)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]


def _lookup(remote_id: str, port: int):
    try:
        return services.preview_route(remote_id=remote_id, port=port)
    except services.SandboxError as exc:
        return exc
    finally:
        connections.close_all()  # this worker thread's: nothing stays checked out of the pool


def _record_activity(sandbox_pk: int) -> None:
    try:
        services.preview_record_activity(sandbox_pk=sandbox_pk)
    finally:
        connections.close_all()


def _grant_live(public_id: str) -> bool:
    try:
        return ledger.preview_session_live(public_id=public_id)
    finally:
        connections.close_all()


def _open_session(sandbox_pk: int, public_id: str, cookie: str, client: str) -> None:
    try:
        ledger.preview_session_opened(sandbox_pk=sandbox_pk, public_id=public_id, cookie=cookie, client_address=client)
    finally:
        connections.close_all()


def _session_used(public_id: str, client: str) -> None:
    try:
        ledger.preview_session_used(public_id=public_id, client_address=client)
    finally:
        connections.close_all()


class GrantCache:
    """Whether preview sessions' grants hold, each asked again after ``GRANT_SECONDS``."""

    def __init__(self):
        self.entries: dict[str, tuple[float, bool]] = {}

    async def live(self, public_id: str) -> bool:
        now = time.monotonic()
        cached = self.entries.get(public_id)
        if cached is None or cached[0] <= now:
            answer = await sync_to_async(_grant_live, thread_sensitive=False)(public_id)
            if len(self.entries) > 10_000:
                self.entries = {k: v for k, v in self.entries.items() if v[0] > now}
            self.entries[public_id] = cached = (now + GRANT_SECONDS, answer)
        return cached[1]


class RouteCache:
    def __init__(self):
        self.entries: dict[tuple[str, int], tuple[float, object]] = {}

    async def get(self, host: PreviewHost, *, fresh: bool = False) -> services.PreviewRoute:
        """The route, or raises ``SandboxError``; answers (refusals too) are kept a few seconds."""
        key = (host.remote_id, host.port)
        now = time.monotonic()
        cached = self.entries.get(key)
        if fresh or cached is None or cached[0] <= now:
            answer = await sync_to_async(_lookup, thread_sensitive=False)(host.remote_id, host.port)
            if len(self.entries) > 10_000:
                self.entries = {k: v for k, v in self.entries.items() if v[0] > now}
            self.entries[key] = cached = (now + ROUTE_SECONDS, answer)
        answer = cached[1]
        if isinstance(answer, services.SandboxError):
            raise answer
        return answer


class PreviewRelay:
    """ASGI: HTTP and websockets for preview hosts; see the package docstring."""

    def __init__(self):
        self.routes = RouteCache()
        self.grants = GrantCache()
        self.limits = ConnectionLimits()
        self.activity_noted: dict[str, float] = {}
        self.grant_used: dict[str, float] = {}
        self.background: set[asyncio.Task] = set()

    async def __call__(self, scope, receive, send):
        host = parse_host(host_of(scope))
        if host is None:  # the router sends only preview hosts here
            return await _send_page(send, *pages.page(400, "Bad request", "Unknown host."))
        if scope["type"] == "http":
            await self._http(scope, receive, send, host)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send, host)

    # -- HTTP ----------------------------------------------------------------------------------

    async def _http(self, scope, receive, send, host: PreviewHost) -> None:
        if scope["path"] == sessions.HANDSHAKE_PATH:
            return await self._handshake(scope, send, host)
        try:
            route = await self.routes.get(host)
        except services.SandboxError as exc:
            # Browsers go to the portal's page, which tells the owner why and others nothing.
            if _is_navigation(scope) and scope["method"] in ("GET", "HEAD"):
                return await self._sign_in(scope, send, host)
            return await _send_page(send, *_refusal_page(exc, host.port))
        grant_id = await self._session(scope, host, route)
        if grant_id is None:
            return await self._sign_in(scope, send, host)
        client = _client(scope)
        if not self.limits.acquire(route.remote_id, client):
            return await _send_page(send, *_too_many())
        try:
            if _is_navigation(scope):
                self._note_activity(route)
                self._note_use(grant_id, client)
            await self._relay_http(scope, receive, send, host, route, grant_id)
        finally:
            self.limits.release(route.remote_id, client)

    async def _relay_http(self, scope, receive, send, host: PreviewHost, route, grant_id: str) -> None:
        try:
            reader, writer = await upstream.open_stream(route)
        except upstream.UpstreamError as exc:
            return await _send_page(send, *_upstream_page(exc, host.port))
        exchange = upstream.Exchange(reader, writer, scope["method"])
        try:
            length = _header(scope, b"content-length") or None
            chunked = b"chunked" in (_header(scope, b"transfer-encoding") or b"").lower()
            to_app = _headers_to_app(scope, host, route)
            try:
                await exchange.send_request(
                    upstream.target_of(route, scope["path"], scope.get("query_string", b"")),
                    to_app,
                    _request_body(receive),
                    has_body=chunked or (length not in (None, b"0")),
                    length=length,
                )
                response = await exchange.response()
            except (upstream.UpstreamError, OSError, TimeoutError) as exc:
                log.info("preview of %s: the app did not answer: %s", route.remote_id, exc)
                return await _send_page(send, *_upstream_page(upstream.UpstreamError("bad_answer", ""), host.port))
            to_browser, offsite = policy.to_browser(
                response.headers, upstream_url=route.upstream.url, preview_origin=host.origin
            )
            if offsite is not None:
                return await _send_page(send, *_offsite_page(offsite))
            await send({"type": "http.response.start", "status": response.status_code, "headers": to_browser})
            await _stream_body(exchange, receive, send, self._until_revoked(grant_id))
        finally:
            exchange.close()

    async def _handshake(self, scope, send, host: PreviewHost) -> None:
        code = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("code") or [""])[0]
        handshake = await sessions.redeem_code(code, host) if code else None
        if handshake is None:
            return await _send_page(send, *_expired_page())
        try:
            route = await self.routes.get(host, fresh=True)
        except services.SandboxError as exc:
            return await _send_page(send, *_refusal_page(exc, host.port))
        if handshake.nonce != route.upstream.nonce or handshake.user_id != route.user_id:
            return await _send_page(send, *_expired_page())
        grant_id = grants.new_public_id()
        value = sessions.session_value(host, user_id=route.user_id, nonce=route.upstream.nonce, grant_id=grant_id)
        try:
            await sync_to_async(_open_session, thread_sensitive=False)(
                route.sandbox_pk, grant_id, value, _client(scope)
            )
        except Exception:
            log.exception("preview of %s: the session could not be recorded", route.remote_id)
            return await _send_page(send, *pages.page(503, "Please try again", "Reload this page in a moment."))
        await _see_other(send, handshake.next_path, (b"set-cookie", sessions.set_cookie_header(value)))

    async def _sign_in(self, scope, send, host: PreviewHost) -> None:
        """A browser opening a page goes to the portal, which signs them in and back here."""
        if not _is_navigation(scope) or scope["method"] not in ("GET", "HEAD"):
            return await _send_page(
                send,
                *pages.page(
                    401,
                    "Open this preview from the sandbox portal",
                    "This preview is private. Sign in to the sandbox portal and open it from there.",
                    portal_url=settings.PORTAL_URL,
                ),
            )
        next_path = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
        query = urlencode({"port": host.port, "next": sessions.safe_next(next_path)})
        await _see_other(send, f"{settings.PORTAL_URL}/sandboxes/{host.remote_id}/preview/?{query}")

    async def _session(self, scope, host: PreviewHost, route) -> str | None:
        """The grant id of the request's preview session, when it is the owner's and still holds."""
        value = sessions.cookie_from((_header(scope, b"cookie") or b"").decode("latin-1"))
        session = sessions.session_of(value, host, nonce=route.upstream.nonce)
        if session is None or session[0] != route.user_id:
            return None
        return session[1] if await self.grants.live(session[1]) else None

    async def _until_revoked(self, grant_id: str) -> None:
        """Returns once the preview session's grant no longer holds."""
        while await self.grants.live(grant_id):
            await asyncio.sleep(GRANT_SECONDS / 2)

    def _note_use(self, grant_id: str, client: str) -> None:
        """The ledger's last use of a preview session (written at most every minute)."""
        now = time.monotonic()
        if now - self.grant_used.get(grant_id, -GRANT_USE_SECONDS) < GRANT_USE_SECONDS:
            return
        if len(self.grant_used) > 10_000:
            self.grant_used = {k: v for k, v in self.grant_used.items() if now - v < GRANT_USE_SECONDS}
        self.grant_used[grant_id] = now
        task = asyncio.ensure_future(sync_to_async(_session_used, thread_sensitive=False)(grant_id, client))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def _note_activity(self, route) -> None:
        """A page load is a person using the preview (written at most every minute anyway)."""
        now = time.monotonic()
        if now - self.activity_noted.get(route.remote_id, -ACTIVITY_SECONDS) < ACTIVITY_SECONDS:
            return
        self.activity_noted[route.remote_id] = now
        task = asyncio.ensure_future(sync_to_async(_record_activity, thread_sensitive=False)(route.sandbox_pk))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # -- websockets ----------------------------------------------------------------------------

    async def _websocket(self, scope, receive, send, host: PreviewHost) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        # Only the preview's own pages: cookies ride along on cross-site upgrades too.
        if (_header(scope, b"origin") or b"").decode("latin-1") != host.origin:
            return await send({"type": "websocket.close", "code": 1008})
        try:
            route = await self.routes.get(host)
        except services.SandboxError:
            return await send({"type": "websocket.close", "code": 1011})
        grant_id = await self._session(scope, host, route)
        if grant_id is None:
            return await send({"type": "websocket.close", "code": 1008})
        client = _client(scope)
        if not self.limits.acquire(route.remote_id, client):
            return await send({"type": "websocket.close", "code": 1013})
        try:
            await self._relay_websocket(scope, receive, send, host, route, grant_id)
        finally:
            self.limits.release(route.remote_id, client)

    async def _relay_websocket(self, scope, receive, send, host: PreviewHost, route, grant_id: str) -> None:
        to_app = _headers_to_app(scope, host, route)
        target = upstream.target_of(route, scope["path"], scope.get("query_string", b""))
        try:
            app = await upstream.open_websocket(route, target, to_app, list(scope.get("subprotocols") or []))
        except upstream.UpstreamError as exc:
            log.info("preview of %s: websocket refused: %s", route.remote_id, exc)
            return await send({"type": "websocket.close", "code": 1011})
        await send({"type": "websocket.accept", "subprotocol": app.subprotocol})

        async def browser_to_app() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    code = message.get("code", 1000)
                    await app.close(code if code in SENDABLE_CLOSE_CODES else 1000)
                    return
                if message["type"] == "websocket.receive":
                    data = message.get("bytes")
                    await app.send(data if data is not None else message.get("text") or "")

        async def app_to_browser() -> None:
            try:
                async for data in app:
                    key = "bytes" if isinstance(data, bytes) else "text"
                    await send({"type": "websocket.send", key: data})
            except ConnectionClosed:
                pass
            code = app.close_code if app.close_code in SENDABLE_CLOSE_CODES else 1011
            await send({"type": "websocket.close", "code": code, "reason": (app.close_reason or "")[:120]})

        revoked = asyncio.ensure_future(self._until_revoked(grant_id))
        tasks = {asyncio.ensure_future(browser_to_app()), asyncio.ensure_future(app_to_browser()), revoked}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await app.close()
        if revoked.done() and not revoked.cancelled():
            await send({"type": "websocket.close", "code": CLOSE_REVOKED, "reason": "preview session revoked"})


# --- pieces -----------------------------------------------------------------------------------


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def _headers_to_app(scope, host: PreviewHost, route) -> policy.Headers:
    return policy.to_app(
        scope["headers"],
        upstream_host=upstream.upstream_host(route),
        upstream_origin=upstream.upstream_origin(route),
        preview_origin=host.origin,
        scheme=_scheme(scope),
        extra=route.upstream.headers,
    )


async def _see_other(send, location: str, *extra: tuple[bytes, bytes]) -> None:
    """A 303 that keeps the address out of caches and referrers."""
    headers = [
        (b"location", location.encode("latin-1")),
        *extra,
        (b"cache-control", b"no-store"),
        (b"referrer-policy", b"no-referrer"),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _scheme(scope) -> str:
    return "https" if scope.get("scheme") in ("https", "wss") else "http"


def _client(scope) -> str:
    client = scope.get("client")
    return client[0] if client else "-"


def _is_navigation(scope) -> bool:
    mode = _header(scope, b"sec-fetch-mode")
    if mode is not None:
        return mode == b"navigate"
    return b"text/html" in (_header(scope, b"accept") or b"")


async def _request_body(receive):
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        yield message.get("body", b"")
        if not message.get("more_body"):
            return


async def _stream_body(exchange, receive, send, until_revoked) -> None:
    """The app's body as it arrives, until it ends, the browser goes away or the preview
    session is revoked (``until_revoked`` returns: the answer is cut off)."""
    disconnected = asyncio.ensure_future(_disconnect(receive))
    revoked = asyncio.ensure_future(until_revoked)
    chunks = exchange.body().__aiter__()
    try:
        while True:
            chunk = asyncio.ensure_future(chunks.__anext__())
            await asyncio.wait({chunk, disconnected, revoked}, return_when=asyncio.FIRST_COMPLETED)
            if not chunk.done():
                chunk.cancel()
                return
            try:
                data = chunk.result()
            except (StopAsyncIteration, upstream.UpstreamError):
                break
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        disconnected.cancel()
        revoked.cancel()


async def _disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_page(send, status: int, headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _refusal_page(exc: services.SandboxError, port: int):
    """For requests other than page loads, which may come from anyone: as little as will do."""
    if exc.kind in ("not_found", "invalid_state"):
        return pages.page(503, "This preview is not available", "Open it from the sandbox portal.")
    log.warning("preview on port %s failed: %s", port, exc)
    return pages.page(502, "The sandbox did not answer", "Please reload in a moment.", portal_url=settings.PORTAL_URL)


def _upstream_page(exc: upstream.UpstreamError, port: int):
    if exc.kind == "port_closed":
        return pages.page(502, *pages.nothing_listening(port), portal_url=settings.PORTAL_URL)
    if exc.kind in ("invalid_state", "not_found"):
        return pages.page(503, *pages.not_running(), portal_url=settings.PORTAL_URL)
    return pages.page(
        502,
        f"The app on port {port} did not answer",
        "It accepted the connection but sent no valid HTTP response. Check its output in the terminal.",
        portal_url=settings.PORTAL_URL,
    )


def _too_many():
    return pages.page(
        429,
        "Too many open requests",
        "This preview has too many requests open at once. Close some tabs or wait for them to finish.",
    )


def _expired_page():
    return pages.page(
        400,
        "This preview link has expired",
        "Open the preview again from the sandbox portal.",
        portal_url=settings.PORTAL_URL,
    )


def _offsite_page(location: str):
    link = html.escape(location, quote=True)
    return pages.page(
        200,
        "This app sends you to another site",
        f'The app in this preview redirects to <a href="{link}" rel="noopener noreferrer">{link}</a>. '
        "Follow the link only if you trust that site.",
    )
