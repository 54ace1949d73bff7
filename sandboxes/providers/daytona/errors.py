"""What a failed Daytona call means, and whether to try it again.

Every SDK or transport exception becomes one :class:`ProviderError` (:func:`provider_error`),
its message stripped of secrets and URLs. The SDK leaves retries to urllib3, which repeats some
failed GETs at once and would sleep through any ``Retry-After`` on them, however long;
:class:`Backoff` retries what is safe to repeat, with jitter, within a bounded budget, and
longer hints are reported to the caller instead.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import random
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

import httpx
import httpx_ws
import pydantic
import urllib3.exceptions
from daytona import DaytonaError
from daytona_api_client.exceptions import ApiException, OpenApiException
from daytona_toolbox_api_client.exceptions import OpenApiException as ToolboxApiException

from ..base import ErrorKind, ProviderError

logger = logging.getLogger(__name__)


class EmptyAnswer(Exception):
    """A call that succeeded without the body the SDK declares for it: an unexpected answer."""


# What a call to Daytona through the SDK can fail with: the SDK's own errors, the generated
# clients' (a refusal, a body that does not validate), and the transports'. Anything else raised
# around a call is a bug of the portal's and leaves as itself.
SDK_FAILURES: tuple[type[BaseException], ...] = (
    DaytonaError,
    OpenApiException,
    ToolboxApiException,
    pydantic.ValidationError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    httpx.HTTPError,
    httpx_ws.HTTPXWSException,
    OSError,
    EmptyAnswer,
)

FIRST_BACKOFF_SECONDS = 0.25
MAX_SERVER_MESSAGE = 200
RETRIED_KINDS = frozenset({ErrorKind.UNAVAILABLE, ErrorKind.RATE_LIMITED})
TROUBLE_KINDS = RETRIED_KINDS | {ErrorKind.TIMEOUT}


@contextmanager
def gone_is_done() -> Iterator[None]:
    """For calls whose purpose is met when the thing is already gone."""
    try:
        yield
    except ProviderError as error:
        if error.kind is not ErrorKind.NOT_FOUND:
            raise


def log_failure(operation: str, error: ProviderError) -> None:
    # Lookups of absent sandboxes and refused transitions are routine; outages are not.
    level = logging.WARNING if error.kind in TROUBLE_KINDS else logging.DEBUG
    logger.log(level, "Daytona %s failed: %s", operation, error.kind.value)


@dataclass
class Backoff:
    """Exponential backoff with jitter, bounded in retries and in total sleep."""

    retries_left: int
    sleep_left: float
    deadline: float | None = None
    attempt: int = 0

    def next_delay(self, error: ProviderError) -> float | None:
        """Seconds to sleep before the next attempt, or ``None`` to give up now."""
        if not error.retryable or error.kind not in RETRIED_KINDS or self.retries_left <= 0:
            return None
        budget = self.sleep_left
        if self.deadline is not None:
            budget = min(budget, self.deadline - time.monotonic())
        if error.retry_after is not None:
            delay = error.retry_after  # the backend's hint, never shortened
        else:
            delay = min(FIRST_BACKOFF_SECONDS * 2**self.attempt * random.uniform(0.5, 1.0), budget)
        if delay > budget or budget <= 0:
            return None
        self.retries_left -= 1
        self.sleep_left -= delay
        self.attempt += 1
        return delay


# -- error mapping ----------------------------------------------------------------------


def provider_error(exc: Exception, operation: str, *, idempotent: bool, secrets: tuple[str, ...] = ()) -> ProviderError:
    """The :class:`ProviderError` for any failure of a Daytona call.

    ``idempotent`` decides what an unanswered request means: for a call that may be
    repeated, a transient failure; otherwise an unknown outcome (``TIMEOUT``), which the
    caller resolves by looking the sandbox up. ``secrets`` are scrubbed from the message.
    """
    exc = _unwrapped(exc)
    if isinstance(exc, ApiException) and exc.status:
        detail = _server_message(exc.body, secrets)
        return _http_error(int(exc.status), detail, exc.headers, operation, idempotent=idempotent)
    if isinstance(exc, DaytonaError) and exc.status_code:
        detail = _scrubbed(exc.message, secrets)
        return _http_error(int(exc.status_code), detail, exc.headers, operation, idempotent=idempotent)
    if _never_sent(exc):
        return ProviderError(
            f"Daytona {operation} failed: could not connect to Daytona.",
            kind=ErrorKind.UNAVAILABLE,
            retryable=True,
        )
    unanswered = _is_transport_failure(exc)
    if not idempotent:
        reason = "no response from Daytona" if unanswered else "unexpected response from Daytona"
        return ProviderError(
            f"Daytona {operation}: {reason}; the request may have taken effect.", kind=ErrorKind.TIMEOUT
        )
    if unanswered:
        return ProviderError(
            f"Daytona {operation} failed: no response from Daytona.",
            kind=ErrorKind.UNAVAILABLE,
            retryable=True,
        )
    return ProviderError(f"Daytona {operation} failed: unexpected response from Daytona.")


def _unwrapped(exc: Exception) -> Exception:
    """The failure behind the SDK's ``DaytonaError`` wrappers (the SDK objects' methods raise
    them ``from`` the API or transport exception), as far as the cause says more."""
    while isinstance(exc, DaytonaError) and isinstance(exc.__cause__, Exception):
        cause = exc.__cause__
        if exc.status_code and not isinstance(cause, (ApiException, DaytonaError)):
            break  # e.g. a refused websocket upgrade: the wrapper holds its status
        exc = cause
    return exc


def _http_error(
    status: int, detail: str, headers: Mapping[str, Any] | None, operation: str, *, idempotent: bool
) -> ProviderError:
    detail = detail or _status_phrase(status)
    message = f"Daytona {operation} failed: {detail} (HTTP {status})."
    retry_after = _retry_after(headers or {})
    if status in (404, 410):
        return ProviderError(message, kind=ErrorKind.NOT_FOUND)
    if status == 409:
        return ProviderError(message, kind=ErrorKind.CONFLICT)
    if status == 400 and "state" in detail.lower():
        return ProviderError(message, kind=ErrorKind.INVALID_STATE)
    if status == 429:
        return ProviderError(message, kind=ErrorKind.RATE_LIMITED, retryable=True, retry_after=retry_after)
    if status in (408, 504) and not idempotent:
        # A gateway gave up waiting; the backend may still have acted.
        return ProviderError(
            f"Daytona {operation}: {detail} (HTTP {status}); the request may have taken effect.",
            kind=ErrorKind.TIMEOUT,
        )
    if status >= 500 or status == 408:
        return ProviderError(message, kind=ErrorKind.UNAVAILABLE, retryable=True, retry_after=retry_after)
    return ProviderError(message, kind=ErrorKind.REJECTED)


def _never_sent(exc: BaseException) -> bool:
    """Whether the request certainly never reached Daytona (no connection was made)."""
    reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    return isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))


def _is_transport_failure(exc: BaseException) -> bool:
    return isinstance(exc, (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)) or (
        isinstance(exc, ApiException) and not exc.status
    )


def _server_message(body: str | None, secrets: tuple[str, ...]) -> str:
    """The error envelope's message, without secrets or URLs, shortened."""
    if not body:
        return ""
    try:
        envelope = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(envelope, dict):
        return ""
    text = envelope.get("message") or envelope.get("error")
    if isinstance(text, list):
        text = "; ".join(str(part) for part in text)
    if not isinstance(text, str):
        return ""
    return _scrubbed(text, secrets)


