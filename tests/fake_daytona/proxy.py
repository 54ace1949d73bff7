"""Daytona's proxy and the runner behind it, as far as the toolbox and previews need them.

A request for ``/toolbox/<sandboxId>/...`` or a preview goes proxy -> runner -> the sandbox's
daemon. The proxy authenticates it, asks the API which runner holds the sandbox, posts
activity, and forwards it; the runner resolves the container's IP and forwards it to the
daemon. Each layer refuses in its own words; the Go layers (proxy, runner) answer
``{statusCode, message, code, timestamp, path, method}`` (``common-go`` error middleware),
with ``path`` the path that layer saw, so a runner refusal names ``/sandboxes/<id>/toolbox/...``.

Which sandbox states have which answer is read from v0.190.0 (``apps/proxy``,
``apps/runner/pkg/api/controllers/proxy.go``, ``runner.service.ts``); the hosted service may
differ: a sandbox without a runner (archived; also, we assume, one waiting for a build) is
refused by the proxy, a container that does not exist yet (we assume while creating,
pulling its snapshot or restoring) by the runner with 404, any other state but ``started`` by
the runner with 400 (the container exists but has no IP).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .server import FakeDaytona

NO_RUNNER_STATES = frozenset({"archived", "pending_build", "building_snapshot"})
NO_CONTAINER_STATES = frozenset({"creating", "pulling_snapshot", "restoring"})

STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    409: "CONFLICT",
    410: "GONE",
}

MISSING_AUTH = (
    "missing authentication: provide a preview access token (via header, query parameter, or cookie) "
    "or use an API key or JWT"
)
# The runner retries the container's IP three times, then wraps the error.
NO_IP_MESSAGE = (
    "bad request: failed to resolve container IP after 3 attempts: no IP address found. Is the Sandbox started?"
)
PREVIEW_TOKEN_HEADER = "X-Daytona-Preview-Token"
AUTH_KEY_QUERY = "DAYTONA_SANDBOX_AUTH_KEY"


class ProxyRefusal(Exception):
    """An answer from a Go layer (the proxy or the runner) instead of the daemon's."""

    def __init__(self, status: int, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.path = path

    def response(self, request: web.Request, now: float) -> web.Response:
        return go_error(request, self.status, self.message, now, path=self.path)


def go_error(request: web.Request, status: int, message: str, now: float, *, path: str | None = None) -> web.Response:
    """The ``common-go`` error body (Go marshals the struct in this field order)."""
    body = {
        "statusCode": status,
        "message": message,
        "code": STATUS_CODES.get(status, "INTERNAL_SERVER_ERROR"),
        "timestamp": _go_time(now),
        "path": path or request.path,
        "method": request.method,
    }
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def unauthorized(errors: list[str]) -> ProxyRefusal:
    detail = f"authentication failed: {','.join(errors)}" if errors else MISSING_AUTH
    return ProxyRefusal(401, f"unauthorized: {detail}")


def check_key_or_preview_token(fake: FakeDaytona, request: web.Request, sandbox_id: str) -> list[str] | None:
    """The proxy's first three checks: bearer API key, preview-token header, query key.

    Returns None when one passes, else what failed (for the 401 message). A bearer key or a
    preview token is valid only for a sandbox that still exists (the API answers 404, read
    as "invalid", once it is destroyed).
    """
    errors: list[str] = []
    exists = fake.store.state_of(sandbox_id) is not None
    authorization = request.headers.get("Authorization", "")
    if authorization.startswith("Bearer ") and authorization[len("Bearer ") :].strip():
        if exists and authorization[len("Bearer ") :].strip() == fake.api_key:
            return None
        errors.append("Bearer token is invalid")
    header_key = request.headers.get(PREVIEW_TOKEN_HEADER, "")
    if header_key:
        if exists and header_key == fake.store.preview_token_of(sandbox_id):
            return None
        errors.append("Auth key header is invalid")
    query_key = request.query.get(AUTH_KEY_QUERY, "")
    if query_key:
        if exists and query_key == fake.store.preview_token_of(sandbox_id):
            return None
        errors.append("Auth key query parameter is invalid")
    return errors


def runner_info_refusal(fake: FakeDaytona, sandbox_id: str) -> ProxyRefusal | None:
    """The proxy's lookup of the sandbox's runner (``GET /runners/by-sandbox/{id}``)."""
    state = fake.store.state_of(sandbox_id)
    if state is None:
        return ProxyRefusal(400, f"bad request: failed to get runner info: Sandbox with ID {sandbox_id} not found")
    if state in NO_RUNNER_STATES:
        return ProxyRefusal(
            400, f"bad request: failed to get runner info: Sandbox with ID {sandbox_id} does not have a runner"
        )
    return None


def runner_refusal(fake: FakeDaytona, sandbox_id: str, runner_path: str) -> ProxyRefusal | None:
    """The runner's lookup of the container's IP, once the proxy has forwarded the request."""
    state = fake.store.state_of(sandbox_id)
    if state == "started":
        return None
    if state in NO_CONTAINER_STATES:
        # Docker's wording for a missing container, as the runner wraps it.
        message = f"not found: sandbox container not found: Error response from daemon: No such container: {sandbox_id}"
        return ProxyRefusal(404, message, path=runner_path)
    return ProxyRefusal(400, NO_IP_MESSAGE, path=runner_path)


def is_browser(request: web.Request) -> bool:
    """The proxy's ``isBrowser``: the User-Agent names a browser (mssola/useragent's list).

    Headless Chromium (``HeadlessChrome``) counts as Chrome here; whether the parser the
    service uses agrees is not verified.
    """
    agent = request.headers.get("User-Agent", "")
    markers = ("Chrome/", "Chromium/", "Firefox/", "Safari/", "Edg/", "Edge/", "OPR/", "Opera", "Vivaldi/")
    return agent.startswith("Mozilla/") and any(marker in agent for marker in markers)


def is_navigation(request: web.Request) -> bool:
    """Whether a failed preview check redirects to the login page (307) instead of 401.

    v0.190.0 redirects every failed preview request; the hosted service has been seen to
    answer API clients 401 JSON. The fake redirects a browser (see :func:`is_browser`) or any
    request that accepts HTML, and answers 401 to the rest (``urllib``, ``httpx`` and
    ``aiohttp`` clients send no browser User-Agent and accept ``*/*``).
    """
    return is_browser(request) or "text/html" in request.headers.get("Accept", "")


def is_websocket(request: web.Request) -> bool:
    upgrade = request.headers.get("Upgrade", "").lower()
    connection = request.headers.get("Connection", "").lower()
    return upgrade == "websocket" and connection == "upgrade"


def _go_time(now: float) -> str:
    """``time.Time`` as Go's JSON encoder writes it (RFC 3339 with nanoseconds, UTC here)."""
    moment = datetime.fromtimestamp(now, UTC)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"
