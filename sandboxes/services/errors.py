"""The one error type that reaches doors, and the translation of provider failures into it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sandboxes.providers.base import ErrorKind, ProviderError

P = ParamSpec("P")
R = TypeVar("R")

# Provider failures as API clients see them; any other kind is the provider being unavailable.
PROVIDER_FAILURES = {
    ErrorKind.RATE_LIMITED: (429, "rate_limited"),
    ErrorKind.CONFLICT: (409, "conflict"),
    ErrorKind.INVALID_STATE: (409, "conflict"),
}


class SandboxError(Exception):
    """What a service would not or could not do. Doors catch this and nothing else.

    ``code`` is stable, for API clients (``rate_limited``, ``name_taken``, ``conflict``,
    ``provider_unavailable``...); ``status`` the HTTP status that fits; ``retry_after`` a hint in
    seconds (the provider's, when it gave one); ``retryable`` whether the same call may succeed
    later. For a provider failure, ``kind`` is the provider's :class:`ErrorKind` (``not_found``,
    ``invalid_state``, ``port_closed``...), else empty. ``detail`` holds more, for API clients,
    merged into the API's error object (``{"budget": {...}}`` of ``budget_exceeded``).
    ``str(error)`` is safe to show the user and to log.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 409,
        retry_after: float | None = None,
        retryable: bool = False,
        kind: str = "",
        detail: dict | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.retryable = retryable
        self.kind = kind
        self.detail = detail

    @classmethod
    def from_provider(cls, error: ProviderError) -> SandboxError:
        status, code = PROVIDER_FAILURES.get(error.kind, (503, "provider_unavailable"))
        return cls(
            code,
            error.message,
            status=status,
            retry_after=error.retry_after,
            retryable=error.retryable,
            kind=error.kind,
        )

    def __repr__(self) -> str:
        return f"SandboxError({self.code!r}, {self.message!r}, kind={self.kind!r})"


def provider_failures_as_sandbox_errors(function: Callable[P, R]) -> Callable[P, R]:
    """For public services: a :class:`ProviderError` leaves as a :class:`SandboxError`."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except ProviderError as error:
            raise SandboxError.from_provider(error) from error

    return wrapper