def _scrubbed(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = re.sub(r"\b\w+://\S+", "<url>", text)
    return text[:MAX_SERVER_MESSAGE]


def _status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


# -- rate-limit hints -------------------------------------------------------------------


def _retry_after(headers: Mapping[str, Any]) -> float | None:
    """Seconds the backend asks us to wait: the longest ``Retry-After-<throttler>``, then
    ``Retry-After``, then the longest ``X-RateLimit-Reset-<throttler>``. Names are matched
    case-insensitively (the SDK keeps the server's casing; proxies may lowercase it)."""
    lowered = {str(name).lower(): value for name, value in headers.items()}
    for matches in (
        lambda name: name.startswith("retry-after-"),
        lambda name: name == "retry-after",
        lambda name: name.startswith("x-ratelimit-reset"),
    ):
        hints = [_seconds(value) for name, value in lowered.items() if matches(name)]
        known = [hint for hint in hints if hint is not None]
        if known:
            return max(known)
    return None


def _seconds(value: Any) -> float | None:
    """A delay in seconds from a header value: a number of seconds, an epoch timestamp or an
    HTTP date."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        moment = _http_date(text)
        return None if moment is None else max(0.0, moment.timestamp() - time.time())
    if not math.isfinite(number):
        return None
    if number > 1e9:  # an epoch timestamp rather than a delay
        number -= time.time()
    return max(0.0, number)


def _http_date(text: str) -> datetime | None:
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
