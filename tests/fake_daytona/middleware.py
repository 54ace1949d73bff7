"""What every emulated endpoint shares: auth, latency, request recording and faults.

Handlers return an ``ApiResult`` (or a websocket response) and raise ``ApiError`` to refuse;
the middleware turns both into HTTP answers and applies any queued fault on the way. On the
REST API it also applies the organisation's rate limits (:mod:`.ratelimits`) after the key
is checked and before any fault: a refused request is not performed and consumes no fault;
an allowed one carries the rate-limit headers on whatever the operation answers (a
``status`` or ``bad_shape`` fault's scripted answer excepted).
"""

from __future__ import annotations

import copy
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .faults import TRANSITION_KINDS, WEBSOCKET_KINDS, Fault
from .ratelimits import THROTTLED_MESSAGE, group_of
from .records import ORGANIZATION_ID, ApiError

if TYPE_CHECKING:
    from .server import FakeDaytona

FAKE_KEY: web.AppKey[Any] = web.AppKey("fake_daytona")
WEBSOCKET_FAULT_KEY: web.RequestKey[Fault] = web.RequestKey("fake_daytona.websocket_fault")
TRANSITION_FAULT_KEY: web.RequestKey[Fault] = web.RequestKey("fake_daytona.transition_fault")

Handler = Callable[[web.Request], Awaitable[Any]]


@dataclass
class ApiResult:
    """A successful answer: JSON body (``None`` for an empty body) and status."""

    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def operation(name: str) -> Callable[[Handler], Handler]:
    """Tag a handler with the operation name used for faults and call counts."""

    def tag(handler: Handler) -> Handler:
        handler.operation = name  # type: ignore[attr-defined]
        return handler

    return tag


def fake_of(request: web.Request) -> FakeDaytona:
    return request.config_dict[FAKE_KEY]


def error_response(
    request: web.Request, status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The error body the Daytona API sends."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    body = {
        "path": request.path_qs,  # the server writes request.url, query included
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "statusCode": status,
        "error": reason,
        "message": message,
    }
    return web.json_response(body, status=status, headers=headers)


def result_response(result: ApiResult) -> web.Response:
    if result.body is None:
        return web.Response(status=result.status, headers=result.headers)
    return web.json_response(result.body, status=result.status, headers=result.headers)


def reset_connection(request: web.Request) -> web.Response:
    """Drop the connection with a TCP reset; nothing reaches the client."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)


def make_middleware(
    *, with_latency: bool, with_rate_limits: bool = False
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware for one sub-application (the API, or the toolbox)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        name = getattr(request.match_info.handler, "operation", None)
        fake = fake_of(request)
        if name is None:
            return await _answer(request, handler)
        fake._record(name, request)
        if with_latency and fake.latency > 0:
            await fake._sleep(fake.latency)
        if request.headers.get("Authorization") != f"Bearer {fake.api_key}":
            return error_response(request, 401, "Unauthorized")
        limit_headers: dict[str, str] = {}
        if with_rate_limits:
            verdict = fake.rate_limits.hit(ORGANIZATION_ID, group_of(name))
            if not verdict.allowed:
                return error_response(request, 429, THROTTLED_MESSAGE, verdict.headers)
            limit_headers = verdict.headers
        fault = fake.faults.take(name)
        if fault is None:
            response = await _answer(request, handler)
        elif fault.kind in ("status", "bad_shape"):
            return await _apply_fault(request, handler, fault, fake, name)
        else:
            response = await _apply_fault(request, handler, fault, fake, name)
        if limit_headers and not response.prepared:
            response.headers.update(limit_headers)
        return response

    return middleware


def _rendered(outcome: ApiResult | web.StreamResponse) -> web.StreamResponse:
    return result_response(outcome) if isinstance(outcome, ApiResult) else outcome


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    return _rendered(await _run(request, handler))


async def _run(request: web.Request, handler: Handler) -> ApiResult | web.StreamResponse:
    """Perform the operation, keeping an ApiResult unrendered so it can be malformed."""
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(request, error.status, error.message, error.headers)


async def _apply_fault(
    request: web.Request, handler: Handler, fault: Fault, fake: FakeDaytona, name: str
) -> web.StreamResponse:
    kind = fault.kind
    if kind == "status":
        status = fault.status or 500
        message = fault.message or _default_message(status)
        return error_response(request, status, message, fault.headers)
    if kind == "reset":
        return reset_connection(request)
    if kind == "slow":
        await fake._sleep(fault.seconds)
        return await _answer(request, handler)
    if kind in WEBSOCKET_KINDS:
        request[WEBSOCKET_FAULT_KEY] = fault
        return await _answer(request, handler)
    if kind in TRANSITION_KINDS:
        request[TRANSITION_FAULT_KEY] = fault
        return await _answer(request, handler)
    outcome = await _run(request, handler)
    if kind == "commit_then_reset":
        return reset_connection(request)
    if kind == "commit_then_hang":
        await fake._sleep(fault.seconds)
    if kind == "bad_shape" and isinstance(outcome, ApiResult):
        return malformed_response(outcome, fault, name)
    return _rendered(outcome)


def malformed_response(result: ApiResult, fault: Fault, name: str) -> web.Response:
    """A success answer whose status or body the SDK will not accept."""
    options = fault.options
    status = fault.status
    if "body" in options:
        text = str(options["body"])
        return web.Response(status=status or result.status, text=text, content_type="application/json")
    if not options and status is None:
        if name == "create":
            status = 201
        else:
            return web.Response(status=result.status)
    body = copy.deepcopy(result.body)
    if isinstance(body, dict):
        drop = options.get("drop", ())
        for key in [drop] if isinstance(drop, str) else drop:
            body.pop(key, None)
        body.update(options.get("set", {}))
    return web.json_response(body, status=status or result.status)


def _default_message(status: int) -> str:
    if status == 429:
        return "ThrottlerException: Too Many Requests"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
