"""The JSON API: parse -> authorise -> call a service -> respond.

Identity comes from the session only. Request bodies are parsed by schema; fields such as
``userId`` or ``email`` in them are ignored, never trusted.
"""

from __future__ import annotations

import logging
import math
import secrets
from datetime import datetime

from django.conf import settings
from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.urls import reverse
from ninja import NinjaAPI, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import SessionAuth
from pydantic import ConfigDict

from . import services
from .http import no_store
from .models import ActivitySource, Sandbox

log = logging.getLogger(__name__)


class SessionUser(SessionAuth):
    """Django's session, with CSRF enforced on unsafe methods of signed-in users.

    Signed-out requests are refused (401) before the CSRF check, so they are told to sign in
    rather than to reload the page.
    """

    def __call__(self, request: HttpRequest):
        if not request.user.is_authenticated:
            return None
        return super().__call__(request)

    def authenticate(self, request: HttpRequest, key):
        user = request.user
        return user if user.is_authenticated and user.is_active else None


api = NinjaAPI(
    title="JoePro Sandbox Portal API",
    version="1.0",
    description="One sandbox per signed-in user: launch it, poll it, keep it alive.",
    auth=SessionUser(),
    urls_namespace="api",
)


# --- schemas ----------------------------------------------------------------------------------


class LaunchIn(Schema):
    """The launch takes nothing from the body; unknown fields (userId, email...) are ignored."""

    model_config = ConfigDict(extra="ignore")


class Resources(Schema):
    cpu: int
    memoryGb: int
    diskGb: int


class ErrorDetail(Schema):
    code: str
    message: str


class SandboxOut(Schema):
    id: str | None
    name: str
    state: str
    provider: str
    resources: Resources
    createdAt: str | None
    lastStartedAt: str | None
    lastActivityAt: str | None
    idleStopAt: str | None
    lastError: ErrorDetail | None


class SshOut(Schema):
    command: str
    token: str
    host: str
    port: int
    expiresAt: str


class PreviewOut(Schema):
    url: str
    port: int
    expiresAt: str


class TerminalOut(Schema):
    url: str
    expiresAt: str
    daytonaUrl: str | None = None


class AccessOut(Schema):
    ssh: SshOut
    preview: PreviewOut
    terminal: TerminalOut


class LaunchOut(Schema):
    sandbox: SandboxOut
    access: AccessOut


class PendingOut(Schema):
    sandbox: SandboxOut


class ErrorOut(Schema):
    error: ErrorDetail


class InternalErrorDetail(ErrorDetail):
    id: str


class InternalErrorOut(Schema):
    error: InternalErrorDetail


ERRORS = {
    400: ErrorOut,
    401: ErrorOut,
    403: ErrorOut,
    404: ErrorOut,
    409: ErrorOut,
    429: ErrorOut,
    500: InternalErrorOut,
    503: ErrorOut,
}


# --- errors -----------------------------------------------------------------------------------


RETRY_HINT_SECONDS = 5  # told to clients of a 429 or 503 when the service gave no hint


