"""What a log line is about: the request (or websocket connection, or Celery task) it belongs
to, the signed-in user, and the sandbox in play. Kept in context variables, which follow a
request into ``sync_to_async`` threads and stay apart between concurrent requests;
:class:`joepro.logging.ContextFilter` copies them onto every log record.

A request's id comes from ``X-Request-ID`` only when a trusted proxy (``TRUSTED_PROXIES``)
sent the request and the value is a short safe token; otherwise it is new. It goes back to the
client in the response's ``X-Request-ID``.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar, copy_context
from functools import lru_cache

from django.conf import settings

HEADER = "X-Request-ID"
SCOPE_KEY = "joepro.request_id"  # the id an ASGI connection was given, for the Django middleware
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
user_id: ContextVar[int | None] = ContextVar("user_id", default=None)
sandbox_id: ContextVar[int | None] = ContextVar("sandbox_id", default=None)

_VARIABLES = {"request_id": request_id, "user_id": user_id, "sandbox_id": sandbox_id}


class ContextThreadPool(ThreadPoolExecutor):
    """A thread pool whose work sees the log context of whoever submitted it (its request,
    user and sandbox ids), so the lines of a bulk stop or a reconcile pass keep them."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        return super().submit(copy_context().run, fn, *args, **kwargs)


def new_request_id() -> str:
    return uuid.uuid4().hex


def current() -> dict:
    """The request id, user id and sandbox id in effect here (None where unknown)."""
    return {name: variable.get() for name, variable in _VARIABLES.items()}


@contextmanager
def bound(**values) -> Iterator[None]:
    """``request_id``, ``user_id`` and/or ``sandbox_id`` set for the block, the earlier values
    back after it."""
    previous = {name: _VARIABLES[name].get() for name in values}
    for name, value in values.items():
        _VARIABLES[name].set(value)
    try:
        yield
    finally:
        for name, value in previous.items():
            _VARIABLES[name].set(value)


def sandbox_in_play(pk: int | None):
    """The block acts on the sandbox with this primary key: its log lines say so."""
    return bound(sandbox_id=pk)


def begin(*, request_id: str | None) -> None:
    """A new unit of work (a Celery task, an ASGI request) starts here: this id, no user, no
    sandbox."""
    _VARIABLES["request_id"].set(request_id)
    user_id.set(None)
    sandbox_id.set(None)


@lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(proxy, strict=False) for proxy in proxies)


def via_trusted_proxy(host: str | None, port: int | None) -> bool:
    """Whether the request reached the portal through one of ``TRUSTED_PROXIES``.

    ``host`` and ``port`` are the client address the server saw. With trusted proxies, the web
    server (uvicorn, see ``bin/serve``) replaces the peer by the address a trusted proxy put in
    ``X-Forwarded-For``, which carries no port (0); a client that connected itself always has
    its own port. A peer that is itself a trusted proxy (and forwarded nothing) counts too.
    """
    networks = _networks(tuple(settings.TRUSTED_PROXIES))
    if not networks or not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks) or port == 0


def request_id_for(header: str | None, *, host: str | None, port: int | None) -> str:
    """The id of a new request: the ``X-Request-ID`` it carries when a trusted proxy sent it
    and it is a short safe token, a new one otherwise."""
    if header and SAFE_REQUEST_ID.fullmatch(header) and via_trusted_proxy(host, port):
        return header
    return new_request_id()


def _port(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class RequestIdMiddleware:
    """Gives every request an id for its log lines and its ``X-Request-ID`` response header;
    under ASGI, the one :class:`ConnectionContext` gave the connection."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        given = getattr(request, "scope", {}).get(SCOPE_KEY)
        meta = request.META
        rid = given or request_id_for(
            meta.get("HTTP_X_REQUEST_ID"), host=meta.get("REMOTE_ADDR"), port=_port(meta.get("REMOTE_PORT"))
        )
        with bound(request_id=rid, user_id=None, sandbox_id=None):
            response = self.get_response(request)
        response[HEADER] = rid
        return response


class UserIdMiddleware:
    """Puts the signed-in user's id on the request's log lines (after authentication)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        pk = user.pk if user is not None and user.is_authenticated else None
        with bound(user_id=pk):
            return self.get_response(request)


class ConnectionContext:
    """ASGI: every HTTP request and websocket connection gets an id (as
    :class:`RequestIdMiddleware` decides it) before anything logs, the web server's access
    line included, and HTTP responses without one get the ``X-Request-ID`` header."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        header = next((v.decode("latin1") for k, v in scope.get("headers", ()) if k == b"x-request-id"), None)
        host, port = scope.get("client") or (None, None)
        rid = request_id_for(header, host=host, port=port)
        scope = {**scope, SCOPE_KEY: rid}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    message = {**message, "headers": [*headers, (b"x-request-id", rid.encode())]}
            await send(message)

        # Not restored afterwards: ASGI servers run each request and connection in a task of its
        # own, and the server's lines after the app returned (its access line, an error it
        # reports) belong to this request too.
        begin(request_id=rid)
        return await self.app(scope, receive, send_with_id)


class UserContext:
    """ASGI, inside Channels' ``AuthMiddlewareStack``: the websocket's signed-in user on its
    log lines."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        user = scope.get("user")
        pk = user.pk if user is not None and user.is_authenticated else None
        with bound(user_id=pk):
            return await self.app(scope, receive, send)
