"""The JSON API's frame: who is asking (the session, nothing else), and every error in one shape.

Identity comes from the session only. Request bodies are parsed by schema; fields such as
``userId`` or ``email`` in them are ignored, never trusted.
"""

from __future__ import annotations

import logging
import math
import secrets

from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import SessionAuth

from sandboxes import services
from sandboxes.http import no_store
from sandboxes.models import Sandbox

log = logging.getLogger("sandboxes.api")


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
    description="One sandbox per signed-in user: launch it, watch it, keep it alive, and see who can reach it.",
    auth=SessionUser(),
    urls_namespace="api",
)


# --- errors -----------------------------------------------------------------------------------


RETRY_HINT_SECONDS = 5  # told to clients of a 429 or 503 when the service gave no hint


def error_response(status: int, code: str, message: str, *, retry_after: float | None = None, **detail) -> HttpResponse:
    response = api.create_response(None, {"error": {**detail, "code": code, "message": message}}, status=status)
    if retry_after is not None:
        response["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return no_store(response)


@api.exception_handler(services.SandboxError)
def on_sandbox_error(request, exc: services.SandboxError):
    retry_after = exc.retry_after
    if retry_after is None and exc.status in (429, 503):
        retry_after = RETRY_HINT_SECONDS
    return error_response(exc.status, exc.code, exc.message, retry_after=retry_after, **(exc.detail or {}))


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


def own_sandbox(request, template: str | None = None) -> Sandbox:
    """The signed-in user's sandbox of that template (by slug: the body's, else the query's
    ``?template=``, which the dashboard's URLs carry), else the one they started last;
    ``not_found`` (404) when they have none."""
    sandbox = services.own_row(request.auth, template or request.GET.get("template") or None)
    if sandbox is None:
        raise no_sandbox()
    return sandbox


def named_template(payload) -> str | None:
    """The template a body names (``{"template": "<slug>"}``), if it names one."""
    return getattr(payload, "template", None) if payload is not None else None


def no_sandbox() -> services.SandboxError:
    return services.SandboxError("not_found", "You have no sandbox yet.", status=404)