def error_response(
    status: int, code: str, message: str, *, retry_after: float | None = None, **detail: str
) -> HttpResponse:
    response = api.create_response(None, {"error": {"code": code, "message": message, **detail}}, status=status)
    if retry_after is not None:
        response["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return no_store(response)


@api.exception_handler(services.SandboxError)
def on_sandbox_error(request, exc: services.SandboxError):
    retry_after = exc.retry_after
    if retry_after is None and exc.status in (429, 503):
        retry_after = RETRY_HINT_SECONDS
    return error_response(exc.status, exc.code, exc.message, retry_after=retry_after)


@api.exception_handler(AuthenticationError)
def on_unauthenticated(request, exc):
    return error_response(401, "unauthenticated", "Sign in to use your sandbox.")


@api.exception_handler(ValidationError)
def on_invalid_request(request, exc: ValidationError):
    return error_response(400, "invalid_request", "The request body is not valid JSON of the expected shape.")


@api.exception_handler(MultiPartParserError)
@api.exception_handler(BadRequest)
def on_unreadable_request(request, exc):
    """A body Django cannot parse (a multipart body without its boundary, say) is the client's
    mistake, not a bug."""
    return error_response(400, "invalid_request", "The request body could not be read.")


@api.exception_handler(HttpError)
def on_http_error(request, exc: HttpError):
    if exc.status_code == 403:
        return error_response(403, "forbidden", "CSRF check failed: reload the page and try again.")
    if exc.status_code == 400:
        return error_response(400, "invalid_request", "The request body is not valid JSON.")
    return error_response(exc.status_code, "error", str(exc))


@api.exception_handler(Exception)
def on_unexpected(request, exc: Exception):
    """A bug, not an outage: 500 with an id that names the logged traceback."""
    error_id = secrets.token_hex(6)
    log.exception("unexpected error %s in %s %s", error_id, request.method, request.path)
    return error_response(
        500,
        "internal",
        f"Something went wrong on our side (error {error_id}). Please try again; if it keeps happening, "
        "tell us this number.",
        id=error_id,
    )


# --- endpoints --------------------------------------------------------------------------------


def sandbox_out(sandbox: Sandbox) -> dict:
    """The API's ``sandbox`` object (:class:`SandboxOut`)."""
    return {
        "id": sandbox.remote_id or None,
        "name": sandbox.remote_name,
        "state": sandbox.state,
        "provider": sandbox.provider,
        "resources": {"cpu": sandbox.cpu, "memoryGb": sandbox.memory_gb, "diskGb": sandbox.disk_gb},
        "createdAt": _iso(sandbox.created_at),
        "lastStartedAt": _iso(sandbox.last_started_at),
        "lastActivityAt": _iso(sandbox.last_activity_at),
        "idleStopAt": _iso(services.idle_stop_at(sandbox)),
        "lastError": {"code": sandbox.last_error_code, "message": sandbox.last_error} if sandbox.last_error else None,
    }


def access_out(request: HttpRequest, sandbox: Sandbox, access) -> dict:
    """The API's ``access`` object (:class:`AccessOut`), links as full URLs on the host the user
    reached the portal by. The terminal is always the portal's own page (it works for every
    user); a provider's direct terminal link, where there is one, is ``daytonaUrl``, for members
    of the Daytona organisation."""
    terminal_page = reverse("sandbox-terminal", args=[sandbox.remote_id])
    ssh, preview, terminal = access.ssh, access.preview, access.terminal
    return {
        "ssh": {
            "command": ssh.command,
            "token": ssh.token,
            "host": ssh.host,
            "port": ssh.port,
            "expiresAt": ssh.expires_at.isoformat(),
        },
        "preview": {
            "url": request.build_absolute_uri(preview.url),
            "port": settings.SANDBOX_PREVIEW_PORT,
            "expiresAt": preview.expires_at.isoformat(),
        },
        "terminal": {
            "url": request.build_absolute_uri(terminal_page),
            "expiresAt": terminal.expires_at.isoformat(),
            "daytonaUrl": terminal.url if terminal.url != terminal_page else None,
        },
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@api.post(
    "/sandbox/create",
    response={200: LaunchOut, 202: PendingOut, **ERRORS},
    summary="Open the signed-in user's sandbox",
    description="Creates the sandbox, resumes it if stopped, or reuses it if running, then returns access "
    "(SSH token, preview URL, terminal URL). Answers 202 with the state while it is still starting; "
    "poll GET /api/sandbox and call again.",
)
def sandbox_create(request, response: HttpResponse, payload: LaunchIn | None = None):
    no_store(response)
    launch = services.sandbox_launch(user=request.auth)
    if not launch.ready:
        response["Retry-After"] = "2"
        return Status(202, {"sandbox": sandbox_out(launch.sandbox)})
    return Status(
        200, {"sandbox": sandbox_out(launch.sandbox), "access": access_out(request, launch.sandbox, launch.access)}
    )


@api.get(
    "/sandbox",
    response={200: PendingOut, **ERRORS},
    summary="The signed-in user's sandbox and its state",
)
def sandbox_detail(request, response: HttpResponse):
    no_store(response)
    sandbox = services.sandbox_status(user=request.auth)
    if sandbox is None:
        raise _no_sandbox()
    return Status(200, {"sandbox": sandbox_out(sandbox)})


class HeartbeatIn(Schema):
    """What the page saw since its last beat. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    interacted: bool = False


class HeartbeatOut(Schema):
    ok: bool
    counted: bool


@api.post(
    "/sandbox/heartbeat",
    response={200: HeartbeatOut, **ERRORS},
    summary="Tell the portal whether the user worked on the page",
    description="Sent every minute by the portal's pages while they are visible, with interacted: true when "
    "someone pressed a key or used the pointer on the page since the last beat. Only that counts as activity "
    "for the idle policy (sandboxes stop after SANDBOX_IDLE_MINUTES without activity); an open, untouched "
    "page does not (counted: false). 404 when the user has no sandbox.",
)
def sandbox_heartbeat(request, response: HttpResponse, payload: HeartbeatIn | None = None):
    no_store(response)
    sandbox = _own_sandbox(request)
    counted = bool(payload and payload.interacted)
    if counted:
        services.sandbox_record_activity(sandbox=sandbox, source=ActivitySource.PAGE)
    return Status(200, {"ok": True, "counted": counted})


@api.post(
    "/sandbox/extend",
    response={200: PendingOut, **ERRORS},
    summary="Keep the running sandbox from the idle stop for another idle period",
    description="The idle clock starts again now: the sandbox stops after SANDBOX_IDLE_MINUTES more without "
    "activity (sandbox.idleStopAt). 409 not_running when it is not running, 404 when the user has none.",
)
def sandbox_extend(request, response: HttpResponse, payload: LaunchIn | None = None):
    no_store(response)
    sandbox = services.sandbox_extend(sandbox=_own_sandbox(request))
    return Status(200, {"sandbox": sandbox_out(sandbox)})


def _own_sandbox(request) -> Sandbox:
    sandbox = Sandbox.objects.filter(user=request.auth).first()
    if sandbox is None:
        raise _no_sandbox()
    return sandbox


def _no_sandbox() -> services.SandboxError:
    return services.SandboxError("not_found", "You have no sandbox yet.", status=404)
